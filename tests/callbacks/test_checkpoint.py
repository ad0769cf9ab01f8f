from types import SimpleNamespace

import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_dft.callbacks import ModelCheckpoint
from tests.helpers import MicroModule, loader, quiet_trainer, uneven_rows


def test_linked_last_checkpoint_holds_the_final_state_as_a_real_file(tmp_path):
    module = MicroModule()
    module.configure_model()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last="link")
    trainer = quiet_trainer(
        max_steps=3, precision="64-true", logger=False, enable_checkpointing=True, callbacks=[checkpoint]
    )
    trainer.fit(module, loader(uneven_rows(), 2))
    last = tmp_path / "last.ckpt"
    assert last.is_file() and not last.is_symlink(), "step 3 has no checkpoint to link to"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 3
    for name, value in module.state_dict().items():
        torch.testing.assert_close(saved["state_dict"][name], value, rtol=0, atol=0, msg=name)


def test_on_several_processes_only_sigterm_saves_on_the_way_out(monkeypatch):
    saved = []
    monkeypatch.setattr(LightningModelCheckpoint, "on_exception", lambda self, t, m, e: saved.append(type(e)))
    callback = ModelCheckpoint()
    for world_size, exception in [
        (2, RuntimeError()),
        (2, KeyboardInterrupt()),
        (2, SIGTERMException()),
        (1, RuntimeError()),
    ]:
        callback.on_exception(SimpleNamespace(world_size=world_size), None, exception)
    assert saved == [SIGTERMException, RuntimeError]

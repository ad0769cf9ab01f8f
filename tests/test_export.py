import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_dft.cli import main
from lit_dft.errors import LitDFTError
from lit_dft.export import export_checkpoint, export_pretrained
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL, load_model, load_tokenizer
from lit_dft.module import CausalLMModule
from tests.helpers import loader, quiet_trainer, uneven_rows

IDS = torch.tensor([[1, 504, 3458, 314, 216, 33, 30, 33, 47, 2]])


def _logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_checkpoint_export_round_trip_reproduces_the_logits(dft_smoke_run, tmp_path, capsys):
    _, run = dft_smoke_run
    (ckpt,) = run.rglob("last.ckpt")
    main(["export", str(ckpt), str(tmp_path / "hf")])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    reference = load_model(TINY_MODEL)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    reference.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    torch.testing.assert_close(_logits(exported), _logits(reference), rtol=0, atol=0)
    assert not torch.allclose(_logits(load_model(TINY_MODEL)), _logits(reference)), (
        "trained weights differ from a fresh init"
    )
    assert (tmp_path / "hf" / "tokenizer_config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_gguf_model_exports_to_plain_safetensors_live_and_from_a_checkpoint(tmp_path, capsys):
    model = load_model(EMBEDDED_MODEL)
    out = export_pretrained(model, load_tokenizer(EMBEDDED_MODEL), tmp_path / "smollm2")
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(exported.config, "quantization_config", None) is None
    torch.testing.assert_close(_logits(exported), _logits(model), rtol=0, atol=0)

    # the demo's path: a checkpoint of the GGUF model (its config once held an enum weights_only could not read)
    module = CausalLMModule.from_model(model, load_tokenizer(EMBEDDED_MODEL), model_name_or_path=EMBEDDED_MODEL)
    trainer = quiet_trainer(max_steps=1, logger=False)
    trainer.fit(module, loader(uneven_rows(2), batch_size=2))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "from_checkpoint")])
    from_checkpoint = AutoModelForCausalLM.from_pretrained(tmp_path / "from_checkpoint")
    torch.testing.assert_close(_logits(from_checkpoint), _logits(module.model), rtol=0, atol=0)


def test_unwritable_export_target_is_reported_and_checkpoint_untouched(dft_smoke_run, tmp_path):
    _, run = dft_smoke_run
    (ckpt,) = run.rglob("last.ckpt")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(LitDFTError, match="Cannot write the export to"):
        export_checkpoint(ckpt, blocker / "out")
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(LitDFTError, match="Checkpoint not found"):
        export_checkpoint(tmp_path / "none.ckpt", tmp_path / "out")


def test_names_lightning_resolves_are_not_checked_as_local_files():
    from lit_dft.checkpoints import is_local_checkpoint_path

    for name in ("last", "best", "hpc", "registry", "registry:my-model:latest", "s3://bucket/run/last.ckpt"):
        assert not is_local_checkpoint_path(name), name
    assert is_local_checkpoint_path("runs/demo/last.ckpt")


def test_load_from_checkpoint_rebuilds_the_module_with_its_grouped_settings(dft_smoke_run):
    from lit_dft.generation import GenerationArgs
    from lit_dft.module import CausalLMModule
    from lit_dft.optim import OptimizerArgs

    _, run = dft_smoke_run
    (ckpt,) = run.rglob("last.ckpt")
    module = CausalLMModule.load_from_checkpoint(ckpt, weights_only=True)  # the settings are plain values
    assert isinstance(module.optimizer_args, OptimizerArgs) and module.optimizer_args.learning_rate == 3e-3
    assert isinstance(module.generation, GenerationArgs)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(module.state_dict()[name], value) for name, value in state.items())

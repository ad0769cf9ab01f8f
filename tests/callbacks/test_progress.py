import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar

from lit_dft.callbacks.progress import StepRichProgressBar, StepTQDMProgressBar, step_progress_bar
from tests.helpers import MicroModule, loader, quiet_trainer, uneven_rows


def test_lightnings_default_bars_are_replaced_and_a_chosen_one_kept():
    assert type(step_progress_bar(TQDMProgressBar())) is StepTQDMProgressBar
    assert type(step_progress_bar(RichProgressBar())) is StepRichProgressBar
    custom = TQDMProgressBar(refresh_rate=5)
    custom.__class__ = type("MyBar", (TQDMProgressBar,), {})
    assert step_progress_bar(custom) is custom
    other = ModelCheckpoint()
    assert step_progress_bar(other) is other


def _metrics_at_each_batch(bar_class, **trainer_kwargs):
    seen = []

    class Watch(bar_class):
        def on_train_batch_end(self, trainer, pl_module, *args, **kwargs):
            seen.append(self.get_metrics(trainer, pl_module))
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    bar = Watch()
    trainer = quiet_trainer(precision="64-true", enable_progress_bar=True, callbacks=[bar], **trainer_kwargs)
    trainer.fit(MicroModule(), loader(uneven_rows(), 2))
    return seen, bar


@pytest.mark.parametrize("bar_class", [StepTQDMProgressBar, StepRichProgressBar])
def test_a_step_bounded_run_shows_steps_and_no_version(bar_class):
    seen, bar = _metrics_at_each_batch(bar_class, max_steps=3)
    assert [m["step"] for m in seen] == ["1/3", "2/3", "3/3"]
    assert all("v_num" not in m for m in seen)
    if bar_class is StepRichProgressBar:
        assert "/" not in bar._get_train_description(0), "no 'Epoch 0/-2'"
    seen, _ = _metrics_at_each_batch(bar_class, max_epochs=1)
    assert seen and all("step" not in m for m in seen), "an epoch-bounded run keeps Lightning's epoch count"


def test_the_cli_replaces_lightnings_default_bar_and_keeps_one_you_configured():
    """Through ``LitDFTCLI(run=False)``, which has no subcommand (``fit`` goes through the same code)."""
    from lit_dft.cli import LitDFTCLI
    from lit_dft.data import MathDataModule
    from lit_dft.module import CausalLMModule
    from tests.conftest import SMOKE

    def trainer(*extra):
        args = ["--config", SMOKE, "--trainer.enable_progress_bar=true", *extra]
        return LitDFTCLI(CausalLMModule, MathDataModule, args=args, run=False).trainer

    assert isinstance(trainer().progress_bar_callback, (StepRichProgressBar, StepTQDMProgressBar))
    bar = trainer(
        "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar", "--trainer.callbacks.refresh_rate=7"
    )
    assert type(bar.progress_bar_callback) is TQDMProgressBar and bar.progress_bar_callback.refresh_rate == 7

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dft.cli import main
from tests.conftest import ROOT, SMOKE


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    (events,) = run_dir.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_smoke_fit_writes_checkpoint_config_and_loss_pair(smoke_run):
    loss, run = smoke_run
    assert list(run.rglob("*.ckpt")), "a checkpoint"
    (config,) = run.rglob("config.yaml")
    assert yaml.safe_load(config.read_text())["model"]["loss"] == loss
    scalars = _scalars(run)
    for tag in ("train/loss", "train/nll", "train/dft", "train/target_prob", "val/nll", "val/dft"):
        assert tag in scalars, tag
    assert len(scalars["train/loss"]) == 20
    objective = scalars["train/loss"] if loss == "sft" else scalars["train/nll"]
    assert sum(objective[-3:]) / 3 < sum(objective[:3]) / 3 - 0.3, "the loss falls over the run"
    if loss == "sft":
        assert scalars["train/loss"] == pytest.approx(scalars["train/nll"])
    else:
        assert scalars["train/loss"] == pytest.approx(scalars["train/dft"])


def test_saved_config_reruns_as_is(smoke_run, tmp_path):
    _, run = smoke_run
    (config,) = run.rglob("config.yaml")
    main(["fit", "--config", str(config), "--trainer.max_steps=10", f"--trainer.default_root_dir={tmp_path}"])
    assert list(tmp_path.rglob("*.ckpt"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_dft", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model.loss=dtf", "Unknown objective 'dtf'. Registered objectives: dft, sft"),
        ("--model.model_name_or_path=./no/such/model", "Model path not found: ./no/such/model"),
        ("--data.preset=gsm8", "Unknown preset 'gsm8'. Known presets:"),
    ],
)
def test_bad_configuration_gets_one_clear_line(override, message):
    result = _cli("fit", "--config", SMOKE, override, "--trainer.max_steps=1")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_misspelled_key_is_rejected_by_the_parser():
    result = _cli("fit", "--config", SMOKE, "--model.learnin_rate=1")
    assert result.returncode != 0 and "learnin_rate" in result.stderr


def test_help_documents_every_data_option():
    result = _cli("fit", "--help")
    assert "Maximum tokens per example" in result.stdout and "Batch examples of similar length" in result.stdout


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_recipe_prints_with_print_config(config, capsys):
    """jsonargparse resolves every key and class path of each recipe (models are not downloaded)."""
    subcommand = "test" if config.stem == "eval" else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(config.read_text())
    assert printed["model"]["model_name_or_path"] == source["model"]["model_name_or_path"]
    strategy = source.get("trainer", {}).get("strategy")
    if isinstance(strategy, dict):
        assert printed["trainer"]["strategy"]["class_path"] == strategy["class_path"]
        assert printed["trainer"]["strategy"]["init_args"]["param_dtype"] == strategy["init_args"]["param_dtype"]

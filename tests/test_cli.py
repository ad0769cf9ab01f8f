import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_dft.cli import main
from lit_dft.objectives import OBJECTIVES
from tests.conftest import ROOT, SMOKE, smoke_run_dir


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    (events,) = run_dir.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_smoke_fit_writes_checkpoint_config_and_loss_pair(smoke_run):
    loss, run = smoke_run
    assert list(run.rglob("epoch=*-step=20.ckpt")) and list(run.rglob("last.ckpt")), "checkpoints"
    (config,) = run.rglob("config.yaml")
    assert yaml.safe_load(config.read_text())["model"]["loss"] == loss
    scalars = _scalars(run)
    for tag in ("train/loss", "train/nll", "train/dft", "train/target_prob", "train/entropy", "val/nll", "val/entropy"):
        assert tag in scalars, tag
    assert len(scalars["train/loss"]) == 20
    objective = scalars["train/loss"] if loss == "sft" else scalars["train/nll"]
    assert sum(objective[-3:]) / 3 < sum(objective[:3]) / 3 - 0.3, "the loss falls over the run"
    if loss == "sft":
        assert scalars["train/loss"] == pytest.approx(scalars["train/nll"])
    else:
        assert scalars["train/loss"] == pytest.approx(scalars["train/dft"])


@pytest.mark.slow
def test_saved_config_reruns_as_is(dft_smoke_run, tmp_path):
    _, run = dft_smoke_run
    (config,) = run.rglob("config.yaml")
    main(["fit", "--config", str(config), "--trainer.max_steps=10", f"--trainer.default_root_dir={tmp_path}"])
    assert list(tmp_path.rglob("*.ckpt"))


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """``lit-dft ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model.loss=dtf", "Unknown objective 'dtf'. Registered objectives: asft, deft, dft, eaft, focal"),
        ("--model.model_name_or_path=./no/such/model", "Model path not found: ./no/such/model"),
        ("--data.preset=gsm8", "Unknown preset 'gsm8'. Known presets:"),
        ("--data.preset={question: q, solution: s}", "Preset (inline): no data source: the preset names no hub_id"),
        ("--data.preset={question: q, answer_format: boxd}", "Unknown answer_format 'boxd'. Known: answer_is, boxed"),
        (["--model.loss.class_path=lit_dft.DFT", "--model.loss.init_args.alpha=-1"], "DFT alpha must be >= 0, got -1"),
        ("--model.generation.num_samples=4", "num_samples=4 with temperature 0 would repeat one greedy answer"),
    ],
)
def test_bad_configuration_gets_one_clear_line(override, message, capsys, tmp_path):
    overrides = override if isinstance(override, list) else [override]
    code, _, err = _cli(capsys, "fit", "--config", SMOKE, *overrides, f"--trainer.default_root_dir={tmp_path}")
    assert code == 2
    line = _last_line(err)
    assert line.startswith("lit-dft: error: ") and message in line and "Traceback" not in err


def test_misspelled_key_is_rejected_by_the_parser(capsys):
    code, _, err = _cli(capsys, "fit", "--config", SMOKE, "--model.optimizer.learnin_rate=1")
    assert code != 0 and "learnin_rate" in err


def test_help_documents_every_data_and_grouped_model_option(capsys):
    import docstring_parser

    for _ in range(2):  # the second parser reads the docstrings the first one read, from the cache
        _, out, _ = _cli(capsys, "fit", "--help")
        assert "Maximum tokens per example" in out and "Batch examples of similar length" in out
        assert "--model.optimizer.learning_rate" in out and "Peak learning rate" in out
        assert "--model.generation.num_samples" in out and "Answers per problem, k" in out
    assert docstring_parser.parse_from_object.cache_info().hits > 0


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_recipe_prints_with_print_config(config, capsys):
    """jsonargparse resolves every key and class path of each recipe (models are not downloaded), under the subcommand
    its header gives."""
    found = re.search(rf"lit-dft (\w+) --config configs/{re.escape(config.name)}", config.read_text())
    assert found, f"{config.name}: the header names no `lit-dft SUBCOMMAND --config configs/{config.name}`"
    subcommand = found.group(1)
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


def test_every_recipe_keeps_float32_master_weights():
    """Mixed precision computes in bf16 over float32 weights; a bf16 ``dtype`` would make AdamW update bf16 weights,
    except under LoRA, where it is the frozen base's and the adapters are float32 (``test_lora``)."""
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        recipe = yaml.safe_load(config.read_text())
        lora = recipe.get("model", {}).get("lora", {}).get("r", 0) > 0
        dtype = recipe.get("model", {}).get("dtype") if not lora else None
        trainer = recipe.get("trainer", {})
        precision = str(trainer.get("precision", "32-true"))
        strategy = trainer.get("strategy")
        param_dtype = strategy.get("init_args", {}).get("param_dtype") if isinstance(strategy, dict) else None
        assert dtype in (None, "float32"), f"{config.name}: model.dtype {dtype} trains {dtype} weights"
        assert not precision.endswith("-true") or precision in ("32-true", "64-true"), f"{config.name}: {precision}"
        if param_dtype:
            assert precision == "32-true", f"{config.name}: FSDP2 param_dtype with autocast on top"


def _last_line(captured: str) -> str:
    return captured.strip().splitlines()[-1]


@pytest.mark.slow
def test_every_subcommand_runs_on_the_chunked_path(tmp_path_factory, tmp_path, monkeypatch, capsys):
    """fit (the smoke run), validate, test, predict, export and plot-polarization with a 49,152-token vocabulary."""
    from lit_dft.token_loss import TokenLoss

    decisions = []
    can_chunk = TokenLoss._can_chunk
    monkeypatch.setattr(
        TokenLoss, "_can_chunk", lambda self, *a: decisions.append(can_chunk(self, *a)) or decisions[-1]
    )
    run = smoke_run_dir("dft", tmp_path_factory)
    (ckpt,) = run.rglob("last.ckpt")
    assert torch.load(ckpt, weights_only=True)["global_step"] == 20, "last.ckpt holds the final step"
    validate = ["validate", "--config", SMOKE, f"--trainer.default_root_dir={tmp_path / 'v'}"]
    main([*validate, "--trainer.limit_val_batches=2"])
    main([*validate, f"--ckpt_path={ckpt}"])
    assert "val/nll" in capsys.readouterr().out
    assert decisions == [True, True], "validate ran the chunked loss under inference mode"
    evaluation = ["--config", str(ROOT / "configs/eval.yaml"), "--model.model_name_or_path=tiny"]
    evaluation += ["--model.generation.max_new_tokens=4", "--data.eval_limit=2", f"--ckpt_path={ckpt}"]
    for subcommand in ("test", "predict"):
        main([subcommand, *evaluation, f"--trainer.default_root_dir={tmp_path / subcommand}"])
        (predictions,) = (tmp_path / subcommand).rglob("predictions.jsonl")  # under the run, not the cwd
        assert predictions.parent.name.startswith("version_") and len(predictions.read_text().splitlines()) == 12
    main(["export", str(ckpt), str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    main(["plot-polarization", str(run), "-o", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").is_file()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"], ids=["zero bytes", "truncated"])
def test_broken_checkpoints_get_one_line(tmp_path, content, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(content)
    for argv in (
        ["fit", "--config", SMOKE, f"--ckpt_path={broken}", f"--trainer.default_root_dir={tmp_path}"],
        ["validate", "--config", SMOKE, f"--ckpt_path={broken}", f"--trainer.default_root_dir={tmp_path}"],
        ["export", str(broken), str(tmp_path / "out")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"lit-dft: error: Checkpoint {broken} is" in _last_line(err) and "Traceback" not in err
    assert not (tmp_path / "out").exists(), "export checks the checkpoint before it creates the folder"
    with pytest.raises(SystemExit):
        main(["fit", "--config", SMOKE, f"--ckpt_path={tmp_path / 'missing.ckpt'}"])
    assert _last_line(capsys.readouterr().err) == f"lit-dft: error: Checkpoint not found: {tmp_path / 'missing.ckpt'}"


class SigtermAt(L.Callback):
    """Sends this process SIGTERM at the end of optimiser step ``step``, as a scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_during_fit_leaves_a_checkpoint_that_resumes_to_the_same_weights(tmp_path_factory, tmp_path, capsys):
    loss, full_run = "dft", smoke_run_dir("dft", tmp_path_factory)
    args = ["fit", "--config", SMOKE, f"--model.loss={loss}", f"--trainer.default_root_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.callbacks+=tests.test_cli.SigtermAt", "--trainer.callbacks.step=13"])
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert _last_line(capsys.readouterr().err) == "lit-dft: stopped by SIGTERM"
    (interrupted,) = tmp_path.rglob("last.ckpt")
    assert torch.load(interrupted, weights_only=True)["global_step"] == 13, "saved at the step it stopped"
    main([*args, "--ckpt_path=last"])  # a new version_N folder: `last` is found in the one before
    assert f"Resuming from {interrupted}" in capsys.readouterr().out
    (resumed,) = sorted(tmp_path.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)[-1:]
    assert len(_scalars(resumed.parents[1])["train/loss"]) == 20 - 13, "only the steps after the checkpoint ran"
    (uninterrupted,) = full_run.rglob("last.ckpt")
    expected = torch.load(uninterrupted, weights_only=True)
    actual = torch.load(resumed, weights_only=True)
    assert actual["global_step"] == expected["global_step"] == 20
    for name, value in expected["state_dict"].items():
        torch.testing.assert_close(actual["state_dict"][name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_sigterm_ends_test_promptly_without_scoring_cut_off_answers(tmp_path):
    command = [sys.executable, "-m", "lit_dft", "test", "--config", "configs/eval.yaml"]
    command += ["--model.model_name_or_path=tiny", "--model.generation.max_new_tokens=100000", "--data.eval_limit=2"]
    command += [f"--trainer.default_root_dir={tmp_path}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    for line in process.stdout:  # generation starts after Lightning has installed its signal handlers
        output.append(line)
        if line.startswith("Answering"):
            process.send_signal(signal.SIGTERM)
            break
    try:
        rest, _ = process.communicate(timeout=120)  # 100,000 tokens per answer would take hours
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, "".join(output) + rest
    assert rest.strip().splitlines()[-1] == "lit-dft: stopped by SIGTERM"
    assert "test/acc" not in rest and not list(tmp_path.rglob("predictions.jsonl"))


@pytest.mark.slow
def test_fit_ending_between_validations_saves_its_final_weights(tmp_path, capsys):
    from lit_dft.cli import LitDFTCLI
    from lit_dft.data import MathDataModule
    from lit_dft.module import CausalLMModule

    args = ["fit", "--config", SMOKE, "--trainer.max_steps=13", f"--trainer.default_root_dir={tmp_path}"]
    cli = LitDFTCLI(CausalLMModule, MathDataModule, args=args, seed_everything_default=42)
    cli.after_fit()
    (last,) = tmp_path.rglob("last.ckpt")  # validation ran at step 10 only
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 13
    for name, value in cli.model.state_dict().items():
        torch.testing.assert_close(checkpoint["state_dict"][name], value, rtol=0, atol=0, msg=name)
    assert f"final weights: {last}" in capsys.readouterr().out


class InterruptAt(L.Callback):
    """Ends fit at optimiser step ``step`` with Ctrl-C or an error, and keeps the live weights at that moment."""

    weights: dict = {}

    def __init__(self, step: int, kind: str) -> None:
        self.step, self.kind = step, kind

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt if self.kind == "ctrl-c" else RuntimeError("a callback failed")

    def on_exception(self, trainer, pl_module, exception):
        InterruptAt.weights = {n: p.detach().clone() for n, p in pl_module.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ctrl-c", "error"])
def test_ctrl_c_or_an_error_in_a_callback_leaves_the_last_weights_on_disk(tmp_path_factory, tmp_path, kind):
    args = ["fit", "--config", SMOKE, f"--trainer.default_root_dir={tmp_path}"]
    interrupt = ["--trainer.callbacks+=tests.test_cli.InterruptAt", "--trainer.callbacks.step=7"]
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((SystemExit, RuntimeError)):
            main([*args, *interrupt, f"--trainer.callbacks.kind={kind}"])
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C from then on
    (last,) = tmp_path.rglob("last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 7
    for name, value in InterruptAt.weights.items():
        torch.testing.assert_close(checkpoint["state_dict"][name], value, rtol=0, atol=0, msg=name)
    if kind == "ctrl-c":  # resumes to the uninterrupted run's final weights
        main([*args, "--ckpt_path=last"])
        resumed = torch.load(max(tmp_path.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime), weights_only=True)
        (uninterrupted,) = smoke_run_dir("dft", tmp_path_factory).rglob("last.ckpt")
        expected = torch.load(uninterrupted, weights_only=True)
        assert resumed["global_step"] == expected["global_step"] == 20
        for name, value in expected["state_dict"].items():
            torch.testing.assert_close(resumed["state_dict"][name], value, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_a_full_disk_at_the_first_save_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    def full_disk(checkpoint, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMOKE, "--trainer.max_steps=3", f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 2
    line = _last_line(capsys.readouterr().err)
    assert line.startswith("lit-dft: error: No space left on device: ") and line.endswith(".ckpt"), line


def test_unwritable_checkpoint_folder_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMOKE, f"--trainer.default_root_dir={blocker / 'runs'}"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert _last_line(captured.err).startswith(f"lit-dft: error: Cannot write checkpoints to {blocker / 'runs'}")
    assert "train/loss" not in captured.out + captured.err


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(set(OBJECTIVES) - {"sft", "dft"}))  # sft and dft: the smoke runs
def test_every_objective_trains_from_the_command_line(loss, tmp_path):
    run = tmp_path / loss
    command = ["fit", "--config", SMOKE, f"--model.loss={loss}", "--data.limit=20", "--data.max_length=96"]
    command += ["--trainer.max_steps=3"]  # short examples: what differs between objectives is the loss, not the data
    main([*command, "--trainer.val_check_interval=3", f"--trainer.default_root_dir={run}"])
    scalars = _scalars(run)
    assert len(scalars["train/loss"]) == 3 and all(math.isfinite(v) for v in scalars["train/loss"])
    assert all(0 < v < math.log(49_152) for v in scalars["train/entropy"] + scalars["val/entropy"])


@pytest.mark.slow
def test_iw_sft_trains_against_reference_log_probs_from_the_data(tmp_path):
    """``model.reference: data``: no reference model, the data set's column gives the reference log-probs."""
    import json

    from lit_dft.data import MathDataModule, Preset
    from lit_dft.models import TINY_MODEL

    data = tmp_path / "sampled.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "solution": f"{i} + {i} = \\boxed{{{2 * i}}}."} for i in range(12)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    lengths = MathDataModule(preset=Preset(answer=None), path=str(data), tokenizer_name_or_path=TINY_MODEL)
    lengths.setup("fit")
    responses = [
        len(ids) - start for ids, start in zip(lengths.train_set["input_ids"], lengths.train_set["prompt_length"])
    ]
    data.write_text("\n".join(json.dumps({**r, "ref": [-11.0] * n}) for r, n in zip(rows, responses)) + "\n")
    run = tmp_path / "run"
    preset = "--data.preset={question: question, solution: solution, answer: null}"
    main(
        ["fit", "--config", SMOKE, "--model.loss=iw_sft", "--model.reference=data", preset, f"--data.path={data}"]
        + ["--data.reference_log_probs_column=ref", "--data.val_split=4", "--trainer.max_steps=3"]
        + ["--trainer.val_check_interval=3", f"--trainer.default_root_dir={run}"]
    )
    scalars = _scalars(run)
    # a random model's log p is about -ln(49,152) = -10.8 > -11: every weight above 1, so the loss is above SFT's
    assert all(loss > nll for loss, nll in zip(scalars["train/loss"], scalars["train/nll"]))
    assert len(scalars["train/loss"]) == 3 and all(
        math.isfinite(v) for v in scalars["train/loss"] + scalars["val/loss"]
    )
    checkpoint = torch.load(next(run.rglob("last.ckpt")), weights_only=True)
    assert checkpoint["reference"] == "data" and not any("reference_model" in k for k in checkpoint["state_dict"])


@pytest.mark.parametrize("args, problem", [([], "which subcommand?"), (["fitt"], "unknown subcommand 'fitt'")])
def test_no_or_a_misspelled_subcommand_lists_the_subcommands(args, problem, capsys):
    code, _, err = _cli(capsys, *args)
    assert code == 2 and err.startswith(f"lit-dft: {problem}")
    for name in ("fit", "validate", "test", "predict", "export", "plot-polarization"):
        assert f"\n  {name} " in err, name

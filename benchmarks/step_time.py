"""Training-step time and peak memory of every objective against SFT, on the same model and batch (forward,
backward, AdamW).

Time: the objectives take turns step by step on one model (``asft`` and ``iw_sft`` against a frozen copy of
it, its forward included); medians are compared. Memory: each objective in a fresh process, after two warm-up
steps, the peak resident memory of a step above the level before it (weights, the reference's included, and
AdamW's state are already there); the median of two steps.

    python -m benchmarks.step_time [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from benchmarks.common import PeakMemory, markdown_table, median, run_worker, save
from lit_dft.data import MathDataModule
from lit_dft.generation import special_token_ids
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL
from lit_dft.module import CausalLMModule
from lit_dft.objectives import OBJECTIVES, build_objective
from lit_dft.token_loss import TokenLoss, default_chunk_size

# The goals: objectives with context only within 5% of SFT, those with a reference model within 50%.
GOALS = {"asft": 1.5, "iw_sft": 1.5}


def _setup(model_name: str, names: list[str]):
    """The batch, the model, a loss per objective (each with the same frozen reference) and AdamW."""
    data = MathDataModule(preset="champ", tokenizer_name_or_path=model_name, limit=4, max_length=256)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = CausalLMModule(model_name)
    module.configure_model()
    reference = copy.deepcopy(module.model).requires_grad_(False).eval()
    special = special_token_ids(module.model, module.tokenizer)
    losses = {name: TokenLoss(module.model, build_objective(name), None, special, reference) for name in names}
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6)

    def step(name: str) -> None:
        losses[name](batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batch, module, losses, step


def worker(model_name: str, name: str) -> dict:
    """One objective's peak step memory, in this (fresh) process."""
    _, _, _, step = _setup(model_name, [name])
    step(name)
    step(name)
    peaks = []
    for _ in range(2):
        with PeakMemory() as memory:
            step(name)
        peaks.append(memory.mb)
    return {"peak_mb": median(peaks)}


def main(quick: bool = False) -> str:
    model_name, steps = (TINY_MODEL, 3) if quick else (EMBEDDED_MODEL, 4)
    batch, module, losses, step = _setup(model_name, sorted(OBJECTIVES))
    times: dict[str, list[float]] = {name: [] for name in losses}
    for round in range(steps + 1):
        for name in losses:  # round robin: any drift of the machine hits every objective alike
            start = time.perf_counter()
            step(name)
            if round > 0:  # the first round warms up allocators and AdamW state
                times[name].append(time.perf_counter() - start)
    peaks = {name: run_worker("benchmarks.step_time", model_name, name)["peak_mb"] for name in losses}
    sft = median(times["sft"])
    tokens = int(batch.num_tokens)
    vocab = module.model.config.vocab_size
    results = {"model": model_name, "batch_tokens": tokens, "chunked": losses["sft"].chunked, "seconds": times}
    save("step_time", results | {"peak_mb": peaks})
    rows = [
        [name, f"{median(seconds):.3f}", f"{median(seconds) / sft:.3f}x", f"<= {GOALS.get(name, 1.05)}x"]
        + [f"{peaks[name]:.0f}", f"{peaks[name] - peaks['sft']:+.0f}"]
        for name, seconds in times.items()
    ]
    shape = (
        f"{model_name}, batch {tuple(batch.input_ids.shape)} ({tokens} tokens), chunked loss: {losses['sft'].chunked}. "
        "Peak MB: a step's peak resident memory above the level before it, weights, the reference's and AdamW's "
        f"state excluded (fresh process per objective); one chunk of float32 logits is "
        f"{default_chunk_size(vocab) * vocab * 4 / 2**20:.0f} MB"
    )
    headers = ["objective", "s/step", "vs SFT", "goal", "peak MB", "vs SFT (MB)"]
    return shape + "\n\n" + markdown_table(headers, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "OBJECTIVE"))
    args = parser.parse_args()
    print(json.dumps(worker(*args.worker)) if args.worker else main(args.quick))

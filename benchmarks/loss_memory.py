"""Chunked vs naive DFT loss: peak memory and time of forward + backward over N target tokens.

Each measurement runs in a fresh process: the first pass measures memory (peak resident memory
above the level before it, sampled every millisecond), the following passes are timed. Variants alternate, medians are reported.

    python -m benchmarks.loss_memory [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import PeakMemory, markdown_table, median, run_worker, save
from lit_dft.objectives import DFT
from lit_dft.token_loss import chunked_objective_loss, naive_objective_loss

SHAPES = [(49_152, 896), (49_152, 1_536), (151_936, 896), (151_936, 1_536)]


def _loss(variant: str, hidden, weight, targets):
    if variant == "naive":
        return naive_objective_loss(hidden @ weight.T, targets, DFT())[0]
    return chunked_objective_loss(hidden, weight, targets, DFT())[0]


def worker(variant: str, vocab: int, hidden_size: int, tokens: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(tokens, hidden_size, generator=g) * 0.02).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) * 0.02).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    with PeakMemory() as memory:
        _loss(variant, hidden, weight, targets).backward()
    peak = memory.mb
    times = []
    for _ in range(repeats):
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        _loss(variant, hidden, weight, targets).backward()
        times.append(time.perf_counter() - start)
    return {"peak_mb": peak, "seconds": median(times)}


def main(quick: bool = False) -> str:
    tokens, rounds, repeats = (1_024, 1, 1) if quick else (4_096, 2, 2)
    rows, raw = [], []
    for vocab, hidden in SHAPES[:1] if quick else SHAPES:
        results = {"naive": [], "chunked": []}
        for _ in range(rounds):
            for variant in ("naive", "chunked"):
                results[variant].append(
                    run_worker("benchmarks.loss_memory", variant, str(vocab), str(hidden), str(tokens), str(repeats))
                )
        memory = {v: median([r["peak_mb"] for r in rs]) for v, rs in results.items()}
        seconds = {v: median([r["seconds"] for r in rs]) for v, rs in results.items()}
        raw.append({"vocab": vocab, "hidden": hidden, "tokens": tokens, "runs": results})
        rows.append(
            [
                vocab,
                hidden,
                tokens,
                f"{memory['naive']:.0f}",
                f"{memory['chunked']:.0f}",
                f"{memory['chunked'] / memory['naive']:.2f}x",
                f"{seconds['naive']:.2f}",
                f"{seconds['chunked']:.2f}",
                f"{seconds['chunked'] / seconds['naive']:.2f}x",
            ]
        )
    save("loss_memory", {"results": raw})
    return markdown_table(
        [
            "V",
            "hidden",
            "N",
            "naive peak MB",
            "chunked peak MB",
            "memory ratio (goal <= 0.25x)",
            "naive s",
            "chunked s",
            "time ratio (goal <= 1.15x)",
        ],
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=5, metavar=("VARIANT", "V", "H", "N", "REPEATS"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        variant, *numbers = args.worker
        print(json.dumps(worker(variant, *map(int, numbers))))
    else:
        print(main(args.quick))

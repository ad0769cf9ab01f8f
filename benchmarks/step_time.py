"""Training-step time of every objective against SFT, on the same model and batch (forward, backward, AdamW).

The objectives take turns step by step on one model (``asft`` against a frozen copy of it, its reference
forward included); medians are compared.

    python -m benchmarks.step_time [--quick]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.common import markdown_table, median, save
from lit_dft.data import MathDataModule
from lit_dft.generation import special_token_ids
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL
from lit_dft.module import CausalLMModule
from lit_dft.objectives import OBJECTIVES, build_objective
from lit_dft.token_loss import TokenLoss

# The goals: objectives with context only within 5% of SFT, those with a reference model within 50%.
GOALS = {"asft": 1.5}


def main(quick: bool = False) -> str:
    model_name, steps = (TINY_MODEL, 3) if quick else (EMBEDDED_MODEL, 4)
    data = MathDataModule(preset="champ", tokenizer_name_or_path=model_name, limit=4, max_length=256)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = CausalLMModule(model_name)
    module.configure_model()
    reference = copy.deepcopy(module.model).requires_grad_(False).eval()
    special = special_token_ids(module.model, module.tokenizer)
    losses = {
        name: TokenLoss(module.model, build_objective(name), None, special, reference) for name in sorted(OBJECTIVES)
    }
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6)
    times: dict[str, list[float]] = {name: [] for name in losses}
    for step in range(steps + 1):
        for name, loss in losses.items():  # round robin: any drift of the machine hits every objective alike
            start = time.perf_counter()
            loss(batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step > 0:  # the first round warms up allocators and AdamW state
                times[name].append(time.perf_counter() - start)
    sft = median(times["sft"])
    tokens = int(batch.num_tokens)
    save("step_time", {"model": model_name, "batch_tokens": tokens, "chunked": losses["sft"].chunked, "seconds": times})
    rows = [
        [name, f"{median(seconds):.3f}", f"{median(seconds) / sft:.3f}x", f"<= {GOALS.get(name, 1.05)}x"]
        for name, seconds in times.items()
    ]
    shape = (
        f"{model_name}, batch {tuple(batch.input_ids.shape)} ({tokens} tokens), chunked loss: {losses['sft'].chunked}"
    )
    return shape + "\n\n" + markdown_table(["objective", "s/step", "vs SFT", "goal"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))

"""DFT vs SFT training-step time on the same model and batch (forward, backward, AdamW step).

The objectives alternate step by step on one model; medians are compared.

    python -m benchmarks.step_time [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import markdown_table, median, save
from lit_dft.data import MathDataModule
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL
from lit_dft.module import CausalLMModule
from lit_dft.objectives import build_objective


def main(quick: bool = False) -> str:
    model_name, steps = (TINY_MODEL, 6) if quick else (EMBEDDED_MODEL, 8)
    data = MathDataModule(preset="champ", tokenizer_name_or_path=model_name, limit=4, max_length=256)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = CausalLMModule(model_name)
    module.configure_model()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-6)
    times: dict[str, list[float]] = {"sft": [], "dft": []}
    for step in range(2 * steps + 2):
        name = ("sft", "dft")[step % 2]
        module.token_loss.objective = build_objective(name)
        start = time.perf_counter()
        module.token_outputs(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:  # the first two steps warm up allocators and AdamW state
            times[name].append(time.perf_counter() - start)
    sft, dft = median(times["sft"]), median(times["dft"])
    tokens = int(batch.attention_mask.sum())
    save("step_time", {"model": model_name, "batch_tokens": tokens, "seconds": times})
    return markdown_table(
        ["model", "batch", "SFT s/step", "DFT s/step", "DFT / SFT (goal <= 1.02x)"],
        [
            [
                model_name,
                f"{tuple(batch.input_ids.shape)}, {tokens} tokens",
                f"{sft:.3f}",
                f"{dft:.3f}",
                f"{dft / sft:.3f}x",
            ]
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))

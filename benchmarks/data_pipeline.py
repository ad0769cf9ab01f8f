"""GSM8K train with the SmolLM2 tokenizer: tokenisation speed, and padding with and without length grouping.

python -m benchmarks.data_pipeline [--quick]
"""

from __future__ import annotations

import argparse
import time

import datasets

from benchmarks.common import SHARED_DATA, markdown_table, save
from lit_dft.data import MathDataModule
from lit_dft.models import EMBEDDED_MODEL

GSM8K = SHARED_DATA / "gsm8k" / "train.jsonl"


def _padding_fraction(dm: MathDataModule, group_by_length: bool) -> float:
    dm.group_by_length = group_by_length
    padded = real = 0
    for batch in dm.train_dataloader():
        padded += batch.attention_mask.numel()
        real += int(batch.num_tokens)
    return 1 - real / padded


def main(quick: bool = False) -> str:
    datasets.disable_caching()  # time the tokenisation itself, not a cache hit
    limit = 1_000 if quick else None
    dm = MathDataModule(
        preset="gsm8k", path=str(GSM8K), tokenizer_name_or_path=EMBEDDED_MODEL, limit=limit, batch_size=8
    )
    dm.setup("fit")  # loads the tokenizer and warms the JSON reader
    rows = len(dm.train_set)
    dm.train_set, dm.report = None, {}
    start = time.perf_counter()
    dm.setup("fit")
    seconds = time.perf_counter() - start
    plain, grouped = _padding_fraction(dm, False), _padding_fraction(dm, True)
    save("data_pipeline", {"rows": rows, "setup_seconds": seconds, "padding_random": plain, "padding_grouped": grouped})
    return markdown_table(
        [
            "rows",
            "read + format + tokenise",
            "rows/s",
            "padding, random batches of 8",
            "padding, length-grouped",
            "ratio",
        ],
        [
            [
                rows,
                f"{seconds:.1f} s",
                f"{rows / seconds:,.0f}",
                f"{plain:.1%}",
                f"{grouped:.1%}",
                f"{grouped / plain:.2f}x",
            ]
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(main(parser.parse_args().quick))

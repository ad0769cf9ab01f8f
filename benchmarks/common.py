"""Helpers shared by the benchmarks: peak RSS, medians, subprocess workers, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the project


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now, from /proc (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every millisecond by a thread."""

    def __enter__(self) -> PeakMemory:
        self.baseline = self.peak = rss_mb()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def mb(self) -> float:
        return self.peak - self.baseline


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_worker(module: str, *args: str) -> dict:
    """Run ``python -m module --worker args`` in a fresh process (a clean peak-RSS mark); its last stdout line is JSON."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--worker", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def first_prompts(model_name: str, preset: str, path: Path, problems: int):
    """The data module and one batch holding the first ``problems`` prompts of a benchmark, as evaluation builds them."""
    from lit_dft.data import MathDataModule
    from lit_dft.data.datamodule import EvalSet

    data = MathDataModule(
        tokenizer_name_or_path=model_name,
        eval_sets=[EvalSet(preset, str(path), limit=problems)],
        eval_batch_size=problems,
    )
    data.setup("test")
    (loader,) = data.test_dataloader()
    return data, next(iter(loader))


def fixed_length_sampling(tokenizer, samples: int, new_tokens: int):
    """Sampling at temperature 1 in which every sequence runs to ``new_tokens``: equal work for any way of generating."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,  # off: None in a GenerationConfig means transformers' default, 50
        num_return_sequences=samples,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=-1,
    )

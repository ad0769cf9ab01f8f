"""FSDP2 loading: peak host memory of a non-zero rank when every rank loads the weights (``load_on_rank0=False``)
against rank 0 loading them and broadcasting them into the shards (``load_on_rank0=True``).

Each run is 2 fresh processes (gloo on the CPU) that set up the CausalLMModule under ``FSDP2Strategy`` and stop
before the first step. Each rank measures its resident memory with the kernel's high-water mark (``VmHWM``, reset
through ``/proc/self/clear_refs`` at each phase's start), above the level just before ``configure_model``: the load
(``configure_model``), then the strategy's setup (sharding, materialisation, the broadcast). On the CPU a rank's own
shard lives in host memory, and so does the broadcast's buffer of one whole weight at a time: on GPUs both would be
in device memory, so the table also gives the peak less the rank's own shard. Modes alternate; medians.

    python -m benchmarks.rank0_loading [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

import lightning.pytorch as L
from torch.distributed.tensor import DTensor

from benchmarks.common import markdown_table, median, save
from lit_dft.models import EMBEDDED_MODEL, TINY_MODEL
from lit_dft.module import CausalLMModule
from lit_dft.strategies import FSDP2Strategy

GOAL = 0.3  # the goal: a non-zero rank's peak at most 0.3x today's


def _reset_peak() -> float:
    """Restart the kernel's high-water mark of resident memory; the resident MB now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


class _Measured(CausalLMModule):
    """Marks the phases: Lightning calls ``setup``, ``configure_model``, the strategy's setup, then ``on_fit_start``."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.start, self.base = time.perf_counter(), _reset_peak()

    def configure_model(self) -> None:
        super().configure_model()
        self.load_peak, self.loaded = _status_mb("VmHWM"), _status_mb("VmRSS")
        _reset_peak()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        local = [t.to_local() if isinstance(t, DTensor) else t for t in chain(self.parameters(), self.buffers())]
        peak = max(self.load_peak, _status_mb("VmHWM"))
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # held: what is live, not what the allocator keeps for reuse
        self.result = {
            "load_mb": self.load_peak - self.base,
            "peak_mb": peak - self.base,
            "held_mb": _status_mb("VmRSS") - self.base,
            "shard_mb": sum(t.numel() * t.element_size() for t in local) / 2**20,
            "largest_weight_mb": max(p.numel() * p.element_size() for p in self.parameters()) / 2**20,  # whole
            "seconds": time.perf_counter() - self.start,
        }


def worker(model_name: str, load_on_rank0: bool, out: Path) -> None:
    module = _Measured(model_name, loss="sft")
    strategy = FSDP2Strategy(load_on_rank0=load_on_rank0)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_steps=0, logger=False, enable_progress_bar=False
    )
    trainer.fit(module, train_dataloaders=[{}])  # stops before the first step
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(module.result))


def _run(model_name: str, load_on_rank0: bool) -> list[dict]:
    """One 2-process run (Lightning starts rank 1 by running the same command); each rank's measurements."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "benchmarks.rank0_loading", "--worker", model_name, str(load_on_rank0), folder]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rank0_loading {model_name} {load_on_rank0} failed:\n{done.stderr[-3000:]}")
        return [json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def _less_shard(result: dict) -> float:
    """The peak less the rank's own shard, which a GPU run keeps in device memory."""
    return result["peak_mb"] - result["shard_mb"]


def main(quick: bool = False) -> str:
    model_name, rounds = (TINY_MODEL, 1) if quick else (EMBEDDED_MODEL, 2)
    modes = {"every rank loads": False, "rank 0 loads": True}
    runs: dict[str, list[list[dict]]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, load_on_rank0 in modes.items():
            runs[name].append(_run(model_name, load_on_rank0))
    save("rank0_loading", {"model": model_name, "runs": runs})
    summary = {
        (name, rank): {key: median([run[rank][key] for run in results]) for key in results[0][rank]}
        for name, results in runs.items()
        for rank in (0, 1)
    }
    rows = []
    for (name, rank), s in summary.items():
        today = summary[("every rank loads", rank)]
        rows.append(
            [
                name,
                rank,
                f"{s['peak_mb']:.0f} ({s['peak_mb'] / today['peak_mb']:.2f}x)",
                f"{s['load_mb']:.0f}",
                f"{s['held_mb']:.0f}",
                f"{s['shard_mb']:.0f}",
                f"{_less_shard(s):.0f} ({_less_shard(s) / _less_shard(today):.2f}x)",
                f"{s['seconds']:.1f}",
            ]
        )
    header = [
        "path",
        "rank",
        "peak MB",
        "of which loading",
        "held after setup",
        "own shard",
        "peak less own shard",
        "setup s",
    ]
    one, today = summary[("rank 0 loads", 1)], summary[("every rank loads", 1)]
    ratio = one["peak_mb"] / today["peak_mb"]
    without = _less_shard(one) / _less_shard(today)
    verdict = (
        f"Rank 1's peak with rank-0 loading is {ratio:.2f}x that of every rank loading counting its own shard "
        f"({'meets' if ratio <= GOAL else 'misses'} the goal), {without:.2f}x without it "
        f"({'meets' if without <= GOAL else 'misses'} it). What remains without the shard is loading's own cost "
        f"(tokenizer, config: {one['load_mb']:.0f} MB) and the broadcast's buffer of one whole weight (the largest: "
        f"{one['largest_weight_mb']:.0f} MB), which NCCL would also hold on the GPU."
    )
    return (
        f"{model_name}, float32, FSDP2 over 2 CPU processes (gloo), {rounds} round(s); goal: a non-zero rank's peak "
        f"<= {GOAL}x that of every rank loading\n\n"
        + markdown_table(header, rows)
        + "\n\nMB of resident host memory above the level before `configure_model`: the peak through loading, "
        "sharding and the broadcast (ratios against every rank loading, same rank), the peak of loading alone, and "
        "what is held once set up (after `malloc_trim`). On GPUs a rank's own shard (and the broadcast's one-weight "
        "buffer) would be in device memory; here they are in host memory, hence the column without the shard.\n\n"
        + verdict
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3] == "True", Path(sys.argv[4]))
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--quick", action="store_true")
        print(main(parser.parse_args().quick))

"""The device check's dry run (CPU, tiny shapes), so the script that runs on a lent GPU never rots."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_measures_every_lit_dft_row(tmp_path):
    # A subprocess: the FSDP2 row leaves a process group behind.
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line for line in (tmp_path / "gpu_check.md").read_text().splitlines() if line.startswith("| lit_dft")]
    assert len(rows) == 6 and not [row for row in rows if "Error" in row], rows
    chunked = {row.split(" | ")[0]: row.split(" | ")[-1] for row in rows}
    assert '"chunked": false' in chunked["| lit_dft full logits, fp32 master + bf16 autocast"]
    assert '"chunked": true' in chunked["| lit_dft chunked, fp32 master + bf16 autocast (recipe)"]

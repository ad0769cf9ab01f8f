"""Screenshots of TensorBoard on a run, as a person opening it sees it: starts TensorBoard, points headless
Chromium (Debian's ``chromium`` package) at a tab, saves a PNG per tab.

    python docs/screenshot.py runs/demo docs/tensorboard [--tabs custom_scalars histograms ...]

writes ``docs/tensorboard-<tab>.png``. Not part of the tests: CI has no browser.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"TensorBoard did not answer at {url} within {seconds:.0f} s")


def screenshots(run_dir: Path, prefix: Path, tabs: list[str], size: str = "1600,1100") -> list[Path]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("needs Chromium: apt-get install chromium")
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(run_dir), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = []
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/")
        for tab in tabs:
            out = prefix.parent / f"{prefix.name}-{tab}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}"]
                + ["--virtual-time-budget=20000", f"--screenshot={out.resolve()}", f"http://127.0.0.1:{port}/#{tab}"],
                check=True,
                capture_output=True,
                timeout=120,
            )
            written.append(out)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("prefix", type=Path, help="output path without the tab and .png")
    parser.add_argument("--tabs", nargs="+", default=["custom_scalars", "histograms", "scalars"])
    for path in screenshots(**vars(parser.parse_args())):
        print(f"Wrote {path}")

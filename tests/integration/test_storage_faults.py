"""Storage faults between the trainer and GCS: the real client against the GCS emulator behind a
proxy that refuses connections, answers 503 and stalls. Transient faults are retried with
backoff; a persistent one stops training at the next checkpoint with exit 42, and the restart
loses no published checkpoint and finishes at the requested step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.integration.conftest import BUCKET, IMAGE, trainer_env
from trainer import contract
from trainer.run.checkpoints import latest_step
from trainer.run.storage import Storage

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(gcs: Storage) -> Iterator[FaultProxy]:
    upstream = urllib.parse.urlsplit(os.environ["STORAGE_EMULATOR_HOST"])
    fault_proxy = FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 80,
                             stall_seconds=4)
    yield fault_proxy
    fault_proxy.close()


def _through(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, **settings: float) -> Storage:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    return Storage(**settings)


@pytest.mark.parametrize("mode", ["refuse", "503", "stall"])
def test_transient_faults_are_retried(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path, mode: str) -> None:
    storage = _through(proxy, monkeypatch, timeout=1, retry_deadline=60)
    uri = f"gs://{BUCKET}/faults/{mode}.txt"
    proxy.fail_next(2, mode)
    storage.write_text(uri, "payload")
    proxy.fail_next(2, mode)
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(3 * 2**20))
    storage.upload(local, f"{uri}.bin")
    proxy.fail_next(2, mode)
    assert storage.read_text(uri) == "payload"
    assert proxy.served[mode] == 6
    assert storage.glob(f"gs://{BUCKET}/faults/{mode}.txt*") == [uri, f"{uri}.bin"]


def test_a_persistent_fault_gives_up_after_the_retry_deadline(
        proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = _through(proxy, monkeypatch, timeout=1, retry_deadline=4)
    proxy.fail_always("503")
    start = time.monotonic()
    with pytest.raises(Exception) as err:
        storage.write_text(f"gs://{BUCKET}/faults/never.txt", "x")
    assert time.monotonic() - start < 30
    assert "503" in str(err.value) or "Timeout" in type(err.value).__name__
    assert proxy.served["503"] >= 2  # it did retry


def _trainer(proxy: FaultProxy, run_dir: str, dataset: dict[str, str], checkpoint: str,
             steps: int, scratch: Path | None = None, deadline: int = 8
             ) -> subprocess.Popen[str]:
    env = {**trainer_env(), "STORAGE_EMULATOR_HOST": proxy.url,
           "TRAINER_STORAGE_TIMEOUT": "2", "TRAINER_STORAGE_RETRY_DEADLINE": str(deadline)}
    if scratch is not None:
        env["TRAINER_SCRATCH"] = str(scratch)
    cmd = [sys.executable, "-m", "trainer", "--run-dir", run_dir, "--train", dataset["train"],
           "--label-map", dataset["label_map"], "--checkpoint", checkpoint, "--model-size",
           "tiny", "--image-size", str(IMAGE), "--steps", str(steps), "--global-batch-size",
           "4", "--checkpoint-every", "4", "--keep-checkpoints", "10", "--log-every", "1",
           "--no-export"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _read_until(proc: subprocess.Popen[str], pattern: str, seen: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError(f"no line matched {pattern!r}:\n{''.join(seen[-30:])}")


def _published(gcs: Storage, run_dir: str) -> set[int]:
    return {int(m[1]) for u in gcs.list_prefix(f"{run_dir}/checkpoints")
            if (m := re.search(r"ckpt-(\d+)\.index$", u))}


def test_training_through_flaky_storage_loses_no_checkpoint(
        proxy: FaultProxy, gcs: Storage, dataset: dict[str, str], base_checkpoint: str) -> None:
    run_dir = f"gs://{BUCKET}/faults-flaky"
    seen: list[str] = []
    # Three faults may hit one request in a row: 1 + 2 + 4 s of backoff and a 2 s timeout.
    proc = _trainer(proxy, run_dir, dataset, base_checkpoint, steps=12, deadline=40)
    _read_until(proc, r"step 4/12", seen)
    # Open connections are dropped now (mid-upload of ckpt-4, likely), and the next three
    # connections meet a 503, a reset and a stall.
    for mode in ("503", "refuse", "stall"):
        proxy.fail_next(1, mode)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, "".join(seen)[-3000:] + out[-3000:]
    assert proxy.served == {"503": 1, "refuse": 1, "stall": 1}
    assert latest_step(gcs, run_dir) == 12
    assert _published(gcs, run_dir) == {4, 8, 12}


def test_persistent_failure_stops_at_the_next_checkpoint_and_resumes(
        proxy: FaultProxy, gcs: Storage, dataset: dict[str, str], base_checkpoint: str,
        tmp_path: Path) -> None:
    run_dir = f"gs://{BUCKET}/faults-down"
    seen: list[str] = []
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = _trainer(proxy, run_dir, dataset, base_checkpoint, steps=20, scratch=scratch)
    _read_until(proc, r"published checkpoint ckpt-4 ", seen)
    proxy.fail_always("503")  # GCS is gone from here on
    out, _ = proc.communicate(timeout=600)
    log = "".join(seen) + out
    assert proc.returncode == contract.EXIT_RETRYABLE, log[-3000:]
    steps = [int(s) for s in re.findall(r"step (\d+)/20", log)]
    # Stopped at the checkpoint after the one that failed (8), long before the end.
    assert max(steps) == 12, steps
    assert re.search(r"error: publishing a checkpoint to .* failed", log)
    assert list(scratch.iterdir()) == []  # staged shards and local checkpoints removed on exit 42
    proxy.heal()
    assert latest_step(gcs, run_dir) == 4  # nothing newer was claimed

    again = _trainer(proxy, run_dir, dataset, base_checkpoint, steps=20)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert "resumed from step 4" in out
    assert latest_step(gcs, run_dir) == 20
    assert {4, 8, 12, 16, 20} <= _published(gcs, run_dir)

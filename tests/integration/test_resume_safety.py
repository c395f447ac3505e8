"""Resuming never loses or overwrites work: LATEST is a hint, a checkpoint is used only once it
reads back whole, a junk checkpoint is one error line, and a worker whose shards hold nothing
usable ends the job in one line instead of stalling it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import BUCKET, IMAGE, trainer_env, write_spec
from trainer import contract
from trainer.run.checkpoints import latest_step
from trainer.run.storage import Storage, split_gcs

pytestmark = pytest.mark.integration


def _train(run_dir: str, dataset: dict[str, str], checkpoint: str, steps: int,
           *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "trainer", "--run-dir", run_dir, "--train", dataset["train"],
           "--label-map", dataset["label_map"], "--checkpoint", checkpoint, "--model-size",
           "tiny", "--image-size", str(IMAGE), "--steps", str(steps), "--global-batch-size", "4",
           "--checkpoint-every", "4", "--keep-checkpoints", "10", "--log-every", "1",
           "--no-export", *extra]
    return subprocess.run(cmd, env=trainer_env(), capture_output=True, text=True, timeout=600)


def _blob(gcs: Storage, uri: str):
    bucket, name = split_gcs(uri)
    return gcs.client.bucket(bucket).get_blob(name)


@pytest.fixture(scope="module")
def trained(gcs: Storage, dataset: dict[str, str], base_checkpoint: str) -> str:
    """A run directory with ckpt-4 and ckpt-8 published."""
    run_dir = f"gs://{BUCKET}/resume-source"
    result = _train(run_dir, dataset, base_checkpoint, 8)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert latest_step(gcs, run_dir) == 8
    return run_dir


def _copy_run(gcs: Storage, source: str, target: str, tmp_path: Path) -> None:
    for uri in gcs.list_prefix(source):
        local = tmp_path / "copy"
        gcs.download(uri, local)
        gcs.upload(local, target + uri[len(source):])


def test_garbage_latest_resumes_from_the_newest_complete_checkpoint(
        gcs: Storage, dataset: dict[str, str], base_checkpoint: str, trained: str,
        tmp_path: Path) -> None:
    run_dir = f"gs://{BUCKET}/resume-garbage"
    _copy_run(gcs, trained, run_dir, tmp_path)
    ckpt = f"{run_dir}/{contract.RUN_CHECKPOINTS}"
    generations = {n: _blob(gcs, f"{ckpt}/{n}").generation
                   for n in ("ckpt-4.index", "ckpt-8.index")}
    gcs.write_text(f"{run_dir}/{contract.RUN_CHECKPOINT_POINTER}", "\x00garbage")
    result = _train(run_dir, dataset, base_checkpoint, 12)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "names no complete checkpoint" in out
    assert "resumed from step 8" in out and "fine-tuning" not in out
    assert latest_step(gcs, run_dir) == 12
    # ckpt-4 and ckpt-8 are the same objects: nothing was trained again over them.
    assert {n: _blob(gcs, f"{ckpt}/{n}").generation for n in generations} == generations


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(
        gcs: Storage, dataset: dict[str, str], base_checkpoint: str, trained: str,
        tmp_path: Path) -> None:
    run_dir = f"gs://{BUCKET}/resume-truncated"
    _copy_run(gcs, trained, run_dir, tmp_path)
    data = next(u for u in gcs.list_prefix(f"{run_dir}/{contract.RUN_CHECKPOINTS}")
                if "ckpt-8.data-" in u)
    local = gcs.download(data, tmp_path / "data")
    local.write_bytes(local.read_bytes()[:100])
    gcs.upload(local, data)
    result = _train(run_dir, dataset, base_checkpoint, 12)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "ckpt-8 of" in out and "cannot be read" in out
    assert "resumed from step 4" in out
    assert latest_step(gcs, run_dir) == 12


def test_a_junk_checkpoint_is_one_error_line(gcs: Storage, dataset: dict[str, str],
                                             tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.ckpt.index").write_bytes(b"not an sstable at all")
    (junk / "model.ckpt.data-00000-of-00001").write_bytes(b"\x00" * 64)
    result = _train(f"gs://{BUCKET}/resume-junk", dataset, str(junk / "model.ckpt"), 4)
    assert result.returncode == contract.EXIT_USER_ERROR
    errors = [line for line in result.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stdout[-2000:]
    assert "not a readable TensorFlow checkpoint" in errors[0], errors[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_worker_with_nothing_usable_ends_the_job_in_one_line(
        gcs: Storage, dataset: dict[str, str], base_checkpoint: str, tmp_path: Path) -> None:
    from trainer.detection import synthetic

    local = tmp_path / "data"
    good = synthetic.write_dataset(local, "good", shards=1, per_shard=8, size=IMAGE,
                                   classes=[1, 2], seed=3)[0]
    boxless = local / "train-00001-of-00002.tfrecord"
    import numpy as np
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(boxless)) as writer:
        pixels = np.zeros((IMAGE, IMAGE, 3), dtype=np.uint8)
        for i in range(8):
            writer.write(synthetic.tf_example(pixels, [], f"empty-{i}"))
    gcs.upload(good, f"gs://{BUCKET}/boxless/train-00000-of-00002.tfrecord")
    gcs.upload(boxless, f"gs://{BUCKET}/boxless/train-00001-of-00002.tfrecord")
    spec = write_spec(tmp_path / "spec.yaml", dataset, base_checkpoint,
                      data={"train": [f"gs://{BUCKET}/boxless/train-*-of-00002.tfrecord"]})
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "launcher", "run-local", str(spec)],
                          env=trainer_env(), capture_output=True, text=True, timeout=600)
    assert time.monotonic() - start < 300
    assert proc.returncode == contract.EXIT_USER_ERROR, proc.stdout[-3000:]
    error = proc.stderr.strip().splitlines()
    # Both workers end with worker 1's reason (they agree before the first collective); the
    # launcher reports whichever exited first.
    assert len(error) == 1 and re.match(r"error: worker [01] exited with code 1", error[0]), error
    assert ("worker 1 --train: no usable example in train-00001-of-00002.tfrecord: 0 of 8 "
            "examples usable") in error[0]

"""Real fine-tuning runs: `launcher run-local` starts two trainer processes (MultiWorkerMirrored-
Strategy on 127.0.0.1, TensorFlow on CPU) that read from and publish to the GCS emulator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.conftest import (
    BUCKET,
    check_saved_model,
    finish,
    kill_worker_at,
    preempt_and_resume,
    start_launcher,
    write_spec,
)
from trainer import contract
from trainer.run.checkpoints import latest_step
from trainer.run.storage import Storage

pytestmark = pytest.mark.integration


def _run_dir(spec_file: Path) -> str:
    return f"gs://{BUCKET}/runs-{spec_file.parent.name}/default/ft"


def test_two_workers_fine_tune_and_publish_to_gcs(tmp_path: Path, gcs: Storage,
                                                  dataset: dict[str, str],
                                                  base_checkpoint: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml", dataset, base_checkpoint,
                      data={"train": [dataset["train"]], "eval": [dataset["eval"]]},
                      training={"export": True})
    code, out, err = finish(start_launcher("run-local", str(spec)), [])
    assert code == 0, out[-4000:] + err
    # A clean finish reads as one: no coordination-service error at shutdown.
    shutdown_noise = [line for line in (out + err).splitlines()
                      if "CoordinationService" in line or "have crashed" in line]
    assert not shutdown_noise, "\n".join(shutdown_noise)
    run_dir = _run_dir(spec)
    assert "[0]" in out and "[1]" in out
    assert "fine-tuning (detection)" in out
    # Synchronous training: both workers report the same loss at the same step.
    losses = {i: re.findall(rf"worker {i} step 8/8 loss (\S+)", out) for i in (0, 1)}
    assert losses[0] and losses[0] == losses[1]
    assert latest_step(gcs, run_dir) == 8
    names = {u.rsplit("/", 1)[1] for u in gcs.list_prefix(f"{run_dir}/checkpoints")}
    assert {"ckpt-8.index", "ckpt-4.index", "LATEST"} <= names
    assert any(n.startswith("ckpt-8.data-") for n in names)
    assert gcs.list_prefix(f"{run_dir}/{contract.RUN_SUMMARIES}/train")
    assert gcs.list_prefix(f"{run_dir}/{contract.RUN_SUMMARIES}/eval")
    assert gcs.exists(f"{run_dir}/{contract.RUN_SPEC}")
    assert f"checkpoints: {run_dir}/checkpoints" in out
    metrics = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_EVAL_METRICS}"))
    assert metrics["step"] == 8
    assert 0.0 <= metrics["eval"]["AP"] <= 1.0 and metrics["eval"]["loss/total_loss"] > 0
    assert metrics["train"]["total_loss"] == pytest.approx(float(losses[0][0]), rel=1e-3)
    exported = gcs.list_prefix(f"{run_dir}/{contract.RUN_EXPORT}")
    assert any(u.endswith("/saved_model.pb") for u in exported)
    check_saved_model(gcs, f"{run_dir}/{contract.RUN_EXPORT}", tmp_path / "export")


def test_sigterm_saves_exits_42_and_resumes_at_that_step(tmp_path: Path, gcs: Storage,
                                                         dataset: dict[str, str],
                                                         base_checkpoint: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml", dataset, base_checkpoint,
                      training={"steps": 16, "checkpointEvery": 16, "logEvery": 1})
    preempt_and_resume(spec, 16)
    assert latest_step(gcs, _run_dir(spec)) == 16


def test_sigkill_of_a_worker_restarts_from_the_newest_checkpoint(tmp_path: Path, gcs: Storage,
                                                                 dataset: dict[str, str],
                                                                 base_checkpoint: str) -> None:
    spec = write_spec(tmp_path / "spec.yaml", dataset, base_checkpoint,
                      training={"steps": 16, "checkpointEvery": 4, "logEvery": 1})
    out = kill_worker_at(spec, 1, r"published checkpoint ckpt-4 ", "--grace", "10")
    resumed = re.search(r"resumed from step (\d+)", out)
    assert resumed and int(resumed[1]) >= 4 and int(resumed[1]) % 4 == 0
    assert latest_step(gcs, _run_dir(spec)) == 16


def test_corrupt_shard_stops_every_worker_with_the_error(tmp_path: Path, gcs: Storage,
                                                         dataset: dict[str, str],
                                                         base_checkpoint: str) -> None:
    good = sorted(Path(dataset["local"]).glob("train-*.tfrecord"))
    corrupt = tmp_path / "broken.tfrecord"
    data = bytearray(good[1].read_bytes())
    data[200:400] = b"\x00" * 200  # breaks the records' CRCs
    corrupt.write_bytes(bytes(data))
    gcs.upload(good[0], f"gs://{BUCKET}/bad/train-00000-of-00002.tfrecord")
    gcs.upload(corrupt, f"gs://{BUCKET}/bad/train-00001-of-00002.tfrecord")
    spec = write_spec(tmp_path / "spec.yaml", dataset, base_checkpoint,
                      data={"train": [f"gs://{BUCKET}/bad/train-*.tfrecord"]})
    code, _, err = finish(start_launcher("run-local", str(spec), "--grace", "20"), [])
    assert code != 0
    # Both workers end with worker 1's reason (they agree before the first collective); the
    # launcher reports whichever exited first.
    assert re.match(r"error: worker [01] exited with code 1: ", err), err
    assert "train-00001-of-00002.tfrecord: not a readable TFRecord file" in err
    assert latest_step(gcs, _run_dir(spec)) is None  # nothing published

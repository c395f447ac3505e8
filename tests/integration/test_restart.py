"""A restart at any point is safe: a finished run exits 0 at once, one whose eval or export is
missing finishes them from the checkpoint it resumed from (once exit 1 with a traceback: on
Kubernetes that fails the whole job after all its training was done)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import BUCKET, IMAGE, kill_worker_at, trainer_env, write_spec
from trainer import contract
from trainer.run.storage import Storage


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainer", *args], env=trainer_env(),
                          capture_output=True, text=True, timeout=600)


def _ok(args: list[str]) -> str:
    result = _run(args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / contract.RUN_EVAL_METRICS).read_text())


def test_a_detection_run_restarted_after_its_end(dataset: dict[str, str],
                                                 tmp_path: Path) -> None:
    local = Path(dataset["local"])
    run_dir = tmp_path / "run"
    args = [f"--run-dir={run_dir}", f"--train={local}/train-*.tfrecord",
            f"--eval={local}/eval/val-*.tfrecord", f"--label-map={local}/label_map.pbtxt",
            "--model-size=tiny", f"--image-size={IMAGE}", "--steps=2", "--checkpoint-every=1",
            "--global-batch-size=4"]
    _ok(args)
    done = _metrics(run_dir)
    assert done["step"] == 2 and done["export"] and (run_dir / contract.RUN_EXPORT).is_dir()
    # What the scans found is in the run directory, file by file.
    found = json.loads((run_dir / contract.RUN_RECORDS / "train-worker-0.json").read_text())
    assert found["records"] == found["usable"] == 48 and len(found["files"]) == 4
    assert (run_dir / contract.RUN_RECORDS / "eval.json").exists()

    # A finished run: at once, nothing redone; and with LATEST garbage, lagging behind (ckpt-1
    # exists too) or naming a step that does not exist, or with fewer steps.
    for extra, damage in (([], None), ([], "garbage"), ([], "1"), ([], "7"),
                          (["--steps=1"], None)):
        if damage:
            (run_dir / contract.RUN_CHECKPOINT_POINTER).write_text(damage)
        out = _ok(args + extra)
        assert "the run is complete: ckpt-2" in out and "eval at step" not in out, out[-3000:]
        assert _metrics(run_dir) == done

    # Killed during the final eval/export: the replacement finishes them, without training.
    (run_dir / contract.RUN_EVAL_METRICS).unlink()
    out = _ok(args)
    assert "resumed from step 2" in out and "eval at step 2" in out, out[-3000:]
    assert "step 1/2" not in out and "step 2/2" not in out
    assert _metrics(run_dir)["step"] == 2 and _metrics(run_dir)["export"]


def test_a_keras_run_restarted_after_its_end(keras_data: dict[str, Any],
                                             tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["--task=keras", f"--run-dir={run_dir}",
            f"--checkpoint={keras_data['models']}/pretrained.h5",
            f"--train={keras_data['train']}", f"--eval={keras_data['eval']}",
            f"--label-map={keras_data['label_map']}", "--global-batch-size=8", "--steps=2",
            "--checkpoint-every=2", "--no-export"]
    _ok(args)
    done = _metrics(run_dir)
    out = _ok(args)
    assert "the run is complete: ckpt-2, its eval metrics are in" in out, out[-3000:]
    assert _metrics(run_dir) == done
    (run_dir / contract.RUN_EVAL_METRICS).unlink()
    out = _ok(args)
    assert "resumed from step 2" in out and _metrics(run_dir)["step"] == 2, out[-3000:]


def test_a_chief_killed_while_it_finishes_is_replaced_and_finishes(
        gcs: Storage, dataset: dict[str, str], base_checkpoint: str, tmp_path: Path) -> None:
    """SIGKILL to the chief once the last checkpoint is published, during eval and export (an
    eviction, an OOM kill): run-local restarts the group, as the Job's policy would, and the
    replacement evaluates and exports without training again."""
    spec = write_spec(tmp_path / "spec.yaml", dataset, base_checkpoint,
                      data={"train": [dataset["train"]], "eval": [dataset["eval"]]},
                      training={"export": True})
    out = kill_worker_at(spec, 0, r"\[0\] .*finishing step 8: eval and export")
    after = out[out.index("[launcher] attempt 1 ended"):]
    assert "resumed from step 8" in after and "eval at step 8" in after, after[-4000:]
    assert "step 1/8" not in after and "step 8/8" not in after
    run_dir = f"gs://{BUCKET}/runs-{tmp_path.name}/default/ft"
    metrics = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_EVAL_METRICS}"))
    assert metrics["step"] == 8 and metrics["export"] == f"{run_dir}/{contract.RUN_EXPORT}"

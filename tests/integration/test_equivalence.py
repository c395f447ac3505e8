"""Proof that the distribution is real and correct: two workers with global batch B end with the
same weights as one worker with batch B (same start, same records, K steps).

Batch norm is frozen here (``--freeze-batchnorm``, as OD-API fine-tuning configs often do): with
training-mode synchronized batch norm, tf-keras' cross-replica statistics gradient leaves a ~1%
difference in the first layers' gradients, which is not what this test is about.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import (
    BUCKET,
    IMAGE,
    model_weights,
    train_one_and_two_workers,
    trainer_env,
)
from trainer.run.checkpoints import latest_step
from trainer.run.storage import Storage

pytestmark = pytest.mark.integration
STEPS = 3


def _args(run_dir: str, dataset: dict[str, str], base: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "--run-dir", run_dir, "--train", dataset["train"],
            "--label-map", dataset["label_map"], "--checkpoint", base, "--fine-tune-type",
            "full", "--model-size", "tiny", "--image-size", str(IMAGE), "--steps", str(STEPS),
            "--global-batch-size", "8", "--checkpoint-every", str(STEPS), "--learning-rate",
            "0.05", "--deterministic-input", "--freeze-batchnorm", "--no-export"]


def test_two_workers_match_one_worker_with_the_same_global_batch(
        gcs: Storage, dataset: dict[str, str], base_checkpoint: str, tmp_path: Path) -> None:
    single, double = f"gs://{BUCKET}/equiv-1", f"gs://{BUCKET}/equiv-2"
    train_one_and_two_workers(lambda run: _args(run, dataset, base_checkpoint), single, double)
    parts = ("backbone", "decoder", "head")
    assert latest_step(gcs, single) == latest_step(gcs, double) == STEPS
    one = model_weights(gcs, single, tmp_path / "one", parts)
    two = model_weights(gcs, double, tmp_path / "two", parts)
    base = model_weights(gcs, base_checkpoint, tmp_path / "base", parts)
    assert one.keys() == two.keys() and len(one) > 50
    moved = max(float(np.abs(one[k] - base[k]).max()) for k in one if k in base)
    assert moved > 1e-3, "training did not change the weights"
    mismatched = {k: float(np.abs(two[k] - one[k]).max()) for k in one
                  if not np.allclose(two[k], one[k], rtol=1e-4, atol=2e-6)}
    assert not mismatched, sorted(mismatched.items(), key=lambda kv: -kv[1])[:40]


def test_the_same_seed_trains_the_same_new_head(gcs: Storage, dataset: dict[str, str],
                                                base_checkpoint: str) -> None:
    """A detection fine-tune starts its new head from the seed: two runs log the same losses."""
    import re

    logs = []
    for run in ("seed-a", "seed-b"):
        args = _args(f"gs://{BUCKET}/{run}", dataset, base_checkpoint)
        args[args.index("full")] = "detection"
        args[args.index("--steps") + 1] = args[args.index("--checkpoint-every") + 1] = "2"
        result = subprocess.run([*args, "--log-every", "1"], env=trainer_env(),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        logs.append(re.findall(r"step \d/2 loss (\S+) cls (\S+) box (\S+)", result.stdout))
    assert len(logs[0]) == 2 and logs[0] == logs[1]

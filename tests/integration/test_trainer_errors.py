"""Bad input to the trainer: a clear error, exit code 1, nothing published."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import BUCKET, IMAGE, trainer_env
from trainer.run.checkpoints import latest_step
from trainer.run.storage import Storage

pytestmark = pytest.mark.integration


def _trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainer", "--model-size", "tiny",
                           "--image-size", str(IMAGE), "--steps", "4",
                           "--global-batch-size", "8", "--checkpoint-every", "4",
                           "--no-export", *args],
                          env=trainer_env(), capture_output=True, text=True, timeout=600)


def _assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stdout.splitlines() if "ERROR trainer: error:" in line]
    assert len(errors) == 1, result.stdout[-2000:]
    for word in words:
        assert word in errors[0], errors[0]


@pytest.mark.parametrize(("case", "extra", "words"), [
    ("missing checkpoint", ["--checkpoint", f"gs://{BUCKET}/no-model/ckpt-3"],
     ["--checkpoint", "ckpt-3.index"]),
    # Ids, not counts: 2 classes cannot hold the label map's id 4.
    ("class count too small", ["--num-classes", "2"], ["num_classes 2 (flag)",
                                                       "label map's largest id 4"]),
    ("empty input glob", ["--train", f"gs://{BUCKET}/data/nothing-*.tfrecord"],
     ["matches no file"]),
    ("missing label map", ["--label-map", f"gs://{BUCKET}/data/nope.pbtxt"], ["not found"]),
])
def test_bad_input_exits_1_and_publishes_nothing(gcs: Storage, dataset: dict[str, str],
                                                 case: str, extra: list[str],
                                                 words: list[str]) -> None:
    run_dir = f"gs://{BUCKET}/err-{case.replace(' ', '-')}"
    args = {"--train": dataset["train"], "--label-map": dataset["label_map"]}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = value
    result = _trainer("--run-dir", run_dir, *[x for kv in args.items() for x in kv])
    _assert_user_error(result, *words)
    assert gcs.list_prefix(run_dir) == []


def test_unreadable_pipeline_config(gcs: Storage, dataset: dict[str, str],
                                    tmp_path: Path) -> None:
    bad = tmp_path / "pipeline.config"
    bad.write_text("model { ssd { num_classes: 4 }\ntrain_config { batch_size: eight }\n")
    run_dir = f"gs://{BUCKET}/err-pipeline"
    result = _trainer("--run-dir", run_dir, "--pipeline-config", str(bad),
                      "--train", dataset["train"])
    _assert_user_error(result, "--pipeline-config", "2:")
    assert gcs.list_prefix(run_dir) == []


def test_checkpoint_of_another_architecture_with_full(gcs: Storage, dataset: dict[str, str],
                                                      base_checkpoint: str) -> None:
    run_dir = f"gs://{BUCKET}/err-arch"
    result = _trainer("--run-dir", run_dir, "--train", dataset["train"], "--label-map",
                      dataset["label_map"], "--checkpoint", base_checkpoint,
                      "--fine-tune-type", "full", "--backbone", "resnet50")
    _assert_user_error(result, f"--checkpoint (model.checkpoint) {base_checkpoint} (full) does "
                       "not fit this model",
                       "when attempting to restore variable", "name ")
    assert latest_step(gcs, run_dir) is None


def test_an_od_api_checkpoint_is_refused_with_the_way_to_run_it(
        gcs: Storage, dataset: dict[str, str], tmp_path: Path) -> None:
    """A TF2 Detection Zoo checkpoint's layout (the OD API's SSD keeps its parts under
    model/_feature_extractor and model/_box_predictor) cannot be restored: one line."""
    import tensorflow as tf

    model = tf.Module()
    model._feature_extractor = tf.Module()
    model._feature_extractor.kernel = tf.Variable(tf.zeros([3, 3, 3, 8]))
    model._box_predictor = tf.Module()
    model._box_predictor.bias = tf.Variable(tf.zeros([8]))
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "zoo" / "ckpt-0"))
    run_dir = f"gs://{BUCKET}/err-od-api"
    result = _trainer("--run-dir", run_dir, "--train", dataset["train"], "--label-map",
                      dataset["label_map"], "--checkpoint", prefix)
    _assert_user_error(result, "a TF Object Detection API checkpoint", "docs/od-api.md")
    assert gcs.list_prefix(f"{run_dir}/checkpoints") == []

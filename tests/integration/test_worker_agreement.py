"""Two workers fail like one: when one worker refuses its shard, the other ends with the same line
and exit code before any collective (it once died ~10 s later building the model, with a 40-line
``UnavailableError ... CollectiveBcastSend`` traceback and exit 1, the tail a cluster user
sees)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import CLASSES, IMAGE, trainer_env

pytestmark = pytest.mark.integration


def _shards(tmp_path: Path, damage: str) -> Path:
    """Two shards: worker 0's usable, worker 1's box-less, truncated or missing; and a label
    map."""
    import tensorflow as tf

    from trainer.detection import synthetic

    data = tmp_path / "data"
    _, bad = synthetic.write_dataset(data, "train", shards=2, per_shard=6, size=IMAGE,
                                        classes=CLASSES, seed=1)
    if damage == "missing shard":  # the glob still matches it: a dangling link
        bad.unlink()
        bad.symlink_to(data / "gone.tfrecord")
    elif damage == "box-less shard":
        pixels = np.zeros((IMAGE, IMAGE, 3), np.uint8)
        with tf.io.TFRecordWriter(str(bad)) as writer:
            for i in range(6):
                writer.write(synthetic.tf_example(pixels, [], f"empty-{i}"))
    else:
        bad.write_bytes(bad.read_bytes()[:-30])
    (data / "label_map.pbtxt").write_text(synthetic.label_map_text(CLASSES))
    return data


@pytest.mark.parametrize(("damage", "reason"), [
    ("box-less shard", "worker 1 --train: no usable example in train-00001-of-00002.tfrecord"),
    ("truncated shard", "train-00001-of-00002.tfrecord: not a readable TFRecord file"),
    ("missing shard", "train-00001-of-00002.tfrecord: matched by the glob but not a readable "
                      "file")])
def test_one_workers_refusal_ends_both_alike(tmp_path: Path, damage: str, reason: str) -> None:
    from launcher.backends.processes import free_ports
    from trainer.contract import tf_config

    data = _shards(tmp_path, damage)
    args = [sys.executable, "-m", "trainer", f"--run-dir={tmp_path / 'run'}",
            f"--train={data}/train-*.tfrecord", f"--label-map={data}/label_map.pbtxt",
            "--model-size=tiny", f"--image-size={IMAGE}", "--steps=2", "--global-batch-size=4",
            "--no-export"]
    hosts = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = [subprocess.Popen(args, env={**trainer_env(),
                                         "TF_CONFIG": json.dumps(tf_config(hosts, i))},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outputs
    last = [out.strip().splitlines()[-1] for out in outputs]
    assert reason in last[1] and "error: " in last[1], outputs[1][-3000:]
    assert f"error: worker 1 refused its inputs: {last[1].split('error: ', 1)[1]}" in last[0], \
        outputs[0][-3000:]
    assert all("Traceback" not in out for out in outputs), outputs

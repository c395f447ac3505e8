"""The input pipeline on OD-API records: class ids from names when ids are absent, box-less
images skipped, every key the OD API writes accepted."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def test_class_text_fallback_and_boxless_images_skipped(tmp_path: Path) -> None:
    import tensorflow as tf

    from trainer import synthetic
    from trainer.config import TrainConfig
    from trainer.data import build_dataset
    from trainer.model import task_config

    rng = np.random.default_rng(0)
    path = tmp_path / "mixed.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        pixels, boxes = synthetic.make_image(rng, 64, [1])
        writer.write(synthetic.tf_example(pixels, boxes, "1"))  # ids and names
        writer.write(synthetic.tf_example(pixels, [], "2"))  # no boxes: skipped
        pixels, boxes = synthetic.make_image(rng, 64, [3], max_boxes=1)
        example = tf.train.Example.FromString(synthetic.tf_example(pixels, boxes, "3",
                                                                   fmt="jpeg"))
        del example.features.feature["image/object/class/label"]  # names only
        writer.write(example.SerializeToString())
    cfg = TrainConfig(run_dir=str(tmp_path), train=[str(path)], model_size="tiny", image_size=64)
    from official.vision.tasks import retinanet

    task = retinanet.RetinaNetTask(task_config(cfg, 5, str(path)))
    params = task.task_config.validation_data
    params.input_path, params.global_batch_size, params.is_training = str(path), 1, False
    params.dtype = "float32"
    name_to_id = {synthetic.CLASSES[i][0]: i for i in synthetic.CLASSES}
    batches = list(build_dataset(task, params, name_to_id))
    assert len(batches) == 2
    classes = [b[1]["groundtruths"]["classes"].numpy()[0] for b in batches]
    assert classes[0][0] == 1
    assert classes[1][0] == 3  # 'blue' through the label map


def test_class_name_missing_from_label_map_is_reported(tmp_path: Path) -> None:
    import tensorflow as tf

    from trainer import synthetic
    from trainer.config import TrainConfig
    from trainer.data import build_dataset
    from trainer.model import task_config

    rng = np.random.default_rng(1)
    path = tmp_path / "unknown.tfrecord"
    pixels, boxes = synthetic.make_image(rng, 64, [4], max_boxes=1)
    example = tf.train.Example.FromString(synthetic.tf_example(pixels, boxes, "9"))
    del example.features.feature["image/object/class/label"]
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(example.SerializeToString())
    cfg = TrainConfig(run_dir=str(tmp_path), train=[str(path)], model_size="tiny", image_size=64)
    from official.vision.tasks import retinanet

    task = retinanet.RetinaNetTask(task_config(cfg, 3, str(path)))
    params = task.task_config.validation_data
    params.input_path, params.global_batch_size, params.is_training = str(path), 1, False
    params.dtype = "float32"
    with pytest.raises(tf.errors.InvalidArgumentError, match="missing from the label map"):
        list(build_dataset(task, params, {"red": 1, "green": 2}))

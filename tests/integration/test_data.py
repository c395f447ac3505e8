"""The input pipeline on OD-API records: class ids from names when ids are absent, box-less
images skipped, every key the OD API writes accepted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _names_only(pixels: np.ndarray, boxes: list[Any], key: str, fmt: str = "png") -> bytes:
    """An example whose classes are given by name only (no image/object/class/label)."""
    import tensorflow as tf

    from trainer.detection import synthetic

    example = tf.train.Example.FromString(synthetic.tf_example(pixels, boxes, key, fmt=fmt))
    del example.features.feature["image/object/class/label"]
    return example.SerializeToString()


def _pipeline(path: Path, num_classes: int, name_to_id: dict[str, int]) -> Any:
    """The eval-mode pipeline (no shuffle, no repeat) over one file, batch 1."""
    from trainer.config import TrainConfig
    from trainer.detection.data import build_dataset
    from trainer.detection.families.retinanet.task import build_task

    cfg = TrainConfig(run_dir=str(path.parent), train=[str(path)], model_size="tiny",
                      image_size=64)
    task = build_task(cfg, num_classes, str(path))
    params = task.task_config.validation_data
    params.input_path, params.global_batch_size, params.is_training = str(path), 1, False
    params.dtype = "float32"
    return build_dataset(task, params, name_to_id)


def test_class_text_fallback_and_boxless_images_skipped(tmp_path: Path) -> None:
    import tensorflow as tf

    from trainer.detection import synthetic

    rng = np.random.default_rng(0)
    path = tmp_path / "mixed.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        pixels, boxes = synthetic.make_image(rng, 64, [1])
        writer.write(synthetic.tf_example(pixels, boxes, "1"))  # ids and names
        writer.write(synthetic.tf_example(pixels, [], "2"))  # no boxes: skipped
        pixels, boxes = synthetic.make_image(rng, 64, [3], max_boxes=1)
        writer.write(_names_only(pixels, boxes, "3", fmt="jpeg"))
    name_to_id = {synthetic.CLASSES[i][0]: i for i in synthetic.CLASSES}
    batches = list(_pipeline(path, 5, name_to_id))
    assert len(batches) == 2
    classes = [b[1]["groundtruths"]["classes"].numpy()[0] for b in batches]
    assert classes[0][0] == 1
    assert classes[1][0] == 3  # 'blue' through the label map


def test_class_name_missing_from_label_map_is_skipped_and_counted(tmp_path: Path) -> None:
    import tensorflow as tf

    from trainer.detection import records, synthetic

    rng = np.random.default_rng(1)
    path = tmp_path / "unknown.tfrecord"
    pixels, boxes = synthetic.make_image(rng, 64, [4], max_boxes=1)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(_names_only(pixels, boxes, "9"))
    assert list(_pipeline(path, 3, {"red": 1, "green": 2})) == []
    report = records.scan([path], {"red": 1, "green": 2}, max_id=2)
    assert report.files[0].skipped == {"unknown_text": 1}
    with pytest.raises(records.RecordsError, match=r"no usable example in unknown\.tfrecord: "
                                                   r"0 of 1 examples usable"):
        records.check(report, 0.5, "worker 0")

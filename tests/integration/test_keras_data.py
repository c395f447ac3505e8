"""Image-classification records with each fault seen in real data: the scan counts them per
file and reason, and the input pipeline skips exactly those (damaged images by fingerprint)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _record(label: int | None, text: str | None, image: bytes | None = None,
            fmt: str = "png") -> bytes:
    import tensorflow as tf

    from trainer.keras import synthetic as synthetic_keras

    pixels = np.random.default_rng(0).integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
    example = tf.train.Example.FromString(synthetic_keras.example(pixels, label, text, fmt))
    if image is not None:
        example.features.feature["image/encoded"].bytes_list.value[:] = [image]
    return example.SerializeToString()


CASES = {
    # name: (label, text, image), expected reason (None: usable)
    "label and name": ((1, "cross", None), None),
    "label only, JPEG": ((0, None, None), None),
    "name only": ((None, "ring", None), None),
    "no class": ((None, None, None), "no_class"),
    "label beyond the classes": ((7, None, None), "bad_class"),
    "negative label": ((-1, None, None), "bad_class"),
    "unknown name": ((None, "triangle", None), "unknown_text"),
    "not an image": ((1, None, b"GIF89a...."), "bad_image"),
    "damaged JPEG": ((1, None, b"\xff\xd8\xff\xe0" + b"\x00" * 40), "bad_image"),
}
NAMES = {"diagonal": 1, "cross": 2, "ring": 3}


def test_each_fault_is_counted_and_skipped_alike(tmp_path: Path) -> None:
    import tensorflow as tf

    from trainer.detection import records
    from trainer.keras.data import Classes, build_dataset, example_problem

    path = tmp_path / "mixed.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for name, ((label, text, image), _) in CASES.items():
            writer.write(_record(label, text, image, "jpeg" if "JPEG" in name else "png"))
    classes = Classes(3, NAMES)
    report = records.scan([path], problem=lambda e: example_problem(e, classes))
    expected = [reason for _, reason in CASES.values()]
    assert report.usable == expected.count(None) == 3
    assert dict(report.files[0].skipped) == {r: expected.count(r) for r in expected if r}
    assert "skipped for a class outside the model's classes" in report.summary()
    assert "ids seen -1, 7)" in report.summary()
    batches = list(build_dataset([path], classes, (16, 16, 3), "0-1", 8, training=False,
                                 undecodable=report.undecodable()))
    images, labels = batches[0]
    assert images.shape == (3, 16, 16, 3) and sorted(labels.numpy().tolist()) == [0, 1, 2]
    assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 1.0


def test_label_offset_and_input_range(tmp_path: Path) -> None:
    """ImageNet-style records keep 0 for the background (labels 1..N): labelOffset 1."""
    import tensorflow as tf

    from trainer.keras.data import Classes, build_dataset

    path = tmp_path / "imagenet-style.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for label in (1, 2, 3):
            writer.write(_record(label, None))
    classes = Classes(3, None, label_offset=1)
    images, labels = next(iter(build_dataset([path], classes, (8, 8, 3), "-1-1", 8,
                                             training=False)))
    assert labels.numpy().tolist() == [0, 1, 2]
    assert float(tf.reduce_min(images)) >= -1.0 and float(tf.reduce_min(images)) < 0.0


def test_one_based_labels_are_refused_with_the_setting_that_reads_them(tmp_path: Path) -> None:
    """Labels 1..N read with the default labelOffset 0: N is outside the classes. The refusal
    says which labels are allowed, which were seen, and the setting."""
    import tensorflow as tf

    from trainer.detection import records
    from trainer.keras.data import Classes, example_problem, labels_hint

    path = tmp_path / "one-based.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for label in (1, 2, 3) * 4:
            writer.write(_record(label, None))
    classes = Classes(3, None)
    report = labels_hint(records.scan([path], problem=lambda e: example_problem(e, classes)),
                         classes)
    with pytest.raises(records.RecordsError) as err:
        records.check(report, 0.01, "worker 0")
    assert "ids seen 3 where labels 0..2 are allowed" in str(err.value)
    assert str(err.value).endswith("the labels look 1-based (1..3): set "
                                   "model.keras.features.labelOffset: 1 (--label-offset=1)")


def test_names_without_a_label_map_say_so(tmp_path: Path) -> None:
    import tensorflow as tf

    from trainer.detection import records
    from trainer.keras.data import Classes, example_problem

    path = tmp_path / "names.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(_record(None, "ring"))
    report = records.scan([path], problem=lambda e: example_problem(e, Classes(3, None)))
    assert dict(report.files[0].skipped) == {"text_without_label_map": 1}
    assert "a class name and no label map to read it (model.labelMap)" in report.summary()

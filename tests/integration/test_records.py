"""Records shaped like the OD API's create_*_tf_record.py tools write them, and each fault seen
in real data: skipped and counted per file by the scan, skipped identically by the pipeline, or
(unreadable files) refused in one line naming the file."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
NAMES = {"red": 1, "green": 2, "blue": 3}


def _example(boxes: list[tuple[float, float, float, float]], labels: list[int] | None,
             texts: list[str] | None, image: bytes | None = None) -> bytes:
    import tensorflow as tf

    from trainer.detection import synthetic

    pixels = np.random.default_rng(0).integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    example = tf.train.Example.FromString(synthetic.tf_example(pixels, [], "x"))
    feature = example.features.feature
    for i, key in enumerate(("ymin", "xmin", "ymax", "xmax")):
        feature[f"image/object/bbox/{key}"].float_list.value[:] = [b[i] for b in boxes]
    del feature["image/object/class/label"]
    del feature["image/object/class/text"]
    if labels is not None:
        feature["image/object/class/label"].int64_list.value[:] = labels
    if texts is not None:
        feature["image/object/class/text"].bytes_list.value[:] = [t.encode() for t in texts]
    if image is not None:
        feature["image/encoded"].bytes_list.value[:] = [image]
    return example.SerializeToString()


OK = (0.1, 0.1, 0.5, 0.5)
CASES: dict[str, tuple[Any, ...]] = {
    # name: (boxes, labels, texts, image), expected reason (None: usable)
    "ids and names": (([OK], [1], ["red"]), None),
    "coco tool: ids and display names": (([OK], [2], ["Green Thing"]), None),
    "names only": (([OK], None, ["blue"]), None),
    "no boxes": (([], [], []), "no_boxes"),
    "xmin > xmax": (([(0.1, 0.6, 0.5, 0.2)], [1], None), "bad_box"),
    "box beyond the image": (([(0.1, 0.1, 0.5, 1.4)], [1], None), "bad_box"),
    # as annotation tools write them: clipped to the image and counted
    "box 3% outside": (([(-0.03, 0.1, 0.5, 1.03)], [1], None), None),
    "box 6% outside": (([(0.1, 0.1, 0.5, 1.06)], [1], None), "bad_box"),
    "box outside, empty once clipped": (([(0.1, 1.01, 0.5, 1.04)], [1], None), "bad_box"),
    "label 0 (background)": (([OK], [0], None), "bad_label"),
    "label above num_classes": (([OK], [7], None), "bad_label"),
    "3 boxes, 2 labels": (([OK, OK, OK], [1, 2], None), "mismatched"),
    "unknown name": (([OK], None, ["purple"]), "unknown_text"),
    "not an image": (([OK], [1], None, b"GIF89a..."), "bad_image"),
    "damaged JPEG": (([OK], [1], None, b"\xff\xd8\xff\xe0" + b"\x00" * 40), "bad_image"),
}


def _write(path: Path, serialized: list[bytes], compress: bool = False) -> Path:
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if compress else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in serialized:
            writer.write(record)
    return path


def _pipeline_count(path: Path, compression: str = "", undecodable: set[str] | None = None,
                    names: dict[str, int] | None = NAMES) -> int:
    from trainer.config import TrainConfig
    from trainer.detection.data import build_dataset
    from trainer.detection.families.retinanet.task import build_task

    cfg = TrainConfig(run_dir=str(path.parent), train=[str(path)], model_size="tiny",
                      image_size=64)
    task = build_task(cfg, 4, str(path))
    params = task.task_config.validation_data
    params.input_path, params.global_batch_size, params.is_training = str(path), 1, False
    params.dtype = "float32"
    return sum(1 for _ in build_dataset(task, params, names, compression=compression,
                                        undecodable=undecodable))


@pytest.mark.parametrize("compress", [False, True])
def test_each_fault_is_skipped_counted_and_skipped_alike_by_the_pipeline(
        tmp_path: Path, compress: bool) -> None:
    from trainer.detection import records

    path = _write(tmp_path / "mixed.tfrecord", [_example(*case) for case, _ in CASES.values()],
                  compress)
    report = records.scan([path], NAMES, max_id=3)
    expected = [reason for _, reason in CASES.values()]
    assert report.compressed is compress
    assert report.files[0].records == len(CASES)
    assert report.usable == expected.count(None) == 4
    assert dict(report.files[0].skipped) == {r: expected.count(r) for r in expected if r}
    assert report.files[0].clipped == 1
    # The damaged JPEG passes every check but decoding: the scan notes its fingerprint.
    assert len(report.undecodable()) == 1
    assert _pipeline_count(path, "GZIP" if compress else "", report.undecodable()) == 4
    summary = report.summary()
    assert summary.startswith(f"4 of {len(CASES)} examples usable in 1 file(s); ")
    assert ("4 skipped for a box more than 5% outside [0, 1] or with min >= max (4 in "
            "mixed.tfrecord)") in summary
    assert "1 with boxes up to 5% outside the image, clipped to it (1 in mixed.tfrecord)" in summary
    assert ("2 skipped for a class id outside the label map's 1..max id (2 in mixed.tfrecord, "
            "ids seen 0, 7 where 1..3 are allowed)") in summary
    no_map = records.scan([path], None, max_id=3)
    assert no_map.files[0].skipped["text_without_label_map"] == 2  # the names-only records
    assert report.to_dict()["clipped"] == 1 and report.to_dict()["files"][0]["skipped"] == \
        dict(report.files[0].skipped)
    with pytest.raises(records.RecordsError, match=r"worker 0: 66.7% of the examples are "
                                                   r"unusable, more than --max-skipped-fraction"):
        records.check(report, 0.01, "worker 0")


def test_a_box_a_little_outside_the_image_is_decoded_clipped_to_it() -> None:
    from trainer.detection.data import OdApiDecoder

    decoded = OdApiDecoder(NAMES).decode(_example([(-0.03, 0.1, 0.5, 1.03)], [1], None))
    np.testing.assert_allclose(decoded["groundtruth_boxes"].numpy(), [[0.0, 0.1, 0.5, 1.0]],
                               rtol=0, atol=1e-7)


def test_box_less_images_do_not_count_against_the_threshold_but_none_usable_fails(
        tmp_path: Path) -> None:
    from trainer.detection import records

    usable = _example([OK], [1], None)
    boxless = _example([], [], [])
    path = _write(tmp_path / "negatives.tfrecord", [usable] + [boxless] * 9)
    records.check(records.scan([path], NAMES, 3), 0.0, "worker 0")  # 9 box-less: fine
    empty = _write(tmp_path / "train-00001-of-00002.tfrecord", [boxless] * 4)
    with pytest.raises(records.RecordsError, match=r"worker 1: no usable example in "
                                                   r"train-00001-of-00002.tfrecord: 0 of 4"):
        records.check(records.scan([empty], NAMES, 3), 0.5, "worker 1")


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "mixed compression"])
def test_unreadable_files_are_named(tmp_path: Path, damage: str) -> None:
    from trainer.detection import records

    good = _write(tmp_path / "a.tfrecord", [_example([OK], [1], None)] * 3)
    bad = tmp_path / "b.tfrecord"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[:-7])
    elif damage == "random bytes":
        bad.write_bytes(os.urandom(300))
    else:
        bad.write_bytes(gzip.compress(good.read_bytes()))
    expected = "some TFRecord files are GZIP-compressed" if damage == "mixed compression" \
        else "b.tfrecord: not a readable TFRecord file"
    with pytest.raises(records.RecordsError, match=expected):
        records.scan([good, bad], NAMES, 3)


def test_text_only_records_without_a_label_map_end_in_one_line(tmp_path: Path) -> None:
    """Records that name classes only by text (``class/text``), run with ``--num-classes`` and
    no label map: nothing maps a name to an id, so nothing is usable; one line, no hang."""
    from trainer.detection import records

    path = _write(tmp_path / "texts.tfrecord", [_example([OK], None, ["red"])] * 4)
    report = records.scan([path], None, max_id=3)
    assert report.usable == 0
    assert dict(report.files[0].skipped) == {"text_without_label_map": 4}
    with pytest.raises(records.RecordsError) as err:
        records.check(report, 0.5, "worker 0")
    line = str(err.value)
    assert "no usable example in texts.tfrecord: 0 of 4" in line and "\n" not in line
    # (once "a class name missing from the label map", when there is none)
    assert "4 skipped for a class name and no label map to read it (model.labelMap)" in line
    assert _pipeline_count(path, names=None) == 0


def test_examples_with_more_boxes_than_the_model_keeps_are_counted(tmp_path: Path) -> None:
    """The input pipeline keeps the first ``max_num_instances`` boxes of an example: said, not
    silent. Unusable examples are not counted twice."""
    from trainer.detection import records

    crowded = _example([OK] * 3, [1, 2, 3], None)
    path = _write(tmp_path / "crowded.tfrecord",
                  [crowded, crowded, _example([OK, OK], [1, 1], None), _example([], [], [])])
    report = records.scan([path], NAMES, 3, max_boxes=2)
    assert report.files[0].crowded == 2 and report.usable == 3
    assert report.summary().endswith("; 2 with more than 2 boxes, of which the model trains on "
                                     "the first 2 (2 in crowded.tfrecord)")
    assert "more than" not in records.scan([path], NAMES, 3).summary()

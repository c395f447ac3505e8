"""Check this worker's TFRecord shards before training: count what is usable, skip and count what
is not, name any file that cannot be read at all.

The OD API's records are trusted by its own tools; ours are not. An example is skipped (and
counted under its reason) when it has no boxes, a box outside [0, 1] or with min >= max, box and
class lists of different lengths, a class id outside 1..max id of the label map (0 is the
background), a class name missing from the label map, or an image that cannot be decoded (not
JPEG or PNG, or a damaged one). The input pipeline (``trainer.detection.data``) skips exactly
these examples
(damaged images by a fingerprint of the record: ``ScanReport.undecodable``), so the counts printed
here are what training does.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError
from trainer.text import tf_message

REASONS = {
    "no_boxes": "no boxes",
    "bad_box": "a box more than 5% outside [0, 1] or with min >= max",
    "mismatched": "box and class lists of different lengths",
    "bad_label": "a class id outside the label map's 1..max id",
    "unknown_text": "a class name missing from the label map",
    "text_without_label_map": "a class name and no label map to read it (model.labelMap)",
    "bad_image": "an image that cannot be decoded",
    # image classification (trainer.keras.data)
    "no_class": "no class label or name",
    "bad_class": "a class outside the model's classes",
}
BOX_KEYS = ("image/object/bbox/xmin", "image/object/bbox/xmax", "image/object/bbox/ymin",
            "image/object/bbox/ymax")
# Boxes a hair outside [0, 1] come from float rounding in conversion tools: not even counted.
EPSILON = 1e-3
# Annotation tools write boxes a few percent outside the image (the OD API trains them): up to
# this far out they are clipped to [0, 1] (by the input pipeline's decoder) and counted.
CLIP_TOLERANCE = 0.05


class RecordsError(TrainerError):
    """A shard cannot be read, or too little of the data is usable: a user error (exit 1)."""


@dataclass
class FileReport:
    """What one TFRecord file holds."""

    path: str
    records: int = 0
    usable: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    undecodable: list[int] = field(default_factory=list)  # fingerprints of damaged images
    crowded: int = 0  # usable examples with more boxes than the model takes (max_boxes)
    clipped: int = 0  # usable examples with a box clipped to the image
    refused_ids: Counter[int] = field(default_factory=Counter)  # of bad_label / bad_class

    def to_dict(self) -> dict[str, Any]:
        """What the run directory records of the file (``records/``)."""
        return {"file": Path(self.path).name, "records": self.records, "usable": self.usable,
                "skipped": dict(self.skipped), "clipped": self.clipped, "crowded": self.crowded,
                "refused_ids": {str(k): v for k, v in sorted(self.refused_ids.items())}}


@dataclass
class ScanReport:
    """A worker's shards, file by file."""

    files: list[FileReport] = field(default_factory=list)
    compressed: bool = False
    max_boxes: int | None = None  # per example, as the input pipeline keeps them
    allowed_ids: str = ""  # what a class id may be ("1..3"), for the refusals' words
    hint: str = ""  # what the user may have meant (the caller's, from what was refused)

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    def undecodable(self) -> set[int]:
        """Fingerprints (``fingerprint``) of the records whose image is damaged."""
        return {h for f in self.files for h in f.undecodable}

    @property
    def usable(self) -> int:
        return sum(f.usable for f in self.files)

    def skipped(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for report in self.files:
            total.update(report.skipped)
        return total

    def refused_ids(self) -> Counter[int]:
        """The class ids of the examples skipped for them, over every file."""
        total: Counter[int] = Counter()
        for report in self.files:
            total.update(report.refused_ids)
        return total

    def to_dict(self) -> dict[str, Any]:
        """What the run directory records (``records/``): totals, then file by file."""
        return {"records": self.records, "usable": self.usable,
                "skipped": dict(self.skipped()), "clipped": sum(f.clipped for f in self.files),
                "crowded": sum(f.crowded for f in self.files),
                "files": [f.to_dict() for f in self.files]}

    def summary(self) -> str:
        """One line: usable of total, and each reason with its count and worst file."""
        skipped = self.skipped()
        parts = [f"{self.usable} of {self.records} examples usable in {len(self.files)} "
                 f"file(s)"]
        for reason, count in skipped.most_common():
            worst = max(self.files, key=lambda f: f.skipped[reason])
            ids = ""
            if reason in ("bad_label", "bad_class"):
                seen = sorted(self.refused_ids())
                ids = f", ids seen {', '.join(map(str, seen[:8]))}" + \
                    (" ..." if len(seen) > 8 else "") + \
                    (f" where {self.allowed_ids} are allowed" if self.allowed_ids else "")
            parts.append(f"{count} skipped for {REASONS[reason]} "
                         f"({worst.skipped[reason]} in {Path(worst.path).name}{ids})")
        clipped = sum(f.clipped for f in self.files)
        if clipped:
            worst = max(self.files, key=lambda f: f.clipped)
            parts.append(f"{clipped} with boxes up to {CLIP_TOLERANCE:.0%} outside the image, "
                         f"clipped to it ({worst.clipped} in {Path(worst.path).name})")
        crowded = sum(f.crowded for f in self.files)
        if crowded:
            worst = max(self.files, key=lambda f: f.crowded)
            parts.append(f"{crowded} with more than {self.max_boxes} boxes, of which the model "
                         f"trains on the first {self.max_boxes} ({worst.crowded} in "
                         f"{Path(worst.path).name})")
        return "; ".join(parts)


def is_gzip(path: Path) -> bool:
    """Whether a file is gzip-compressed (the OD API's TFRecordWriter can write GZIP)."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def compression(paths: list[Path]) -> str:
    """``""`` or ``"GZIP"`` for all of ``paths``; mixed compression is an error."""
    kinds = {is_gzip(p) for p in paths}
    if len(kinds) > 1:
        gz = [p.name for p in paths if is_gzip(p)][:3]
        raise RecordsError(f"some TFRecord files are GZIP-compressed ({', '.join(gz)}, ...) and "
                           "some are not; use one kind")
    return "GZIP" if kinds == {True} else ""


def _box_count(example: object) -> int:
    feature = example.features.feature  # type: ignore[attr-defined]
    return len(feature["image/object/bbox/xmin"].float_list.value)


def _clip(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _box_ok(x0: float, x1: float, y0: float, y1: float) -> bool:
    """Within the clip tolerance of the image, and not empty once clipped to it."""
    lo, hi = -CLIP_TOLERANCE, 1 + CLIP_TOLERANCE
    return all(lo <= v <= hi for v in (x0, x1, y0, y1)) and \
        _clip(x0) < _clip(x1) and _clip(y0) < _clip(y1)


def clipped(example: object) -> bool:
    """Whether a usable example has a box that the decoder clips to the image (a coordinate
    more than ``EPSILON`` outside [0, 1])."""
    features = example.features.feature  # type: ignore[attr-defined]
    values = [v for key in BOX_KEYS if key in features for v in features[key].float_list.value]
    return any(v < -EPSILON or v > 1 + EPSILON for v in values)


# Why an example is unusable: a ``REASONS`` key, with the refused class id for bad_label and
# bad_class; None: usable.
Problem = str | tuple[str, int] | None


def example_problem(example: object, name_to_id: dict[str, int] | None,
                    max_id: int) -> Problem:
    """Why a ``tf.train.Example`` is unusable (``Problem``), or None."""
    features = example.features.feature  # type: ignore[attr-defined]

    def floats(key: str) -> list[float]:
        return list(features[key].float_list.value) if key in features else []

    boxes = [floats(k) for k in BOX_KEYS]
    count = len(boxes[0])
    labels = list(features["image/object/class/label"].int64_list.value) \
        if "image/object/class/label" in features else []
    texts = list(features["image/object/class/text"].bytes_list.value) \
        if "image/object/class/text" in features else []
    encoded = features["image/encoded"].bytes_list.value[0] \
        if "image/encoded" in features and features["image/encoded"].bytes_list.value else b""
    if not (encoded.startswith(b"\xff\xd8") or encoded.startswith(b"\x89PNG")):
        return "bad_image"
    if count == 0:
        return "no_boxes"
    classes = labels if labels else texts
    if any(len(b) != count for b in boxes) or len(classes) != count:
        return "mismatched"
    if not all(_box_ok(*box) for box in zip(*boxes, strict=True)):
        return "bad_box"
    if labels:
        refused = [label for label in labels if not 1 <= label <= max_id]
        if refused:
            return "bad_label", refused[0]
    elif name_to_id is None:
        return "text_without_label_map"
    elif any(t.decode(errors="replace") not in name_to_id for t in texts):
        return "unknown_text"
    return None


def scan(paths: list[Path], name_to_id: dict[str, int] | None = None, max_id: int = 0,
         problem: Callable[[object], Problem] | None = None,
         image_key: str = "image/encoded", max_boxes: int | None = None) -> ScanReport:
    """Read every record of ``paths``; ``RecordsError`` naming a file that is not a TFRecord
    file (truncated, random bytes) or a compression mix. ``problem`` (a ``tf.train.Example``
    -> a ``REASONS`` key or None) says what is unusable: by default ``example_problem``, the
    OD API's detection records with ``name_to_id`` and ``max_id``. Usable examples with more
    than ``max_boxes`` boxes are counted (the input pipeline keeps the first ``max_boxes``)."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    if problem is None:
        def problem(example: object) -> Problem:
            return example_problem(example, name_to_id, max_id)
    kind = compression(paths)
    report = ScanReport(compressed=kind == "GZIP", max_boxes=max_boxes,
                        allowed_ids=f"1..{max_id}" if max_id else "")
    for path in paths:
        file_report = FileReport(str(path))
        usable: set[int] = set()
        try:
            dataset = tf.data.TFRecordDataset(str(path), compression_type=kind)
            for index, raw in enumerate(dataset.as_numpy_iterator()):
                file_report.records += 1
                example = tf.train.Example.FromString(raw)
                found = problem(example)
                if isinstance(found, tuple):
                    found, refused_id = found
                    file_report.refused_ids[refused_id] += 1
                if found:
                    file_report.skipped[found] += 1
                else:
                    usable.add(index)
                    if max_boxes is not None and _box_count(example) > max_boxes:
                        file_report.crowded += 1
                    if clipped(example):
                        file_report.clipped += 1
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError,
                gzip.BadGzipFile) as err:
            raise RecordsError(f"{path.name}: not a readable TFRecord file after "
                               f"{file_report.records} records ({tf_message(err)})") from None
        except DecodeError:  # a record that is not a tf.train.Example
            raise RecordsError(f"{path.name}: record {file_report.records} is not a "
                               "tf.train.Example") from None
        damaged = usable - _decodable(path, kind, image_key)
        file_report.undecodable = _fingerprints(path, kind, damaged)
        file_report.skipped["bad_image"] += len(damaged)
        file_report.usable = len(usable) - len(damaged)
        if not file_report.skipped["bad_image"]:
            del file_report.skipped["bad_image"]
        report.files.append(file_report)
    return report


FINGERPRINT_BUCKETS = 2**62


def fingerprint(serialized: object) -> object:
    """A record's fingerprint (a TensorFlow op, so the pipeline computes the same in-graph)."""
    import tensorflow as tf

    return tf.strings.to_hash_bucket_fast(serialized, FINGERPRINT_BUCKETS)


def _fingerprints(path: Path, kind: str, indices: set[int]) -> list[int]:
    if not indices:
        return []
    import tensorflow as tf

    dataset = tf.data.TFRecordDataset(str(path), compression_type=kind)
    return sorted(int(fingerprint(raw)) for index, raw in enumerate(dataset.as_numpy_iterator())
                  if index in indices)


def _decodable(path: Path, kind: str, image_key: str) -> set[int]:
    """Indices of the records whose image decodes, decoding in parallel as training will."""
    import tensorflow as tf

    feature = {image_key: tf.io.FixedLenFeature((), tf.string, default_value="")}

    def decode(index: tf.Tensor, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        encoded = tf.io.parse_single_example(serialized, feature)[image_key]
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return index, tf.shape(image)[0]

    dataset = (tf.data.TFRecordDataset(str(path), compression_type=kind).enumerate()
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
               .ignore_errors())
    return {int(index) for index, _ in dataset.as_numpy_iterator()}


def check(report: ScanReport, max_skipped_fraction: float, what: str) -> None:
    """Fail when nothing is usable, or when more than ``max_skipped_fraction`` of the examples
    is faulty (box-less images are negatives a detector dataset may hold: skipped, not faults)."""
    if report.usable == 0:
        names = ", ".join(Path(f.path).name for f in report.files[:5])
        raise RecordsError(f"{what}: no usable example in {names}: {report.summary()}"
                           + (f"; {report.hint}" if report.hint else ""))
    skipped = report.records - report.usable - report.skipped()["no_boxes"]
    if report.records and skipped / report.records > max_skipped_fraction:
        raise RecordsError(f"{what}: {skipped / report.records:.1%} of the examples are "
                           f"unusable, more than --max-skipped-fraction "
                           f"{max_skipped_fraction:g}: {report.summary()}"
                           + (f"; {report.hint}" if report.hint else ""))

"""Image-classification TFRecords (``image/encoded``, ``image/class/label``, optionally
``image/class/text`` through a label map; keys configurable) into batches for a Keras model.

An example is usable when its image is a JPEG or PNG that decodes and its class is one of the
model's: ``label - label_offset`` in ``0..classes-1``, or, without a label, its name in the label
map (ids 1..N are indices 0..N-1). ``example_problem`` says why one is not (for the scan, which
counts per file and reason); ``usable`` is its in-graph twin, so training skips exactly what
the scan counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.detection.records import Problem, ScanReport

RANGES = {"0-1": (0.0, 1.0), "0-255": (0.0, 255.0), "-1-1": (-1.0, 1.0)}


@dataclass(frozen=True)
class Classes:
    """How records name their class."""

    num_classes: int
    name_to_id: dict[str, int] | None
    image_key: str = "image/encoded"
    label_key: str = "image/class/label"
    text_key: str = "image/class/text"
    label_offset: int = 0

    @classmethod
    def of(cls, cfg: TrainConfig, num_classes: int,
           name_to_id: dict[str, int] | None) -> Classes:
        return cls(num_classes, name_to_id, cfg.image_key, cfg.label_key, cfg.text_key,
                   cfg.label_offset)


def example_problem(example: Any, classes: Classes) -> Problem:
    """Why a ``tf.train.Example`` is unusable (a ``trainer.detection.records.REASONS`` key), or
    None."""
    features = example.features.feature
    image = features[classes.image_key].bytes_list.value if classes.image_key in features \
        else []
    if not image or not image[0].startswith((b"\xff\xd8", b"\x89PNG")):
        return "bad_image"
    labels = list(features[classes.label_key].int64_list.value) \
        if classes.label_key in features else []
    texts = list(features[classes.text_key].bytes_list.value) \
        if classes.text_key in features else []
    if labels:
        index = labels[0] - classes.label_offset
    elif texts:
        if not classes.name_to_id:
            return "text_without_label_map"
        name = texts[0].decode(errors="replace")
        if name not in classes.name_to_id:
            return "unknown_text"
        index = classes.name_to_id[name] - 1
    else:
        return "no_class"
    if 0 <= index < classes.num_classes:
        return None
    return ("bad_class", labels[0]) if labels else "bad_class"


def labels_hint(report: ScanReport, classes: Classes) -> ScanReport:
    """The scan's words for refused labels: which are allowed, and, when the records look
    1-based (only label N refused, with offset 0), the setting that reads them."""
    offset = classes.label_offset
    report.allowed_ids = f"labels {offset}..{offset + classes.num_classes - 1}"
    if offset == 0 and set(report.refused_ids()) == {classes.num_classes}:
        report.hint = (f"the labels look 1-based (1..{classes.num_classes}): set "
                       "model.keras.features.labelOffset: 1 (--label-offset=1)")
    return report


def _parse(serialized: Any, classes: Classes) -> tuple[Any, Any]:
    """(encoded image, class index; negative when it has none or an unknown name)."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, {
        classes.image_key: tf.io.FixedLenFeature((), tf.string, default_value=""),
        classes.label_key: tf.io.VarLenFeature(tf.int64),
        classes.text_key: tf.io.VarLenFeature(tf.string)})
    labels = parsed[classes.label_key].values
    texts = parsed[classes.text_key].values
    names = classes.name_to_id or {"": 0}
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(names)), tf.constant(list(names.values()), tf.int64)), default_value=-1)
    by_name = tf.cond(tf.size(texts) > 0, lambda: table.lookup(texts[0]) - 1,
                      lambda: tf.constant(-2, tf.int64))
    index = tf.cond(tf.size(labels) > 0, lambda: labels[0] - classes.label_offset,
                    lambda: by_name)
    return parsed[classes.image_key], index


def usable(serialized: Any, classes: Classes) -> Any:
    """``example_problem(...) is None``, in TensorFlow."""
    import tensorflow as tf

    image, index = _parse(serialized, classes)
    magic = tf.strings.substr(image, 0, 4)
    is_image = tf.logical_or(tf.strings.substr(image, 0, 2) == b"\xff\xd8",
                             magic == b"\x89PNG")
    return tf.logical_and(is_image, tf.logical_and(index >= 0, index < classes.num_classes))


def build_dataset(files: list[Path], classes: Classes, shape: tuple[int, int, int],
                  input_range: str, batch_size: int, *, training: bool,
                  deterministic: bool = False, seed: int = 0, compression: str = "",
                  undecodable: set[int] | None = None) -> Any:
    """Batches of (images in ``input_range``, resized to ``shape``; class indices). Training:
    repeated, shuffled unless ``deterministic`` (then records alternate between the files one by
    one in a fixed order, so N workers see the same global batches as one), full batches."""
    import tensorflow as tf

    from trainer.detection.records import fingerprint

    height, width, channels = shape
    low, high = RANGES[input_range]
    damaged = tf.constant(sorted(undecodable or ()) or [-1], dtype=tf.int64)

    def keep(serialized: tf.Tensor) -> tf.Tensor:
        intact = tf.logical_not(tf.reduce_any(tf.equal(fingerprint(serialized), damaged)))
        return tf.logical_and(intact, usable(serialized, classes))

    def decode(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        encoded, index = _parse(serialized, classes)
        image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), [height, width])
        image = tf.ensure_shape(image, [height, width, channels])
        return low + image * ((high - low) / 255.0), index

    paths = tf.data.Dataset.from_tensor_slices([str(p) for p in files])
    if training and not deterministic:
        paths = paths.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = paths.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=max(len(files), 1), block_length=1, deterministic=True,
        num_parallel_calls=tf.data.AUTOTUNE if not deterministic else None)
    dataset = dataset.filter(keep)
    if training:
        dataset = dataset.repeat()
        if not deterministic:
            dataset = dataset.shuffle(1024, seed=seed)
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=deterministic or not training)
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)

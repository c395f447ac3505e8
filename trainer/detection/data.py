"""OD-API TFRecords into a tf.data pipeline: Model Garden's decoder, the family's parser (resize,
random horizontal flip, anchor labelling, padding) and input reader (parallel reads and decode,
shuffle, batch, prefetch), with additions the OD API has and Model Garden lacks: classes from
``image/object/class/text`` through the label map when ids are absent, GZIP-compressed files,
and unusable examples skipped before decoding, exactly those ``trainer.detection.records``
counts."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from official.vision.dataloaders import tf_example_decoder


class OdApiDecoder(tf_example_decoder.TfExampleDecoder):
    """``TfExampleDecoder`` that falls back from class ids to class names via the label map."""

    def __init__(self, name_to_id: dict[str, int] | None) -> None:
        super().__init__(regenerate_source_id=True)
        self._table = None
        if name_to_id:
            self._keys_to_features["image/object/class/text"] = tf.io.VarLenFeature(tf.string)
            self._table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    keys=tf.constant(list(name_to_id), dtype=tf.string),
                    values=tf.constant(list(name_to_id.values()), dtype=tf.int64)),
                default_value=-1)

    def _decode_boxes(self, parsed_tensors: dict[str, tf.Tensor]) -> tf.Tensor:
        # Boxes a little outside the image (``records.CLIP_TOLERANCE``; farther ones never get
        # here) are clipped to it, as the OD API trains them.
        return tf.clip_by_value(super()._decode_boxes(parsed_tensors), 0.0, 1.0)

    def _decode_classes(self, parsed_tensors: dict[str, tf.Tensor]) -> tf.Tensor:
        labels = parsed_tensors["image/object/class/label"]
        if self._table is None:
            return labels
        names = parsed_tensors["image/object/class/text"]
        # Ids win when present (the OD API's COCO tool writes display names as text); names
        # missing from the label map never get here (``usable`` filtered them out).
        return tf.cond(tf.size(labels) > 0, lambda: labels, lambda: self._table.lookup(names))


_RAW_FEATURES = {
    **{key: tf.io.VarLenFeature(tf.float32) for key in
       ("image/object/bbox/xmin", "image/object/bbox/xmax", "image/object/bbox/ymin",
        "image/object/bbox/ymax")},
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
}


def usable(serialized: tf.Tensor, names: tf.Tensor, max_id: int) -> tf.Tensor:
    """Whether a serialized example is usable: the TensorFlow twin of
    ``trainer.detection.records.example_problem`` (same rules, same tolerance)."""
    from trainer.detection.records import CLIP_TOLERANCE

    parsed = tf.io.parse_single_example(serialized, _RAW_FEATURES)
    xmin, xmax, ymin, ymax = (tf.sparse.to_dense(parsed[f"image/object/bbox/{k}"])
                              for k in ("xmin", "xmax", "ymin", "ymax"))
    labels = tf.sparse.to_dense(parsed["image/object/class/label"])
    texts = tf.sparse.to_dense(parsed["image/object/class/text"], default_value="")
    encoded = parsed["image/encoded"]
    image_ok = tf.logical_or(tf.strings.substr(encoded, 0, 2) == b"\xff\xd8",
                             tf.strings.substr(encoded, 0, 4) == b"\x89PNG")
    count = tf.size(xmin)
    has_labels = tf.size(labels) > 0
    classes = tf.cond(has_labels, lambda: tf.size(labels), lambda: tf.size(texts))
    same_length = tf.reduce_all(tf.stack([tf.size(xmax) == count, tf.size(ymin) == count,
                                          tf.size(ymax) == count, classes == count]))

    def boxes_ok() -> tf.Tensor:
        lo, hi = -CLIP_TOLERANCE, 1 + CLIP_TOLERANCE
        inside = tf.reduce_all([tf.reduce_all((v >= lo) & (v <= hi))
                                for v in (xmin, xmax, ymin, ymax)])

        def clip(v: tf.Tensor) -> tf.Tensor:
            return tf.clip_by_value(v, 0.0, 1.0)

        return inside & tf.reduce_all((clip(xmin) < clip(xmax)) & (clip(ymin) < clip(ymax)))

    def classes_ok() -> tf.Tensor:
        ids_ok = tf.reduce_all((labels >= 1) & (labels <= max_id))
        known = tf.reduce_all(tf.reduce_any(tf.equal(texts[:, None], names[None, :]), axis=1))
        return tf.cond(has_labels, lambda: ids_ok, lambda: known)

    return tf.logical_and(image_ok, tf.logical_and(count > 0, tf.cond(
        same_length, lambda: tf.logical_and(boxes_ok(), classes_ok()),
        lambda: tf.constant(False))))


def build_dataset(task: Any, params: Any, name_to_id: dict[str, int] | None,
                  input_context: tf.distribute.InputContext | None = None,
                  compression: str = "", undecodable: set[int] | None = None
                  ) -> tf.data.Dataset:
    """The input pipeline of ``task``'s family (its ``input_parser``) for ``params`` (a Model
    Garden ``DataConfig``); examples
    that ``usable`` rejects, and the records whose fingerprint ``undecodable`` holds (damaged
    images, from ``trainer.detection.records``), are dropped before decoding. ``compression``:
    ``""`` or ``"GZIP"``."""
    from official.vision.dataloaders import input_reader, input_reader_factory

    model = task.task_config.model
    parser = task.input_parser(params)
    decoder = OdApiDecoder(name_to_id)
    names = tf.constant(list(name_to_id or {}) or [""], dtype=tf.string)
    max_id = model.num_classes - 1  # Model Garden counts the background as class 0

    from trainer.detection.records import fingerprint

    damaged = tf.constant(sorted(undecodable or ()) or [-1], dtype=tf.int64)

    def intact(serialized: tf.Tensor) -> tf.Tensor:
        return tf.logical_not(tf.reduce_any(tf.equal(fingerprint(serialized), damaged)))

    def records(path: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path, compression_type=compression).filter(
            lambda serialized: tf.logical_and(intact(serialized),
                                              usable(serialized, names, max_id)))

    reader = input_reader_factory.input_reader_generator(
        params, dataset_fn=records, decoder_fn=decoder.decode,
        # Weighted mixing of several inputs (Model Garden's ``weights``; YOLO's config lacks it).
        combine_fn=input_reader.create_combine_fn(params) if "weights" in params.as_dict()
        else None,
        parser_fn=parser.parse_fn(params.is_training),
        # A family may sample between decoding and parsing (YOLO's mosaic step).
        sample_fn=task.input_sample_fn(params))
    return reader.read(input_context=input_context)

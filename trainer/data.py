"""OD-API TFRecords into a tf.data pipeline: Model Garden's decoder, RetinaNet parser (resize,
random horizontal flip, anchor labelling, padding) and input reader (parallel reads and decode,
shuffle, batch, prefetch), with two additions the OD API has and Model Garden lacks: classes from
``image/object/class/text`` through the label map when ids are absent, and images without boxes
skipped."""

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

    def _decode_classes(self, parsed_tensors: dict[str, tf.Tensor]) -> tf.Tensor:
        labels = parsed_tensors["image/object/class/label"]
        if self._table is None:
            return labels
        names = parsed_tensors["image/object/class/text"]
        from_text = self._table.lookup(names)
        check = tf.debugging.assert_non_negative(
            from_text, message="image/object/class/text holds a name missing from the label map")
        with tf.control_dependencies([check]):
            from_text = tf.identity(from_text)
        return tf.cond(tf.size(labels) > 0, lambda: labels, lambda: from_text)


def _has_boxes(example: dict[str, tf.Tensor]) -> tf.Tensor:
    return tf.shape(example["groundtruth_classes"])[0] > 0


def build_dataset(task: Any, params: Any, name_to_id: dict[str, int] | None,
                  input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """The RetinaNet input pipeline for ``params`` (a Model Garden ``DataConfig``)."""
    from official.common import dataset_fn
    from official.vision.dataloaders import input_reader, input_reader_factory, retinanet_input

    model = task.task_config.model
    parser = retinanet_input.Parser(
        output_size=model.input_size[:2], min_level=model.min_level, max_level=model.max_level,
        num_scales=model.anchor.num_scales, aspect_ratios=model.anchor.aspect_ratios,
        anchor_size=model.anchor.anchor_size, dtype=params.dtype,
        match_threshold=params.parser.match_threshold,
        unmatched_threshold=params.parser.unmatched_threshold,
        aug_rand_hflip=params.parser.aug_rand_hflip,
        skip_crowd_during_training=params.parser.skip_crowd_during_training,
        max_num_instances=params.parser.max_num_instances)
    decoder = OdApiDecoder(name_to_id)
    reader = input_reader_factory.input_reader_generator(
        params, dataset_fn=dataset_fn.pick_dataset_fn(params.file_type),
        decoder_fn=decoder.decode, combine_fn=input_reader.create_combine_fn(params),
        sample_fn=lambda ds: ds.filter(_has_boxes),
        parser_fn=parser.parse_fn(params.is_training))
    return reader.read(input_context=input_context)

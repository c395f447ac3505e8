"""SSD box predictors, with the OD API's attribute names (``model/_box_predictor/...``): the
weight-shared one (RetinaNet's towers, shared across levels, one batch norm per level) and
SSD's convolutional one (one head per feature map). Both return, per image, one row per anchor
in (y, x, anchor) order: 4 box codes, and ``num_classes + 1`` logits (column 0: background)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras

from trainer.detection.families.ssd.layers import BnMode, Hyper
from trainer.detection.families.ssd.spec import ConvolutionalPredictor, WeightSharedPredictor

BOX = "box_encodings"
CLASS = "class_predictions_with_background"
CODE_SIZE = 4


def _flatten(prediction: Any, columns: int) -> Any:
    """[batch, h, w, anchors * columns] -> [batch, h * w * anchors, columns]."""
    return tf.reshape(prediction, [tf.shape(prediction)[0], -1, columns])


class _Head(tf_keras.layers.Layer):
    """One output convolution, kept in a list under the OD API's attribute name."""

    def __init__(self, attribute: str, layers: list[Any], columns: int):
        super().__init__()
        self.attribute = attribute
        self.columns = columns
        setattr(self, attribute, layers)

    def call(self, feature: Any, training: Any = None) -> Any:
        for layer in getattr(self, self.attribute):
            feature = layer(feature, training=training)
        return _flatten(feature, self.columns)


def _output_conv(hyper: Hyper, filters: int, kernel: int, separable: bool,
                 bias: float = 0.0) -> Any:
    """An output conv: with a bias (initialised to ``bias``) and no batch norm."""
    initializer = tf_keras.initializers.Constant(bias)
    if separable:
        # The OD API hands a separable head conv the kernel_* settings, which Keras's
        # SeparableConv2D does not read: no L2 and Keras's own initializers (the fixtures' L2
        # sum confirms it).
        return tf_keras.layers.SeparableConv2D(filters, kernel, padding="same",
                                               bias_initializer=initializer)
    return tf_keras.layers.Conv2D(filters, kernel, padding="same", bias_initializer=initializer,
                                  **hyper.conv_kwargs(use_bias=True))


class WeightShared(tf_keras.layers.Layer):
    """The weight-shared convolutional box predictor (towers of ``num_layers`` convs)."""

    def __init__(self, spec: WeightSharedPredictor, num_classes: int, anchors: int,
                 num_levels: int, bn: BnMode):
        super().__init__()
        self.spec = spec
        hyper = Hyper(spec.hyperparams, bn)
        sep, k = spec.use_depthwise, spec.kernel_size
        self._box_prediction_head = _Head("_box_encoder_layers", [
            _output_conv(hyper, anchors * CODE_SIZE, k, sep)], CODE_SIZE)
        self._prediction_heads = {CLASS: _Head("_class_predictor_layers", [
            _output_conv(hyper, anchors * (num_classes + 1), k, sep, spec.class_bias)],
            num_classes + 1)}
        self._additional_projection_layers: list[Any] = [[] for _ in range(num_levels)]
        # tower scope -> its convs, shared by every level (each level: its own batch norms)
        scopes = {BOX: "PredictionTower" if spec.share_tower else "BoxPredictionTower"}
        if not spec.share_tower:
            scopes[CLASS] = "ClassPredictionTower"
        self._head_scope_conv_layers = {
            scope: [hyper.conv(spec.depth, k, separable=sep) for _ in range(spec.num_layers)]
            for scope in scopes.values()}
        towers: dict[str, list[Any]] = {BOX: [], CLASS: []}
        for head, scope in scopes.items():
            convs = self._head_scope_conv_layers[scope]
            for _ in range(num_levels):
                level: list[Any] = []
                for conv in convs:
                    level += [conv, hyper.batch_norm(), tf_keras.layers.Activation("relu6")]
                towers[head].append(level)
        self._base_tower_layers_for_heads = towers

    def call(self, features: list[Any], training: Any = None) -> dict[str, Any]:
        boxes, classes = [], []
        for index, feature in enumerate(features):
            box_feature = self._tower(BOX, index, feature, training)
            boxes.append(self._box_prediction_head(box_feature, training=training))
            class_feature = box_feature if self.spec.share_tower else self._tower(
                CLASS, index, feature, training)
            classes.append(self._prediction_heads[CLASS](class_feature, training=training))
        return {BOX: tf.concat(boxes, 1), CLASS: tf.concat(classes, 1)}

    def _tower(self, head: str, index: int, feature: Any, training: Any) -> Any:
        for layer in self._base_tower_layers_for_heads[head][index]:
            feature = layer(feature, training=training)
        return feature


class Convolutional(tf_keras.layers.Layer):
    """SSD's convolutional box predictor: per feature map, a box and a class conv."""

    def __init__(self, spec: ConvolutionalPredictor, num_classes: int, anchors: list[int],
                 bn: BnMode):
        super().__init__()
        hyper = Hyper(spec.hyperparams, bn)
        k = spec.kernel_size
        self._shared_nets: list[Any] = [[] for _ in anchors]
        dropout = ([lambda: tf_keras.layers.Dropout(1.0 - spec.keep_probability)]
                   if spec.use_dropout else [])
        self._prediction_heads = {
            BOX: [_Head("_box_encoder_layers", [_output_conv(hyper, a * CODE_SIZE, k, False)],
                        CODE_SIZE) for a in anchors],
            CLASS: [_Head("_class_predictor_layers",
                          [make() for make in dropout] + [_output_conv(
                              hyper, a * (num_classes + 1), k, False, spec.class_bias)],
                          num_classes + 1) for a in anchors]}

    def call(self, features: list[Any], training: Any = None) -> dict[str, Any]:
        return {head: tf.concat([heads[i](feature, training=training)
                                 for i, feature in enumerate(features)], 1)
                for head, heads in self._prediction_heads.items()}

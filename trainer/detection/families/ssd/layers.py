"""Keras layers as an OD-API ``conv_hyperparams`` block builds them, and the backbones: tf-keras's
own applications (MobileNet V1/V2, ResNet V1) with their layers swapped through the
applications' ``layers=`` argument, the way the OD API builds its Keras backbones. The swaps
are what make the network the OD API's: SAME padding instead of the applications' explicit
zero padding, the stem's fixed 3-pixel pad for a strided ResNet conv, no conv biases, the
config's activation, batch norm, regularizer and initializer."""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf
import tf_keras

from trainer.detection.families.ssd.spec import BatchNorm, FeatureExtractor, Hyperparams

# What the OD API's backbones use when the config does not override their hyper-parameters.
_OWN = {
    "mobilenet_v1": Hyperparams("relu6", 4e-5, {"class_name": "TruncatedNormal", "config": {
        "stddev": 0.09}}, BatchNorm(0.9997, 1e-3, True, True)),
    "mobilenet_v2": Hyperparams("relu6", 4e-5, {"class_name": "TruncatedNormal", "config": {
        "stddev": 0.09}}, BatchNorm(0.9997, 1e-3, True, True)),
    # ResNet's weight decay 1e-4 is applied as l2(1e-4), not halved: stored doubled here.
    "resnet": Hyperparams("relu", 2e-4, {"class_name": "VarianceScaling", "config": {}},
                          BatchNorm(0.997, 1e-5, True, True)),
}
# Backbone layers whose outputs are levels 2..5 (strides 4..32) of each FPN backbone.
FPN_OUTPUTS = {
    "mobilenet_v1": ("conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu"),
    "mobilenet_v2": ("block_2_add", "block_5_add", "block_12_add", "out_relu"),
    "resnet50": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet101": ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out",
                  "conv5_block3_out"),
    "resnet152": ("conv2_block3_out", "conv3_block8_out", "conv4_block36_out",
                  "conv5_block3_out"),
}
# SSD MobileNet V2 (no FPN): the two backbone maps the extra layers grow from.
SSD_OUTPUTS = ("block_13_expand_relu", "out_relu")


class BnMode(NamedTuple):
    """How every batch norm of a model runs: ``frozen`` (moving statistics, fixed scales, in
    training too) and ``sync`` (statistics over all replicas' batches)."""

    frozen: bool = False
    sync: bool = False


class Hyper:
    """Layers built from one ``conv_hyperparams`` block."""

    def __init__(self, params: Hyperparams, bn: BnMode = BnMode()):
        self.params = params
        self.bn = bn

    def conv_kwargs(self, use_bias: bool | None = None) -> dict[str, Any]:
        """A convolution's kernel regularizer and initializer; a bias only without batch norm
        (unless ``use_bias`` says otherwise). The OD API's Keras L2 is half the file's weight."""
        config = {"class_name": self.params.initializer["class_name"],
                  "config": dict(self.params.initializer["config"])}
        return {"kernel_regularizer": tf_keras.regularizers.l2(self.params.l2 * 0.5)
                if self.params.l2 else None,
                "kernel_initializer": tf_keras.initializers.get(config),
                "use_bias": self.params.batch_norm is None if use_bias is None else use_bias}

    def separable_kwargs(self, use_bias: bool | None = None) -> dict[str, Any]:
        """As ``conv_kwargs`` for a separable conv: the regularizer and initializer reach the
        depthwise kernel; the pointwise one keeps Keras's defaults, as in the OD API."""
        kwargs = self.conv_kwargs(use_bias)
        return {"depthwise_regularizer": kwargs.pop("kernel_regularizer"),
                "depthwise_initializer": kwargs.pop("kernel_initializer"), **kwargs}

    def conv(self, filters: int, kernel: int, stride: int = 1, use_bias: bool | None = None,
             separable: bool = False, name: str | None = None) -> Any:
        if separable:
            return tf_keras.layers.SeparableConv2D(
                filters, kernel, strides=stride, padding="same", depth_multiplier=1, name=name,
                **self.separable_kwargs(use_bias))
        return tf_keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                                      name=name, **self.conv_kwargs(use_bias))

    def batch_norm(self, name: str | None = None) -> Any:
        """The config's batch norm; an identity where it has none (the OD API keeps the slot)."""
        norm = self.params.batch_norm
        if norm is None:
            return tf_keras.layers.Lambda(tf.identity, name=name)
        layer = tf_keras.layers.BatchNormalization(momentum=norm.momentum, epsilon=norm.epsilon,
                                                   center=norm.center, scale=norm.scale,
                                                   synchronized=self.bn.sync, name=name)
        # Frozen: moving statistics and fixed scales in training too (tf-keras's rule).
        layer.trainable = not self.bn.frozen
        return layer

    def activation(self, name: str | None = None) -> Any:
        return tf_keras.layers.Activation(self.params.activation, name=name)

    def block(self, filters: int, kernel: int, stride: int = 1, separable: bool = False,
              name: str | None = None) -> list[Any]:
        """conv, batch norm, activation: the OD API's ``create_conv_block``."""
        return [self.conv(filters, kernel, stride, separable=separable, name=name),
                self.batch_norm(), self.activation()]


def _fixed_pad(kernel: int) -> Any:
    """Pads as SAME would for an odd kernel at stride 1, whatever the input size: the ResNet
    stem's symmetric pad before its VALID strided conv."""
    total = kernel - 1
    begin, end = total // 2, total - total // 2
    return tf_keras.layers.Lambda(
        lambda x: tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]]))


class _ApplicationLayers:
    """``tf_keras.layers`` as a Keras application sees it (``layers=``), with the OD API's
    changes; everything not named here is tf-keras's own."""

    def __init__(self, hyper: Hyper, depth_fn: Any, resnet: bool):
        self.hyper = hyper
        self.depth_fn = depth_fn
        self.resnet = resnet

    def Conv2D(self, filters: int, kernel_size: Any = None, **kwargs: Any) -> Any:
        kernel = kwargs.pop("kernel_size", kernel_size)
        kernel = kernel if isinstance(kernel, int) else kernel[0]
        strides = kwargs.pop("strides", 1)
        stride = strides if isinstance(strides, int) else strides[0]
        filters = self.depth_fn(filters, kwargs.get("name", ""))
        for unused in ("padding", "use_bias", "kernel_regularizer", "kernel_initializer"):
            kwargs.pop(unused, None)
        options = {**self.hyper.conv_kwargs(use_bias=False), **kwargs}
        if self.resnet and stride > 1 and kernel > 1:
            conv = tf_keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid",
                                          **options)
            pad = _fixed_pad(kernel)
            return lambda x: conv(pad(x))
        return tf_keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", **options)

    def DepthwiseConv2D(self, kernel_size: Any = None, **kwargs: Any) -> Any:
        kernel = kwargs.pop("kernel_size", kernel_size)
        kwargs.pop("padding", None)
        kwargs.pop("use_bias", None)
        options = self.hyper.conv_kwargs(use_bias=False)
        return tf_keras.layers.DepthwiseConv2D(
            kernel, padding="same", use_bias=False,
            depthwise_initializer=options["kernel_initializer"],
            depthwise_regularizer=options["kernel_regularizer"], **kwargs)

    def BatchNormalization(self, **kwargs: Any) -> Any:
        return self.hyper.batch_norm(name=kwargs.get("name"))

    def Activation(self, *args: Any, **kwargs: Any) -> Any:
        return self.hyper.activation(name=kwargs.get("name"))

    ReLU = Activation

    def ZeroPadding2D(self, *args: Any, **kwargs: Any) -> Any:
        return lambda x: x  # the convolutions pad SAME instead

    def MaxPooling2D(self, pool_size: Any, **kwargs: Any) -> Any:
        kwargs["padding"] = "same"
        return tf_keras.layers.MaxPooling2D(pool_size, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(tf_keras.layers, name)


def _depth_fn(extractor: FeatureExtractor, backbone: str) -> Any:
    """The filters of a backbone conv: width multiplier and minimum depth, as the OD API's
    wrappers apply them (MobileNet V2's last conv is 1280 wide unless the multiplier is < 1)."""
    alpha, min_depth = extractor.depth_multiplier, extractor.min_depth

    def depth(filters: int, name: str) -> int:
        if backbone == "mobilenet_v2":
            if name == "Conv_1":
                filters = 1280 if alpha >= 1.0 else _make_divisible(1280 * alpha, 8)
            if min_depth and filters < min_depth and not name.endswith("expand"):
                filters = min_depth
            return filters
        # Keras's MobileNet V1 applies alpha itself; the OD API's wrapper applies it again.
        filters = int(filters * alpha)
        return max(filters, min_depth) if min_depth else filters

    return depth


def _make_divisible(value: float, divisor: int) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def backbone(extractor: FeatureExtractor, bn: BnMode) -> Any:
    """The classification backbone: a functional tf-keras model whose outputs are the maps the
    feature extractor reads (levels 2..5 for an FPN, SSD's two maps otherwise)."""
    family = "resnet" if extractor.backbone.startswith("resnet") else extractor.backbone
    params = extractor.hyperparams if extractor.override_base_hyperparams else _OWN[family]
    layers = _ApplicationLayers(Hyper(params, bn), _depth_fn(extractor, extractor.backbone),
                                resnet=family == "resnet")
    apps = tf_keras.applications
    common = {"include_top": False, "weights": None, "input_shape": (None, None, 3),
              "layers": layers}
    if family == "resnet":
        full = {"resnet50": apps.resnet.ResNet50, "resnet101": apps.resnet.ResNet101,
                "resnet152": apps.resnet.ResNet152}[extractor.backbone](**common)
    elif family == "mobilenet_v1":
        full = apps.MobileNet(alpha=extractor.depth_multiplier, **common)
    else:
        full = apps.MobileNetV2(alpha=extractor.depth_multiplier, **common)
    names = FPN_OUTPUTS[extractor.backbone] if extractor.fpn else SSD_OUTPUTS
    if extractor.backbone == "mobilenet_v2" and extractor.fpn:
        # A block without a residual add (narrow multipliers) ends at its projection's BN.
        present = {layer.name for layer in full.layers}
        names = tuple(n if n in present else n.replace("_add", "_project_BN") for n in names)
    return tf_keras.Model(inputs=full.inputs,
                          outputs=[full.get_layer(name).output for name in names])

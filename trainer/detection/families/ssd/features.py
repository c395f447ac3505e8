"""SSD feature extractors: a backbone and the OD API's Keras FPN (top-down, smoothed, extra
coarse levels), or SSD's extra stride-2 layers. Attribute names are the OD API's, so a zoo
checkpoint's ``model/_feature_extractor/...`` keys name these very objects."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras

from trainer.detection.families.ssd.layers import BnMode, Hyper, backbone
from trainer.detection.families.ssd.spec import FeatureExtractor

# SSD MobileNet V2's extra layers: depth of each new map after the backbone's two.
SSD_EXTRA_DEPTHS = (512, 256, 256, 128)
SSD_BACKBONE_MAPS = 2


class FpnTopDown(tf_keras.Model):
    """The FPN's top-down path: the coarsest input only projected (1x1, with bias); each finer
    level its 1x1 lateral plus the nearest-upsampled level above, then 3x3 conv, batch norm and
    activation. The next finer level adds that smoothed, activated output."""

    def __init__(self, num_levels: int, depth: int, hyper: Hyper, use_depthwise: bool):
        super().__init__()
        self.top_layers = [hyper.conv(depth, 1, use_bias=True)]
        self.residual_blocks: list[Any] = []
        self.top_down_blocks: list[Any] = []
        self.reshape_blocks: list[Any] = []
        self.conv_layers: list[Any] = []
        for _ in range(num_levels - 1):
            self.residual_blocks.append([hyper.conv(depth, 1, use_bias=True)])
            self.top_down_blocks.append([tf_keras.layers.UpSampling2D(2, interpolation="nearest")])
            self.reshape_blocks.append([])
            self.conv_layers.append(hyper.block(depth, 3, separable=use_depthwise))

    def call(self, features: list[Any], training: Any = None) -> list[Any]:
        """``features`` finest first; the outputs likewise."""
        top_down = features[-1]
        for layer in self.top_layers:
            top_down = layer(top_down, training=training)
        outputs = [top_down]
        for index, level in enumerate(reversed(range(len(features) - 1))):
            residual = features[level]
            for layer in self.residual_blocks[index]:
                residual = layer(residual, training=training)
            for layer in self.top_down_blocks[index]:
                top_down = layer(top_down, training=training)
            top_down = top_down + residual
            for layer in self.conv_layers[index]:
                top_down = layer(top_down, training=training)
            outputs.append(top_down)
        return outputs[::-1]


class FpnExtractor(tf_keras.Model):
    """Backbone levels ``min_level``..5 through the FPN, then stride-2 conv blocks up to
    ``max_level``, each from the level below it."""

    def __init__(self, spec: FeatureExtractor, bn: BnMode):
        super().__init__()
        self.spec = spec
        hyper = Hyper(spec.hyperparams, bn)
        depth = max(int(spec.fpn_depth * spec.depth_multiplier), spec.min_depth)
        self.base_max_level = min(spec.max_level, 5)
        self.classification_backbone = backbone(spec, bn)
        self._fpn_features_generator = FpnTopDown(self.base_max_level + 1 - spec.min_level,
                                                  depth, hyper, spec.use_depthwise)
        self._coarse_feature_layers: list[Any] = []
        for _ in range(self.base_max_level + 1, spec.max_level + 1):
            self._coarse_feature_layers.append(
                hyper.block(depth, 3, stride=2, separable=spec.use_depthwise))

    def call(self, images: Any, training: Any = None) -> list[Any]:
        levels = self.classification_backbone(images, training=training)  # levels 2..5
        maps = self._fpn_features_generator(
            levels[self.spec.min_level - 2:self.base_max_level - 1], training=training)
        last = maps[-1]
        for block in self._coarse_feature_layers:
            for layer in block:
                last = layer(last, training=training)
            maps.append(last)
        return maps


class MultiResolutionMaps(tf_keras.Model):
    """SSD's extra maps: from the last map, a 1x1 conv to half the depth, then a 3x3 stride-2
    conv (depthwise + 1x1 when ``use_depthwise``), each with batch norm and activation."""

    def __init__(self, spec: FeatureExtractor, hyper: Hyper):
        super().__init__()
        depth = lambda d: max(int(d * spec.depth_multiplier), spec.min_depth)  # noqa: E731
        self.convolutions: list[Any] = [[] for _ in range(SSD_BACKBONE_MAPS)]
        for layer_depth in SSD_EXTRA_DEPTHS:
            net = hyper.block(depth(layer_depth // 2), 1)
            if spec.use_depthwise:
                net += [tf_keras.layers.DepthwiseConv2D(3, strides=2, padding="same",
                                                        **_depthwise_kwargs(hyper)),
                        hyper.batch_norm(), hyper.activation()]
                net += hyper.block(depth(layer_depth), 1)
            else:
                net += hyper.block(depth(layer_depth), 3, stride=2)
            self.convolutions.append(net)

    def call(self, maps: list[Any], training: Any = None) -> list[Any]:
        maps = list(maps)
        for net in self.convolutions[SSD_BACKBONE_MAPS:]:
            feature = maps[-1]
            for layer in net:
                feature = layer(feature, training=training)
            maps.append(feature)
        return maps


def _depthwise_kwargs(hyper: Hyper) -> dict[str, Any]:
    kwargs = hyper.conv_kwargs()
    return {"use_bias": kwargs["use_bias"],
            "depthwise_regularizer": kwargs["kernel_regularizer"],
            "depthwise_initializer": kwargs["kernel_initializer"]}


class SsdExtractor(tf_keras.Model):
    """SSD MobileNet V2: two backbone maps (strides 16 and 32) and four extra ones."""

    def __init__(self, spec: FeatureExtractor, bn: BnMode):
        super().__init__()
        self.classification_backbone = backbone(spec, bn)
        self.feature_map_generator = MultiResolutionMaps(spec, Hyper(spec.hyperparams,
                                                                     bn))

    def call(self, images: Any, training: Any = None) -> list[Any]:
        maps = self.classification_backbone(images, training=training)
        return self.feature_map_generator(maps, training=training)


def extractor(spec: FeatureExtractor, bn: BnMode) -> Any:
    """The feature extractor a ``feature_extractor`` block describes."""
    return (FpnExtractor if spec.fpn else SsdExtractor)(spec, bn)


def preprocess(backbone_name: str, resized: Any) -> Any:
    """The backbone's input scaling of a resized float image (0-255)."""
    if backbone_name.startswith("resnet"):
        return resized - tf.constant([123.68, 116.779, 103.939], resized.dtype)
    return (2.0 / 255.0) * resized - 1.0

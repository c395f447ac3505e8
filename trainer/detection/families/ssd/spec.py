"""An OD-API ``ssd { ... }`` block as plain values: what the SSD family builds, with the OD API's
proto defaults where the file is silent, and a refusal naming the field for what it does not
build. No TensorFlow here: ``launcher validate`` reads it too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.pipeline.config import PipelineConfigError, _chosen, _enum, _float, _opt, _or

# feature_extractor.type -> (backbone, whether an FPN sits on it)
EXTRACTORS: dict[str, tuple[str, bool]] = {
    "ssd_mobilenet_v2_keras": ("mobilenet_v2", False),
    "ssd_mobilenet_v2_fpn_keras": ("mobilenet_v2", True),
    "ssd_mobilenet_v1_fpn_keras": ("mobilenet_v1", True),
    "ssd_resnet50_v1_fpn_keras": ("resnet50", True),
    "ssd_resnet101_v1_fpn_keras": ("resnet101", True),
    "ssd_resnet152_v1_fpn_keras": ("resnet152", True),
}
ACTIVATIONS = {"NONE": "linear", "RELU": "relu", "RELU_6": "relu6", "SWISH": "swish"}


@dataclass(frozen=True)
class BatchNorm:
    """``batch_norm``: the OD API's FreezableBatchNorm settings."""

    momentum: float
    epsilon: float
    center: bool
    scale: bool


@dataclass(frozen=True)
class Hyperparams:
    """``conv_hyperparams``: activation, L2 weight (the file's; the layers use half of it,
    as the OD API's Keras builder does), kernel initializer (a tf-keras config) and batch norm
    (None: convolutions with a bias and no normalisation)."""

    activation: str
    l2: float
    initializer: dict[str, Any]
    batch_norm: BatchNorm | None


@dataclass(frozen=True)
class FeatureExtractor:
    """``feature_extractor``: a backbone, and an FPN (levels, depth) or SSD's extra layers."""

    type: str
    backbone: str
    fpn: bool
    depth_multiplier: float
    min_depth: int
    use_depthwise: bool
    use_explicit_padding: bool
    # The backbone takes ``hyperparams`` only when the file overrides its own.
    override_base_hyperparams: bool
    hyperparams: Hyperparams
    min_level: int
    max_level: int
    fpn_depth: int


@dataclass(frozen=True)
class WeightSharedPredictor:
    """``weight_shared_convolutional_box_predictor``: one tower shared across levels."""

    depth: int
    num_layers: int
    kernel_size: int
    class_bias: float
    share_tower: bool
    use_depthwise: bool
    hyperparams: Hyperparams


@dataclass(frozen=True)
class ConvolutionalPredictor:
    """``convolutional_box_predictor``: SSD's own, one head per feature map."""

    kernel_size: int
    class_bias: float
    num_layers: int
    min_depth: int
    max_depth: int
    use_dropout: bool
    keep_probability: float
    hyperparams: Hyperparams


@dataclass(frozen=True)
class MultiscaleAnchors:
    """``multiscale_anchor_generator`` (RetinaNet's): per level, scales x aspect ratios."""

    min_level: int
    max_level: int
    anchor_scale: float
    aspect_ratios: tuple[float, ...]
    scales_per_octave: int


@dataclass(frozen=True)
class SsdAnchors:
    """``ssd_anchor_generator``: scales spread linearly over ``num_layers`` feature maps."""

    num_layers: int
    min_scale: float
    max_scale: float
    scales: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    interpolated_scale_aspect_ratio: float
    reduce_boxes_in_lowest_layer: bool
    base_anchor_size: tuple[float, float]


@dataclass(frozen=True)
class SsdSpec:
    """Everything of an ``ssd`` block the family builds."""

    num_classes: int
    height: int
    width: int
    extractor: FeatureExtractor
    predictor: WeightSharedPredictor | ConvolutionalPredictor
    anchors: MultiscaleAnchors | SsdAnchors
    box_coder_scales: tuple[float, float, float, float]
    matched_threshold: float
    unmatched_threshold: float
    force_match_for_each_row: bool
    focal_gamma: float
    focal_alpha: float | None
    smooth_l1_delta: float
    classification_weight: float
    localization_weight: float
    normalize_by_num_matches: bool
    normalize_loc_by_codesize: bool
    freeze_batchnorm: bool
    score_threshold: float
    iou_threshold: float
    max_detections_per_class: int
    max_total_detections: int
    score_converter: str  # SIGMOID | IDENTITY
    logit_scale: float

    @property
    def size_multiple(self) -> int:
        """What the input size must be a multiple of: an FPN upsamples its top backbone level
        (at most level 5) onto the next, so 2^that; SSD's own extra layers take any size."""
        if not self.extractor.fpn:
            return 1
        return 2 ** min(5, self.anchors.max_level if isinstance(self.anchors,
                                                                MultiscaleAnchors) else 5)

    @property
    def num_anchors_per_location(self) -> list[int]:
        """Anchors at each location of each feature map, finest first."""
        anchors = self.anchors
        if isinstance(anchors, MultiscaleAnchors):
            per = len(anchors.aspect_ratios) * anchors.scales_per_octave
            return [per] * (anchors.max_level - anchors.min_level + 1)
        per = len(anchors.aspect_ratios) + (anchors.interpolated_scale_aspect_ratio > 0)
        first = 3 if anchors.reduce_boxes_in_lowest_layer else per
        return [first] + [per] * (anchors.num_layers - 1)


class _Reader:
    """Reads one ``ssd`` message; ``refuse`` makes the one-line error naming a field."""

    def __init__(self, source: str, prefix: str = "model.ssd"):
        self.source = source
        self.prefix = prefix

    def refuse(self, path: str, why: str) -> PipelineConfigError:
        return PipelineConfigError(f"{self.source}: {self.prefix}.{path}: {why}")

    def hyperparams(self, params: Any, path: str) -> Hyperparams:
        activation = _enum(params, "activation")
        if activation not in ACTIVATIONS:
            raise self.refuse(f"{path}.activation", f"{activation}: supported: "
                              f"{', '.join(ACTIVATIONS)}")
        if params.regularizer.HasField("l1_regularizer"):
            raise self.refuse(f"{path}.regularizer.l1_regularizer", "supported: l2_regularizer")
        norm = None
        if params.HasField("batch_norm"):  # proto defaults: decay 0.999, eps 0.001, center
            bn = params.batch_norm
            if bn.HasField("train") and not bn.train:
                raise self.refuse(f"{path}.batch_norm.train", "false: use model.ssd."
                                  "freeze_batchnorm (the spec's training.freezeBatchnorm)")
            norm = BatchNorm(momentum=_or(bn, "decay", 0.999), epsilon=_or(bn, "epsilon", 0.001),
                             center=_or(bn, "center", True), scale=_or(bn, "scale", False))
        return Hyperparams(activation=ACTIVATIONS[activation],
                           l2=_float(params.regularizer.l2_regularizer.weight) or 0.0,
                           initializer=self.initializer(params.initializer, path), batch_norm=norm)

    def initializer(self, init: Any, path: str) -> dict[str, Any]:
        chosen = _chosen(init)
        if chosen in ("truncated_normal_initializer", "random_normal_initializer"):
            normal = getattr(init, chosen)
            name = "TruncatedNormal" if chosen.startswith("truncated") else "RandomNormal"
            return {"class_name": name, "config": {"mean": _or(normal, "mean", 0.0),
                                                   "stddev": _or(normal, "stddev", 1.0)}}
        if chosen == "variance_scaling_initializer":
            scaling = init.variance_scaling_initializer  # proto defaults: 2.0, FAN_IN, false
            return {"class_name": "VarianceScaling", "config": {
                "scale": _or(scaling, "factor", 2.0), "mode": _enum(scaling, "mode").lower(),
                "distribution": "uniform" if scaling.uniform else "truncated_normal"}}
        if chosen == "keras_initializer_by_name":
            return {"class_name": init.keras_initializer_by_name, "config": {}}
        raise self.refuse(f"{path}.initializer", "required: one of truncated_normal_initializer, "
                          "random_normal_initializer, variance_scaling_initializer")

    def extractor(self, ssd: Any) -> FeatureExtractor:
        fe = ssd.feature_extractor
        if fe.type.startswith("ssd_efficientnet"):  # the zoo's EfficientDet: BiFPN, its own head
            raise self.refuse("feature_extractor.type", f"{fe.type}: EfficientDet is not ported "
                              "yet: only the OD API's SSD family is ported so far (the zoo's "
                              "SSD ResNet and MobileNet configs)")
        if fe.type not in EXTRACTORS:
            raise self.refuse("feature_extractor.type", f"{fe.type or '(unset)'}: the SSD "
                              f"family builds {', '.join(EXTRACTORS)}")
        if _opt(fe, "pad_to_multiple") not in (None, 1):
            raise self.refuse("feature_extractor.pad_to_multiple",
                              f"{fe.pad_to_multiple}: supported: 1")
        backbone, fpn = EXTRACTORS[fe.type]
        if fpn != fe.HasField("fpn"):
            raise self.refuse("feature_extractor.fpn", f"{fe.type} needs it" if fpn else
                              f"{fe.type} has no FPN: remove it")
        if fe.use_explicit_padding:
            raise self.refuse("feature_extractor.use_explicit_padding",
                              "true: supported: false (as every zoo SSD config)")
        levels = fe.fpn  # proto defaults: levels 3-7, depth 256
        return FeatureExtractor(
            type=fe.type, backbone=backbone, fpn=fpn,
            depth_multiplier=_or(fe, "depth_multiplier", 1.0), min_depth=fe.min_depth,
            use_depthwise=fe.use_depthwise, use_explicit_padding=False,
            override_base_hyperparams=fe.override_base_feature_extractor_hyperparams,
            hyperparams=self.hyperparams(fe.conv_hyperparams,
                                         "feature_extractor.conv_hyperparams"),
            min_level=_or(levels, "min_level", 3), max_level=_or(levels, "max_level", 7),
            fpn_depth=_or(levels, "additional_layer_depth", 256))

    def predictor(self, ssd: Any) -> WeightSharedPredictor | ConvolutionalPredictor:
        box = ssd.box_predictor
        if box.HasField("weight_shared_convolutional_box_predictor"):
            ws = box.weight_shared_convolutional_box_predictor
            path = "box_predictor.weight_shared_convolutional_box_predictor"
            if ws.use_dropout:
                raise self.refuse(f"{path}.use_dropout", "true: supported: false")
            return WeightSharedPredictor(
                depth=ws.depth, num_layers=ws.num_layers_before_predictor,
                kernel_size=_or(ws, "kernel_size", 3),
                class_bias=_or(ws, "class_prediction_bias_init", 0.0),
                share_tower=ws.share_prediction_tower, use_depthwise=ws.use_depthwise,
                hyperparams=self.hyperparams(ws.conv_hyperparams, f"{path}.conv_hyperparams"))
        if box.HasField("convolutional_box_predictor"):
            conv = box.convolutional_box_predictor
            path = "box_predictor.convolutional_box_predictor"
            for name, ok in (("use_depthwise", False), ("apply_sigmoid_to_scores", False)):
                if getattr(conv, name) != ok:
                    raise self.refuse(f"{path}.{name}", f"{str(not ok).lower()}: supported: "
                                      f"{str(ok).lower()}")
            if _or(conv, "box_code_size", 4) != 4:
                raise self.refuse(f"{path}.box_code_size", f"{conv.box_code_size}: supported: 4")
            return ConvolutionalPredictor(
                kernel_size=_or(conv, "kernel_size", 1),
                class_bias=_or(conv, "class_prediction_bias_init", 0.0),
                num_layers=conv.num_layers_before_predictor, min_depth=conv.min_depth,
                max_depth=conv.max_depth, use_dropout=_or(conv, "use_dropout", True),
                keep_probability=_or(conv, "dropout_keep_probability", 0.8),
                hyperparams=self.hyperparams(conv.conv_hyperparams, f"{path}.conv_hyperparams"))
        raise self.refuse("box_predictor", "required: weight_shared_convolutional_box_predictor "
                          "or convolutional_box_predictor")

    def anchors(self, ssd: Any) -> MultiscaleAnchors | SsdAnchors:
        gen = ssd.anchor_generator
        if gen.HasField("multiscale_anchor_generator"):
            ms = gen.multiscale_anchor_generator
            if _opt(ms, "normalize_coordinates") is False:
                raise self.refuse("anchor_generator.multiscale_anchor_generator."
                                  "normalize_coordinates", "false: supported: true")
            return MultiscaleAnchors(
                min_level=_or(ms, "min_level", 3), max_level=_or(ms, "max_level", 7),
                anchor_scale=_or(ms, "anchor_scale", 4.0),
                aspect_ratios=tuple(_float(a) for a in ms.aspect_ratios) or (1.0, 2.0, 0.5),
                scales_per_octave=_or(ms, "scales_per_octave", 2))
        if gen.HasField("ssd_anchor_generator"):
            sa = gen.ssd_anchor_generator
            path = "anchor_generator.ssd_anchor_generator"
            for name in ("height_stride", "width_stride", "height_offset", "width_offset"):
                if getattr(sa, name):
                    raise self.refuse(f"{path}.{name}", "supported: unset (the feature maps' "
                                      "own strides and centres)")
            return SsdAnchors(
                num_layers=_or(sa, "num_layers", 6), min_scale=_or(sa, "min_scale", 0.2),
                max_scale=_or(sa, "max_scale", 0.95),
                scales=tuple(_float(s) for s in sa.scales),
                aspect_ratios=tuple(_float(a) for a in sa.aspect_ratios),
                interpolated_scale_aspect_ratio=_or(sa, "interpolated_scale_aspect_ratio", 1.0),
                reduce_boxes_in_lowest_layer=_or(sa, "reduce_boxes_in_lowest_layer", True),
                base_anchor_size=(_or(sa, "base_anchor_height", 1.0),
                                  _or(sa, "base_anchor_width", 1.0)))
        raise self.refuse("anchor_generator", "required: multiscale_anchor_generator or "
                          "ssd_anchor_generator")

    def spec(self, ssd: Any) -> SsdSpec:
        resizer = ssd.image_resizer
        if not resizer.HasField("fixed_shape_resizer"):
            raise self.refuse("image_resizer", "supported: fixed_shape_resizer (every zoo SSD "
                              "config's)")
        for name, ok in (("encode_background_as_zeros", True),):
            if getattr(ssd, name) != ok:
                raise self.refuse(name, f"{str(not ok).lower()}: supported: {str(ok).lower()}")
        coder = ssd.box_coder
        if _chosen(coder) not in (None, "faster_rcnn_box_coder"):
            raise self.refuse(f"box_coder.{_chosen(coder)}", "supported: faster_rcnn_box_coder")
        frc = coder.faster_rcnn_box_coder
        matcher = ssd.matcher
        if _chosen(matcher) not in (None, "argmax_matcher"):
            raise self.refuse(f"matcher.{_chosen(matcher)}", "supported: argmax_matcher")
        am = matcher.argmax_matcher
        for name, ok in (("ignore_thresholds", False), ("negatives_lower_than_unmatched", True)):
            if _or(am, name, ok) != ok:
                raise self.refuse(f"matcher.argmax_matcher.{name}",
                                  f"{str(not ok).lower()}: supported: {str(ok).lower()}")
        if _chosen(ssd.similarity_calculator) not in (None, "iou_similarity"):
            raise self.refuse(f"similarity_calculator.{_chosen(ssd.similarity_calculator)}",
                              "supported: iou_similarity")
        loss = ssd.loss
        if loss.HasField("hard_example_miner"):
            raise self.refuse("loss.hard_example_miner", "not ported yet: remove it (no zoo SSD "
                              "config has one)")
        for part, ok in (("classification_loss", "weighted_sigmoid_focal"),
                         ("localization_loss", "weighted_smooth_l1")):
            chosen = _chosen(getattr(loss, part))
            if chosen != ok:  # unset: the OD API refuses it too ("Empty loss config")
                raise self.refuse(f"loss.{part}", f"{chosen or 'required'}: supported: {ok}")
        focal = loss.classification_loss.weighted_sigmoid_focal
        post = ssd.post_processing
        nms = post.batch_non_max_suppression
        for name in ("use_class_agnostic_nms", "soft_nms_sigma"):
            if _opt(nms, name):
                raise self.refuse(f"post_processing.batch_non_max_suppression.{name}",
                                  "supported: unset")
        converter = _enum(post, "score_converter")
        if converter not in ("SIGMOID", "IDENTITY"):
            raise self.refuse("post_processing.score_converter",
                              f"{converter}: supported: SIGMOID, IDENTITY")
        if not ssd.num_classes:
            raise self.refuse("num_classes", "required: the number of classes (no background)")
        return SsdSpec(
            num_classes=ssd.num_classes, height=resizer.fixed_shape_resizer.height,
            width=resizer.fixed_shape_resizer.width, extractor=self.extractor(ssd),
            predictor=self.predictor(ssd), anchors=self.anchors(ssd),
            box_coder_scales=(_or(frc, "y_scale", 10.0), _or(frc, "x_scale", 10.0),
                              _or(frc, "height_scale", 5.0), _or(frc, "width_scale", 5.0)),
            matched_threshold=_or(am, "matched_threshold", 0.5),
            unmatched_threshold=_or(am, "unmatched_threshold", 0.5),
            force_match_for_each_row=am.force_match_for_each_row,
            focal_gamma=_or(focal, "gamma", 2.0), focal_alpha=_opt(focal, "alpha") and
            _float(focal.alpha),
            smooth_l1_delta=_or(loss.localization_loss.weighted_smooth_l1, "delta", 1.0),
            classification_weight=_or(loss, "classification_weight", 1.0),
            localization_weight=_or(loss, "localization_weight", 1.0),
            normalize_by_num_matches=_or(ssd, "normalize_loss_by_num_matches", True),
            normalize_loc_by_codesize=ssd.normalize_loc_loss_by_codesize,
            freeze_batchnorm=ssd.freeze_batchnorm,
            score_threshold=_or(nms, "score_threshold", 0.0),
            iou_threshold=_or(nms, "iou_threshold", 0.6),
            max_detections_per_class=_or(nms, "max_detections_per_class", 100),
            max_total_detections=_or(nms, "max_total_detections", 100),
            score_converter=converter, logit_scale=_or(post, "logit_scale", 1.0))


def read(text: str, source: str = "pipeline.config") -> SsdSpec:
    """The ``model.ssd`` block of a pipeline.config's text."""
    from google.protobuf import text_format

    from trainer.pipeline.schema import message_class

    pipeline = message_class()()
    try:
        text_format.Parse(text, pipeline, allow_unknown_field=True)
    except text_format.ParseError as err:
        raise PipelineConfigError(f"{source}: {err}") from None
    if not pipeline.model.HasField("ssd"):
        raise PipelineConfigError(f"{source}: model: the SSD family needs an ssd block")
    return _Reader(source).spec(pipeline.model.ssd)

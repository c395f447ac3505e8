"""Read a TF Object Detection API ``pipeline.config``: honour every field the trainer can, refuse
the rest in one line naming the field and what is supported instead.

A model block is read one of two ways. By default (``native``) the ``ssd`` block is kept whole
for the ``ssd`` family, the OD API's own SSD (``trainer.detection.families.ssd.spec`` reads it),
and ``faster_rcnn``/``center_net`` are refused as not ported yet. With the ``retinanet`` family
the ``ssd`` block is mapped onto Model Garden RetinaNet instead: each ``ssd`` field onto a Model
Garden setting (``model_garden``: task-config path -> value) or onto the conv hyper-parameters of
one part of the network (``layer_hyperparams``); a value Model Garden cannot express is refused.
Unset fields take the OD API's proto defaults, as the OD API would. A field this module does not
know is refused too (the strict second parse), so nothing in the file is silently ignored.

Reported, not honoured (``differences``; the launcher and the trainer's log print them): Model
Garden's cap of 5000 candidate boxes per class before non-max suppression (RetinaNet mapping
only), and the TPU/TF1 fields of the zoo's files that change nothing on GPUs (``NO_EFFECT``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer.errors import TrainerError
from trainer.pipeline.schema import message_class

# The OD API's TF2 "fine_tune" restores all but the class head, which is our "detection".
FINE_TUNE_TYPES = {"classification": "classification", "detection": "detection",
                   "fine_tune": "detection", "full": "full"}
# OD API feature extractors that are an FPN over a backbone Model Garden RetinaNet offers.
FEATURE_EXTRACTORS = {"ssd_resnet50_v1_fpn_keras": "resnet50",
                      "ssd_mobilenet_v2_fpn_keras": "mobilenetv2"}
PLACEHOLDER = "PATH_TO_BE_CONFIGURED"
# The model block's choices (the OD API's DetectionModel oneof) and the family each means here.
META_ARCHITECTURES = {"ssd": "ssd", "faster_rcnn": None, "center_net": None}
ACTIVATIONS = {"RELU": "relu", "RELU_6": "relu6", "SWISH": "swish"}
# Model Garden's RetinaNet head: a class bias of -log((1 - 0.01) / 0.01).
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


class PipelineConfigError(TrainerError):
    """The file is not a readable pipeline.config, or asks for what the trainer cannot do."""


@dataclass(frozen=True)
class PipelineConfig:
    """What the trainer takes from a pipeline.config; None where the file does not say."""

    bfloat16: bool | None = None  # train_config.use_bfloat16
    eval_batch_size: int | None = None
    # "ssd" where the model block was read for the OD API's own SSD (``native``)
    family: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    backbone: str | None = None
    batch_size: int | None = None
    num_steps: int | None = None
    fine_tune_checkpoint: str | None = None
    fine_tune_checkpoint_type: str | None = None
    learning_rate: float | None = None
    lr_schedule: str | None = None  # cosine | constant
    warmup_steps: int | None = None
    warmup_learning_rate: float | None = None
    total_steps: int | None = None
    momentum: float | None = None
    clip_norm: float | None = None  # 0: none (the OD API's default)
    horizontal_flip: bool | None = None  # None: the file has no data_augmentation_options
    label_map_path: str | None = None
    freeze_batchnorm: bool | None = None
    train_input_paths: list[str] = field(default_factory=list)
    eval_input_paths: list[str] = field(default_factory=list)
    # Model Garden RetinaNet task-config path ("model.anchor.num_scales") -> value
    model_garden: dict[str, Any] = field(default_factory=dict)
    # "backbone" | "decoder" | "head" -> {activation, norm_momentum, norm_epsilon, l2}
    layer_hyperparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what Model Garden does its own way, one line each (reported, see the module docstring)
    differences: list[str] = field(default_factory=list)
    # the ssd block as the OD API's own SSD reads it (``native``; a family's ``od_api_native``)
    ssd: Any = None
    # (name, settings) of each data_augmentation_options entry, in order (``native`` only)
    augmentations: tuple[tuple[str, dict[str, Any]], ...] = ()
    # field path (as in the file) of each value above, keyed by its name here; model_garden and
    # layer_hyperparams entries as "model_garden.<path>" and "layer_hyperparams.<part>"
    sources: dict[str, str] = field(default_factory=dict)


Take = Callable[[str, Any, str], None]
Refuse = Callable[[str, str], PipelineConfigError]


def _opt(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _enum(message: Any, name: str) -> str:
    """An enum field's name, its proto default when unset."""
    descriptor = message.DESCRIPTOR.fields_by_name[name]
    return descriptor.enum_type.values_by_number[getattr(message, name)].name


def _or(message: Any, name: str, default: Any) -> Any:
    """A field's value as the file wrote it (floats as decimals), ``default`` when unset."""
    value = _opt(message, name)
    return default if value is None else (_float(value) if isinstance(value, float) else value)


def _float(value: float | None) -> float | None:
    """A float32 field as the decimal the file wrote (0.04, not 0.03999999910593033)."""
    return None if value is None else float(f"{value:.7g}")


def _chosen(message: Any) -> str | None:
    """The name of the set field of a message used as a oneof."""
    return next((f.name for f, _ in message.ListFields()), None)


def parse(text: str, source: str = "pipeline.config",
          native: bool | None = None) -> PipelineConfig:
    """Parse ``text``; ``PipelineConfigError`` naming the line on a syntax error, or naming the
    field and what is supported instead when the trainer cannot honour it. ``native``: the
    model block is read for the OD API's own SSD (``trainer.detection.families.ssd.spec``),
    not mapped onto Model Garden's RetinaNet; None: so whenever the file has a model block
    (what a zoo download means), which then sets ``family``."""
    from google.protobuf import text_format

    pipeline = message_class()()
    try:
        text_format.Parse(text, pipeline, allow_unknown_field=True)
    except text_format.ParseError as err:
        raise PipelineConfigError(f"{source}: {err}") from None
    values: dict[str, Any] = {"model_garden": {}, "layer_hyperparams": {}, "differences": []}
    sources: dict[str, str] = {}

    def take(name: str, value: Any, path: str) -> None:
        if value is None:
            return
        if "." in name:  # model_garden.<path> or layer_hyperparams.<part>
            group, key = name.split(".", 1)
            values[group][key] = value
        else:
            values[name] = value
        sources[name] = path

    def refuse(path: str, why: str) -> PipelineConfigError:
        return PipelineConfigError(f"{source}: {path}: {why}")

    if native is None:
        native = any(pipeline.model.HasField(kind) for kind in META_ARCHITECTURES)
    if native:
        _native_model(pipeline.model, source, take, refuse)
    else:
        _model(pipeline.model, take, refuse, values["differences"])
    _train(pipeline.train_config, take, refuse, native)
    _inputs(pipeline, take, refuse)
    values["differences"] += _no_effect(pipeline)
    if _opt(pipeline.train_config, "add_regularization_loss") is False:
        for params in values["layer_hyperparams"].values():
            params["l2"] = 0.0
    _strict(text, source)
    return PipelineConfig(**values, sources=sources)


def _strict(text: str, source: str) -> None:
    """Parse again, refusing any field the schema does not hold: a field nobody reads would
    otherwise be silently ignored."""
    from google.protobuf import text_format

    try:
        text_format.Parse(text, message_class()())
    except text_format.ParseError as err:
        detail = str(err)
        if "has no field named" not in detail:
            raise PipelineConfigError(f"{source}: {detail}") from None
        where, _, rest = detail.partition(" : ")
        message = rest.split('"')[1].rsplit(".", 1)[-1]
        name = rest.split('"')[3]
        raise PipelineConfigError(f"{source}:{where}: {name} (in a {message} block) is not "
                                  "read by this trainer: remove it") from None


SUPPORTED_MODEL = ("ssd with feature_extractor "
                   f"{' or '.join(FEATURE_EXTRACTORS)} and weight_shared_convolutional_box_"
                   "predictor (RetinaNet)")


def _native_model(model: Any, source: str, take: Take, refuse: Refuse) -> None:
    """The model block for the OD API's own SSD: the whole ssd block, and what the trainer's
    own fields take from it."""
    from trainer.detection.families.ssd.spec import _Reader

    for kind, family in META_ARCHITECTURES.items():
        if model.HasField(kind) and family is None:
            raise refuse(f"model.{kind}", "only the OD API's SSD family is ported so far "
                         "(model.ssd: the TF2 Detection Zoo's SSD configs); Model Garden's "
                         "Faster R-CNN is model.family: faster_rcnn without a pipeline.config")
    if not model.HasField("ssd"):
        raise refuse("model.ssd", "required: the SSD family builds the OD API's ssd block")
    spec = _Reader(source).spec(model.ssd)
    take("family", META_ARCHITECTURES["ssd"], "model.ssd")
    if spec.height != spec.width:
        raise refuse("model.ssd.image_resizer.fixed_shape_resizer",
                     f"{spec.height}x{spec.width}: supported: a square size")
    take("num_classes", spec.num_classes, "model.ssd.num_classes")
    take("image_size", spec.height, "model.ssd.image_resizer.fixed_shape_resizer")
    take("freeze_batchnorm", spec.freeze_batchnorm, "model.ssd.freeze_batchnorm")
    take("ssd", spec, "model.ssd")


def _model(model: Any, take: Take, refuse: Refuse, differences: list[str]) -> None:
    if model.HasField("faster_rcnn"):
        # The OD API's Faster R-CNN (one feature map, grid anchors, crop-and-resize) and Model
        # Garden's (FPN, multilevel anchors and RoIAlign) are different networks.
        raise refuse("model.faster_rcnn", "the OD API's Faster R-CNN is not Model Garden's "
                     "(FPN, multilevel RoIAlign): drop the pipeline.config and set "
                     "model.family: faster_rcnn, or run the OD API's trainer (docs/od-api.md); "
                     f"a pipeline.config may describe {SUPPORTED_MODEL}")
    if model.HasField("center_net"):
        raise refuse("model.center_net", f"this trainer fine-tunes {SUPPORTED_MODEL}; it "
                     "cannot build center_net")
    if not model.HasField("ssd"):
        return
    ssd = model.ssd
    prefix = "model.ssd"
    kind = ssd.feature_extractor.type if ssd.HasField("feature_extractor") else ""
    if kind not in FEATURE_EXTRACTORS:
        raise refuse(f"{prefix}.feature_extractor.type", f"{kind or 'unset'!r} is not "
                     f"supported; supported: {', '.join(FEATURE_EXTRACTORS)} (RetinaNet)")
    take("backbone", FEATURE_EXTRACTORS[kind], f"{prefix}.feature_extractor.type")
    if ssd.box_predictor.HasField("convolutional_box_predictor"):
        raise refuse(f"{prefix}.box_predictor.convolutional_box_predictor",
                     "supported: weight_shared_convolutional_box_predictor (RetinaNet)")
    take("num_classes", _opt(ssd, "num_classes"), f"{prefix}.num_classes")
    take("freeze_batchnorm", _opt(ssd, "freeze_batchnorm"), f"{prefix}.freeze_batchnorm")
    _resizer(ssd, prefix, take, refuse)
    _feature_extractor(ssd, prefix, take, refuse)
    _anchors(ssd, prefix, take, refuse)
    _head(ssd, prefix, take, refuse)
    _targets(ssd, prefix, take, refuse)
    _losses(ssd, prefix, take, refuse)
    _post_processing(ssd, prefix, take, refuse, differences)


def _resizer(ssd: Any, prefix: str, take: Take, refuse: Refuse) -> None:
    resizer = ssd.image_resizer
    if resizer.HasField("keep_aspect_ratio_resizer"):
        raise refuse(f"{prefix}.image_resizer.keep_aspect_ratio_resizer",
                     "supported: fixed_shape_resizer with a square size, a multiple of 32")
    if resizer.HasField("fixed_shape_resizer"):
        shape = resizer.fixed_shape_resizer
        path = f"{prefix}.image_resizer.fixed_shape_resizer"
        if shape.height != shape.width or shape.height % 32 or shape.height < 32:
            nearest = max(32, round(max(shape.height, shape.width) / 32) * 32)
            raise refuse(path, f"{shape.height}x{shape.width}: supported: a square size that "
                         f"is a multiple of 32 (e.g. {nearest}x{nearest})")
        take("image_size", shape.height, path)


def _hyperparams(params: Any, path: str, refuse: Refuse) -> dict[str, Any]:
    """OD ``conv_hyperparams`` as Model Garden's norm/activation settings and L2 weight. The OD
    API's Keras L2 is ``0.5 * weight * sum(w^2)``, Model Garden's ``l2_weight_decay / 2 *
    sum(w^2)``: the same number."""
    activation = _enum(params, "activation")
    if activation not in ACTIVATIONS:
        raise refuse(f"{path}.activation", f"{activation}: supported: {', '.join(ACTIVATIONS)}")
    if params.regularizer.HasField("l1_regularizer"):
        raise refuse(f"{path}.regularizer.l1_regularizer", "supported: l2_regularizer")
    l2 = _float(params.regularizer.l2_regularizer.weight) or 0.0
    if not params.HasField("batch_norm"):
        raise refuse(f"{path}.batch_norm", "required: Model Garden's RetinaNet layers always "
                     "use batch norm")
    norm = params.batch_norm
    for flag in ("scale", "center"):
        if not getattr(norm, flag) and not (flag == "center" and not norm.HasField("center")):
            raise refuse(f"{path}.batch_norm.{flag}", f"{str(getattr(norm, flag)).lower()}: "
                         "supported: true (Model Garden's batch norm scales and centres)")
    if norm.HasField("train") and not norm.train:
        raise refuse(f"{path}.batch_norm.train", "false: use model.ssd.freeze_batchnorm "
                     "(or the spec's training.freezeBatchnorm) instead")
    # proto defaults: decay 0.999, epsilon 0.001
    return {"activation": ACTIVATIONS[activation], "norm_momentum": _or(norm, "decay", 0.999),
            "norm_epsilon": _or(norm, "epsilon", 0.001), "l2": l2,
            "initializer": _initializer(params)}


def _initializer(params: Any) -> dict[str, Any] | None:
    """The conv kernels' initializer as a tf-keras initializer config (the OD API builds the
    same ones); None: the layer's own (Model Garden's)."""
    chosen = _chosen(params.initializer)
    init = params.initializer
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
    return None


def _feature_extractor(ssd: Any, prefix: str, take: Take, refuse: Refuse) -> None:
    extractor = ssd.feature_extractor
    path = f"{prefix}.feature_extractor"
    if _opt(extractor, "depth_multiplier") not in (None, 1.0):
        raise refuse(f"{path}.depth_multiplier", f"{_float(extractor.depth_multiplier)}: "
                     "supported: 1.0")
    if _opt(extractor, "pad_to_multiple") not in (None, 1):
        raise refuse(f"{path}.pad_to_multiple", f"{extractor.pad_to_multiple}: supported: 1 "
                     "(the image size is already a multiple of 32)")
    take("model_garden.model.decoder.fpn.use_separable_conv", _opt(extractor, "use_depthwise"),
         f"{path}.use_depthwise")
    if extractor.HasField("fpn"):
        take("model_garden.model.decoder.fpn.num_filters",
             _opt(extractor.fpn, "additional_layer_depth"), f"{path}.fpn.additional_layer_depth")
    if extractor.HasField("conv_hyperparams"):
        where = f"{path}.conv_hyperparams"
        params = _hyperparams(extractor.conv_hyperparams, where, refuse)
        take("layer_hyperparams.decoder", params, where)
        # As in the OD API, the extractor's hyper-parameters reach into the backbone only when
        # asked to; otherwise the backbone keeps its own definition (Model Garden's).
        if _opt(extractor, "override_base_feature_extractor_hyperparams"):
            take("layer_hyperparams.backbone", params,
                 f"{path}.override_base_feature_extractor_hyperparams")


def _anchors(ssd: Any, prefix: str, take: Take, refuse: Refuse) -> None:
    generator = ssd.anchor_generator
    for other in ("ssd_anchor_generator", "grid_anchor_generator"):
        if generator.HasField(other):
            raise refuse(f"{prefix}.anchor_generator.{other}",
                         "supported: multiscale_anchor_generator (RetinaNet)")
    if not generator.HasField("multiscale_anchor_generator"):
        return
    anchors = generator.multiscale_anchor_generator
    path = f"{prefix}.anchor_generator.multiscale_anchor_generator"
    if _opt(anchors, "normalize_coordinates") is False:
        raise refuse(f"{path}.normalize_coordinates", "false: supported: true")
    levels = (_opt(anchors, "min_level"), _opt(anchors, "max_level"))
    fpn = ssd.feature_extractor.fpn if ssd.feature_extractor.HasField("fpn") else None
    fpn_levels = (_opt(fpn, "min_level"), _opt(fpn, "max_level")) if fpn else levels
    if fpn_levels != levels:
        raise refuse(f"{path}.min_level/max_level", f"{levels} differ from the FPN's "
                     f"{fpn_levels}; supported: the same levels for both")
    mg = "model_garden.model"
    take(f"{mg}.min_level", levels[0], f"{path}.min_level")
    take(f"{mg}.max_level", levels[1], f"{path}.max_level")
    take(f"{mg}.anchor.anchor_size", _float(_opt(anchors, "anchor_scale")),
         f"{path}.anchor_scale")
    if anchors.aspect_ratios:
        take(f"{mg}.anchor.aspect_ratios", [_float(r) for r in anchors.aspect_ratios],
             f"{path}.aspect_ratios")
    take(f"{mg}.anchor.num_scales", _opt(anchors, "scales_per_octave"),
         f"{path}.scales_per_octave")


def _head(ssd: Any, prefix: str, take: Take, refuse: Refuse) -> None:
    if not ssd.box_predictor.HasField("weight_shared_convolutional_box_predictor"):
        return
    head = ssd.box_predictor.weight_shared_convolutional_box_predictor
    path = f"{prefix}.box_predictor.weight_shared_convolutional_box_predictor"
    if _opt(head, "kernel_size") not in (None, 3):
        raise refuse(f"{path}.kernel_size", f"{head.kernel_size}: supported: 3")
    if _opt(head, "share_prediction_tower"):
        raise refuse(f"{path}.share_prediction_tower", "true: supported: false (Model Garden's "
                     "RetinaNet head has separate class and box towers)")
    if _opt(head, "apply_batch_norm") is False:
        raise refuse(f"{path}.apply_batch_norm", "false: supported: true")
    if _opt(head, "use_dropout"):
        raise refuse(f"{path}.use_dropout", "true: supported: false")
    bias = _opt(head, "class_prediction_bias_init")
    if bias is not None and abs(bias - PRIOR_BIAS) > 0.01:
        raise refuse(f"{path}.class_prediction_bias_init", f"{_float(bias)}: supported: -4.6 "
                     "(Model Garden's prior of 0.01)")
    mg = "model_garden.model.head"
    take(f"{mg}.num_filters", _opt(head, "depth"), f"{path}.depth")
    take(f"{mg}.num_convs", _opt(head, "num_layers_before_predictor"),
         f"{path}.num_layers_before_predictor")
    take(f"{mg}.use_separable_conv", _opt(head, "use_depthwise"), f"{path}.use_depthwise")
    if head.HasField("conv_hyperparams"):
        where = f"{path}.conv_hyperparams"
        take("layer_hyperparams.head", _hyperparams(head.conv_hyperparams, where, refuse), where)


def _targets(ssd: Any, prefix: str, take: Take, refuse: Refuse) -> None:
    """Box coder, matcher, similarity: how ground truth becomes per-anchor targets."""
    coder = ssd.box_coder
    chosen = _chosen(coder)
    if chosen not in (None, "faster_rcnn_box_coder"):
        raise refuse(f"{prefix}.box_coder.{chosen}", "supported: faster_rcnn_box_coder")
    if chosen:
        scales = coder.faster_rcnn_box_coder  # proto defaults: 10, 10, 5, 5
        weights = [_or(scales, name, default) for name, default in
                   (("y_scale", 10.0), ("x_scale", 10.0), ("height_scale", 5.0),
                    ("width_scale", 5.0))]
        take("model_garden.model.detection_generator.box_coder_weights", weights,
             f"{prefix}.box_coder.faster_rcnn_box_coder")
    chosen = _chosen(ssd.similarity_calculator)
    if chosen not in (None, "iou_similarity"):
        raise refuse(f"{prefix}.similarity_calculator.{chosen}", "supported: iou_similarity")
    chosen = _chosen(ssd.matcher)
    if chosen not in (None, "argmax_matcher"):
        raise refuse(f"{prefix}.matcher.{chosen}", "supported: argmax_matcher")
    if not chosen:
        return
    matcher = ssd.matcher.argmax_matcher
    path = f"{prefix}.matcher.argmax_matcher"
    # Model Garden's matcher: negatives below unmatched_threshold, ignored between, every
    # ground-truth box matched to its best anchor.
    for name, supported in (("ignore_thresholds", False),
                            ("negatives_lower_than_unmatched", True),
                            ("force_match_for_each_row", True)):
        value = getattr(matcher, name)  # proto defaults: false, true, false
        if value != supported:
            raise refuse(f"{path}.{name}", f"{str(value).lower()}: supported: "
                         f"{str(supported).lower()}")
    matched = _or(matcher, "matched_threshold", 0.5)  # proto defaults: 0.5, 0.5
    unmatched = _or(matcher, "unmatched_threshold", 0.5)
    for split in ("train_data", "validation_data"):
        take(f"model_garden.{split}.parser.match_threshold", matched,
             f"{path}.matched_threshold")
        take(f"model_garden.{split}.parser.unmatched_threshold", unmatched,
             f"{path}.unmatched_threshold")


def _losses(ssd: Any, prefix: str, take: Take, refuse: Refuse) -> None:
    """The OD API's loss: ``classification_weight * focal / matches + localization_weight *
    smooth_l1(delta) / matches / 4``; Model Garden's: ``focal / (positives + 1) +
    box_loss_weight * huber(delta) / (positives + 1)``, its Huber averaging the four
    coordinates. With the same box coder the two agree, up to the +1."""
    if not _opt(ssd, "encode_background_as_zeros"):
        raise refuse(f"{prefix}.encode_background_as_zeros", "false (the OD API's default): "
                     "supported: true (RetinaNet's per-class sigmoid)")
    if not _opt(ssd, "normalize_loss_by_num_matches"):
        raise refuse(f"{prefix}.normalize_loss_by_num_matches", "false (the OD API's "
                     "default): supported: true (losses divided by the matched anchors)")
    loss = ssd.loss
    path = f"{prefix}.loss"
    if loss.HasField("hard_example_miner"):
        raise refuse(f"{path}.hard_example_miner", "not supported (the focal loss weighs "
                     "hard examples already); remove it")
    chosen = _chosen(loss.classification_loss)
    if chosen not in (None, "weighted_sigmoid_focal"):
        raise refuse(f"{path}.classification_loss.{chosen}",
                     "supported: weighted_sigmoid_focal (RetinaNet)")
    if chosen:
        focal = loss.classification_loss.weighted_sigmoid_focal
        where = f"{path}.classification_loss.weighted_sigmoid_focal"
        if not focal.HasField("alpha"):
            raise refuse(f"{where}.alpha", "unset (no class weighting): supported: a value "
                         "between 0 and 1, e.g. 0.25")
        take("model_garden.losses.focal_loss_alpha", _float(_opt(focal, "alpha")),
             f"{where}.alpha")
        take("model_garden.losses.focal_loss_gamma", _or(focal, "gamma", 2.0),
             f"{where}.gamma")
    weight = _opt(loss, "classification_weight")
    if weight is not None and weight != 1.0:
        raise refuse(f"{path}.classification_weight", f"{_float(weight)}: supported: 1.0 "
                     "(scale localization_weight instead)")
    chosen = _chosen(loss.localization_loss)
    if chosen not in (None, "weighted_smooth_l1"):
        raise refuse(f"{path}.localization_loss.{chosen}", "supported: weighted_smooth_l1")
    if chosen:
        where = f"{path}.localization_loss.weighted_smooth_l1"
        delta = _or(loss.localization_loss.weighted_smooth_l1, "delta", 1.0)
        take("model_garden.losses.huber_loss_delta", delta, f"{where}.delta")
        box_weight = _or(loss, "localization_weight", 1.0)
        # Model Garden's Huber averages over the 4 coordinates, which is the OD API's
        # normalize_loc_loss_by_codesize: without it, the OD loss is 4 times larger.
        if not _opt(ssd, "normalize_loc_loss_by_codesize"):
            box_weight *= 4
        take("model_garden.losses.box_loss_weight", box_weight,
             f"{path}.localization_weight, {prefix}.normalize_loc_loss_by_codesize")


def _post_processing(ssd: Any, prefix: str, take: Take, refuse: Refuse,
                     differences: list[str]) -> None:
    if not ssd.HasField("post_processing"):
        return
    post = ssd.post_processing
    path = f"{prefix}.post_processing"
    converter = _enum(post, "score_converter")
    if converter != "SIGMOID":
        raise refuse(f"{path}.score_converter", f"{converter}: supported: SIGMOID")
    if _opt(post, "logit_scale") not in (None, 1.0):
        raise refuse(f"{path}.logit_scale", f"{_float(post.logit_scale)}: supported: 1.0")
    if not post.HasField("batch_non_max_suppression"):
        return
    nms = post.batch_non_max_suppression
    where = f"{path}.batch_non_max_suppression"
    if _opt(nms, "soft_nms_sigma"):
        raise refuse(f"{where}.soft_nms_sigma", "soft NMS is not supported: remove it")
    if _opt(nms, "use_class_agnostic_nms"):
        raise refuse(f"{where}.use_class_agnostic_nms", "true: supported: false")
    total = _or(nms, "max_total_detections", 100)
    per_class = _or(nms, "max_detections_per_class", 100)
    if per_class < total:
        raise refuse(f"{where}.max_detections_per_class", f"{per_class} is below "
                     f"max_total_detections {total}: supported: at least max_total_detections "
                     "(Model Garden keeps up to max_total_detections per class)")
    mg = "model_garden.model.detection_generator"
    take(f"{mg}.pre_nms_score_threshold", _or(nms, "score_threshold", 0.0),
         f"{where}.score_threshold")
    take(f"{mg}.nms_iou_threshold", _or(nms, "iou_threshold", 0.6),
         f"{where}.iou_threshold")
    take(f"{mg}.max_num_detections", total, f"{where}.max_total_detections")
    differences.append(f"{where}: Model Garden keeps the 5000 best-scoring boxes per class "
                       "before non-max suppression")


# The augmentations the OD API's own SSD honours, with the proto defaults of their settings.
NATIVE_AUGMENTATIONS: dict[str, dict[str, Any]] = {
    "random_horizontal_flip": {},
    "random_crop_image": {"min_object_covered": 1.0, "min_aspect_ratio": 0.75,
                          "max_aspect_ratio": 1.33, "min_area": 0.1, "max_area": 1.0,
                          "overlap_thresh": 0.3, "clip_boxes": True, "random_coef": 0.0},
    # one of its operations, drawn per image; the OD API's seven when the file lists none
    "ssd_random_crop": {"operations": tuple(
        {"min_object_covered": covered, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0,
         "min_area": 0.1, "max_area": 1.0, "overlap_thresh": covered, "clip_boxes": True,
         "random_coef": 0.15} for covered in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0))},
    "random_adjust_brightness": {"max_delta": 0.2},
    "random_adjust_contrast": {"min_delta": 0.8, "max_delta": 1.25},
    "random_adjust_hue": {"max_delta": 0.02},
    "random_adjust_saturation": {"min_delta": 0.8, "max_delta": 1.25},
    "random_distort_color": {"color_ordering": 0},
    # unset paddings are 1 as the OD API's builder reads them (no padding); no pad_color: the
    # image's mean colour
    "random_absolute_pad_image": {"max_height_padding": 1, "max_width_padding": 1,
                                  "pad_color": None},
}
# Set in the zoo's files for TPUs and TF1's trainer; on GPUs under TF2 they change nothing (the
# OD API's own TF2 trainer reads none of them there): accepted, named in one warning.
NO_EFFECT = ("train_config.sync_replicas", "train_config.startup_delay_steps",
             "train_config.replicas_to_aggregate", "train_config.unpad_groundtruth_tensors",
             "model.ssd.inplace_batchnorm_update",
             "model.ssd.matcher.argmax_matcher.use_matmul_gather")


def _augmentation(name: str, settings: Any) -> dict[str, Any]:
    """One data_augmentation_options entry's settings, the OD API's defaults where unset."""
    defaults = NATIVE_AUGMENTATIONS[name]
    if name == "ssd_random_crop":
        if not settings.operations:
            return defaults
        # an operation's unset fields are the proto's zeros, as the OD API reads them
        return {"operations": tuple(
            {key: _or(op, key, 0.0) for key in defaults["operations"][0] if key != "clip_boxes"}
            | {"clip_boxes": True} for op in settings.operations)}
    if name == "random_absolute_pad_image":
        return {"max_height_padding": settings.max_height_padding or 1,
                "max_width_padding": settings.max_width_padding or 1,
                "pad_color": tuple(_float(c) for c in settings.pad_color) or None}
    return {key: _or(settings, key, default) for key, default in defaults.items()}


def _augmentation_problem(name: str, settings: dict[str, Any]) -> str | None:
    """Why an entry's settings cannot run (the OD API fails on them too), or None."""
    if name == "random_distort_color" and settings["color_ordering"] not in (0, 1):
        return f"color_ordering: {settings['color_ordering']}: supported: 0, 1"
    if name == "random_absolute_pad_image":
        if settings["pad_color"] is not None and len(settings["pad_color"]) != 3:
            return "pad_color: three values (R, G, B) or none (the image's mean colour)"
        if min(settings["max_height_padding"], settings["max_width_padding"]) < 0:
            return "max_height_padding, max_width_padding: at least 0"
    return None


def _no_effect(pipeline: Any) -> list[str]:
    """The one warning naming the ``NO_EFFECT`` fields the file sets, if any."""
    found = []
    for path in NO_EFFECT:
        *parents, name = path.split(".")
        message = pipeline
        for parent in parents:
            message = getattr(message, parent)
        if message.HasField(name):
            found.append(path)
    return [f"{', '.join(found)}: TPU and TF1 settings that change nothing on GPUs: "
            "accepted, not used"] if found else []


def _train(train: Any, take: Take, refuse: Refuse, native: bool = False) -> None:
    take("batch_size", _opt(train, "batch_size"), "train_config.batch_size")
    take("num_steps", _opt(train, "num_steps"), "train_config.num_steps")
    take("fine_tune_checkpoint", _opt(train, "fine_tune_checkpoint"),
         "train_config.fine_tune_checkpoint")
    if _enum(train, "fine_tune_checkpoint_version") == "V1" and train.HasField(
            "fine_tune_checkpoint_version"):
        raise refuse("train_config.fine_tune_checkpoint_version", "V1 (a TF1 checkpoint): "
                     "supported: V2")
    ft_type = _opt(train, "fine_tune_checkpoint_type")
    if ft_type is not None and ft_type not in FINE_TUNE_TYPES:
        raise refuse("train_config.fine_tune_checkpoint_type",
                     f"{ft_type!r} is not one of {', '.join(FINE_TUNE_TYPES)}")
    take("fine_tune_checkpoint_type", FINE_TUNE_TYPES.get(ft_type or ""),
         "train_config.fine_tune_checkpoint_type")
    flip = False
    supported = NATIVE_AUGMENTATIONS if native else {"random_horizontal_flip": {}}
    augmentations = []
    for option in train.data_augmentation_options:
        chosen = _chosen(option)
        if chosen == "random_horizontal_flip":
            flip = True
        if chosen in supported:
            settings = _augmentation(chosen, getattr(option, chosen))
            problem = _augmentation_problem(chosen, settings)
            if problem:
                raise refuse(f"train_config.data_augmentation_options.{chosen}", problem)
            augmentations.append((chosen, settings))
        elif chosen is not None:
            raise refuse(f"train_config.data_augmentation_options.{chosen}",
                         f"not supported; supported: {', '.join(supported)}")
    if native:
        take("augmentations", tuple(augmentations), "train_config.data_augmentation_options")
    if train.data_augmentation_options:
        take("horizontal_flip", flip, "train_config.data_augmentation_options")
    if _opt(train, "use_bfloat16"):
        take("bfloat16", True, "train_config.use_bfloat16")
    take("clip_norm", _float(_opt(train, "gradient_clipping_by_norm")) or 0.0,
         "train_config.gradient_clipping_by_norm")
    for split in ("train_data", "validation_data"):
        take(f"model_garden.{split}.parser.max_num_instances",
             _opt(train, "max_number_of_boxes"), "train_config.max_number_of_boxes")
    if _opt(train, "add_regularization_loss") is False:
        take("model_garden.losses.l2_weight_decay", 0.0, "train_config.add_regularization_loss")
    _optimizer(train.optimizer, take, refuse)


def _optimizer(optimizer: Any, take: Take, refuse: Refuse) -> None:
    base = "train_config.optimizer"
    for name in ("adam_optimizer", "rms_prop_optimizer"):
        if optimizer.HasField(name):
            raise refuse(f"{base}.{name}", "supported: momentum_optimizer")
    if _opt(optimizer, "use_moving_average"):
        raise refuse(f"{base}.use_moving_average", "not supported; set it to false")
    if not optimizer.HasField("momentum_optimizer"):
        return
    params = optimizer.momentum_optimizer
    path = f"{base}.momentum_optimizer"
    take("momentum", _float(_opt(params, "momentum_optimizer_value")),
         f"{path}.momentum_optimizer_value")
    rate = params.learning_rate
    path += ".learning_rate"
    for kind in ("exponential_decay_learning_rate", "manual_step_learning_rate"):
        if rate.HasField(kind):
            raise refuse(f"{path}.{kind}", "supported: cosine_decay_learning_rate, "
                         "constant_learning_rate")
    if rate.HasField("cosine_decay_learning_rate"):
        cosine = rate.cosine_decay_learning_rate
        path += ".cosine_decay_learning_rate"
        if _opt(cosine, "hold_base_rate_steps"):
            raise refuse(f"{path}.hold_base_rate_steps", "not supported: remove it")
        take("lr_schedule", "cosine", path)
        take("learning_rate", _float(_opt(cosine, "learning_rate_base")),
             f"{path}.learning_rate_base")
        take("total_steps", _opt(cosine, "total_steps"), f"{path}.total_steps")
        take("warmup_learning_rate", _float(_opt(cosine, "warmup_learning_rate")),
             f"{path}.warmup_learning_rate")
        take("warmup_steps", _opt(cosine, "warmup_steps"), f"{path}.warmup_steps")
    elif rate.HasField("constant_learning_rate"):
        path += ".constant_learning_rate"
        take("lr_schedule", "constant", path)
        take("learning_rate", _float(_opt(rate.constant_learning_rate, "learning_rate")),
             f"{path}.learning_rate")


def _inputs(pipeline: Any, take: Take, refuse: Refuse) -> None:
    reader = pipeline.train_input_reader
    take("label_map_path", _opt(reader, "label_map_path"), "train_input_reader.label_map_path")
    if _opt(reader, "num_epochs"):
        raise refuse("train_input_reader.num_epochs", f"{reader.num_epochs}: supported: 0 "
                     "(the run's steps decide how long it trains)")
    if _opt(reader, "shuffle") is False:
        raise refuse("train_input_reader.shuffle", "false: use the spec's "
                     "training.deterministicInput for a fixed order")
    paths = list(reader.tf_record_input_reader.input_path)
    if paths:
        take("train_input_paths", paths, "train_input_reader.tf_record_input_reader.input_path")
    eval_paths = [p for r in pipeline.eval_input_reader
                  for p in r.tf_record_input_reader.input_path]
    if any(_opt(r, "num_epochs") not in (None, 1) for r in pipeline.eval_input_reader):
        raise refuse("eval_input_reader.num_epochs", "supported: 1 (every eval record once)")
    if eval_paths:
        take("eval_input_paths", eval_paths,
             "eval_input_reader.tf_record_input_reader.input_path")
    metrics = [m for m in pipeline.eval_config.metrics_set if m != "coco_detection_metrics"]
    if metrics:
        raise refuse("eval_config.metrics_set", f"{metrics[0]!r}: supported: "
                     "coco_detection_metrics")
    take("eval_batch_size", _opt(pipeline.eval_config, "batch_size"), "eval_config.batch_size")
    if _opt(pipeline.eval_config, "use_moving_averages"):
        raise refuse("eval_config.use_moving_averages", "true: supported: false")

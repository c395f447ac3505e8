"""Read a TF Object Detection API ``pipeline.config``: honour what the trainer can do, refuse
the rest in one line naming the field and what is supported instead.

Real files are protobuf text format (``#`` comments, ``{`` and ``: {`` blocks, trailing commas or
semicolons, single and double quotes, repeated fields). Rather than parse that by hand, protobuf's
own ``text_format`` parses it against a minimal schema of the OD API's messages (field numbers
are irrelevant to the text format).

What the trainer builds is Model Garden RetinaNet: the OD API's ``ssd`` meta-architecture with
an FPN feature extractor and a weight-shared box predictor. So ``faster_rcnn`` and
``center_net``, plain SSD and EfficientDet feature extractors, optimizers other than momentum,
learning-rate schedules other than cosine and constant, ``keep_aspect_ratio_resizer``, sizes that
are not square multiples of 32 and augmentations other than ``random_horizontal_flip`` are
refused. FPN levels, anchors, FPN and head widths, depthwise convolutions and the focal loss's
alpha and gamma are honoured; the box coder, matcher, localization loss and post-processing are
Model Garden RetinaNet's own and are not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# message -> [(field, type, repeated)]; a type is a scalar name or another message.
SCHEMA: dict[str, list[tuple[str, str, bool]]] = {
    "TrainEvalPipelineConfig": [("model", "DetectionModel", False),
                                ("train_config", "TrainConfig", False),
                                ("train_input_reader", "InputReader", False),
                                ("eval_input_reader", "InputReader", True)],
    "DetectionModel": [("ssd", "Meta", False), ("faster_rcnn", "Meta", False),
                       ("center_net", "Meta", False)],
    "Meta": [("num_classes", "int32", False), ("image_resizer", "ImageResizer", False),
             ("freeze_batchnorm", "bool", False),
             ("feature_extractor", "FeatureExtractor", False),
             ("box_predictor", "BoxPredictor", False),
             ("anchor_generator", "AnchorGenerator", False),
             ("loss", "Loss", False)],
    "FeatureExtractor": [("type", "string", False), ("use_depthwise", "bool", False),
                         ("fpn", "Fpn", False)],
    "Fpn": [("min_level", "int32", False), ("max_level", "int32", False),
            ("additional_layer_depth", "int32", False)],
    "BoxPredictor": [("weight_shared_convolutional_box_predictor", "WeightShared", False),
                     ("convolutional_box_predictor", "Empty", False)],
    "WeightShared": [("depth", "int32", False), ("num_layers_before_predictor", "int32", False),
                     ("kernel_size", "int32", False), ("use_depthwise", "bool", False)],
    "AnchorGenerator": [("multiscale_anchor_generator", "Multiscale", False),
                        ("ssd_anchor_generator", "Empty", False),
                        ("grid_anchor_generator", "Empty", False)],
    "Multiscale": [("min_level", "int32", False), ("max_level", "int32", False),
                   ("anchor_scale", "float", False), ("aspect_ratios", "float", True),
                   ("scales_per_octave", "int32", False)],
    "Loss": [("classification_loss", "ClassificationLoss", False)],
    "ClassificationLoss": [("weighted_sigmoid_focal", "Focal", False),
                           ("weighted_sigmoid", "Empty", False),
                           ("weighted_softmax", "Empty", False),
                           ("bootstrapped_sigmoid", "Empty", False)],
    "Focal": [("alpha", "float", False), ("gamma", "float", False)],
    "Empty": [],
    "ImageResizer": [("fixed_shape_resizer", "FixedShape", False),
                     ("keep_aspect_ratio_resizer", "KeepAspect", False)],
    "FixedShape": [("height", "int32", False), ("width", "int32", False)],
    "KeepAspect": [("min_dimension", "int32", False), ("max_dimension", "int32", False)],
    "TrainConfig": [("batch_size", "int32", False), ("num_steps", "int32", False),
                    ("fine_tune_checkpoint", "string", False),
                    ("fine_tune_checkpoint_type", "string", False),
                    ("optimizer", "Optimizer", False),
                    ("data_augmentation_options", "Augmentation", True),
                    ("gradient_clipping_by_norm", "float", False)],
    "Augmentation": [("random_horizontal_flip", "Empty", False),
                     ("random_crop_image", "Empty", False),
                     ("random_scale_crop_and_pad_to_square", "Empty", False),
                     ("ssd_random_crop", "Empty", False),
                     ("random_adjust_brightness", "Empty", False),
                     ("random_adjust_contrast", "Empty", False),
                     ("random_adjust_hue", "Empty", False),
                     ("random_adjust_saturation", "Empty", False),
                     ("random_distort_color", "Empty", False),
                     ("random_image_scale", "Empty", False),
                     ("random_pad_image", "Empty", False),
                     ("random_vertical_flip", "Empty", False),
                     ("random_rotation90", "Empty", False),
                     ("random_black_patches", "Empty", False),
                     ("random_patch_gaussian", "Empty", False),
                     ("random_jitter_boxes", "Empty", False),
                     ("random_resize_method", "Empty", False),
                     ("autoaugment_image", "Empty", False),
                     ("drop_label_probabilistically", "Empty", False)],
    "Optimizer": [("momentum_optimizer", "OptimizerParams", False),
                  ("adam_optimizer", "OptimizerParams", False),
                  ("rms_prop_optimizer", "OptimizerParams", False),
                  ("use_moving_average", "bool", False)],
    "OptimizerParams": [("learning_rate", "LearningRate", False),
                        ("momentum_optimizer_value", "float", False)],
    "LearningRate": [("constant_learning_rate", "Constant", False),
                     ("exponential_decay_learning_rate", "Initial", False),
                     ("manual_step_learning_rate", "Initial", False),
                     ("cosine_decay_learning_rate", "Cosine", False)],
    "Constant": [("learning_rate", "float", False)],
    "Initial": [("initial_learning_rate", "float", False)],
    "Cosine": [("learning_rate_base", "float", False), ("total_steps", "int64", False),
               ("warmup_learning_rate", "float", False), ("warmup_steps", "int64", False)],
    "InputReader": [("label_map_path", "string", False),
                    ("tf_record_input_reader", "TfRecordInputReader", False)],
    "TfRecordInputReader": [("input_path", "string", True)],
}
PACKAGE = "tf_finetune_od"
# The OD API's TF2 "fine_tune" restores all but the class head, which is our "detection".
FINE_TUNE_TYPES = {"classification": "classification", "detection": "detection",
                   "fine_tune": "detection", "full": "full"}


class PipelineConfigError(ValueError):
    """The file is not a readable pipeline.config."""


# The RetinaNet structure a config can set, by its name in PipelineConfig and TrainConfig.
STRUCTURE = ("min_level", "max_level", "anchor_size", "aspect_ratios", "num_scales",
             "fpn_filters", "fpn_separable", "head_filters", "head_convs", "head_separable",
             "focal_alpha", "focal_gamma")
# OD API feature extractors that are an FPN over a backbone Model Garden RetinaNet offers.
FEATURE_EXTRACTORS = {"ssd_resnet50_v1_fpn_keras": "resnet50",
                      "ssd_mobilenet_v2_fpn_keras": "mobilenetv2"}
PLACEHOLDER = "PATH_TO_BE_CONFIGURED"


@dataclass(frozen=True)
class PipelineConfig:
    """What the trainer takes from a pipeline.config; None where the file does not say."""

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
    # RetinaNet structure (Model Garden's names): FPN levels and anchors, FPN and head widths
    min_level: int | None = None
    max_level: int | None = None
    anchor_size: float | None = None
    aspect_ratios: list[float] = field(default_factory=list)
    num_scales: int | None = None
    fpn_filters: int | None = None
    fpn_separable: bool | None = None
    head_filters: int | None = None
    head_convs: int | None = None
    head_separable: bool | None = None
    focal_alpha: float | None = None
    focal_gamma: float | None = None
    label_map_path: str | None = None
    freeze_batchnorm: bool | None = None
    train_input_paths: list[str] = field(default_factory=list)
    eval_input_paths: list[str] = field(default_factory=list)
    # field path (as in the file) of each value above, for config.json and error lines
    sources: dict[str, str] = field(default_factory=dict)


def _message_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name=f"{PACKAGE}.proto", package=PACKAGE,
                                             syntax="proto2")
    scalar = descriptor_pb2.FieldDescriptorProto
    types = {"int32": scalar.TYPE_INT32, "int64": scalar.TYPE_INT64,
             "float": scalar.TYPE_FLOAT, "string": scalar.TYPE_STRING,
             "bool": scalar.TYPE_BOOL}
    for name, fields in SCHEMA.items():
        message = fdp.message_type.add(name=name)
        for number, (fname, ftype, repeated) in enumerate(fields, start=1):
            label = scalar.LABEL_REPEATED if repeated else scalar.LABEL_OPTIONAL
            if ftype in types:
                message.field.add(name=fname, number=number, type=types[ftype], label=label)
            else:
                message.field.add(name=fname, number=number, type=scalar.TYPE_MESSAGE,
                                  label=label, type_name=f".{PACKAGE}.{ftype}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{PACKAGE}.TrainEvalPipelineConfig"))


def _opt(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def parse(text: str, source: str = "pipeline.config") -> PipelineConfig:
    """Parse ``text``; ``PipelineConfigError`` naming the line on a syntax error, or naming the
    field and what is supported instead when the trainer cannot honour it."""
    from google.protobuf import text_format

    pipeline = _message_class()()
    try:
        text_format.Parse(text, pipeline, allow_unknown_field=True)
    except text_format.ParseError as err:
        raise PipelineConfigError(f"{source}: {err}") from None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def take(name: str, value: Any, path: str) -> None:
        if value is not None:
            values[name] = value
            sources[name] = path

    def refuse(path: str, why: str) -> PipelineConfigError:
        return PipelineConfigError(f"{source}: {path}: {why}")

    _model(pipeline.model, take, refuse)
    _train(pipeline.train_config, take, refuse)
    reader = pipeline.train_input_reader
    take("label_map_path", _opt(reader, "label_map_path"), "train_input_reader.label_map_path")
    paths = list(reader.tf_record_input_reader.input_path)
    eval_paths = [p for r in pipeline.eval_input_reader
                  for p in r.tf_record_input_reader.input_path]
    if paths:
        take("train_input_paths", paths, "train_input_reader.tf_record_input_reader.input_path")
    if eval_paths:
        take("eval_input_paths", eval_paths,
             "eval_input_reader.tf_record_input_reader.input_path")
    return PipelineConfig(**values, sources=sources)


SUPPORTED_MODEL = ("ssd with feature_extractor "
                   f"{' or '.join(FEATURE_EXTRACTORS)} and weight_shared_convolutional_box_"
                   "predictor (RetinaNet)")


def _model(model: Any, take: Any, refuse: Any) -> None:
    for arch in ("faster_rcnn", "center_net"):
        if model.HasField(arch):
            raise refuse(f"model.{arch}", f"this trainer fine-tunes {SUPPORTED_MODEL}; it "
                         f"cannot build {arch}")
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
    _structure(ssd, prefix, take, refuse)
    take("num_classes", _opt(ssd, "num_classes"), f"{prefix}.num_classes")
    take("freeze_batchnorm", _opt(ssd, "freeze_batchnorm"), f"{prefix}.freeze_batchnorm")
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


def _structure(ssd: Any, prefix: str, take: Any, refuse: Any) -> None:
    """FPN levels and anchors, FPN and head widths, focal loss: Model Garden's RetinaNet has a
    field for each, so they are honoured (box coder, matcher and localization loss are its own)."""
    extractor = ssd.feature_extractor
    path = f"{prefix}.feature_extractor"
    take("fpn_separable", _opt(extractor, "use_depthwise"), f"{path}.use_depthwise")
    if extractor.HasField("fpn"):
        take("fpn_filters", _opt(extractor.fpn, "additional_layer_depth"),
             f"{path}.fpn.additional_layer_depth")
    generator = ssd.anchor_generator
    for other in ("ssd_anchor_generator", "grid_anchor_generator"):
        if generator.HasField(other):
            raise refuse(f"{prefix}.anchor_generator.{other}",
                         "supported: multiscale_anchor_generator (RetinaNet)")
    if generator.HasField("multiscale_anchor_generator"):
        anchors = generator.multiscale_anchor_generator
        path = f"{prefix}.anchor_generator.multiscale_anchor_generator"
        levels = (_opt(anchors, "min_level"), _opt(anchors, "max_level"))
        fpn = extractor.fpn if extractor.HasField("fpn") else None
        fpn_levels = (_opt(fpn, "min_level"), _opt(fpn, "max_level")) if fpn else levels
        if fpn_levels != levels:
            raise refuse(f"{path}.min_level/max_level", f"{levels} differ from the FPN's "
                         f"{fpn_levels}; supported: the same levels for both")
        take("min_level", levels[0], f"{path}.min_level")
        take("max_level", levels[1], f"{path}.max_level")
        take("anchor_size", _float(_opt(anchors, "anchor_scale")), f"{path}.anchor_scale")
        if anchors.aspect_ratios:
            take("aspect_ratios", [_float(r) for r in anchors.aspect_ratios],
                 f"{path}.aspect_ratios")
        take("num_scales", _opt(anchors, "scales_per_octave"), f"{path}.scales_per_octave")
    if ssd.box_predictor.HasField("weight_shared_convolutional_box_predictor"):
        head = ssd.box_predictor.weight_shared_convolutional_box_predictor
        path = f"{prefix}.box_predictor.weight_shared_convolutional_box_predictor"
        if _opt(head, "kernel_size") not in (None, 3):
            raise refuse(f"{path}.kernel_size", f"{head.kernel_size}: supported: 3")
        take("head_filters", _opt(head, "depth"), f"{path}.depth")
        take("head_convs", _opt(head, "num_layers_before_predictor"),
             f"{path}.num_layers_before_predictor")
        take("head_separable", _opt(head, "use_depthwise"), f"{path}.use_depthwise")
    loss = ssd.loss.classification_loss
    path = f"{prefix}.loss.classification_loss"
    for other in ("weighted_sigmoid", "weighted_softmax", "bootstrapped_sigmoid"):
        if loss.HasField(other):
            raise refuse(f"{path}.{other}", "supported: weighted_sigmoid_focal (RetinaNet)")
    if loss.HasField("weighted_sigmoid_focal"):
        focal = loss.weighted_sigmoid_focal
        take("focal_alpha", _float(_opt(focal, "alpha")), f"{path}.weighted_sigmoid_focal.alpha")
        take("focal_gamma", _float(_opt(focal, "gamma")), f"{path}.weighted_sigmoid_focal.gamma")


def _train(train: Any, take: Any, refuse: Any) -> None:
    take("batch_size", _opt(train, "batch_size"), "train_config.batch_size")
    take("num_steps", _opt(train, "num_steps"), "train_config.num_steps")
    take("fine_tune_checkpoint", _opt(train, "fine_tune_checkpoint"),
         "train_config.fine_tune_checkpoint")
    ft_type = _opt(train, "fine_tune_checkpoint_type")
    if ft_type is not None and ft_type not in FINE_TUNE_TYPES:
        raise refuse("train_config.fine_tune_checkpoint_type",
                     f"{ft_type!r} is not one of {', '.join(FINE_TUNE_TYPES)}")
    take("fine_tune_checkpoint_type", FINE_TUNE_TYPES.get(ft_type or ""),
         "train_config.fine_tune_checkpoint_type")
    flip = False
    for option in train.data_augmentation_options:
        chosen = next((f.name for f, _ in option.ListFields()), None)
        if chosen == "random_horizontal_flip":
            flip = True
        elif chosen is not None:
            raise refuse(f"train_config.data_augmentation_options.{chosen}",
                         "not supported; supported: random_horizontal_flip")
    if train.data_augmentation_options:
        take("horizontal_flip", flip, "train_config.data_augmentation_options")
    take("clip_norm", _float(_opt(train, "gradient_clipping_by_norm")) or 0.0,
         "train_config.gradient_clipping_by_norm")
    _optimizer(train.optimizer, take, refuse)


def _optimizer(optimizer: Any, take: Any, refuse: Any) -> None:
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


def _float(value: float | None) -> float | None:
    """A float32 field as the decimal the file wrote (0.04, not 0.03999999910593033)."""
    return None if value is None else float(f"{value:.7g}")

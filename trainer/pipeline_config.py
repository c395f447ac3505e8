"""Read the fields that matter from a TF Object Detection API ``pipeline.config``.

Real files are protobuf text format (``#`` comments, ``{`` and ``: {`` blocks, trailing commas or
semicolons, single and double quotes, repeated fields). Rather than parse that by hand, protobuf's
own ``text_format`` parses it against a minimal schema of the OD API's messages, skipping every
field we do not model (field numbers are irrelevant to the text format).
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
             ("freeze_batchnorm", "bool", False)],
    "ImageResizer": [("fixed_shape_resizer", "FixedShape", False),
                     ("keep_aspect_ratio_resizer", "KeepAspect", False)],
    "FixedShape": [("height", "int32", False), ("width", "int32", False)],
    "KeepAspect": [("min_dimension", "int32", False), ("max_dimension", "int32", False)],
    "TrainConfig": [("batch_size", "int32", False), ("num_steps", "int32", False),
                    ("fine_tune_checkpoint", "string", False),
                    ("fine_tune_checkpoint_type", "string", False),
                    ("optimizer", "Optimizer", False)],
    "Optimizer": [("momentum_optimizer", "OptimizerParams", False),
                  ("adam_optimizer", "OptimizerParams", False),
                  ("rms_prop_optimizer", "OptimizerParams", False)],
    "OptimizerParams": [("learning_rate", "LearningRate", False)],
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


@dataclass(frozen=True)
class PipelineConfig:
    """What the trainer takes from a pipeline.config; None where the file does not say."""

    num_classes: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    num_steps: int | None = None
    fine_tune_checkpoint: str | None = None
    fine_tune_checkpoint_type: str | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    label_map_path: str | None = None
    freeze_batchnorm: bool | None = None
    train_input_paths: list[str] = field(default_factory=list)
    eval_input_paths: list[str] = field(default_factory=list)


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
    """Parse ``text``; raise ``PipelineConfigError`` naming the line on a syntax error."""
    from google.protobuf import text_format

    pipeline = _message_class()()
    try:
        text_format.Parse(text, pipeline, allow_unknown_field=True)
    except text_format.ParseError as err:
        raise PipelineConfigError(f"{source}: {err}") from None
    model = next((getattr(pipeline.model, arch) for arch in ("ssd", "faster_rcnn", "center_net")
                  if pipeline.model.HasField(arch)), None)
    image_size = None
    if model is not None and model.image_resizer.HasField("fixed_shape_resizer"):
        shape = model.image_resizer.fixed_shape_resizer
        image_size = max(shape.height, shape.width) or None
    elif model is not None and model.image_resizer.HasField("keep_aspect_ratio_resizer"):
        image_size = model.image_resizer.keep_aspect_ratio_resizer.max_dimension or None
    train = pipeline.train_config
    lr, warmup = _learning_rate(train.optimizer)
    ft_type = _opt(train, "fine_tune_checkpoint_type")
    if ft_type is not None and ft_type not in FINE_TUNE_TYPES:
        raise PipelineConfigError(f"{source}: fine_tune_checkpoint_type {ft_type!r} is not one "
                                  f"of {', '.join(FINE_TUNE_TYPES)}")
    return PipelineConfig(
        num_classes=_opt(model, "num_classes") if model is not None else None,
        image_size=image_size,
        batch_size=_opt(train, "batch_size"),
        num_steps=_opt(train, "num_steps"),
        fine_tune_checkpoint=_opt(train, "fine_tune_checkpoint"),
        fine_tune_checkpoint_type=FINE_TUNE_TYPES.get(ft_type or ""),
        learning_rate=lr, warmup_steps=warmup,
        label_map_path=_opt(pipeline.train_input_reader, "label_map_path"),
        freeze_batchnorm=_opt(model, "freeze_batchnorm") if model is not None else None,
        train_input_paths=list(pipeline.train_input_reader.tf_record_input_reader.input_path),
        eval_input_paths=[p for reader in pipeline.eval_input_reader
                          for p in reader.tf_record_input_reader.input_path],
    )


def _learning_rate(optimizer: Any) -> tuple[float | None, int | None]:
    for name in ("momentum_optimizer", "adam_optimizer", "rms_prop_optimizer"):
        if not optimizer.HasField(name):
            continue
        rate = getattr(optimizer, name).learning_rate
        if rate.HasField("cosine_decay_learning_rate"):
            cosine = rate.cosine_decay_learning_rate
            return cosine.learning_rate_base, int(cosine.warmup_steps)
        if rate.HasField("constant_learning_rate"):
            return rate.constant_learning_rate.learning_rate, None
        for kind in ("exponential_decay_learning_rate", "manual_step_learning_rate"):
            if rate.HasField(kind):
                return getattr(rate, kind).initial_learning_rate, None
    return None, None

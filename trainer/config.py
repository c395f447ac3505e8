"""The trainer's configuration: command-line flags (rendered by the launcher) and the label map.

The label map is a ``StringIntLabelMap`` in protobuf text format, parsed with protobuf's own
``text_format`` against a minimal schema, so comments, quoting styles and unknown fields
(``display_name``, keypoints, ...) behave exactly as in the Object Detection API.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer import contract
from trainer.pipeline_config import PipelineConfig, PipelineConfigError
from trainer.pipeline_config import parse as parse_pipeline


class ConfigError(Exception):
    """A user error in the trainer's configuration: exit code 1."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs."""

    run_dir: str
    train: list[str]
    task: str = "detection"  # detection | keras (an exported Keras classifier)
    family: str = "retinanet"  # of the detector: retinanet | faster_rcnn (trainer.detection_job)
    checkpoint: str | None = None
    fine_tune_type: str = "detection"
    backbone: str = "mobilenetv2"
    model_size: str = "standard"
    eval: list[str] = field(default_factory=list)
    label_map: str | None = None
    pipeline_config: str | None = None
    num_classes: int | None = None
    image_size: int = 256
    steps: int = 1000
    global_batch_size: int = 8
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    learning_rate: float = 0.02
    lr_schedule: str = "cosine"  # cosine (decays to 0 over total_steps) | constant
    warmup_steps: int = 0
    warmup_learning_rate: float = 0.0  # where the linear warm-up starts
    total_steps: int | None = None  # of the cosine decay, warm-up included; None: steps
    momentum: float = 0.9
    # From a pipeline.config (``trainer.pipeline_config``); empty: Model Garden's own settings
    # (or the tiny size's). Model Garden task-config path -> value:
    model_garden: dict[str, Any] = field(default_factory=dict)
    # "backbone" | "decoder" | "head" -> {activation, norm_momentum, norm_epsilon, l2}:
    layer_hyperparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what Model Garden does its own way although the config says otherwise, one line each:
    differences: list[str] = field(default_factory=list)
    clip_norm: float = 10.0  # global gradient norm; 0: none
    horizontal_flip: bool = True
    log_every: int = 10
    mixed_precision: bool | None = None
    export: bool = True
    deterministic_input: bool = False
    freeze_batchnorm: bool = False
    seed: int = 0
    max_skipped_fraction: float = 0.01
    # The keras task (``trainer.keras_job``): which layers train, the head, loss and optimizer.
    trainable_layers: int | None = None  # the last N layers train, the rest is frozen
    freeze_until: str | None = None  # every layer up to and including this one is frozen
    freeze_patterns: list[str] = field(default_factory=list)  # regexes of frozen layer names
    head: str = "auto"  # auto (replace when the class count differs) | keep | replace
    loss: str | None = None  # a Keras loss name; None: the model's compile config
    optimizer: str | None = None  # sgd | adam | rmsprop; None: the compile config, else sgd
    custom_objects: str | None = None  # a module whose public names the model needs
    image_key: str = "image/encoded"
    label_key: str = "image/class/label"
    text_key: str = "image/class/text"
    label_offset: int = 0  # class index = label - offset (1 for records with 0 as background)
    input_range: str = "0-1"  # pixel values the model expects: 0-1 | 0-255 | -1-1
    # where each value came from: "flag", "default" or "pipeline.config:<field path>"
    sources: dict[str, str] = field(default_factory=dict)


# Built-in defaults, used where neither a flag nor the pipeline.config sets a value.
DEFAULTS: dict[str, Any] = {
    "fine_tune_type": "detection", "image_size": 256, "steps": 1000, "global_batch_size": 8,
    "learning_rate": 0.02, "warmup_steps": 0, "checkpoint_every": 100, "keep_checkpoints": 3,
    "log_every": 10, "max_skipped_fraction": 0.01, "backbone": "mobilenetv2",
    "family": "retinanet",
}
# detector family -> the module that builds it (``trainer.detection_job``)
FAMILIES = {"retinanet": "trainer.model", "faster_rcnn": "trainer.faster_rcnn",
            "yolo": "trainer.yolo"}


def parser() -> argparse.ArgumentParser:
    """Flags of ``python -m trainer``; the launcher renders them (``launcher.render``)."""
    p = argparse.ArgumentParser(prog="python -m trainer",
                                description="Fine-tune a detector or a Keras model under "
                                            "MultiWorkerMirroredStrategy")
    p.add_argument("--run-dir", default=None, help=f"default: ${contract.ENV_RUN_DIR}")
    p.add_argument("--task", choices=["detection", "keras"], default=None,
                   help="detection: a Model Garden detector (default); keras: fine-tune an "
                        "exported Keras model (.h5, .keras or a SavedModel directory, given as "
                        "--checkpoint)")
    p.add_argument("--family", choices=list(FAMILIES), default=None,
                   help="the detector: retinanet (default; what a pipeline.config's ssd block "
                        "describes), faster_rcnn (Model Garden's, FPN) or yolo (YOLOv4)")
    p.add_argument("--pipeline-config", default=None,
                   help="OD-API pipeline.config; flags override its fields")
    p.add_argument("--checkpoint", default=None, help="fine-tune from here; none: from scratch")
    p.add_argument("--fine-tune-type", choices=["classification", "detection", "full"])
    p.add_argument("--backbone", choices=["mobilenetv2", "resnet50"], default=None,
                   help="default: the pipeline.config's feature extractor, else mobilenetv2")
    p.add_argument("--model-size", choices=["standard", "tiny"], default="standard")
    p.add_argument("--train", action="append", default=[], help="TFRecord glob (repeatable)")
    p.add_argument("--eval", action="append", default=[], help="TFRecord glob (repeatable)")
    p.add_argument("--label-map", default=None)
    p.add_argument("--num-classes", type=int, default=None)
    for flag in ("--image-size", "--steps", "--global-batch-size", "--checkpoint-every",
                 "--keep-checkpoints", "--warmup-steps", "--log-every"):
        p.add_argument(flag, type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                   help="export a SavedModel at the end")
    p.add_argument("--freeze-batchnorm", action=argparse.BooleanOptionalAction, default=None,
                   help="keep batch-norm statistics and scales fixed (OD-API freeze_batchnorm)")
    p.add_argument("--deterministic-input", action="store_true",
                   help="read records in a fixed order without shuffling or augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-skipped-fraction", type=float, default=None,
                   help="fail when more than this fraction of a worker's examples is unusable "
                        "(bad boxes or classes, undecodable images; box-less images are not "
                        "counted): default 0.01")
    keras = p.add_argument_group("keras task")
    keras.add_argument("--trainable-layers", type=int, default=None,
                       help="train the last N layers, freeze the rest")
    keras.add_argument("--freeze-until", default=None,
                       help="freeze every layer up to and including this one")
    keras.add_argument("--freeze-pattern", dest="freeze_patterns", action="append", default=[],
                       help="freeze the layers whose name matches this regex (repeatable)")
    keras.add_argument("--head", choices=["auto", "keep", "replace"], default=None,
                       help="the classification head: replaced by a new Dense layer when the "
                            "class count differs (auto), kept, or always replaced")
    keras.add_argument("--loss", default=None, help="a Keras loss; default: the model's own")
    keras.add_argument("--optimizer", choices=["sgd", "adam", "rmsprop"], default=None,
                       help="default: the model's own, else sgd with --momentum")
    keras.add_argument("--custom-objects", default=None,
                       help="an importable module whose public names the model needs")
    for flag in ("--image-key", "--label-key", "--text-key"):
        keras.add_argument(flag, default=None, help="TFRecord feature key")
    keras.add_argument("--label-offset", type=int, default=None,
                       help="class index = label - offset (default 0)")
    keras.add_argument("--input-range", choices=["0-1", "0-255", "-1-1"], default=None,
                       help="pixel values the model expects (default 0-1)")
    return p


# TrainConfig field <- PipelineConfig field
FROM_PIPELINE = {
    "num_classes": "num_classes", "image_size": "image_size", "backbone": "backbone",
    "global_batch_size": "batch_size", "steps": "num_steps",
    "checkpoint": "fine_tune_checkpoint", "fine_tune_type": "fine_tune_checkpoint_type",
    "learning_rate": "learning_rate", "lr_schedule": "lr_schedule",
    "warmup_steps": "warmup_steps", "warmup_learning_rate": "warmup_learning_rate",
    "total_steps": "total_steps", "momentum": "momentum", "horizontal_flip": "horizontal_flip",
    "clip_norm": "clip_norm",
    "model_garden": "model_garden", "layer_hyperparams": "layer_hyperparams",
    "differences": "differences",
    "label_map": "label_map_path", "train": "train_input_paths", "eval": "eval_input_paths",
    "freeze_batchnorm": "freeze_batchnorm",
}
# Flags the user sets in the spec, by TrainConfig field (for error lines).
FLAG_OF = {"checkpoint": "--checkpoint (model.checkpoint)", "label_map": "--label-map "
           "(model.labelMap)", "train": "--train (data.train)", "eval": "--eval (data.eval)",
           "steps": "--steps (training.steps)", "warmup_steps": "--warmup-steps "
           "(training.warmupSteps)"}


def _from_pipeline(pipeline: PipelineConfig | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The pipeline.config's values under our names (only those it sets), and where each
    came from (``pipeline.config:<field path>``)."""
    if pipeline is None:
        return {}, {}
    values, sources = {}, {}
    for ours, theirs in FROM_PIPELINE.items():
        value = getattr(pipeline, theirs)
        if value not in (None, [], {}):
            values[ours] = value
            sources[ours] = f"pipeline.config:{pipeline.sources.get(theirs, theirs)}"
    for name, path in pipeline.sources.items():
        if name.startswith(("model_garden.", "layer_hyperparams.")):
            sources[name] = f"pipeline.config:{path}"
    return values, sources


def _placeholders(values: dict[str, Any], sources: dict[str, str]) -> None:
    """The zoo configs' PATH_TO_BE_CONFIGURED, left in a value nothing overrides."""
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "PATH_TO_BE_CONFIGURED" in v for v in items):
            where = sources.get(name, name).removeprefix("pipeline.config:")
            raise ConfigError(f"pipeline.config {where} is {items[0]!r}: set it in the config "
                              f"or give {FLAG_OF.get(name, '--' + name.replace('_', '-'))}")


def _schedule_fits(merged: dict[str, Any], sources: dict[str, str]) -> None:
    """A warm-up or decay length from the config that does not fit this run's steps is refused:
    the learning rate would never leave warm-up, or the cosine would not decay as written."""
    steps = merged["steps"]
    where = {k: sources.get(k, "flag").removeprefix("pipeline.config:") for k in merged}
    if merged["warmup_steps"] >= steps and merged["warmup_steps"]:
        raise ConfigError(f"warm-up of {merged['warmup_steps']} steps ({where['warmup_steps']}) "
                          f"is not shorter than the run's {steps} steps ({where['steps']}): set "
                          "--warmup-steps (training.warmupSteps) below the steps")
    total = merged.get("total_steps")
    if total is not None and merged["lr_schedule"] == "cosine" and total != steps:
        raise ConfigError(f"cosine_decay_learning_rate.total_steps {total} "
                          f"({where['total_steps']}) differs from the run's {steps} steps "
                          f"({where['steps']}): make them equal in the config, or drop "
                          "total_steps to decay over the run's steps")


# Flags of one task only, by TrainConfig field.
DETECTION_ONLY = ("pipeline_config", "fine_tune_type", "backbone", "freeze_batchnorm", "family")
KERAS_ONLY = ("trainable_layers", "freeze_until", "freeze_patterns", "head", "loss",
              "optimizer", "custom_objects", "image_key", "label_key", "text_key",
              "label_offset", "input_range")


def _keras_fits(merged: dict[str, Any], flags: dict[str, Any]) -> None:
    """Cross-field rules of the keras task."""
    for name in DETECTION_ONLY:
        if name in flags:
            raise ConfigError(f"--{name.replace('_', '-')}: only for --task detection")
    if not merged.get("checkpoint"):
        raise ConfigError("--checkpoint: required with --task keras (the exported model: .h5, "
                          ".keras or a SavedModel directory)")
    chosen = [f for f in ("trainable_layers", "freeze_until", "freeze_patterns") if f in flags]
    if len(chosen) > 1:
        raise ConfigError(f"--{chosen[0].replace('_', '-')} and "
                          f"--{chosen[1].replace('_', '-')}: choose one way to freeze layers")
    if merged.get("trainable_layers") is not None and merged["trainable_layers"] < 1:
        raise ConfigError("--trainable-layers: must be >= 1")


def from_args(argv: list[str], env: dict[str, str],
              read_text: Callable[[str], str] | None = None) -> TrainConfig:
    """Flags, over the pipeline.config (if any, read with ``read_text``), over the defaults."""
    try:
        ns = parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):  # --help: printed, and nothing is wrong
            raise
        raise ConfigError("invalid command-line arguments") from exc  # argparse said why
    pipeline = None
    if ns.pipeline_config:
        if read_text is None:
            raise ConfigError("--pipeline-config: no way to read it")
        try:
            pipeline = parse_pipeline(read_text(ns.pipeline_config), ns.pipeline_config)
        except PipelineConfigError as err:
            raise ConfigError(f"--pipeline-config: {err}") from None
    flags = {k: v for k, v in vars(ns).items() if v not in (None, [])}
    from_pipeline, sources = _from_pipeline(pipeline)
    sources.update({k: "flag" for k in flags})
    merged = {**DEFAULTS, **from_pipeline, **flags}
    _placeholders(merged, sources)
    merged["run_dir"] = merged.get("run_dir") or env.get(contract.ENV_RUN_DIR)
    if not merged["run_dir"]:
        raise ConfigError(f"--run-dir: required (or set {contract.ENV_RUN_DIR})")
    if not merged.get("train"):
        raise ConfigError("--train: at least one TFRecord glob is required")
    for name in ("steps", "global_batch_size", "checkpoint_every", "keep_checkpoints",
                 "log_every", "image_size"):
        if merged[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1")
    if merged["image_size"] % 32 and merged.get("task", "detection") == "detection":
        where = sources.get("image_size", "default").removeprefix("pipeline.config:")
        raise ConfigError(f"image size {merged['image_size']} ({where}): must be a multiple "
                          "of 32")
    _schedule_fits(merged, sources)
    if merged["family"] == "yolo" and "backbone" in flags:
        raise ConfigError("--backbone: YOLO's backbone is CSP-Darknet (--model-size picks "
                          "YOLOv4 or YOLOv4-tiny); drop --backbone")
    if pipeline is not None and merged["family"] != "retinanet":
        raise ConfigError(f"--family {merged['family']}: the pipeline.config describes an ssd "
                          "model (RetinaNet); drop --pipeline-config and set the model with "
                          "flags, or drop --family")
    if merged.get("task") == "keras":
        _keras_fits(merged, flags)
    else:
        for name in KERAS_ONLY:
            if name in flags:
                raise ConfigError(f"--{name.replace('_', '-')}: only for --task keras")
    merged["sources"] = {**{k: sources.get(k, "default") for k in merged if k != "sources"},
                         **{k: v for k, v in sources.items() if "." in k}}
    return TrainConfig(**merged)


def _label_map_class():  # -> type[Message]
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="tf_finetune_label_map.proto",
                                               package="tf_finetune")
    item = proto.message_type.add(name="StringIntLabelMapItem")
    opt = descriptor_pb2.FieldDescriptorProto
    item.field.add(name="name", number=1, type=opt.TYPE_STRING, label=opt.LABEL_OPTIONAL)
    item.field.add(name="id", number=2, type=opt.TYPE_INT32, label=opt.LABEL_OPTIONAL)
    item.field.add(name="display_name", number=3, type=opt.TYPE_STRING, label=opt.LABEL_OPTIONAL)
    label_map = proto.message_type.add(name="StringIntLabelMap")
    label_map.field.add(name="item", number=1, type=opt.TYPE_MESSAGE, label=opt.LABEL_REPEATED,
                        type_name=".tf_finetune.StringIntLabelMapItem")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "tf_finetune.StringIntLabelMap"))


def parse_label_map(text: str, source: str = "label map") -> dict[int, str]:
    """``{id: name}`` from a ``StringIntLabelMap``; ids must be unique and >= 1."""
    from google.protobuf import text_format

    message = _label_map_class()()
    try:
        text_format.Parse(text, message, allow_unknown_field=True)
    except text_format.ParseError as err:
        raise ConfigError(f"{source}: not a StringIntLabelMap: {err}") from None
    labels: dict[int, str] = {}
    for item in message.item:
        if item.id < 1:
            raise ConfigError(f"{source}: id {item.id} of {item.name!r} must be >= 1 "
                              "(0 is the background)")
        if item.id in labels:
            raise ConfigError(f"{source}: id {item.id} appears twice")
        labels[item.id] = item.name or item.display_name
    if not labels:
        raise ConfigError(f"{source}: has no items")
    return labels


def resolve_num_classes(cfg: TrainConfig, labels: dict[int, str] | None) -> int:
    """Model classes including background (Model Garden counts it): ``num_classes + 1``.

    As in the OD API, class ids run from 1 to ``num_classes`` and a label map may leave gaps
    (COCO's 80 names have ids up to 90): ``num_classes`` must cover the largest id; without it,
    the largest id is the class count."""
    if labels is None:
        if cfg.num_classes is None:
            raise ConfigError("--num-classes or --label-map is required")
        return cfg.num_classes + 1
    if cfg.num_classes is not None:
        if cfg.num_classes < max(labels):
            where = cfg.sources.get("num_classes", "--num-classes").removeprefix(
                "pipeline.config:")
            raise ConfigError(f"num_classes {cfg.num_classes} ({where}) is smaller than the "
                              f"label map's largest id {max(labels)}: ids run from 1 to "
                              "num_classes")
        return cfg.num_classes + 1
    return max(labels) + 1


def resolve_keras_classes(cfg: TrainConfig, labels: dict[int, str] | None) -> int | None:
    """Classes of a keras-task run (no background): ``--num-classes``, else the label map's
    largest id (ids 1..N are class indices 0..N-1), else None: the model's own head decides."""
    if cfg.num_classes is not None:
        if cfg.num_classes < 1:
            raise ConfigError("--num-classes: must be >= 1")
        if labels and cfg.num_classes < max(labels):
            raise ConfigError(f"--num-classes {cfg.num_classes} is smaller than the label "
                              f"map's largest id {max(labels)}")
        return cfg.num_classes
    return max(labels) if labels else None

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

from launcher import contract
from trainer.pipeline_config import PipelineConfig, PipelineConfigError
from trainer.pipeline_config import parse as parse_pipeline


class ConfigError(Exception):
    """A user error in the trainer's configuration: exit code 1."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs."""

    run_dir: str
    train: list[str]
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
    warmup_steps: int = 0
    log_every: int = 10
    mixed_precision: bool | None = None
    export: bool = True
    deterministic_input: bool = False
    freeze_batchnorm: bool = False
    seed: int = 0


# Built-in defaults, used where neither a flag nor the pipeline.config sets a value.
DEFAULTS: dict[str, Any] = {
    "fine_tune_type": "detection", "image_size": 256, "steps": 1000, "global_batch_size": 8,
    "learning_rate": 0.02, "warmup_steps": 0, "checkpoint_every": 100, "keep_checkpoints": 3,
    "log_every": 10,
}


def parser() -> argparse.ArgumentParser:
    """Flags of ``python -m trainer``; the launcher renders them (``launcher.render``)."""
    p = argparse.ArgumentParser(prog="python -m trainer",
                                description="Fine-tune RetinaNet under MultiWorkerMirroredStrategy")
    p.add_argument("--run-dir", default=None, help=f"default: ${contract.ENV_RUN_DIR}")
    p.add_argument("--pipeline-config", default=None,
                   help="OD-API pipeline.config; flags override its fields")
    p.add_argument("--checkpoint", default=None, help="fine-tune from here; none: from scratch")
    p.add_argument("--fine-tune-type", choices=["classification", "detection", "full"])
    p.add_argument("--backbone", choices=["mobilenetv2", "resnet50"], default="mobilenetv2")
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
    return p


def _from_pipeline(pipeline: PipelineConfig | None) -> dict[str, Any]:
    """The pipeline.config's values under our names (only those it sets)."""
    if pipeline is None:
        return {}
    checkpoint = pipeline.fine_tune_checkpoint
    if checkpoint and "PATH_TO_BE_CONFIGURED" in checkpoint:
        checkpoint = None
    values = {
        "num_classes": pipeline.num_classes, "image_size": pipeline.image_size,
        "global_batch_size": pipeline.batch_size, "steps": pipeline.num_steps,
        "checkpoint": checkpoint, "fine_tune_type": pipeline.fine_tune_checkpoint_type,
        "learning_rate": (float(f"{pipeline.learning_rate:.7g}")
                          if pipeline.learning_rate is not None else None),
        "warmup_steps": pipeline.warmup_steps, "label_map": pipeline.label_map_path,
        "train": pipeline.train_input_paths, "eval": pipeline.eval_input_paths,
        "freeze_batchnorm": pipeline.freeze_batchnorm,
    }
    return {k: v for k, v in values.items() if v not in (None, [])}


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
    merged = {**DEFAULTS, **_from_pipeline(pipeline), **flags}
    merged["run_dir"] = merged.get("run_dir") or env.get(contract.ENV_RUN_DIR)
    if not merged["run_dir"]:
        raise ConfigError(f"--run-dir: required (or set {contract.ENV_RUN_DIR})")
    if not merged.get("train"):
        raise ConfigError("--train: at least one TFRecord glob is required")
    for name in ("steps", "global_batch_size", "checkpoint_every", "keep_checkpoints",
                 "log_every", "image_size"):
        if merged[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1")
    if merged["image_size"] % 32:
        raise ConfigError("--image-size: must be a multiple of 32")
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
    """Model classes including background (Model Garden counts it): max label id + 1."""
    if labels is None:
        if cfg.num_classes is None:
            raise ConfigError("--num-classes or --label-map is required")
        return cfg.num_classes + 1
    if cfg.num_classes is not None and cfg.num_classes != len(labels):
        raise ConfigError(f"--num-classes {cfg.num_classes} does not match the label map's "
                          f"{len(labels)} classes")
    return max(labels) + 1

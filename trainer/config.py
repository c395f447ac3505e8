"""The trainer's configuration: command-line flags (rendered by the launcher) and the label map.

The label map is a ``StringIntLabelMap`` in protobuf text format, parsed with protobuf's own
``text_format`` against a minimal schema, so comments, quoting styles and unknown fields
(``display_name``, keypoints, ...) behave exactly as in the Object Detection API.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import field, make_dataclass
from typing import Any

from trainer import contract, rules
from trainer.errors import TrainerError
from trainer.fields import BY_NAME, FIELDS, Field
from trainer.pipeline.config import PipelineConfig, PipelineConfigError
from trainer.pipeline.config import parse as parse_pipeline


class ConfigError(TrainerError):
    """A user error in the trainer's configuration: exit code 1."""


# What only a pipeline.config sets (no flag): name, type, default.
_FROM_PIPELINE_ONLY: tuple[tuple[str, Any, Any], ...] = (
    ("lr_schedule", str, "cosine"),  # cosine (decays to 0 over total_steps) | constant
    ("warmup_learning_rate", float, 0.0),  # where the linear warm-up starts
    ("total_steps", int | None, None),  # of the cosine decay, warm-up included; None: steps
    ("momentum", float, 0.9),
    ("clip_norm", float, 10.0),  # global gradient norm; 0: none
    ("horizontal_flip", bool, True),
    # mixed precision (where it is on: GPUs) in bfloat16 rather than float16
    ("bfloat16", bool, False),
    ("eval_batch_size", int | None, None),  # None: the global batch size
    # Model Garden task-config path -> value; empty: Model Garden's own settings (or the preset's)
    ("model_garden", dict[str, Any], None),
    # "backbone" | "decoder" | "head" -> {activation, norm_momentum, norm_epsilon, l2}
    ("layer_hyperparams", dict[str, dict[str, Any]], None),
    # what Model Garden does its own way although the config says otherwise, one line each
    ("differences", list[str], None),
    # the ssd block, read for a family that is the OD API's own SSD (``od_api_native``)
    ("ssd", Any, None),
    # that family's augmentations: (name, settings) in the config's order
    ("augmentations", tuple, ()),
)


def _dataclass_field(name: str, type_: Any, default: Any) -> tuple[str, Any, Any]:
    if default is None and type_ in (list[str], dict[str, Any], dict[str, dict[str, Any]]):
        factory = list if type_ == list[str] else dict
        return name, type_, field(default_factory=factory)
    return name, type_, field(default=default)


def _annotation(f: Field) -> Any:
    return list[f.type] if f.repeated else (f.type | None if f.default is None else f.type)


# Everything one training run needs: every field of ``trainer.fields``, what only a
# pipeline.config sets, and ``sources``: where each value came from ("flag", "default" or
# "pipeline.config:<field path>").
TrainConfig = make_dataclass("TrainConfig", [
    *(_dataclass_field(f.name, _annotation(f), None if f.repeated else f.default)
      for f in FIELDS),
    *(_dataclass_field(*extra) for extra in _FROM_PIPELINE_ONLY),
    ("sources", dict[str, str], field(default_factory=dict)),
], frozen=True)
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = "Everything one training run needs (``trainer.fields``, and what only a " \
    "pipeline.config sets)."

# Built-in defaults, used where neither a flag nor the pipeline.config sets a value.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in FIELDS if not f.repeated}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``ConfigError`` line, not a usage page."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"command line: {message}")


def parser() -> argparse.ArgumentParser:
    """Flags of ``python -m trainer``, one per field of ``trainer.fields``; the launcher renders
    them (``trainer.fields.to_args``)."""
    p = _Parser(prog="python -m trainer",
                description="Fine-tune a detector or a Keras model under "
                            "MultiWorkerMirroredStrategy")
    groups = {None: p, "detection": p.add_argument_group("detection task"),
              "keras": p.add_argument_group("keras task")}
    for f in FIELDS:
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": _help(f)}
        if f.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = f.type
            kwargs["choices"] = f.options()
            if f.repeated:
                kwargs["action"] = "append"
        groups[f.task].add_argument(f.flag, **kwargs)
    return p


def _help(f: Field) -> str:
    parts = [f.help]
    if f.default is not None and f.type is not bool:
        parts.append(f"default {f.default}")
    if f.spec:
        parts.append(f"spec: {f.spec}")
    return "; ".join(parts)


class _TrainerNames:
    """Fields in the trainer's messages: the flag with its spec path, or the pipeline.config
    field a value came from."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    def field(self, name: str) -> str:
        source = self.sources.get(name, "")
        if source.startswith("pipeline.config:"):
            return f"pipeline.config {source.removeprefix('pipeline.config:')}"
        return BY_NAME[name].label()

    def setting(self, name: str, value: Any) -> str:
        return f"{BY_NAME[name].flag} {value}"


def field_name(cfg: TrainConfig, name: str) -> str:
    """How a message names where ``cfg``'s value of field ``name`` came from: the
    pipeline.config field (``pipeline.config train_config.fine_tune_checkpoint``), else the
    flag with its spec path."""
    return _TrainerNames(cfg.sources).field(name)


def _from_pipeline(pipeline: PipelineConfig | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The pipeline.config's values under our names (only those it sets), and where each
    came from (``pipeline.config:<field path>``)."""
    if pipeline is None:
        return {}, {}
    ours_to_theirs = {f.name: f.pipeline for f in FIELDS if f.pipeline}
    ours_to_theirs.update({name: name for name, _, _ in _FROM_PIPELINE_ONLY})
    values, sources = {}, {}
    for ours, theirs in ours_to_theirs.items():
        value = getattr(pipeline, theirs)
        if value not in (None, [], {}):
            values[ours] = value
            sources[ours] = f"pipeline.config:{pipeline.sources.get(theirs, theirs)}"
    for name, path in pipeline.sources.items():
        if name.startswith(("model_garden.", "layer_hyperparams.")):
            sources[name] = f"pipeline.config:{path}"
    return values, sources


def _placeholders(values: dict[str, Any], names: _TrainerNames) -> None:
    """The zoo configs' PATH_TO_BE_CONFIGURED, left in a value nothing overrides."""
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "PATH_TO_BE_CONFIGURED" in v for v in items):
            raise ConfigError(f"{names.field(name)} is {items[0]!r}: set it in the config or "
                              f"give {BY_NAME[name].label()}")


def _bounds(merged: dict[str, Any], names: _TrainerNames) -> None:
    for f in FIELDS:
        problem = f.bounds_problem(merged.get(f.name))
        if problem:
            raise ConfigError(f"{names.field(f.name)}: {problem}")


def _cosine_fits(merged: dict[str, Any], names: _TrainerNames) -> None:
    """A decay length from the config that does not fit this run's steps is refused: the
    cosine would not decay as written."""
    total, steps = merged.get("total_steps"), merged["steps"]
    if total is not None and merged.get("lr_schedule", "cosine") == "cosine" and total != steps:
        where = names.sources.get("total_steps", "").removeprefix("pipeline.config:")
        raise ConfigError(f"cosine_decay_learning_rate.total_steps {total} ({where}) differs "
                          f"from the run's {steps} steps ({names.field('steps')}): make them "
                          "equal in the config, or drop total_steps to decay over the run's "
                          "steps")


def from_args(argv: list[str], env: dict[str, str],
              read_text: Callable[[str], str] | None = None) -> TrainConfig:
    """Flags, over the pipeline.config (if any, read with ``read_text``), over the defaults."""
    ns = parser().parse_args(argv)
    pipeline = None
    if ns.pipeline_config:
        if read_text is None:
            raise ConfigError("--pipeline-config: no way to read it")
        from trainer.detection import families

        # No family given: the file decides (an ssd block is the OD API's SSD).
        native = None if ns.family is None else (
            ns.family in families.names() and families.get(ns.family).od_api_native)
        try:
            pipeline = parse_pipeline(read_text(ns.pipeline_config), ns.pipeline_config,
                                      native=native)
        except PipelineConfigError as err:
            raise ConfigError(f"--pipeline-config: {err}") from None
    flags = {k: v for k, v in vars(ns).items() if v is not None}
    from_pipeline, sources = _from_pipeline(pipeline)
    sources.update({k: "flag" for k in flags})
    names = _TrainerNames(sources)
    merged = {**DEFAULTS, **from_pipeline, **flags}
    _placeholders(merged, names)
    merged["run_dir"] = merged.get("run_dir") or env.get(contract.ENV_RUN_DIR)
    if not merged["run_dir"]:
        raise ConfigError(f"--run-dir: required (or set {contract.ENV_RUN_DIR})")
    if not merged.get("train"):
        raise ConfigError(f"{BY_NAME['train'].label()}: at least one TFRecord glob is required")
    _bounds(merged, names)
    try:
        rules.check(merged, set(flags), names)
    except rules.RuleError as err:
        raise ConfigError(f"{names.field(err.field)}: {err.message}") from None
    _cosine_fits(merged, names)
    merged["sources"] = {**{k: sources.get(k, "default") for k in merged},
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

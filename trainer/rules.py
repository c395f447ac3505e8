"""The rules that span several training fields, written once: ``launcher validate`` runs them on
the spec (naming spec paths), the trainer on its flags and pipeline.config (naming the flag, or
the config field a value came from). Pure Python: no TensorFlow.

A rule sees ``values`` (field name -> value; None where unknown yet, e.g. left to a
pipeline.config the spec does not read) and ``given`` (the names the user set), and raises
``RuleError`` naming the field to change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from trainer.errors import TrainerError
from trainer.fields import BY_NAME, FIELDS
from trainer.text import shown


class RuleError(TrainerError):
    """A rule a field breaks: ``field`` (a field name), ``index`` (of a list item) and why."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        self.field, self.message, self.index = field, message, index
        super().__init__(f"{field}: {message}")


class Names(Protocol):
    """How one side names fields in its messages."""

    def field(self, name: str) -> str:
        """The field ``name`` as the user wrote it (a spec path, a flag)."""

    def setting(self, name: str, value: Any) -> str:
        """The field set to ``value`` (``model.task: keras``, ``--task keras``)."""


@dataclass(frozen=True)
class Context:
    """What every rule reads."""

    values: Mapping[str, Any]
    given: frozenset[str]
    names: Names


def _task_fields(c: Context) -> None:
    task = c.values.get("task")
    for field in FIELDS:
        if field.task and field.task != task and field.name in c.given:
            why = f" ({field.only_why})" if field.only_why else ""
            raise RuleError(field.name, f"only with {c.names.setting('task', field.task)}{why}")


def _one_way_to_freeze(c: Context) -> None:
    ways = ("trainable_layers", "freeze_until", "freeze_patterns")
    chosen = [name for name in ways if name in c.given]
    if len(chosen) > 1:
        listed = ", ".join(c.names.field(name) for name in ways)
        raise RuleError(chosen[1], f"set only one of {listed} (also set: "
                        f"{c.names.field(chosen[0])})")


def _freeze_patterns_compile(c: Context) -> None:
    for i, pattern in enumerate(c.values.get("freeze_patterns") or []):
        try:
            re.compile(pattern)
        except re.error as err:
            raise RuleError("freeze_patterns", f"{shown(pattern)} is not a regular expression "
                            f"({err})", index=i) from None


def _custom_objects_is_a_module(c: Context) -> None:
    module = c.values.get("custom_objects")
    if module is not None and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
        raise RuleError("custom_objects", f"{shown(module)} is not a Python module name (e.g. "
                        "my_layers)")


def _keras_needs_its_model(c: Context) -> None:
    if c.values.get("task") == "keras" and not c.values.get("checkpoint"):
        raise RuleError("checkpoint", f"required with {c.names.setting('task', 'keras')} (the "
                        "exported model: .h5, .keras or a SavedModel directory)")


def _family(c: Context) -> Any:
    """The detector family the values name: the default when unset, None while a
    pipeline.config still decides it (an ssd block means the OD API's SSD)."""
    from trainer.detection import families

    if not c.values.get("family") and c.values.get("pipeline_config"):
        return None
    return families.get(c.values.get("family") or BY_NAME["family"].default)


def _family_fits(c: Context) -> None:
    from trainer.detection import families

    family = _family(c)
    if c.values.get("task") != "detection" or family is None:
        return
    if not family.backbones and "backbone" in c.given:
        raise RuleError("backbone", f"{family.name}'s backbone is {family.own_backbone}: drop "
                        f"{c.names.field('backbone')}")
    preset = c.values.get("model_size")
    if "model_size" in c.given and preset not in family.presets:
        sizes = ", ".join(family.presets)
        raise RuleError("model_size", f"{preset}: {family.name} has only {sizes}"
                        + (f" ({family.own_backbone} sizes it)" if family.od_api_native else ""))
    if family.od_api_native and not c.values.get("pipeline_config"):
        raise RuleError("pipeline_config", f"required by {c.names.setting('family', family.name)}"
                        ": its network is the pipeline.config's ssd block")
    if c.values.get("pipeline_config") and not family.reads_pipeline_config:
        readers = [f.name for f in families.all_families() if f.reads_pipeline_config]
        raise RuleError("pipeline_config", f"a pipeline.config describes an OD-API ssd model "
                        f"({', '.join(readers)}), not {c.names.setting('family', family.name)}: "
                        f"drop {c.names.field('pipeline_config')} and set the model in the "
                        f"other fields, or drop {c.names.field('family')}")


def _image_size_fits(c: Context) -> None:
    """The input size is a multiple of the family's coarsest feature stride (2**max_level, at
    the preset's levels or a pipeline.config's)."""
    size = c.values.get("image_size")
    family = _family(c)
    if c.values.get("task") != "detection" or size is None or family is None:
        return
    preset = c.values.get("model_size") or BY_NAME["model_size"].default
    level = (c.values.get("model_garden") or {}).get("model.max_level")
    network = c.values.get("ssd")
    stride = family.image_stride(preset, level, network)
    if size % stride:
        if network is not None:
            where = "the pipeline.config's FPN"
        elif level is not None:
            where = "the pipeline.config's max_level"
        else:
            where = f"the {preset} {family.name}'s coarsest feature level"
        nearest = stride * max(1, math.floor(size / stride + 0.5))  # a tie: the larger
        raise RuleError("image_size", f"{size} is not a multiple of {stride} (2^"
                        f"{int(math.log2(stride))}, {where}): try {nearest}")


def _warmup_fits(c: Context) -> None:
    warmup, steps = c.values.get("warmup_steps"), c.values.get("steps")
    if warmup and steps is not None and warmup >= steps:
        raise RuleError("warmup_steps", f"{warmup} steps of warm-up are not fewer than the "
                        f"run's {steps} steps ({c.names.field('steps')}): set "
                        f"{c.names.field('warmup_steps')} below the steps")


RULES: tuple[Callable[[Context], None], ...] = (
    _task_fields, _one_way_to_freeze, _freeze_patterns_compile, _custom_objects_is_a_module,
    _keras_needs_its_model, _family_fits, _image_size_fits, _warmup_fits,
)


def check(values: Mapping[str, Any], given: set[str] | frozenset[str], names: Names) -> None:
    """Run every rule; the first broken one raises ``RuleError``."""
    context = Context(values, frozenset(given), names)
    for rule in RULES:
        rule(context)

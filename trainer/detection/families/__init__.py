"""The registry of detector families. Adding one: a package beside these with its ``Family``
(``base.py``) and its task module, and one line in ``_BUILT_IN``; ``docs/trainer.md`` has the
recipe. The spec's ``model.family`` choices, ``launcher demo --family``, the trainer's
``--family`` and the checkpoint's family all come from here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from trainer.detection.families import faster_rcnn, retinanet, ssd, yolo
from trainer.detection.families.base import Family

_BUILT_IN: tuple[Family, ...] = (retinanet.FAMILY, ssd.FAMILY, faster_rcnn.FAMILY, yolo.FAMILY)
# name -> family, default first. Changed only by ``registered``.
_FAMILIES: dict[str, Family] = {family.name: family for family in _BUILT_IN}


def names() -> tuple[str, ...]:
    """The registered families' names, the default first."""
    return tuple(_FAMILIES)


def get(name: str) -> Family:
    """The family of this name (``KeyError`` if none)."""
    return _FAMILIES[name]


def all_families() -> tuple[Family, ...]:
    """Every registered family, the default first."""
    return tuple(_FAMILIES.values())


def of_checkpoint(variable_names: set[str]) -> str | None:
    """The family whose markers a checkpoint's variable names carry; None: none (a backbone)."""
    return next((f.name for f in all_families() if f.holds(variable_names)), None)


@contextlib.contextmanager
def registered(family: Family) -> Iterator[Family]:
    """``family`` is registered for the duration of the block (a plug-in's, or a test's)."""
    if family.name in _FAMILIES:
        raise ValueError(f"a detector family named {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    try:
        yield family
    finally:
        del _FAMILIES[family.name]

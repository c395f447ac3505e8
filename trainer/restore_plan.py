"""What a fine-tune will restore, found before any pod runs: the variables of the model this run
builds (family, pipeline.config, classes), and of the part its fine-tune type restores, against
the checkpoint's variable list (its index file alone: names and shapes, no values).

The rule is the trainer's (``trainer.run.staging.restore``): every variable of the restored part
must be in the checkpoint with its shape, or the run fails; the rest of the model starts anew;
what the checkpoint holds beyond the restored part is left unused. ``launcher validate`` and
``submit`` run ``python -m trainer.restore_plan <the trainer's flags>`` and print its one
line (JSON on stdout: ``summary``, and ``error`` when the checkpoint does not fit)."""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, TrainConfig, field_name
from trainer.fields import BY_NAME

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Keys a fine-tune never restores: the object graph, counters, optimizer state.
BOOKKEEPING = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/", "optimizer/", "step/")


@dataclass(frozen=True)
class RestorePlan:
    """Keys (without ``SUFFIX``) by what the fine-tune does with them."""

    fine_tune_type: str
    restored: tuple[str, ...]
    new: tuple[str, ...]  # the model's, not restored (empty: not known by name)
    new_count: int
    unused: tuple[str, ...]  # the checkpoint's, not restored
    error: str | None = None

    def summary(self) -> str:
        """One line: counts, and where the new and unused variables sit."""
        unused = " (the same keys: they start anew)" if self.unused and \
            self.unused == self.new else _groups(self.unused)
        return (f"{self.fine_tune_type}: {len(self.restored)} variables restored, "
                f"{self.new_count} new{_groups(self.new)}, {len(self.unused)} of the "
                f"checkpoint's unused{unused}")


def _groups(keys: tuple[str, ...], depth: int = 3, shown: int = 3) -> str:
    """``(model/_box_predictor/_prediction_heads: 4, ...)`` for a list of keys."""
    if not keys:
        return ""
    counts = Counter("/".join(k.split("/")[:depth]) for k in keys)
    parts = [f"{group}: {n}" for group, n in counts.most_common(shown)]
    more = len(counts) - shown
    return f" ({', '.join(parts)}{f', {more} more groups' if more > 0 else ''})"


def _variables(prefix: str) -> dict[str, tuple[int, ...]]:
    """A checkpoint's variables by key (``SUFFIX`` dropped), bookkeeping left out."""
    import tensorflow as tf

    return {name.removesuffix(SUFFIX): tuple(shape)
            for name, shape in tf.train.list_variables(prefix)
            if not name.startswith(BOOKKEEPING) and "/.OPTIMIZER_SLOT/" not in name}


def _misfit(part: dict[str, tuple[int, ...]], checkpoint: dict[str, tuple[int, ...]]
            ) -> str | None:
    """The first key of ``part`` the checkpoint lacks or holds in another shape, or None."""
    for key, shape in sorted(part.items()):
        theirs = checkpoint.get(key)
        if theirs is None:
            roots = sorted({k.split("/")[0] for k in checkpoint})
            hint = f" (its variables are under {', '.join(roots[:3])}/)" \
                if key.split("/")[0] not in roots else ""
            return f"{key} is not in the checkpoint{hint}"
        if theirs != shape:
            return f"{key}: shape {list(theirs)} in the checkpoint, {list(shape)} in the model"
    return None


def compare(fine_tune_type: str, parts: dict[str, dict[str, tuple[int, ...]]],
            model: dict[str, tuple[int, ...]], checkpoint: dict[str, tuple[int, ...]],
            where: str) -> RestorePlan:
    """The plan for restoring ``parts[fine_tune_type]`` (keys as the restore names them) of
    ``model`` (keys as the model's own checkpoints name them) from ``checkpoint``; when it
    does not fit, the error names the first misfit and a fine-tune type that fits, if one does."""
    part = parts[fine_tune_type]
    error = None
    misfit = _misfit(part, checkpoint)
    if misfit:
        fits = [t for t, p in parts.items() if t != fine_tune_type and not _misfit(p, checkpoint)]
        # the most the checkpoint restores: full over detection over classification
        hint = f"; it fits fine-tune type {fits[-1]} (set {BY_NAME['fine_tune_type'].spec}: " \
            f"{fits[-1]})" if fits else ""
        error = f"{where}: {misfit}: it does not fit fine-tune type {fine_tune_type}{hint}"
    restored = tuple(sorted(set(part) & set(checkpoint)))
    by_name = set(part) <= set(model)  # the part's keys are the model's own
    new = tuple(sorted(set(model) - set(part))) if by_name else ()
    return RestorePlan(fine_tune_type, restored, new, len(model) - len(part) if by_name
                       else max(0, len(model) - len(restored)),
                       tuple(sorted(set(checkpoint) - set(part))), error)


def _where(cfg: TrainConfig) -> str:
    """How messages name the checkpoint: its field and its URI."""
    return f"{field_name(cfg, 'checkpoint')} {cfg.checkpoint}"


def checkpoint_variables(cfg: TrainConfig, storage: Any, scratch: Path
                         ) -> dict[str, tuple[int, ...]]:
    """``cfg.checkpoint``'s variables, from its index file alone (resolved as the trainer
    resolves it: a prefix, a run directory or a ``checkpoints/`` directory)."""
    from trainer.run import checkpoints
    from trainer.run.storage import StorageError

    where = _where(cfg)
    prefix = checkpoints.resolve_prefix(storage, cfg.checkpoint or "")
    parent, _, stem = prefix.rstrip("/").rpartition("/")
    index = f"{parent}/{stem}.index"
    if not storage.exists(index):
        raise ConfigError(f"{where}: not found (no {index})")
    import tensorflow as tf  # after the cheap checks: a missing file costs no TensorFlow import

    try:
        storage.download_many([index], scratch / "index")
        return _variables(str(scratch / "index" / stem))
    except (StorageError, tf.errors.OpError) as err:
        raise ConfigError(f"{where}: not a readable TensorFlow checkpoint ({err})") from None


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[Any, Any]:
    """The run's detection task and its model, variables made (no strategy, no data)."""
    from trainer.detection import families

    task = families.get(cfg.family).build_task(cfg, num_classes, ",".join(cfg.train))
    model = task.build_model()
    task.warm_up(model, cfg.image_size)
    return task, model


def model_variables(cfg: TrainConfig, num_classes: int, scratch: Path
                    ) -> tuple[dict[str, dict[str, tuple[int, ...]]], dict[str, tuple[int, ...]]]:
    """The keys and shapes of the run's model (no strategy, no data): of the part each
    fine-tune type restores, and of the whole model as its checkpoints name it."""
    import tensorflow as tf

    task, model = build_model(cfg, num_classes)
    parts = {}
    for kind in BY_NAME["fine_tune_type"].options() or ():
        part = tf.train.Checkpoint(**task.fine_tune_items(model, kind))
        parts[kind] = _variables(part.write(str(scratch / kind / "p")))
    whole = tf.train.Checkpoint(**model.checkpoint_items)
    return parts, _variables(whole.write(str(scratch / "whole" / "w")))


def plan(cfg: TrainConfig, labels: dict[int, str] | None, storage: Any,
         scratch: Path) -> RestorePlan:
    """The run's model compared with ``cfg.checkpoint``."""
    from trainer.config import resolve_num_classes

    theirs = checkpoint_variables(cfg, storage, scratch)
    parts, whole = model_variables(cfg, resolve_num_classes(cfg, labels), scratch)
    return compare(cfg.fine_tune_type, parts, whole, theirs, _where(cfg))


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.restore_plan <trainer flags>``: the plan as one JSON object."""
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from trainer import contract
    from trainer.config import from_args, parse_label_map
    from trainer.run.storage import Storage

    storage = Storage()
    try:
        cfg = from_args(sys.argv[1:] if argv is None else argv, dict(os.environ),
                        storage.read_text)
        if cfg.task != "detection" or not cfg.checkpoint:
            print(json.dumps({"summary": None}))
            return 0
        labels = parse_label_map(storage.read_text(cfg.label_map), cfg.label_map) \
            if cfg.label_map else None
        with tempfile.TemporaryDirectory(prefix="restore-plan-") as scratch:
            result = plan(cfg, labels, storage, Path(scratch))
    except ConfigError as err:
        print(json.dumps({"summary": None, "error": str(err)}))
        return contract.EXIT_USER_ERROR
    # a plan that does not fit restores nothing: its error alone is the answer
    print(json.dumps({"summary": None if result.error else result.summary(),
                      "error": result.error}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

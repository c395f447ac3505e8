"""What the trainer would refuse, found before any pod runs: its own reading of the rendered flags,
the pipeline.config and the label map, the records' globs, the Keras model file, and that the run
directory is writable. Without the [trainer] extra (no storage client) this is a warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import contract
from trainer.text import first_line

# A plan builds the model once on the CPU: seconds, but minutes on a loaded machine.
RESTORE_PLAN_TIMEOUT = 300.0


@dataclass
class Check:
    """One pre-submit check: ``level`` is info, warning or error."""

    level: str
    message: str


def refused(checks: list[Check]) -> bool:
    """Whether any of ``checks`` blocks the job."""
    return any(c.level == "error" for c in checks)


def storage_checks(spec: Any, restore: bool = True) -> list[Check]:
    """``input_checks`` and that the run directory is writable."""
    return input_checks(spec, probe_write=True, restore=restore)


def input_checks(spec: Any, probe_write: bool = False, restore: bool = True) -> list[Check]:
    """What the trainer will refuse, found here: its own reading of the rendered flags, the
    pipeline.config and the label map; then that every TFRecord glob matches (and, with
    ``probe_write``, that the run directory is writable), when storage can be reached; last,
    with ``restore`` and nothing refused so far, what the checkpoint restores (seconds: it
    builds the model)."""
    if spec.command is not None:
        return []  # a trainer of the user's own
    try:
        from trainer.config import (
            ConfigError,
            from_args,
            parse_label_map,
            resolve_keras_classes,
            resolve_num_classes,
        )
        from trainer.run.storage import Storage, StorageError
    except ImportError:
        return [Check("warning", "inputs not checked: install the [trainer] extra to check "
                                 "them")]
    from launcher.render import trainer_args

    storage = Storage()
    try:
        cfg = from_args(trainer_args(spec), {contract.ENV_RUN_DIR: spec.job_run_dir},
                        storage.read_text)
        labels = parse_label_map(storage.read_text(cfg.label_map), cfg.label_map) \
            if cfg.label_map else None
        if cfg.task == "keras":
            resolve_keras_classes(cfg, labels)
            problem = _keras_model_problem(storage, cfg.checkpoint or "")
            if problem:
                return [Check("error", f"model.checkpoint: {problem}")]
        else:
            resolve_num_classes(cfg, labels)
        checks = [Check("warning", f"model.pipelineConfig {line}") for line in cfg.differences]
        checks += [Check("error", f"data.train[{i}]: {pattern} matches no file")
                   for i, pattern in enumerate(cfg.train) if not storage.glob(pattern)]
        if probe_write:
            probe = f"{spec.job_run_dir.rstrip('/')}/.launcher-write-check"
            storage.write_text(probe, "ok\n")
            storage.delete(probe)
        if restore and cfg.task == "detection" and cfg.checkpoint and not refused(checks):
            checks += restore_checks(spec)
        return checks
    except (ConfigError, StorageError) as err:
        return [Check("error", f"trainer: {err}")]
    except Exception as err:  # no credentials, no network: say so and let the user decide
        return [Check("warning", f"inputs not checked: {type(err).__name__}: "
                                 f"{first_line(err, 120)}")]


def restore_checks(spec: Any, timeout: float = RESTORE_PLAN_TIMEOUT) -> list[Check]:
    """What the checkpoint restores into the model the job builds, what is new and what is
    left unused, or the first key that does not fit: ``trainer.restore_plan`` in a child
    process, since the launcher never imports TensorFlow."""
    from launcher.render import trainer_args

    command = [sys.executable, "-m", "trainer.restore_plan", *trainer_args(spec)]
    env = {**os.environ, contract.ENV_RUN_DIR: spec.job_run_dir}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [Check("warning", f"restore not checked: no answer in {timeout:.0f} s")]
    result = _last_json(done.stdout)
    if result is None:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [Check("warning", f"restore not checked: the plan failed (exit "
                                 f"{done.returncode}): {tail[:160]}")]
    checks = [Check("info", f"restore: {result['summary']}")] if result.get("summary") else []
    if result.get("error"):
        checks.append(Check("error", result["error"]))
    return checks


def _last_json(text: str) -> dict[str, Any] | None:
    """The JSON object on the last line of ``text``, or None."""
    lines = text.strip().splitlines()
    try:
        value = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _keras_model_problem(storage: Any, uri: str) -> str | None:
    """What the trainer would refuse about a Keras model file, found without TensorFlow: a
    missing file, an unknown format, a Keras 3 file (local files only: no download here)."""
    from trainer.config import ConfigError
    from trainer.keras.model import FORMATS, check_file

    is_file = uri.lower().endswith(tuple(FORMATS))
    if is_file and not storage.glob(uri):
        return f"{uri} not found"
    if not is_file:
        names = {item.rsplit("/", 1)[-1] for item in storage.list_prefix(uri)}
        if not names:
            return f"{uri} not found"
        if "saved_model.pb" not in names:
            return (f"{uri}: neither a .h5 or .keras file nor a SavedModel directory "
                    "(no saved_model.pb)")
        if "keras_metadata.pb" not in names:
            return (f"{uri}: a SavedModel without Keras metadata (keras_metadata.pb): it holds "
                    "no Keras model to fine-tune; save the model with tf-keras' model.save")
    if uri.startswith("gs://"):
        return None
    try:
        check_file(Path(uri), uri)
    except ConfigError as err:
        return str(err).removeprefix("--checkpoint ")
    return None

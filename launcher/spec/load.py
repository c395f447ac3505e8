"""Where a spec comes from: a YAML file, ``--set key=value`` overrides and CLI flags, over the
profile's defaults (``gke``, ``kind``, ``generic``: plain defaults merged under what the user
wrote, so an explicit value always wins), validated into a ``JobSpec``."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from launcher.errors import SpecError
from launcher.spec import useryaml
from launcher.spec.checks import check
from launcher.spec.model import JobSpec
from trainer.text import shown

PROFILES: tuple[str, ...] = ("gke", "kind", "generic")


# Defaults each profile lays under the user's spec (camelCase, as in the YAML file).
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gke": {
        "image": "tf-finetune-trainer:gpu",
        "resources": {"gpus": 1, "accelerator": "nvidia-l4", "cpu": "8", "memory": "32Gi",
                      "shmSize": "16Gi", "scratchSize": "100Gi"},
    },
    "kind": {
        "image": "tf-finetune-trainer:cpu",
        # Side-loaded with `kind load docker-image`: never pull from a registry.
        "imagePullPolicy": "IfNotPresent",
        "resources": {"gpus": 0, "cpu": "1", "memory": "3Gi", "scratchSize": "5Gi"},
        "env": {"STORAGE_EMULATOR_HOST": "http://gcs-emulator.default.svc:4443"},
    },
    "generic": {
        "image": "tf-finetune-trainer:gpu",
        "resources": {"gpus": 0, "cpu": "4", "memory": "16Gi"},
    },
}


MAX_PATH_DEPTH = 8  # the deepest spec field is 4 levels down


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise SpecError(shown(dotted), "is not a valid field path")
    if len(keys) > MAX_PATH_DEPTH:
        raise SpecError(shown(dotted), f"is deeper than any spec field ({len(keys)} levels)")
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SpecError(shown(dotted), f"{shown(key)} is not a mapping")
        node = child
    node[keys[-1]] = value


def apply_sets(raw: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``2`` is an int)."""
    out = copy.deepcopy(raw)
    for item in sets:
        key, sep, text = item.partition("=")
        if any("\ud800" <= c <= "\udfff" for c in item):
            raise SpecError("--set", f"{shown(item)} is not valid Unicode text (undecodable "
                            "bytes in the argument)")
        if not sep or not key:
            raise SpecError("--set", f"{shown(item)} is not key=value")
        try:
            value = useryaml.load(text, f"--set {key.strip()}") if text else ""
        except useryaml.YamlSyntaxError:
            value = text  # not YAML: the plain string
        _set_path(out, key.strip(), value)
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_MSGSPEC_ERROR = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


MAX_MESSAGE = 160  # of a validation message, the value it echoes included


def _spec_error(err: msgspec.ValidationError) -> SpecError:
    """Turn msgspec's message (``Expected `int`, got `str` - at `$.workers```) into a SpecError."""
    match = _MSGSPEC_ERROR.match(str(err))
    assert match is not None  # the pattern matches any text
    message, path = match["msg"], (match["path"] or "").lstrip(".")
    field_ref = re.match(r"Object (contains unknown|missing required) field `([^`]+)`", message)
    if field_ref:
        path = f"{path}.{field_ref[2]}" if path else field_ref[2]
        message = "unknown field" if field_ref[1] == "contains unknown" else "is required"
    elif "matching regex" in message:
        message = "must not contain newlines or control characters"
    else:
        message = message.replace("`", "")
        message = message[0].lower() + message[1:]
    if len(message) > MAX_MESSAGE:  # msgspec echoes a refused enum value whole
        message = message[:MAX_MESSAGE - 3] + "..."
    return SpecError(path or "spec", message)


def build_spec(raw: dict[str, Any], sets: list[str] | None = None,
               overrides: dict[str, Any] | None = None) -> JobSpec:
    """Validate a raw spec mapping into a ``JobSpec`` with profile defaults.

    ``sets`` (``key.path=value`` strings) apply over ``raw``, then ``overrides`` (dotted path to
    value, from CLI flags) over both.
    """
    try:
        return _build_spec(raw, sets, overrides)
    except RecursionError:  # a last resort: useryaml bounds nesting far below the stack
        raise SpecError("spec", "nested too deeply") from None
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes in a flag's value
        raise SpecError("spec", "a value is not valid Unicode text (undecodable bytes in a "
                        "command-line argument)") from None


def _build_spec(raw: dict[str, Any], sets: list[str] | None,
                overrides: dict[str, Any] | None) -> JobSpec:
    if not isinstance(raw, dict):
        raise SpecError("spec", "must be a YAML mapping of fields")
    raw = apply_sets(raw, sets or [])
    for path, value in (overrides or {}).items():
        _set_path(raw, path, value)
    profile = raw.get("profile", "generic")
    if profile not in PROFILES:
        raise SpecError("profile", f"{shown(profile)} is not one of {', '.join(PROFILES)}")
    merged = _deep_merge(PROFILE_DEFAULTS[profile], raw)
    try:
        spec = msgspec.convert(merged, JobSpec, strict=True)
    except msgspec.ValidationError as err:
        raise _spec_error(err) from None
    check(spec)
    return spec


def read_spec_file(path: Path) -> dict[str, Any]:
    """Read a spec file as a mapping; YAML errors become one-line ``SpecError``s."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SpecError("spec", f"cannot read {shown(str(path))}: {err.strerror}") from None
    raw = useryaml.load(useryaml.decode(data, str(path)), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError("spec", f"{path} must hold a YAML mapping of fields")
    return raw


@dataclass(frozen=True)
class SpecSource:
    """Where a spec comes from: an optional file, ``--set`` strings and flag overrides."""

    path: Path | None = None
    sets: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)


def load_spec(source: SpecSource) -> JobSpec:
    """Load and validate a spec: file, then ``--set`` overrides, then flags (later ones win)."""
    raw = read_spec_file(source.path) if source.path is not None else {}
    return build_spec(raw, source.sets, source.overrides)

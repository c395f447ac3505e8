"""Render a ``JobSpec`` into Kubernetes objects through the Jinja templates in ``manifests/``.

Every user value reaches the YAML through the ``q`` filter (a JSON string, which YAML reads back
verbatim) or ``json``, so no value can add keys or documents. The rendered text is parsed here,
and callers get objects, never text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import yaml

from launcher.spec import JobSpec, given_fields, to_data, training_values
from trainer import contract, fields

# Exit codes after which a worker is retried: retryable, peer lost, and death by signal (128+n).
RETRY_CODES: list[int] = [contract.EXIT_RETRYABLE, contract.EXIT_PEER_LOST, *range(128, 256)]


def manifests_dir() -> Path:
    """Templates ship in the wheel as ``launcher/manifests``; in a checkout they sit at the top."""
    packaged = Path(__file__).parent / "manifests"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "manifests"


# Characters a YAML stream may not contain raw (YAML 1.1 "printable" is the complement).
_NOT_YAML_PRINTABLE = re.compile("[\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")


def _quote(value: Any) -> str:
    """A YAML double-quoted scalar that reads back as ``value`` exactly: JSON's escapes are
    YAML's, and characters beyond the BMP stay literal (JSON's surrogate-pair escapes are not
    valid YAML)."""
    if not isinstance(value, str):
        raise TypeError(f"q filter takes strings, got {type(value).__name__}")
    return _flow_json(value)


def _flow_json(value: Any) -> str:
    """JSON as a YAML flow value (``json`` in the templates), with the escapes of ``q``."""
    text = json.dumps(value, ensure_ascii=False)
    return _NOT_YAML_PRINTABLE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(manifests_dir()),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        # Compiling the templates is a third of a cold `launcher render`; reuse the bytecode
        # (kept in the per-user temp directory and keyed by template source checksum).
        bytecode_cache=jinja2.FileSystemBytecodeCache(),
    )
    env.filters["q"] = _quote
    env.filters["json"] = _flow_json
    return env


def trainer_args(spec: JobSpec) -> list[str]:
    """Arguments of ``python -m trainer`` for this spec: the run directory and every training
    field the spec sets (``trainer.fields.to_args``: one ``--flag=value`` token each)."""
    values = training_values(spec)
    return fields.to_args({"run_dir": spec.job_run_dir,
                           **{name: values[name] for name in given_fields(values)}})


def _node_selector(spec: JobSpec) -> dict[str, str]:
    selector: dict[str, str] = {}
    if spec.profile == "gke" and spec.resources.gpus:
        selector["cloud.google.com/gke-accelerator"] = spec.resources.accelerator or ""
    selector.update(spec.scheduling.node_selector)
    return selector


def _tolerations(spec: JobSpec) -> list[dict[str, Any]]:
    tolerations = [to_data(t) for t in spec.scheduling.tolerations]
    if spec.resources.gpus and spec.profile == "gke":
        # GKE taints GPU nodes so that only pods asking for GPUs land there.
        gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        if gpu not in tolerations:
            tolerations.append(gpu)
    return tolerations


def _service_account(spec: JobSpec) -> str | None:
    if spec.auth.gcp_service_account:
        return spec.name
    return spec.auth.service_account


def _context(spec: JobSpec) -> dict[str, Any]:
    hosts = contract.worker_hosts(spec.name, spec.workers, spec.port)
    return {
        "spec": spec,
        "c": contract,
        "tf_config": contract.tf_config_template(hosts),
        "retry_codes": RETRY_CODES,
        "command": spec.command if spec.command is not None else ["python", "-m", "trainer"],
        "args": spec.args if spec.args is not None else trainer_args(spec),
        "node_selector": _node_selector(spec),
        "tolerations": _tolerations(spec),
        "service_account": _service_account(spec),
        "ephemeral_storage": _format_bytes(quantity_bytes(spec.resources.scratch_size)
                                           + quantity_bytes(spec.resources.tmp_size)),
    }


_SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(quantity: str) -> int:
    """Bytes of a Kubernetes quantity (``20Gi``, ``500M``, ``1024``)."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kMGT]i?|)", quantity)
    if match is None:
        raise ValueError(f"not a byte quantity: {quantity!r}")
    return int(float(match[1]) * _SUFFIXES[match[2]])


def _format_bytes(count: int) -> str:
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        if count % _SUFFIXES[suffix] == 0:
            return f"{count // _SUFFIXES[suffix]}{suffix}"
    return str(count)


def render(spec: JobSpec) -> list[dict[str, Any]]:
    """All objects of the job, in apply order: ServiceAccount (if any), Service, Job."""
    env = _environment()
    context = _context(spec)
    names = ["service.yaml.j2", "job.yaml.j2"]
    if spec.network_policy:
        names.insert(1, "networkpolicy.yaml.j2")
    if spec.auth.gcp_service_account:
        names.insert(0, "serviceaccount.yaml.j2")
    objects = []
    for name in names:
        text = env.get_template(name).render(context)
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
        if len(docs) != 1 or not isinstance(docs[0], dict):
            raise RuntimeError(f"template {name} must render exactly one object")
        objects.append(docs[0])
    return objects


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Block style like kubectl, except lists of numbers (exit codes) stay on one line."""


def _represent_list(dumper: yaml.BaseDumper, data: list[Any]) -> yaml.Node:
    flow = bool(data) and all(isinstance(x, int) and not isinstance(x, bool) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """A multi-document YAML stream for ``kubectl apply -f -``."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, explicit_start=True, width=100)


def to_json(objects: list[dict[str, Any]]) -> str:
    """A ``v1 List``, as ``kubectl get -o json`` prints several objects."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2) + "\n"


def job_object(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The Job among rendered objects."""
    return next(o for o in objects if o["kind"] == "Job")


def file_name(obj: dict[str, Any], position: int) -> str:
    """File name for ``--output-dir``: apply order first, then kind and name."""
    return f"{position:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"

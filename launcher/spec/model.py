"""The job spec's types: the sections and fields a spec file holds, validated by msgspec.

Field names in YAML are camelCase like Kubernetes objects. The model, data and training sections
are made from the trainer's field table (``trainer.fields``); the others are declared here, each
field with its limits. Every field is documented in ``docs/spec.md`` and in the example written
by ``launcher spec init``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta

from trainer import contract
from trainer.fields import BY_NAME, FIELDS, SECTIONS, Field

# Strings that end up in manifests or command lines: no newlines or control characters (C0, DEL,
# C1) and no lone surrogates (from undecodable command-line bytes), which YAML cannot carry.
Text = Annotated[str, Meta(pattern="^[^\x00-\x1f\x7f-\x9f\ud800-\udfff]*$")]


# Kubernetes stores these fields as int32 or int64; bigger values pass here but not there.
INT32_MAX = 2**31 - 1


INT64_MAX = 2**63 - 1


PositiveInt = Annotated[int, Meta(ge=1, le=INT32_MAX)]


NonNegativeInt = Annotated[int, Meta(ge=0, le=INT32_MAX)]


PositiveInt64 = Annotated[int, Meta(ge=1, le=INT64_MAX)]


Profile = Literal["gke", "kind", "generic"]


class _Model(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, rename="camel",
             frozen=True):
    """Spec sections: camelCase in YAML, unknown fields rejected, immutable once validated."""


class Resources(_Model, kw_only=True):
    """Per-worker resources. ``gpus`` > 0 adds ``nvidia.com/gpu`` limits."""

    gpus: Annotated[int, Meta(ge=0, le=16)] = 0  # GPUs per worker
    accelerator: Text | None = None  # GKE accelerator type, e.g. nvidia-l4
    cpu: Text = "4"  # CPU request per worker
    memory: Text = "16Gi"  # memory request and limit per worker
    shm_size: Text | None = None  # size of /dev/shm (memory emptyDir)
    # Disk per worker (emptyDir size limits; their sum is the ephemeral-storage request/limit):
    scratch_size: Text = "20Gi"  # staged checkpoint and shards, local checkpoints, export
    tmp_size: Text = "1Gi"  # /tmp


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m[1].lower(), camel)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def _annotation(f: Field) -> Any:
    """The spec type of a training field: its bounds and closed choices checked by msgspec
    (the families' choices, registered late, by ``_check_training``)."""
    choices = f.options() if not callable(f.choices) else None
    if choices:
        kind: Any = Literal[choices]  # type: ignore[valid-type]
    elif f.type is str:
        kind = Text
    elif f.type is bool:
        kind = bool
    else:
        bounds: dict[str, Any] = {"le": f.maximum if f.maximum is not None else INT32_MAX}
        if f.minimum is not None:
            bounds["gt" if f.above else "ge"] = f.minimum
        kind = Annotated[f.type, Meta(**bounds)]
    if f.repeated:
        return list[kind]
    return kind | None if f.spec_default is None else kind


def _sections() -> dict[str, type[msgspec.Struct]]:
    """The spec's training sections (model, model.keras, ..., training), made from the field
    table ``trainer.fields`` so that the spec, the trainer's flags and the docs cannot drift."""
    made: dict[str, type[msgspec.Struct]] = {}
    for section in SECTIONS:
        members: list[tuple[str, Any, Any]] = []
        for f in FIELDS:
            parent, _, leaf = (f.spec or "").rpartition(".")
            if parent == section.path:
                default = msgspec.field(default_factory=list) if f.repeated else f.spec_default
                members.append((_snake(leaf), _annotation(f), default))
        for inner in SECTIONS:
            parent, _, leaf = inner.path.rpartition(".")
            if parent == section.path:
                struct = made[inner.path]
                members.append((_snake(leaf), struct | None, None) if inner.optional else
                               (_snake(leaf), struct, msgspec.field(default_factory=struct)))
        made[section.path] = msgspec.defstruct(section.name, members, bases=(_Model,),
                                               module=__name__, namespace={"__doc__": section.doc})
    return made


_SECTIONS = _sections()


KerasFeatures = _SECTIONS["model.keras.features"]


KerasSpec = _SECTIONS["model.keras"]


ModelSpec = _SECTIONS["model"]


DataSpec = _SECTIONS["data"]


Training = _SECTIONS["training"]


class Toleration(_Model, kw_only=True):
    """A Kubernetes toleration."""

    key: Text | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: Text | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int, Meta(ge=-INT64_MAX, le=INT64_MAX)] | None = None


class Scheduling(_Model, kw_only=True):
    """Where and how long the job runs, and how often it is retried."""

    node_selector: dict[str, str] = msgspec.field(default_factory=dict)
    tolerations: list[Toleration] = msgspec.field(default_factory=list)
    queue: Text | None = None  # Kueue LocalQueue name
    priority_class: Text | None = None
    ttl_seconds_after_finished: NonNegativeInt | None = 86400
    active_deadline_seconds: PositiveInt64 | None = None
    retries_per_index: Annotated[int, Meta(ge=0, le=1000)] = 3  # backoffLimitPerIndex
    termination_grace_period_seconds: Annotated[int, Meta(ge=5, le=INT64_MAX)] = 60


class SecretRef(_Model, kw_only=True):
    """One key of an existing Secret in the job's namespace."""

    secret: Text
    key: Text


class Auth(_Model, kw_only=True):
    """GCS credentials: at most one of the three."""

    gcp_service_account: Text | None = None  # Workload Identity: KSA bound to this GCP SA
    service_account: Text | None = None  # an existing Kubernetes ServiceAccount
    key_secret: Text | None = None  # an existing Secret with a key.json entry


class JobSpec(_Model, kw_only=True):
    """A complete, validated fine-tuning job."""

    name: Text  # DNS-1035 label; <name>-<last index> fits 63 characters
    namespace: Text = "default"
    profile: Profile = "generic"
    image: Text
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    workers: Annotated[int, Meta(ge=1, le=1024)] = 2
    port: Annotated[int, Meta(ge=1024, le=65535)] = contract.DEFAULT_PORT
    run_dir: Text  # root of run directories; this job's is <runDir>/<namespace>/<name>
    resources: Resources = msgspec.field(default_factory=Resources)
    model: ModelSpec
    data: DataSpec = msgspec.field(default_factory=DataSpec)
    training: Training = msgspec.field(default_factory=Training)
    scheduling: Scheduling = msgspec.field(default_factory=Scheduling)
    auth: Auth = msgspec.field(default_factory=Auth)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    # Environment variables from existing Secrets (API keys, tracking tokens): only the
    # Secret's name and key are rendered or stored, never the value.
    secret_env: dict[str, SecretRef] = msgspec.field(default_factory=dict)
    # A NetworkPolicy that admits only this job's pods to the workers' port.
    network_policy: bool = True
    command: list[Text] | None = None  # replaces the trainer's command
    args: list[Text] | None = None  # replaces the trainer's arguments

    @property
    def replicas(self) -> int:
        """Synchronous replicas: one per GPU, or one per worker on CPU."""
        return self.workers * max(self.resources.gpus, 1)

    @property
    def job_run_dir(self) -> str:
        """This job's own run directory."""
        return contract.run_path(self.run_dir, self.namespace, self.name)


def training_values(spec: JobSpec) -> dict[str, Any]:
    """The spec's training fields by field name (``trainer.fields``); an unset one has its
    spec default (None where a pipeline.config may set it)."""
    values: dict[str, Any] = {}
    for f in FIELDS:
        if not f.spec:
            continue
        node: Any = spec
        for part in f.spec.split("."):
            node = getattr(node, _snake(part)) if node is not None else None
        values[f.name] = f.spec_default if node is None else node
    return values


def given_fields(values: dict[str, Any]) -> set[str]:
    """The training fields set to something other than their spec default."""
    return {name for name, v in values.items() if v != BY_NAME[name].spec_default}


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec as YAML, as stored in the run directory."""
    return yaml.safe_dump(to_data(spec), sort_keys=False)


def to_data(section: msgspec.Struct) -> Any:
    """A spec (or section) as plain camelCase data, without unset optional fields."""
    return _drop_none(msgspec.to_builtins(section))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value

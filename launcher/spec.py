"""The job spec: a YAML file, ``--set key=value`` overrides and CLI flags, validated into
``JobSpec``.

Field names in YAML are camelCase like Kubernetes objects; every field is documented in
``docs/spec.md`` and in the example written by ``launcher spec init``. Profiles (``gke``, ``kind``,
``generic``) are plain defaults merged under what the user wrote, so an explicit value always wins.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta

from launcher import useryaml
from launcher.errors import SpecError
from trainer import contract, rules
from trainer.fields import BY_NAME, FIELDS, SECTIONS, Field
from trainer.text import shown

Profile = Literal["gke", "kind", "generic"]
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

DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
IMAGE_REF = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?/)?"  # registry[:port]/
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"  # :tag @digest
)
BYTES = re.compile(r"^[1-9][0-9]{0,5}(k|M|G|T|Ki|Mi|Gi|Ti)?$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EMAIL = re.compile(r"^[a-z0-9-]+@[a-z0-9-]+\.iam\.gserviceaccount\.com$")
RESERVED_ENV = {contract.ENV_INDEX, contract.ENV_TF_CONFIG, contract.ENV_JOB_NAME,
                contract.ENV_NUM_WORKERS, contract.ENV_RUN_DIR, contract.ENV_PORT}


def _uri_problem(value: str) -> str | None:
    """Why ``value`` is not a ``gs://bucket/path`` URI (globs allowed) or a local path, or None."""
    if not value:
        return "must not be empty"
    if "$(" in value:
        # The kubelet expands $(VAR) in args and env: pods would use another path than the
        # annotation, spec.yaml, status and purge know.
        return f"{shown(value)} contains $(...), which Kubernetes would expand in the pod"
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", value)
    if scheme is None:
        return None  # a local path, for run-local and tests
    if scheme.group(1) != "gs" or not value.startswith("gs://"):
        return f"{shown(value)} is not a gs://bucket/path URI or a local path"
    bucket = value[len("gs://"):].split("/", 1)[0]
    if not GCS_BUCKET.match(bucket) or ".." in bucket:
        return f"{shown(value)} has an invalid bucket name {shown(bucket)}"
    return None


def qualified_name_ok(key: str) -> bool:
    """A label or taint key: an optional DNS-1123 subdomain prefix (each label at most 63
    characters, 253 in all) and ``/``, then a name of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(
            len(part) <= 63 and DNS1123_LABEL.match(part) for part in prefix.split("."))):
        return False
    return bool(LABEL_NAME.match(name))


def _labels_problem(labels: dict[str, str]) -> str | None:
    for key, val in labels.items():
        if not qualified_name_ok(key):
            return f"{shown(key)} is not a valid label key"
        if len(val) > 63 or not LABEL_VALUE.match(val):
            return f"value {shown(val)} of {shown(key)} is not a valid label value"
    return None


def _env_problem(env: dict[str, str], reserved: set[str]) -> str | None:
    for key, value in env.items():
        if not ENV_NAME.match(key):
            return f"{shown(key)} is not a valid environment variable name"
        if key in reserved:
            return f"{shown(key)} is set by the launcher and cannot be overridden"
        if any("\ud800" <= c <= "\udfff" for c in value):
            return f"value of {shown(key)} is not valid Unicode text"
    return None


def _toleration_problem(t: Toleration) -> str | None:
    """The API server's toleration rules, checked before anything is submitted."""
    if t.key is not None and not qualified_name_ok(t.key):
        return f"key {shown(t.key)} is not a valid label key"
    if not t.key and t.operator != "Exists":
        return "an empty key needs operator Exists"
    if t.operator == "Exists" and t.value:
        return "operator Exists takes no value"
    if t.value is not None and (len(t.value) > 63 or not LABEL_VALUE.match(t.value)):
        return f"value {shown(t.value)} is not a valid label value"
    if t.toleration_seconds is not None and t.effect != "NoExecute":
        return "tolerationSeconds needs effect NoExecute"
    return None


# Strings that end up in manifests or command lines: no newlines or control characters (C0, DEL,
# C1) and no lone surrogates (from undecodable command-line bytes), which YAML cannot carry.
Text = Annotated[str, Meta(pattern="^[^\x00-\x1f\x7f-\x9f\ud800-\udfff]*$")]
# Kubernetes stores these fields as int32 or int64; bigger values pass here but not there.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
PositiveInt = Annotated[int, Meta(ge=1, le=INT32_MAX)]
NonNegativeInt = Annotated[int, Meta(ge=0, le=INT32_MAX)]
PositiveInt64 = Annotated[int, Meta(ge=1, le=INT64_MAX)]


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
    return SpecError(path or "spec", message)


def _check_names(spec: JobSpec) -> None:
    names = [("namespace", spec.namespace), ("scheduling.queue", spec.scheduling.queue),
             ("scheduling.priorityClass", spec.scheduling.priority_class),
             ("auth.serviceAccount", spec.auth.service_account),
             ("auth.keySecret", spec.auth.key_secret)]
    for field_path, value in names:
        if value is not None and (len(value) > 63 or not DNS1123_LABEL.match(value)):
            raise SpecError(field_path, f"{shown(value)} is not a DNS-1123 label (lowercase "
                            "letters, digits, '-', at most 63 characters)")
    if not DNS1035_LABEL.match(spec.name):
        raise SpecError("name", f"{shown(spec.name)} must start with a letter and contain only "
                        "lowercase letters, digits and '-' (DNS-1035 label)")
    longest = f"{spec.name}-{spec.workers - 1}"
    if len(longest) > 63:
        raise SpecError("name", f"too long: worker hostname {shown(longest)} has {len(longest)} "
                        "characters, the limit is 63")


def _check_formats(spec: JobSpec) -> None:
    if not IMAGE_REF.match(spec.image):
        raise SpecError("image", f"{shown(spec.image)} is not a valid image reference")
    res = spec.resources
    for field_path, value in (("resources.cpu", res.cpu), ("resources.memory", res.memory),
                              ("resources.shmSize", res.shm_size)):
        if value is not None and not QUANTITY.match(value):
            raise SpecError(field_path, f"{shown(value)} is not a Kubernetes quantity "
                            "(e.g. 500m, 4, 16Gi)")
    for field_path, value in (("resources.scratchSize", res.scratch_size),
                              ("resources.tmpSize", res.tmp_size)):
        if not BYTES.match(value):
            raise SpecError(field_path, f"{shown(value)} is not a size (e.g. 20Gi, 500Mi)")
    for field_path, uri in _uris(spec):
        problem = _uri_problem(uri)
        if problem:
            raise SpecError(field_path, problem)
    problem = _labels_problem(spec.scheduling.node_selector)
    if problem:
        raise SpecError("scheduling.nodeSelector", problem)
    for i, toleration in enumerate(spec.scheduling.tolerations):
        problem = _toleration_problem(toleration)
        if problem:
            raise SpecError(f"scheduling.tolerations[{i}]", problem)
    accelerator = spec.resources.accelerator
    if accelerator is not None and (len(accelerator) > 63 or not LABEL_VALUE.match(accelerator)):
        raise SpecError("resources.accelerator", f"{shown(accelerator)} is not a valid label "
                        "value (it becomes a node selector)")
    # The pod sets these itself; a second entry of the same name would be ambiguous.
    reserved = RESERVED_ENV | {"HOME"}
    if spec.auth.key_secret:
        reserved.add("GOOGLE_APPLICATION_CREDENTIALS")
    problem = _env_problem(spec.env, reserved)
    if problem:
        raise SpecError("env", problem)
    _check_secret_env(spec, reserved)


def _check_secret_env(spec: JobSpec, reserved: set[str]) -> None:
    problem = _env_problem({name: "" for name in spec.secret_env}, reserved)
    if problem:
        raise SpecError("secretEnv", problem)
    for name, ref in spec.secret_env.items():
        if name in spec.env:
            raise SpecError(f"secretEnv.{name}", "is also set in env; set it in one place")
        if len(ref.secret) > 253 or not all(DNS1123_LABEL.match(p) for p in ref.secret.split(".")):
            raise SpecError(f"secretEnv.{name}.secret", f"{shown(ref.secret)} is not a valid "
                            "Secret name")
        if not SECRET_KEY.match(ref.key):
            raise SpecError(f"secretEnv.{name}.key", f"{shown(ref.key)} is not a valid Secret key")


def image_warnings(spec: JobSpec) -> list[str]:
    """Why the image reference may not run the same code twice; empty when it is pinned."""
    if "@sha256:" in spec.image:
        return []
    last = spec.image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    if tag is None:
        return [f"image: {shown(spec.image)} has no tag (Kubernetes pulls :latest); pin a tag, "
                "better a digest (@sha256:...)"]
    if tag == "latest":
        return [f"image: {shown(spec.image)} uses the mutable tag :latest; pin a version, "
                "better a digest (@sha256:...)"]
    return []


def _cross_checks(spec: JobSpec) -> None:
    """Formats and rules that span several fields; each error names the field to change."""
    if spec.command is None and not spec.model.pipeline_config:
        if not spec.model.checkpoint:
            raise SpecError("model.checkpoint", "is required (or model.pipelineConfig with "
                            "train_config.fine_tune_checkpoint)")
        if not spec.data.train:
            raise SpecError("data.train", "is required (or model.pipelineConfig with "
                            "train_input_reader input_path)")
    _check_names(spec)
    _check_formats(spec)
    _check_training(spec)
    if spec.profile == "kind":
        if spec.resources.gpus:
            raise SpecError("resources.gpus", "the kind profile runs on CPU only; set 0")
        if spec.resources.accelerator:
            raise SpecError("resources.accelerator", "the kind profile has no accelerators")
    if spec.profile == "gke":
        if spec.resources.gpus and not spec.resources.accelerator:
            raise SpecError("resources.accelerator", "required on GKE when gpus > 0")
        for field, uri in _uris(spec):
            if not uri.startswith("gs://"):
                raise SpecError(field, f"{shown(uri)}: pods on GKE cannot read local paths; use gs://")
    if spec.resources.accelerator and not spec.resources.gpus:
        raise SpecError("resources.accelerator", "set only together with gpus > 0")
    batch = spec.training.global_batch_size
    if batch is not None and batch % spec.replicas:
        raise SpecError("training.globalBatchSize",
                        f"{batch} is not divisible by the {spec.replicas} replicas "
                        f"({spec.workers} workers x {max(spec.resources.gpus, 1)})")
    auth = spec.auth
    if sum(x is not None for x in (auth.gcp_service_account, auth.service_account,
                                   auth.key_secret)) > 1:
        raise SpecError("auth", "set at most one of gcpServiceAccount, serviceAccount, keySecret")
    if auth.gcp_service_account and not EMAIL.match(auth.gcp_service_account):
        raise SpecError("auth.gcpServiceAccount",
                        f"{shown(auth.gcp_service_account)} is not "
                        "NAME@PROJECT.iam.gserviceaccount.com")
    if spec.training.checkpoint_every and spec.training.steps and \
            spec.training.checkpoint_every > spec.training.steps:
        raise SpecError("training.checkpointEvery", "is larger than training.steps")


class _SpecNames:
    """Fields in the spec's messages: their spec paths."""

    def field(self, name: str) -> str:
        return BY_NAME[name].spec or name

    def setting(self, name: str, value: Any) -> str:
        return f"{self.field(name)}: {value}"


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


def _check_training(spec: JobSpec) -> None:
    """The rules of ``trainer.rules`` (the trainer runs them too), the family's name, and the
    keras section only with its task."""
    if spec.model.task != "keras" and spec.model.keras is not None:
        raise SpecError("model.keras", "only with model.task: keras")
    values = training_values(spec)
    for f in FIELDS:
        options = f.options() if callable(f.choices) else None
        if options and values[f.name] not in options:
            raise SpecError(f.spec or f.name, f"invalid enum value {shown(values[f.name])} "
                            f"(one of: {', '.join(options)})")
    try:
        rules.check(values, given_fields(values), _SpecNames())
    except rules.RuleError as err:
        path = BY_NAME[err.field].spec or err.field
        raise SpecError(path if err.index is None else f"{path}[{err.index}]",
                        err.message) from None


def _uris(spec: JobSpec) -> list[tuple[str, str]]:
    found = [("runDir", spec.run_dir)]
    for name in ("checkpoint", "pipeline_config", "label_map"):
        value = getattr(spec.model, name)
        if value:
            found.append((f"model.{_camel(name)}", value))
    found += [(f"data.train[{i}]", u) for i, u in enumerate(spec.data.train)]
    found += [(f"data.eval[{i}]", u) for i, u in enumerate(spec.data.eval)]
    return found


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
    _cross_checks(spec)
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


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)

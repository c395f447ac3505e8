"""The rules of a spec beyond its types: names, formats and URIs, the fields that span several
sections, the profiles' own rules, and the training rules the trainer shares
(``trainer.rules``). Each refusal is a ``SpecError`` naming the field to change."""

from __future__ import annotations

import re
from typing import Any

from launcher.errors import SpecError
from launcher.spec.model import JobSpec, Toleration, given_fields, training_values
from trainer import contract, rules
from trainer.fields import BY_NAME, FIELDS
from trainer.text import shown

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
        if "\x00" in value:  # no process environment can hold it
            return f"value of {shown(key)} contains a NUL character"
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


def check(spec: JobSpec) -> None:
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


def _check_training(spec: JobSpec) -> None:
    """The rules of ``trainer.rules`` (the trainer runs them too), the family's name, and the
    keras section only with its task."""
    if spec.model.task != "keras" and spec.model.keras is not None:
        raise SpecError("model.keras", "only with model.task: keras")
    values = training_values(spec)
    for f in FIELDS:
        options = f.options() if callable(f.choices) else None
        if options and values[f.name] is not None and values[f.name] not in options:
            raise SpecError(f.spec or f.name, f"invalid enum value {shown(values[f.name])} "
                            f"(one of: {', '.join(options)})")
    try:
        rules.check(values, given_fields(values), _SpecNames())
    except rules.RuleError as err:
        path = BY_NAME[err.field].spec or err.field
        raise SpecError(path if err.index is None else f"{path}[{err.index}]",
                        err.message) from None


def _uris(spec: JobSpec) -> list[tuple[str, str]]:
    """Every storage URI of the spec, by its field path (a list's items indexed)."""
    found = [("runDir", spec.run_dir)]
    values = training_values(spec)
    for f in FIELDS:
        value = values.get(f.name) if f.uri else None
        if f.repeated:
            found += [(f"{f.spec}[{i}]", item) for i, item in enumerate(value or [])]
        elif value:
            found.append((f.spec or f.name, value))
    return found

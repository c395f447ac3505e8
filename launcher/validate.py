"""Offline validation of rendered objects: the official Kubernetes schemas in strict mode, plus the
cross-field rules those schemas cannot express but the API server (or MWMS) enforces at run time."""

from __future__ import annotations

import json
import re
from typing import Any

from launcher.errors import ManifestError
from trainer import contract

DEFAULT_K8S_VERSION = "1.34"
MIN_K8S_VERSION = (1, 31)  # podFailurePolicy GA; backoffLimitPerIndex and friends are on by default
REQUIRED_LABELS = (contract.LABEL_NAME, contract.LABEL_INSTANCE, contract.LABEL_MANAGED_BY,
                   contract.LABEL_COMPONENT)
SECRET_MARKERS = re.compile(r"PRIVATE KEY-----|\"private_key\"\s*:")


def _ref(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def check_version(version: str) -> str:
    """Normalise ``1.34`` / ``1.34.0`` / ``v1.34`` and check it is one the schemas cover."""
    from kubernetes_validate import utils

    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", version)
    if not match or (int(match[1]), int(match[2])) < MIN_K8S_VERSION:
        raise ManifestError("--k8s-version", f"{version!r} is not a Kubernetes version >= "
                            f"{'.'.join(map(str, MIN_K8S_VERSION))}")
    full = f"{match[1]}.{match[2]}.0"
    if full not in utils.all_versions():
        raise ManifestError("--k8s-version", f"no schemas for {version}; this install has up to "
                            f"{utils.latest_version()}")
    return full


def schema_validate(obj: dict[str, Any], version: str = DEFAULT_K8S_VERSION) -> None:
    """Validate one object against the strict official schema of ``version``."""
    import kubernetes_validate

    full = check_version(version)
    try:
        kubernetes_validate.validate(obj, full, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path) or "(root)"
        raise ManifestError(_ref(obj), f"{path}: {err.message}") from None
    except kubernetes_validate.SchemaNotFoundError as err:
        raise ManifestError(_ref(obj), f"no schema for {err}") from None


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("containers", [])) + list(pod_spec.get("initContainers", []))


def _check_labels(obj: dict[str, Any]) -> None:
    labels = obj.get("metadata", {}).get("labels", {})
    missing = [key for key in REQUIRED_LABELS if key not in labels]
    if missing:
        raise ManifestError(_ref(obj), f"metadata.labels: missing {', '.join(missing)}")


def _check_env(ref: str, container: dict[str, Any]) -> None:
    defined: set[str] = set()
    for var in container.get("env", []):
        value = var.get("value", "")
        if SECRET_MARKERS.search(value):
            raise ManifestError(ref, f"env {var['name']}: holds a secret value; reference a "
                                "Secret instead")
        for used in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value):
            if used not in defined:
                raise ManifestError(ref, f"env {var['name']}: $({used}) is expanded only if "
                                    f"{used} is defined before it")
        defined.add(var["name"])


def _check_job(job: dict[str, Any], services: dict[str, dict[str, Any]], profile: str) -> None:
    ref = _ref(job)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    name = job["metadata"]["name"]
    if spec.get("podFailurePolicy") and pod.get("restartPolicy") != "Never":
        raise ManifestError(ref, "podFailurePolicy requires template.spec.restartPolicy: Never")
    if spec.get("podFailurePolicy") and spec.get("podReplacementPolicy", "Failed") != "Failed":
        raise ManifestError(ref, "podFailurePolicy requires podReplacementPolicy: Failed")
    indexed_only = [k for k in ("backoffLimitPerIndex", "maxFailedIndexes") if k in spec]
    if indexed_only and spec.get("completionMode") != "Indexed":
        raise ManifestError(ref, f"{indexed_only[0]} requires completionMode: Indexed")
    if "maxFailedIndexes" in spec and "backoffLimitPerIndex" not in spec:
        raise ManifestError(ref, "maxFailedIndexes requires backoffLimitPerIndex")
    if spec.get("completions") != spec.get("parallelism"):
        raise ManifestError(ref, "completions and parallelism must be equal: every worker of a "
                            "synchronous job must run at once")
    last = f"{name}-{spec.get('completions', 1) - 1}"
    if len(last) > 63:
        raise ManifestError(ref, f"pod hostname {last!r} is longer than 63 characters")
    subdomain = pod.get("subdomain")
    service = services.get(subdomain or "")
    if service is None:
        raise ManifestError(ref, f"template.spec.subdomain {subdomain!r} names no headless "
                            "Service rendered with the job")
    if service["spec"].get("clusterIP") != "None":
        raise ManifestError(_ref(service), "must be headless (clusterIP: None)")
    if service["spec"].get("selector") != {contract.JOB_NAME_LABEL: name}:
        raise ManifestError(_ref(service), f"selector must be {contract.JOB_NAME_LABEL}={name}")
    names = {c["name"] for c in _containers(pod)}
    for rule in spec.get("podFailurePolicy", {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if codes and codes.get("containerName") not in (None, *names):
            raise ManifestError(ref, f"podFailurePolicy names unknown container "
                                f"{codes['containerName']!r}")
        if codes and codes["operator"] == "In" and 0 in codes["values"]:
            raise ManifestError(ref, "podFailurePolicy: exit code 0 cannot be matched with In")
    for container in _containers(pod):
        _check_env(ref, container)
        if profile == "kind" and _uses_gpu(container):
            raise ManifestError(ref, "the kind profile must not request nvidia.com/gpu")
    if profile == "kind" and "cloud.google.com/gke-accelerator" in pod.get("nodeSelector", {}):
        raise ManifestError(ref, "the kind profile must not select GKE accelerators")


def _uses_gpu(container: dict[str, Any]) -> bool:
    resources = container.get("resources", {})
    return any("nvidia.com/gpu" in resources.get(k, {}) for k in ("requests", "limits"))


# The API server refuses to store an object larger than this (etcd's request limit).
MAX_OBJECT_BYTES = 3 * 2**19  # 1.5 MiB


def _check_size(obj: dict[str, Any]) -> None:
    size = len(json.dumps(obj, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    if size > MAX_OBJECT_BYTES:
        raise ManifestError(_ref(obj), f"is {size:,} bytes; the API server stores at most "
                            "1.5 MiB per object (shorten env values, args or labels)")


def cross_validate(objects: list[dict[str, Any]], profile: str = "generic") -> None:
    """Rules across fields and objects that the schemas miss."""
    services = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "Service"}
    for obj in objects:
        _check_size(obj)
        _check_labels(obj)
        if obj.get("kind") == "Job":
            _check_job(obj, services, profile)


def validate_objects(objects: list[dict[str, Any]], version: str = DEFAULT_K8S_VERSION,
                     profile: str = "generic", schema: bool = True) -> None:
    """Raise ``ManifestError`` on the first object that breaks the schema or a cross-field rule."""
    if schema:
        for obj in objects:
            schema_validate(obj, version)
    cross_validate(objects, profile)

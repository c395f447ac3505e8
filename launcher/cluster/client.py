"""A thin JSON layer over the official kubernetes client: its configuration, authentication and
connection pool, plain dicts in and out (objects as `kubectl get -o json` shows them)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from launcher.errors import LauncherError

APPLY = "application/apply-patch+yaml"
FIELD_MANAGER = "launcher"

# kind -> (API path prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "Job": ("/apis/batch/v1", "jobs"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"),
    "Pod": ("/api/v1", "pods"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Event": ("/api/v1", "events"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
}


class KubeError(LauncherError):
    """An API call failed; ``code`` is the HTTP status (0: not reached)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}" if reason else message)
        self.code = code
        self.reason = reason

    @property
    def forbidden(self) -> bool:
        """The user may not do this (RBAC), as opposed to it being impossible."""
        return self.code == 403


def connect(context: str | None = None, api_client: Any = None) -> Kube:
    """A ``Kube`` from kubeconfig (``context``), in-cluster config, or a given ``ApiClient``."""
    if api_client is not None:
        return Kube(api_client)
    import os

    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            namespace = _incluster_namespace()
        else:
            # KUBECONFIG is read here, not when the client library was imported.
            config_file = os.environ.get("KUBECONFIG")
            config.load_kube_config(config_file=config_file, context=context,
                                    client_configuration=configuration)
            contexts, active = config.list_kube_config_contexts(config_file)
            if context is not None:
                active = next(c for c in contexts if c["name"] == context)
            namespace = (active.get("context") or {}).get("namespace") or "default"
    except (config.ConfigException, OSError, StopIteration) as err:
        raise LauncherError(f"kubeconfig: {err}") from None
    # One attempt, as kubectl makes: urllib3's retries only repeat a refused connection three
    # times and log a warning with a traceback each time.
    configuration.retries = False
    return Kube(client.ApiClient(configuration), namespace)


def _incluster_namespace() -> str:
    from pathlib import Path

    try:
        return Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
    except OSError:
        return "default"


def path(kind: str, namespace: str, name: str | None = None) -> str:
    """The REST path of one object (or the collection, without ``name``)."""
    prefix, plural = RESOURCES[kind]
    base = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


@dataclass
class Kube:
    """JSON requests through an official ``kubernetes.client.ApiClient``."""

    api: Any
    namespace: str = "default"  # the kubeconfig context's namespace: where commands look by default

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    def request(self, method: str, resource_path: str, query: dict[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                raw: bool = False) -> Any:
        """Make one call; raise ``KubeError`` with the server's Status message on failure."""
        from kubernetes.client.exceptions import ApiException

        # Real API servers answer 406 to ``Accept: text/plain``, also for pods/log (which then
        # sends text anyway); ``*/*`` is what kubectl asks for.
        headers = {"Accept": "*/*" if raw else "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        params = [(k, str(v).lower() if isinstance(v, bool) else v)
                  for k, v in (query or {}).items() if v is not None]
        method_, url, headers_, body_, post = self.api.param_serialize(
            method=method, resource_path=resource_path, query_params=params,
            header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(method_, url, header_params=headers_, body=body_,
                                         post_params=post)
            response.read()
        except ApiException as err:
            raise _error(err.status or 0, err.body) from None
        except Exception as err:
            raise self._unreachable(err) from None
        if response.status >= 400:
            raise _error(response.status, response.data)
        data = response.data.decode() if isinstance(response.data, bytes) else response.data
        if raw:
            return data
        return json.loads(data) if data else {}

    def _unreachable(self, err: Exception) -> KubeError:
        """One line for a connection that failed (refused, TLS, DNS, timeout)."""
        import urllib3

        if not isinstance(err, (OSError, urllib3.exceptions.HTTPError)):
            raise err
        text = str(getattr(err, "reason", None) or err)
        text = text.split("Failed to establish a new connection: ")[-1].strip(" )'\"")
        return KubeError(0, "", f"cannot reach the API server {self.server}: "
                                f"{text.splitlines()[0][:200] if text else type(err).__name__}")

    def get_path(self, resource_path: str) -> dict[str, Any] | None:
        """The object at a REST path, or None if it does not exist."""
        try:
            return self.request("GET", resource_path)
        except KubeError as err:
            if err.code == 404:
                return None
            raise

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        return self.get_path(path(kind, namespace, name))

    def list(self, kind: str, namespace: str | None, selector: str | None = None,
             fields: str | None = None) -> list[dict[str, Any]]:
        """Objects of ``kind`` matching label and field selectors; all namespaces when
        ``namespace`` is None."""
        prefix, plural = RESOURCES[kind]
        resource = f"{prefix}/{plural}" if namespace is None else path(kind, namespace)
        return self.request("GET", resource, {"labelSelector": selector,
                                              "fieldSelector": fields}).get("items", [])

    def create(self, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """POST to the object's collection (``generateName`` works here, unlike apply)."""
        meta = obj["metadata"]
        return self.request("POST", path(obj["kind"], meta["namespace"]),
                            {"fieldManager": FIELD_MANAGER, "dryRun": "All" if dry_run else None},
                            body=obj)

    def apply(self, obj: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply as field manager ``launcher`` (force: this tool owns its objects)."""
        meta = obj["metadata"]
        return self.request("PATCH", path(obj["kind"], meta["namespace"], meta["name"]),
                            {"fieldManager": FIELD_MANAGER, "force": True,
                             "dryRun": "All" if dry_run else None},
                            body=obj, content_type=APPLY)

    def delete(self, kind: str, namespace: str, name: str, propagation: str = "Foreground",
               dry_run: bool = False) -> bool:
        """Delete; False if it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if dry_run:
            body["dryRun"] = ["All"]
        try:
            self.request("DELETE", path(kind, namespace, name), body=body)
        except KubeError as err:
            if err.code == 404:
                return False
            raise
        return True

    def namespace_exists(self, namespace: str) -> bool:
        return self.get_path(f"/api/v1/namespaces/{namespace}") is not None

    def nodes(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/nodes").get("items", [])

    def logs(self, namespace: str, pod: str, tail: int | None = None) -> str:
        return self.request("GET", f"{path('Pod', namespace, pod)}/log",
                            {"tailLines": tail}, raw=True)

    def follow_logs(self, namespace: str, pod: str) -> Iterator[str]:
        """Lines of a pod's log as they are written, until the container ends."""
        method, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=f"{path('Pod', namespace, pod)}/log",
            query_params=[("follow", "true")], header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"])
        try:
            response = self.api.rest_client.pool_manager.request(
                method, url, headers=headers, preload_content=False)
        except Exception as err:
            raise self._unreachable(err) from None
        if response.status >= 400:
            raise _error(response.status, response.read())
        buffer = b""
        for chunk in response.stream(4096):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            yield from (line.decode(errors="replace") for line in lines)
        if buffer:
            yield buffer.decode(errors="replace")


def _error(code: int, data: Any) -> KubeError:
    try:
        body = json.loads(data) if data else {}
    except (TypeError, ValueError):
        body = {}
    return KubeError(code, body.get("reason", ""), body.get("message", f"HTTP {code}"))

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
}


class KubeError(LauncherError):
    """An API call failed; ``code`` is the HTTP status (0: not reached)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}" if reason else message)
        self.code = code
        self.reason = reason


def connect(context: str | None = None, api_client: Any = None) -> Kube:
    """A ``Kube`` from kubeconfig (``context``), in-cluster config, or a given ``ApiClient``."""
    if api_client is not None:
        return Kube(api_client)
    import os

    from kubernetes import config

    try:
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            from kubernetes import client

            return Kube(client.ApiClient())
        # KUBECONFIG is read here, not when the client library was imported.
        return Kube(config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"),
                                                  context=context))
    except (config.ConfigException, OSError) as err:
        raise LauncherError(f"kubeconfig: {err}") from None


def path(kind: str, namespace: str, name: str | None = None) -> str:
    """The REST path of one object (or the collection, without ``name``)."""
    prefix, plural = RESOURCES[kind]
    base = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


@dataclass
class Kube:
    """JSON requests through an official ``kubernetes.client.ApiClient``."""

    api: Any

    def request(self, method: str, resource_path: str, query: dict[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                raw: bool = False) -> Any:
        """Make one call; raise ``KubeError`` with the server's Status message on failure."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "text/plain" if raw else "application/json"}
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
        except OSError as err:
            raise KubeError(0, "", f"cannot reach the API server: {err}") from None
        if response.status >= 400:
            raise _error(response.status, response.data)
        data = response.data.decode() if isinstance(response.data, bytes) else response.data
        if raw:
            return data
        return json.loads(data) if data else {}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            return self.request("GET", path(kind, namespace, name))
        except KubeError as err:
            if err.code == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, selector: str | None = None
             ) -> list[dict[str, Any]]:
        """Objects of ``kind`` matching a label selector; all namespaces when ``namespace`` is
        None."""
        prefix, plural = RESOURCES[kind]
        resource = f"{prefix}/{plural}" if namespace is None else path(kind, namespace)
        return self.request("GET", resource, {"labelSelector": selector}).get("items", [])

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
        try:
            self.request("GET", f"/api/v1/namespaces/{namespace}")
        except KubeError as err:
            if err.code == 404:
                return False
            raise
        return True

    def nodes(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/v1/nodes").get("items", [])

    def logs(self, namespace: str, pod: str, tail: int | None = None) -> str:
        return self.request("GET", f"{path('Pod', namespace, pod)}/log",
                            {"tailLines": tail}, raw=True)

    def follow_logs(self, namespace: str, pod: str) -> Iterator[str]:
        """Lines of a pod's log as they are written, until the container ends."""
        method, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=f"{path('Pod', namespace, pod)}/log",
            query_params=[("follow", "true")], header_params={"Accept": "text/plain"},
            auth_settings=["BearerToken"])
        response = self.api.rest_client.pool_manager.request(
            method, url, headers=headers, preload_content=False)
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

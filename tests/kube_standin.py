"""A STAND-IN for the Kubernetes API server, for tests on machines without one.

It implements only the REST calls the launcher makes (server-side apply PATCH with fieldManager,
GET and LIST with label selectors, DELETE with propagation, pod logs, namespace and node reads) and
answers with objects shaped as the real API answers them (tests check them against the official
schemas). It is not Kubernetes: no controllers run; tests put Job and Pod status in place
themselves. Served over HTTP on 127.0.0.1 and reached through the official kubernetes client.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

NAMESPACED = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[a-z.]+)/v1)/namespaces/(?P<ns>[^/]+)/(?P<res>[a-z]+)"
    r"(?:/(?P<name>[^/]+)(?P<sub>/log|/status)?)?$")
CLUSTER = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[a-z.]+)/v1)/(?P<res>[a-z]+)(?:/(?P<name>[^/]+))?$")
KINDS = {"jobs": "Job", "pods": "Pod", "services": "Service", "serviceaccounts": "ServiceAccount",
         "secrets": "Secret", "nodes": "Node", "namespaces": "Namespace"}


@dataclass
class Call:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


@dataclass
class ApiState:
    """Objects by (resource, namespace, name), and the knobs tests turn."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    # (method, resource) -> (HTTP code, reason) to answer instead, e.g. ("PATCH", "services")
    failures: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    resource_version: int = 1

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as the server would (uid, resourceVersion, timestamps)."""
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-11-29T01:00:00Z")
        self.resource_version += 1
        meta["resourceVersion"] = str(self.resource_version)
        self.objects[(resource, meta.get("namespace", ""), meta["name"])] = obj
        return obj


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``v1 Status`` error body."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels", {})
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    state: ApiState

    def log_message(self, *args: Any) -> None:
        return None

    def _send(self, code: int, body: Any, text: bool = False) -> None:
        data = body.encode() if text else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[dict[str, str], dict[str, list[str]]] | None:
        url = urlparse(self.path)
        match = NAMESPACED.match(url.path) or CLUSTER.match(url.path)
        if match is None:
            self._send(404, status(404, "NotFound", f"no route {url.path}"))
            return None
        parts = {k: v for k, v in match.groupdict().items() if v is not None}
        parts.setdefault("ns", "")
        return parts, parse_qs(url.query)

    def _handle(self, method: str) -> None:
        routed = self._route()
        if routed is None:
            return
        parts, query = routed
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        state = self.state
        with _LOCK:
            state.calls.append(Call(method, urlparse(self.path).path, query,
                                    self.headers.get("Content-Type"), body))
            failure = state.failures.get((method, parts["res"]))
            if failure:
                code, reason = failure
                self._send(code, status(code, reason, f"injected {reason} for {parts['res']}"))
                return
            getattr(self, f"_{method.lower()}")(parts, query, body)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _key(self, parts: dict[str, str]) -> tuple[str, str, str]:
        return parts["res"], parts["ns"], parts.get("name", "")

    def _get(self, parts: dict[str, str], query: dict[str, list[str]], _: Any) -> None:
        state = self.state
        if parts.get("sub") == "/log":
            if ("pods", parts["ns"], parts["name"]) not in state.objects:
                self._send(404, status(404, "NotFound", f'pods "{parts["name"]}" not found'))
                return
            self._send(200, state.logs.get(parts["name"], ""), text=True)
            return
        if "name" in parts:
            obj = state.objects.get(self._key(parts))
            if obj is None:
                self._send(404, status(404, "NotFound",
                                       f'{parts["res"]} "{parts["name"]}" not found'))
            else:
                self._send(200, obj)
            return
        selector = query.get("labelSelector", [None])[0]
        items = [copy.deepcopy(o) for (res, ns, _), o in sorted(state.objects.items())
                 if res == parts["res"] and (not parts["ns"] or ns == parts["ns"])
                 and _matches(o, selector)]
        kind = KINDS.get(parts["res"], parts["res"].title())
        self._send(200, {"kind": f"{kind}List", "apiVersion": "batch/v1" if parts["res"] ==
                         "jobs" else "v1", "metadata": {"resourceVersion":
                                                        str(state.resource_version)},
                         "items": items})

    def _patch(self, parts: dict[str, str], query: dict[str, list[str]], body: Any) -> None:
        if self.headers.get("Content-Type") != "application/apply-patch+yaml":
            self._send(415, status(415, "UnsupportedMediaType", "only server-side apply"))
            return
        if not query.get("fieldManager"):
            self._send(422, status(422, "Invalid", "fieldManager is required for apply"))
            return
        key = self._key(parts)
        existing = self.state.objects.get(key)
        obj = copy.deepcopy(body)
        obj["metadata"]["namespace"] = parts["ns"]
        if existing is not None:
            obj["metadata"]["uid"] = existing["metadata"]["uid"]
            obj["metadata"]["creationTimestamp"] = existing["metadata"]["creationTimestamp"]
            obj.setdefault("status", existing.get("status", {}))
        obj["metadata"]["managedFields"] = [{"manager": query["fieldManager"][0],
                                             "operation": "Apply"}]
        if query.get("dryRun") == ["All"]:
            obj["metadata"].setdefault("uid", str(uuid.uuid4()))
            self._send(200, obj)
            return
        self._send(201 if existing is None else 200, self.state.put(parts["res"], obj))

    def _delete(self, parts: dict[str, str], query: dict[str, list[str]], body: Any) -> None:
        state = self.state
        obj = state.objects.pop(self._key(parts), None)
        if obj is None:
            self._send(404, status(404, "NotFound", f'{parts["res"]} "{parts["name"]}" not found'))
            return
        policy = (body or {}).get("propagationPolicy") or query.get("propagationPolicy",
                                                                   [None])[0]
        if policy in ("Foreground", "Background"):
            uid = obj["metadata"]["uid"]
            for key, other in list(state.objects.items()):
                owners = other.get("metadata", {}).get("ownerReferences", [])
                if any(o.get("uid") == uid for o in owners):
                    del state.objects[key]
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                         "metadata": {}, "details": {"name": parts["name"],
                                                     "kind": parts["res"]}})


_LOCK = threading.Lock()


class StandInApiServer:
    """Serve an ``ApiState`` on 127.0.0.1 in a thread; ``url`` is the API server address."""

    def __init__(self, state: ApiState | None = None) -> None:
        self.state = state or ApiState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StandInApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

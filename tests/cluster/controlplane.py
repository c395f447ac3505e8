"""A real Kubernetes control plane for tests: etcd, kube-apiserver (RBAC), kube-controller-manager
(the Job controller, garbage collector, service-account controller) and kube-scheduler, started
from the binaries in ``$KUBEBUILDER_ASSETS`` (envtest convention), bound to 127.0.0.1 only.

There is no kubelet and no container runtime. ``FakeKubelet`` stands where the fake nodes' status
says their kubelet is: an HTTPS endpoint that serves ``/containerLogs`` (so the API server's real
``pods/log`` proxy has something to reach) and that finishes pod deletions the way a kubelet does.
Tests move pods through their lives with the real ``pods/status`` subresource.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
ADMIN_TOKEN = "admin-token"
GPU_NODE = "fake-gpu-0"
CPU_NODES = ("fake-cpu-0", "fake-cpu-1")
GKE_ACCELERATOR = "nvidia-l4"


def missing_assets() -> str | None:
    """Why the control plane cannot start here, or None when it can."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        return ("KUBEBUILDER_ASSETS is not set: export it from ../shared/k8s/unpack, or get the "
                "binaries with `setup-envtest use 1.36 -p path` (which lacks the controller "
                "manager and scheduler these tests need)")
    absent = [b for b in BINARIES if not (Path(assets) / b).is_file()]
    if absent:
        return f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(absent)}"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- certificates -------------------------------------------------------------------------------

@dataclass
class Pki:
    """A CA, a serving certificate for 127.0.0.1 and a service-account key pair, as files."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def serving(self) -> tuple[Path, Path]:
        return self.dir / "serving.crt", self.dir / "serving.key"

    @property
    def sa(self) -> tuple[Path, Path]:
        return self.dir / "sa.pub", self.dir / "sa.key"

    def create(self) -> Pki:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        def key() -> rsa.RSAPrivateKey:
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)

        def pem_key(k: rsa.RSAPrivateKey) -> bytes:
            return k.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption())

        now = dt.datetime.now(dt.timezone.utc)

        def cert(subject: str, k: rsa.RSAPrivateKey, issuer: Any, signer: Any,
                 ca: bool) -> x509.Certificate:
            import ipaddress

            builder = (x509.CertificateBuilder()
                       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                       .issuer_name(issuer).public_key(k.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(now - dt.timedelta(hours=1))
                       .not_valid_after(now + dt.timedelta(days=2))
                       .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                                      critical=True))
            if not ca:
                builder = builder.add_extension(x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost")]), critical=False)
            return builder.sign(signer, hashes.SHA256())

        self.dir.mkdir(parents=True, exist_ok=True)
        ca_key = key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
        ca_cert = cert("test-ca", ca_key, ca_name, ca_key, ca=True)
        self.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        serving_key = key()
        serving = cert("127.0.0.1", serving_key, ca_name, ca_key, ca=False)
        self.serving[0].write_bytes(serving.public_bytes(serialization.Encoding.PEM))
        self.serving[1].write_bytes(pem_key(serving_key))
        sa_key = key()
        self.sa[1].write_bytes(pem_key(sa_key))
        self.sa[0].write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return self


# --- the fake kubelet ---------------------------------------------------------------------------

class FakeKubelet:
    """What the API server reaches on a node's kubelet port: container logs (plain and followed).
    Tests write log text with ``write`` and end a container's stream with ``close``."""

    def __init__(self, pki: Pki) -> None:
        self._logs: dict[tuple[str, str], str] = {}
        self._closed: set[tuple[str, str]] = set()
        self._cond = threading.Condition()
        self.requests: list[str] = []
        kubelet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                kubelet.requests.append(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                query = urllib.parse.parse_qs(url.query)
                key = (parts[1], parts[2])
                if query.get("follow") == ["true"]:
                    kubelet._stream(self, key)
                    return
                text = kubelet.read(*key)
                if "tailLines" in query:
                    text = "".join(text.splitlines(keepends=True)[-int(query["tailLines"][0]):])
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*pki.serving)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def write(self, namespace: str, pod: str, text: str) -> None:
        with self._cond:
            self._logs[(namespace, pod)] = self._logs.get((namespace, pod), "") + text
            self._cond.notify_all()

    def close(self, namespace: str, pod: str) -> None:
        """The container ended: followers of its log get end-of-stream."""
        with self._cond:
            self._closed.add((namespace, pod))
            self._cond.notify_all()

    def read(self, namespace: str, pod: str) -> str:
        with self._cond:
            return self._logs.get((namespace, pod), "")

    def _stream(self, handler: http.server.BaseHTTPRequestHandler, key: tuple[str, str]) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        sent = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with self._cond:
                self._cond.wait_for(lambda n=sent: len(self._logs.get(key, "")) > n
                                    or key in self._closed, timeout=1)
                text, closed = self._logs.get(key, ""), key in self._closed
            chunk = text[sent:].encode()
            if chunk:
                handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                handler.wfile.flush()
                sent = len(text)
            if closed:
                break
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    def stop(self) -> None:
        self._server.shutdown()


# --- the control plane --------------------------------------------------------------------------

@dataclass
class ControlPlane:
    """One control plane for a test session. ``kubeconfig(token)`` writes a kubeconfig for a
    user of ``tokens`` (admin: ``ADMIN_TOKEN``, in system:masters)."""

    workdir: Path
    assets: Path = field(default_factory=lambda: Path(os.environ["KUBEBUILDER_ASSETS"]))
    tokens: dict[str, tuple[str, str]] = field(default_factory=lambda: {
        ADMIN_TOKEN: ("admin", "system:masters"),
        "edit-token": ("alice", ""),
    })
    processes: list[subprocess.Popen] = field(default_factory=list)
    port: int = 0
    kubelet: FakeKubelet | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ControlPlane:
        self.pki = Pki(self.workdir / "pki").create()
        try:
            self._start_etcd()
            self._start_apiserver()
            admin = self.kubeconfig(ADMIN_TOKEN)
            self._start("kube-controller-manager", [
                f"--kubeconfig={admin}", "--leader-elect=false", "--secure-port=0",
                # No kubelet renews node leases: the node lifecycle controller would taint every
                # fake node NotReady and evict its pods.
                "--controllers=*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle",
                f"--service-account-private-key-file={self.pki.sa[1]}",
                f"--root-ca-file={self.pki.ca}", "--use-service-account-credentials=false",
                "--concurrent-job-syncs=5", "--concurrent-gc-syncs=5"])
            self._start("kube-scheduler", [
                f"--kubeconfig={admin}", "--leader-elect=false", "--secure-port=0",
                "--bind-address=127.0.0.1"])
            self.kubelet = FakeKubelet(self.pki)
            self._create_nodes()
            threading.Thread(target=self._finish_deletions, daemon=True).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _log(self, name: str) -> Any:
        return (self.workdir / f"{name}.log").open("wb")

    def _start(self, binary: str, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen([str(self.assets / binary), *args], stdout=self._log(binary),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self.processes.append(proc)
        return proc

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        data = self.workdir / "etcd"
        self._start("etcd", [
            f"--data-dir={data}", f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}", "--unsafe-no-fsync"])
        self._wait(lambda: _http_ok(f"{self.etcd_url}/health"), "etcd", 30)

    def _start_apiserver(self) -> None:
        self.port = free_port()
        tokens = self.workdir / "tokens.csv"
        tokens.write_text("".join(f'{token},{user},{user},"{groups}"\n'
                                  for token, (user, groups) in self.tokens.items()))
        cert, key = self.pki.serving
        self._start("kube-apiserver", [
            f"--etcd-servers={self.etcd_url}", f"--secure-port={self.port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
            f"--client-ca-file={self.pki.ca}", f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC", "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.pki.sa[0]}",
            f"--service-account-signing-key-file={self.pki.sa[1]}",
            "--kubelet-preferred-address-types=InternalIP", "--allow-privileged=true",
            "--enable-priority-and-fairness=false", "--event-ttl=1h"])
        self._wait(self._ready, "kube-apiserver", 90)

    def _ready(self) -> bool:
        try:
            return self.request("GET", "/readyz")[0] == 200
        except OSError:
            return False

    def _wait(self, ready: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                dead = next(p for p in self.processes if p.poll() is not None)
                name = Path(dead.args[0]).name
                log = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {dead.returncode}:\n{log}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} not ready after {timeout:.0f}s")

    def request(self, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN,
                content_type: str = "application/json") -> tuple[int, Any]:
        """One admin API call; returns (status, decoded JSON or text)."""
        import http.client

        context = ssl.create_default_context(cafile=str(self.pki.ca))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={
                "Authorization": f"Bearer {token}", "Content-Type": content_type,
                "Accept": "application/json"})
            response = conn.getresponse()
            raw = response.read().decode()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw) if raw else {}
        except ValueError:
            return response.status, raw

    def must(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> Any:
        status, data = self.request(method, path, body, content_type=content_type)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {data}")
        return data

    def _create_nodes(self) -> None:
        assert self.kubelet is not None
        for name in (*CPU_NODES, GPU_NODE):
            gpu = name == GPU_NODE
            labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
            spec: dict[str, Any] = {}
            if gpu:
                labels["cloud.google.com/gke-accelerator"] = GKE_ACCELERATOR
                spec["taints"] = [{"key": "nvidia.com/gpu", "value": "present",
                                   "effect": "NoSchedule"}]
            self.must("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                                "metadata": {"name": name, "labels": labels},
                                                "spec": spec})
            capacity = {"cpu": "64", "memory": "512Gi", "pods": "250",
                        "ephemeral-storage": "100Gi"}
            if gpu:
                capacity["nvidia.com/gpu"] = "2"
            now = _now()
            self.must("PATCH", f"/api/v1/nodes/{name}/status", {"status": {
                "capacity": capacity, "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet.port}},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "fake kubelet", "lastHeartbeatTime": now,
                                "lastTransitionTime": now}],
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                             "kubeletVersion": "v1.36.2", "containerRuntimeVersion": "fake://1",
                             "bootID": "", "kernelVersion": "", "kubeProxyVersion": "",
                             "machineID": "", "osImage": "", "systemUUID": ""}}},
                content_type="application/merge-patch+json")
            # The TaintNodesByCondition admission plugin creates nodes tainted not-ready; the
            # node lifecycle controller (off, see above) would lift it once Ready.
            self.must("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": spec.get(
                "taints", [])}}, content_type="application/merge-patch+json")

    def kubeconfig(self, token: str, namespace: str | None = None,
                   name: str = "kubeconfig") -> Path:
        """A kubeconfig file for the user behind ``token`` (context ``envtest``)."""
        import base64

        path = self.workdir / f"{name}-{token}.yaml"
        ca = base64.b64encode(self.pki.ca.read_bytes()).decode()
        context: dict[str, Any] = {"cluster": "envtest", "user": "user"}
        if namespace:
            context["namespace"] = namespace
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
            "clusters": [{"name": "envtest", "cluster": {
                "server": self.url,
                "certificate-authority-data": ca}}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "envtest", "context": context}]}))
        return path

    def create_namespace(self, name: str) -> None:
        """A namespace whose ``default`` ServiceAccount exists (pods cannot be created before)."""
        self.must("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": name}})
        self._wait(lambda: self.request(
            "GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
            f"default ServiceAccount in {name}", 60)

    # --- playing the kubelet ---------------------------------------------------------------------

    def pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The Job's pods, oldest first."""
        items = self.must("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector="
                                 f"batch.kubernetes.io/job-name%3D{job}")["items"]
        return sorted(items, key=lambda p: (p["metadata"]["creationTimestamp"],
                                            p["metadata"]["name"]))

    def wait_pods(self, namespace: str, job: str, count: int, timeout: float = 60,
                  scheduled: bool = True) -> list[dict[str, Any]]:
        """Wait until the Job has ``count`` pods (bound to a node, with ``scheduled``)."""
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            nonlocal found
            found = self.pods(namespace, job)
            return len(found) >= count and (not scheduled or all(
                p["spec"].get("nodeName") for p in found))

        wait_for(ready, f"{count} pods of {namespace}/{job}", timeout)
        return found

    def _set_status(self, namespace: str, pod: str, status: dict[str, Any]) -> None:
        self.must("PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod}/status",
                  {"status": status}, content_type="application/merge-patch+json")

    def run(self, namespace: str, pod: str) -> None:
        """The container started and the pod is ready."""
        now = _now()
        self._set_status(namespace, pod, {
            "phase": "Running", "startTime": now, "podIP": "127.0.0.1",
            "conditions": [_cond(t, "True") for t in
                           ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [_container(True, {"running": {"startedAt": now}})]})

    def wait(self, namespace: str, pod: str, reason: str, message: str = "") -> None:
        """The container cannot start (ErrImagePull, ImagePullBackOff, ...)."""
        self._set_status(namespace, pod, {
            "phase": "Pending", "startTime": _now(),
            "conditions": [_cond("PodScheduled", "True"), _cond("Ready", "False")],
            "containerStatuses": [_container(False, {"waiting": {"reason": reason,
                                                                 "message": message}})]})

    def exit(self, namespace: str, pod: str, code: int, reason: str = "",
             message: str = "", disruption: str = "") -> None:
        """The container ended with ``code``; ``disruption`` adds a DisruptionTarget condition
        (a preemption or eviction) with that reason."""
        now = _now()
        conditions = [_cond("PodScheduled", "True"), _cond("Ready", "False")]
        if disruption:
            conditions.append(_cond("DisruptionTarget", "True", disruption))
        reason = reason or ("Completed" if code == 0 else "Error")
        self._set_status(namespace, pod, {
            "phase": "Succeeded" if code == 0 else "Failed", "conditions": conditions,
            "containerStatuses": [_container(False, {"terminated": {
                "exitCode": code, "reason": reason, "message": message, "startedAt": now,
                "finishedAt": now}})]})
        if self.kubelet:
            self.kubelet.close(namespace, pod)

    def _finish_deletions(self) -> None:
        """What a kubelet does with a pod being deleted: stop it, then remove it for good."""
        while self.processes:
            try:
                status, data = self.request("GET", "/api/v1/pods")
                for pod in data.get("items", []) if status == 200 else []:
                    meta = pod["metadata"]
                    if not meta.get("deletionTimestamp") or not pod["spec"].get("nodeName"):
                        continue
                    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                    if pod["status"].get("phase") not in ("Succeeded", "Failed"):
                        self._set_status(meta["namespace"], meta["name"], {"phase": "Failed"})
                    self.request("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1",
                                                  "gracePeriodSeconds": 0})
            except (OSError, RuntimeError):
                pass
            time.sleep(0.5)

    def stop(self) -> None:
        if self.kubelet:
            self.kubelet.stop()
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()


def wait_for(condition: Any, what: str, timeout: float = 60, interval: float = 0.3) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _cond(kind: str, status: str, reason: str = "") -> dict[str, Any]:
    condition = {"type": kind, "status": status, "lastTransitionTime": _now()}
    if reason:
        condition.update(reason=reason, message=f"fake kubelet: {reason}")
    return condition


def _container(ready: bool, state: dict[str, Any]) -> dict[str, Any]:
    return {"name": "trainer", "image": "trainer:test", "imageID": "", "ready": ready,
            "restartCount": 0, "started": "running" in state, "state": state}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def control_plane(workdir: Path) -> Iterator[ControlPlane]:
    """Start a control plane in ``workdir``, yield it, stop it (by PID) afterwards."""
    plane = ControlPlane(workdir).start()
    try:
        yield plane
    finally:
        plane.stop()
        shutil.rmtree(workdir / "etcd", ignore_errors=True)

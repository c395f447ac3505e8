"""``launcher kind up|load|down``: a local kind cluster with an in-cluster GCS emulator."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from launcher.errors import LauncherError
from launcher.tools import Runner, checked, require, run_tool

DEFAULT_CLUSTER = "launcher"
HOST_EMULATOR = "http://127.0.0.1:4443"  # NodePort 30443, mapped in manifests/kind/cluster.yaml


def context(name: str) -> str:
    """The kubeconfig context kind creates for cluster ``name``."""
    return f"kind-{name}"


def up(name: str = DEFAULT_CLUSTER, runner: Runner = run_tool, timeout: float = 300) -> None:
    """Create the cluster and deploy the GCS emulator; wait until the emulator answers."""
    from launcher.render import manifests_dir

    require("kind")
    manifests = manifests_dir() / "kind"  # shipped in the wheel too: no checkout needed
    checked(["kind", "create", "cluster", "--name", name, "--config",
             str(manifests / "cluster.yaml")], runner)
    import yaml

    from launcher.cluster.client import connect

    kube = connect(context(name))
    for obj in yaml.safe_load_all((manifests / "gcs-emulator.yaml").read_text()):
        kube.apply(obj)
    wait_for_emulator(timeout)


def wait_for_emulator(timeout: float, url: str = HOST_EMULATOR) -> None:
    """Poll the emulator's bucket list until it answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=5):
                return
        except (urllib.error.URLError, OSError) as err:
            if time.monotonic() > deadline:
                raise LauncherError(f"GCS emulator at {url} did not answer: {err}") from None
            time.sleep(2)


def create_bucket(bucket: str, url: str = HOST_EMULATOR) -> None:
    """Create a bucket in the emulator (an existing one is fine)."""
    request = urllib.request.Request(f"{url}/storage/v1/b?project=local", method="POST",
                                     data=json.dumps({"name": bucket}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as err:
        if err.code != 409:
            raise LauncherError(f"creating bucket {bucket}: HTTP {err.code}") from None


def load(image: str, name: str = DEFAULT_CLUSTER, runner: Runner = run_tool) -> None:
    """Side-load a locally built image into every node (the kind profile never pulls)."""
    require("kind")
    checked(["kind", "load", "docker-image", image, "--name", name], runner)


def down(name: str = DEFAULT_CLUSTER, runner: Runner = run_tool) -> None:
    """Delete the cluster."""
    require("kind")
    checked(["kind", "delete", "cluster", "--name", name], runner)

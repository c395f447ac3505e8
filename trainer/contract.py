"""The contract shared by the launcher and the trainer.

Both sides import this module, so it must stay free of heavy imports (no TensorFlow, no Kubernetes
client). It is documented for humans in ``docs/contract.md``; tests enforce that both sides obey it.
"""

from __future__ import annotations

import json

# Exit codes of the trainer process, mapped to Job behaviour by the rendered podFailurePolicy.
EXIT_OK = 0
EXIT_USER_ERROR = 1  # bad config or input: fail the whole Job at once, retrying cannot help
EXIT_RETRYABLE = 42  # preempted (checkpoint saved) or a transient error: replace, counted per index
EXIT_PEER_LOST = 43  # a peer died mid-collective: replace, not counted (the peer's own exit is)

DEFAULT_PORT = 2222
CONTAINER_NAME = "trainer"

# Environment variables set on every worker (pod or local process).
ENV_INDEX = "JOB_COMPLETION_INDEX"
ENV_TF_CONFIG = "TF_CONFIG"
ENV_JOB_NAME = "LAUNCHER_JOB_NAME"
ENV_NUM_WORKERS = "LAUNCHER_NUM_WORKERS"
ENV_RUN_DIR = "LAUNCHER_RUN_DIR"
ENV_PORT = "LAUNCHER_PORT"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

# Labels on every rendered object.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
APP_NAME = "tf-finetune"
MANAGER = "launcher"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RUN_DIR_ANNOTATION = "launcher/run-dir"

# Layout of a run directory (``<runDir>/<namespace>/<job name>/``).
RUN_SPEC = "spec.yaml"
RUN_JOB_RECORD = "job.json"  # the Job that owns the directory: namespace, name, uid
RUN_PIPELINE_CONFIG = "pipeline.config"
RUN_TRAINER_CONFIG = "config.json"
RUN_CHECKPOINTS = "checkpoints"
RUN_CHECKPOINT_POINTER = "checkpoints/LATEST"
RUN_SUMMARIES = "summaries"
RUN_EVAL_METRICS = "eval/metrics.json"
RUN_RECORDS = "records"  # what each worker's scan found: train-worker-<index>.json, eval.json
RUN_EXPORT = "export"

KEY_SECRET_MOUNT = "/var/secrets/google"
KEY_SECRET_FILE = "key.json"


def worker_host(job: str, index: int, port: int = DEFAULT_PORT) -> str:
    """Stable DNS name of worker ``index``: the pod hostname under the job's headless Service."""
    return f"{job}-{index}.{job}:{port}"


def worker_hosts(job: str, workers: int, port: int = DEFAULT_PORT) -> list[str]:
    """All worker addresses, in index order (worker 0 is the chief)."""
    return [worker_host(job, i, port) for i in range(workers)]


def tf_config(hosts: list[str], index: int) -> dict:
    """The ``TF_CONFIG`` that MultiWorkerMirroredStrategy expects for worker ``index``."""
    if not 0 <= index < len(hosts):
        raise ValueError(f"worker index {index} is outside 0..{len(hosts) - 1}")
    return {"cluster": {"worker": list(hosts)}, "task": {"type": "worker", "index": index}}


def tf_config_template(hosts: list[str]) -> str:
    """``TF_CONFIG`` as a pod env value: the index is left to Kubernetes' ``$(VAR)`` expansion."""
    cluster = json.dumps({"worker": list(hosts)}, separators=(",", ":"))
    return f'{{"cluster":{cluster},"task":{{"type":"worker","index":$({ENV_INDEX})}}}}'


def run_path(run_dir: str, *parts: str) -> str:
    """Join a run directory (``gs://`` or local) with layout parts."""
    return "/".join([run_dir.rstrip("/"), *parts])

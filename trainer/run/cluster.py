"""The worker's place in the cluster: ``TF_CONFIG``, waiting for peers, the strategy."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass

from trainer import contract
from trainer.errors import TrainerError

log = logging.getLogger(__name__)


class ClusterError(TrainerError):
    """TF_CONFIG is missing or wrong, or peers never became resolvable."""


@dataclass(frozen=True)
class ClusterInfo:
    """This worker's index and all worker addresses (worker 0 is the chief)."""

    workers: list[str]
    index: int

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def num_workers(self) -> int:
        return len(self.workers)


def from_env(env: dict[str, str] | None = None) -> ClusterInfo:
    """Read ``TF_CONFIG``, or build it from ``JOB_COMPLETION_INDEX`` and the launcher's variables.

    Without either, this is a single worker. ``TF_CONFIG`` is (re)exported so TensorFlow sees it.
    """
    env = dict(os.environ if env is None else env)
    raw = env.get(contract.ENV_TF_CONFIG)
    if raw:
        try:
            config = json.loads(raw)
            workers = list(config["cluster"]["worker"])
            index = int(config["task"]["index"])
            kind = config["task"].get("type", "worker")
        except (ValueError, KeyError, TypeError) as err:
            raise ClusterError(f"TF_CONFIG is not valid: {err}") from None
        if kind != "worker":
            raise ClusterError(f"TF_CONFIG task type {kind!r}: only 'worker' is supported")
    elif contract.ENV_INDEX in env and contract.ENV_JOB_NAME in env:
        index = int(env[contract.ENV_INDEX])
        workers = contract.worker_hosts(env[contract.ENV_JOB_NAME],
                                        int(env.get(contract.ENV_NUM_WORKERS, "1")),
                                        int(env.get(contract.ENV_PORT, contract.DEFAULT_PORT)))
    else:
        return ClusterInfo(workers=[], index=0)
    if not 0 <= index < len(workers):
        raise ClusterError(f"worker index {index} is outside the {len(workers)} workers")
    return ClusterInfo(workers=workers, index=index)


def export_tf_config(info: ClusterInfo) -> None:
    """Make TensorFlow see the cluster (needed when it was built from the index)."""
    if info.workers:
        os.environ[contract.ENV_TF_CONFIG] = json.dumps(contract.tf_config(info.workers,
                                                                           info.index))


def wait_for_peers(info: ClusterInfo, timeout: float = 300.0, interval: float = 2.0) -> None:
    """Wait until every peer's host name resolves: headless Service DNS lags pod start."""
    deadline = time.monotonic() + timeout
    pending = [w.rsplit(":", 1)[0] for w in info.workers]
    while pending:
        still = []
        for host in pending:
            try:
                socket.getaddrinfo(host, None)
            except socket.gaierror:
                still.append(host)
        pending = still
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"peers did not resolve within {timeout:.0f}s: "
                               f"{', '.join(pending)}")
        log.info("waiting for DNS of %s", ", ".join(pending))
        time.sleep(interval)


def make_strategy(info: ClusterInfo):  # -> tf.distribute.Strategy
    """MultiWorkerMirroredStrategy (NCCL on GPU, RING on CPU), or the default for one worker."""
    import tensorflow as tf

    if not info.workers:
        return tf.distribute.get_strategy()
    gpus = tf.config.list_physical_devices("GPU")
    impl = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
            else tf.distribute.experimental.CommunicationImplementation.RING)
    options = tf.distribute.experimental.CommunicationOptions(implementation=impl)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)

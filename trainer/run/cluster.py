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
from trainer.text import first_line

log = logging.getLogger(__name__)


class ClusterError(TrainerError):
    """TF_CONFIG is missing or wrong, or peers never became resolvable."""


class PeerLostError(TrainerError):
    """A peer went away before it said whether its inputs are usable: exit 43 (replace the
    group, not counted: the peer's own exit is)."""

    exit_code = contract.EXIT_PEER_LOST


class PeerRefusedError(TrainerError):
    """A peer refused its inputs: this worker ends with the peer's reason and exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


VERDICT_KEY = "launcher/inputs-verdict/{index}"
# Staging large shards takes long on slow storage; a peer that dies is seen at once anyway
# (the coordination service's heartbeats fail the wait).
VERDICT_TIMEOUT_MS = 6 * 3600 * 1000


def agree(info: ClusterInfo, failure: TrainerError | None) -> None:
    """Before the first collective, every worker says whether its inputs are usable, and all
    end alike: a worker that refused its data (a box-less or truncated shard, a missing file)
    raises its own error, and every peer raises the same line and exit code, instead of dying
    later in a collective with a traceback. A peer gone before it said: ``PeerLostError``."""
    if not info.workers:
        if failure is not None:
            raise failure
        return
    from tensorflow.python.eager import context

    ctx = context.context()
    mine = {"ok": failure is None, "code": getattr(failure, "exit_code", 0),
            "message": str(failure) if failure is not None else ""}
    ctx.set_config_key_value(VERDICT_KEY.format(index=info.index), json.dumps(mine))
    verdicts = {}
    for index in range(info.num_workers):
        try:
            verdicts[index] = json.loads(ctx.get_config_key_value(
                VERDICT_KEY.format(index=index), VERDICT_TIMEOUT_MS))
        except Exception as err:  # the service (the chief) or the peer is gone
            raise PeerLostError(f"worker {index} went away before it reported its inputs: "
                                f"{first_line(err, 200)}") from None
    # Nobody leaves (the chief hosts the service) until every worker has read every verdict.
    try:
        ctx.wait_at_barrier("launcher-inputs-verdict", VERDICT_TIMEOUT_MS)
    except Exception as err:
        raise PeerLostError(f"a worker went away while the inputs were agreed on: "
                            f"{first_line(err, 200)}") from None
    if failure is not None:
        raise failure
    refused = next(((i, v) for i, v in sorted(verdicts.items()) if not v["ok"]), None)
    if refused is not None:
        index, verdict = refused
        raise PeerRefusedError(f"worker {index} refused its inputs: {verdict['message']}",
                               int(verdict["code"]))

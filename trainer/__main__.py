"""``python -m trainer``: the process that runs in every pod (and every run-local worker).

Exit codes follow ``trainer.contract``: 0 done, 1 user error, 42 preempted/retryable, 43 peer lost.
"""

from __future__ import annotations

import logging
import os
import sys

from trainer import contract
from trainer.errors import TrainerError
from trainer.text import first_line


def main(argv: list[str] | None = None) -> int:
    """Configure, join the cluster, train; map failures to the contract's exit codes."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Model Garden is built on tf-keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("trainer")
    from trainer.config import (
        from_args,
        parse_label_map,
        resolve_keras_classes,
        resolve_num_classes,
    )
    from trainer.run import cluster as cluster_mod
    from trainer.run.storage import Storage

    try:
        storage = Storage.from_env(dict(os.environ))
        cfg = from_args(sys.argv[1:] if argv is None else argv, dict(os.environ),
                        storage.read_text)
        info = cluster_mod.from_env()
        labels = None
        if cfg.label_map:
            labels = parse_label_map(storage.read_text(cfg.label_map), cfg.label_map)
        num_classes = (resolve_keras_classes(cfg, labels) if cfg.task == "keras"
                       else resolve_num_classes(cfg, labels))
        if info.workers:
            cluster_mod.wait_for_peers(info)
            cluster_mod.export_tf_config(info)
        from trainer.run.train import train

        code = train(cfg, info, labels, num_classes, storage)
        if info.workers and code == contract.EXIT_OK:
            # Every worker has passed the exit barrier with nothing left to do: leave at once,
            # before TensorFlow's slow teardown gives a peer's coordination client time to
            # report this one as crashed (see trainer.run.train._leave_together).
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except TrainerError as err:
        log.error("error: %s", err)
        return err.exit_code
    except Exception as err:
        if not _transient(err):
            raise
        log.error("error: storage unavailable: %s: %s", type(err).__name__,
                  first_line(err, 300))
        return contract.EXIT_RETRYABLE


def _transient(err: BaseException) -> bool:
    """Infrastructure failures of the storage client that a restart may not meet again: GCS
    answering 429 or 5xx or not at all beyond the retry deadline."""
    try:
        import requests
        from google.api_core import exceptions as api
    except ImportError:
        return False
    return isinstance(err, (api.TooManyRequests, api.ServerError, api.RetryError,
                            requests.ConnectionError, requests.Timeout))


if __name__ == "__main__":
    sys.exit(main())

"""The base of every error the trainer reports as one line. Each module raises its own subclass
(``ConfigError``, ``StorageError``, ...); ``python -m trainer`` turns any of them into its message
on one log line and the subclass's exit code (``trainer.contract``)."""

from __future__ import annotations

from trainer import contract


class TrainerError(Exception):
    """A failure the user can act on; ``exit_code`` says what Kubernetes does next."""

    exit_code: int = contract.EXIT_USER_ERROR  # fail the Job: a restart cannot help


class RetryableError(TrainerError):
    """A failure a restart may not meet again (storage beyond its retry deadline, ...)."""

    exit_code = contract.EXIT_RETRYABLE

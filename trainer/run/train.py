"""The training loop every task shares, with a custom loop under MultiWorkerMirroredStrategy.

The loop is ours (Keras 3 ``model.fit`` crashes under MWMS, keras-team/keras#20585). What differs
between tasks (the model, its losses and input pipeline, evaluation, export) is a ``Job``:
``trainer.detection.job`` (Model Garden RetinaNet) or ``trainer.keras.job`` (an exported Keras
model). Checkpoints are written locally every N steps and published to the run directory in the
background; SIGTERM becomes a coordinated save (``PreemptionCheckpointHandler``), then exit 42.
At the end the chief evaluates, writes ``eval/metrics.json`` and exports.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainer import contract
from trainer.config import ConfigError, TrainConfig, field_name
from trainer.errors import TrainerError
from trainer.run import checkpoints
from trainer.run.cluster import ClusterInfo, agree, make_strategy
from trainer.run.staging import Staged, restore, stage_resume, write_reports
from trainer.run.storage import Storage, StorageError, join
from trainer.text import first_line, tf_message

log = logging.getLogger("trainer")



class Job(Protocol):
    """What a task brings to the loop. Losses must be normalised over the global batch, so that N
    workers with global batch B train exactly like one worker with batch B."""

    log_names: tuple[str, ...]  # of ``replica_step``'s logs: printed and summarised
    eval_summary: tuple[str, ...]  # of ``evaluate``'s metrics: printed

    def stage(self, storage: Storage, cluster: ClusterInfo, scratch: Path,
              resuming: bool) -> Staged:
        """This worker's inputs, checked, and what the run starts from."""

    def build(self, staged: Staged, mixed: bool) -> tuple[Any, dict[str, Any], Any, list[Any]]:
        """Under the strategy's scope: model, its checkpoint items, optimizer, metrics."""

    def fine_tune(self, model: Any, staged: Staged) -> str:
        """Load the start weights (a fresh run, not a resume); a line for the log."""

    def dataset(self, staged: Staged, context: Any) -> Any:
        """This worker's training ``tf.data.Dataset`` of per-replica batches."""

    def replica_step(self, inputs: Any, model: Any, optimizer: Any, metrics: list[Any]) -> Any:
        """One step on one replica: forward, loss, gradients applied; the logs."""

    def evaluate(self, staged: Staged, checkpoint: str) -> dict[str, float]:
        """Chief only: metrics of the checkpoint on the eval files."""

    def export(self, staged: Staged, checkpoint: str, dest: Path) -> Path:
        """Chief only: the checkpoint's model for serving, under ``dest``."""


def make_job(cfg: TrainConfig, labels: dict[int, str] | None, num_classes: int | None) -> Job:
    """The job of ``cfg.task``."""
    if cfg.task == "keras":
        from trainer.keras.job import KerasJob

        return KerasJob(cfg, labels, num_classes)
    from trainer.detection.job import DetectionJob

    assert num_classes is not None
    return DetectionJob(cfg, labels, num_classes)


def _is_peer_loss(err: Any) -> bool:
    """Whether an op failed because a peer went away (this worker is healthy: exit 43): the
    errors a collective raises then, or any op error that names a collective."""
    import tensorflow as tf

    peer_errors = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                   tf.errors.CancelledError, tf.errors.AbortedError)
    return isinstance(err, peer_errors) or "collective" in str(err)[:2000].lower()


@dataclass
class Run:
    """The objects one training run works with."""

    cfg: TrainConfig
    cluster: ClusterInfo
    storage: Storage
    strategy: Any
    job: Job
    model: Any
    optimizer: Any
    metrics: list[Any]
    manager: Any
    publisher: checkpoints.Publisher | None
    scratch: Path
    last_logs: dict[str, float] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def save(self) -> None:
        """Save locally (every worker takes part) and publish from the chief."""
        step = self.step
        self.manager.save(checkpoint_number=step)
        if self.publisher is not None:
            self.publisher.publish(self.manager.latest_checkpoint, step,
                                   {contract.RUN_SUMMARIES: self.scratch / "summaries"})

    def on_preempted(self) -> None:
        """After the handler's coordinated save: finish the upload, then exit 42."""
        step = self.step
        log.warning("preempted: checkpoint of step %d saved; finishing the upload", step)
        if self.publisher is not None and self.manager.latest_checkpoint:
            try:
                self.publisher.publish(self.manager.latest_checkpoint, step)
                self.publisher.close()
            except checkpoints.PublishError as err:
                log.error("error: %s; the restart resumes from an earlier checkpoint", err)
        sys.exit(contract.EXIT_RETRYABLE)


def precision(cfg: TrainConfig, gpus: bool) -> str:
    """The Keras dtype policy: mixed precision on GPUs unless turned off, in bfloat16 where the
    pipeline.config asks (``use_bfloat16``); float32 on CPUs, and for a Keras model (it keeps
    the policy it was saved with)."""
    if not gpus or cfg.mixed_precision is False or cfg.task != "detection":
        if cfg.bfloat16:
            why = "no GPU here" if not gpus else "mixed precision is off"
            log.info("%s: %s: float32", field_name(cfg, "bfloat16"), why)
        return "float32"
    return "mixed_bfloat16" if cfg.bfloat16 else "mixed_float16"


def build(cfg: TrainConfig, cluster: ClusterInfo, job: Job, storage: Storage, staged: Staged,
          scratch: Path, strategy: Any) -> Run:
    """Model, optimizer and checkpoint under ``strategy``, restored from where this run
    starts."""
    import tensorflow as tf
    import tf_keras

    replicas = strategy.num_replicas_in_sync
    if cfg.global_batch_size % replicas:
        raise ConfigError(f"--global-batch-size {cfg.global_batch_size} is not divisible by "
                          f"the {replicas} replicas")
    policy = precision(cfg, bool(tf.config.list_physical_devices("GPU")))
    tf_keras.mixed_precision.set_global_policy(policy)
    with strategy.scope():
        # float16 needs its loss scaled; bfloat16 has float32's range
        model, items, optimizer, metrics = job.build(staged, policy == "mixed_float16")
        ckpt = tf.train.Checkpoint(optimizer=optimizer, **items)
        if staged.resume_checkpoint:
            restore(ckpt, staged.resume_checkpoint,
                    f"checkpoint ckpt-{staged.resume_step} of {cfg.run_dir}")
            log.info("resumed from step %d of %s", staged.resume_step, cfg.run_dir)
        elif staged.init_checkpoint:
            log.info("%s", job.fine_tune(model, staged))
        else:
            log.info("training from scratch")
    local_dir = scratch / ("checkpoints" if cluster.is_chief else "checkpoints-worker")
    manager = tf.train.CheckpointManager(ckpt, str(local_dir), max_to_keep=2)
    publisher = (checkpoints.Publisher(storage, cfg.run_dir, cfg.keep_checkpoints,
                                       staging=scratch / "publish")
                 if cluster.is_chief else None)
    return Run(cfg, cluster, storage, strategy, job, model, optimizer, metrics, manager,
               publisher, scratch)


def train(cfg: TrainConfig, cluster: ClusterInfo, labels: dict[int, str] | None,
          num_classes: int | None, storage: Storage) -> int:
    """Run the job; returns the process exit code (see ``trainer.contract``). The scratch
    directory (staged inputs, local checkpoints, export) is removed on every way out, exit 42
    through ``SystemExit`` included."""
    scratch = Path(tempfile.mkdtemp(prefix="trainer-", dir=os.environ.get("TRAINER_SCRATCH")))
    try:
        code = _train(cfg, cluster, make_job(cfg, labels, num_classes), storage, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if code == contract.EXIT_OK and cluster.workers:
        _leave_together(cluster)  # last: the caller exits straight after it
    return code


def _train(cfg: TrainConfig, cluster: ClusterInfo, job: Job, storage: Storage,
           scratch: Path) -> int:
    import tensorflow as tf

    # Before any other TensorFlow op: MultiWorkerMirroredStrategy configures collectives at
    # start-up, and staging reads records and checkpoints with TensorFlow.
    strategy = make_strategy(cluster)
    resume: tuple[int, str] | None = None
    staged: Staged | None = None
    failure: TrainerError | None = None
    try:
        resume = stage_resume(cfg, storage, cluster, scratch)
        if not _finished(cfg, storage, resume):
            staged = job.stage(storage, cluster, scratch, resuming=resume is not None)
    except TrainerError as err:
        failure = err
    agree(cluster, failure)  # a refusal, this worker's or a peer's, ends every worker alike
    if staged is None:
        # A restart of a finished run (a pod replaced after its work was done): nothing is
        # left to do, and redoing eval and export would only cost time.
        log.info("the run is complete: ckpt-%d, its eval metrics%s are in %s",
                 resume[0] if resume else 0, " and export" if cfg.export else "", cfg.run_dir)
        return contract.EXIT_OK
    if resume is not None:
        staged.resume_step, staged.resume_checkpoint = resume
        if resume[0] > cfg.steps:
            log.warning("the run directory's newest checkpoint is of step %d, past this run's "
                        "%d steps: evaluating and exporting it as it is", resume[0], cfg.steps)
    write_reports(cfg, storage, staged)
    if cluster.is_chief:
        _record_config(cfg, storage)
    run = build(cfg, cluster, job, storage, staged, scratch, strategy)
    dataset = run.strategy.distribute_datasets_from_function(
        lambda ctx: job.dataset(staged, ctx))
    iterator = iter(dataset)

    @tf.function
    def train_step(it: Any) -> Any:
        logs = run.strategy.run(job.replica_step,
                                args=(next(it), run.model, run.optimizer, run.metrics))
        return {k: run.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in logs.items()}

    handler = None
    if cluster.workers:
        handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            run.strategy.cluster_resolver, run.manager,
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=run.on_preempted))
    writer = (tf.summary.create_file_writer(str(scratch / "summaries" / "train"))
              if cluster.is_chief else tf.summary.create_noop_writer())
    step = run.step
    start, start_step = time.monotonic(), step
    try:
        with writer.as_default():
            while step < cfg.steps:
                logs = handler.run(train_step, iterator) if handler else train_step(iterator)
                step = run.step
                if step % cfg.log_every == 0 or step == cfg.steps:
                    run.last_logs = _log_progress(run, step, start_step, start, logs)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    writer.flush()
                    run.save()
        if run.publisher is not None:
            run.publisher.close()
    except tf.errors.DataLossError as err:
        raise ConfigError(f"corrupt TFRecord in this worker's shards: "
                          f"{tf_message(err)}") from None
    except tf.errors.InvalidArgumentError as err:
        if "label map" in str(err):
            raise ConfigError(tf_message(err, 300)) from None
        raise
    except tf.errors.OpError as err:
        if _is_peer_loss(err):
            log.error("a peer was lost at step %d: %s", step, first_line(err))
            return contract.EXIT_PEER_LOST
        raise
    except checkpoints.PublishError as err:
        # At the next checkpoint, not at the end: the restart resumes from the newest
        # published checkpoint instead of training on towards checkpoints nobody can keep.
        log.error("error: %s; stopping at step %d to restart from the newest published "
                  "checkpoint", err, step)
        return contract.EXIT_RETRYABLE
    if cluster.is_chief:
        finish(run, staged)
    if handler is not None:
        _stop_preemption_watchers(handler)
    log.info("done: %d steps, checkpoints in %s", step, checkpoints.checkpoints_dir(cfg.run_dir))
    return contract.EXIT_OK


# Eval and export on the chief take minutes on a large eval set; its peers wait that long.
EXIT_BARRIER_TIMEOUT_MS = 6 * 3600 * 1000


def _stop_preemption_watchers(handler: Any) -> None:
    """Stop the handler's watcher threads (what its ``__del__`` does, only too late): they block
    on the coordination service, and a peer that leaves while they wait is reported by the
    chief as a crash."""
    for name in ("_stop_cluster_wise_termination_watcher_thread",
                 "_stop_poll_termination_signal_thread"):
        stop = getattr(handler, name, None)
        if stop is not None:
            stop()


def _leave_together(cluster: ClusterInfo) -> None:
    """Wait, on the coordination service, until every worker is done (the chief after eval,
    export and cleaning up), so that all leave at once: ``python -m trainer`` exits straight
    after this (``os._exit``). TensorFlow's coordination service has no clean goodbye: a worker
    that leaves while the chief (which hosts the service) lives is reported as crashed ("The
    tasks have crashed ... CoordinationServiceError"), and a worker that outlives the chief
    reports a failed heartbeat; either reads as a failure of a run that succeeded."""
    from tensorflow.python.eager import context

    try:
        context.context().wait_at_barrier("launcher-trainer-exit", EXIT_BARRIER_TIMEOUT_MS)
    except Exception as err:  # the chief failed after training: its own exit code says so
        if not cluster.is_chief:
            log.warning("the chief did not finish cleanly: %s", first_line(err))
            return
        raise


def _record_config(cfg: TrainConfig, storage: Storage) -> None:
    """The settings this run uses, next to its checkpoints."""
    from dataclasses import asdict

    storage.write_text(join(cfg.run_dir, contract.RUN_TRAINER_CONFIG),
                       json.dumps(asdict(cfg), indent=2) + "\n")
    for line in cfg.differences:
        log.warning("pipeline.config %s", line)
    if cfg.pipeline_config:
        storage.write_text(join(cfg.run_dir, contract.RUN_PIPELINE_CONFIG),
                           storage.read_text(cfg.pipeline_config))


def _finished(cfg: TrainConfig, storage: Storage, resume: tuple[int, str] | None) -> bool:
    """Whether the run directory holds the end of this run: a newest checkpoint of its final
    step (or later) and its eval metrics (written last, after the export) of that step, with
    the export when this run asks for one."""
    if resume is None or resume[0] < cfg.steps:
        return False
    step = resume[0]
    try:
        report = json.loads(storage.read_text(join(cfg.run_dir, contract.RUN_EVAL_METRICS)))
    except (StorageError, ValueError):
        return False
    return isinstance(report, dict) and report.get("step") == step and (
        not cfg.export or bool(report.get("export")))


def finish(run: Run, staged: Staged) -> None:
    """Chief only, after the last checkpoint is published: eval metrics and the export of the
    newest checkpoint (this process's last save, else the one the run resumed from: a restart
    after the final checkpoint). The metrics file is written last: it marks the run done."""
    report: dict[str, Any] = {"step": run.step, "train": run.last_logs}
    checkpoint = run.manager.latest_checkpoint or staged.resume_checkpoint
    if checkpoint is None:
        raise ConfigError(f"{run.cfg.run_dir}: no checkpoint to evaluate or export")
    log.info("finishing step %d: %s", run.step, " and ".join(
        what for what, wanted in (("eval", bool(staged.eval_files)), ("export", run.cfg.export))
        if wanted) or "metrics")
    if staged.eval_files:
        import tensorflow as tf

        report["eval"] = run.job.evaluate(staged, checkpoint)
        writer = tf.summary.create_file_writer(str(run.scratch / "summaries" / "eval"))
        with writer.as_default():
            for name, value in report["eval"].items():
                tf.summary.scalar(name, value, step=run.step)
        writer.close()
        log.info("eval at step %d: %s", run.step, " ".join(
            f"{name} {report['eval'].get(name, -1):.4f}" for name in run.job.eval_summary))
    # The train summaries went up with the last checkpoint; only the eval ones are new.
    run.storage.upload_tree(run.scratch / "summaries" / "eval",
                            join(run.cfg.run_dir, contract.RUN_SUMMARIES, "eval"))
    if run.cfg.export:
        local = run.job.export(staged, checkpoint, run.scratch / "export")
        report["export"] = join(run.cfg.run_dir, contract.RUN_EXPORT)
        run.storage.upload_tree(local, report["export"])
        log.info("exported to %s", report["export"])
    run.storage.write_text(join(run.cfg.run_dir, contract.RUN_EVAL_METRICS),
                           json.dumps(report, indent=2) + "\n")


def _log_progress(run: Run, step: int, start_step: int, start: float,
                  logs: dict[str, Any]) -> dict[str, float]:
    import tensorflow as tf

    cfg = run.cfg
    elapsed = max(time.monotonic() - start, 1e-9)
    rate = (step - start_step) / elapsed
    eta = (cfg.steps - step) / rate if rate > 0 else float("inf")
    values = {name: float(logs[name]) for name in run.job.log_names}
    lr = float(tf.convert_to_tensor(run.optimizer.learning_rate))
    examples = rate * cfg.global_batch_size
    named = " ".join(f"{name.removesuffix('_loss') if i else 'loss'} {value:.4f}"
                     for i, (name, value) in enumerate(values.items()))
    log.info("worker %d step %d/%d %s lr %.5f %.1f examples/s ETA %.0fs", run.cluster.index,
             step, cfg.steps, named, lr, examples, eta)
    for name, value in values.items():
        tf.summary.scalar(f"loss/{name}" if name.endswith("loss") else name, value, step=step)
    tf.summary.scalar("learning_rate", lr, step=step)
    tf.summary.scalar("steps_per_second", rate, step=step)
    tf.summary.scalar("examples_per_second", examples, step=step)
    for metric in run.metrics:
        metric.reset_states()  # the next line averages the next interval
    return values

"""Fine-tune Model Garden RetinaNet with a custom loop under MultiWorkerMirroredStrategy.

The loop is ours (Keras 3 ``model.fit`` crashes under MWMS, keras-team/keras#20585); the model and
losses are Model Garden's ``RetinaNetTask``, the input pipeline ``trainer.data``. Checkpoints are
written locally every N steps and published to the run directory in the background; SIGTERM
becomes a coordinated save (``PreemptionCheckpointHandler``), then exit 42. At the end the chief
evaluates (COCO metrics), writes ``eval/metrics.json`` and exports a SavedModel.
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
from typing import Any

from launcher import contract
from launcher.errors import first_line
from trainer import checkpoints
from trainer.cluster import ClusterInfo, make_strategy
from trainer.config import ConfigError, TrainConfig
from trainer.model import build_task
from trainer.storage import Storage, StorageError, is_gcs, join

log = logging.getLogger("trainer")

# Errors of a collective op when a peer goes away: this worker is healthy (exit 43).
PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "CancelledError", "AbortedError")


@dataclass
class Staged:
    """What this worker pulled to local disk."""

    train_files: list[Path]
    eval_files: list[Path] = field(default_factory=list)
    compression: str = ""  # of the train files: "" or "GZIP"
    eval_compression: str = ""
    undecodable: set[int] = field(default_factory=set)  # fingerprints of records to skip
    name_to_id: dict[str, int] | None = None
    init_checkpoint: str | None = None  # local prefix to fine-tune from
    resume_checkpoint: str | None = None  # local prefix of the run's own newest checkpoint
    resume_step: int = 0


def _expand(storage: Storage, patterns: list[str], flag: str) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matched = storage.glob(pattern)
        if not matched:
            raise ConfigError(f"{flag} {pattern}: matches no file")
        files += matched
    return sorted(set(files))


def stage_inputs(cfg: TrainConfig, storage: Storage, cluster: ClusterInfo, scratch: Path,
                 name_to_id: dict[str, int] | None, max_id: int) -> Staged:
    """Pull this worker's TFRecord shards (eval files on the chief), check what they hold, and
    pull the start checkpoint."""
    files = _expand(storage, cfg.train, "--train")
    workers = max(cluster.num_workers, 1)
    if len(files) < workers:
        raise ConfigError(f"--train: {len(files)} TFRecord files for {workers} workers; "
                          "each worker needs at least one shard")
    staged = Staged(_local(storage, files[cluster.index::workers], scratch / "train"))
    staged.compression = _checked(staged, staged.train_files, name_to_id, max_id, cfg,
                                  f"worker {cluster.index} --train")
    if cfg.eval and cluster.is_chief:
        staged.eval_files = _local(storage, _expand(storage, cfg.eval, "--eval"),
                                   scratch / "eval")
        staged.eval_compression = _checked(staged, staged.eval_files, name_to_id, max_id, cfg,
                                           "--eval")
    try:
        resume = checkpoints.stage_resume(storage, cfg.run_dir, scratch / "resume")
    except checkpoints.CheckpointError as err:
        raise ConfigError(str(err)) from None
    if resume is not None:
        staged.resume_step, staged.resume_checkpoint = resume
        if cluster.is_chief:
            checkpoints.repair_pointer(storage, cfg.run_dir, staged.resume_step)
    elif cfg.checkpoint:
        try:
            prefix = checkpoints.resolve_prefix(storage, cfg.checkpoint)
            staged.init_checkpoint = checkpoints.stage(storage, prefix, scratch / "init")
            checkpoints.verify(staged.init_checkpoint)
        except (StorageError, checkpoints.CheckpointError) as err:
            raise ConfigError(f"--checkpoint {cfg.checkpoint}: not a readable TensorFlow "
                              f"checkpoint ({err})") from None
    return staged


def _local(storage: Storage, uris: list[str], dest: Path) -> list[Path]:
    """Local paths of ``uris``: local files as they are (absolute), gs:// ones downloaded."""
    if not any(is_gcs(u) for u in uris):
        return [Path(u).resolve() for u in uris]
    return storage.download_many(uris, dest)


def _checked(staged: Staged, paths: list[Path], name_to_id: dict[str, int] | None, max_id: int,
             cfg: TrainConfig, what: str) -> str:
    """Scan the records (counts per file and reason, logged; damaged images noted in
    ``staged``); their compression."""
    from trainer import records

    try:
        report = records.scan(paths, name_to_id, max_id)
        log.info("%s: %s", what, report.summary())
        records.check(report, cfg.max_skipped_fraction, what)
    except records.RecordsError as err:
        raise ConfigError(str(err)) from None
    staged.undecodable |= report.undecodable()
    return "GZIP" if report.compressed else ""


def _optimizer(cfg: TrainConfig, mixed: bool) -> Any:
    """SGD with momentum over the configured schedule: a linear warm-up from
    ``warmup_learning_rate`` to ``learning_rate``, then cosine decay to 0 at ``total_steps``
    (default: the run's steps), or constant."""
    import tf_keras

    if cfg.lr_schedule == "constant":
        schedule: Any = cfg.learning_rate
        if cfg.warmup_steps:
            schedule = tf_keras.optimizers.schedules.CosineDecay(
                cfg.warmup_learning_rate, 1, alpha=1.0, warmup_target=cfg.learning_rate,
                warmup_steps=cfg.warmup_steps)
    else:
        decay_steps = max((cfg.total_steps or cfg.steps) - cfg.warmup_steps, 1)
        if cfg.warmup_steps:
            schedule = tf_keras.optimizers.schedules.CosineDecay(
                cfg.warmup_learning_rate, decay_steps, warmup_target=cfg.learning_rate,
                warmup_steps=cfg.warmup_steps)
        else:
            schedule = tf_keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps)
    optimizer = tf_keras.optimizers.SGD(schedule, momentum=cfg.momentum,
                                        global_clipnorm=cfg.clip_norm or None)
    if mixed:
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def _restore(checkpoint: Any, prefix: str, what: str) -> None:
    """Read a checkpoint; a mismatch names ``what`` (the user's URI) and the variable."""
    try:
        checkpoint.read(prefix).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as err:
        raise ConfigError(f"{what} does not fit this model: {first_line(err, 300)}") from None


def _fine_tune(task: Any, model: Any, prefix: str, cfg: TrainConfig) -> None:
    """Restore the modules the fine-tune type names, as the OD API and Model Garden do."""
    import tensorflow as tf

    modules = task.task_config.init_checkpoint_modules
    if modules == "all":
        items = dict(model.checkpoint_items)
    else:
        names = [modules] if isinstance(modules, str) else list(modules)
        items = {name: getattr(model, name) for name in names}
    _restore(tf.train.Checkpoint(**items), prefix,
             f"--checkpoint ({cfg.fine_tune_type}) {cfg.checkpoint}")


def _freeze_batchnorm(model: Any) -> None:
    """Non-trainable batch norm runs in inference mode: moving statistics, fixed scales."""
    import tf_keras

    for layer in model.submodules:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False


def _is_peer_loss(err: BaseException) -> bool:
    return type(err).__name__ in PEER_ERRORS or "ollective" in str(err)[:2000]


@dataclass
class Run:
    """The objects one training run works with."""

    cfg: TrainConfig
    cluster: ClusterInfo
    storage: Storage
    strategy: Any
    task: Any
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


def build(cfg: TrainConfig, cluster: ClusterInfo, num_classes: int, storage: Storage,
          staged: Staged, scratch: Path, strategy: Any) -> Run:
    """Model, optimizer and checkpoint under ``strategy``, restored from where this run
    starts."""
    import tensorflow as tf
    import tf_keras

    replicas = strategy.num_replicas_in_sync
    if cfg.global_batch_size % replicas:
        raise ConfigError(f"--global-batch-size {cfg.global_batch_size} is not divisible by "
                          f"the {replicas} replicas")
    gpus = tf.config.list_physical_devices("GPU")
    mixed = bool(gpus) and cfg.mixed_precision is not False
    if mixed:
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
    task = build_task(cfg, num_classes, ",".join(str(p) for p in staged.train_files),
                      local_files=len(staged.train_files), sync_bn=True)
    with strategy.scope():
        model = task.build_model()
        model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]), training=False)
        if cfg.freeze_batchnorm:
            _freeze_batchnorm(model)
        optimizer = _optimizer(cfg, mixed)
        metrics = task.build_metrics(training=True)
        ckpt = tf.train.Checkpoint(optimizer=optimizer, **model.checkpoint_items)
        if staged.resume_checkpoint:
            _restore(ckpt, staged.resume_checkpoint,
                     f"checkpoint ckpt-{staged.resume_step} of {cfg.run_dir}")
            log.info("resumed from step %d of %s", staged.resume_step, cfg.run_dir)
        elif staged.init_checkpoint:
            _fine_tune(task, model, staged.init_checkpoint, cfg)
            log.info("fine-tuning (%s) from %s", cfg.fine_tune_type, cfg.checkpoint)
        else:
            log.info("training from scratch")
    local_dir = scratch / ("checkpoints" if cluster.is_chief else "checkpoints-worker")
    manager = tf.train.CheckpointManager(ckpt, str(local_dir), max_to_keep=2)
    publisher = (checkpoints.Publisher(storage, cfg.run_dir, cfg.keep_checkpoints,
                                       staging=scratch / "publish")
                 if cluster.is_chief else None)
    return Run(cfg, cluster, storage, strategy, task, model, optimizer, metrics, manager,
               publisher, scratch)


def train(cfg: TrainConfig, cluster: ClusterInfo, labels: dict[int, str] | None,
          num_classes: int, storage: Storage) -> int:
    """Run the job; returns the process exit code (see ``launcher.contract``). The scratch
    directory (staged inputs, local checkpoints, export) is removed on every way out, exit 42
    through ``SystemExit`` included."""
    scratch = Path(tempfile.mkdtemp(prefix="trainer-", dir=os.environ.get("TRAINER_SCRATCH")))
    try:
        return _train(cfg, cluster, labels, num_classes, storage, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train(cfg: TrainConfig, cluster: ClusterInfo, labels: dict[int, str] | None,
           num_classes: int, storage: Storage, scratch: Path) -> int:
    import tensorflow as tf

    from trainer.data import build_dataset

    name_to_id = {name: i for i, name in labels.items()} if labels else None
    # Before any other TensorFlow op: MultiWorkerMirroredStrategy configures collectives at
    # start-up, and staging reads records and checkpoints with TensorFlow.
    strategy = make_strategy(cluster)
    staged = stage_inputs(cfg, storage, cluster, scratch, name_to_id, num_classes - 1)
    staged.name_to_id = name_to_id
    if cluster.is_chief:
        _record_config(cfg, storage)
    run = build(cfg, cluster, num_classes, storage, staged, scratch, strategy)
    dataset = run.strategy.distribute_datasets_from_function(
        lambda ctx: build_dataset(run.task, run.task.task_config.train_data, name_to_id, ctx,
                                  staged.compression, staged.undecodable))
    iterator = iter(dataset)

    @tf.function
    def train_step(it: Any) -> Any:
        logs = run.strategy.run(run.task.train_step,
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
                          f"{first_line(err)}") from None
    except tf.errors.InvalidArgumentError as err:
        if "label map" in str(err):
            raise ConfigError(first_line(err, 300)) from None
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
    if cluster.workers:
        _leave_together(cluster)
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
    """Wait, on the coordination service, until every worker is done (the chief after eval and
    export), so that all leave at once. A worker that left early would be reported by the chief's
    coordination service as crashed ("The tasks have crashed ... CoordinationServiceError"),
    which reads as a failure of a run that succeeded."""
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


def finish(run: Run, staged: Staged) -> None:
    """Chief only, after the last checkpoint is published: eval metrics, then the SavedModel."""
    report: dict[str, Any] = {"step": run.step, "train": run.last_logs}
    if staged.eval_files:
        import tensorflow as tf

        from trainer.evaluate import evaluate

        # A fresh copy outside the strategy: the other workers may already have exited, and the
        # distributed model would issue collectives (e.g. batch-norm reads) to them.
        model = run.task.build_model()
        model(tf.zeros([1, run.cfg.image_size, run.cfg.image_size, 3]), training=False)
        tf.train.Checkpoint(**model.checkpoint_items).read(
            run.manager.latest_checkpoint).expect_partial().assert_existing_objects_matched()
        report["eval"] = evaluate(run.task, model, staged.eval_files, run.cfg.global_batch_size,
                                  staged.name_to_id, staged.eval_compression,
                                  staged.undecodable)
        writer = tf.summary.create_file_writer(str(run.scratch / "summaries" / "eval"))
        with writer.as_default():
            for name, value in report["eval"].items():
                tf.summary.scalar(name, value, step=run.step)
        writer.close()
        log.info("eval at step %d: AP %.4f AP50 %.4f", run.step, report["eval"].get("AP", -1),
                 report["eval"].get("AP50", -1))
    run.storage.write_text(join(run.cfg.run_dir, contract.RUN_EVAL_METRICS),
                           json.dumps(report, indent=2) + "\n")
    # The train summaries went up with the last checkpoint; only the eval ones are new.
    run.storage.upload_tree(run.scratch / "summaries" / "eval",
                            join(run.cfg.run_dir, contract.RUN_SUMMARIES, "eval"))
    if run.cfg.export:
        from trainer.export import export_saved_model

        local = export_saved_model(run.task, run.manager.latest_checkpoint,
                                   run.scratch / "export")
        run.storage.upload_tree(local, join(run.cfg.run_dir, contract.RUN_EXPORT))
        log.info("exported SavedModel to %s", join(run.cfg.run_dir, contract.RUN_EXPORT))


def _log_progress(run: Run, step: int, start_step: int, start: float,
                  logs: dict[str, Any]) -> dict[str, float]:
    import tensorflow as tf

    cfg = run.cfg
    elapsed = max(time.monotonic() - start, 1e-9)
    rate = (step - start_step) / elapsed
    eta = (cfg.steps - step) / rate if rate > 0 else float("inf")
    values = {name: float(logs[name]) for name in ("total_loss", "cls_loss", "box_loss")}
    lr = float(tf.convert_to_tensor(run.optimizer.learning_rate))
    examples = rate * cfg.global_batch_size
    log.info("worker %d step %d/%d loss %.4f cls %.4f box %.4f lr %.5f %.1f examples/s "
             "ETA %.0fs", run.cluster.index, step, cfg.steps, values["total_loss"],
             values["cls_loss"], values["box_loss"], lr, examples, eta)
    for name, value in values.items():
        tf.summary.scalar(f"loss/{name}", value, step=step)
    tf.summary.scalar("learning_rate", lr, step=step)
    tf.summary.scalar("steps_per_second", rate, step=step)
    tf.summary.scalar("examples_per_second", examples, step=step)
    for metric in run.metrics:
        metric.reset_states()  # the next line averages the next interval
    return values

"""Fine-tune Model Garden RetinaNet with a custom loop under MultiWorkerMirroredStrategy.

The loop is ours (Keras 3 ``model.fit`` crashes under MWMS, keras-team/keras#20585); the model,
input pipeline (OD-API TFRecord decoder, resize, flip, anchor labelling) and losses are Model
Garden's ``RetinaNetTask``. Checkpoints are written locally every N steps and published to the run
directory in the background; SIGTERM becomes a coordinated save (``PreemptionCheckpointHandler``),
then exit 42.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import contract
from trainer import checkpoints
from trainer.cluster import ClusterInfo, make_strategy
from trainer.config import ConfigError, TrainConfig
from trainer.storage import Storage

log = logging.getLogger("trainer")

# Errors of a collective op when a peer goes away: this worker is healthy (exit 43).
PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "CancelledError", "AbortedError")


@dataclass
class Staged:
    """What this worker pulled to local disk."""

    train_files: list[Path]
    init_checkpoint: str | None  # local prefix to fine-tune from
    resume_checkpoint: str | None  # local prefix of the run's own newest checkpoint
    resume_step: int


def stage_inputs(cfg: TrainConfig, storage: Storage, cluster: ClusterInfo,
                 scratch: Path) -> Staged:
    """Pull this worker's TFRecord shards and the checkpoint to start from."""
    files: list[str] = []
    for pattern in cfg.train:
        matched = storage.glob(pattern)
        if not matched:
            raise ConfigError(f"--train {pattern}: matches no file")
        files += matched
    workers = max(cluster.num_workers, 1)
    if len(files) < workers:
        raise ConfigError(f"--train: {len(files)} TFRecord files for {workers} workers; "
                          "each worker needs at least one shard")
    mine = sorted(set(files))[cluster.index::workers]
    train_files = storage.download_many(mine, scratch / "train")
    resume_step = checkpoints.latest_step(storage, cfg.run_dir)
    if resume_step is not None:
        prefix = checkpoints.join(checkpoints.checkpoints_dir(cfg.run_dir), f"ckpt-{resume_step}")
        local = checkpoints.stage(storage, prefix, scratch / "resume")
        return Staged(train_files, None, local, resume_step)
    init = None
    if cfg.checkpoint:
        prefix = checkpoints.resolve_prefix(storage, cfg.checkpoint)
        try:
            init = checkpoints.stage(storage, prefix, scratch / "init")
        except checkpoints.StorageError as err:
            raise ConfigError(f"--checkpoint: {err}") from None
    return Staged(train_files, init, None, 0)


def task_config(cfg: TrainConfig, num_classes: int, train_glob: str) -> Any:
    """A Model Garden ``RetinaNetTask`` config for this run."""
    from official.vision.configs import backbones, decoders
    from official.vision.configs import retinanet as rcfg

    task = rcfg.RetinaNetTask()
    model = task.model
    model.num_classes = num_classes
    model.input_size = [cfg.image_size, cfg.image_size, 3]
    tiny = cfg.model_size == "tiny"
    if cfg.backbone == "mobilenetv2":
        model.backbone = backbones.Backbone(type="mobilenet", mobilenet=backbones.MobileNet(
            model_id="MobileNetV2", filter_size_scale=0.35 if tiny else 1.0))
    else:
        model.backbone = backbones.Backbone(type="resnet", resnet=backbones.ResNet(
            model_id=18 if tiny else 50))
    model.decoder = decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=32 if tiny else 256))
    if tiny:
        model.min_level, model.max_level = 3, 5
        model.head.num_convs, model.head.num_filters = 1, 32
        model.anchor.num_scales, model.anchor.aspect_ratios = 1, [1.0]
    task.losses.l2_weight_decay = 0.0 if tiny else 4e-5
    task.init_checkpoint_modules = {"classification": "backbone",
                                    "detection": ["backbone", "decoder"],
                                    "full": "all"}[cfg.fine_tune_type]
    data = task.train_data
    data.input_path = train_glob
    data.global_batch_size = cfg.global_batch_size
    data.is_training = True
    data.dtype = "float32"
    data.shuffle_buffer_size = 256
    data.seed = cfg.seed
    data.sharding = False  # each worker already pulled only its own shards
    data.parser.aug_rand_hflip = True
    return task


def _optimizer(cfg: TrainConfig, mixed: bool) -> Any:
    import tf_keras

    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.warmup_steps:
        schedule = tf_keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps, warmup_target=cfg.learning_rate, warmup_steps=cfg.warmup_steps)
    else:
        schedule = tf_keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps)
    optimizer = tf_keras.optimizers.SGD(schedule, momentum=0.9, global_clipnorm=10.0)
    if mixed:
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def _restore(checkpoint: Any, prefix: str, what: str) -> None:
    try:
        checkpoint.read(prefix).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:300]
        raise ConfigError(f"{what} {prefix} does not fit this model: {first}") from None


def _fine_tune(task: Any, model: Any, prefix: str, fine_tune_type: str) -> None:
    """Restore the modules the fine-tune type names, as the OD API and Model Garden do."""
    import tensorflow as tf

    modules = task.task_config.init_checkpoint_modules
    if modules == "all":
        items = dict(model.checkpoint_items)
    else:
        names = [modules] if isinstance(modules, str) else list(modules)
        items = {name: getattr(model, name) for name in names}
    _restore(tf.train.Checkpoint(**items), prefix, f"--checkpoint ({fine_tune_type})")


def _is_peer_loss(err: BaseException) -> bool:
    return type(err).__name__ in PEER_ERRORS or "ollective" in str(err)[:2000]


def train(cfg: TrainConfig, cluster: ClusterInfo, num_classes: int, storage: Storage) -> int:
    """Run the job; returns the process exit code (see ``launcher.contract``)."""
    import tensorflow as tf
    import tf_keras
    from official.vision.tasks import retinanet as rtask

    scratch = Path(tempfile.mkdtemp(prefix="trainer-", dir=os.environ.get("TRAINER_SCRATCH")))
    staged = stage_inputs(cfg, storage, cluster, scratch)
    strategy = make_strategy(cluster)
    replicas = strategy.num_replicas_in_sync
    if cfg.global_batch_size % replicas:
        raise ConfigError(f"--global-batch-size {cfg.global_batch_size} is not divisible by "
                          f"the {replicas} replicas")
    gpus = tf.config.list_physical_devices("GPU")
    mixed = bool(gpus) if cfg.mixed_precision is None else cfg.mixed_precision and bool(gpus)
    if mixed:
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
    task = rtask.RetinaNetTask(task_config(cfg, num_classes, str(scratch / "train" / "*")))
    with strategy.scope():
        model = task.build_model()
        model(tf.zeros([1, cfg.image_size, cfg.image_size, 3]), training=False)
        optimizer = _optimizer(cfg, mixed)
        metrics = task.build_metrics(training=True)
        ckpt = tf.train.Checkpoint(optimizer=optimizer, **model.checkpoint_items)
        if staged.resume_checkpoint:
            _restore(ckpt, staged.resume_checkpoint, "checkpoint")
            log.info("resumed from step %d of %s", staged.resume_step, cfg.run_dir)
        elif staged.init_checkpoint:
            _fine_tune(task, model, staged.init_checkpoint, cfg.fine_tune_type)
            log.info("fine-tuning (%s) from %s", cfg.fine_tune_type, cfg.checkpoint)
        else:
            log.info("training from scratch")
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: task.build_inputs(task.task_config.train_data, ctx))
    iterator = iter(dataset)

    @tf.function
    def train_step(it: Any) -> Any:
        logs = strategy.run(task.train_step, args=(next(it), model, optimizer, metrics))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in logs.items()}

    local_dir = scratch / ("checkpoints" if cluster.is_chief else "checkpoints-worker")
    manager = tf.train.CheckpointManager(ckpt, str(local_dir), max_to_keep=2)
    publisher = checkpoints.Publisher(storage, cfg.run_dir, cfg.keep_checkpoints) \
        if cluster.is_chief else None
    summary_dir = scratch / "summaries"
    writer = tf.summary.create_file_writer(str(summary_dir / "train")) if cluster.is_chief \
        else tf.summary.create_noop_writer()

    def save(step: int) -> None:
        manager.save(checkpoint_number=step)
        if publisher is not None:
            writer.flush()
            publisher.publish(manager.latest_checkpoint, step, {contract.RUN_SUMMARIES:
                                                               summary_dir})

    def on_preempted() -> None:
        step = int(optimizer.iterations.numpy())
        log.warning("preempted: checkpoint of step %d saved; finishing the upload", step)
        if publisher is not None and manager.latest_checkpoint:
            publisher.publish(manager.latest_checkpoint, step)
            publisher.close()
        sys.exit(contract.EXIT_RETRYABLE)

    handler = None
    if cluster.workers:
        handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            strategy.cluster_resolver, manager,
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=on_preempted))
    step = int(optimizer.iterations.numpy())
    start, start_step = time.monotonic(), step
    try:
        with writer.as_default():
            while step < cfg.steps:
                logs = handler.run(train_step, iterator) if handler else train_step(iterator)
                step = int(optimizer.iterations.numpy())
                if step % cfg.log_every == 0 or step == cfg.steps:
                    _log_progress(cfg, cluster, step, start_step, start, logs, optimizer)
                    for metric in metrics:
                        metric.reset_states()  # the next line averages the next interval
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    save(step)
        if publisher is not None:
            publisher.close()
    except tf.errors.DataLossError as err:
        raise ConfigError(f"corrupt TFRecord in this worker's shards: "
                          f"{str(err).splitlines()[0][:200]}") from None
    except tf.errors.OpError as err:
        if _is_peer_loss(err):
            log.error("a peer was lost at step %d: %s", step, str(err).splitlines()[0][:200])
            return contract.EXIT_PEER_LOST
        raise
    log.info("done: %d steps, checkpoints in %s", step,
             checkpoints.checkpoints_dir(cfg.run_dir))
    return contract.EXIT_OK


def _log_progress(cfg: TrainConfig, cluster: ClusterInfo, step: int, start_step: int,
                  start: float, logs: dict[str, Any], optimizer: Any) -> None:
    import tensorflow as tf

    elapsed = max(time.monotonic() - start, 1e-9)
    rate = (step - start_step) / elapsed
    eta = (cfg.steps - step) / rate if rate > 0 else float("inf")
    loss = float(logs["total_loss"])
    lr = float(tf.convert_to_tensor(optimizer.learning_rate))
    examples = rate * cfg.global_batch_size
    log.info("worker %d step %d/%d loss %.4f cls %.4f box %.4f lr %.5f %.1f examples/s "
             "ETA %.0fs", cluster.index, step, cfg.steps, loss, float(logs["cls_loss"]),
             float(logs["box_loss"]), lr, examples, eta)
    for name in ("total_loss", "cls_loss", "box_loss"):
        tf.summary.scalar(f"loss/{name}", logs[name], step=step)
    tf.summary.scalar("learning_rate", lr, step=step)
    tf.summary.scalar("steps_per_second", rate, step=step)
    tf.summary.scalar("examples_per_second", examples, step=step)

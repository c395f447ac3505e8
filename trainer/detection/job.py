"""The detection task: a Model Garden detector on OD-API TFRecords (``trainer.detection.data``),
COCO evaluation and a detection SavedModel. ``trainer.run.train`` runs the loop.

What differs between detector families lives in one package each, registered in
``trainer.detection.families``: its ``Family`` builds a Model Garden task whose losses are
normalised over the global batch and which adds ``input_parser``, ``warm_up`` and
``fine_tune_items``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, TrainConfig, field_name
from trainer.detection import families
from trainer.run import checkpoints
from trainer.run.cluster import ClusterInfo
from trainer.run.staging import Staged, restore, stage_records
from trainer.run.storage import Storage, StorageError

log = logging.getLogger("trainer")


class DetectionJob:
    """What is a detector's in a run; see ``trainer.run.train.Job``."""

    eval_summary = ("AP", "AP50")

    def __init__(self, cfg: TrainConfig, labels: dict[int, str] | None, num_classes: int):
        self.cfg = cfg
        self.family = families.get(cfg.family)
        self.log_names: tuple[str, ...] = self.family.log_names
        self.num_classes = num_classes  # with the background, as Model Garden counts
        self.name_to_id = {name: i for i, name in labels.items()} if labels else None
        self.task: Any = None

    def stage(self, storage: Storage, cluster: ClusterInfo, scratch: Path,
              resuming: bool) -> Staged:
        """This worker's records, checked; the fine-tune checkpoint unless resuming."""
        from trainer.detection import records

        max_boxes = self.family.task_config(self.cfg, self.num_classes).train_data \
            .parser.max_num_instances
        staged = stage_records(self.cfg, storage, cluster, scratch, lambda paths: records.scan(
            paths, self.name_to_id, self.num_classes - 1, max_boxes=max_boxes))
        staged.name_to_id = self.name_to_id
        if self.cfg.checkpoint and not resuming:
            try:
                prefix = checkpoints.resolve_prefix(storage, self.cfg.checkpoint)
                staged.init_checkpoint = checkpoints.stage(storage, prefix, scratch / "init")
                checkpoints.verify(staged.init_checkpoint)
            except (StorageError, checkpoints.CheckpointError) as err:
                raise ConfigError(f"{self._checkpoint()}: not a readable "
                                  f"TensorFlow checkpoint ({err})") from None
            if checkpoints.is_od_api(staged.init_checkpoint) and not self.family.od_api_native:
                raise ConfigError(
                    f"{self._checkpoint()}: a TF Object Detection API checkpoint "
                    "(variables under model/_feature_extractor, model/_box_predictor), which "
                    "Model Garden's models cannot restore; run the OD API's own trainer with "
                    "this launcher (command/args: docs/od-api.md)")
            self._check_family(staged.init_checkpoint)
        self.task = self.family.build_task(
            self.cfg, self.num_classes, ",".join(str(p) for p in staged.train_files),
            local_files=len(staged.train_files), sync_bn=True)
        return staged

    def _checkpoint(self) -> str:
        """The checkpoint as the user gave it: its URI and the field it came from."""
        return f"{field_name(self.cfg, 'checkpoint')} {self.cfg.checkpoint}"

    def _check_family(self, checkpoint: str) -> None:
        """A checkpoint of another family (read from its heads) gives its backbone only."""
        family = families.of_checkpoint(checkpoints.variable_names(checkpoint))
        if family in (None, self.cfg.family):
            return
        if self.cfg.fine_tune_type != "classification":
            raise ConfigError(
                f"{self._checkpoint()}: a {family} checkpoint, and fine-tune "
                f"type {self.cfg.fine_tune_type} restores parts only a {self.cfg.family} has: "
                f"give a {self.cfg.family} checkpoint, or --fine-tune-type classification "
                "(model.fineTuneType) to take its backbone alone")
        log.warning("--checkpoint is a %s checkpoint: restoring its backbone into a %s",
                    family, self.cfg.family)

    def build(self, staged: Staged, mixed: bool) -> tuple[Any, dict[str, Any], Any, list[Any]]:
        """Under the strategy's scope: model, its checkpoint items, optimizer, metrics."""
        import tf_keras

        from trainer.run.optim import sgd

        # New layers (the head of a detection fine-tune) start the same in every run of a seed.
        tf_keras.utils.set_random_seed(self.cfg.seed)
        model = self.task.build_model()
        self.task.warm_up(model, self.cfg.image_size)
        if self.cfg.freeze_batchnorm:
            _freeze_batchnorm(model)
        return (model, dict(model.checkpoint_items), sgd(self.cfg, mixed),
                self.task.build_metrics(training=True))

    def fine_tune(self, model: Any, staged: Staged) -> str:
        """Restore the parts the fine-tune type names (the family's ``fine_tune_items``)."""
        import tensorflow as tf

        assert staged.init_checkpoint is not None
        items = self.task.fine_tune_items(model, self.cfg.fine_tune_type)
        restore(tf.train.Checkpoint(**items), staged.init_checkpoint,
                f"{self._checkpoint()} ({self.cfg.fine_tune_type})")
        return f"fine-tuning ({self.cfg.fine_tune_type}) from {self.cfg.checkpoint}"

    def dataset(self, staged: Staged, context: Any) -> Any:
        from trainer.detection.data import build_dataset

        return build_dataset(self.task, self.task.task_config.train_data, staged.name_to_id,
                             context, staged.compression, staged.undecodable)

    def replica_step(self, inputs: Any, model: Any, optimizer: Any, metrics: list[Any]) -> Any:
        return self.task.train_step(inputs, model, optimizer, metrics)

    def evaluate(self, staged: Staged, checkpoint: str) -> dict[str, float]:
        """COCO metrics and losses of a fresh copy of the model outside the strategy (the other
        workers may have exited; the distributed model would issue collectives to them)."""
        import tensorflow as tf

        from trainer.detection.evaluate import evaluate

        model = self.task.build_model()
        self.task.warm_up(model, self.cfg.image_size)
        tf.train.Checkpoint(**model.checkpoint_items).read(
            checkpoint).expect_partial().assert_existing_objects_matched()
        return evaluate(self.task, model, staged.eval_files,
                        self.cfg.eval_batch_size or self.cfg.global_batch_size,
                        staged.name_to_id, staged.eval_compression, staged.undecodable)

    def export(self, staged: Staged, checkpoint: str, dest: Path) -> Path:
        """A detection SavedModel (``image_tensor`` signature)."""
        return self.task.export_saved_model(checkpoint, dest)


def _freeze_batchnorm(model: Any) -> None:
    """Non-trainable batch norm runs in inference mode: moving statistics, fixed scales."""
    import tf_keras

    for layer in model.submodules:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False

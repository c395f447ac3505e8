"""The keras task: fine-tune an exported Keras classifier (``trainer.keras.model``) on
image-classification TFRecords (``trainer.keras.data``); evaluate loss, accuracy and top-5 on
the chief; export in the format it came in plus a SavedModel. ``trainer.run.train`` runs the loop.

The loss is the model's own (sparse or categorical cross-entropy), per example, summed and
divided by the global batch size: N workers with global batch B train exactly like one worker
with batch B.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, TrainConfig
from trainer.keras import model as keras_model
from trainer.keras.data import Classes, build_dataset, example_problem, labels_hint
from trainer.run.cluster import ClusterInfo
from trainer.run.staging import Staged, restore, stage_records
from trainer.run.storage import Storage, StorageError, is_gcs

log = logging.getLogger("trainer")
EXPORT_NAMES = {"h5": "model.h5", "keras": "model.keras"}


class KerasJob:
    """What is the Keras model's in a run; see ``trainer.run.train.Job``."""

    log_names = ("total_loss", "accuracy")
    eval_summary = ("loss", "accuracy")

    def __init__(self, cfg: TrainConfig, labels: dict[int, str] | None,
                 num_classes: int | None):
        self.cfg = cfg
        self.name_to_id = {name: i for i, name in labels.items()} if labels else None
        self.num_classes = num_classes  # None: as many as the model predicts
        self.objects = keras_model.custom_objects(cfg.custom_objects)
        self.format = ""
        self.shape = (0, 0, 0)
        self.compiled = keras_model.Compiled()
        self.loss = ""
        self.from_logits = False
        self._final: tuple[str, Any] | None = None  # (checkpoint, model) for eval and export

    def stage(self, storage: Storage, cluster: ClusterInfo, scratch: Path,
              resuming: bool) -> Staged:
        """The model file (its architecture is needed on resume too), read once here for its
        shape, classes and compile config; then this worker's records, checked."""
        from trainer.detection import records

        path = self._stage_model(storage, scratch / "model")
        uri = self.cfg.checkpoint or ""
        self.format = keras_model.model_format(path, uri)
        try:
            probe = keras_model.load(path, uri, self.objects, compile=True)
        except ConfigError:
            # A compile config that does not load (e.g. a custom loss) is no reason to refuse
            # the weights: say so, and use the spec's loss and optimizer.
            probe = keras_model.load(path, uri, self.objects, compile=False)
            log.warning("%s: its compile config does not load; using --loss and --optimizer",
                        uri)
        self.compiled = keras_model.compiled(probe, uri)
        self.shape = keras_model.input_shape(probe, self.cfg.image_size, uri)
        units = keras_model.output_classes(probe, uri)
        self.num_classes = self.num_classes or units
        self.loss = self.cfg.loss or self.compiled.loss or "sparse_categorical_crossentropy"
        if self.loss not in keras_model.LOSSES:
            raise ConfigError(f"loss {self.loss!r} (from {'--loss' if self.cfg.loss else uri}):"
                              f" supported: {', '.join(keras_model.LOSSES)}")
        self.from_logits = (not keras_model.output_is_probability(probe)
                            if self.compiled.from_logits is None else self.compiled.from_logits)
        log.info("model %s (%s): input %s, %d classes (data: %d), loss %s%s, compiled "
                 "metrics %s", uri, self.format, "x".join(map(str, self.shape)), units,
                 self.num_classes, self.loss, " from logits" if self.from_logits else "",
                 ", ".join(self.compiled.metrics) or "none")
        del probe
        classes = Classes.of(self.cfg, self.num_classes, self.name_to_id)
        staged = stage_records(self.cfg, storage, cluster, scratch, lambda paths: labels_hint(
            records.scan(paths, problem=lambda example: example_problem(example, classes),
                         image_key=self.cfg.image_key), classes))
        staged.name_to_id = self.name_to_id
        staged.init_checkpoint = str(path)
        return staged

    def _stage_model(self, storage: Storage, dest: Path) -> Path:
        """The model file or SavedModel directory on local disk (local ones in place)."""
        uri = self.cfg.checkpoint or ""
        if not is_gcs(uri):
            path = Path(uri)
            if not path.exists():
                raise ConfigError(f"--checkpoint {uri}: not found")
            return path.resolve()
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        try:
            if not uri.endswith("/") and storage.exists(uri):
                return storage.download(uri, dest / name)
            if not storage.download_tree(uri, dest / name):
                raise ConfigError(f"--checkpoint {uri}: not found")
        except StorageError as err:
            raise ConfigError(f"--checkpoint {uri}: {err}") from None
        return dest / name

    def _model(self, staged: Staged) -> tuple[Any, list[str]]:
        """The loaded model with this run's head, frozen as configured."""
        import tf_keras

        # The same random start for a new head everywhere (and in a 1-worker twin of the run).
        tf_keras.utils.set_random_seed(self.cfg.seed)
        uri = self.cfg.checkpoint or ""
        model = keras_model.load(Path(staged.init_checkpoint or ""), uri, self.objects)
        assert self.num_classes is not None
        model, replaced = keras_model.with_head(model, self.num_classes, self.cfg.head, uri)
        if replaced:
            log.info("replaced the head: a new Dense layer for %d classes", self.num_classes)
        return model, keras_model.freeze(model, self.cfg)

    def build(self, staged: Staged, mixed: bool) -> tuple[Any, dict[str, Any], Any, list[Any]]:
        """Under the strategy's scope: model, its checkpoint items, optimizer, metrics."""
        from trainer.run.optim import schedule

        model, frozen = self._model(staged)
        trainable = sum(int(w.shape.num_elements()) for w in model.trainable_weights)
        log.info("%d of %d layers frozen (%s); %d trainable parameters", len(frozen),
                 len(model.layers), ", ".join(frozen[:6]) + (", ..." if len(frozen) > 6 else ""),
                 trainable)
        optimizer = keras_model.optimizer(self.cfg, self.compiled.optimizer,
                                          lambda base: schedule(self.cfg, base))
        return model, {"model": model}, optimizer, []

    def fine_tune(self, model: Any, staged: Staged) -> str:
        return f"fine-tuning (keras, {self.format}) from {self.cfg.checkpoint}"

    def _per_example_loss(self, labels: Any, outputs: Any) -> Any:
        import tensorflow as tf
        import tf_keras

        outputs = tf.cast(outputs, tf.float32)
        if self.loss == "categorical_crossentropy":
            return tf_keras.losses.categorical_crossentropy(
                tf.one_hot(labels, self.num_classes), outputs, from_logits=self.from_logits)
        return tf_keras.losses.sparse_categorical_crossentropy(labels, outputs,
                                                               from_logits=self.from_logits)

    def dataset(self, staged: Staged, context: Any) -> Any:
        assert self.num_classes is not None
        return build_dataset(
            staged.train_files, Classes.of(self.cfg, self.num_classes, staged.name_to_id),
            self.shape, self.cfg.input_range,
            context.get_per_replica_batch_size(self.cfg.global_batch_size), training=True,
            deterministic=self.cfg.deterministic_input,
            seed=self.cfg.seed + context.input_pipeline_id, compression=staged.compression,
            undecodable=staged.undecodable)

    def replica_step(self, inputs: Any, model: Any, optimizer: Any, metrics: list[Any]) -> Any:
        import tensorflow as tf

        images, labels = inputs
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            per_example = self._per_example_loss(labels, outputs)
            loss = tf.nn.compute_average_loss(per_example,
                                              global_batch_size=self.cfg.global_batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables,
                                      strict=True))
        correct = tf.equal(tf.argmax(outputs, axis=-1), labels)
        return {"total_loss": tf.reduce_mean(per_example),
                "accuracy": tf.reduce_mean(tf.cast(correct, tf.float32))}

    def _restored(self, staged: Staged, checkpoint: str) -> Any:
        """A fresh copy of the trained model outside the strategy (the other workers may have
        exited; the distributed model would issue collectives to them), loaded once for eval
        and export alike."""
        import tensorflow as tf

        if self._final is None or self._final[0] != checkpoint:
            model, _ = self._model(staged)
            restore(tf.train.Checkpoint(model=model), checkpoint, f"checkpoint {checkpoint}")
            self._final = (checkpoint, model)
        return self._final[1]

    def evaluate(self, staged: Staged, checkpoint: str) -> dict[str, float]:
        """Mean loss, accuracy and (with more than 5 classes) top-5 accuracy over every usable
        eval record."""
        import tf_keras

        assert self.num_classes is not None
        model = self._restored(staged, checkpoint)
        data = build_dataset(staged.eval_files,
                             Classes.of(self.cfg, self.num_classes, staged.name_to_id),
                             self.shape, self.cfg.input_range, self.cfg.global_batch_size,
                             training=False, compression=staged.eval_compression,
                             undecodable=staged.undecodable)
        loss = tf_keras.metrics.Mean()
        accuracy = tf_keras.metrics.SparseCategoricalAccuracy()
        top5 = tf_keras.metrics.SparseTopKCategoricalAccuracy(k=5)
        examples = 0
        for images, labels in data:
            outputs = model(images, training=False)
            loss.update_state(self._per_example_loss(labels, outputs))
            accuracy.update_state(labels, outputs)
            top5.update_state(labels, outputs)
            examples += int(labels.shape[0])
        if not examples:
            raise ConfigError("--eval: the eval TFRecords hold no usable example")
        result = {"loss": float(loss.result()), "accuracy": float(accuracy.result()),
                  "examples": float(examples)}
        if self.num_classes > 5:
            result["top5_accuracy"] = float(top5.result())
        return result

    def export(self, staged: Staged, checkpoint: str, dest: Path) -> Path:
        """The fine-tuned model in the format it came in (``model.h5``/``model.keras``) and as
        a SavedModel (``saved_model/``)."""
        model = self._restored(staged, checkpoint)
        dest.mkdir(parents=True, exist_ok=True)
        if self.format in EXPORT_NAMES:
            model.save(str(dest / EXPORT_NAMES[self.format]))
        model.save(str(dest / "saved_model"), save_format="tf")
        return dest

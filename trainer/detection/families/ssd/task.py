"""The SSD family's task: the OD API's SSD (``model.SsdModel``) behind the seams
``trainer.detection.job`` uses. Model Garden's RetinaNet task lends its data configs, loss
metrics and COCO evaluator; the model, input parsing, losses, fine-tune map and export are
the OD API's.

Losses are normalised by the matched anchors of the whole global batch (the OD API divides by
each replica's own), and batch norm uses the global batch's statistics, so N workers with
global batch B train like one worker with batch B."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorflow as tf
from official.vision.tasks import retinanet

from trainer.config import TrainConfig
from trainer.detection.families.base import FamilyTask
from trainer.detection.families.common import configure_train_data
from trainer.detection.families.ssd import FAMILY, features
from trainer.detection.families.ssd.spec import SsdSpec

LOG_NAMES = FAMILY.log_names
# model.size -> what it changes: nothing, the pipeline.config's ssd block is the network.
PRESETS: dict[str, Callable[[Any], None]] = {"standard": lambda task: None}
LABEL_ID_OFFSET = 1  # exported classes are label-map ids, as the OD API's exporter writes


class SsdTask(FamilyTask, retinanet.RetinaNetTask):
    """The OD API's SSD for one run (``spec``: the pipeline.config's ssd block, with the run's
    class count)."""

    def __init__(self, params: Any, spec: SsdSpec, augmentations: tuple[Any, ...] = (),
                 sync_bn: bool = False, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.spec = spec
        self.augmentations = augmentations
        self.sync_bn = sync_bn

    def build_model(self) -> Any:
        from trainer.detection.families.ssd.model import SsdModel

        return SsdModel(self.spec, sync_bn=self.sync_bn)

    def warm_up(self, model: Any, image_size: int) -> None:
        """Run the model once, which creates its variables."""
        model(tf.zeros([1, self.spec.height, self.spec.width, 3]), training=False)

    def fine_tune_items(self, model: Any, fine_tune_type: str) -> dict[str, Any]:
        """What the OD API restores for each ``fine_tune_checkpoint_type``: ``classification``
        the backbone (a classification checkpoint's ``feature_extractor``), ``detection`` the
        whole feature extractor of a detection checkpoint (the box predictor starts anew),
        ``full`` everything."""
        extractor = model._feature_extractor
        return {"classification": {"feature_extractor": extractor.classification_backbone},
                "detection": {"model": tf.train.Checkpoint(_feature_extractor=extractor)},
                "full": {"model": model}}[fine_tune_type]

    def input_parser(self, params: Any) -> Any:
        return Parser(self.spec, params.parser.max_num_instances, self.augmentations)

    def train_step(self, inputs: Any, model: Any, optimizer: Any,
                   metrics: list[Any] | None = None) -> dict[str, Any]:
        images, labels = inputs
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1

        def global_sum(value: Any) -> Any:
            return context.all_reduce(tf.distribute.ReduceOp.SUM, value) if replicas > 1 \
                else value

        with tf.GradientTape() as tape:
            out = model(images, training=True)
            losses = model.loss(out, labels["boxes"], labels["classes"], labels["valid"],
                                reduce=global_sum)
            regularization = model.regularization_loss()
            # Each replica's share: its part of the global-batch loss, 1/replicas of the L2.
            local = (losses["localization_loss"] + losses["classification_loss"]
                     + regularization / replicas)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(local, variables), variables, strict=True))
        box, cls = global_sum(losses["localization_loss"]), global_sum(
            losses["classification_loss"])
        logs = {"total_loss": box + cls + regularization, "cls_loss": cls, "box_loss": box,
                "model_loss": box + cls}
        for metric in metrics or []:
            metric.update_state(logs[metric.name])
        return logs

    def validation_step(self, inputs: Any, model: Any,
                        metrics: list[Any] | None = None) -> dict[str, Any]:
        images, labels = inputs
        out = model(images, training=False)
        losses = model.loss(out, labels["boxes"], labels["classes"], labels["valid"])
        regularization = model.regularization_loss()
        box, cls = losses["localization_loss"], losses["classification_loss"]
        logs = {"total_loss": box + cls + regularization, "cls_loss": cls, "box_loss": box,
                "model_loss": box + cls}
        for metric in metrics or []:
            metric.update_state(logs[metric.name])
        post = model.postprocess(out)
        size = labels["image_info"][:, 0, :]  # the original image's height, width
        scale = tf.concat([size, size], -1)[:, None, :]
        logs[self.coco_metric.name] = (labels["groundtruths"], {
            "detection_boxes": post["detection_boxes"] * scale,
            "detection_scores": post["detection_scores"],
            "detection_classes": post["detection_classes"] + LABEL_ID_OFFSET,
            "num_detections": post["num_detections"],
            "source_id": labels["groundtruths"]["source_id"],
            "image_info": labels["image_info"]})
        return logs

    def export_saved_model(self, checkpoint: str, export_dir: Path) -> Path:
        """A SavedModel with the OD API's serving signature: ``input_tensor`` (uint8
        [batch, h, w, 3]) -> ``detection_boxes`` (normalised), ``detection_classes`` (label-map
        ids), ``detection_scores``, ``num_detections``, and the raw boxes and scores."""
        model = self.build_model()
        self.warm_up(model, self.spec.height)
        tf.train.Checkpoint(model=model).read(checkpoint).expect_partial() \
            .assert_existing_objects_matched()
        module = tf.Module()
        module.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                     name="input_tensor")])
        def serve(input_tensor: Any) -> dict[str, Any]:
            out = model.postprocess(model(model.preprocess(input_tensor), training=False))
            out["detection_classes"] = out["detection_classes"] + LABEL_ID_OFFSET
            return {k: v for k, v in out.items()}

        module.serve = serve
        tf.saved_model.save(module, str(export_dir), signatures={"serving_default": serve})
        return export_dir


class Parser:
    """Model Garden's parser interface over the OD API's SSD input: the config's augmentations,
    the model's resize and scaling, ground truth padded to ``max_boxes`` (classes 0-based)."""

    def __init__(self, spec: SsdSpec, max_boxes: int,
                 augmentations: tuple[tuple[str, dict[str, Any]], ...]):
        self.spec = spec
        self.max_boxes = max_boxes
        self.augmentations = augmentations

    def parse_fn(self, is_training: bool) -> Callable[[dict[str, Any]], Any]:
        return self._train if is_training else self._eval

    def _common(self, data: dict[str, Any], augment: bool) -> tuple[Any, dict[str, Any]]:
        from trainer.detection.families.ssd.augment import AUGMENTATIONS

        image = tf.cast(data["image"], tf.float32)
        boxes = tf.cast(data["groundtruth_boxes"], tf.float32)
        classes = tf.cast(data["groundtruth_classes"], tf.int32) - 1
        for name, settings in self.augmentations if augment else ():
            image, boxes, classes = AUGMENTATIONS[name](image, boxes, classes, **settings)
        resized = tf.compat.v1.image.resize_images(
            image[None], [self.spec.height, self.spec.width],
            method=tf.image.ResizeMethod.BILINEAR, align_corners=False)[0]
        image = features.preprocess(self.spec.extractor.backbone, resized)
        count = tf.minimum(tf.shape(boxes)[0], self.max_boxes)
        pad = self.max_boxes - count
        return image, {"boxes": tf.pad(boxes[:count], [[0, pad], [0, 0]]),
                       "classes": tf.pad(classes[:count], [[0, pad]]),
                       "valid": tf.pad(tf.ones([count], tf.bool), [[0, pad]])}

    def _train(self, data: dict[str, Any]) -> Any:
        return self._common(data, True)

    def _eval(self, data: dict[str, Any]) -> Any:
        from official.vision.dataloaders import utils

        image, labels = self._common(data, False)
        height, width = tf.cast(data["height"], tf.float32), tf.cast(data["width"], tf.float32)
        size = tf.stack([height, width])
        labels["image_info"] = tf.stack([size, size, tf.ones([2]), tf.zeros([2])])
        groundtruths = {
            "source_id": utils.process_source_id(data["source_id"]),
            "height": data["height"], "width": data["width"],
            "num_detections": tf.shape(data["groundtruth_classes"])[0],
            "boxes": data["groundtruth_boxes"] * tf.stack([height, width, height, width]),
            "classes": data["groundtruth_classes"],
            "is_crowds": tf.cast(data["groundtruth_is_crowd"], tf.int32),
            "areas": data["groundtruth_area"]}
        labels["groundtruths"] = utils.pad_groundtruths_to_fixed_size(groundtruths,
                                                                     self.max_boxes)
        return image, labels


def task_config(cfg: TrainConfig, num_classes: int, train_glob: str, local_files: int = 1,
                sync_bn: bool = False) -> Any:
    """Model Garden's RetinaNet task config, for its data configs and COCO settings only."""
    from official.vision.configs import retinanet as rcfg

    task = rcfg.RetinaNetTask()
    task.model.num_classes = num_classes
    task.model.input_size = [cfg.image_size, cfg.image_size, 3]
    for path, value in cfg.model_garden.items():  # only the data settings reach an SSD
        if path.startswith(("train_data.", "validation_data.")):
            split, *parents, name = path.split(".")
            target = getattr(task, split)
            for parent in parents:
                target = getattr(target, parent)
            setattr(target, name, value)
    configure_train_data(task.train_data, cfg, train_glob, local_files)
    return task


def build_task(cfg: TrainConfig, num_classes: int, train_glob: str, local_files: int = 1,
               sync_bn: bool = False) -> SsdTask:
    """The task for this run: the pipeline.config's ssd block with the run's classes."""
    if cfg.ssd is None:
        from trainer.config import ConfigError

        raise ConfigError("--family ssd: needs --pipeline-config (model.pipelineConfig) with an "
                          "ssd block")
    # The run's size stands for the fixed_shape_resizer's (the same unless a flag set it).
    spec = dataclasses.replace(cfg.ssd, num_classes=num_classes - 1, height=cfg.image_size,
                               width=cfg.image_size)
    return SsdTask(task_config(cfg, num_classes, train_glob, local_files, sync_bn), spec,
                   # the deterministic order (training.deterministicInput) is unaugmented
                   augmentations=() if cfg.deterministic_input else cfg.augmentations,
                   sync_bn=sync_bn)

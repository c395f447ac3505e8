"""The YOLO family: Model Garden's YOLOv4 (``official.projects.yolo``: a CSP-Darknet backbone, the
YOLO path-aggregation decoder and head) with the Darknet loss, configured for this run.

The Darknet loss is a sum over each image's grid cells, averaged over the replica's images and
divided by the replicas: already independent of how the global batch is split. (Model Garden's
"scaled" loss of YOLOv4-csp and v5 divides by each replica's own object count; not offered.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

# Registers the darknet backbone and the YOLO decoder with Model Garden's factories.
from official.projects.yolo.common import registry_imports  # noqa: F401
from official.projects.yolo.ops import loss_utils, math_ops
from official.projects.yolo.tasks import yolo

from trainer.config import TrainConfig
from trainer.detection.families.base import FamilyTask
from trainer.detection.families.common import configure_train_data
from trainer.detection.families.yolo import FAMILY

LOG_NAMES = FAMILY.log_names


class GlobalBatchYoloTask(FamilyTask, yolo.YoloTask):
    """Model Garden's YOLO task with the seams ``trainer.detection.job`` uses."""

    def input_parser(self, params: Any) -> Any:
        """Model Garden's YOLO parser: resize, anchor assignment, padding."""
        from official.projects.yolo.dataloaders import yolo_input

        model = self.task_config.model
        backbone = model.backbone.get()
        anchors, limits = model.anchor_boxes.get(backbone.min_level, backbone.max_level)
        parser = params.parser
        return yolo_input.Parser(
            output_size=model.input_size, anchors=anchors, use_tie_breaker=parser.use_tie_breaker,
            jitter=parser.jitter, aug_scale_min=parser.aug_scale_min,
            aug_scale_max=parser.aug_scale_max, aug_rand_hue=parser.aug_rand_hue,
            aug_rand_saturation=parser.aug_rand_saturation,
            aug_rand_brightness=parser.aug_rand_brightness,
            max_num_instances=parser.max_num_instances,
            scale_xy=model.detection_generator.scale_xy.get(),
            expanded_strides=model.detection_generator.path_scales.get(),
            darknet=model.darknet_based_model, best_match_only=parser.best_match_only,
            anchor_t=parser.anchor_thresh, random_pad=parser.random_pad, level_limits=limits,
            dtype=params.dtype, **_shared_augmentation(params))

    def input_sample_fn(self, params: Any) -> Any:
        """Model Garden's mosaic step, off (frequency 0): it only marks the examples as not
        mosaicked, which the parser expects."""
        from official.projects.yolo.ops import mosaic

        model = self.task_config.model
        settings = params.parser.mosaic
        return mosaic.Mosaic(
            output_size=model.input_size, mosaic_frequency=settings.mosaic_frequency,
            mixup_frequency=settings.mixup_frequency, jitter=settings.jitter,
            mosaic_center=settings.mosaic_center, mosaic_crop_mode=settings.mosaic_crop_mode,
            aug_scale_min=settings.aug_scale_min, aug_scale_max=settings.aug_scale_max,
            **_shared_augmentation(params)).mosaic_fn(is_training=params.is_training)

    def warm_up(self, model: Any, image_size: int) -> None:
        """Nothing to do: Model Garden's ``build_model`` already built every variable."""

    def fine_tune_items(self, model: Any, fine_tune_type: str) -> dict[str, Any]:
        """``classification``: the backbone; ``detection``: also the decoder (the head's
        output convolutions depend on the class count); ``full``: everything."""
        return {"classification": {"backbone": model.backbone},
                "detection": {"backbone": model.backbone, "decoder": model.decoder},
                "full": dict(model.checkpoint_items)}[fine_tune_type]

    def train_step(self, inputs: Any, model: Any, optimizer: Any,
                   metrics: list[Any] | None = None) -> dict[str, Any]:
        """Model Garden's step, returning the loss parts (its own returns its metrics')."""
        from trainer.run.optim import minimize

        images, labels = inputs

        def compute() -> tuple[tf.Tensor, tuple[tf.Tensor, dict[str, tf.Tensor]]]:
            with _cpu_safe_grids():
                outputs = model(images, training=True)
                outputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), outputs)
                scaled, loss, parts = self.build_losses(outputs["raw_output"], labels)
            return scaled, (loss, parts["net"])

        loss, net = minimize(model, optimizer, compute)
        return {"total_loss": loss, "box_loss": net["box"], "conf_loss": net["conf"],
                "class_loss": net["class"]}

    def validation_step(self, inputs: Any, model: Any, metrics: list[Any] | None = None) -> Any:
        with _cpu_safe_grids():
            return super().validation_step(inputs, model, metrics)

    def build_metrics(self, training: bool = True) -> list[Any]:
        """Model Garden's per-level loss metrics (and, for eval, the COCO evaluator); the loop
        logs ``train_step``'s losses instead of them."""
        metrics = super().build_metrics(training)
        return [] if training else metrics

    def export_module(self, size: list[int]) -> Any:
        """Model Garden's YOLO export module: ``image_tensor`` in, boxes in the input image's
        coordinates out (the same signature as the other families)."""
        from official.core import config_definitions
        from official.projects.yolo.serving import export_module_factory

        params = config_definitions.ExperimentConfig(task=self.task_config)
        return export_module_factory.create_yolo_export_module(
            params, input_type="image_tensor", batch_size=None, input_image_size=size)


def _shared_augmentation(params: Any) -> dict[str, Any]:
    """The settings the mosaic step and the parser share."""
    parser = params.parser
    return {"letter_box": parser.letter_box, "aug_rand_translate": parser.aug_rand_translate,
            "aug_rand_angle": parser.aug_rand_angle,
            "aug_rand_perspective": parser.aug_rand_perspective,
            "area_thresh": parser.area_thresh, "random_flip": parser.random_flip,
            "seed": params.seed}


@contextlib.contextmanager
def _cpu_safe_grids() -> Iterator[None]:
    """While the loss is traced, build its ground-truth grids from the unmasked rows only.

    Model Garden's ``build_grid`` scatters the padded rows at index -1 on purpose: GPUs and TPUs
    drop out-of-range scatter indices, CPU TensorFlow raises. Dropping those rows before the
    scatter gives the same grid on every device."""
    original = loss_utils.build_grid
    loss_utils.build_grid = _build_grid
    try:
        yield
    finally:
        loss_utils.build_grid = original


def _build_grid(indexes: tf.Tensor, truths: tf.Tensor, preds: tf.Tensor, ind_mask: tf.Tensor,
                update: bool = False, grid: tf.Tensor | None = None) -> tf.Tensor:
    """``loss_utils.build_grid`` without the out-of-range rows (same arguments, same grid)."""
    width = tf.shape(preds)[-1]
    batch = tf.math.cumsum(tf.reduce_max(tf.ones_like(indexes), axis=-1, keepdims=True),
                           axis=0) - 1
    indexes = tf.reshape(tf.concat([batch, indexes], axis=-1), [-1, 4])
    truths = tf.reshape(truths, [-1, width])
    keep = tf.reshape(tf.cast(ind_mask, tf.bool), [-1])
    indexes, truths = tf.boolean_mask(indexes, keep), tf.boolean_mask(truths, keep)
    if grid is None:
        grid = tf.zeros_like(preds)
    truths = math_ops.rm_nan_inf(truths)
    if update:
        return tf.tensor_scatter_nd_update(grid, indexes, truths)
    return tf.tensor_scatter_nd_max(grid, indexes, truths)


def build_task(cfg: TrainConfig, num_classes: int, train_glob: str, local_files: int = 1,
               sync_bn: bool = False) -> GlobalBatchYoloTask:
    """The task for this run (its config is ``task_config``)."""
    return GlobalBatchYoloTask(task_config(cfg, num_classes, train_glob, local_files, sync_bn))


def _standard(task: Any, image_size: int) -> None:
    """Model Garden's ``yolo_darknet``: YOLOv4, CSP-Darknet-53, its anchors."""


def _tiny(task: Any, image_size: int) -> None:
    """YOLOv4-tiny: CSP-Darknet-tiny at a quarter of its width, levels 4-5, its anchors scaled
    to the image size."""
    from official.projects.yolo.configs import backbones, decoders
    from official.projects.yolo.configs import yolo as ycfg

    model = task.model
    model.backbone = backbones.Backbone(type="darknet", darknet=backbones.Darknet(
        model_id="cspdarknettiny", width_scale=0.25, min_level=4, max_level=5))
    model.decoder = decoders.Decoder(type="yolo_decoder", yolo_decoder=decoders.YoloDecoder(
        version="v4", type="tiny"))
    scale = image_size / 416  # YOLOv4-tiny's anchors are for 416 pixels
    model.anchor_boxes = ycfg.AnchorBoxes(anchors_per_scale=3, boxes=[
        ycfg.Box(box=[max(1, round(w * scale)), max(1, round(h * scale))])
        for w, h in ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))])


# model.size -> what it changes in the task config (``trainer.detection.families.base.PRESETS``)
PRESETS: dict[str, Callable[[Any, int], None]] = {"standard": _standard, "tiny": _tiny}


def task_config(cfg: TrainConfig, num_classes: int, train_glob: str, local_files: int = 1,
                sync_bn: bool = False) -> Any:
    """Model Garden's ``yolo_darknet`` (YOLOv4) task config for this run, mosaic off, at
    ``model.size`` (``PRESETS``).

    Class ids are used as they are (YOLO has no background class: id 0 is never labelled).
    """
    from official.core import exp_factory

    task = exp_factory.get_exp_config("yolo_darknet").task
    model = task.model
    model.num_classes = num_classes
    model.input_size = [cfg.image_size, cfg.image_size, 3]
    model.norm_activation.use_sync_bn = sync_bn
    task.smart_bias_lr = 0.0
    task.train_data.parser.mosaic.mosaic_frequency = 0.0
    for data in (task.train_data, task.validation_data):
        data.decoder.simple_decoder.coco91_to_80 = False
    PRESETS[cfg.model_size](task, cfg.image_size)
    configure_train_data(task.train_data, cfg, train_glob, local_files)
    parser = task.train_data.parser
    if cfg.deterministic_input:
        parser.aug_rand_saturation = parser.aug_rand_brightness = parser.aug_rand_hue = 0.0
    parser.random_flip = cfg.horizontal_flip and not cfg.deterministic_input
    return task

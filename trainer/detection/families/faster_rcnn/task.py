"""The Faster R-CNN family: Model Garden's two-stage detector (its Mask R-CNN task with masks
off: a backbone, an FPN, a class-agnostic region proposal network, multilevel RoIAlign and a
per-class box head), configured for this run, with its losses normalised over the global batch.

Model Garden's published Faster/Mask R-CNN checkpoints (ResNet-50 FPN, ``fasterrcnn_resnetfpn_coco``
and ``maskrcnn_resnetfpn_coco``) restore into it: the mask head of a Mask R-CNN checkpoint is
simply not read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf
from official.vision.tasks import maskrcnn

from trainer.config import TrainConfig
from trainer.detection.families.base import FamilyTask
from trainer.detection.families.common import backbone_config, configure_train_data
from trainer.detection.families.faster_rcnn import FAMILY

LOG_NAMES = FAMILY.log_names

# Model Garden adds this to each box loss's normaliser (the count of regressed coordinates).
_EPSILON = 0.01


class GlobalBatchFasterRCNNTask(FamilyTask, maskrcnn.MaskRCNNTask):
    """Model Garden's Faster R-CNN with box losses that match one replica's exactly.

    Model Garden already normalises both box losses by the all-reduced count of regressed
    coordinates, but adds its epsilon to the per-replica *mean*: N replicas divide by
    ``global + 0.01 N``, one replica by ``global + 0.01``. The score losses are per-image means
    and need nothing. ``sync_bn``/seeds aside, this is the whole difference.
    """

    def input_parser(self, params: Any) -> Any:
        """Model Garden's Mask R-CNN parser without masks: resize and pad, flip, RPN targets."""
        from official.vision.dataloaders import maskrcnn_input

        model = self.task_config.model
        parser = params.parser
        return maskrcnn_input.Parser(
            output_size=model.input_size[:2], min_level=model.min_level,
            max_level=model.max_level, num_scales=model.anchor.num_scales,
            aspect_ratios=model.anchor.aspect_ratios, anchor_size=model.anchor.anchor_size,
            rpn_match_threshold=parser.rpn_match_threshold,
            rpn_unmatched_threshold=parser.rpn_unmatched_threshold,
            rpn_batch_size_per_im=parser.rpn_batch_size_per_im,
            rpn_fg_fraction=parser.rpn_fg_fraction, aug_rand_hflip=parser.aug_rand_hflip,
            skip_crowd_during_training=parser.skip_crowd_during_training,
            max_num_instances=parser.max_num_instances, include_mask=False, dtype=params.dtype)

    def warm_up(self, model: Any, image_size: int) -> None:
        """Nothing to do: Model Garden's ``build_model`` already ran the model once."""

    def fine_tune_items(self, model: Any, fine_tune_type: str) -> dict[str, Any]:
        """What a fine-tune restores. ``detection`` takes everything but the class-dependent
        layers: the RPN (class-agnostic) and the box head's shared convs and fully-connected
        layers, not its classifier and per-class box regressor."""
        if fine_tune_type == "classification":
            return {"backbone": model.backbone}
        if fine_tune_type == "full":
            return dict(model.checkpoint_items)
        # Same attribute names as the head's own (a list: one head per cascade stage), so the
        # checkpoint's object graph matches.
        shared = [tf.train.Checkpoint(_convs=head._convs, _conv_norms=head._conv_norms,
                                      _fcs=head._fcs, _fc_norms=head._fc_norms)
                  for head in model.detection_head]
        return {"backbone": model.backbone, "decoder": model.decoder,
                "rpn_head": model.rpn_head, "detection_head": shared}

    def train_step(self, inputs: Any, model: Any, optimizer: Any,
                   metrics: list[Any] | None = None) -> dict[str, Any]:
        """Model Garden's step, returning every loss (its own returns only the total)."""
        from trainer.run.optim import minimize

        images, labels = inputs
        replicas = tf.distribute.get_strategy().num_replicas_in_sync

        def compute() -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            outputs = model(images, image_shape=labels["image_info"][:, 1, :],
                            anchor_boxes=labels["anchor_boxes"], gt_boxes=labels["gt_boxes"],
                            gt_classes=labels["gt_classes"], training=True)
            outputs = tf.nest.map_structure(lambda x: tf.cast(x, tf.float32), outputs)
            losses = self.build_losses(outputs=outputs, labels=labels, aux_losses=model.losses)
            return losses["total_loss"] / replicas, losses

        losses = minimize(model, optimizer, compute)
        for metric in metrics or []:
            metric.update_state(losses[metric.name])
        return {name: losses[name] for name in LOG_NAMES}

    def build_losses(self, outputs: Any, labels: Any, aux_losses: Any = None) -> Any:
        losses = dict(super().build_losses(outputs, labels, aux_losses))
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas == 1:
            return losses
        rpn = _rpn_box_coordinates(labels["rpn_box_targets"])
        frcnn = 4.0 * tf.reduce_sum(tf.cast(outputs["class_targets"] > 0, tf.float32))
        losses["rpn_box_loss"] *= _epsilon_fix(context, rpn, replicas)
        losses["frcnn_box_loss"] *= _epsilon_fix(context, frcnn, replicas)
        weights = self.task_config.losses
        model_loss = (weights.rpn_score_weight * losses["rpn_score_loss"]
                      + weights.rpn_box_weight * losses["rpn_box_loss"]
                      + weights.frcnn_class_weight * losses["frcnn_cls_loss"]
                      + weights.frcnn_box_weight * losses["frcnn_box_loss"])
        regularization = tf.reduce_sum(aux_losses) if aux_losses else 0.0
        losses["model_loss"] = model_loss
        losses["total_loss"] = weights.loss_weight * (model_loss + regularization)
        return losses


def _rpn_box_coordinates(targets: dict[str, tf.Tensor]) -> tf.Tensor:
    """How many RPN box coordinates this replica regresses (Model Garden's ``valid_mask``)."""
    total = tf.constant(0.0)
    for level in sorted(targets):
        shape = targets[level].get_shape().as_list()
        boxes = tf.reshape(targets[level], [-1, shape[1], shape[2], shape[3] // 4, 4])
        valid = tf.reduce_any(tf.abs(boxes) > 1e-6, axis=-1)
        total += 4.0 * tf.reduce_sum(tf.cast(valid, tf.float32))
    return tf.stop_gradient(total)


def _epsilon_fix(context: Any, local: tf.Tensor, replicas: int) -> tf.Tensor:
    """``(mean + eps) / (mean + eps / N)``: Model Garden's per-replica normaliser replaced by
    the one that a single replica with the global batch uses."""
    mean = context.all_reduce(tf.distribute.ReduceOp.MEAN, local)
    return (mean + _EPSILON) / (mean + _EPSILON / replicas)


def build_task(cfg: TrainConfig, num_classes: int, train_glob: str, local_files: int = 1,
               sync_bn: bool = False) -> GlobalBatchFasterRCNNTask:
    """The task for this run (its config is ``task_config``)."""
    return GlobalBatchFasterRCNNTask(task_config(cfg, num_classes, train_glob, local_files,
                                                 sync_bn))


def _standard(task: Any) -> None:
    """Model Garden's Faster R-CNN: a 256-filter FPN, its RPN, samplers and box head."""
    from official.vision.configs import decoders

    task.model.decoder = decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=256))
    task.losses.l2_weight_decay = 4e-5


def _tiny(task: Any) -> None:
    """For CPU demos and tests: a 32-filter FPN on levels 3-5, anchors of 16 to 64 pixels, a
    head of one 64-wide fully-connected layer, and samplers that fit the image, so every anchor
    and every proposal is used: the RPN's 256 anchors per image cover all of a 64-pixel image's
    252 anchors, and the RoI sampler's 24 RoIs are the 16 proposals and 8 ground-truth slots
    (training keeps 8 boxes per image; the records scan counts the examples with more).
    Sampling nothing out is also what lets N workers train exactly like one (the samplers draw
    at random). Evaluation: 64 proposals, 100 boxes."""
    from official.vision.configs import decoders

    model = task.model
    model.decoder = decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=32))
    model.min_level, model.max_level = 3, 5
    model.anchor.aspect_ratios = [0.5, 1.0, 2.0]
    model.anchor.anchor_size = 2.0
    model.rpn_head.num_filters = 32
    model.detection_head.num_convs, model.detection_head.num_filters = 0, 32
    model.detection_head.fc_dims = 64
    model.roi_generator.pre_nms_top_k = model.roi_generator.test_pre_nms_top_k = 256
    model.roi_generator.num_proposals = 16
    model.roi_generator.test_num_proposals = 64
    # Every proposal and ground-truth slot is a sampled RoI (the sampler cannot take more than
    # its candidates), whatever the foreground share. Few of each, so that the foreground is
    # not drowned (with 64 proposals the head learnt to say background).
    task.train_data.parser.max_num_instances = 8
    model.roi_sampler.num_sampled_rois = 16 + 8
    model.roi_sampler.foreground_fraction = 1.0
    task.losses.l2_weight_decay = 0.0


# model.size -> what it changes in the task config (``trainer.detection.families.base.PRESETS``)
PRESETS: dict[str, Callable[[Any], None]] = {"standard": _standard, "tiny": _tiny}


def task_config(cfg: TrainConfig, num_classes: int, train_glob: str, local_files: int = 1,
                sync_bn: bool = False) -> Any:
    """A Model Garden ``MaskRCNNTask`` config without masks for this run, at ``model.size``
    (``PRESETS``)."""
    from official.vision.configs import maskrcnn as mcfg

    task = mcfg.MaskRCNNTask()
    model = task.model
    model.include_mask = False
    model.mask_head = model.mask_sampler = model.mask_roi_aligner = None
    model.num_classes = num_classes
    model.input_size = [cfg.image_size, cfg.image_size, 3]
    model.norm_activation.use_sync_bn = sync_bn
    model.backbone = backbone_config(cfg)
    PRESETS[cfg.model_size](task)
    configure_train_data(task.train_data, cfg, train_glob, local_files)
    task.train_data.parser.aug_rand_hflip = cfg.horizontal_flip and not cfg.deterministic_input
    return task

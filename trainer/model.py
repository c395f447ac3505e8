"""The detector: Model Garden RetinaNet, configured for this run, with losses normalised over the
global batch so that N workers with global batch B train exactly like one worker with batch B."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from official.vision.tasks import retinanet

from trainer.config import TrainConfig


class GlobalBatchRetinaNetTask(retinanet.RetinaNetTask):
    """RetinaNet whose losses are normalised by the positive anchors of the whole global batch.

    Model Garden divides each replica's loss by that replica's positive anchors, so the gradient
    depends on how the global batch is split across replicas. Here each replica's loss is scaled
    by ``replicas * (local positives + 1) / (global positives + 1)``: after the strategy's
    ``loss / replicas`` and gradient sum, the update equals the single-replica one.
    """

    def build_losses(self, outputs: Any, labels: Any, aux_losses: Any = None) -> Any:
        total, cls_loss, box_loss, model_loss = super().build_losses(outputs, labels, aux_losses)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas == 1:
            return total, cls_loss, box_loss, model_loss
        local = tf.stop_gradient(tf.reduce_sum(labels["box_weights"]))
        global_ = context.all_reduce(tf.distribute.ReduceOp.SUM, local)
        factor = tf.cast(replicas, tf.float32) * (local + 1.0) / (global_ + 1.0)
        cls_loss, box_loss, model_loss = cls_loss * factor, box_loss * factor, model_loss * factor
        regularization = tf.reduce_sum(aux_losses) if aux_losses else 0.0
        total = self.task_config.losses.loss_weight * (model_loss + regularization)
        return total, cls_loss, box_loss, model_loss


def task_config(cfg: TrainConfig, num_classes: int, train_glob: str, local_files: int = 1,
                sync_bn: bool = False) -> Any:
    """A Model Garden ``RetinaNetTask`` config for this run."""
    from official.vision.configs import backbones, decoders
    from official.vision.configs import retinanet as rcfg

    task = rcfg.RetinaNetTask()
    model = task.model
    model.num_classes = num_classes
    model.input_size = [cfg.image_size, cfg.image_size, 3]
    # Per-replica batches are small in detection: batch norm statistics over the global batch.
    model.norm_activation.use_sync_bn = sync_bn
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
    # What a pipeline.config says (``trainer.pipeline_config``) wins over both.
    structure = {"min_level": (model, "min_level"), "max_level": (model, "max_level"),
                 "anchor_size": (model.anchor, "anchor_size"),
                 "aspect_ratios": (model.anchor, "aspect_ratios"),
                 "num_scales": (model.anchor, "num_scales"),
                 "fpn_filters": (model.decoder.fpn, "num_filters"),
                 "fpn_separable": (model.decoder.fpn, "use_separable_conv"),
                 "head_filters": (model.head, "num_filters"),
                 "head_convs": (model.head, "num_convs"),
                 "head_separable": (model.head, "use_separable_conv"),
                 "focal_alpha": (task.losses, "focal_loss_alpha"),
                 "focal_gamma": (task.losses, "focal_loss_gamma")}
    for name, (target, attribute) in structure.items():
        value = getattr(cfg, name)
        if value is not None:
            setattr(target, attribute, value)
    task.losses.l2_weight_decay = 0.0 if tiny else 4e-5
    task.init_checkpoint_modules = {"classification": "backbone",
                                    "detection": ["backbone", "decoder"],
                                    "full": "all"}[cfg.fine_tune_type]
    data = task.train_data
    data.input_path = train_glob
    data.global_batch_size = cfg.global_batch_size
    data.is_training = True
    data.dtype = "float32"
    data.seed = cfg.seed
    data.sharding = False  # each worker already pulled only its own shards
    if cfg.deterministic_input:
        # Records alternate between the files one by one, in a fixed order, unshuffled and
        # unaugmented: reproducible, and N workers see the same global batches as one.
        data.shuffle_buffer_size = 1
        data.cycle_length, data.block_length, data.deterministic = max(local_files, 1), 1, True
    else:
        data.shuffle_buffer_size = 256
        data.parser.aug_rand_hflip = cfg.horizontal_flip
    return task

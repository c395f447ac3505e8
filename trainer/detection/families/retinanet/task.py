"""The detector: Model Garden RetinaNet, configured for this run, with losses normalised over the
global batch so that N workers with global batch B train exactly like one worker with batch B."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from official.vision.tasks import retinanet

from trainer.config import TrainConfig
from trainer.detection.families.base import FamilyTask
from trainer.detection.families.common import backbone_config, configure_train_data
from trainer.detection.families.retinanet import FAMILY

LOG_NAMES = FAMILY.log_names

# Conv weights an OD-API conv_hyperparams initializer draws (biases, batch norm: not).
KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


class GlobalBatchRetinaNetTask(FamilyTask, retinanet.RetinaNetTask):
    """RetinaNet whose losses are normalised by the positive anchors of the whole global batch,
    and whose backbone, FPN and head may each have their own conv hyper-parameters.

    Model Garden divides each replica's loss by that replica's positive anchors, so the gradient
    depends on how the global batch is split across replicas. Here each replica's loss is scaled
    by ``replicas * (local positives + 1) / (global positives + 1)``: after the strategy's
    ``loss / replicas`` and gradient sum, the update equals the single-replica one.

    Model Garden has one ``norm_activation`` and one L2 weight for the whole network; an OD-API
    config sets the FPN's and the head's separately (``layer_hyperparams``: part -> activation,
    batch-norm momentum and epsilon, L2, kernel initializer), and the backbone's only when it
    says so.
    """

    def __init__(self, params: Any, layer_hyperparams: dict[str, dict[str, Any]] | None = None,
                 seed: int = 0, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.layer_hyperparams = dict(layer_hyperparams or {})
        self.seed = seed

    def input_parser(self, params: Any) -> Any:
        """Model Garden's RetinaNet parser: resize, flip, anchor labelling, padding."""
        from official.vision.dataloaders import retinanet_input

        model = self.task_config.model
        return retinanet_input.Parser(
            output_size=model.input_size[:2], min_level=model.min_level,
            max_level=model.max_level, num_scales=model.anchor.num_scales,
            aspect_ratios=model.anchor.aspect_ratios, anchor_size=model.anchor.anchor_size,
            dtype=params.dtype, match_threshold=params.parser.match_threshold,
            unmatched_threshold=params.parser.unmatched_threshold,
            aug_rand_hflip=params.parser.aug_rand_hflip,
            skip_crowd_during_training=params.parser.skip_crowd_during_training,
            max_num_instances=params.parser.max_num_instances,
            box_coder_weights=model.detection_generator.box_coder_weights)

    def warm_up(self, model: Any, image_size: int) -> None:
        """Run the model once, which creates its variables."""
        model(tf.zeros([1, image_size, image_size, 3]), training=False)

    def fine_tune_items(self, model: Any, fine_tune_type: str) -> dict[str, Any]:
        """What a fine-tune restores, as the OD API and Model Garden do: ``classification``
        the backbone, ``detection`` also the FPN (the head's towers are trained anew), ``full``
        everything."""
        return {"classification": {"backbone": model.backbone},
                "detection": {"backbone": model.backbone, "decoder": model.decoder},
                "full": dict(model.checkpoint_items)}[fine_tune_type]

    def _part(self, name: str) -> tuple[Any, Any]:
        """(a model config whose norm_activation is this part's, its L2 regularizer)."""
        import tf_keras

        model = copy.deepcopy(self.task_config.model)
        l2 = self.task_config.losses.l2_weight_decay
        params = self.layer_hyperparams.get(name)
        if params:
            model.norm_activation.activation = params["activation"]
            model.norm_activation.norm_momentum = params["norm_momentum"]
            model.norm_activation.norm_epsilon = params["norm_epsilon"]
            l2 = params["l2"]
        # Model Garden's own convention: keras l2(decay / 2) is tf.nn.l2_loss times decay.
        return model, tf_keras.regularizers.l2(l2 / 2.0) if l2 else None

    def build_model(self) -> Any:
        """Model Garden's RetinaNet, each part built with its own hyper-parameters."""
        import tf_keras
        from official.vision.modeling import backbones, decoders, factory

        specs = tf_keras.layers.InputSpec(shape=[None, *self.task_config.model.input_size])
        config, l2 = self._part("backbone")
        backbone = backbones.factory.build_backbone(
            input_specs=specs, backbone_config=config.backbone,
            norm_activation_config=config.norm_activation, l2_regularizer=l2)
        config, l2 = self._part("decoder")
        decoder = decoders.factory.build_decoder(input_specs=backbone.output_specs,
                                                 model_config=config, l2_regularizer=l2)
        config, l2 = self._part("head")
        model = factory.build_retinanet(input_specs=specs, model_config=config,
                                        l2_regularizer=l2, backbone=backbone, decoder=decoder)
        for part in ("backbone", "decoder", "head"):
            spec = (self.layer_hyperparams.get(part) or {}).get("initializer")
            if spec:
                self._initialize(getattr(model, part), spec)
        if self.task_config.freeze_backbone:
            model.backbone.trainable = False
        return model

    def _initialize(self, part: Any, spec: dict[str, Any]) -> None:
        """Draw a part's conv kernels from the config's initializer, as the OD API builds them
        (before any checkpoint is restored: only new layers keep these values). Seeded per
        kernel, so that every worker draws the same values."""
        import tf_keras

        kernels = [weight for weight in part.weights
                   if weight.name.rsplit("/", 1)[-1].split(":")[0] in KERNELS]
        for index, kernel in enumerate(kernels):
            initializer = tf_keras.initializers.get({
                "class_name": spec["class_name"],
                "config": {**spec["config"], "seed": self.seed * 7919 + index}})
            kernel.assign(initializer(kernel.shape, dtype=kernel.dtype))

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


def build_task(cfg: TrainConfig, num_classes: int, train_glob: str, local_files: int = 1,
               sync_bn: bool = False) -> GlobalBatchRetinaNetTask:
    """The task for this run: its config (``task_config``) and per-part hyper-parameters."""
    return GlobalBatchRetinaNetTask(task_config(cfg, num_classes, train_glob, local_files,
                                                sync_bn), layer_hyperparams=cfg.layer_hyperparams,
                                    seed=cfg.seed)


def _standard(task: Any) -> None:
    """Model Garden's RetinaNet: a 256-filter FPN on levels 3-7, its head and anchors."""
    from official.vision.configs import decoders

    task.model.decoder = decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=256))
    task.losses.l2_weight_decay = 4e-5


def _tiny(task: Any) -> None:
    """For CPU demos and tests: a 32-filter FPN on levels 3-5, one 32-wide head conv, one
    anchor per location, no weight decay."""
    from official.vision.configs import decoders

    model = task.model
    model.decoder = decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=32))
    model.min_level, model.max_level = 3, 5
    model.head.num_convs, model.head.num_filters = 1, 32
    model.anchor.num_scales, model.anchor.aspect_ratios = 1, [1.0]
    task.losses.l2_weight_decay = 0.0


# model.size -> what it changes in the task config (``trainer.detection.families.base.PRESETS``)
PRESETS: dict[str, Callable[[Any], None]] = {"standard": _standard, "tiny": _tiny}


def task_config(cfg: TrainConfig, num_classes: int, train_glob: str, local_files: int = 1,
                sync_bn: bool = False) -> Any:
    """A Model Garden ``RetinaNetTask`` config for this run."""
    from official.vision.configs import retinanet as rcfg

    task = rcfg.RetinaNetTask()
    model = task.model
    model.num_classes = num_classes
    model.input_size = [cfg.image_size, cfg.image_size, 3]
    # Per-replica batches are small in detection: batch norm statistics over the global batch.
    model.norm_activation.use_sync_bn = sync_bn
    model.backbone = backbone_config(cfg)
    PRESETS[cfg.model_size](task)
    # What a pipeline.config says (``trainer.pipeline.config``) wins over both.
    for path, value in cfg.model_garden.items():
        *parents, name = path.split(".")
        target = task
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    configure_train_data(task.train_data, cfg, train_glob, local_files)
    task.train_data.parser.aug_rand_hflip = cfg.horizontal_flip and not cfg.deterministic_input
    return task

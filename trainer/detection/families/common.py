"""What the Model Garden families share: the backbone choice and the training input."""

from __future__ import annotations

from typing import Any

from trainer.config import TrainConfig


def backbone_config(cfg: TrainConfig) -> Any:
    """The backbone every family shares: MobileNetV2 or ResNet-50 (``tiny``: MobileNetV2 x0.35
    or ResNet-18)."""
    from official.vision.configs import backbones

    tiny = cfg.model_size == "tiny"
    if cfg.backbone == "mobilenetv2":
        return backbones.Backbone(type="mobilenet", mobilenet=backbones.MobileNet(
            model_id="MobileNetV2", filter_size_scale=0.35 if tiny else 1.0))
    return backbones.Backbone(type="resnet", resnet=backbones.ResNet(model_id=18 if tiny else 50))


def configure_train_data(data: Any, cfg: TrainConfig, train_glob: str, local_files: int) -> None:
    """The training input every family shares: this worker's files, the global batch, the seed,
    and either shuffling or the deterministic order (augmentation is each family's: off in the
    deterministic order)."""
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

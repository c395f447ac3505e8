"""What the Model Garden families share: the backbone choice and the training input."""

from __future__ import annotations

from typing import Any

from trainer.config import TrainConfig

# (backbone, preset) -> the Model Garden backbone: the published ones, and for the tiny preset
# MobileNetV2 at 0.35 of its width and ResNet-18.
BACKBONES: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("mobilenetv2", "standard"): ("mobilenet", {"model_id": "MobileNetV2"}),
    ("mobilenetv2", "tiny"): ("mobilenet", {"model_id": "MobileNetV2",
                                            "filter_size_scale": 0.35}),
    ("resnet50", "standard"): ("resnet", {"model_id": 50}),
    ("resnet50", "tiny"): ("resnet", {"model_id": 18}),
}


def backbone_config(cfg: TrainConfig) -> Any:
    """The backbone the Model Garden families share: ``model.backbone`` at ``model.size``."""
    from official.vision.configs import backbones

    kind, settings = BACKBONES[(cfg.backbone, cfg.model_size)]
    config = {"mobilenet": backbones.MobileNet, "resnet": backbones.ResNet}[kind](**settings)
    return backbones.Backbone(type=kind, **{kind: config})


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

"""SSD, the OD API's own (``ssd { ... }`` of a TF2 Detection Zoo pipeline.config): MobileNet V1/V2
and ResNet V1 FPN feature extractors, SSD MobileNet V2, the weight-shared and the convolutional
box predictors, restoring zoo checkpoints by their own keys. Checked against the OD API's outputs
(``tests/integration/test_od_api_fixtures.py``)."""

from __future__ import annotations

from types import ModuleType
from typing import Any, ClassVar

from trainer.detection.families.base import Family


class Ssd(Family):
    """The OD API's SSD, ported."""

    name = "ssd"
    help = ("the TF2 Detection Zoo's SSD as the OD API builds it, from a pipeline.config's ssd "
            "block (zoo checkpoints restore as they are)")
    checkpoint_markers = ("model/_box_predictor/",)
    log_names = ("total_loss", "cls_loss", "box_loss")
    backbones: ClassVar[tuple[str, ...]] = ()
    own_backbone = "the pipeline.config's feature_extractor"
    reads_pipeline_config = True
    od_api_native = True
    presets: ClassVar[tuple[str, ...]] = ("standard",)  # the pipeline.config sizes the network
    # The FPN's top input (level 5) is upsampled onto level 4: sizes are multiples of 32.
    max_levels: ClassVar[dict[str, int]] = {"standard": 5}

    def image_stride(self, preset: str, max_level: int | None = None,
                     network: Any = None) -> int:
        """The ssd block's own multiple (none for SSD's extra layers, 32 for an FPN)."""
        if network is None:
            return super().image_stride(preset, max_level)
        return network.size_multiple

    def tasks(self) -> ModuleType:
        from trainer.detection.families.ssd import task

        return task


FAMILY = Ssd()

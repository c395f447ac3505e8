"""RetinaNet, Model Garden's (``official.vision``): MobileNetV2 or ResNet-50, FPN, a shared
class/box head. What an OD-API pipeline.config's ``ssd`` block maps onto (``trainer.pipeline``)."""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

from trainer.detection.families.base import Family


class RetinaNet(Family):
    """Model Garden's RetinaNet."""

    name = "retinanet"
    help = "Model Garden's RetinaNet (the default; what a pipeline.config's ssd block describes)"
    checkpoint_markers = ("head/_classifier/",)
    max_levels: ClassVar[dict[str, int]] = {"standard": 7, "tiny": 5}
    log_names = ("total_loss", "cls_loss", "box_loss")
    reads_pipeline_config = True

    def tasks(self) -> ModuleType:
        from trainer.detection.families.retinanet import task

        return task


FAMILY = RetinaNet()

"""Faster R-CNN, Model Garden's (its Mask R-CNN task with masks off): FPN, two stages."""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

from trainer.detection.families.base import Family


class FasterRCNN(Family):
    """Model Garden's Faster R-CNN."""

    name = "faster_rcnn"
    help = "Model Garden's Faster R-CNN (FPN, two stages)"
    checkpoint_markers = ("rpn_head/", "detection_head/")
    max_levels: ClassVar[dict[str, int]] = {"standard": 6, "tiny": 5}
    log_names = ("total_loss", "rpn_score_loss", "rpn_box_loss", "frcnn_cls_loss",
                 "frcnn_box_loss")

    def tasks(self) -> ModuleType:
        from trainer.detection.families.faster_rcnn import task

        return task


FAMILY = FasterRCNN()

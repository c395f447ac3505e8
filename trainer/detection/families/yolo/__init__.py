"""YOLO, Model Garden's (``official.projects.yolo``): YOLOv4 on CSP-Darknet-53 (tiny:
YOLOv4-tiny)."""

from __future__ import annotations

from types import ModuleType

from trainer.detection.families.base import Family


class Yolo(Family):
    """Model Garden's YOLOv4."""

    name = "yolo"
    help = "Model Garden's YOLOv4 (CSP-Darknet: no backbone choice)"
    checkpoint_markers = ("head/_head/",)
    log_names = ("total_loss", "box_loss", "conf_loss", "class_loss")
    backbones = ()
    own_backbone = "CSP-Darknet (model.size picks YOLOv4 or YOLOv4-tiny)"

    def tasks(self) -> ModuleType:
        from trainer.detection.families.yolo import task

        return task


FAMILY = Yolo()

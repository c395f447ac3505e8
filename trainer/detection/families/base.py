"""What every detector family is, without building it (no TensorFlow here): the ``Family`` the
launcher, the field table and the checkpoint reader see, and ``FamilyTask``, the optional hooks
a family's Model Garden task may override."""

from __future__ import annotations

from types import ModuleType
from typing import Any, ClassVar

# Named model sizes (``model.size``): standard is the published architecture; tiny a narrow
# variant for CPU demos and tests. Each family's task module maps every name to its settings.
PRESETS: dict[str, str] = {
    "standard": "the published architecture",
    "tiny": "a narrow model for CPU demos and tests",
}


class Family:
    """One detector family. A subclass sets the class attributes and ``tasks``; the rest has
    defaults that suit a family which needs nothing special.

    The heavy code (a Model Garden task whose losses are normalised over the global batch, with
    ``input_parser``, ``warm_up`` and ``fine_tune_items``) is in the module ``tasks`` returns,
    imported only when a run builds the model: its ``build_task`` and ``task_config`` take
    ``(cfg, num_classes, train_glob, local_files=1, sync_bn=False)``.
    """

    name: ClassVar[str]
    help: ClassVar[str]  # one line: the spec's docs and the CLI's help
    # Top-level checkpoint keys that only this family's checkpoints have (Model Garden's
    # ``checkpoint_items`` names), by which a checkpoint's family is told.
    checkpoint_markers: ClassVar[tuple[str, ...]] = ()
    log_names: ClassVar[tuple[str, ...]] = ("total_loss",)  # the losses logged while training
    presets: ClassVar[tuple[str, ...]] = tuple(PRESETS)  # the model.size values it has
    # The backbones ``model.backbone`` may choose; empty: the family has one of its own, and
    # ``own_backbone`` says which (the refusal's words).
    backbones: ClassVar[tuple[str, ...]] = ("mobilenetv2", "resnet50")
    own_backbone: ClassVar[str] = ""
    # Whether an OD-API pipeline.config's ``ssd`` block describes this family.
    reads_pipeline_config: ClassVar[bool] = False
    # Whether it is the OD API's own network: it reads the ``ssd`` block itself (not mapped onto
    # Model Garden) and restores OD-API checkpoints by their keys.
    od_api_native: ClassVar[bool] = False
    # The coarsest feature level of each preset: the input size must be a multiple of
    # 2**level (Model Garden pads the image up to one, which the model then refuses).
    max_levels: ClassVar[dict[str, int]] = {"standard": 5, "tiny": 5}

    def image_stride(self, preset: str, max_level: int | None = None,
                     network: Any = None) -> int:
        """What the input size must be a multiple of; ``max_level`` overrides the preset's
        (a pipeline.config's FPN levels); ``network``: the pipeline.config's model block as
        an ``od_api_native`` family reads it (None until that is known)."""
        return 2 ** (max_level if max_level is not None else self.max_levels[preset])

    def tasks(self) -> ModuleType:
        """The module with this family's ``build_task`` and ``task_config`` (heavy imports)."""
        raise NotImplementedError

    def build_task(self, cfg: Any, num_classes: int, train_glob: str, local_files: int = 1,
                   sync_bn: bool = False) -> Any:
        """The Model Garden task of this run."""
        return self.tasks().build_task(cfg, num_classes, train_glob, local_files, sync_bn)

    def task_config(self, cfg: Any, num_classes: int, train_glob: str = "") -> Any:
        """The task's configuration alone (a dataclass: no model is built)."""
        return self.tasks().task_config(cfg, num_classes, train_glob)

    def holds(self, names: set[str]) -> bool:
        """Whether a checkpoint with these variable names is one of this family's."""
        return any(name.startswith(self.checkpoint_markers) for name in names)


class FamilyTask:
    """Optional hooks of a family's Model Garden task, with the defaults the shared input
    pipeline and export use; a family's task class lists this first among its bases."""

    def input_sample_fn(self, params: Any) -> Any:
        """A step between decoding and parsing for Model Garden's input reader (YOLO's mosaic);
        None: none."""
        return None

    def export_module(self, size: list[int]) -> Any:
        """The export's serving module; None: Model Garden's detection module."""
        return None

    def export_saved_model(self, checkpoint: str, export_dir: Any) -> Any:
        """Write the inference SavedModel of ``checkpoint``; Model Garden's export by default."""
        from trainer.detection.export import export_saved_model

        return export_saved_model(self, checkpoint, export_dir)

"""Export the trained model as a SavedModel for inference (Model Garden's detection module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export_saved_model(task: Any, checkpoint_prefix: str, export_dir: Path) -> Path:
    """Write a SavedModel with an ``image_tensor`` signature (uint8 [batch, h, w, 3]) of the
    model ``task`` builds (its per-part hyper-parameters included)."""
    import tensorflow as tf
    from official.core import config_definitions
    from official.vision.serving import detection, export_saved_model_lib

    size = list(task.task_config.model.input_size[:2])
    params = config_definitions.ExperimentConfig(task=task.task_config)
    module = task.export_module(size)  # a family's own (YOLO), else Model Garden's
    if module is None:
        module = detection.DetectionModule(params=params, batch_size=None,
                                           input_image_size=size, input_type="image_tensor",
                                           num_channels=3, model=task.build_model())
    # Our checkpoints hold the model's parts at the root (and the optimizer, not needed here).
    checkpoint = tf.train.Checkpoint(**module.model.checkpoint_items)
    export_saved_model_lib.export_inference_graph(
        input_type="image_tensor", batch_size=None, input_image_size=size, params=params,
        checkpoint_path=checkpoint_prefix, export_dir=str(export_dir), export_module=module,
        checkpoint=checkpoint)
    return export_dir

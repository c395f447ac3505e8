"""COCO-style evaluation of the trained model on the eval TFRecords (chief only, after training)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def evaluate(task: Any, model: Any, eval_files: list[Path], batch_size: int,
             name_to_id: dict[str, int] | None = None, compression: str = "",
             undecodable: set[int] | None = None) -> dict[str, float]:
    """COCO metrics (AP, AP50, ..., ARmax100) and mean losses over every usable eval record,
    read like the training records (class names through the label map, GZIP)."""
    import tensorflow as tf

    from trainer.detection.data import build_dataset

    data = task.task_config.validation_data
    data.input_path = ",".join(str(p) for p in eval_files)
    data.global_batch_size = batch_size
    data.is_training = False
    data.dtype = "float32"
    data.drop_remainder = False
    dataset = build_dataset(task, data, name_to_id, compression=compression,
                            undecodable=undecodable)
    metrics = task.build_metrics(training=False)

    @tf.function
    def step(inputs: Any) -> Any:
        logs = task.validation_step(inputs, model, metrics)
        groundtruths, outputs = logs[task.coco_metric.name]
        # The parser emits num_detections as shape [1] per image; Model Garden's COCO converter
        # calls int() on it, which NumPy 2 rejects for 1-d arrays. Give it one scalar per image.
        groundtruths = {**groundtruths,
                        "num_detections": tf.reshape(groundtruths["num_detections"], [-1])}
        return {**logs, task.coco_metric.name: (groundtruths, outputs)}

    state = None
    batches = 0
    for inputs in dataset:
        logs = step(inputs)
        state = task.aggregate_logs(state, logs)
        batches += 1
    if batches == 0:
        raise ValueError("the eval TFRecords hold no examples")
    result = {k: float(v) for k, v in task.reduce_aggregated_logs(state).items()
              if np.ndim(v) == 0}
    for metric in metrics:
        value = metric.result()
        # A family's metric may hold several (YOLO's per level: loss, avg_iou, avg_obj).
        values = value if isinstance(value, dict) else {"": value}
        result.update({f"loss/{metric.name}{'/' + k if k else ''}": float(v)
                       for k, v in values.items()})
    return result

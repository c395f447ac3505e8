"""SSD's box arithmetic as the OD API does it: anchors (multiscale and SSD grids, normalised
[ymin, xmin, ymax, xmax], in (y, x, anchor) order with the aspect ratio outermost), the Faster
R-CNN box coder, IoU, the arg-max matcher and the targets it assigns."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.detection.families.ssd.spec import MultiscaleAnchors, SsdAnchors

EPSILON = 1e-8  # the box coder's guard against zero sizes


def _tile(grid: tuple[int, int], scales: list[float], ratios: list[float],
          base: tuple[float, float], stride: tuple[float, float],
          offset: tuple[float, float]) -> np.ndarray:
    """Anchors of one grid: for each (y, x) cell, one per (scale, ratio) pair in order."""
    root = np.sqrt(np.asarray(ratios, np.float32))
    heights = np.asarray(scales, np.float32) / root * np.float32(base[0])
    widths = np.asarray(scales, np.float32) * root * np.float32(base[1])
    ys = np.arange(grid[0], dtype=np.float32) * np.float32(stride[0]) + np.float32(offset[0])
    xs = np.arange(grid[1], dtype=np.float32) * np.float32(stride[1]) + np.float32(offset[1])
    cy = np.broadcast_to(ys[:, None, None], (grid[0], grid[1], len(scales)))
    cx = np.broadcast_to(xs[None, :, None], cy.shape)
    h = np.broadcast_to(heights, cy.shape)
    w = np.broadcast_to(widths, cy.shape)
    boxes = np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], -1)
    return boxes.reshape(-1, 4).astype(np.float32)


def anchors(spec: MultiscaleAnchors | SsdAnchors, grids: list[tuple[int, int]],
            height: int, width: int) -> np.ndarray:
    """Every anchor of an image of ``height`` x ``width`` whose feature maps are ``grids``."""
    if isinstance(spec, MultiscaleAnchors):
        out = []
        for level, grid in zip(range(spec.min_level, spec.max_level + 1), grids, strict=True):
            stride = 2.0 ** level
            scales = [2.0 ** (i / spec.scales_per_octave) for i in range(spec.scales_per_octave)]
            pairs = [(s, r) for r in spec.aspect_ratios for s in scales]  # ratio outermost
            # The centre offset is half a stride only where the image divides evenly.
            offset = (stride / 2 if height % stride == 0 or height == 1 else 0.0,
                      stride / 2 if width % stride == 0 or width == 1 else 0.0)
            size = spec.anchor_scale * stride
            boxes = _tile(grid, [p[0] for p in pairs], [p[1] for p in pairs], (size, size),
                          (stride, stride), offset)
            out.append(boxes / np.asarray([height, width, height, width], np.float32))
        return np.concatenate(out).astype(np.float32)
    return np.concatenate([_tile(grid, [s for s, _ in specs], [r for _, r in specs],
                                 _ssd_base(spec, height, width), (1.0 / grid[0], 1.0 / grid[1]),
                                 (0.5 / grid[0], 0.5 / grid[1]))
                           for grid, specs in zip(grids, ssd_box_specs(spec), strict=True)])


def _ssd_base(spec: SsdAnchors, height: int, width: int) -> tuple[float, float]:
    short = min(height, width)
    return spec.base_anchor_size[0] * short / height, spec.base_anchor_size[1] * short / width


def ssd_box_specs(spec: SsdAnchors) -> list[list[tuple[float, float]]]:
    """(scale, aspect ratio) of each anchor at a location, per layer: the scales spread
    linearly from ``min_scale`` to ``max_scale``, plus one between a layer's and the next."""
    n = spec.num_layers
    scales = list(spec.scales) or [spec.min_scale + (spec.max_scale - spec.min_scale) * i
                                   / (n - 1) for i in range(n)]
    scales = [*scales, 1.0]
    out = []
    for layer in range(n):
        scale, following = scales[layer], scales[layer + 1]
        if layer == 0 and spec.reduce_boxes_in_lowest_layer:
            out.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        specs = [(scale, r) for r in spec.aspect_ratios]
        if spec.interpolated_scale_aspect_ratio > 0.0:
            specs.append((math.sqrt(scale * following), spec.interpolated_scale_aspect_ratio))
        out.append(specs)
    return out


def _centres(boxes: Any) -> tuple[Any, Any, Any, Any]:
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    h, w = ymax - ymin, xmax - xmin
    return ymin + 0.5 * h, xmin + 0.5 * w, h, w


def encode(boxes: Any, anchors: Any, scales: tuple[float, ...]) -> Any:
    """Faster R-CNN box codes of ``boxes`` relative to ``anchors`` (same leading shape)."""
    ya, xa, ha, wa = _centres(anchors)
    y, x, h, w = _centres(boxes)
    ha, wa, h, w = ha + EPSILON, wa + EPSILON, h + EPSILON, w + EPSILON
    return tf.stack([(y - ya) / ha * scales[0], (x - xa) / wa * scales[1],
                     tf.math.log(h / ha) * scales[2], tf.math.log(w / wa) * scales[3]], -1)


def decode(codes: Any, anchors: Any, scales: tuple[float, ...]) -> Any:
    """Boxes from codes (no clipping of the size codes, as the OD API)."""
    ya, xa, ha, wa = _centres(anchors)
    ty, tx, th, tw = tf.unstack(codes, axis=-1)
    h, w = tf.exp(th / scales[2]) * ha, tf.exp(tw / scales[3]) * wa
    y, x = ty / scales[0] * ha + ya, tx / scales[1] * wa + xa
    return tf.stack([y - 0.5 * h, x - 0.5 * w, y + 0.5 * h, x + 0.5 * w], -1)


def iou(boxes: Any, anchors: Any) -> Any:
    """[M, N] intersection over union (0 where the union is empty)."""
    b = tf.unstack(boxes[:, None, :], axis=-1)
    a = tf.unstack(anchors[None, :, :], axis=-1)
    h = tf.maximum(0.0, tf.minimum(b[2], a[2]) - tf.maximum(b[0], a[0]))
    w = tf.maximum(0.0, tf.minimum(b[3], a[3]) - tf.maximum(b[1], a[1]))
    inter = h * w
    union = (b[2] - b[0]) * (b[3] - b[1]) + (a[2] - a[0]) * (a[3] - a[1]) - inter
    return tf.where(tf.equal(inter, 0.0), tf.zeros_like(inter), inter / union)


def match(similarity: Any, valid: Any, matched: float, unmatched: float,
          force: bool) -> Any:
    """Per anchor, the row of its best box (``valid`` rows only), -1 where unmatched, -2 where
    ignored (between the thresholds); with ``force``, each box's best anchor is its own."""
    similarity = tf.where(valid[:, None], similarity, -1.0)
    best = tf.argmax(similarity, 0, output_type=tf.int32)
    value = tf.reduce_max(similarity, 0)
    result = tf.where(value < unmatched, -1, tf.where(value < matched, -2, best))
    if force:
        columns = tf.argmax(similarity, 1, output_type=tf.int32)
        forced = tf.one_hot(columns, tf.shape(similarity)[1]) * tf.cast(valid, tf.float32)[:, None]
        rows = tf.argmax(forced, 0, output_type=tf.int32)
        result = tf.where(tf.reduce_max(forced, 0) > 0, rows, result)
    has_boxes = tf.reduce_any(valid)
    return tf.where(has_boxes, result, -tf.ones_like(result))


def targets(anchors: Any, boxes: Any, classes: Any, valid: Any, num_classes: int,
            matched: float, unmatched: float, force: bool,
            scales: tuple[float, ...]) -> dict[str, Any]:
    """One image's targets: class targets [N, num_classes + 1] (background all zeros), their
    weights [N] (0 only where ignored), box codes [N, 4] and their weights [N] (matched)."""
    matches = match(iou(boxes, anchors), valid, matched, unmatched, force)
    positive = matches >= 0
    index = tf.maximum(matches, 0)
    one_hot = tf.one_hot(tf.gather(classes, index) + 1, num_classes + 1)
    cls_targets = tf.where(positive[:, None], one_hot, 0.0)
    codes = encode(tf.gather(boxes, index), anchors, scales)
    return {"cls_targets": cls_targets, "cls_weights": tf.cast(matches != -2, tf.float32),
            "reg_targets": tf.where(positive[:, None], codes, 0.0),
            "reg_weights": tf.cast(positive, tf.float32)}

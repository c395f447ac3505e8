"""The OD API's training augmentations that the zoo's SSD configs use, on one decoded example
(a float image 0-255 [h, w, 3], normalised boxes [n, 4], 0-based classes [n]), in the order the
config lists them."""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def horizontal_flip(image: Any, boxes: Any, classes: Any) -> tuple[Any, Any, Any]:
    """With probability 1/2, the image and its boxes mirrored left to right."""
    flipped = tf.random.uniform([]) < 0.5
    image = tf.cond(flipped, lambda: tf.image.flip_left_right(image), lambda: image)
    boxes = tf.cond(flipped, lambda: tf.stack(
        [boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], -1), lambda: boxes)
    return image, boxes, classes


def crop(image: Any, boxes: Any, classes: Any, min_object_covered: float,
         min_aspect_ratio: float, max_aspect_ratio: float, min_area: float, max_area: float,
         overlap_thresh: float, clip_boxes: bool, random_coef: float) -> tuple[Any, Any, Any]:
    """``random_crop_image``: a window drawn by ``sample_distorted_bounding_box`` (covering at
    least ``min_object_covered`` of some box); boxes that overlap it by less than
    ``overlap_thresh`` of their own area are dropped, the rest re-expressed in the window.
    With probability ``random_coef`` the example is left as it is."""
    begin, size, window = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.clip_by_value(boxes, 0.0, 1.0)[None],
        min_object_covered=min_object_covered,
        aspect_ratio_range=(min_aspect_ratio, max_aspect_ratio),
        area_range=(min_area, max_area), max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    window = window[0, 0]
    wy0, wx0, wy1, wx1 = tf.unstack(window)
    y0, x0, y1, x1 = tf.unstack(boxes, axis=1)
    inside = ~((y0 >= wy1) | (y1 <= wy0) | (x0 >= wx1) | (x1 <= wx0))
    inter = (tf.maximum(0.0, tf.minimum(y1, wy1) - tf.maximum(y0, wy0))
             * tf.maximum(0.0, tf.minimum(x1, wx1) - tf.maximum(x0, wx0)))
    area = (y1 - y0) * (x1 - x0)
    overlap = tf.where(area > 0, inter / tf.where(area > 0, area, 1.0), 0.0)
    keep = inside & (overlap >= overlap_thresh)
    kept = tf.boolean_mask(boxes, keep)
    height, width = wy1 - wy0, wx1 - wx0
    moved = (kept - tf.stack([wy0, wx0, wy0, wx0])) / tf.stack([height, width, height, width])
    if clip_boxes:
        moved = tf.clip_by_value(moved, 0.0, 1.0)
    cropped = (tf.slice(image, begin, size), moved, tf.boolean_mask(classes, keep))
    if random_coef <= 0.0:
        return cropped
    keep_original = tf.random.uniform([]) < random_coef
    return tuple(tf.cond(keep_original, lambda a=a: a, lambda c=c: c)  # type: ignore[misc]
                 for a, c in zip((image, boxes, classes), cropped, strict=True))


def ssd_crop(image: Any, boxes: Any, classes: Any,
             operations: tuple[dict[str, Any], ...]) -> tuple[Any, Any, Any]:
    """``ssd_random_crop``: one of ``operations`` (``crop``'s settings), drawn uniformly per
    example, as SSD's paper samples its crops."""
    chosen = tf.random.uniform([], maxval=len(operations), dtype=tf.int32)
    branches = [lambda op=op: crop(image, boxes, classes, **op) for op in operations]
    return tuple(tf.switch_case(chosen, branches))


AUGMENTATIONS = {"random_horizontal_flip": horizontal_flip, "random_crop_image": crop,
                 "ssd_random_crop": ssd_crop}

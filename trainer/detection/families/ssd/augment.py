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


def _on_unit_range(adjust: Any, image: Any) -> Any:
    """A ``tf.image`` colour adjustment (made for 0-1) as the OD API applies it to a 0-255
    image: scaled down, adjusted, scaled back, clipped."""
    return tf.clip_by_value(adjust(image / 255.0) * 255.0, 0.0, 255.0)


def brightness(image: Any, boxes: Any, classes: Any, max_delta: float
               ) -> tuple[Any, Any, Any]:
    """``random_adjust_brightness``: a delta drawn from [-max_delta, max_delta] (0-1 scale)."""
    delta = tf.random.uniform([], -max_delta, max_delta)
    return _on_unit_range(lambda x: tf.image.adjust_brightness(x, delta), image), boxes, classes


def contrast(image: Any, boxes: Any, classes: Any, min_delta: float, max_delta: float
             ) -> tuple[Any, Any, Any]:
    """``random_adjust_contrast``: a factor drawn from [min_delta, max_delta]."""
    factor = tf.random.uniform([], min_delta, max_delta)
    return _on_unit_range(lambda x: tf.image.adjust_contrast(x, factor), image), boxes, classes


def hue(image: Any, boxes: Any, classes: Any, max_delta: float) -> tuple[Any, Any, Any]:
    """``random_adjust_hue``: a delta drawn from [-max_delta, max_delta]."""
    delta = tf.random.uniform([], -max_delta, max_delta)
    return _on_unit_range(lambda x: tf.image.adjust_hue(x, delta), image), boxes, classes


def saturation(image: Any, boxes: Any, classes: Any, min_delta: float, max_delta: float
               ) -> tuple[Any, Any, Any]:
    """``random_adjust_saturation``: a factor drawn from [min_delta, max_delta]."""
    factor = tf.random.uniform([], min_delta, max_delta)
    return (_on_unit_range(lambda x: tf.image.adjust_saturation(x, factor), image), boxes,
            classes)


# random_distort_color's two orderings, with the OD API's fixed ranges.
_DISTORTIONS = {
    "brightness": (brightness, {"max_delta": 32.0 / 255.0}),
    "saturation": (saturation, {"min_delta": 0.5, "max_delta": 1.5}),
    "hue": (hue, {"max_delta": 0.2}),
    "contrast": (contrast, {"min_delta": 0.5, "max_delta": 1.5}),
}
COLOR_ORDERINGS = {0: ("brightness", "saturation", "hue", "contrast"),
                   1: ("brightness", "contrast", "saturation", "hue")}


def distort_color(image: Any, boxes: Any, classes: Any, color_ordering: int
                  ) -> tuple[Any, Any, Any]:
    """``random_distort_color``: brightness, saturation, hue and contrast in one of two
    orders."""
    for name in COLOR_ORDERINGS[color_ordering]:
        adjust, settings = _DISTORTIONS[name]
        image, boxes, classes = adjust(image, boxes, classes, **settings)
    return image, boxes, classes


def _draw(low: Any, high: Any) -> Any:
    """An integer drawn from [low, high), or ``low`` when that range is empty."""
    return tf.cond(high > low,
                   lambda: tf.random.uniform([], low, tf.maximum(high, low + 1), tf.int32),
                   lambda: low)


def absolute_pad(image: Any, boxes: Any, classes: Any, max_height_padding: int,
                 max_width_padding: int, pad_color: tuple[float, ...] | None
                 ) -> tuple[Any, Any, Any]:
    """``random_absolute_pad_image``: a canvas larger by [0, max padding) pixels each way,
    the image placed at a random offset, the rest filled with ``pad_color`` (the image's mean
    colour when none); boxes re-expressed in the canvas."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    color = tf.reduce_mean(image, axis=[0, 1]) if pad_color is None else \
        tf.constant(pad_color, tf.float32)
    target_h = _draw(height, height + max_height_padding)
    target_w = _draw(width, width + max_width_padding)
    top, left = _draw(0, target_h - height), _draw(0, target_w - width)
    canvas = tf.image.pad_to_bounding_box(image, top, left, target_h, target_w)
    inside = tf.image.pad_to_bounding_box(tf.ones_like(image), top, left, target_h, target_w)
    image = canvas + (1.0 - inside) * color
    window = tf.cast(tf.stack([-top, -left, target_h - top, target_w - left]), tf.float32) / \
        tf.cast(tf.stack([height, width, height, width]), tf.float32)
    wy0, wx0, wy1, wx1 = tf.unstack(window)
    scale = tf.stack([wy1 - wy0, wx1 - wx0, wy1 - wy0, wx1 - wx0])
    return image, (boxes - tf.stack([wy0, wx0, wy0, wx0])) / scale, classes


AUGMENTATIONS = {"random_horizontal_flip": horizontal_flip, "random_crop_image": crop,
                 "ssd_random_crop": ssd_crop, "random_adjust_brightness": brightness,
                 "random_adjust_contrast": contrast, "random_adjust_hue": hue,
                 "random_adjust_saturation": saturation, "random_distort_color": distort_color,
                 "random_absolute_pad_image": absolute_pad}

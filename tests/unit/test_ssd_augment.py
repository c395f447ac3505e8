"""The OD API's colour jitters and ``random_absolute_pad_image`` in the SSD family: read from a
pipeline.config with the proto's defaults, refused where the OD API fails too, and doing to an
image and its boxes what the OD API's preprocessor does."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_pipeline_rules import MSCOCO_LABEL_MAP
from tests.zoo import CONFIGS
from trainer.config import ConfigError, from_args
from trainer.pipeline.config import NATIVE_AUGMENTATIONS

ZOO = "ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8"
EXTRA = """
  data_augmentation_options { random_adjust_brightness { max_delta: 0.1 } }
  data_augmentation_options { random_adjust_contrast { } }
  data_augmentation_options { random_distort_color { color_ordering: 1 } }
  data_augmentation_options {
    random_absolute_pad_image { max_height_padding: 40 max_width_padding: 20 }
  }
"""


def _read(tmp_path: Path, extra: str) -> object:
    config = CONFIGS[ZOO].replace("  data_augmentation_options {", extra +
                                  "  data_augmentation_options {", 1)
    (tmp_path / "pipeline.config").write_text(config)
    (tmp_path / "label_map.pbtxt").write_text(MSCOCO_LABEL_MAP)
    return from_args(["--run-dir", "/r", "--pipeline-config", str(tmp_path / "pipeline.config"),
                      "--checkpoint", "/c/ckpt-0", "--label-map",
                      str(tmp_path / "label_map.pbtxt"), "--train", "/d/t-*",
                      "--eval", "/d/e-*"], {},
                     lambda uri: Path(uri).read_text())


def test_the_settings_are_read_in_order_with_the_protos_defaults(tmp_path: Path) -> None:
    cfg = _read(tmp_path, EXTRA)
    assert list(cfg.augmentations)[:4] == [
        ("random_adjust_brightness", {"max_delta": 0.1}),
        ("random_adjust_contrast", {"min_delta": 0.8, "max_delta": 1.25}),
        ("random_distort_color", {"color_ordering": 1}),
        ("random_absolute_pad_image", {"max_height_padding": 40, "max_width_padding": 20,
                                       "pad_color": None})]


@pytest.mark.parametrize(("extra", "problem"), [
    ("data_augmentation_options { random_distort_color { color_ordering: 2 } }",
     "random_distort_color: color_ordering: 2: supported: 0, 1"),
    ("data_augmentation_options { random_absolute_pad_image { pad_color: 1 pad_color: 2 } }",
     "random_absolute_pad_image: pad_color: three values"),
])
def test_settings_the_od_api_fails_on_are_refused(extra: str, problem: str,
                                                  tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _read(tmp_path, f"  {extra}\n")
    assert f"train_config.data_augmentation_options.{problem}" in str(err.value)


def test_every_augmentation_read_has_a_function_taking_its_settings() -> None:
    from trainer.detection.families.ssd.augment import AUGMENTATIONS

    assert AUGMENTATIONS.keys() == NATIVE_AUGMENTATIONS.keys()
    for name, settings in NATIVE_AUGMENTATIONS.items():
        parameters = list(inspect.signature(AUGMENTATIONS[name]).parameters)
        assert parameters[:3] == ["image", "boxes", "classes"]
        assert parameters[3:] == list(settings), name


def _example(height: int = 30, width: int = 50) -> tuple[object, object, object]:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    image = tf.constant(rng.uniform(20, 230, (height, width, 3)), tf.float32)
    boxes = tf.constant([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]], tf.float32)
    return image, boxes, tf.constant([1, 2])


def test_absolute_pad_places_the_image_and_its_boxes_on_a_larger_canvas() -> None:
    import tensorflow as tf

    from trainer.detection.families.ssd.augment import absolute_pad

    image, boxes, classes = _example()
    tf.random.set_seed(3)
    sizes = set()
    for _ in range(12):
        out, moved, kept = absolute_pad(image, boxes, classes, 40, 20, None)
        out, moved = out.numpy(), moved.numpy()
        height, width = out.shape[:2]
        sizes.add((height, width))
        assert 30 <= height < 70 and 50 <= width < 70
        # the whole-image box gives the offset; the image sits there unchanged
        top, left = round(moved[1, 0] * height), round(moved[1, 1] * width)
        np.testing.assert_allclose(moved[1, 2:] * [height, width], [top + 30, left + 50],
                                   atol=1e-3)
        np.testing.assert_allclose(out[top:top + 30, left:left + 50], image.numpy())
        # the first box covers the same pixels as before
        np.testing.assert_allclose(moved[0] * [height, width, height, width],
                                   boxes.numpy()[0] * [30, 50, 30, 50] + [top, left, top, left],
                                   atol=1e-3)
        mask = np.ones(out.shape[:2], bool)
        mask[top:top + 30, left:left + 50] = False
        if mask.any():  # the rest is the image's mean colour
            np.testing.assert_allclose(out[mask], np.broadcast_to(
                image.numpy().mean(axis=(0, 1)), out[mask].shape), rtol=1e-5)
        assert kept.numpy().tolist() == [1, 2]
    assert len(sizes) > 1, "the padding was not drawn"
    out, moved, _ = absolute_pad(image, boxes, classes, 1, 1, (0.0, 0.0, 0.0))
    assert out.shape == (30, 50, 3) and np.allclose(moved, boxes)  # the builder's default


def test_colour_jitters_change_the_image_as_tf_image_does_on_0_to_1_and_keep_the_boxes() -> None:
    import tensorflow as tf

    from trainer.detection.families.ssd.augment import (
        COLOR_ORDERINGS,
        brightness,
        contrast,
        distort_color,
        hue,
        saturation,
    )

    image, boxes, classes = _example()
    # an empty range: the one value, so the result is tf.image's, scaled to 0-255
    exact = [(brightness(image, boxes, classes, 0.0)[0], image),
             (contrast(image, boxes, classes, 1.3, 1.3)[0],
              tf.image.adjust_contrast(image / 255, 1.3) * 255),
             (saturation(image, boxes, classes, 0.5, 0.5)[0],
              tf.image.adjust_saturation(image / 255, 0.5) * 255),
             (hue(image, boxes, classes, 0.0)[0], tf.image.adjust_hue(image / 255, 0.0) * 255)]
    for ours, theirs in exact:
        np.testing.assert_allclose(ours, tf.clip_by_value(theirs, 0, 255), rtol=1e-5, atol=1e-3)
    tf.random.set_seed(5)
    shifted = brightness(image, boxes, classes, 0.1)[0] - image  # no pixel clipped here
    assert np.ptp(shifted.numpy()) < 1e-3 and 0 < abs(float(shifted[0, 0, 0])) <= 25.5
    for ordering in COLOR_ORDERINGS:
        out, same_boxes, same_classes = distort_color(image, boxes, classes, ordering)
        assert out.shape == image.shape and 0 <= out.numpy().min() <= out.numpy().max() <= 255
        assert not np.allclose(out, image)
        assert np.array_equal(same_boxes, boxes) and np.array_equal(same_classes, classes)

"""A small synthetic detection data set in the TF Object Detection API TFRecord schema.

Used by ``launcher demo`` and the tests: coloured rectangles on noise, one class per colour, so a
detector can really learn it in a few hundred CPU steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Class id (1-based, as in label maps) -> (name, RGB colour).
CLASSES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("red", (220, 40, 40)), 2: ("green", (40, 200, 60)), 3: ("blue", (40, 80, 220)),
    4: ("yellow", (230, 220, 40)),
}


@dataclass(frozen=True)
class Box:
    """A normalised box and its 1-based class id."""

    ymin: float
    xmin: float
    ymax: float
    xmax: float
    label: int


def _png(pixels: np.ndarray) -> bytes:
    import tensorflow as tf

    return tf.io.encode_png(pixels).numpy()


Palette = dict[int, tuple[str, tuple[int, int, int]]]


def make_image(rng: np.random.Generator, size: int, classes: list[int], max_boxes: int = 3,
               palette: Palette | None = None) -> tuple[np.ndarray, list[Box]]:
    """An RGB image of noise with 1..max_boxes rectangles of the given classes."""
    palette = palette or CLASSES
    pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    boxes: list[Box] = []
    for _ in range(int(rng.integers(1, max_boxes + 1))):
        h, w = rng.integers(size // 5, size // 2, size=2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        label = int(rng.choice(classes))
        pixels[y:y + h, x:x + w] = palette[label][1]
        boxes.append(Box(y / size, x / size, (y + h) / size, (x + w) / size, label))
    return pixels, boxes


def tf_example(pixels: np.ndarray, boxes: list[Box], key: str, fmt: str = "png",
               palette: Palette | None = None) -> bytes:
    """Serialise one image and its boxes as an OD-API ``tf.train.Example``."""
    import tensorflow as tf

    palette = palette or CLASSES
    encoded = _png(pixels) if fmt == "png" else tf.io.encode_jpeg(pixels).numpy()

    def floats(values: list[float]) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def ints(values: list[int]) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def strings(values: list[bytes]) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    h, w = pixels.shape[:2]
    feature = {
        "image/encoded": strings([encoded]),
        "image/format": strings([fmt.encode()]),
        "image/height": ints([h]),
        "image/width": ints([w]),
        "image/filename": strings([f"{key}.{fmt}".encode()]),
        "image/source_id": strings([key.encode()]),
        "image/object/bbox/ymin": floats([b.ymin for b in boxes]),
        "image/object/bbox/xmin": floats([b.xmin for b in boxes]),
        "image/object/bbox/ymax": floats([b.ymax for b in boxes]),
        "image/object/bbox/xmax": floats([b.xmax for b in boxes]),
        "image/object/class/label": ints([b.label for b in boxes]),
        "image/object/class/text": strings([palette[b.label][0].encode() for b in boxes]),
        "image/object/is_crowd": ints([0] * len(boxes)),
        "image/object/area": floats([(b.ymax - b.ymin) * (b.xmax - b.xmin) * h * w
                                     for b in boxes]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_dataset(out_dir: Path, prefix: str, shards: int, per_shard: int, size: int,
                  classes: list[int], seed: int = 0, palette: Palette | None = None
                  ) -> list[Path]:
    """Write ``shards`` TFRecord files named like the OD API's ``prefix-00000-of-00004``."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(shards):
        path = out_dir / f"{prefix}-{shard:05d}-of-{shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i in range(per_shard):
                pixels, boxes = make_image(rng, size, classes, palette=palette)
                writer.write(tf_example(pixels, boxes, f"{prefix}-{shard}-{i}",
                                        palette=palette))
        paths.append(path)
    return paths


def label_map_text(classes: list[int], palette: Palette | None = None) -> str:
    """A ``StringIntLabelMap`` in protobuf text format."""
    palette = palette or CLASSES
    items = [f"item {{\n  id: {c}\n  name: '{palette[c][0]}'\n}}\n" for c in classes]
    return "".join(items)


# The demo: pre-train on red/green boxes, fine-tune on blue/yellow ones (new classes, same task).
DEMO_PRETRAIN: Palette = {1: CLASSES[1], 2: CLASSES[2]}
DEMO_FINETUNE: Palette = {1: CLASSES[3], 2: CLASSES[4]}


def write_demo(root: Path, size: int = 64) -> None:
    """The demo's data: ``pretrain/``, ``finetune/`` and ``eval/`` TFRecords with label maps."""
    sets = [("pretrain", "train", DEMO_PRETRAIN, 4, 32, 1), ("finetune", "train", DEMO_FINETUNE,
            4, 16, 2), ("eval", "val", DEMO_FINETUNE, 1, 16, 3)]
    for folder, prefix, palette, shards, per_shard, seed in sets:
        write_dataset(root / folder, prefix, shards, per_shard, size, [1, 2], seed, palette)
        (root / folder / "label_map.pbtxt").write_text(label_map_text([1, 2], palette))


if __name__ == "__main__":
    import sys

    write_demo(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 64)



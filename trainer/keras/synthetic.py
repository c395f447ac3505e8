"""A small synthetic image-classification set in the common TFRecord schema (``image/encoded``,
``image/class/label``, ``image/class/text``, as TF-Slim's and TFDS's converters write it), and a
small Keras CNN pre-trained on part of it: the "exported model" of ``launcher demo --task keras``
and of the tests.

Each class is a pattern drawn in a random colour at a random place on noise (stripes of some
orientation, a square, a cross, a ring), so what a network learns on some patterns (edges,
orientations) helps on the others.

    python -m trainer.keras.synthetic ROOT [SIZE]   # the demo's data and models under ROOT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

PATTERNS = ("hstripes", "vstripes", "square", "diagonal", "cross", "ring")
# The demo: pre-train on three patterns, fine-tune on four others (the head is replaced).
DEMO_PRETRAIN = ("hstripes", "vstripes", "square")
DEMO_FINETUNE = ("diagonal", "cross", "ring", "square")


def draw(rng: np.random.Generator, size: int, pattern: str) -> np.ndarray:
    """An RGB ``size``x``size`` image of noise with ``pattern`` in a random colour."""
    pixels = rng.integers(0, 50, size=(size, size, 3), dtype=np.uint8)
    colour = rng.integers(120, 256, size=3, dtype=np.uint8)
    side = int(rng.integers(size // 2, size - 2))
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    ys, xs = np.mgrid[0:side, 0:side]
    period = max(side // 5, 2)
    mask = {
        "hstripes": (ys // (period // 2 or 1)) % 2 == 0,
        "vstripes": (xs // (period // 2 or 1)) % 2 == 0,
        "square": np.ones((side, side), bool),
        "diagonal": ((xs + ys) // (period // 2 or 1)) % 2 == 0,
        "cross": (np.abs(ys - side // 2) < side // 6) | (np.abs(xs - side // 2) < side // 6),
        "ring": np.abs(np.hypot(ys - side / 2, xs - side / 2) - side / 3) < side / 8,
    }[pattern]
    window = pixels[top:top + side, left:left + side]
    window[mask] = colour
    return pixels


def example(pixels: np.ndarray, label: int | None, text: str | None, fmt: str = "png") -> bytes:
    """One ``tf.train.Example`` in the image-classification schema."""
    import tensorflow as tf

    encoded = (tf.io.encode_png(pixels) if fmt == "png" else tf.io.encode_jpeg(pixels)).numpy()
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[fmt.encode()])),
        "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[pixels.shape[0]])),
        "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[pixels.shape[1]])),
    }
    if label is not None:
        feature["image/class/label"] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[label]))
    if text is not None:
        feature["image/class/text"] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[text.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_dataset(out_dir: Path, prefix: str, patterns: tuple[str, ...], shards: int,
                  per_shard: int, size: int = 32, seed: int = 0) -> list[Path]:
    """``shards`` files ``prefix-0000K-of-0000N.tfrecord``; labels are indices in
    ``patterns``, texts their names; JPEG and PNG alternate."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(shards):
        path = out_dir / f"{prefix}-{shard:05d}-of-{shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i in range(per_shard):
                label = int(rng.integers(len(patterns)))
                writer.write(example(draw(rng, size, patterns[label]), label, patterns[label],
                                     "png" if i % 2 else "jpeg"))
        paths.append(path)
    return paths


def label_map_text(patterns: tuple[str, ...]) -> str:
    """A ``StringIntLabelMap``: ids 1..N for class indices 0..N-1."""
    return "".join(f"item {{\n  id: {i + 1}\n  name: '{name}'\n}}\n"
                   for i, name in enumerate(patterns))


def build_model(size: int, classes: int, seed: int = 0) -> Any:
    """A small CNN: two conv blocks with batch norm, a 32-unit feature layer, a softmax head."""
    import tf_keras
    from tf_keras import layers

    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((size, size, 3), name="image")
    x = inputs
    for i, filters in enumerate((16, 32), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(32, activation="relu", name="features")(x)
    outputs = layers.Dense(classes, activation="softmax", name="classifier")(x)
    return tf_keras.Model(inputs, outputs, name="patterns")


def _arrays(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    images, labels = [], []
    for raw in tf.data.TFRecordDataset([str(f) for f in files]).as_numpy_iterator():
        ex = tf.train.Example.FromString(raw).features.feature
        images.append(tf.io.decode_image(ex["image/encoded"].bytes_list.value[0]).numpy())
        labels.append(ex["image/class/label"].int64_list.value[0])
    return np.stack(images).astype("float32") / 255.0, np.array(labels)


def pretrain(files: list[Path], out: Path, classes: int, size: int = 32, epochs: int = 12,
             seed: int = 0) -> Path:
    """Train ``build_model`` on ``files`` (plain ``fit``, one process) and save it to ``out``
    (``.h5``, ``.keras`` or a directory: a SavedModel), compiled with Adam."""
    import tf_keras

    model = build_model(size, classes, seed)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    images, labels = _arrays(files)
    model.fit(images, labels, batch_size=16, epochs=epochs, verbose=0, shuffle=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return out


def write_demo(root: Path, size: int = 32) -> None:
    """The demo's data (``pretrain/``, ``finetune/``, ``eval/``, label maps) and models:
    ``models/pretrained.h5`` and ``models/scratch.h5`` (the same network, untrained, with the
    fine-tune's classes)."""
    import tf_keras

    pre = write_dataset(root / "pretrain", "train", DEMO_PRETRAIN, 2, 160, size, seed=1)
    write_dataset(root / "finetune", "train", DEMO_FINETUNE, 4, 24, size, seed=2)
    write_dataset(root / "eval", "val", DEMO_FINETUNE, 1, 64, size, seed=3)
    for folder, patterns in (("finetune", DEMO_FINETUNE), ("eval", DEMO_FINETUNE)):
        (root / folder / "label_map.pbtxt").write_text(label_map_text(patterns))
    pretrain(pre, root / "models" / "pretrained.h5", len(DEMO_PRETRAIN), size)
    scratch = build_model(size, len(DEMO_FINETUNE), seed=7)
    scratch.compile(optimizer=tf_keras.optimizers.Adam(0.01),
                    loss="sparse_categorical_crossentropy")
    scratch.save(str(root / "models" / "scratch.h5"))


if __name__ == "__main__":
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    write_demo(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 32)

"""Does fine-tuning an exported Keras model pay? Eval loss after every few steps of a fine-tune
(pre-trained CNN, first conv block frozen, new head) and of the same network from scratch, and
how many steps the fine-tune needs to reach scratch's final eval loss, as a ratio.

Uses the keras demo's data and models (``trainer.keras.synthetic``): pre-trained on three
patterns, both runs train on four.

    python bench/keras_finetune_vs_scratch.py [--steps 60] [--every 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import compare_curves, trainer


def _eval_losses(run_dir: Path, model_file: Path, data: Path, every: int,
                 steps: int) -> dict[int, float]:
    """Eval loss of each kept checkpoint, evaluated as the trainer does."""
    import tensorflow as tf
    import tf_keras

    from trainer.config import parse_label_map
    from trainer.keras.data import Classes, build_dataset
    from trainer.keras.model import load, with_head

    labels = parse_label_map((data / "finetune" / "label_map.pbtxt").read_text())
    classes = Classes(len(labels), {name: i for i, name in labels.items()})
    model, _ = with_head(load(model_file, str(model_file), {}), len(labels), "auto", "")
    shape = model.input_shape[1:]
    eval_set = build_dataset(sorted((data / "eval").glob("val-*.tfrecord")), classes, shape,
                             "0-1", 64, training=False)
    losses = {}
    for step in range(every, steps + 1, every):
        tf.train.Checkpoint(model=model).read(
            str(run_dir / "checkpoints" / f"ckpt-{step}")).expect_partial()
        mean = tf_keras.metrics.Mean()
        for images, target in eval_set:
            mean.update_state(tf_keras.losses.sparse_categorical_crossentropy(
                target, model(images, training=False)))
        losses[step] = float(mean.result())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from trainer.keras import synthetic as synthetic_keras

        synthetic_keras.write_demo(root / "data")
        data = root / "data"
        common = ["--task", "keras", "--train", str(data / "finetune" / "train-*.tfrecord"),
                  "--label-map", str(data / "finetune" / "label_map.pbtxt"), "--steps",
                  str(args.steps), "--global-batch-size", "16", "--checkpoint-every",
                  str(args.every), "--keep-checkpoints", str(args.steps // args.every + 1),
                  "--log-every", str(args.every), "--no-export"]
        runs = {"fine-tuned": (data / "models" / "pretrained.h5", ["--trainable-layers", "7"]),
                "from scratch": (data / "models" / "scratch.h5", [])}
        curves = {}
        for name, (model, extra) in runs.items():
            run_dir = root / name.replace(" ", "-")
            trainer(["--run-dir", str(run_dir), "--checkpoint", str(model), *extra, *common],
                    threads=1)
            curves[name] = _eval_losses(run_dir, model, data, args.every, args.steps)
    compare_curves(curves["fine-tuned"], curves["from scratch"], "eval loss")

if __name__ == "__main__":
    main()

"""Does fine-tuning pay, per detector family? Loss curves of a fine-tune from a pre-trained
checkpoint and of the same training from scratch, how many steps the fine-tune needs to reach
scratch's final loss, and seconds per training step on this machine.

Per family: pre-trains a tiny detector on two box colours, then trains on two other colours both
ways (one worker).

    python bench/finetune_vs_scratch.py [--family retinanet|faster_rcnn|yolo|all] [--steps 60]
                                        [--pretrain-steps 120]
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from _common import compare_curves, make_data, trainer

LOSS = re.compile(r"step (\d+)/\d+ loss (\S+)")


def _curve(lines: list[tuple[float, str]]) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for _, line in lines if (m := LOSS.search(line))}


def _seconds_per_step(lines: list[tuple[float, str]]) -> float:
    """Between the second logged step and the last: tracing and start-up left out."""
    times = {int(m[1]): t for t, line in lines if (m := LOSS.search(line))}
    first, *_, last = sorted(times)[1:] or [0, 0]
    return (times[last] - times[first]) / max(last - first, 1)


def bench(family: str, steps: int, pretrain_steps: int) -> None:
    """One family's curves and step time."""
    print(f"== {family}: tiny, 64 px, global batch 8, one worker")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        common = ["--family", family, "--model-size", "tiny", "--image-size", "64",
                  "--global-batch-size", "8", "--log-every", "5", "--no-export"]
        pre = make_data(root / "pre", [1, 2], seed=1)
        trainer(["--run-dir", str(root / "base"), "--train", pre, "--label-map",
                 str(root / "pre" / "label_map.pbtxt"), "--steps", str(pretrain_steps),
                 "--checkpoint-every", str(pretrain_steps), *common])
        new = make_data(root / "new", [3, 4], seed=2)
        task = ["--train", new, "--label-map", str(root / "new" / "label_map.pbtxt"),
                "--steps", str(steps), "--checkpoint-every", str(steps), *common]
        _, fine_lines = trainer(["--run-dir", str(root / "fine"), "--checkpoint",
                                 str(root / "base"), "--fine-tune-type", "detection", *task])
        _, scratch_lines = trainer(["--run-dir", str(root / "scratch"), *task])
    compare_curves(_curve(fine_lines), _curve(scratch_lines), "train loss")
    print(f"{family}: {_seconds_per_step(fine_lines):.3f} s/step fine-tuning, "
          f"{_seconds_per_step(scratch_lines):.3f} s/step from scratch\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", choices=["retinanet", "faster_rcnn", "yolo", "all"],
                        default="all")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--pretrain-steps", type=int, default=120)
    args = parser.parse_args()
    families = ["retinanet", "faster_rcnn", "yolo"] if args.family == "all" else [args.family]
    for family in families:
        bench(family, args.steps, args.pretrain_steps)


if __name__ == "__main__":
    main()

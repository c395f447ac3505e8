"""Does fine-tuning pay? Loss curves of a fine-tune from a pre-trained checkpoint and of the same
training from scratch, and how many steps the fine-tune needs to reach scratch's final loss.

Pre-trains a tiny RetinaNet on two box colours, then trains on two other colours both ways.

    python bench/finetune_vs_scratch.py [--steps 60] [--pretrain-steps 120]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--pretrain-steps", type=int, default=120)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        common = ["--model-size", "tiny", "--image-size", "64", "--global-batch-size", "8",
                  "--log-every", "5", "--no-export"]
        pre = make_data(root / "pre", [1, 2], seed=1)
        trainer(["--run-dir", str(root / "base"), "--train", pre, "--label-map",
                 str(root / "pre" / "label_map.pbtxt"), "--steps", str(args.pretrain_steps),
                 "--checkpoint-every", str(args.pretrain_steps), *common])
        new = make_data(root / "new", [3, 4], seed=2)
        task = ["--train", new, "--label-map", str(root / "new" / "label_map.pbtxt"),
                "--steps", str(args.steps), "--checkpoint-every", str(args.steps), *common]
        _, fine_lines = trainer(["--run-dir", str(root / "fine"), "--checkpoint",
                                 str(root / "base"), "--fine-tune-type", "detection", *task])
        _, scratch_lines = trainer(["--run-dir", str(root / "scratch"), *task])
    compare_curves(_curve(fine_lines), _curve(scratch_lines), "train loss")

if __name__ == "__main__":
    main()

"""Where a worker's time goes: start-up to first step, step time, input pipeline throughput
against the step's, and the share of training time spent saving + uploading checkpoints.

Single worker, tiny RetinaNet, 64 px synthetic OD-API data, checkpoints to the GCS emulator.

    python bench/trainer_costs.py [--steps 60]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from _common import gcs_emulator, make_data, trainer

STEP = re.compile(r"step (\d+)/\d+ loss")


def _step_times(lines: list[tuple[float, str]]) -> dict[int, float]:
    return {int(m[1]): t for t, line in lines if (m := STEP.search(line))}


def _input_throughput(pattern: str, batch: int, batches: int) -> float:
    """Examples/s of the input pipeline alone (decode, resize, flip, anchors, batch)."""
    from trainer.config import TrainConfig
    from trainer.detection.data import build_dataset
    from trainer.detection.families.retinanet.task import GlobalBatchRetinaNetTask, task_config

    cfg = TrainConfig(run_dir="/tmp", train=[pattern], model_size="tiny", image_size=64,
                      global_batch_size=batch)
    task = GlobalBatchRetinaNetTask(task_config(cfg, 5, pattern))
    iterator = iter(build_dataset(task, task.task_config.train_data, None))
    for _ in range(5):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, gcs_emulator():
        from trainer.run.storage import Storage

        Storage().client.create_bucket("bench")
        pattern = make_data(Path(tmp) / "data", [1, 2, 3, 4])
        common = ["--train", pattern, "--label-map", str(Path(tmp) / "data" / "label_map.pbtxt"),
                  "--model-size", "tiny", "--image-size", "64", "--steps", str(args.steps),
                  "--global-batch-size", str(args.batch), "--log-every", "1", "--no-export"]
        runs = {}
        for label, every in (("rare", args.steps), ("often", max(args.steps // 10, 1))):
            wall, lines = trainer(["--run-dir", f"gs://bench/{label}", "--checkpoint-every",
                                   str(every), *common])
            runs[label] = (wall, _step_times(lines), every)
        throughput = _input_throughput(pattern, args.batch, 40)
    _, steps, _ = runs["rare"]
    first = steps[1]
    warm = (steps[args.steps] - steps[10]) / (args.steps - 10)
    print(f"process start -> first step done:  {first:6.2f} s  (imports, staging, model, tracing)")
    print(f"steady step time:                  {warm * 1000:6.1f} ms  "
          f"({args.batch / warm:.1f} examples/s)")
    _, often_steps, every = runs["often"]
    loop_rare = steps[args.steps] - steps[1]
    loop_often = often_steps[args.steps] - often_steps[1]
    share = (loop_often - loop_rare) / loop_often
    print(f"checkpoint every {every} steps to GCS:  {share * 100:5.1f} % of training-loop time "
          f"({(loop_often - loop_rare) / (args.steps // every) * 1000:.0f} ms per checkpoint)")
    print(f"input pipeline alone:              {throughput:6.1f} examples/s  = "
          f"{throughput / (args.batch / warm):.1f}x what the model consumes "
          f"(>1: input is not the bottleneck)")


if __name__ == "__main__":
    main()

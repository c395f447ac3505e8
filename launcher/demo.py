"""``launcher demo``: the whole story on one machine, no cluster and no cloud account.

Detection (``--task detection``, the default):
1. make a synthetic detection data set in the OD-API TFRecord format (trainer.detection.synthetic);
2. pre-train a tiny detector (RetinaNet; ``--family faster_rcnn``/``yolo``: Faster R-CNN or
   YOLOv4-tiny) on two classes: the "exported" base checkpoint;
3. fine-tune it on two other classes with two local workers: ``run-local`` of a rendered Job;
4. train the same thing from scratch, and compare the final losses.

Keras (``--task keras``): a synthetic image-classification set and a small CNN pre-trained on three
patterns and saved as ``.h5`` (trainer.keras.synthetic); fine-tuned on four patterns (a new head)
with its first block frozen by two local workers; the same network from scratch; compared.

The launcher itself never imports TensorFlow: every TensorFlow step is a ``python -m trainer``
process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from launcher.errors import LauncherError, UsageError
from trainer import contract, fields

MARKER = ".launcher-demo"
STEP_LINE = re.compile(r"worker 0 step (\d+)/(\d+) loss (\S+)")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes chosen to finish in a few minutes on 2 CPU cores."""

    image_size: int = 64
    pretrain_steps: int = 80
    finetune_steps: int = 40
    global_batch_size: int = 8
    workers: int = 2
    family: str = "retinanet"  # the detector (``trainer.detection.families``)

    def __post_init__(self) -> None:
        from trainer.detection import families

        if self.family not in families.names():
            raise UsageError(f"--family: {self.family!r} is not one of "
                                f"{', '.join(families.names())}")


@dataclass(frozen=True)
class KerasDemoSettings:
    """The keras demo's sizes: a few seconds a stage on 2 CPU cores."""

    image_size: int = 32
    finetune_steps: int = 30
    global_batch_size: int = 16
    trainable_layers: int = 7  # conv2 onwards; the first conv block stays frozen
    workers: int = 2


@dataclass(frozen=True)
class DemoResult:
    """Where the demo's outputs went, and the loss comparison."""

    run_dir: Path
    finetuned: dict[str, Any]
    scratch: dict[str, Any]


class StageLog:
    """Receives worker output: keeps all of it in a log file, reports step progress."""

    def __init__(self, path: Path, on_step: Callable[[int, int], None]) -> None:
        self.file: TextIO = path.open("w", encoding="utf-8")
        self.on_step = on_step
        self._partial = ""

    def write(self, text: str) -> int:
        self.file.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            match = STEP_LINE.search(line)
            if match:
                self.on_step(int(match[1]), int(match[2]))
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def prepare(workdir: Path) -> None:
    """Start from an empty demo directory; never delete a directory the demo did not make."""
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise LauncherError(f"--dir: {workdir} is not empty and not a demo directory")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by launcher demo; deleted by the next demo run\n")
    (workdir / "logs").mkdir()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GCE_METADATA_IP", "127.0.0.1:1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _trainer(values: dict[str, Any], log: StageLog, what: str) -> None:
    """Run ``python -m trainer`` with these field values (``trainer.fields``)."""
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *fields.to_args(values)],
                            env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        log.write(line)
        tail = [*tail[-20:], line]
    if proc.wait() != 0:
        errors = [t for t in tail if "error" in t.lower()] or tail[-1:]
        raise LauncherError(f"{what} failed (exit {proc.returncode}): "
                            f"{errors[-1].strip() if errors else ''}")


def demo_spec(workdir: Path, settings: DemoSettings) -> dict[str, Any]:
    """The spec of the fine-tuning job: an ordinary spec, with local paths."""
    return {
        "name": "demo-finetune",
        "workers": settings.workers,
        "runDir": str(workdir / "runs"),
        "model": {"checkpoint": str(workdir / "runs" / "base"),
                  "labelMap": str(workdir / "data" / "finetune" / "label_map.pbtxt"),
                  "fineTuneType": "detection", "size": "tiny", "imageSize": settings.image_size,
                  "family": settings.family},
        "data": {"train": [str(workdir / "data" / "finetune" / "train-*.tfrecord")],
                 "eval": [str(workdir / "data" / "eval" / "val-*.tfrecord")]},
        "training": {"steps": settings.finetune_steps,
                     "globalBatchSize": settings.global_batch_size,
                     "checkpointEvery": settings.finetune_steps // 4, "logEvery": 2},
    }


def run_demo(workdir: Path, settings: DemoSettings,
             stage: Callable[[str, int], Callable[[int, int], None]]) -> DemoResult:
    """Run the four stages; ``stage(title, total)`` returns a progress callback for it."""
    prepare(workdir)
    data = workdir / "data"
    logs = workdir / "logs"
    step_cb = stage("make the synthetic data set", 1)
    log = StageLog(logs / "data.log", step_cb)
    _trainer_module("trainer.detection.synthetic", [str(data), str(settings.image_size)], log)
    step_cb(1, 1)
    log.close()
    common = {"family": settings.family, "model_size": "tiny", "image_size": settings.image_size,
              "global_batch_size": settings.global_batch_size, "log_every": 2, "export": False}
    log = StageLog(logs / "pretrain.log", stage("pre-train the base model (2 classes)",
                                                settings.pretrain_steps))
    _trainer({"run_dir": workdir / "runs" / "base",
              "train": [data / "pretrain" / "train-*.tfrecord"],
              "label_map": data / "pretrain" / "label_map.pbtxt",
              "steps": settings.pretrain_steps, "checkpoint_every": settings.pretrain_steps,
              **common}, log, "pre-training")
    log.close()
    spec = _finetune(workdir, demo_spec(workdir, settings), stage(
        f"fine-tune on 2 new classes with {settings.workers} local workers",
        settings.finetune_steps))
    log = StageLog(logs / "scratch.log", stage("the same training from scratch",
                                               settings.finetune_steps))
    scratch_dir = workdir / "runs" / "from-scratch"
    _trainer({"run_dir": scratch_dir, "train": [data / "finetune" / "train-*.tfrecord"],
              "eval": [data / "eval" / "val-*.tfrecord"],
              "label_map": data / "finetune" / "label_map.pbtxt",
              "steps": settings.finetune_steps, "checkpoint_every": settings.finetune_steps,
              **common}, log, "the from-scratch run")
    log.close()
    run_dir = Path(spec.job_run_dir)
    return DemoResult(run_dir, _metrics(run_dir), _metrics(scratch_dir))


def keras_demo_spec(workdir: Path, settings: KerasDemoSettings) -> dict[str, Any]:
    """The spec of the keras fine-tuning job: an ordinary spec, with local paths."""
    data = workdir / "data"
    return {
        "name": "demo-keras",
        "workers": settings.workers,
        "runDir": str(workdir / "runs"),
        "model": {"task": "keras", "checkpoint": str(data / "models" / "pretrained.h5"),
                  "labelMap": str(data / "finetune" / "label_map.pbtxt"),
                  "keras": {"trainableLayers": settings.trainable_layers}},
        "data": {"train": [str(data / "finetune" / "train-*.tfrecord")],
                 "eval": [str(data / "eval" / "val-*.tfrecord")]},
        "training": {"steps": settings.finetune_steps,
                     "globalBatchSize": settings.global_batch_size,
                     "checkpointEvery": settings.finetune_steps // 3, "logEvery": 2},
    }


def run_keras_demo(workdir: Path, settings: KerasDemoSettings,
                   stage: Callable[[str, int], Callable[[int, int], None]]) -> DemoResult:
    """The keras demo's three stages; ``stage`` as for ``run_demo``."""
    prepare(workdir)
    data, logs = workdir / "data", workdir / "logs"
    step_cb = stage("make the data set, pre-train a CNN (3 patterns)", 1)
    log = StageLog(logs / "data.log", step_cb)
    _trainer_module("trainer.keras.synthetic", [str(data), str(settings.image_size)], log)
    step_cb(1, 1)
    log.close()
    spec = _finetune(workdir, keras_demo_spec(workdir, settings), stage(
        f"fine-tune on 4 patterns with {settings.workers} local workers",
        settings.finetune_steps))
    log = StageLog(logs / "scratch.log", stage("the same network from scratch",
                                               settings.finetune_steps))
    scratch_dir = workdir / "runs" / "from-scratch"
    _trainer({"task": "keras", "run_dir": scratch_dir,
              "checkpoint": data / "models" / "scratch.h5",
              "train": [data / "finetune" / "train-*.tfrecord"],
              "eval": [data / "eval" / "val-*.tfrecord"],
              "label_map": data / "finetune" / "label_map.pbtxt",
              "steps": settings.finetune_steps, "global_batch_size": settings.global_batch_size,
              "checkpoint_every": settings.finetune_steps, "log_every": 2, "export": False}, log,
             "the from-scratch run")
    log.close()
    run_dir = Path(spec.job_run_dir)
    return DemoResult(run_dir, _metrics(run_dir), _metrics(scratch_dir))


def _finetune(workdir: Path, spec: dict[str, Any], on_step: Callable[[int, int], None]) -> Any:
    """The fine-tuning stage: ``spec`` written to ``finetune.yaml`` and run by run-local, as a
    user would; the resolved spec."""
    from launcher.api import run_local
    from launcher.spec import SpecSource

    spec_file = workdir / "finetune.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    log = StageLog(workdir / "logs" / "finetune.log", on_step)
    try:
        return run_local(SpecSource(path=spec_file), out=log)  # type: ignore[arg-type]
    finally:
        log.close()


def _trainer_module(module: str, args: list[str], log: StageLog) -> None:
    result = subprocess.run([sys.executable, "-m", module, *args], env=_env(),
                            capture_output=True, text=True)
    log.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise LauncherError(f"{module} failed: {result.stderr.strip().splitlines()[-1:]}")


def _metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / contract.RUN_EVAL_METRICS).read_text())


def summary(result: DemoResult) -> str:
    """What the user reads at the end."""
    run = result.run_dir
    ft, sc = result.finetuned, result.scratch

    def line(name: str, a: float, b: float) -> str:
        return f"  {name:<22} {a:10.4f} {b:14.4f}"

    rows = [line("train loss", ft["train"]["total_loss"], sc["train"]["total_loss"])]
    for key, name in (("loss/total_loss", "eval loss"), ("AP50", "eval AP50"),
                      ("AP", "eval AP"), ("loss", "eval loss"), ("accuracy", "eval accuracy")):
        if key in ft.get("eval", {}) and key in sc.get("eval", {}):
            rows.append(line(name, ft["eval"][key], sc["eval"][key]))
    return "\n".join([
        f"fine-tuned job: {run}",
        f"  checkpoints: {run / contract.RUN_CHECKPOINTS}",
        f"  summaries:   {run / contract.RUN_SUMMARIES}",
        f"  metrics:     {run / contract.RUN_EVAL_METRICS}",
        f"  model:       {run / contract.RUN_EXPORT}",
        f"  spec:        {run / contract.RUN_SPEC}",
        "",
        f"after {ft['step']} steps:        fine-tuned   from scratch",
        *rows,
    ])

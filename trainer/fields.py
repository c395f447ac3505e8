"""The job's training fields, each declared once: its spec path, trainer flag, type, default,
bounds, the task it belongs to, the pipeline.config field that may set it, and its help.

Everything else derives from ``FIELDS``: the trainer's argument parser and ``TrainConfig``
(``trainer.config``), the spec's model/data/training sections, the launcher's flags, the rendered
``args`` (``to_args``), the example spec and the field list in docs/spec.md. Pure Python: the
launcher imports it without TensorFlow.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

INT32_MAX = 2**31 - 1
TASKS = ("detection", "keras")


def _family_names() -> tuple[str, ...]:
    from trainer.detection import families

    return families.names()


def _presets() -> tuple[str, ...]:
    from trainer.detection.families.base import PRESETS

    return tuple(PRESETS)


@dataclass(frozen=True)
class Field:
    """One training field. ``default`` is the trainer's, used where neither a flag nor the
    pipeline.config sets a value; in the spec a field that a pipeline.config may set
    (``pipeline``) is unset (None) by default, so that the config's value stands."""

    name: str  # the TrainConfig attribute
    type: type  # str, int, float or bool; a list of them with ``repeated``
    help: str
    default: Any = None
    spec: str | None = None  # dotted camelCase path in the spec; None: the trainer's alone
    flag_name: str | None = None  # default: --<name with dashes>
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    repeated: bool = False  # a list: the flag repeats, the spec takes a list
    task: str | None = None  # only for this task; None: every task
    pipeline: str | None = None  # the PipelineConfig attribute that may set it
    minimum: float | None = None  # inclusive, unless ``above``
    maximum: float | None = None
    above: bool = False  # the minimum is exclusive (> rather than >=)
    launcher_flag: bool = False  # also a flag of `launcher render|validate|submit|run-local`
    uri: bool = False  # a gs:// URI or local path (globs for records), checked as such
    only_why: str = ""  # why another task refuses it, beside "only with task ..."
    example: Any = None  # a value to show in the example spec (``launcher spec init``)
    in_example: bool = False  # the example spec sets it (else it is shown commented out)

    @property
    def flag(self) -> str:
        """The trainer's (and the launcher's) command-line flag."""
        return self.flag_name or "--" + self.name.replace("_", "-")

    @property
    def spec_default(self) -> Any:
        """The value an unset spec field has."""
        if self.repeated:
            return []
        return None if self.pipeline else self.default

    def options(self) -> tuple[str, ...] | None:
        """The allowed values, for a field with a closed set (families are registered late)."""
        return self.choices() if callable(self.choices) else self.choices

    def label(self) -> str:
        """How a trainer message names the field: the flag, and the spec path when there is
        one (``--steps (training.steps)``)."""
        return f"{self.flag} ({self.spec})" if self.spec else self.flag

    def bounds_problem(self, value: Any) -> str | None:
        """Why a number is outside the field's bounds (NaN is), or None."""
        if self.type not in (int, float) or value is None:
            return None
        low, high = self.minimum, self.maximum
        if self.type is int and high is None:
            high = INT32_MAX
        if low is not None and not (value > low if self.above else value >= low):
            return f"must be {'>' if self.above else '>='} {_number(low)}"
        if high is not None and not value <= high:
            return f"must be <= {_number(high)}"
        if value != value:  # NaN compares false with everything
            return "must be a number"
        return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _f(name: str, type_: type, help_: str, **kw: Any) -> Field:
    return Field(name=name, type=type_, help=help_, **kw)


FIELDS: tuple[Field, ...] = (
    # The run directory is the spec's runDir/<namespace>/<name>: rendered, not a spec field.
    _f("run_dir", str, "the run directory (default: $LAUNCHER_RUN_DIR)"),
    # --- model
    _f("task", str, "detection: a detector from a checkpoint (and an OD-API pipeline.config), "
       "OD-API records; keras: an exported Keras classifier given as the checkpoint (.h5, "
       ".keras or a SavedModel directory), image-classification records, settings in "
       "model.keras", default="detection", spec="model.task", choices=TASKS),
    _f("family", str, "the detector family; with a pipeline.config that has an ssd block: "
       "ssd (the OD API's SSD; retinanet maps that block onto Model Garden's RetinaNet)",
       default="retinanet", spec="model.family", choices=_family_names, task="detection",
       pipeline="family", launcher_flag=True),
    _f("checkpoint", str, "checkpoint to fine-tune from: a prefix (.../ckpt-0) or a directory "
       "holding a `checkpoint` file; none: from scratch", spec="model.checkpoint",
       pipeline="fine_tune_checkpoint", uri=True, launcher_flag=True,
       example="gs://my-bucket/models/retinanet/ckpt-0", in_example=True),
    _f("fine_tune_type", str, "what the checkpoint restores: classification (the backbone), "
       "detection (all but the class-dependent layers; num_classes may change) or full "
       "(everything); a checkpoint of another family: classification", default="detection",
       spec="model.fineTuneType", choices=("classification", "detection", "full"),
       task="detection", pipeline="fine_tune_checkpoint_type", launcher_flag=True,
       in_example=True),
    _f("pipeline_config", str, "an OD-API pipeline.config: num_classes, image size, batch "
       "size, steps, learning rate, label map and input paths come from it unless set here",
       spec="model.pipelineConfig", task="detection", uri=True, launcher_flag=True,
       example="gs://my-bucket/models/retinanet/pipeline.config"),
    _f("label_map", str, "a StringIntLabelMap label_map.pbtxt", spec="model.labelMap",
       pipeline="label_map_path", uri=True, launcher_flag=True,
       example="gs://my-bucket/data/label_map.pbtxt", in_example=True),
    _f("num_classes", int, "classes (ids 1..N); must cover the label map's ids",
       spec="model.numClasses", pipeline="num_classes", minimum=1, example=3),
    _f("backbone", str, "the backbone, for a family that has a choice", default="mobilenetv2",
       spec="model.backbone", choices=("mobilenetv2", "resnet50"), task="detection",
       pipeline="backbone"),
    _f("model_size", str, "standard: the published architecture; tiny: a narrow one for CPU "
       "demos and tests", default="standard", spec="model.size", choices=_presets,
       task="detection", only_why="a Keras model has the size it was saved with"),
    _f("image_size", int, "square input size in pixels", default=256, spec="model.imageSize",
       pipeline="image_size", minimum=32, maximum=2048, example=512),
    # --- model.keras
    _f("trainable_layers", int, "the last N layers train, the rest is frozen (batch norm in "
       "frozen layers runs in inference mode)", spec="model.keras.trainableLayers",
       task="keras", minimum=1, example=2),
    _f("freeze_until", str, "freeze every layer up to and including this one",
       spec="model.keras.freezeUntil", task="keras", example="block_13_add"),
    _f("freeze_patterns", str, "freeze the layers (at any depth) whose name matches one of "
       "these regexes", spec="model.keras.freezePatterns", flag_name="--freeze-pattern",
       repeated=True, task="keras", example=["^conv", "bn$"]),
    _f("head", str, "the classification head: a new Dense layer when the class count differs "
       "(auto), kept, or always replaced", default="auto", spec="model.keras.head",
       choices=("auto", "keep", "replace"), task="keras"),
    _f("loss", str, "the loss; default: the model's compile config", spec="model.keras.loss",
       choices=("sparse_categorical_crossentropy", "categorical_crossentropy"), task="keras",
       example="sparse_categorical_crossentropy"),
    _f("optimizer", str, "default: the model's compile config, else sgd with momentum 0.9",
       spec="model.keras.optimizer", choices=("sgd", "adam", "rmsprop"), task="keras",
       example="adam"),
    _f("custom_objects", str, "an importable module in the image whose public names the "
       "model's custom layers are", spec="model.keras.customObjects", task="keras",
       example="my_layers"),
    _f("input_range", str, "pixel values the model expects", default="0-1",
       spec="model.keras.inputRange", choices=("0-1", "0-255", "-1-1"), task="keras"),
    _f("image_key", str, "TFRecord key of the JPEG or PNG bytes", default="image/encoded",
       spec="model.keras.features.image", task="keras"),
    _f("label_key", str, "TFRecord key of the int64 class", default="image/class/label",
       spec="model.keras.features.label", task="keras"),
    _f("text_key", str, "TFRecord key of the class name, read through the label map (ids "
       "1..N) when there is no label", default="image/class/text",
       spec="model.keras.features.text", task="keras"),
    _f("label_offset", int, "class index = label - offset (1 for records with 0 as the "
       "background)", default=0, spec="model.keras.features.labelOffset", task="keras",
       minimum=-INT32_MAX),
    # --- data
    _f("train", str, "training TFRecord globs (train-?????-of-00100.tfrecord; GZIP files are "
       "read)", spec="data.train", repeated=True, pipeline="train_input_paths",
       uri=True, launcher_flag=True, example=["gs://my-bucket/data/train-*.tfrecord"],
       in_example=True),
    _f("eval", str, "eval TFRecord globs", spec="data.eval", repeated=True,
       pipeline="eval_input_paths", uri=True, launcher_flag=True,
       example=["gs://my-bucket/data/val-*.tfrecord"], in_example=True),
    _f("max_skipped_fraction", float, "fail when more than this fraction of a worker's "
       "examples is unusable (bad boxes or classes, undecodable images; box-less images are "
       "skipped, not counted)", default=0.01, spec="data.maxSkippedFraction", minimum=0,
       maximum=1),
    # --- training
    _f("steps", int, "training steps", default=1000, spec="training.steps",
       pipeline="num_steps", minimum=1, launcher_flag=True, example=5000, in_example=True),
    _f("global_batch_size", int, "batch size summed over all replicas; divides by them",
       default=8, spec="training.globalBatchSize", pipeline="batch_size", minimum=1,
       launcher_flag=True, example=16, in_example=True),
    _f("checkpoint_every", int, "steps between published checkpoints", default=100,
       spec="training.checkpointEvery", minimum=1, launcher_flag=True, example=500,
       in_example=True),
    _f("keep_checkpoints", int, "newest published checkpoints kept", default=3,
       spec="training.keepCheckpoints", minimum=1),
    _f("learning_rate", float, "peak learning rate", default=0.02, spec="training.learningRate",
       pipeline="learning_rate", minimum=0, above=True, maximum=1e6),
    _f("warmup_steps", int, "steps of linear warm-up", default=0, spec="training.warmupSteps",
       pipeline="warmup_steps", minimum=0),
    _f("mixed_precision", bool, "float16 compute; default: on when GPUs are used",
       spec="training.mixedPrecision", example=True),
    _f("log_every", int, "steps between log lines and summaries", default=10,
       spec="training.logEvery", minimum=1),
    _f("export", bool, "export a SavedModel to <run dir>/export/ at the end", default=True,
       spec="training.export"),
    _f("freeze_batchnorm", bool, "keep batch-norm statistics and scales fixed (the OD API's "
       "freeze_batchnorm)", default=False, spec="training.freezeBatchnorm", task="detection",
       pipeline="freeze_batchnorm"),
    _f("deterministic_input", bool, "read records in a fixed order, unshuffled and "
       "unaugmented", default=False, spec="training.deterministicInput"),
    _f("seed", int, "seed of the new layers' initial values and of the input order",
       default=0, spec="training.seed", minimum=0),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
BY_SPEC: dict[str, Field] = {f.spec: f for f in FIELDS if f.spec}


@dataclass(frozen=True)
class Section:
    """A spec section made of fields: its docstring, and whether it may be left out (None)."""

    path: str
    name: str  # of the spec's struct
    doc: str
    optional: bool = False  # None unless given (model.keras: present only for task keras)


# Innermost first: a section's struct is made after those of the sections inside it.
SECTIONS: tuple[Section, ...] = (
    Section("model.keras.features", "KerasFeatures", "TFRecord feature keys of an "
            "image-classification data set."),
    Section("model.keras", "KerasSpec", "How to fine-tune an exported Keras model; only with "
            "model.task: keras.", optional=True),
    Section("model", "ModelSpec", "The exported model to fine-tune."),
    Section("data", "DataSpec", "TFRecords in the TF Object Detection API schema (or "
            "image-classification records for the keras task)."),
    Section("training", "Training", "Training loop settings; unset values come from the "
            "pipeline.config."),
)


def to_args(values: Mapping[str, Any]) -> list[str]:
    """The trainer's arguments for these field values (name -> value; None is left out), each
    one token: ``--flag=value``, so that no value (a path starting with ``-``) can be read as
    a flag; booleans as ``--flag`` / ``--no-flag``; lists as one ``--flag=item`` per item.
    ``trainer.config.from_args`` reads them back exactly."""
    args: list[str] = []
    for field in FIELDS:
        value = values.get(field.name)
        if value is None:
            continue
        if field.type is bool:
            args.append(field.flag if value else "--no-" + field.flag[2:])
        else:
            items: Iterable[Any] = value if field.repeated else [value]
            args += [f"{field.flag}={_text(item)}" for item in items]
    return args


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def value_in_args(args: list[str], name: str) -> str | None:
    """The (last) value of a field in rendered arguments, as text; None if absent. Jobs
    rendered before ``--flag=value`` carry ``--flag value``: read too."""
    flag = BY_NAME[name].flag
    found = [arg[len(flag) + 1:] for arg in args if arg.startswith(flag + "=")]
    found += [value for arg, value in itertools.pairwise(args) if arg == flag]
    return found[-1] if found else None

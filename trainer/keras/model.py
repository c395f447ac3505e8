"""An exported Keras model (``.h5``, ``.keras`` or a SavedModel directory), loaded with tf-keras
and shaped for fine-tuning: the classification head replaced when the class count changes,
layers frozen as users say it, and the loss and optimizer of its saved compile config.

Frozen layers keep their weights bit for bit; batch-norm layers among them run in inference
mode (tf-keras does so for a non-trainable ``BatchNormalization``), so their statistics stay too.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, TrainConfig
from trainer.text import first_line

FORMATS = {".h5": "h5", ".hdf5": "h5", ".keras": "keras"}
FORMAT_NAMES = {"h5": "HDF5 (.h5)", "keras": ".keras", "savedmodel": "SavedModel"}
LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy")
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "rmsprop": "RMSprop"}
_UNKNOWN = (re.compile(r"Unknown \w+(?: \w+)?: '?([\w.]+)"),
            re.compile(r"Could not (?:locate|deserialize) (?:class|function|object) '?([\w.]+)"))


def model_format(path: Path, uri: str) -> str:
    """``h5``, ``keras`` or ``savedmodel``; anything else is refused in one line."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ConfigError(f"--checkpoint {uri}: a directory without saved_model.pb; supported: "
                          "a .h5 or .keras file, or a SavedModel directory")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"--checkpoint {uri}: {path.suffix or 'no extension'!r} is not a "
                          "Keras model; supported: a .h5 or .keras file, or a SavedModel "
                          "directory")
    return kind


def custom_objects(module: str | None) -> dict[str, Any]:
    """The public names of ``module`` (``--custom-objects``), for models with custom layers."""
    if not module:
        return {}
    try:
        found = importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"--custom-objects {module}: cannot import it "
                          f"({first_line(err, 160)})") from None
    return {name: getattr(found, name) for name in dir(found) if not name.startswith("_")}


def load(path: Path, uri: str, objects: dict[str, Any], compile: bool = False) -> Any:
    """The model in ``path``; a file that is no Keras model, or one needing custom objects it
    was not given, is one ``ConfigError`` line."""
    import tf_keras

    kind = check_file(path, uri)
    try:
        with tf_keras.utils.custom_object_scope(objects):
            model = tf_keras.models.load_model(str(path), custom_objects=objects,
                                               compile=compile)
    except Exception as err:  # load_model's errors vary by format and fault
        text = str(err)
        found = [m[1] for m in (p.search(text) for p in _UNKNOWN) if m]
        if not found and kind == "keras":
            # tf-keras reads a .keras file with an unknown layer class into a broken graph
            # ("'str' object is not callable"): look for the class in the file itself.
            found = _unknown_classes(path, objects)
        if found:
            raise ConfigError(
                f"--checkpoint {uri}: the model needs a custom object it was not given "
                f"({found[0]}); name a module that defines it with --custom-objects "
                "(model.keras.customObjects)") from None
        raise ConfigError(f"--checkpoint {uri}: not a readable {FORMAT_NAMES[kind]} Keras "
                          f"model ({type(err).__name__}: {first_line(err, 200)})") from None
    if not isinstance(model, tf_keras.Model):
        raise ConfigError(f"--checkpoint {uri}: a SavedModel, but not one saved by Keras "
                          "(no Keras model to fine-tune)")
    return model


def check_file(path: Path, uri: str) -> str:
    """The file's format (``model_format``), refusing one written by Keras 3 and a SavedModel
    with no Keras model in it; reads no more than the file's metadata (no TensorFlow)."""
    kind = model_format(path, uri)
    if kind == "savedmodel" and not (path / "keras_metadata.pb").is_file():
        raise ConfigError(f"--checkpoint {uri}: a SavedModel without Keras metadata (written "
                          "by tf.saved_model.save or Keras 3's model.export): it holds no Keras "
                          "model to fine-tune; save the model with tf-keras' model.save")
    version = saved_by(path, kind)
    if version and version.split(".")[0] not in ("2", "1"):
        raise ConfigError(f"--checkpoint {uri}: saved by Keras {version}; the trainer "
                          "fine-tunes tf-keras (Keras 2) models: save it with tf-keras "
                          "(import tf_keras, or TF_USE_LEGACY_KERAS=1 before importing "
                          "TensorFlow) as .h5, .keras or a SavedModel")
    return kind


def saved_by(path: Path, kind: str) -> str | None:
    """The Keras version that wrote a ``.keras`` or ``.h5`` file, when it says."""
    import json
    import zipfile

    try:
        if kind == "keras":
            with zipfile.ZipFile(path) as archive:
                return str(json.loads(archive.read("metadata.json")).get("keras_version"))
        if kind == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                version = f.attrs.get("keras_version")
            return version.decode() if isinstance(version, bytes) else version
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # load_model names what is wrong with the file
    return None


def _unknown_classes(path: Path, objects: dict[str, Any]) -> list[str]:
    """Layer classes a ``.keras`` file names that neither tf-keras nor ``objects`` define."""
    import json
    import zipfile

    import tf_keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    unknown: list[str] = []

    def walk(layers: list[Any]) -> None:
        for layer in layers:
            name = layer.get("class_name", "")
            if name in ("Functional", "Sequential", "Model"):
                walk(layer.get("config", {}).get("layers", []))
            elif name not in objects and getattr(tf_keras.layers, name, None) is None and \
                    tf_keras.saving.get_registered_object(layer.get("registered_name") or
                                                          name) is None:
                unknown.append(name)

    walk(config.get("config", {}).get("layers", []))
    return unknown


@dataclass(frozen=True)
class Compiled:
    """What the model's saved compile config says (None: nothing saved)."""

    loss: str | None = None  # one of LOSSES
    from_logits: bool | None = None
    optimizer: dict[str, Any] | None = None  # tf_keras.optimizers.serialize
    metrics: tuple[str, ...] = ()


def compiled(model: Any, uri: str) -> Compiled:
    """The loss, optimizer and metric names of a model loaded with ``compile=True``."""
    import tf_keras

    if getattr(model, "optimizer", None) is None:
        return Compiled()
    args = model._get_compile_args(user_metrics=True)
    name, logits = _loss_name(args.get("loss"), uri)
    metrics = tuple(_metric_name(m) for group in _flat(args.get("metrics")) for m in _flat(group))
    return Compiled(name, logits, tf_keras.optimizers.serialize(args["optimizer"]), metrics)


def _flat(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _metric_name(metric: Any) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "name", type(metric).__name__)


def _loss_name(loss: Any, uri: str) -> tuple[str | None, bool | None]:
    if loss is None:
        return None, None
    if isinstance(loss, (dict, list, tuple)):
        raise ConfigError(f"--checkpoint {uri}: a model with several outputs or losses; "
                          "supported: one classification output")
    if isinstance(loss, str):
        return loss, None
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    name = config.get("name") or getattr(loss, "__name__", type(loss).__name__)
    return name, config.get("from_logits")


def input_shape(model: Any, image_size: int, uri: str) -> tuple[int, int, int]:
    """(height, width, channels) of the model's image input; ``image_size`` where the model
    leaves the size open."""
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4:
        raise ConfigError(f"--checkpoint {uri}: input shape {shape}; supported: one image "
                          "input (batch, height, width, channels)")
    _, height, width, channels = shape
    if channels not in (1, 3):
        raise ConfigError(f"--checkpoint {uri}: input shape {shape}: supported: 1 or 3 "
                          "channels")
    return height or image_size, width or image_size, channels


def output_classes(model: Any, uri: str) -> int:
    """Classes the model predicts (the last axis of its one output)."""
    shape = model.output_shape
    if isinstance(shape, list) or len(shape) != 2 or not shape[-1]:
        raise ConfigError(f"--checkpoint {uri}: output shape {shape}; supported: one "
                          "classification output (batch, classes)")
    return int(shape[-1])


def output_is_probability(model: Any) -> bool:
    """Whether the model ends in a softmax (else: logits)."""
    import tf_keras

    for layer in reversed(model.layers):
        activation = getattr(layer, "activation", None)
        if isinstance(layer, tf_keras.layers.Softmax):
            return True
        if activation is not None:
            return getattr(activation, "__name__", str(activation)) == "softmax"
    return False


def with_head(model: Any, num_classes: int, mode: str, uri: str) -> tuple[Any, bool]:
    """The model with its classification head for ``num_classes`` (``mode``: auto, keep or
    replace): a new ``Dense`` on the penultimate output, configured as the old one, followed by
    the old head's weightless layers (e.g. a softmax). Whether it was replaced."""
    import tf_keras

    units = output_classes(model, uri)
    if mode == "keep" or (mode == "auto" and num_classes == units):
        if num_classes != units:
            raise ConfigError(f"--head keep: the model predicts {units} classes, the data has "
                              f"{num_classes}; use --head auto to replace the head")
        return model, False
    index = _head_index(model, uri)
    if not getattr(model, "_is_graph_network", False):
        raise ConfigError(f"--checkpoint {uri}: not a Functional or Sequential model, so its "
                          "head cannot be replaced; use --head keep with as many classes as it "
                          "predicts")
    dense = model.layers[index]
    config = {**dense.get_config(), "units": num_classes}
    x = tf_keras.layers.Dense.from_config(config)(dense.input)
    for layer in model.layers[index + 1:]:
        x = type(layer).from_config(layer.get_config())(x)
    return tf_keras.Model(model.inputs, x, name=model.name), True


def _head_index(model: Any, uri: str) -> int:
    import tf_keras

    for index in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[index]
        if isinstance(layer, tf_keras.layers.Dense):
            return index
        if layer.weights:
            break
    raise ConfigError(f"--checkpoint {uri}: the model does not end in a Dense layer (and "
                      "weightless layers such as a softmax), so its head cannot be replaced; "
                      "use --head keep")


def freeze(model: Any, cfg: TrainConfig) -> list[str]:
    """Freeze what the config says (the last N top-level layers trainable, every top-level
    layer up to a named one, or layers at any depth by name pattern); the names of the frozen
    layers. A spec that names no layer, or leaves nothing to train, is one ``ConfigError``
    line."""
    layers = model.layers
    names = [layer.name for layer in layers]
    if cfg.trainable_layers is not None:
        if cfg.trainable_layers > len(layers):
            raise ConfigError(f"--trainable-layers {cfg.trainable_layers}: the model has only "
                              f"{len(layers)} layers")
        frozen = layers[:len(layers) - cfg.trainable_layers]
    elif cfg.freeze_until is not None:
        if cfg.freeze_until not in names:
            close = difflib.get_close_matches(cfg.freeze_until, names, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                f"; its layers: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
            raise ConfigError(f"--freeze-until {cfg.freeze_until!r}: no such layer{hint}")
        frozen = layers[:names.index(cfg.freeze_until) + 1]
    else:
        # Patterns reach into nested models (a Keras Application used as a layer) too.
        every = list(model._flatten_layers(include_self=False, recursive=True))
        names = [layer.name for layer in every]
        frozen = []
        for pattern in cfg.freeze_patterns:
            try:
                regex = re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"--freeze-pattern {pattern!r}: not a regular expression "
                                  f"({err})") from None
            matched = [layer for layer in every if regex.search(layer.name)]
            if not matched:
                raise ConfigError(f"--freeze-pattern {pattern!r}: matches no layer; its "
                                  f"layers: {', '.join(names[:8])}"
                                  f"{', ...' if len(names) > 8 else ''}")
            frozen += [layer for layer in matched if layer not in frozen]
    for layer in frozen:
        layer.trainable = False
    if not model.trainable_weights:
        raise ConfigError("the freeze settings leave no layer with weights to train")
    return [layer.name for layer in frozen]


def optimizer(cfg: TrainConfig, saved: dict[str, Any] | None, schedule_for: Any) -> Any:
    """The optimizer: ``--optimizer``, else the saved one's class and settings, else SGD with
    ``--momentum``; its learning rate the shared schedule (``schedule_for(base)``), whose base
    is ``--learning-rate``, else the saved rate."""
    import tf_keras

    saved_name = saved["class_name"].rsplit(">", 1)[-1] if saved else None
    saved_config = dict(saved.get("config", {})) if saved else {}
    name = OPTIMIZERS.get(cfg.optimizer or "") or saved_name or "SGD"
    if name == saved_name:
        config = {k: v for k, v in saved_config.items()
                  if k not in ("name", "learning_rate", "is_legacy_optimizer")}
    else:
        config = {"momentum": cfg.momentum} if name == "SGD" else {}
    base = cfg.learning_rate
    saved_rate = saved_config.get("learning_rate")
    if cfg.sources.get("learning_rate") != "flag" and isinstance(saved_rate, (int, float)):
        base = float(saved_rate)
    if cfg.sources.get("clip_norm") == "flag":
        config.update(global_clipnorm=cfg.clip_norm or None, clipnorm=None, clipvalue=None)
    cls = getattr(tf_keras.optimizers, name, None)
    if cls is None:
        raise ConfigError(f"the model's optimizer {name!r} is not a tf-keras optimizer; choose "
                          f"one with --optimizer ({', '.join(OPTIMIZERS)})")
    try:
        return cls.from_config({**config, "learning_rate": schedule_for(base)})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the model's optimizer {name}: {first_line(err, 160)}; choose one "
                          f"with --optimizer ({', '.join(OPTIMIZERS)})") from None

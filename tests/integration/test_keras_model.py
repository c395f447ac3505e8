"""``trainer.keras.model`` on real tf-keras models, in-process: freezing as users say it (nested
models too), head replacement, what a saved compile config gives, and Keras 3 files refused."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from trainer.config import ConfigError, TrainConfig

pytestmark = pytest.mark.integration
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _cfg(**fields: Any) -> TrainConfig:
    return TrainConfig(run_dir="/r", train=["/t"], task="keras", checkpoint="m.h5", **fields)


def _nested() -> Any:
    """A small 'application' (conv + batch norm) used as one layer, then a head."""
    import tf_keras
    from tf_keras import layers

    inner_in = tf_keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, name="block1_conv")(inner_in)
    x = layers.BatchNormalization(name="block1_bn")(x)
    x = layers.Conv2D(4, 3, name="block2_conv")(x)
    base = tf_keras.Model(inner_in, layers.GlobalAveragePooling2D(name="pool")(x), name="base")
    inputs = tf_keras.Input((16, 16, 3))
    logits = layers.Dense(3, name="logits")(base(inputs))
    return tf_keras.Model(inputs, layers.Softmax(name="probs")(logits))


def test_freezing_by_count_by_name_and_by_pattern_in_nested_models() -> None:
    from trainer.keras.model import freeze

    model = _nested()
    assert freeze(model, _cfg(trainable_layers=2)) == [model.layers[0].name, "base"]
    assert [layer.trainable for layer in model.layers] == [False, False, True, True]
    model = _nested()
    assert freeze(model, _cfg(freeze_until="base")) == [model.layers[0].name, "base"]
    model = _nested()
    frozen = freeze(model, _cfg(freeze_patterns=["^block1_"]))
    assert frozen == ["block1_conv", "block1_bn"]
    base = model.get_layer("base")
    assert not base.get_layer("block1_bn").trainable and base.get_layer("block2_conv").trainable
    with pytest.raises(ConfigError, match="--freeze-until 'bse': no such layer; did you mean "
                                          "base"):
        freeze(_nested(), _cfg(freeze_until="bse"))
    with pytest.raises(ConfigError, match="--trainable-layers 9: the model has only 4 layers"):
        freeze(_nested(), _cfg(trainable_layers=9))


def test_frozen_batch_norm_keeps_its_statistics_in_training_mode() -> None:
    import numpy as np

    from trainer.keras.model import freeze

    model = _nested()
    freeze(model, _cfg(freeze_patterns=["_bn$"]))
    bn = model.get_layer("base").get_layer("block1_bn")
    before = [w.numpy().copy() for w in bn.weights]
    model(np.random.default_rng(0).normal(3, 2, (4, 16, 16, 3)).astype("float32"),
          training=True)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, bn.weights, strict=True))


def test_a_new_head_keeps_the_old_one_s_activation_and_trailing_layers() -> None:
    from trainer.keras.model import output_is_probability, with_head

    model = _nested()
    assert output_is_probability(model)
    same, replaced = with_head(model, 3, "auto", "m")
    assert same is model and not replaced
    new, replaced = with_head(model, 5, "auto", "m")
    assert replaced and new.output_shape == (None, 5)
    assert [layer.name for layer in new.layers[-2:]] == ["logits", "probs"]
    assert new.get_layer("base") is model.get_layer("base")  # the features are shared
    with pytest.raises(ConfigError, match="--head keep: the model predicts 3 classes, the data "
                                          "has 5"):
        with_head(model, 5, "keep", "m")


def test_compile_config_of_each_format(tmp_path: Path) -> None:
    import tf_keras

    from trainer.keras.model import compiled, load

    model = _nested()
    model.compile(optimizer=tf_keras.optimizers.RMSprop(0.003),
                  loss=tf_keras.losses.CategoricalCrossentropy(from_logits=False),
                  metrics=["accuracy"])
    for name in ("m.h5", "m.keras", "m_savedmodel"):
        path = tmp_path / name
        model.save(str(path))
        saved = compiled(load(path, name, {}, compile=True), name)
        assert saved.loss == "categorical_crossentropy" and saved.from_logits is False
        assert saved.optimizer is not None and saved.optimizer["class_name"] == "RMSprop"
        assert abs(saved.optimizer["config"]["learning_rate"] - 0.003) < 1e-9


def test_keras_3_files_are_refused_with_what_to_do(tmp_path: Path) -> None:
    import keras  # Keras 3, whatever TF_USE_LEGACY_KERAS says

    from trainer.keras.model import load

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    for name in ("k3.keras", "k3.h5"):
        model.save(str(tmp_path / name))
        with pytest.raises(ConfigError, match=r"saved by Keras 3\.\d+.*save it with tf-keras"):
            load(tmp_path / name, name, {})
    model.export(str(tmp_path / "k3_export"))
    with pytest.raises(ConfigError, match="a SavedModel without Keras metadata"):
        load(tmp_path / "k3_export", "k3_export", {})


def test_a_model_whose_input_is_not_an_image_is_refused() -> None:
    import tf_keras

    from trainer.keras.model import input_shape, output_classes

    inputs = tf_keras.Input((10,))
    vector = tf_keras.Model(inputs, tf_keras.layers.Dense(3)(inputs))
    with pytest.raises(ConfigError, match=r"input shape \(None, 10\); supported: one image "
                                          r"input \(batch, height, width, channels\)"):
        input_shape(vector, 32, "m.h5")
    images = tf_keras.Input((None, None, 4))
    four = tf_keras.Model(images, tf_keras.layers.GlobalAveragePooling2D()(images))
    with pytest.raises(ConfigError, match="supported: 1 or 3 channels"):
        input_shape(four, 32, "m.h5")
    open_size = tf_keras.Input((None, None, 3))
    model = tf_keras.Model(open_size, tf_keras.layers.Dense(2)(
        tf_keras.layers.GlobalAveragePooling2D()(open_size)))
    assert input_shape(model, 96, "m.h5") == (96, 96, 3)  # the spec's imageSize
    assert output_classes(model, "m.h5") == 2

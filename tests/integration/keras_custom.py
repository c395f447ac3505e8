"""A custom Keras layer, for a model that cannot load without ``--custom-objects``."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras


class Scale(tf_keras.layers.Layer):
    """Multiplies by a learned scalar."""

    def build(self, input_shape: Any) -> None:
        self.factor = self.add_weight(name="factor", shape=(), initializer="ones")

    def call(self, inputs: Any) -> Any:
        return inputs * self.factor

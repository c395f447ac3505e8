"""The learning-rate schedule every task shares: a linear warm-up from ``warmup_learning_rate``
to the base rate, then cosine decay to 0 at ``total_steps`` (default: the run's steps), or
constant; the detectors' optimizer and the update step of the families with their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from trainer.config import TrainConfig

T = TypeVar("T")


def schedule(cfg: TrainConfig, base: float | None = None) -> Any:
    """The configured schedule peaking at ``base`` (default ``cfg.learning_rate``)."""
    import tf_keras

    rate = cfg.learning_rate if base is None else base
    cosine = tf_keras.optimizers.schedules.CosineDecay
    if cfg.lr_schedule == "constant":
        if not cfg.warmup_steps:
            return rate
        return cosine(cfg.warmup_learning_rate, 1, alpha=1.0, warmup_target=rate,
                      warmup_steps=cfg.warmup_steps)
    decay_steps = max((cfg.total_steps or cfg.steps) - cfg.warmup_steps, 1)
    if cfg.warmup_steps:
        return cosine(cfg.warmup_learning_rate, decay_steps, warmup_target=rate,
                      warmup_steps=cfg.warmup_steps)
    return cosine(rate, decay_steps)


def sgd(cfg: TrainConfig, mixed: bool) -> Any:
    """SGD with momentum over ``schedule``, clipped by the global norm; loss-scaled when
    training in mixed precision."""
    import tf_keras

    optimizer = tf_keras.optimizers.SGD(schedule(cfg), momentum=cfg.momentum,
                                        global_clipnorm=cfg.clip_norm or None)
    if mixed:
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def minimize(model: Any, optimizer: Any, compute: Callable[[], tuple[Any, T]]) -> T:
    """One update of ``model``'s trainable variables. ``compute()`` runs under the gradient tape
    and returns the loss to minimise (already divided as the strategy needs) and anything else,
    which is returned. With a ``LossScaleOptimizer`` the loss is scaled before the backward pass
    and the gradients unscaled after it."""
    import tensorflow as tf
    import tf_keras

    mixed = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    with tf.GradientTape() as tape:
        loss, extra = compute()
        if mixed:
            loss = optimizer.get_scaled_loss(loss)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    if mixed:
        grads = optimizer.get_unscaled_gradients(grads)
    optimizer.apply_gradients(list(zip(grads, variables, strict=True)))
    return extra

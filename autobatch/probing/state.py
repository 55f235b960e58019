"""Keeping the caller's model exactly as it was, whatever happens while we train it.

Trials and search candidates really train the caller's model (a copy would hold a second set
of weights and skew every memory reading). Everything training changes is put back in a
``finally``: model variables (weights, non-trainable statistics, seed-generator states),
metric variables, the optimizer's variables with ``iterations``, and the attributes ``fit``
sets. An optimizer that was never built is not touched at all: trials use a fresh copy of it,
so it comes back unbuilt, as it was.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

# Attributes that fit() and its callbacks set on the model.
_FIT_ATTRIBUTES = (
    "history",
    "stop_training",
    "train_function",
    "test_function",
    "predict_function",
    "_eval_epoch_iterator",
)


def _values(variables: list[Any]) -> list[np.ndarray]:
    return [np.array(v.numpy(), copy=True) for v in variables]


def _assign(variables: list[Any], values: list[np.ndarray]) -> None:
    for variable, value in zip(variables, values):
        variable.assign(value)


def fresh_optimizer(optimizer: Any) -> Any:
    """A new, unbuilt optimizer with the same configuration (learning-rate schedule included)."""
    import keras

    return keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))


@contextlib.contextmanager
def preserved(model: Any) -> Iterator[None]:
    """Run the block, then put the model back exactly as it was, even on error or Ctrl-C.

    Example:
        >>> with preserved(model):
        ...     model.fit(x, y, epochs=1)   # weights, optimizer, history all restored after
    """
    model_variables = list(model.variables)
    metric_variables = list(getattr(model, "metrics_variables", []))
    saved_model = _values(model_variables)
    saved_metrics = _values(metric_variables)
    # Saved functions are put back too: the ones traced during trials captured the trials'
    # optimizer and batch shapes, and the next fit must trace afresh for the caller's own.
    attributes = {name: model.__dict__[name] for name in _FIT_ATTRIBUTES if name in model.__dict__}

    optimizer = model.optimizer
    optimizer_was_built = bool(getattr(optimizer, "built", False))
    if optimizer_was_built:
        optimizer_variables = list(optimizer.variables)
        saved_optimizer = _values(optimizer_variables)
    else:
        model.optimizer = fresh_optimizer(optimizer)
    try:
        yield
    finally:
        _assign(model_variables, saved_model)
        _assign(metric_variables, saved_metrics)
        if optimizer_was_built:
            _assign(optimizer_variables, saved_optimizer)
        else:
            model.optimizer = optimizer
        for name in _FIT_ATTRIBUTES:
            if name in attributes:
                setattr(model, name, attributes[name])
            else:
                model.__dict__.pop(name, None)

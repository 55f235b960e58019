"""Keeping the caller's model exactly as it was, whatever happens while we train it.

Trials and search candidates really train the caller's model (a copy would hold a second set
of weights and skew every memory reading). Everything training changes is put back in a
``finally``: model variables (weights, non-trainable statistics, seed-generator states),
metric variables, the optimizer's variables with ``iterations``, and the attributes ``fit``
sets. An optimizer that was never built is not touched at all: trials use a fresh copy of it,
so it comes back unbuilt, as it was.

The saved values live in a temporary folder on disk, not in RAM: a copy in RAM (weights and,
with Adam, twice as much optimizer state) would be counted in every host trial's peak and
leave the answer short by that much. On a 4M-parameter MLP probed under 200 MiB of headroom,
that copy was a quarter of the room. Restoring reads them back one variable at a time.
The folder is made by `tempfile` (``TMPDIR``): where /tmp is a RAM disk (tmpfs), point
``TMPDIR`` at a disk for the saving to spare RAM.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
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


class _SavedValues:
    """The values of ``variables`` written to ``folder``, one ``.npy`` file each."""

    def __init__(self, variables: list[Any], folder: Path, prefix: str) -> None:
        self._variables = variables
        # Raw bytes plus dtype and shape, not .npy: np.save cannot round-trip bfloat16.
        self._files: list[tuple[Path, np.dtype, tuple[int, ...]]] = []
        for index, variable in enumerate(variables):
            value = np.asarray(variable.numpy())
            path = folder / f"{prefix}-{index}.bin"
            value.tofile(path)
            self._files.append((path, value.dtype, value.shape))

    def restore(self) -> None:
        for variable, (path, dtype, shape) in zip(self._variables, self._files):
            variable.assign(np.fromfile(path, dtype=dtype).reshape(shape))


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
    with tempfile.TemporaryDirectory(prefix="autobatch-state-") as folder:
        with _preserved(model, Path(folder)):
            yield


@contextlib.contextmanager
def _preserved(model: Any, folder: Path) -> Iterator[None]:
    saved_model = _SavedValues(list(model.variables), folder, "model")
    saved_metrics = _SavedValues(list(getattr(model, "metrics_variables", [])), folder, "metric")
    # Saved functions are put back too: the ones traced during trials captured the trials'
    # optimizer and batch shapes, and the next fit must trace afresh for the caller's own.
    attributes = {name: model.__dict__[name] for name in _FIT_ATTRIBUTES if name in model.__dict__}

    optimizer = model.optimizer
    optimizer_was_built = bool(getattr(optimizer, "built", False))
    if optimizer_was_built:
        saved_optimizer = _SavedValues(list(optimizer.variables), folder, "optimizer")
    else:
        model.optimizer = fresh_optimizer(optimizer)
    try:
        yield
    finally:
        saved_model.restore()
        saved_metrics.restore()
        if optimizer_was_built:
            saved_optimizer.restore()
        else:
            model.optimizer = optimizer
        for name in _FIT_ATTRIBUTES:
            if name in attributes:
                setattr(model, name, attributes[name])
            else:
                model.__dict__.pop(name, None)

"""Keeping the caller's model exactly as it was, whatever happens while we train it.

Trials and search candidates really train the caller's model (a copy would hold a second set
of weights and skew every memory reading). Everything training changes is put back in a
``finally``: model variables (weights, non-trainable statistics, seed-generator states),
metric variables, the optimizer's variables with ``iterations``, and the attributes ``fit``
sets. An optimizer that was never built is not touched at all: trials use a fresh copy of it,
so it comes back unbuilt, as it was.

The saved values live in a temporary folder (``TMPDIR``), not in this process's memory: a
copy in RAM (weights and, with Adam, twice as much optimizer state) would be counted in every
host trial's peak and leave the answer short by that much. On a 4M-parameter MLP probed under
200 MiB of headroom, that copy was a quarter of the room. Where the folder cannot be written
(a full disk, no usable temporary directory), the values stay in RAM, with a warning. Where
/tmp is a RAM disk (tmpfs) the copy still takes RAM, outside the process: the probe measures
its limit after saving, so the room it sees already excludes the copy.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import psutil

from autobatch.errors import AutobatchError
from autobatch.probing.replicas import strategy_scope

# The folder's name carries the owner's process id, so that one left by a killed process
# (SIGKILL runs no cleanup) can be told from one in use and removed by the next probe.
_FOLDER_PREFIX = "autobatch-state-"
_OWNED_FOLDER = re.compile(rf"^{_FOLDER_PREFIX}(\d+)-")

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
    """The values of ``variables``, each written to a file in ``folder`` (raw bytes, dtype and
    shape: np.save cannot round-trip bfloat16), or kept in RAM where that is impossible."""

    def __init__(self, variables: list[Any], folder: Path | None, prefix: str) -> None:
        self._variables = variables
        self._saved: list[Any] = []
        for index, variable in enumerate(variables):
            value = np.asarray(variable.numpy())
            if folder is not None:
                path = folder / f"{prefix}-{index}.bin"
                try:
                    value.tofile(path)
                except OSError as error:
                    _warn_in_ram(f"{path} could not be written ({error})")
                    folder = None
                else:
                    self._saved.append((path, value.dtype, value.shape))
                    continue
            self._saved.append(np.array(value, copy=True))

    def restore(self) -> list[BaseException]:
        """Assign every saved value back; return the errors, each variable tried regardless."""
        errors: list[BaseException] = []
        for variable, saved in zip(self._variables, self._saved, strict=True):
            try:
                if isinstance(saved, np.ndarray):
                    variable.assign(saved)
                else:
                    path, dtype, shape = saved
                    variable.assign(np.fromfile(path, dtype=dtype).reshape(shape))
            except Exception as error:  # noqa: BLE001 - the others must still be put back
                errors.append(error)
        return errors


def _warn_in_ram(reason: str) -> None:
    warnings.warn(
        f"autobatch keeps the model's saved weights in RAM: {reason}. Host memory peaks now "
        "include that copy, so the probe's answer is lower by about its size. Point TMPDIR at "
        "a writable disk to avoid it.",
        RuntimeWarning,
        stacklevel=4,
    )


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
    remove_stale_folders()
    folder: contextlib.AbstractContextManager[str | None]
    try:
        folder = tempfile.TemporaryDirectory(
            prefix=f"{_FOLDER_PREFIX}{os.getpid()}-", ignore_cleanup_errors=True
        )
    except OSError as error:  # no usable temporary directory
        _warn_in_ram(f"no temporary folder could be made ({error})")
        folder = contextlib.nullcontext(None)
    with folder as path:
        with _preserved(model, None if path is None else Path(path)):
            yield


def remove_stale_folders(directory: str | Path | None = None) -> list[Path]:
    """Remove saved-state folders whose process is gone (killed mid-probe); return them.

    Example:
        >>> remove_stale_folders()   # in tempfile.gettempdir() by default
        []
    """
    removed: list[Path] = []
    root = Path(directory if directory is not None else tempfile.gettempdir())
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED_FOLDER.match(entry.name)
        if match is None or not entry.is_dir() or psutil.pid_exists(int(match.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def _preserved(model: Any, folder: Path | None) -> Iterator[None]:
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
        with strategy_scope(model):
            model.optimizer = fresh_optimizer(optimizer)
    try:
        yield
    finally:
        # What cannot fail first, then every variable, each tried even if another failed.
        model.optimizer = optimizer
        for name in _FIT_ATTRIBUTES:
            if name in attributes:
                setattr(model, name, attributes[name])
            else:
                model.__dict__.pop(name, None)
        errors = saved_model.restore() + saved_metrics.restore()
        if optimizer_was_built:
            errors += saved_optimizer.restore()
        if errors:
            raise AutobatchError(
                f"{len(errors)} of the model's saved variables could not be put back (first: "
                f"{type(errors[0]).__name__}: {errors[0]}). The model is not as it was before; "
                "reload its weights (and optimizer state) from your own checkpoint."
            ) from errors[0]

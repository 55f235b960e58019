"""The `AutobatchError` family: every error autobatch raises on purpose.

Each message says what was passed, what was expected and how to fix it.
Subclasses also derive from the builtin a caller would naturally catch
(`TypeError`, `ValueError`, `ImportError`), so existing handlers keep working.
"""

from __future__ import annotations


class AutobatchError(Exception):
    """Base class of every error autobatch raises on purpose."""


class InvalidModelError(AutobatchError, TypeError):
    """The model is not a compiled Keras model (or a keras-tuner HyperModel)."""


class InvalidDataError(AutobatchError, ValueError):
    """The data cannot be used for training: wrong form, empty, mismatched lengths."""


class InvalidArgumentError(AutobatchError, ValueError):
    """An option is out of range or of the wrong form (a memory limit that is not a size)."""


class BatchDoesNotFitError(AutobatchError):
    """Even the smallest batch does not fit under the memory limit."""


class TrialError(AutobatchError):
    """A training step failed for a reason other than running out of memory.

    The original exception is chained as ``__cause__``.
    """


class NoTrainingError(AutobatchError):
    """A trial returned without running the optimizer steps it was asked for."""


class AllTrialsFailedError(AutobatchError):
    """Every candidate of a search failed (out of memory, NaN loss, ...)."""


class MissingDependencyError(AutobatchError, ImportError):
    """An optional dependency is needed for this feature and is not installed."""

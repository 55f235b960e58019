"""The `AutobatchError` family: every error autobatch raises on purpose.

Each message says what was passed, what was expected and how to fix it.
Subclasses also derive from the builtin a caller would naturally catch
(`TypeError`, `ValueError`, `ImportError`), so existing handlers keep working.
"""

from __future__ import annotations

import re


class AutobatchError(Exception):
    """Base class of every error autobatch raises on purpose."""


class InvalidModelError(AutobatchError, TypeError):
    """The model is not a compiled Keras model (or a keras-tuner HyperModel)."""


class InvalidDataError(AutobatchError, ValueError):
    """The data cannot be used for training: wrong form, empty, mismatched lengths."""


class InvalidArgumentError(AutobatchError, ValueError):
    """An option is out of range or of the wrong form (a memory limit that is not a size)."""


class InvalidResultError(AutobatchError, ValueError):
    """A saved result cannot be loaded: not JSON, the other kind of result, fields missing."""


class BatchDoesNotFitError(AutobatchError):
    """Even the smallest batch does not fit under the memory limit."""


class WorkerDoesNotFitError(BatchDoesNotFitError):
    """A probe worker process was killed before it could report: a process holding the
    model and data does not fit in the memory left beside the caller's."""


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


def kind_of(value: object) -> str:
    """``value``'s type with its article, for messages: "an int", "a list", "an ndarray"."""
    name = type(value).__name__
    # By sound: "an ndarray" (en-dee-array), "a uint8" (you-int).
    vowel_sound = (name[:1].lower() in "aeiou" and not name.startswith(("uint", "uni", "use"))
                   or name.startswith("nd"))
    return f"{'an' if vowel_sound else 'a'} {name}"


#: Longest backend text kept in a message; Keras and TensorFlow errors can run to pages.
MAX_BACKEND_TEXT = 300

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: TensorFlow's graph-node references inside an otherwise useful line.
_NODE_REFERENCE = re.compile(
    r"\s*(for|at) '\{\{node [^']*'|\s*\[\[\{\{node [^\]]*\]\]|\s*\[Op:[^\]]*\]"
)
#: Lines that frame the real message rather than say what went wrong.
_BOILERPLATE = (
    "Exception encountered when calling",
    "Graph execution error",
    "Detected at node",
    "Arguments received by",
    "Traceback (most recent call last)",
)


def describe_backend_error(
    error: BaseException, *, with_type: bool = True, limit: int = MAX_BACKEND_TEXT
) -> str:
    """The one line of a Keras, TensorFlow, JAX or torch exception that says what went wrong,
    after its type's name unless ``with_type`` is False, at most ``limit`` characters.

    Backend messages span many lines (graph dumps, stack frames, the arguments of a layer
    call) and carry terminal colour codes; an `AutobatchError` message is one plain line, with
    the original exception kept as its ``__cause__`` for the full text.

    Example:
        >>> text = "Graph execution error:\\n\\nDetected at node Cast\\n  File ...\\nCast failed"
        >>> describe_backend_error(RuntimeError(text))
        'RuntimeError: Cast failed'
    """
    text = _ANSI_ESCAPE.sub("", str(error))
    meaningful = [
        line.strip()
        for line in text.splitlines()
        # Stack frames, source lines and argument lists are indented; the message is not.
        if line.strip() and not line[:1].isspace() and not line.startswith(_BOILERPLATE)
    ]
    # Without its full stop, so that callers can go on with ". What to do ...".
    line = _NODE_REFERENCE.sub("", meaningful[0]).strip().removesuffix(".") if meaningful else ""
    if len(line) > limit:
        # Cut between words (a word cut short reads as a typo), unless that drops more than
        # a quarter of what fits (one long path or token).
        cut = line[: limit - 3]
        between = cut.rsplit(" ", 1)[0].rstrip()
        line = (between if len(between) >= 0.75 * len(cut) else cut) + "..."
    if not with_type:
        return line
    name = type(error).__name__
    return f"{name}: {line}" if line else name

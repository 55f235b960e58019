"""Loading what the command line and probe worker processes are given: a .keras model and
an .npz archive of training arrays, with errors that say what to do; and writing a file
that concurrent readers never see half-written (`write_atomically`).

Data files are NumPy .npz archives whose array names say what they hold (`NPZ_HELP`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any, Callable

from autobatch.errors import InvalidDataError, InvalidModelError, describe_backend_error

NPZ_HELP = """\
Data files are NumPy .npz archives (np.savez) whose array names say what they hold:
  x                 the inputs (one-input model)
  x_<name>          the input called <name>, for a model with several named inputs
                    (they become a dict {name: array}, matched to the model's input names)
  y                 the targets; y_<name> for a model with several named outputs
  sample_weight     optional per-sample weights
All arrays have the same length along the first axis. Example:
  np.savez("train.npz", x=x_train, y=y_train)
"""


def load_npz(path: Path, *, option: str = "--data") -> tuple:
    """``(x, y)`` or ``(x, y, sample_weight)`` from an .npz file named as in `NPZ_HELP`."""
    import numpy as np

    if path.is_dir():
        raise InvalidDataError(f"{option} {path} is a directory; expected a .npz file.")
    if not path.is_file():
        raise InvalidDataError(f"{option} {path}: no such file.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:  # noqa: BLE001 - zipfile, pickle and format errors alike
        raise InvalidDataError(
            f"{option} {path} is not a readable .npz archive ({type(error).__name__}: {error}). "
            'Write it with np.savez("data.npz", x=x, y=y).'
        ) from error
    x = _named(arrays, "x", path, option)
    y = _named(arrays, "y", path, option)
    known = {"x", "y", "sample_weight"} | {n for n in arrays if n.startswith(("x_", "y_"))}
    unknown = sorted(set(arrays) - known)
    if x is None or y is None or unknown:
        problem = "has no x" if x is None else "has no y" if y is None else (
            f"has arrays autobatch does not know: {', '.join(unknown)}")
        raise InvalidDataError(
            f"{option} {path} {problem} (it holds: {', '.join(sorted(arrays)) or 'nothing'}). "
            "Expected arrays named x (or x_<name> per named input), y (or y_<name> per named "
            "output) and optionally sample_weight."
        )
    if "sample_weight" in arrays:
        return x, y, arrays["sample_weight"]
    return x, y


def _named(arrays: dict[str, Any], prefix: str, path: Path, option: str) -> Any:
    named = {n[len(prefix) + 1:]: a for n, a in sorted(arrays.items()) if n.startswith(prefix + "_")}
    if prefix in arrays and named:
        raise InvalidDataError(
            f"{option} {path} has both {prefix} and {', '.join(prefix + '_' + n for n in named)}. "
            f"Use {prefix} for a single {'input' if prefix == 'x' else 'output'}, or only "
            f"{prefix}_<name> arrays for several."
        )
    return arrays.get(prefix, named or None)


def load_model(path: Path) -> Any:
    """A compiled Keras model from a .keras file, with errors that say what to do."""
    if path.is_dir():
        raise InvalidModelError(f"MODEL {path} is a directory; expected a .keras file.")
    if not path.is_file():
        raise InvalidModelError(f"MODEL {path}: no such file.")
    import keras

    try:
        with warnings.catch_warnings():
            # A model saved before its first fit has an unbuilt optimizer; Keras warns that
            # it skips that optimizer's (empty) state, which is exactly right here.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001 - Keras raises many kinds here
        raise InvalidModelError(
            f"MODEL {path}: cannot load a Keras model from it ({describe_backend_error(error)})."
            " Expected a file written by "
            "model.save('model.keras'); custom layers must be importable and registered with "
            "@keras.saving.register_keras_serializable() (in a probe's worker processes: name "
            "their module with worker_imports=[...] or --import)."
        ) from error
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise InvalidModelError(
            f"MODEL {path} holds a model saved without compile(). Compile it before saving "
            "(model.compile(optimizer=..., loss=...); model.save(...)) so the optimizer and "
            "loss are part of the file."
        )
    return model


def check_readable(path: Path, what: str, suffix: str) -> None:
    """Raise the typed error for ``what`` ("model" or "data") unless ``path`` is a file."""
    error = InvalidModelError if what == "model" else InvalidDataError
    if path.is_dir():
        raise error(f"{what} {path} is a directory; expected a {suffix} file.")
    if not path.is_file():
        raise error(f"{what} {path}: no such file. Expected a {suffix} file.")


def write_atomically(path: Path, write: Callable[[IO[Any]], Any], *, binary: bool = False) -> None:
    """Call ``write`` on a new file beside ``path`` (text, or bytes with ``binary``), then
    rename it to ``path``.

    Same directory as the target, so ``os.replace`` is a rename within one file system: a
    reader (another process's probe cache lookup, a search's chief reading its workers'
    trial records) sees the old file or the new one, never half of one. Nothing is left
    behind when ``write`` fails.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem[:12]}-", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it what open() would, so a worker
        # running as another user on a shared project directory can still read it.
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") if binary else os.fdopen(handle, "w", encoding="utf-8") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    """The process's umask, read without changing it: ``os.umask`` can only be read by
    setting it, which would race with other threads creating files (a search's gRPC
    threads)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text(encoding="ascii").splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    return 0o022

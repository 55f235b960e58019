"""Keeping TensorFlow's C++ start-up lines away when autobatch is what starts it.

TensorFlow 2.21 writes a few lines straight to the process's file descriptor 2 when it is
imported and when it first looks for devices (oneDNN notices, CUDA stubs, an ``E0000 ...
failed call to cuInit`` on a machine without a GPU driver), before its logging starts, so no
Python setting reaches them. Where autobatch triggers them, they are autobatch's noise.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

_devices_listed = False


def import_tensorflow_quietly() -> Any:
    """Import TensorFlow and let it look for devices, its C++ start-up lines hidden.

    Only the first call per process does anything beyond the import. A user who set
    ``TF_CPP_MIN_LOG_LEVEL`` chose what TensorFlow shows, and sees it. Neither the
    environment nor any logger is changed.

    Example:
        >>> tf = import_tensorflow_quietly()
        >>> tf.config.list_physical_devices("GPU")
        []
    """
    global _devices_listed
    if _devices_listed:
        return sys.modules["tensorflow"]
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    with native_stderr_silenced() if quiet else contextlib.nullcontext():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery (cuInit) logs here, once
    _devices_listed = True
    return tf


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block; Python exceptions still surface.

    Everything that writes to stderr meanwhile is hidden, other threads included: keep the
    block short.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)

"""Memory backends: how much memory a training step may use and how much it did use.

One backend per device family, all behind `MemoryBackend`:

- `HostMemory`: CPU training, peak RSS of this process against the cgroup or host RAM;
- `TensorFlowGPUMemory`, `JaxGPUMemory`, `TorchGPUMemory`: the framework's GPU allocator;
- `FakeMemory`: a deterministic stand-in for tests.

`detect_memory` picks the one that matches the active Keras backend. Importing this
package imports no framework; each backend imports its own when it is created.

Example:
    >>> memory = detect_memory()
    >>> with memory.trial(batch_size=64) as reading:
    ...     model.train_on_batch(x[:64], y[:64])
    >>> reading.peak_bytes, memory.limit_bytes()
"""

from __future__ import annotations

import importlib.util
import logging
import sys

from autobatch._units import parse_bytes
from autobatch.memory.base import MemoryBackend, TrialMemory
from autobatch.memory.fake import FakeMemory, FakeOutOfMemoryError, FakeProcessKilled
from autobatch.memory.host import HostMemory
from autobatch.memory.jax import JaxGPUMemory, jax_sees_gpu
from autobatch.memory.oom import is_out_of_memory
from autobatch.memory.tensorflow import TensorFlowGPUMemory, tensorflow_sees_gpu
from autobatch.memory.torch import TorchGPUMemory, torch_sees_gpu

__all__ = [
    "FakeMemory",
    "FakeOutOfMemoryError",
    "FakeProcessKilled",
    "HostMemory",
    "JaxGPUMemory",
    "MemoryBackend",
    "TensorFlowGPUMemory",
    "TorchGPUMemory",
    "TrialMemory",
    "available_backends",
    "detect_memory",
    "is_out_of_memory",
]

_logger = logging.getLogger(__name__)

# Keras backend name -> (framework module, "sees a GPU" check, GPU backend).
_GPU_BACKENDS = {
    "tensorflow": ("tensorflow", tensorflow_sees_gpu, TensorFlowGPUMemory),
    "jax": ("jax", jax_sees_gpu, JaxGPUMemory),
    "torch": ("torch", torch_sees_gpu, TorchGPUMemory),
}


def detect_memory(memory_limit: int | None = None) -> MemoryBackend:
    """The memory backend for the active Keras backend: its GPU if it sees one, else host RAM.

    Args:
        memory_limit: bytes; replaces the detected limit of whichever backend is picked
            (its ``limit_source`` then reads "memory_limit argument").

    Example:
        >>> detect_memory().describe()["device"]
        'CPU (host RAM)'
    """
    if memory_limit is not None:
        memory_limit = parse_bytes(memory_limit)  # fail before importing any framework
    entry = _GPU_BACKENDS.get(_keras_backend() or "")
    if entry is not None:
        _, sees_gpu, gpu_backend = entry
        if sees_gpu():
            return gpu_backend(memory_limit)
    return HostMemory(memory_limit)


def available_backends() -> list[MemoryBackend]:
    """Every memory backend usable here: host RAM, then each installed framework's GPUs.

    Imports each installed framework (for ``autobatch devices``, not for a probe). A GPU
    backend that cannot be set up (no NVML, a driver error) is left out with a warning.
    """
    backends: list[MemoryBackend] = [HostMemory()]
    for module, sees_gpu, gpu_backend in _GPU_BACKENDS.values():
        if module not in sys.modules and importlib.util.find_spec(module) is None:
            continue
        try:
            if sees_gpu():
                backends.append(gpu_backend())
        except Exception as error:  # one broken framework must not hide the others
            _logger.warning("%s memory backend unavailable: %s", module, error)
    return backends


def _keras_backend() -> str | None:
    try:
        import keras  # the probe imports it anyway; cheap if already imported
    except ImportError:
        return None
    return keras.backend.backend()

"""JAX GPUs: peak and limit from XLA's allocator (``device.memory_stats()``).

``memory_stats()`` gives ``bytes_in_use``, ``peak_bytes_in_use`` and ``bytes_limit`` (the
allocator's pool, by default 75% of the card). JAX cannot reset the peak: it is the
largest use since the process started. A trial therefore reads the peak after it ran,
which is exact when the trial set a new high (the usual case, as a probe grows the
batch) and an upper bound otherwise: a small batch run after a big one reads the big
one's peak. An overestimate only makes the probe more careful, never unsafe.

All local GPUs are measured: with ``keras.distribution.DataParallel`` the global batch is
split across them (peak = largest per-device peak, limit = smallest per-device limit).

Example:
    >>> memory = JaxGPUMemory()
    >>> memory.limit_source
    'GPU:0 allocator'
"""

from __future__ import annotations

import gc

from autobatch._units import parse_bytes
from autobatch.errors import InvalidArgumentError
from autobatch.memory.base import MemoryBackend
from autobatch.memory.nvml import gpu_label

__all__ = ["JaxGPUMemory", "jax_sees_gpu"]


def _gpu_devices() -> list:
    import jax

    return [d for d in jax.local_devices() if d.platform == "gpu"]


def jax_sees_gpu() -> bool:
    """True when JAX is installed and its local devices include a GPU."""
    try:
        return bool(_gpu_devices())
    except (ImportError, RuntimeError):
        return False


class JaxGPUMemory(MemoryBackend):
    """Peak and limit of every local GPU JAX sees."""

    name = "jax-gpu"
    peak_source = "JAX allocator peak_bytes_in_use (since start: JAX has no reset)"
    oom_is_catchable = True

    def __init__(self, memory_limit: int | None = None) -> None:
        """
        Args:
            memory_limit: bytes per device; replaces the allocator's ``bytes_limit``.

        Raises:
            InvalidArgumentError: JAX sees no GPU.
        """
        self._devices = _gpu_devices()
        if not self._devices:
            raise InvalidArgumentError(
                "JaxGPUMemory needs a GPU, but JAX sees none. "
                "Use HostMemory() for CPU training, or detect_memory() to pick for you."
            )
        self.device = gpu_label([d.id for d in self._devices])
        self._memory_limit = None if memory_limit is None else parse_bytes(memory_limit)
        self.limit_bytes()  # sets limit_source

    def limit_bytes(self) -> int:
        if self._memory_limit is not None:
            self.limit_source = "memory_limit argument"
            return self._memory_limit
        device = min(self._devices, key=lambda d: self._stat(d, "bytes_limit"))
        self.limit_source = f"GPU:{device.id} allocator"
        return self._stat(device, "bytes_limit")

    def current_bytes(self) -> int:
        return max(self._stat(d, "bytes_in_use") for d in self._devices)

    def _reset_peak(self) -> None:
        """JAX has no peak reset; see the module docstring for why reading after is safe."""

    def _read_peak(self) -> int:
        return max(self._stat(d, "peak_bytes_in_use") for d in self._devices)

    def release(self) -> None:
        # Device buffers are freed once unreferenced. jax.clear_caches() is not called: it
        # drops compiled executables (not activations), so it frees little and makes every
        # later batch size compile again.
        gc.collect()

    @staticmethod
    def _stat(device, key: str) -> int:
        stats = device.memory_stats() or {}  # None on backends that do not track memory
        return int(stats.get(key, 0))

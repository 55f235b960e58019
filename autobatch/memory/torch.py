"""torch GPUs: peaks and limit from torch's CUDA caching allocator.

``max_memory_allocated`` is the peak of memory held by tensors since
``reset_peak_memory_stats``. The limit is what tensors could still get: the card's free
memory (``mem_get_info``) plus what torch has already reserved in its cache, capped by
``set_per_process_memory_fraction`` when one is set. Running out raises
``torch.OutOfMemoryError``, which the probe catches; ``release`` then empties the cache.

Unlike TensorFlow and JAX, Keras on torch trains on one device (``KERAS_TORCH_DEVICE``,
else torch's current CUDA device) and has no built-in data parallelism; with DDP each
process has its own device and per-process batch. So by default only that device is
measured; pass ``devices`` to measure several (peak = largest, limit = smallest).

Example:
    >>> memory = TorchGPUMemory()
    >>> memory.device
    'GPU:0'
"""

from __future__ import annotations

import gc
import os
from typing import Sequence

from autobatch._units import parse_bytes
from autobatch.errors import InvalidArgumentError
from autobatch.memory.base import MemoryBackend
from autobatch.memory.nvml import gpu_label

__all__ = ["TorchGPUMemory", "torch_sees_gpu"]


def torch_sees_gpu() -> bool:
    """True when torch is installed and CUDA (or ROCm) is available to it."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)


def _keras_device_index(torch) -> int:
    # Keras's torch backend uses KERAS_TORCH_DEVICE if set ("cuda:1"), else "cuda",
    # which is torch's current device.
    name = os.environ.get("KERAS_TORCH_DEVICE", "")
    if name.startswith("cuda:") and name[5:].isdigit():
        return int(name[5:])
    return int(torch.cuda.current_device())


class TorchGPUMemory(MemoryBackend):
    """Peak and limit of the CUDA device(s) Keras trains on with the torch backend."""

    name = "torch-gpu"
    peak_source = "torch max_memory_allocated"
    oom_is_catchable = True

    def __init__(
        self, memory_limit: int | None = None, *, devices: Sequence[int] | None = None
    ) -> None:
        """
        Args:
            memory_limit: bytes per device; replaces the measured limit.
            devices: CUDA device indices to measure; default: the one Keras uses.

        Raises:
            InvalidArgumentError: torch sees no GPU, or ``devices`` names one it lacks.
        """
        import torch

        self._torch = torch
        if not torch_sees_gpu():
            raise InvalidArgumentError(
                "TorchGPUMemory needs a CUDA GPU, but torch sees none. "
                "Use HostMemory() for CPU training, or detect_memory() to pick for you."
            )
        count = torch.cuda.device_count()
        self._indices = list(devices) if devices is not None else [_keras_device_index(torch)]
        if not self._indices or any(not 0 <= i < count for i in self._indices):
            raise InvalidArgumentError(
                f"devices={devices!r} is not a list of CUDA device indices; torch sees "
                f"{count} device(s), so use indices from 0 to {count - 1}."
            )
        self.device = gpu_label(self._indices)
        self._memory_limit = None if memory_limit is None else parse_bytes(memory_limit)
        self.limit_bytes()  # sets limit_source

    def limit_bytes(self) -> int:
        if self._memory_limit is not None:
            self.limit_source = "memory_limit argument"
            return self._memory_limit
        limit, self.limit_source = min((self._limit_of(i) for i in self._indices), key=_first)
        return limit

    def current_bytes(self) -> int:
        return max(int(self._torch.cuda.memory_allocated(i)) for i in self._indices)

    def _reset_peak(self) -> None:
        for index in self._indices:
            self._torch.cuda.reset_peak_memory_stats(index)

    def _read_peak(self) -> int:
        # The allocator counts on the host when a kernel is queued; no synchronize needed.
        return max(int(self._torch.cuda.max_memory_allocated(i)) for i in self._indices)

    def release(self) -> None:
        # Collect first: empty_cache can only return blocks no live tensor holds.
        gc.collect()
        self._torch.cuda.empty_cache()

    def _limit_of(self, index: int) -> tuple[int, str]:
        cuda = self._torch.cuda
        free, total = cuda.mem_get_info(index)
        limit = int(free) + int(cuda.memory_reserved(index))
        source = f"GPU:{index} free + torch reserved (mem_get_info)"
        get_fraction = getattr(cuda, "get_per_process_memory_fraction", None)
        if get_fraction is not None:
            capped = int(total * get_fraction(index))
            if capped < limit:
                limit, source = capped, f"GPU:{index} per-process memory fraction"
        return limit, source


def _first(pair: tuple[int, str]) -> int:
    return pair[0]

"""TensorFlow GPUs: peaks from TensorFlow's own allocator, limit from NVML.

TensorFlow reserves most of each GPU when it starts, so the card looks full from
outside; ``tf.config.experimental.get_memory_info(device)["peak"]`` is what tensors
really reached, and ``reset_memory_stats`` starts a new peak. TensorFlow does not expose
its allocator's limit, so the limit is a ``LogicalDeviceConfiguration.memory_limit`` set
by the user if any, else the card's total minus what other processes hold (NVML). That
is an upper bound (the CUDA context and cuDNN workspaces also live on the card); running
past it raises ``ResourceExhaustedError``, which the probe catches.

All visible GPUs are measured: under a distribution strategy the global batch is split
across them, so the peak is the largest per-device peak and the limit the smallest
per-device limit. Without a strategy only GPU:0 is used and the others read ~0.

Example:
    >>> memory = TensorFlowGPUMemory()
    >>> memory.device
    'GPU:0-1 (2 devices)'
"""

from __future__ import annotations

import gc

from autobatch._quiet import import_tensorflow_quietly
from autobatch._units import parse_bytes
from autobatch.errors import InvalidArgumentError, MissingDependencyError
from autobatch.memory.base import MemoryBackend
from autobatch.memory.nvml import gpu_label, query_gpus, visible_nvml_indices

__all__ = ["TensorFlowGPUMemory", "tensorflow_sees_gpu"]


def tensorflow_sees_gpu() -> bool:
    """True when TensorFlow is installed and lists a GPU (does not start its runtime)."""
    try:
        tf = import_tensorflow_quietly()  # autobatch starts the device search: its noise
    except ImportError:
        return False
    return bool(tf.config.list_physical_devices("GPU"))


class TensorFlowGPUMemory(MemoryBackend):
    """Peak and limit of every GPU TensorFlow sees."""

    name = "tensorflow-gpu"
    peak_source = "TensorFlow allocator peak (get_memory_info)"
    oom_is_catchable = True

    def __init__(self, memory_limit: int | None = None) -> None:
        """
        Args:
            memory_limit: bytes per device; replaces the NVML limit.

        Raises:
            InvalidArgumentError: TensorFlow sees no GPU.
            MissingDependencyError: NVML is unavailable and no ``memory_limit`` was given.
        """
        import tensorflow as tf

        self._tf = tf
        self._physical = tf.config.list_physical_devices("GPU")
        if not self._physical:
            raise InvalidArgumentError(
                "TensorFlowGPUMemory needs a GPU, but TensorFlow sees none. "
                "Use HostMemory() for CPU training, or detect_memory() to pick for you."
            )
        # Names get_memory_info accepts; a user may split one card into several.
        self._devices = [f"GPU:{i}" for i in range(len(tf.config.list_logical_devices("GPU")))]
        self.device = gpu_label(range(len(self._devices)))
        self._memory_limit = None if memory_limit is None else parse_bytes(memory_limit)
        self.limit_bytes()  # fail now, not mid-probe, if there is no limit to be had

    def limit_bytes(self) -> int:
        if self._memory_limit is not None:
            self.limit_source = "memory_limit argument"
            return self._memory_limit
        configured = [self._configured_limit(i) for i in range(len(self._physical))]
        limits = self._fill_from_nvml(configured) if None in configured else configured
        known = [pair for pair in limits if pair is not None]  # _fill_from_nvml filled them all
        limit, self.limit_source = min(known, key=lambda pair: pair[0])
        return limit

    def current_bytes(self) -> int:
        return max(self._info(d)["current"] for d in self._devices)

    def _reset_peak(self) -> None:
        for device in self._devices:
            self._tf.config.experimental.reset_memory_stats(device)

    def _read_peak(self) -> int:
        return max(self._info(d)["peak"] for d in self._devices)

    def release(self) -> None:
        # TensorFlow keeps its pool; freed tensors go back to it once unreferenced.
        gc.collect()

    def _info(self, device: str) -> dict[str, int]:
        return {k: int(v) for k, v in self._tf.config.experimental.get_memory_info(device).items()}

    def _configured_limit(self, index: int) -> tuple[int, str] | None:
        configs = self._tf.config.get_logical_device_configuration(self._physical[index])
        limits = [c.memory_limit for c in configs or () if c.memory_limit is not None]
        if not limits:
            return None
        # LogicalDeviceConfiguration.memory_limit is in MiB (TensorFlow multiplies by 2**20).
        return min(limits) * 2**20, f"GPU:{index} memory_limit (LogicalDeviceConfiguration)"

    def _fill_from_nvml(self, limits: list[tuple[int, str] | None]) -> list[tuple[int, str]]:
        """Replace each missing limit by the card's total minus other processes' use."""
        report = query_gpus()
        if not report.available:
            raise MissingDependencyError(
                f"Cannot find the memory limit of {self.device}: TensorFlow does not report "
                f"it and NVML is not available ({report.reason}). Install nvidia-ml-py, or "
                f"pass memory_limit (bytes per GPU), e.g. memory_limit='20GiB'."
            )
        by_index = {gpu.index: gpu for gpu in report.gpus}
        nvml_indices = visible_nvml_indices(len(self._physical), gpus=report.gpus)
        filled = []
        for index, limit in enumerate(limits):
            gpu = by_index.get(nvml_indices[index]) if index < len(nvml_indices) else None
            if limit is None and gpu is None:
                raise MissingDependencyError(
                    f"NVML does not list TensorFlow's GPU:{index} (CUDA_VISIBLE_DEVICES="
                    f"{','.join(map(str, nvml_indices))}). Pass memory_limit (bytes per GPU)."
                )
            if limit is None:
                assert gpu is not None  # raised above when both are missing
                if gpu.other_processes_bytes is None:
                    limit = (gpu.total_bytes, f"GPU:{index} total (NVML)")
                else:
                    limit = (
                        gpu.total_bytes - gpu.other_processes_bytes,
                        f"GPU:{index} total minus other processes (NVML)",
                    )
            filled.append(limit)
        return filled

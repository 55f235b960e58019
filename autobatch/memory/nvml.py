"""What NVIDIA's management library (NVML, package ``nvidia-ml-py``) says about each GPU.

NVML sees the whole card: its total memory and what every process uses. It cannot say
what a model needs, because TensorFlow and JAX reserve most of the card up front (their
pool shows as "used"); peaks come from the framework allocators. NVML is used for the
card's size and for the memory other processes hold.

Nothing here raises: without the package, a driver, or a GPU, `query_gpus` returns a
report with ``available=False`` and the reason.

Example:
    >>> report = query_gpus()
    >>> [gpu.name for gpu in report.gpus] if report.available else report.reason
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

__all__ = ["GpuInfo", "NvmlReport", "gpu_label", "query_gpus", "visible_nvml_indices"]


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML sees it (NVML's own index, which ignores CUDA_VISIBLE_DEVICES)."""

    index: int
    name: str
    uuid: str
    total_bytes: int
    used_bytes: int
    other_processes_bytes: int | None
    """Memory held by processes other than this one; None when NVML cannot tell which
    process is ours (in a container NVML reports host PIDs, which differ from ours)."""


@dataclass(frozen=True)
class NvmlReport:
    """The result of one NVML query: the GPUs, or why there are none."""

    available: bool
    reason: str = ""
    gpus: list[GpuInfo] = field(default_factory=list)


def query_gpus() -> NvmlReport:
    """Ask NVML about every GPU; never raises."""
    try:
        import pynvml
    except ImportError:
        return NvmlReport(False, "the nvidia-ml-py package is not installed")
    try:
        pynvml.nvmlInit()
    except Exception as error:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return NvmlReport(False, f"NVML could not start: {error}")
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = [_gpu_info(pynvml, index) for index in range(count)]
    except Exception as error:
        return NvmlReport(False, f"NVML query failed: {error}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    if not gpus:
        return NvmlReport(False, "NVML found no GPU")
    return NvmlReport(True, "", gpus)


def visible_nvml_indices(
    count: int, environ: Mapping[str, str] | None = None, gpus: Sequence[GpuInfo] = ()
) -> list[int]:
    """NVML indices of the first ``count`` GPUs a CUDA program sees, in its order.

    CUDA numbers only the devices in CUDA_VISIBLE_DEVICES, in the order listed; NVML
    numbers all of them. Entries may be indices or UUIDs (``GPU-...``, matched by prefix
    against ``gpus``). Without the variable, CUDA's index equals NVML's, assuming
    CUDA_DEVICE_ORDER=PCI_BUS_ID or identical cards (CUDA's default order puts the
    fastest card first, NVML's follows the PCI bus).
    """
    environ = os.environ if environ is None else environ
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return list(range(count))
    indices: list[int] = []
    for entry in value.split(",") if value.strip() else []:  # "" hides every GPU
        entry = entry.strip()
        if entry.isdigit():
            indices.append(int(entry))
            continue
        match = [gpu.index for gpu in gpus if entry and gpu.uuid.startswith(entry)]
        if not match:
            break  # CUDA also stops at the first entry it cannot resolve
        indices.append(match[0])
    return indices[:count]


def gpu_label(indices: Sequence[int]) -> str:
    """``[0]`` -> ``"GPU:0"``; ``[0, 1, 2, 3]`` -> ``"GPU:0-3 (4 devices)"``."""
    indices = sorted(indices)
    if len(indices) == 1:
        return f"GPU:{indices[0]}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"GPU:{indices[0]}-{indices[-1]} ({len(indices)} devices)"
    return f"GPU:{','.join(map(str, indices))} ({len(indices)} devices)"


def _gpu_info(pynvml, index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return GpuInfo(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        total_bytes=int(memory.total),
        used_bytes=int(memory.used),
        other_processes_bytes=_other_processes_bytes(pynvml, handle),
    )


def _other_processes_bytes(pynvml, handle) -> int | None:
    try:
        processes = list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except Exception:
        return None
    if not processes:
        return 0
    mine = os.getpid()
    if not any(process.pid == mine for process in processes):
        # Either we have no CUDA context yet, or we are in a PID namespace and NVML's
        # host PIDs never match ours. We cannot tell which, so we do not guess.
        return None
    # usedGpuMemory is None where the driver does not report per-process use (Windows WDDM).
    return sum(int(p.usedGpuMemory or 0) for p in processes if p.pid != mine)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

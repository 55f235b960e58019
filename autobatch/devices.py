"""What memory autobatch sees on this machine, as plain data (for ``autobatch devices``).

Every source is asked separately and none may fail the whole report: the memory backends a
probe could use, the host's RAM, the process's cgroup limit, NVML's view of each GPU, and the
GPUs each installed framework lists.

Example:
    >>> info = inspect_devices()
    >>> info["probe_uses"]
    'CPU (host RAM)'
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from typing import Any, overload

__all__ = ["inspect_devices", "resolve_memory_limit"]


def inspect_devices() -> dict[str, Any]:
    """A JSON-ready description of every memory source and limit autobatch can see."""
    import keras
    import psutil

    from autobatch.memory import available_backends, detect_memory
    from autobatch.memory.cgroup import read_cgroup_memory
    from autobatch.memory.nvml import query_gpus

    memory = psutil.virtual_memory()
    cgroup = read_cgroup_memory()
    nvml = query_gpus()
    chosen = detect_memory()
    return {
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "probe_uses": f"{chosen.device}, peaks from {chosen.peak_source}",
        "backends": [backend.describe() for backend in available_backends()],
        "host": {"total_bytes": int(memory.total), "available_bytes": int(memory.available)},
        "cgroup": None if cgroup is None else {
            "version": cgroup.version,
            "path": cgroup.path,
            "limit_bytes": cgroup.limit_bytes,
            "usage_bytes": cgroup.usage_bytes,
        },
        "nvml": {
            "available": nvml.available,
            "reason": nvml.reason,
            "gpus": [dataclasses.asdict(gpu) for gpu in nvml.gpus],
        },
        "framework_gpus": _framework_gpus(),
    }


def _framework_gpus() -> dict[str, list[str]]:
    """The GPUs each installed framework lists (only frameworks already importable)."""
    found: dict[str, list[str]] = {}
    if _installed("tensorflow"):
        import tensorflow as tf

        found["TensorFlow"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    if _installed("jax"):
        try:
            import jax

            found["JAX"] = [str(d) for d in jax.devices() if d.platform == "gpu"]
        except RuntimeError:  # no GPU plugin: jax.devices() on CPU only
            found["JAX"] = []
    if _installed("torch"):
        import torch

        found["torch"] = [
            f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
        ]
    return found


def _installed(module: str) -> bool:
    return module in sys.modules or importlib.util.find_spec(module) is not None


@overload
def resolve_memory_limit(value: None) -> None: ...


@overload
def resolve_memory_limit(value: int | str) -> int | str: ...


def resolve_memory_limit(value: int | str | None) -> int | str | None:
    """A memory limit where ``"+SIZE"`` means SIZE above what is in use now.

    On CPU the limit counts the whole process, TensorFlow's own ~0.5-1 GiB included, which
    differs between machines; "+512MiB" says "512 MiB for training" anywhere. Other values
    are returned unchanged (bytes, or a size such as "6GiB").

    Example:
        >>> resolve_memory_limit("+512MiB")  # this process's memory now, plus 512 MiB
        1342177280
    """
    if not isinstance(value, str) or not value.strip().startswith("+"):
        return value
    from autobatch._units import parse_bytes
    from autobatch.memory import detect_memory

    extra = parse_bytes(value.strip()[1:], name="memory_limit")
    return detect_memory().current_bytes() + extra


"""The probe cache: a probe result kept on disk, reused when nothing that decides memory changed.

A pipeline that probes the same model on the same machine every run wastes minutes. The key
is a SHA-256 fingerprint of everything that decides a step's memory:

- the model: its config (layer names made canonical, so a model rebuilt in the same process
  still matches), the source of any custom model or layer class, each weight's shape, dtype
  and trainability, the dtype policy, the compile config, the optimizer config, ``jit_compile``;
- the data: shapes and dtypes of the arrays (never their values), or a dataset's element spec
  and size;
- the machine: Keras backend, the memory backend and device, the device's capacity (host RAM
  and cgroup limit, or the GPUs' model and total memory), environment variables that change
  allocators or XLA, library versions;
- the probe's own settings: margin, memory_limit, max_batch_size, steps_per_trial.

Any change of a part is a miss. A hit is also refused when the memory free now is smaller than
what the cached answer needs. Entries are JSON files written atomically (temporary file, then
``os.replace``); an entry that cannot be read is skipped with a warning, never an error.

The directory is ``$AUTOBATCH_CACHE_DIR/probe`` if that variable is set, else
``$XDG_CACHE_HOME/autobatch/probe`` (``~/.cache/autobatch/probe`` by default).

Example:
    >>> key = cache.probe_key(model, (x, y), memory, margin=0.05, memory_limit=None,
    ...                       max_batch_size=None)
    >>> result = cache.load(key, memory) or autobatch.probe(model, (x, y))
    >>> cache.store(key, result)
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from autobatch._versions import library_versions
from autobatch.data import ArrayData, DatasetData, TrainingData, as_training_data
from autobatch.files import write_atomically
from autobatch.memory.base import MemoryBackend
from autobatch.results import ProbeResult

__all__ = ["cache_root", "fits_now", "load", "probe_dir", "probe_key", "store"]

#: Bump when the meaning of the key or the probe's answer changes, so old entries stop
#: matching (2: answers verified with real epochs; an upgraded probe must not serve answers
#: found the old way).
KEY_FORMAT = 2
_KEY = re.compile(r"^[0-9a-f]{64}$")
# Environment variables that change how much memory a step takes or how it is measured.
_MEMORY_ENVIRONMENT = (
    "CUDA_VISIBLE_DEVICES",
    "TF_GPU_ALLOCATOR",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_XLA_FLAGS",
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "PYTORCH_CUDA_ALLOC_CONF",
    "KERAS_BACKEND",
)


def cache_root() -> Path:
    """autobatch's per-user cache directory (``AUTOBATCH_CACHE_DIR`` overrides it)."""
    override = os.environ.get("AUTOBATCH_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "autobatch"


def probe_dir() -> Path:
    """Where probe results are cached: ``cache_root() / "probe"``."""
    return cache_root() / "probe"


def probe_key(
    model: Any,
    training_data: Any,
    memory: MemoryBackend,
    *,
    margin: float,
    memory_limit: int | str | None,
    max_batch_size: int | None,
    steps_per_trial: int | None = None,
    num_replicas: int = 1,
) -> str | None:
    """The cache key of a probe: a SHA-256 hex digest, or None when the data cannot be keyed.

    ``training_data`` is what the user passed or its `TrainingData` wrapper. A callable
    ``batch_size -> dataset`` returns None: its batches' shapes are unknown until it runs, so
    such a probe is never cached.
    """
    data_part = _data_part(as_training_data(training_data))
    if data_part is None:
        return None
    settings: dict[str, Any] = {
        "margin": margin,
        "memory_limit": None if memory_limit is None else str(memory_limit),
        "max_batch_size": max_batch_size,
        "steps_per_trial": steps_per_trial,
    }
    if num_replicas > 1:  # only then, so that keys stored without distribution still match
        settings["num_replicas"] = num_replicas
    parts = {
        "key_format": KEY_FORMAT,
        "model": _model_part(model),
        "data": data_part,
        "machine": _machine_part(memory),
        "probe": settings,
    }
    text = json.dumps(parts, sort_keys=True, default=_stable_text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load(key: str | None, memory: MemoryBackend | None = None) -> ProbeResult | None:
    """The cached result for ``key`` with ``from_cache=True``, or None on a miss.

    With ``memory``, an entry whose answer needs more memory than is free now is a miss too
    (see `fits_now`). A corrupt or unreadable entry warns and counts as a miss.
    """
    if key is None:
        return None
    path = _entry_path(key)
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry.get("key") != key:
            raise ValueError(f"it holds key {str(entry.get('key'))[:12]}..., not {key[:12]}...")
        result = ProbeResult.from_dict(entry["result"])
    except Exception as error:  # noqa: BLE001 - any damage means "no usable entry"
        warnings.warn(
            f"Ignoring the probe cache entry {path}: it cannot be read ({type(error).__name__}: "
            f"{error}). autobatch probes again and overwrites it; delete the file if this "
            "repeats.",
            stacklevel=2,
        )
        return None
    if memory is not None and not fits_now(result, memory):
        return None
    return dataclasses.replace(result, from_cache=True)


def store(key: str | None, result: ProbeResult) -> None:
    """Write ``result`` under ``key`` atomically; a directory that cannot be written warns."""
    if key is None:
        return
    path = _entry_path(key)
    entry = {"key": key, "result": dataclasses.replace(result, from_cache=False).to_dict()}
    try:
        _write_atomically(path, json.dumps(entry, indent=1) + "\n")
    except OSError as error:
        warnings.warn(
            f"Could not write the probe cache entry {path} ({error}). The probe result is "
            "fine but will not be reused; set AUTOBATCH_CACHE_DIR to a writable directory.",
            stacklevel=2,
        )


def fits_now(result: ProbeResult, memory: MemoryBackend) -> bool:
    """True when the memory free now still holds what the cached answer needed.

    The cached answer peaked ``peak - baseline`` above what was in use before the probe; it
    still fits if that is within the usable share of what is free now.
    """
    peak = _answer_peak(result)
    if peak is None:
        return True  # nothing to compare with: trust the key
    needed = peak - result.baseline_bytes
    baseline = memory.current_bytes()
    usable_now = (memory.limit_bytes() - baseline) * (1.0 - result.margin)
    return needed <= usable_now


def _answer_peak(result: ProbeResult) -> float | None:
    """The answer's measured peak, or, when it lies between two trials, the fitted line's."""
    for trial in result.trials:
        if trial.fits and trial.batch_size == result.max_batch_size and trial.peak_bytes:
            return trial.peak_bytes
    if result.bytes_per_sample is not None and result.fixed_bytes is not None:
        return result.fixed_bytes + result.bytes_per_sample * result.max_batch_size
    return None


def _entry_path(key: str) -> Path:
    if not _KEY.match(key):
        raise ValueError(f"probe cache key {key!r} is not a SHA-256 hex digest from probe_key().")
    return probe_dir() / f"{key}.json"


def _write_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text))


# --- the parts of the key ---------------------------------------------------------------


def _model_part(model: Any) -> dict[str, Any]:
    layers = _all_layers(model)
    try:
        config = json.loads(model.to_json())
    except Exception:  # noqa: BLE001 - subclassed models often have no config
        config = None
    optimizer = getattr(model, "optimizer", None)
    part = {
        "class": _qualified_name(type(model)),
        "config": config,
        "layers": [[_qualified_name(type(layer)), _dtype_policy(layer)] for layer in layers],
        "custom_code": _custom_code(layers),
        "weights": [
            [list(_shape(v)), str(getattr(v, "dtype", "")), bool(getattr(v, "trainable", True))]
            for v in model.weights
        ],
        "compile": _compile_config(model),
        "optimizer": _optimizer_config(optimizer),
        "jit_compile": getattr(model, "jit_compile", None),
        "steps_per_execution": getattr(model, "steps_per_execution", None),
        "run_eagerly": getattr(model, "run_eagerly", None),
    }
    # Auto-generated names ("dense_3", "adam_1") change each time a model is rebuilt in one
    # process; renaming them by order of appearance keeps an identical model's key identical.
    names = {layer.name: f"#layer{index}" for index, layer in enumerate(layers)}
    optimizer_name = getattr(optimizer, "name", None)
    if optimizer_name:
        names[optimizer_name] = "#optimizer"
    # Round trip through JSON first, so the renaming sees plain strings everywhere.
    plain = json.loads(json.dumps(part, sort_keys=True, default=_stable_text))
    return _renamed(plain, names)


def _all_layers(model: Any) -> list[Any]:
    """The model and every layer inside it (input layers included), depth first."""
    flatten = getattr(model, "_flatten_layers", None)  # Keras' own walk; includes InputLayers
    if flatten is not None:
        try:
            return list(flatten(include_self=True, recursive=True))
        except TypeError:
            pass
    found: list[Any] = []
    seen: set[int] = set()

    def visit(layer: Any) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        found.append(layer)
        for inner in getattr(layer, "layers", None) or []:
            visit(inner)

    visit(model)
    return found


def _renamed(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {key: _renamed(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [_renamed(item, names) for item in value]
    if isinstance(value, str):
        return names.get(value, value)
    return value


def _custom_code(layers: list[Any]) -> dict[str, str]:
    """A hash of the source of each class not from Keras: editing ``call`` changes memory."""
    code = {}
    for cls in {type(layer) for layer in layers}:
        if cls.__module__.split(".")[0] in ("keras", "tf_keras", "tensorflow"):
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = ""  # defined interactively: the class name and config still count
        code[_qualified_name(cls)] = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return dict(sorted(code.items()))


def _dtype_policy(layer: Any) -> str | None:
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "name", None if policy is None else str(policy))


def _compile_config(model: Any) -> Any:
    get_config = getattr(model, "get_compile_config", None)
    if get_config is None:
        return None
    try:
        return get_config()
    except Exception:  # noqa: BLE001 - a custom loss without config; the class names remain
        return None


def _optimizer_config(optimizer: Any) -> Any:
    if optimizer is None:
        return None
    try:
        import keras

        return keras.optimizers.serialize(optimizer)
    except Exception:  # noqa: BLE001
        return _qualified_name(type(optimizer))


def _data_part(data: TrainingData) -> dict[str, Any] | None:
    if isinstance(data, ArrayData):
        return {
            "form": "arrays",
            "x": _array_specs(data.x),
            "y": _array_specs(data.y),
            "sample_weight": _array_specs(data.sample_weight),
        }
    if isinstance(data, DatasetData):
        part = {
            "form": "dataset",
            "element_spec": repr(data.dataset.element_spec),
            "num_samples": data.num_samples,
            "infinite": data.is_infinite,
        }
        if data.variable_shape:
            # The probe measures the largest element it finds; its shape decides the memory.
            part["largest_element"] = _array_specs(data._largest_element())
        return part
    return None  # a callable: its batches are unknown until it runs


def _array_specs(structure: Any) -> Any:
    if structure is None:
        return None
    if isinstance(structure, dict):
        return {str(key): _array_specs(value) for key, value in sorted(structure.items())}
    if isinstance(structure, (list, tuple)):
        return [_array_specs(item) for item in structure]
    return [list(_shape(structure)), str(getattr(structure, "dtype", type(structure).__name__))]


def _shape(value: Any) -> tuple:
    shape = getattr(value, "shape", ())
    return tuple(None if d is None else int(d) for d in shape)


def _machine_part(memory: MemoryBackend) -> dict[str, Any]:
    return {
        "keras_backend": _keras_backend(),
        "floatx": _floatx(),
        "global_dtype_policy": _global_dtype_policy(),
        "memory_backend": memory.name,
        "device": memory.device,
        "peak_source": memory.peak_source,
        "oom_is_catchable": memory.oom_is_catchable,
        "capacity": _device_capacity(memory),
        "environment": {name: os.environ.get(name) for name in _MEMORY_ENVIRONMENT},
        "versions": library_versions(),
    }


def _device_capacity(memory: MemoryBackend) -> Any:
    """What the device holds in all: stable from run to run, unlike the memory free now."""
    if memory.name == "host":
        import psutil

        from autobatch.memory.cgroup import read_cgroup_memory

        cgroup = read_cgroup_memory()
        return {
            "total_ram": int(psutil.virtual_memory().total),
            "cgroup_limit": None if cgroup is None else cgroup.limit_bytes,
        }
    if memory.name == "fake":
        # A fake device is its modelled curve: two fakes with one limit must not share entries.
        return {"limit_bytes": memory.limit_bytes(),
                "curve": [memory.peak_for(b) for b in (1, 2, 1024)]}  # type: ignore[attr-defined]
    if memory.name.endswith("-gpu"):
        from autobatch.memory.nvml import query_gpus

        report = query_gpus()
        if report.available:
            return [[gpu.name, gpu.total_bytes] for gpu in report.gpus]
    return {"limit_bytes": memory.limit_bytes(), "limit_source": memory.limit_source}


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()


def _floatx() -> str:
    import keras

    return keras.config.floatx()


def _global_dtype_policy() -> str:
    import keras

    return keras.config.dtype_policy().name


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _stable_text(value: Any) -> str:
    """JSON fallback that never includes a memory address (which would change every run)."""
    if hasattr(value, "get_config"):
        try:
            return json.dumps(value.get_config(), sort_keys=True, default=_qualified_type)
        except Exception:  # noqa: BLE001
            pass
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return _qualified_type(value)


def _qualified_type(value: Any) -> str:
    return _qualified_name(type(value))

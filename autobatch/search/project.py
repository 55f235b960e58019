"""Where a search keeps its trials, and the name that makes "same search" mean resume.

keras-tuner reloads a project directory that exists, and a reloaded project keeps its saved
space even when the new call declares other values (see ../shared/PITFALLS.md). So the
project's name is a digest of everything that defines the search: the space (which holds
the probed limit), the budget, the tuner, the data's shape and a sample of its values, and
the model's architecture and compile settings. The same call again resumes; a changed one
gets a new project. Model *weights* are left out on purpose: a process that crashed and
rebuilt the same model (new random weights) should resume its search.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from autobatch.data import ArrayData, TrainingData, _leaves

#: Bytes of each array hashed to tell data sets apart (the first rows; cheap at any size).
_SAMPLE_BYTES = 1 << 20


def default_directory() -> Path:
    """The per-user directory for searches, never the current directory:
    ``~/.cache/autobatch/tune``, under ``$XDG_CACHE_HOME`` or ``$AUTOBATCH_CACHE_DIR`` when set
    (the probe cache's root, see `autobatch.cache`)."""
    from autobatch.cache import cache_root

    return cache_root() / "tune"


def project_name(tuner: str, settings: dict[str, Any], model: Any, data: list[TrainingData]) -> str:
    """``"<tuner>-<model name>-<digest>"``: readable in a listing, unique per search."""
    identity = {
        "settings": settings,
        "model": model_identity(model),
        "data": [data_identity(part) for part in data],
    }
    text = json.dumps(identity, sort_keys=True, default=repr)
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in _model_name(model))[:40]
    return f"{tuner}-{name}-{digest}"


def _model_name(model: Any) -> str:
    return str(getattr(model, "name", None) or type(model).__name__)


def model_identity(model: Any) -> dict[str, Any]:
    """Architecture and compile settings, without layer names (they get numbered per process)
    and without weights."""
    import keras

    if not isinstance(model, keras.Model):  # a keras_tuner.HyperModel
        return {"hypermodel": f"{type(model).__module__}.{type(model).__qualname__}"}
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "layers": [_layer_identity(layer) for layer in model.layers],
        "weights": [(tuple(w.shape), str(w.dtype)) for w in model.weights],
        "optimizer": _without_names(keras.optimizers.serialize(model.optimizer)),
        "loss": repr(getattr(model, "loss", None)),
    }


def _layer_identity(layer: Any) -> Any:
    # Each layer's own config: the model's config would name the layers it connects.
    try:
        config = _without_names(layer.get_config())
    except Exception:  # noqa: BLE001 - custom layers need not implement get_config
        config = None
    return [type(layer).__name__, config]


def data_identity(data: TrainingData) -> dict[str, Any]:
    identity: dict[str, Any] = {"form": data.description, "num_samples": data.num_samples}
    if isinstance(data, ArrayData):
        digest = hashlib.blake2b(digest_size=8)
        for part in (data.x, data.y, data.sample_weight):
            if part is None:
                continue
            for leaf in _leaves(part):
                array = np.asarray(leaf)
                digest.update(f"{array.shape}{array.dtype}".encode())
                flat = array.reshape(-1)
                head = flat[: max(1, _SAMPLE_BYTES // max(1, array.itemsize))]
                digest.update(head.tobytes() if array.dtype != object else repr(head).encode())
        identity["sample"] = digest.hexdigest()
    return identity


def _without_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_names(v) for k, v in value.items() if k != "name"}
    if isinstance(value, list):
        return [_without_names(v) for v in value]
    return value

"""Where a search keeps its trials, and the name that makes "same search" mean resume.

keras-tuner reloads a project directory that exists, and a reloaded project keeps its saved
space even when the new call declares other values (see ../shared/PITFALLS.md). So the
project's name is a digest of everything that defines the search: the space (which holds
the probed limit), the budget, the tuner, the data's shape and a sample of its values, and
the model's architecture, compile settings and a sample of its weights (every candidate
starts from them). The same call again resumes; a changed one gets a new project. With
weights left out, a model trained since an earlier search got that search's result back at
once, trained from other weights; a process that crashed and rebuilds its model resumes
when the weights come out the same (a model file, or ``keras.utils.set_random_seed``
before building).

Next to keras-tuner's trials, `RunStore` keeps autobatch's shared training runs: each run's
outcomes (JSON) and, for a run a later round may continue, the model's and optimizer's
values at its last whole pass (``.npz``), so a search resumed after a crash also resumes
its candidates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from autobatch.data import ArrayData, TrainingData, _leaves
from autobatch.files import write_atomically
from autobatch.search.candidate import RunState

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
    """Architecture, compile settings and a sample of the weights' values, without layer
    names (they get numbered per process)."""
    import keras

    if not isinstance(model, keras.Model):  # a keras_tuner.HyperModel
        return {"hypermodel": f"{type(model).__module__}.{type(model).__qualname__}"}
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "layers": [_layer_identity(layer) for layer in model.layers],
        "weights": [(tuple(w.shape), str(w.dtype)) for w in model.weights],
        "values": _sample_digest(np.asarray(w.numpy()) for w in model.weights),
        "optimizer": _without_names(keras.optimizers.serialize(model.optimizer)),
        # Candidates start from the state of an optimizer that has stepped (see
        # BatchHyperModel); a built one that has not (a model loaded from a file) is fresh.
        "optimizer_state": _sample_digest(
            np.asarray(v.numpy()) for v in model.optimizer.variables
        ) if model.optimizer.built and int(model.optimizer.iterations.numpy()) > 0 else None,
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
        parts = (data.x, data.y, data.sample_weight)
        identity["sample"] = _sample_digest(
            np.asarray(leaf) for part in parts if part is not None for leaf in _leaves(part))
    return identity


def _sample_digest(arrays: Iterator[np.ndarray]) -> str:
    """A digest of each array's shape, dtype and first ``_SAMPLE_BYTES`` bytes."""
    digest = hashlib.blake2b(digest_size=8)
    for array in arrays:
        digest.update(f"{array.shape}{array.dtype}".encode())
        flat = array.reshape(-1)
        head = flat[: max(1, _SAMPLE_BYTES // max(1, array.itemsize))]
        digest.update(head.tobytes() if array.dtype != object else repr(head).encode())
    return digest.hexdigest()


def _without_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_names(v) for k, v in value.items() if k != "name"}
    if isinstance(value, list):
        return [_without_names(v) for v in value]
    return value


class RunStore:
    """A folder of shared runs: ``<name>.json`` (the outcomes, written last) and, while a
    later round may continue the run, ``<name>.npz`` (its `RunState`). Every file is
    written whole and then renamed, so a search killed mid-write leaves no half a file.

    Example:
        >>> store = RunStore(project_dir + "/autobatch_runs")
        >>> store.save_state("1f2e", state); store.save("1f2e", {"outcomes": ...})
        >>> store.load_state("1f2e").epoch
        12
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def load(self, name: str) -> dict[str, Any] | None:
        path = self.directory / f"{name}.json"
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def save(self, name: str, run: dict[str, Any]) -> None:
        self._write(f"{name}.json", lambda file: file.write(json.dumps(run).encode("utf-8")))

    def all(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every saved run as ``(name, run)``."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            yield path.stem, json.loads(path.read_text(encoding="utf-8"))

    def has_state(self, name: str) -> bool:
        return (self.directory / f"{name}.npz").exists()

    def save_state(self, name: str, state: RunState) -> None:
        counters = {k: v for k, v in dataclasses.asdict(state).items()
                    if k not in ("weights", "optimizer")}
        arrays = {f"weight_{i}": value for i, value in enumerate(state.weights)}
        arrays.update({f"optimizer_{i}": value for i, value in enumerate(state.optimizer)})
        arrays["counters"] = np.array(json.dumps(counters))
        self._write(f"{name}.npz", lambda file: np.savez(file, **arrays))

    def load_state(self, name: str) -> RunState | None:
        path = self.directory / f"{name}.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as saved:
            counters = json.loads(str(saved["counters"]))
            weights = [saved[f"weight_{i}"] for i in range(_count(saved.files, "weight_"))]
            optimizer = [saved[f"optimizer_{i}"]
                         for i in range(_count(saved.files, "optimizer_"))]
        return RunState(**counters, weights=weights, optimizer=optimizer)

    def remove_state(self, name: str) -> None:
        (self.directory / f"{name}.npz").unlink(missing_ok=True)

    def remove_states(self) -> None:
        """Drop every kept state (a finished search continues nothing)."""
        if self.directory.is_dir():
            for path in self.directory.glob("*.npz"):
                path.unlink(missing_ok=True)

    def _write(self, filename: str, write: Any) -> None:
        write_atomically(self.directory / filename, write, binary=True)


def _count(names: list[str], prefix: str) -> int:
    return sum(1 for name in names if name.startswith(prefix))

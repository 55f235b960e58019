"""Turning what the user passes as data into batches that `model.fit` accepts.

Three forms are accepted everywhere (probe, tune, CLI):

* ``(x, y)`` or ``(x, y, sample_weight)`` with NumPy arrays, or dicts/lists of arrays for
  multi-input models;
* an unbatched ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)`` elements;
* a callable ``batch_size -> batched dataset`` (a ``tf.data.Dataset`` or any iterable of
  batches) for pipelines we cannot re-batch ourselves.

Trials pass the data to ``model.fit`` in the same form the user will, so the memory Keras'
own input pipeline needs (for arrays it copies the whole inputs into a tensor) is part of
every measured peak.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from autobatch.errors import InvalidDataError

#: How many elements (or batches, for a callable) are scanned to find the largest one.
SCAN_LIMIT = 10_000
SCAN_BATCHES = 16


@dataclass
class FitInputs:
    """Arguments for one ``model.fit`` call: ``model.fit(**kwargs, steps_per_epoch=steps)``."""

    kwargs: dict[str, Any]
    steps: int


class TrainingData:
    """Base of the three data forms; see the module docstring."""

    #: Number of training samples, None when unknown (an infinite dataset, a callable).
    num_samples: int | None = None
    description: str = ""

    def probe_inputs(self, batch_size: int, steps: int) -> FitInputs:
        """Inputs for a probe trial: up to ``steps`` full batches, worst case first."""
        raise NotImplementedError

    def training_inputs(self, batch_size: int) -> dict[str, Any]:
        """Inputs for real training at ``batch_size``, endless so no epoch runs out of data."""
        raise NotImplementedError


def as_training_data(data: Any, *, name: str = "data") -> TrainingData:
    """Check ``data`` and wrap it in the matching `TrainingData`; raise `InvalidDataError`."""
    if isinstance(data, TrainingData):
        return data
    if _is_tf_dataset(data):
        return DatasetData(data, name=name)
    if isinstance(data, (tuple, list)):
        return ArrayData.from_tuple(data, name=name)
    if callable(data):
        return CallableData(data, name=name)
    raise InvalidDataError(
        f"{name} is a {type(data).__name__}. Expected (x, y) or (x, y, sample_weight) with "
        "NumPy arrays (dicts or lists of arrays for several inputs), an unbatched "
        "tf.data.Dataset, or a callable batch_size -> batched dataset. Example: "
        "autobatch.probe(model, (x_train, y_train))."
    )


def _is_tf_dataset(data: Any) -> bool:
    return any(cls.__name__ == "DatasetV2" for cls in type(data).__mro__)


def _leaves(structure: Any) -> list[Any]:
    if isinstance(structure, dict):
        return [leaf for key in sorted(structure) for leaf in _leaves(structure[key])]
    if isinstance(structure, (list, tuple)):
        return [leaf for item in structure for leaf in _leaves(item)]
    return [structure]


def _map_leaves(function: Callable[[Any], Any], structure: Any) -> Any:
    if isinstance(structure, dict):
        return {key: _map_leaves(function, value) for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(_map_leaves(function, item) for item in structure)
    return function(structure)


class ArrayData(TrainingData):
    """In-memory arrays: ``(x, y)`` or ``(x, y, sample_weight)``."""

    def __init__(self, x: Any, y: Any = None, sample_weight: Any = None, *, name: str = "data"):
        self.x, self.y, self.sample_weight = x, y, sample_weight
        lengths: dict[str, int] = {}
        for part, value in (("x", x), ("y", y), ("sample_weight", sample_weight)):
            if value is None:
                continue
            for index, leaf in enumerate(_leaves(value)):
                shape = getattr(leaf, "shape", None)
                if shape is None or len(shape) == 0:
                    raise InvalidDataError(
                        f"{name}: {part} holds a {type(leaf).__name__}, not an array with a "
                        "sample axis. Expected NumPy arrays (or tensors) whose first axis is "
                        "the sample. Convert it with np.asarray(...)."
                    )
                label = part if len(_leaves(value)) == 1 else f"{part}[{index}]"
                lengths[label] = int(shape[0])
        if "x" not in lengths and not any(k.startswith("x[") for k in lengths):
            raise InvalidDataError(f"{name}: x is None. Pass (x, y) with x holding the inputs.")
        if len(set(lengths.values())) > 1:
            described = ", ".join(f"{k} has {v}" for k, v in lengths.items())
            raise InvalidDataError(
                f"{name}: the arrays have different numbers of samples ({described}). "
                "Expected the same length along the first axis for x, y and sample_weight."
            )
        self.num_samples = next(iter(lengths.values()))
        if self.num_samples == 0:
            raise InvalidDataError(
                f"{name} is empty (0 samples). Pass at least one training sample."
            )
        self.description = f"arrays, {self.num_samples} samples"

    @classmethod
    def from_tuple(cls, data: tuple | list, *, name: str = "data") -> ArrayData:
        if len(data) not in (2, 3):
            raise InvalidDataError(
                f"{name} is a {type(data).__name__} of {len(data)} items. Expected (x, y) or "
                "(x, y, sample_weight). For a multi-input model pass x as a list or dict: "
                "((x1, x2), y) or ({'a': xa, 'b': xb}, y)."
            )
        return cls(*data, name=name)

    def _fit_kwargs(self) -> dict[str, Any]:
        kwargs = {"x": self.x, "y": self.y}
        if self.sample_weight is not None:
            kwargs["sample_weight"] = self.sample_weight
        return kwargs

    def probe_inputs(self, batch_size: int, steps: int) -> FitInputs:
        # The whole arrays go to fit, as in real training: Keras copies them into its input
        # pipeline, and that copy belongs in the measured peak.
        steps = max(1, min(steps, self.num_samples // batch_size))
        return FitInputs({**self._fit_kwargs(), "batch_size": batch_size}, steps)

    def training_inputs(self, batch_size: int) -> dict[str, Any]:
        return {**self._fit_kwargs(), "batch_size": batch_size}

    def take(self, indices: np.ndarray) -> ArrayData:
        """A copy holding only the samples at ``indices``."""
        parts = (self.x, self.y, self.sample_weight)
        taken = [None if p is None else _map_leaves(lambda a: np.asarray(a)[indices], p) for p in parts]
        return ArrayData(*taken)


class DatasetData(TrainingData):
    """An unbatched ``tf.data.Dataset``; variable-length elements are probed at their largest."""

    def __init__(self, dataset: Any, *, name: str = "data", num_samples: int | None = None):
        import tensorflow as tf

        self.dataset = dataset
        self.name = name
        cardinality = int(dataset.cardinality())
        self.is_infinite = cardinality == int(tf.data.INFINITE_CARDINALITY)
        if num_samples is not None:
            self.num_samples = int(num_samples)
        elif cardinality >= 0:
            self.num_samples = cardinality
        if self.num_samples == 0:
            raise InvalidDataError(f"{name} is an empty tf.data.Dataset (0 elements).")
        specs = _leaves(dataset.element_spec)
        self.variable_shape = any(
            spec.shape.rank is None or None in spec.shape.as_list() for spec in specs
        )
        self._largest: Any = None
        size = "infinite" if self.is_infinite else f"{self.num_samples} elements"
        self.description = f"tf.data.Dataset, {size}"

    def _largest_element(self) -> Any:
        """The element with the most values among the first SCAN_LIMIT (the worst case)."""
        if self._largest is None:
            import tensorflow as tf

            def size(*element):
                return tf.add_n([tf.size(t, out_type=tf.int64) for t in tf.nest.flatten(element)])

            sizes = np.fromiter(
                self.dataset.take(SCAN_LIMIT).map(size).as_numpy_iterator(), dtype=np.int64
            )
            if sizes.size == 0:
                raise InvalidDataError(f"{self.name} is an empty tf.data.Dataset (0 elements).")
            if self.num_samples is None and sizes.size < SCAN_LIMIT and not self.is_infinite:
                self.num_samples = int(sizes.size)
            index = int(np.argmax(sizes))
            self._largest = next(iter(self.dataset.skip(index).take(1)))
        return self._largest

    def probe_inputs(self, batch_size: int, steps: int) -> FitInputs:
        import tensorflow as tf

        if self.variable_shape:
            # Every batch repeats the largest element found: the worst case we can see.
            source = tf.data.Dataset.from_tensors(self._largest_element()).repeat()
        else:
            source = self.dataset.repeat()
        batches = source.batch(batch_size, drop_remainder=True).take(steps)
        return FitInputs({"x": batches}, steps)

    def training_inputs(self, batch_size: int) -> dict[str, Any]:
        dataset = self.dataset.repeat()
        if self.variable_shape:
            dataset = dataset.padded_batch(batch_size, drop_remainder=True)
        else:
            dataset = dataset.batch(batch_size, drop_remainder=True)
        return {"x": dataset.prefetch(2)}


class CallableData(TrainingData):
    """A factory ``batch_size -> batched dataset`` for pipelines we cannot re-batch."""

    def __init__(self, factory: Callable[[int], Any], *, name: str = "data"):
        self.factory = factory
        self.name = name
        self.description = f"callable {getattr(factory, '__name__', type(factory).__name__)}"

    def _batches(self, batch_size: int) -> Any:
        batches = self.factory(batch_size)
        if batches is None or not hasattr(batches, "__iter__"):
            raise InvalidDataError(
                f"{self.name}({batch_size}) returned {type(batches).__name__}. Expected a batched "
                "tf.data.Dataset or an iterable of (x, y) batches of that batch size."
            )
        return batches

    def probe_inputs(self, batch_size: int, steps: int) -> FitInputs:
        # The largest of the first few batches, repeated: the worst case we can see.
        scanned = list(itertools.islice(iter(self._batches(batch_size)), max(steps, SCAN_BATCHES)))
        if not scanned:
            raise InvalidDataError(f"{self.name}({batch_size}) yielded no batch.")
        largest = max(scanned, key=lambda b: sum(np.size(leaf) for leaf in _leaves(b)))
        del scanned

        return FitInputs({"x": _repeat_forever(largest)}, steps)

    def training_inputs(self, batch_size: int) -> dict[str, Any]:
        batches = self._batches(batch_size)
        if _is_tf_dataset(batches):
            return {"x": batches.repeat()}
        factory = self._batches

        def endless():
            while True:
                yield from factory(batch_size)

        return {"x": endless()}


def _repeat_forever(batch: Any) -> Any:
    """One batch, endlessly: a tf.data.Dataset when TF is there (fastest for fit), else a generator."""
    try:
        import tensorflow as tf
    except ImportError:  # JAX or torch without TF: Keras takes Python generators too.

        def generator():
            while True:
                yield batch

        return generator()
    return tf.data.Dataset.from_tensors(batch).repeat()

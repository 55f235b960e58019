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
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from autobatch._quiet import import_tensorflow_quietly
from autobatch.errors import InvalidDataError, kind_of

#: The share of the arrays that the probe validates on, as ``fit(validation_split=0.2)``.
VALIDATION_SPLIT = 0.2
#: How many elements (or batches, for a callable) are scanned to find the largest one.
SCAN_LIMIT = 10_000
SCAN_BATCHES = 16


@dataclass
class FitInputs:
    """Arguments for one ``model.fit`` call:
    ``model.fit(**kwargs, steps_per_epoch=steps, epochs=epochs)``; ``steps`` None is a whole
    pass over the inputs per epoch."""

    kwargs: dict[str, Any]
    steps: int | None
    epochs: int = 1
    #: Optimizer steps the call makes in all.
    total_steps: int = 0

    def __post_init__(self) -> None:
        if not self.total_steps:
            self.total_steps = (self.steps or 1) * self.epochs


class TrainingData:
    """Base of the three data forms; see the module docstring."""

    #: Number of training samples, None when unknown (an infinite dataset, a callable).
    num_samples: int | None = None
    description: str = ""

    def probe_inputs(self, batch_size: int, steps: int) -> FitInputs:
        """Inputs for a probe trial: up to ``steps`` full batches, worst case first."""
        raise NotImplementedError

    def for_trials(self) -> TrainingData:
        """The form to run many short fits on; the same data."""
        return self

    def verification_inputs(self, batch_size: int, max_steps: int) -> FitInputs:
        """Inputs for verifying a batch size as real training uses it: epochs of up to
        ``max_steps`` batches and a validation pass at the same batch size (``steps`` is
        per epoch)."""
        raise NotImplementedError

    def batch_shapes_load(self, batch_size: int) -> int:
        """The distinct batch sizes a trial at ``batch_size`` runs, summed over its training
        and its validation: on TF/CPU each shape keeps its own memory (kernels, buffers)
        while the process lives, so an LSTM trial at 600 samples (shapes 600 and 439, then
        409 to validate: 1448, under the 1639/409 split trials used then) peaked 287 MiB
        above one at 540 (540, 19, 409: 968) where its line predicted 70. Data of unknown
        size: the batch size."""
        return batch_size

    #: True when the inputs of `search_inputs` never run out (an infinite dataset, a callable).
    endless: bool = False

    def search_inputs(self, batch_size: int) -> dict[str, Any]:
        """Inputs for a search candidate at ``batch_size``, in the form the user's own
        ``model.fit(..., batch_size=...)`` gets them, so a candidate trains exactly as that
        call will (finite data is not repeated: Keras starts a new pass by itself)."""
        raise NotImplementedError

    def validation_inputs(self, batch_size: int) -> Any:
        """This data as ``validation_data`` for ``model.fit``; it must be finite."""
        raise NotImplementedError


def as_training_data(
    data: Any, *, name: str = "data", num_samples: int | None = None
) -> TrainingData:
    """Check ``data`` and wrap it in the matching `TrainingData`; raise `InvalidDataError`.

    ``num_samples`` states the samples in one pass where the data cannot tell (an infinite
    dataset, a callable); for arrays it must match their length.
    """
    if isinstance(data, TrainingData):
        return data
    if _is_tf_dataset(data):
        return DatasetData(data, name=name, num_samples=num_samples)
    if isinstance(data, (tuple, list)):
        arrays = ArrayData.from_tuple(data, name=name)
        if num_samples is not None and num_samples != arrays.num_samples:
            raise InvalidDataError(
                f"num_samples={num_samples} but {name} holds {arrays.num_samples} samples. "
                "Leave num_samples=None for arrays: their length is known."
            )
        return arrays
    if callable(data):
        return CallableData(data, name=name, num_samples=num_samples)
    raise InvalidDataError(
        f"{name} is {kind_of(data)}. Expected (x, y) or (x, y, sample_weight) with "
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

    num_samples: int  # always known for arrays

    def __init__(self, x: Any, y: Any = None, sample_weight: Any = None, *, name: str = "data"):
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.name = name
        lengths: dict[str, int] = {}
        for part, value in (("x", x), ("y", y), ("sample_weight", sample_weight)):
            if value is None:
                continue
            for index, leaf in enumerate(_leaves(value)):
                shape = getattr(leaf, "shape", None)
                if shape is None or len(shape) == 0:
                    raise InvalidDataError(
                        f"{name}: {part} holds {kind_of(leaf)}, not an array with a "
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
                f"{name} is {kind_of(data)} of {len(data)} items. Expected (x, y) or "
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
        # A trial trains as the verification and the user's fit(validation_split=0.2) do, cut
        # to ``steps`` full batches a pass: the training split's partial batch ends each pass,
        # then a validation pass at the same batch size, twice (the second pass reuses or
        # adds to what the first allocated). The partial batch's size matters on TF/CPU: an
        # LSTM at batch 515 peaked at 803 MiB with no partial batch, 835 with the 93 samples
        # that fit(validation_split=0.2) on 2048 samples ends with, and 1154 with the 503 of a
        # pass over all 2048; trials that ran the 503 stopped the probe at 512 where real
        # training fits 887 (benchmarks/README.md).
        inputs = self.verification_inputs(batch_size, steps)
        if batch_size <= _split_sizes(self.num_samples)[0]:
            return FitInputs(inputs.kwargs, None, epochs=2, total_steps=2 * inputs.total_steps)
        # A batch larger than the training split only exists in a fit without a validation
        # split: passes over all samples at this batch size, validated at it as fit does.
        kwargs = self._fit_kwargs()
        validation = tuple(_map_leaves(lambda a: a[:batch_size], v) for v in kwargs.values())
        full, remainder = divmod(self.num_samples, batch_size)
        return FitInputs(
            {**kwargs, "batch_size": batch_size, "validation_data": validation},
            None,
            epochs=2,
            total_steps=2 * (full + (remainder > 0)),
        )

    def batch_shapes_load(self, batch_size: int) -> int:
        num_train, num_validation = _split_sizes(self.num_samples)
        if batch_size > num_train:  # see probe_inputs: all samples, validated on one batch
            num_train, num_validation = self.num_samples, batch_size
        training = {batch_size, num_train % batch_size}  # a remainder of 0 adds nothing
        validation = {min(batch_size, num_validation), num_validation % batch_size}
        return sum(training) + sum(validation)

    def unfed_pipeline(self, inputs: FitInputs) -> Any:
        """Keras' input pipeline over as many samples as ``inputs`` (cut to a few steps)
        leave out, started and returned to be kept alive while a worker trains; None when
        nothing is left out (or on backends other than TensorFlow).

        ``fit`` copies the arrays it is given several times over (Keras converts them to
        tensors, tf.data holds them): 200 MiB of float32 cost 789 MiB above the baseline in
        a 2-step fit over all of them, 42 over the 192 samples those steps use. A cut trial
        in a new process would miss that on a large dataset; with this pipeline over the
        rest beside it, the cut fit peaked at 804 MiB.
        """
        fed = sum(
            len(_leaves(part)[0])
            for part in (inputs.kwargs["x"], *inputs.kwargs.get("validation_data", ())[:1])
        )
        # Above the training split a trial fits all samples and validates on the first
        # ``batch_size`` of them again: ``fed`` counts those twice, and nothing is missing.
        missing = max(0, self.num_samples - fed)
        import keras

        if not missing or keras.backend.backend() != "tensorflow":
            return None
        try:
            # Keras' own adapter, private: copying its conversions by hand would drift from
            # what fit does. A Keras that moves it loses only this correction.
            from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter
        except ImportError:
            return None
        left_out = {k: _map_leaves(lambda a: a[:missing], v) for k, v in self._fit_kwargs().items()}
        try:
            adapter = ArrayDataAdapter(**left_out, batch_size=inputs.kwargs["batch_size"], shuffle=True)
            pipeline = iter(adapter.get_tf_dataset())
            next(pipeline)
        except Exception:  # noqa: BLE001 - a correction only: an adapter that changed must not fail the trial
            return None
        return pipeline

    def verification_inputs(self, batch_size: int, max_steps: int) -> FitInputs:
        # As model.fit(x, y, batch_size=b, validation_split=0.2) runs: the last fifth
        # validates, each pass ends with its partial batch. The user's own arrays are passed
        # (not the trials' tensors), so fit copies them exactly as the user's fit will.
        num_train, num_validation = _split_sizes(self.num_samples)
        train = _partial_batch_preserving_size(num_train, batch_size, max_steps)
        validation = _partial_batch_preserving_size(
            num_validation, batch_size, max(1, max_steps // 4)
        )
        kwargs = {
            k: _map_leaves(lambda a: a[:train], v) for k, v in self._fit_kwargs().items()
        }
        if validation:
            start = num_train
            kwargs["validation_data"] = tuple(
                _map_leaves(lambda a: a[start : start + validation], v)
                for v in self._fit_kwargs().values()
            )
        full, remainder = divmod(train, batch_size)
        return FitInputs({**kwargs, "batch_size": batch_size}, None, total_steps=full + (remainder > 0))

    def for_trials(self) -> TrainingData:
        # On TensorFlow, fit copies NumPy inputs into a tensor at every call, as a real fit
        # does once. Over many trials those copies stacked up in the allocator: a CNN's
        # trial peaks read ~200 MiB (one data copy) above a fresh process's. Converted once
        # here, every trial measures the one copy that real training makes.
        import keras

        if keras.backend.backend() != "tensorflow":
            return self
        import tensorflow as tf

        parts = (self.x, self.y, self.sample_weight)
        return ArrayData(*[None if p is None else _map_leaves(tf.convert_to_tensor, p) for p in parts])

    def take(self, indices: np.ndarray) -> ArrayData:
        """A copy holding only the samples at ``indices``."""
        parts = (self.x, self.y, self.sample_weight)
        taken = [None if p is None else _map_leaves(lambda a: np.asarray(a)[indices], p) for p in parts]
        return ArrayData(*taken)

    def split(
        self, validation_fraction: float, *, seed: int | None = 0
    ) -> tuple[ArrayData, ArrayData]:
        """Copies ``(train, validation)`` of a seeded random split; the arrays are not changed.

        Unlike Keras' ``validation_split`` (the last fraction of the arrays, before shuffling),
        the split is random, so data sorted by class or by time is split fairly.

        Example:
            >>> train, validation = ArrayData(x, y).split(0.2, seed=0)
        """
        if self.num_samples < 2:
            raise InvalidDataError(
                f"data holds {self.num_samples} sample, too few to split off validation data. "
                "Pass more samples, or validation_data=(x_val, y_val)."
            )
        num_validation = round(self.num_samples * validation_fraction)
        num_validation = min(max(1, num_validation), self.num_samples - 1)
        order = np.random.default_rng(seed).permutation(self.num_samples)
        validation = np.sort(order[:num_validation])
        train = np.sort(order[num_validation:])
        return self.take(train), self.take(validation)

    def search_inputs(self, batch_size: int) -> dict[str, Any]:
        return {**self._fit_kwargs(), "batch_size": batch_size}

    def validation_inputs(self, batch_size: int) -> Any:
        """The arrays as a batched ``tf.data.Dataset`` (built once per batch size) when
        TensorFlow is there: given arrays, Keras rebuilds its input pipeline at every
        validation, about 30 ms each (measured on CPU), which dominates a search on small
        data that validates after every quarter pass. The loss is the same either way."""
        parts: tuple[Any, ...] = (self.x, self.y)
        if self.sample_weight is not None:
            parts = (self.x, self.y, self.sample_weight)
        try:
            tf = import_tensorflow_quietly()  # on JAX or torch, autobatch imports it here
        except ImportError:
            return parts
        cache = self.__dict__.setdefault("_validation_datasets", {})
        if batch_size not in cache:
            cache[batch_size] = tf.data.Dataset.from_tensor_slices(parts).batch(batch_size)
        return cache[batch_size]


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
        if self.num_samples is None and not self.is_infinite:
            self._largest_element()  # counts the elements, up to SCAN_LIMIT
        size = "infinite" if self.is_infinite else f"{self.num_samples or 'unknown'} elements"
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
        batches = source.batch(batch_size, drop_remainder=True)
        # A validation batch at the same size follows, as fit validates (see ArrayData).
        # shuffle=False: Keras ignores shuffle for a dataset, but warns when it is on.
        return FitInputs(
            {"x": batches.take(steps), "validation_data": batches.take(1), "shuffle": False}, steps
        )

    @property
    def endless(self) -> bool:  # type: ignore[override]
        return self.is_infinite

    def _batched(self, batch_size: int) -> Any:
        # As a user batches: the last partial batch kept. batch_size= is ignored by fit for
        # a dataset (see PITFALLS), so the batching happens here.
        if self.variable_shape:
            return self.dataset.padded_batch(batch_size)
        return self.dataset.batch(batch_size)

    def search_inputs(self, batch_size: int) -> dict[str, Any]:
        return {"x": self._batched(batch_size).prefetch(2)}

    def verification_inputs(self, batch_size: int, max_steps: int) -> FitInputs:
        # Repeated, with a step count per epoch: a finite dataset would otherwise run out
        # after the first epoch when steps are capped.
        steps = max_steps
        if self.num_samples is not None and not self.is_infinite:
            steps = min(max_steps, -(-self.num_samples // batch_size))
        kwargs: dict[str, Any] = {"x": self._batched(batch_size).repeat(), "shuffle": False}
        if not self.is_infinite:
            kwargs["validation_data"] = self._batched(batch_size).take(max(1, steps // 4))
        return FitInputs(kwargs, steps)

    def validation_inputs(self, batch_size: int) -> Any:
        if self.is_infinite:
            raise InvalidDataError(
                f"{self.name} is an infinite tf.data.Dataset: validation would never end. "
                f"Pass a finite dataset, e.g. {self.name}.take(number_of_samples)."
            )
        return self._batched(batch_size)

    def count_elements(self) -> int:
        """Count the elements with one pass (for a finite dataset of unknown cardinality)."""
        if self.num_samples is None:
            self.num_samples = int(self.dataset.reduce(np.int64(0), lambda count, *_: count + 1))
            self.description = f"tf.data.Dataset, {self.num_samples} elements"
        return self.num_samples


class CallableData(TrainingData):
    """A factory ``batch_size -> batched dataset`` for pipelines we cannot re-batch."""

    #: The callable's batches are repeated endlessly (see `search_inputs`).
    endless = True

    def __init__(
        self, factory: Callable[[int], Any], *, name: str = "data", num_samples: int | None = None
    ):
        self.factory = factory
        self.name = name
        self.num_samples = num_samples
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

        # A validation batch at the same size follows, as fit validates (see ArrayData).
        return FitInputs(
            {"x": _repeat_forever(largest), "validation_data": _replay([largest]), "shuffle": False},
            steps,
        )

    def search_inputs(self, batch_size: int) -> dict[str, Any]:
        batches = self._batches(batch_size)
        if _is_tf_dataset(batches):
            return {"x": batches.repeat()}
        factory = self._batches

        def endless():
            while True:
                yield from factory(batch_size)

        return {"x": endless()}

    def verification_inputs(self, batch_size: int, max_steps: int) -> FitInputs:
        steps = max_steps
        if self.num_samples:
            steps = min(max_steps, -(-self.num_samples // batch_size))
        # Validation on the callable's first batches: its dataset may be endless.
        validation = list(itertools.islice(iter(self._batches(batch_size)), max(1, steps // 4)))
        return FitInputs(
            {**self.search_inputs(batch_size), "validation_data": _replay(validation), "shuffle": False},
            steps,
        )

    def validation_inputs(self, batch_size: int) -> Any:
        batches = self._batches(batch_size)
        if _is_tf_dataset(batches):
            import tensorflow as tf

            if int(batches.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
                raise InvalidDataError(
                    f"{self.name}({batch_size}) returned an infinite dataset: validation would "
                    "never end. Return a finite dataset for validation_data."
                )
        return batches


def _split_sizes(num_samples: int) -> tuple[int, int]:
    """Training and validation samples of ``fit(validation_split=0.2)``, split as Keras
    splits them (``floor(n * 0.8)`` to train: 1638 and 410 of 2048, where ``n // 5`` gave
    409, so every trial's partial batches differed from real training's by a sample)."""
    num_train = int(math.floor(num_samples * (1.0 - VALIDATION_SPLIT)))
    if num_train in (0, num_samples):  # too few samples to split: Keras refuses; all train
        return num_samples, 0
    return num_train, num_samples - num_train


def _partial_batch_preserving_size(num_samples: int, batch_size: int, max_steps: int) -> int:
    """The samples of at most ``max_steps`` full batches plus the partial batch that ends a
    pass over ``num_samples`` (the batch real training ends every epoch with)."""
    full, remainder = divmod(num_samples, batch_size)
    return min(full, max_steps) * batch_size + remainder


def _replay(batches: list[Any]) -> Any:
    """A finite list of batches as validation data that ``fit`` can go over every epoch."""
    try:
        tf = import_tensorflow_quietly()  # on JAX or torch, autobatch imports it here
    except ImportError:
        return _ReplayedBatches(batches)
    dataset = tf.data.Dataset.from_tensors(batches[0])
    for batch in batches[1:]:
        dataset = dataset.concatenate(tf.data.Dataset.from_tensors(batch))
    return dataset


class _ReplayedBatches:
    """Re-iterable batches for backends without tf.data."""

    def __init__(self, batches: list[Any]) -> None:
        self._batches = batches

    def __iter__(self) -> Any:
        return iter(self._batches)


def _repeat_forever(batch: Any) -> Any:
    """One batch, endlessly: a tf.data.Dataset when TF is there (fastest for fit), else a generator."""
    try:
        tf = import_tensorflow_quietly()  # on JAX or torch, autobatch imports it here
    except ImportError:  # JAX or torch without TF: Keras takes Python generators too.

        def generator():
            while True:
                yield batch

        return generator()
    return tf.data.Dataset.from_tensors(batch).repeat()

"""Checking the data against the model's inputs before the first trial.

Data that does not fit the model (an input name the model lacks, features of the wrong width,
strings for a numeric input, a dataset that is already batched) would otherwise fail inside
the first training step, as pages of backend text. Here it fails at once, in one line.

Only what is certain is checked, in the rules Keras itself applies (a functional model takes
a dict with extra keys; a sample may have one trailing axis of size 1 more or less than the
input). A model whose inputs Keras cannot tell before it is called (a subclassed model, one
that overrides ``call`` or ``train_step``) is not checked, nor is a callable's data unless it
returns a ``tf.data.Dataset``: no check may ever reject data that trains.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from autobatch.data import ArrayData, CallableData, DatasetData, TrainingData
from autobatch.errors import InvalidDataError

Shape = tuple  # one sample's shape; None where a dimension is not fixed


@dataclass(frozen=True)
class _Input:
    """One input of the model: its name (how a dict of data finds it) and batch shape."""

    name: str
    shape: Shape
    dtype: str
    #: How messages call it: by name only when there are several (a lone input's name is
    #: often generated, such as 'keras_tensor_3').
    label: str


@dataclass(frozen=True)
class _Part:
    """What the data gives for one array: one sample's shape and whether it holds text."""

    shape: Shape | None  # None: the rank itself is unknown
    is_text: bool


def check_data_matches_model(model: Any, *datasets: TrainingData) -> None:
    """Raise `InvalidDataError` when some data certainly cannot train ``model``; else nothing.

    Example:
        >>> check_data_matches_model(model, as_training_data((x_train, y_train)))
    """
    inputs = _model_inputs(model)
    if inputs is None:
        return
    for data in datasets:
        _check(model, inputs, data)


def _check(model: Any, inputs: list[_Input], data: TrainingData) -> None:
    element = _element(data)
    if element is None:
        return
    x, y, batched = element
    name = getattr(data, "name", "data")
    paired = _pair(inputs, x, name)
    if paired is None:
        return
    for model_input, label, part in paired:
        _check_part(model, model_input, label, part, name, data, batched)
    _check_targets(model, y, name)


# --- the model's side ------------------------------------------------------------------


def _model_inputs(model: Any) -> list[_Input] | None:
    """The model's inputs in the order Keras pairs them with a list, or None when unknown."""
    import keras

    try:
        from keras.src.models.functional import Functional
    except ImportError:  # a Keras whose layout changed: check nothing rather than guess
        return None
    if not isinstance(model, keras.Model):
        return None
    # Only Keras' own call and train_step are known to take the data as the inputs say.
    model_type = type(model)
    if model_type.call not in (Functional.call, keras.Sequential.call):
        return None
    if model_type.train_step is not keras.Model.train_step:
        return None
    try:
        tensors = list(model.inputs)
    except (AttributeError, ValueError):  # a Sequential without keras.Input, not yet built
        return None
    structure = model.input if isinstance(model, Functional) else tensors
    if isinstance(structure, dict):
        # Keras pairs a dict-input model's tensors with the dict's sorted keys.
        names = sorted(structure)
        tensors = [structure[key] for key in names]
    elif isinstance(structure, (list, tuple)):
        names = [t.name for t in structure]
        tensors = list(structure)
    else:
        names, tensors = [getattr(structure, "name", "")], [structure]
    if not all(_is_keras_tensor(t) for t in tensors):
        return None  # nested input structures: not checked
    return [
        _Input(n, tuple(t.shape), str(t.dtype), f"input {n!r}" if len(names) > 1 else "input")
        for n, t in zip(names, tensors, strict=True)
    ]


def _is_keras_tensor(value: Any) -> bool:
    return type(value).__name__ == "KerasTensor"


# --- the data's side -------------------------------------------------------------------


def _element(data: TrainingData) -> tuple[Any, Any, bool] | None:
    """``(x, y, batched)``: x and y as structures of `_Part`; None when the data cannot tell
    without reading it."""
    if isinstance(data, ArrayData):
        return _map(_array_part, data.x), _map(_array_part, data.y), False
    if isinstance(data, DatasetData):
        return _from_spec(data.dataset.element_spec, batched=False)
    if isinstance(data, CallableData):
        # The probe's first trial asks for batch size 1 too; a dataset is only described
        # here, not read. Other iterables (generators) are left alone.
        try:
            batches = data.factory(1)
        except Exception:  # noqa: BLE001 - its own trial reports it, with the full context
            return None
        spec = getattr(batches, "element_spec", None)
        return None if spec is None else _from_spec(spec, batched=True)
    return None


def _from_spec(spec: Any, *, batched: bool) -> tuple[Any, Any, bool] | None:
    # As Keras unpacks a dataset element: (x,), (x, y), (x, y, sample_weight), or x alone.
    if isinstance(spec, (tuple, list)):
        if not 1 <= len(spec) <= 3:
            return None
        x, y = spec[0], spec[1] if len(spec) > 1 else None
    else:
        x, y = spec, None
    to_part = _batched_spec_part if batched else _spec_part
    return _map(to_part, x), _map(to_part, y), batched


def _map(function: Any, structure: Any) -> Any:
    if structure is None:
        return None
    if isinstance(structure, dict):
        return {key: _map(function, value) for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return [_map(function, item) for item in structure]
    return function(structure)


def _array_part(array: Any) -> _Part:
    shape = tuple(None if d is None else int(d) for d in array.shape[1:])
    dtype = getattr(array, "dtype", None)
    if not isinstance(dtype, np.dtype):  # a tensor
        return _Part(shape, getattr(dtype, "name", "") == "string")
    if dtype.kind == "O":
        # Text, or ragged rows (which Keras refuses, but not for the reason a shape would say).
        is_text = np.size(array) > 0 and isinstance(np.ravel(array)[0], (str, bytes))
        return _Part(shape if is_text else None, is_text)
    return _Part(shape, dtype.kind in ("U", "S"))


def _spec_part(spec: Any) -> _Part:
    shape = getattr(spec, "shape", None)
    dims = None if shape is None or shape.rank is None else tuple(shape.as_list())
    return _Part(dims, getattr(getattr(spec, "dtype", None), "name", "") == "string")


def _batched_spec_part(spec: Any) -> _Part:
    part = _spec_part(spec)
    if part.shape is None or not part.shape:
        return _Part(None, part.is_text)
    return _Part(part.shape[1:], part.is_text)


# --- pairing and comparing -------------------------------------------------------------


def _pair(inputs: list[_Input], x: Any, name: str) -> list[tuple[_Input, str, _Part]] | None:
    names = [i.name for i in inputs]
    if isinstance(x, dict):
        missing = [n for n in names if n not in x]
        if missing:
            raise InvalidDataError(
                f"{name}: the model's inputs are named {_listed(names)}, but x has no "
                f"{_listed(missing)} (its keys: {_listed(x)}). Key the dict by the model's "
                "input names (keras.Input(name=...)), e.g. {"
                + ", ".join(f"{n!r}: ..." for n in names) + "}."
            )
        pairs = [(i, f"x[{i.name!r}]", x[i.name]) for i in inputs]
    elif isinstance(x, list):
        if len(x) != len(inputs):
            raise InvalidDataError(
                f"{name}: the model has {len(inputs)} input(s) ({_listed(names)}), but x holds "
                f"{len(x)} arrays. Pass one array per input in that order, or a dict keyed by "
                "the input names."
            )
        pairs = [
            (i, f"x[{index}]", part) for index, (i, part) in enumerate(zip(inputs, x, strict=True))
        ]
    elif len(inputs) == 1:
        pairs = [(inputs[0], "x", x)]
    else:
        raise InvalidDataError(
            f"{name}: the model has {len(inputs)} inputs ({_listed(names)}), but x is one "
            "array. Pass a list with one array per input, or a dict keyed by the input names."
        )
    if not all(isinstance(part, _Part) for _, _, part in pairs):
        return None  # nested data structures: not checked
    return pairs


def _check_part(
    model: Any, model_input: _Input, label: str, part: _Part, name: str, data: TrainingData,
    batched: bool,
) -> None:
    import keras

    expected = model_input.shape[1:]
    if part.is_text and model_input.dtype != "string":
        raise InvalidDataError(
            f"{name}: the model's {model_input.label} expects {model_input.dtype} "
            f"numbers, but {label} holds strings. Turn the text into numbers first (e.g. "
            "keras.layers.StringLookup or TextVectorization in the data pipeline), or give the "
            "model a keras.Input(dtype='string') followed by such a layer."
        )
    if part.shape is None or _fits(part.shape, expected):
        return
    if isinstance(model, keras.Sequential) and not _first_layer_refuses(
        model, model_input, part.shape
    ):
        return
    if isinstance(data, DatasetData) and part.shape and _fits(part.shape[1:], expected):
        raise InvalidDataError(
            f"{name} is a batched tf.data.Dataset: its elements have shape {part.shape}, while "
            f"the model's {model_input.label} takes samples of shape {expected}. Pass it "
            "unbatched (autobatch batches it at each size it tries: drop .batch(...) or call "
            ".unbatch()), or a callable batch_size -> batched dataset."
        )
    given = f"samples of shape {part.shape}"
    if batched:
        given = f"batches of shape {(None, *part.shape)}"
    raise InvalidDataError(
        f"{name}: the model's {model_input.label} expects samples of shape {expected} "
        f"(batch shape {model_input.shape}), but {label} holds {given}. Give {label} that "
        f"shape per sample, or build the model with keras.Input(shape={part.shape})."
    )


def _fits(given: Shape, expected: Shape) -> bool:
    """True when Keras accepts samples of shape ``given`` for ``expected``: after
    `_adjusted`, unknown sizes match anything."""
    adjusted = _adjusted(given, expected)
    if adjusted is None:
        return False
    return all(g is None or e is None or g == e for g, e in zip(adjusted, expected, strict=True))


def _adjusted(given: Shape, expected: Shape) -> Shape | None:
    """``given`` as Keras reshapes it for ``expected`` (a trailing axis of size 1 squeezed
    or added), or None when it refuses the rank."""
    if len(given) == len(expected):
        return given
    if len(given) == len(expected) + 1 and given[-1] == 1:
        return given[:-1]
    if len(given) + 1 == len(expected) and expected[-1] == 1:
        return (*given, 1)
    return None


def _first_layer_refuses(model: Any, model_input: _Input, given: Shape) -> bool:
    """For a Sequential, which (unlike a functional model) holds its input's sizes to
    nothing but its layers' own checks: does its first layer refuse these samples?"""
    import keras

    try:
        from keras.src.layers.input_spec import assert_input_compatibility
    except ImportError:  # a Keras whose layout changed: refuse nothing rather than guess
        return False
    adjusted = _adjusted(given, model_input.shape[1:])
    if adjusted is None:
        return True  # the rank is refused before any layer runs
    first = model.layers[0] if model.layers else None
    if first is None or first.input_spec is None:
        return False
    batch = keras.KerasTensor((None, *adjusted), dtype=model_input.dtype)
    try:
        assert_input_compatibility(first.input_spec, batch, first.name)
    except ValueError:
        return True
    return False


#: Built-in losses that need a target as wide as the output (the sparse ones do not).
_SAME_WIDTH_LOSSES = {
    "mse", "mean_squared_error", "mae", "mean_absolute_error", "binary_crossentropy",
    "categorical_crossentropy", "huber", "log_cosh", "kl_divergence", "categorical_hinge",
}


def _check_targets(model: Any, y: Any, name: str) -> None:
    """Only the one certain case: one output, one target array, a loss from
    `_SAME_WIDTH_LOSSES`, and a target whose last axis is wider than 1 and differs."""
    import keras

    loss = getattr(model, "loss", None)
    loss_name: str | None
    if isinstance(loss, str):
        loss_name = loss
    elif _is_keras_loss(loss):
        loss_name = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    else:
        return  # the user's own loss may take any target
    if loss_name not in _SAME_WIDTH_LOSSES:
        return
    if type(model).compute_loss is not keras.Model.compute_loss:
        return
    outputs = getattr(model, "outputs", None)
    if not isinstance(y, _Part) or y.shape is None or not outputs or len(outputs) != 1:
        return
    expected = tuple(outputs[0].shape)[1:]
    if len(y.shape) != len(expected) or not expected:
        return
    width, wanted = y.shape[-1], expected[-1]
    if width is None or wanted is None or width == wanted or 1 in (width, wanted):
        return
    raise InvalidDataError(
        f"{name}: the model's output has shape {expected} per sample, but y holds targets of "
        f"shape {y.shape}, which {loss_name!r} cannot compare. Give y {wanted} columns (one "
        f"per output unit), or make the last layer {width} units wide."
    )


def _is_keras_loss(loss: Any) -> bool:
    """A loss function or object that Keras defines (not the user's own)."""
    defined_in = loss.__module__ if inspect.isfunction(loss) else type(loss).__module__
    return defined_in.startswith("keras.")


def _listed(names: Any) -> str:
    return ", ".join(repr(n) for n in names)

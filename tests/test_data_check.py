"""Data is checked against the model's inputs before the first trial, in one line, and valid
data is never rejected: every case here is also handed to Keras' own ``fit`` to confirm it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import autobatch
from autobatch.data import as_training_data
from autobatch.data_check import check_data_matches_model

N = 8


def sequential(loss="mse", outputs=3, **input_options):
    model = keras.Sequential(
        [keras.Input(**{"shape": (4,), **input_options}), keras.layers.Dense(outputs)]
    )
    model.compile("sgd", loss)
    return model


def two_inputs(as_dict=False):
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    output = keras.layers.Dense(3)(keras.layers.Concatenate()([a, b]))
    model = keras.Model({"a": a, "b": b} if as_dict else [a, b], output)
    model.compile("sgd", "mse")
    return model


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def subclassed():
    model = Subclassed()
    model.compile("sgd", "mse")
    return model


def x(width=4):
    return np.ones((N, width), "float32")


Y = np.ones((N, 3), "float32")


def dataset(features, targets=Y):
    return tf.data.Dataset.from_tensor_slices((features, targets))


def keras_fit(model, data):
    """Train one epoch as the user would: the ground truth of what is valid."""
    inputs = as_training_data(data).search_inputs(4)
    # steps_per_epoch: a callable's data never ends.
    model.fit(**inputs, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)


def unbuilt_sequential():
    model = keras.Sequential([keras.layers.Dense(3)])
    model.compile("sgd", "mse")
    return model


def any_width_sequential():
    """Declares 4 features, but no layer holds the data to it (a functional model would)."""
    summed = keras.layers.Lambda(lambda t: keras.ops.sum(t, axis=-1, keepdims=True))
    model = keras.Sequential([keras.Input((4,)), summed, keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def text_model():
    text = keras.Input((1,), dtype="string")
    vectorize = keras.layers.TextVectorization(max_tokens=10, output_mode="count")
    vectorize.adapt(["a b", "c"])
    model = keras.Model(text, keras.layers.Dense(3)(vectorize(text)))
    model.compile("sgd", "mse")
    return model


VALID = {
    "arrays": (sequential, lambda: (x(), Y)),
    "a trailing axis of 1 more": (sequential, lambda: (x()[..., None], Y)),
    "one axis less for an input of width 1": (
        lambda: sequential(shape=(1,)), lambda: (np.ones(N, "float32"), Y)
    ),
    "ints for a float input": (sequential, lambda: (np.ones((N, 4), "int64"), Y)),
    "a list": (two_inputs, lambda: ([x(), x(2)], Y)),
    "a dict with an extra key": (two_inputs, lambda: ({"a": x(), "b": x(2), "c": x(9)}, Y)),
    "a dict for a dict model": (lambda: two_inputs(True), lambda: ({"a": x(), "b": x(2)}, Y)),
    "a named dict for a Sequential": (
        lambda: sequential(name="features"), lambda: ({"features": x()}, Y)
    ),
    "an unbatched dataset": (sequential, lambda: dataset(x())),
    "a dataset of dicts": (lambda: two_inputs(True), lambda: dataset({"a": x(), "b": x(2)})),
    "sparse labels (n,)": (
        lambda: sequential("sparse_categorical_crossentropy"), lambda: (x(), np.zeros(N))
    ),
    "sparse labels (n, 1)": (
        lambda: sequential("sparse_categorical_crossentropy"), lambda: (x(), np.zeros((N, 1)))
    ),
    "targets of width 1 for mse": (sequential, lambda: (x(), np.ones((N, 1), "float32"))),
    "a callable": (sequential, lambda: lambda size: dataset(x()).batch(size)),
    "a subclassed model (not checked)": (subclassed, lambda: (x(5), Y)),
    "a Sequential without keras.Input (not checked)": (unbuilt_sequential, lambda: (x(5), Y)),
    "any width for a Sequential whose layers take any": (
        any_width_sequential, lambda: (x(5), np.ones((N, 1), "float32"))
    ),
    "text for a string input": (text_model, lambda: dataset(np.array([["a b"]] * N))),
}


@pytest.mark.parametrize("make_model,make_data", VALID.values(), ids=list(VALID))
def test_valid_data_passes_the_check(make_model, make_data):
    model = make_model()
    check_data_matches_model(model, as_training_data(make_data()))
    keras_fit(model, make_data())  # Keras agrees that it trains


INVALID = {
    "features of the wrong width": (
        sequential, lambda: (x(5), Y),
        r"^data: the model's input expects samples of shape \(4,\) \(batch shape "
        r"\(None, 4\)\), but x holds samples of shape \(5,\)\. Give x that shape",
    ),
    "features of the wrong width for a functional model": (
        two_inputs, lambda: ([x(), x(3)], Y),
        r"input 'b' expects samples of shape \(2,\).*x\[1\] holds samples of shape \(3,\)",
    ),
    "a rank too many": (
        sequential, lambda: (np.ones((N, 2, 4)), Y), r"x holds samples of shape \(2, 4\)"
    ),
    "strings for a float input": (
        sequential, lambda: (np.array([["a"] * 4] * N), Y),
        r"the model's input expects float32 numbers, but x holds strings\. Turn the text",
    ),
    "strings as objects": (
        sequential, lambda: (np.array([["a"] * 4] * N, dtype=object), Y), r"x holds strings",
    ),
    "a dict without an input's name": (
        two_inputs, lambda: ({"a": x(), "c": x(2)}, Y),
        r"inputs are named 'a', 'b', but x has no 'b' \(its keys: 'a', 'c'\)\. Key the dict",
    ),
    "a list of the wrong length": (
        two_inputs, lambda: ([x(), x(2), x(2)], Y),
        r"the model has 2 input\(s\) \('a', 'b'\), but x holds 3 arrays",
    ),
    "one array for two inputs": (two_inputs, lambda: (x(), Y), r"but x is one array"),
    "a swapped list": (
        two_inputs, lambda: ([x(2), x()], Y),
        r"input 'a' expects samples of shape \(4,\).*x\[0\] holds samples of shape \(2,\)",
    ),
    "a dataset of the wrong width": (
        sequential, lambda: dataset(x(5)), r"x holds samples of shape \(5,\)"
    ),
    "a batched dataset": (
        sequential, lambda: dataset(x()).batch(4),
        r"^data is a batched tf\.data\.Dataset: its elements have shape \(None, 4\).*Pass it "
        r"unbatched .*or a callable batch_size -> batched dataset\.$",
    ),
    "a dataset of strings": (
        sequential, lambda: dataset(np.array([["a"] * 4] * N)), r"x holds strings"
    ),
    "a callable of the wrong width": (
        sequential, lambda: lambda size: dataset(x(5)).batch(size),
        r"x holds batches of shape \(None, 5\)",
    ),
    "targets of the wrong width": (
        sequential, lambda: (x(), np.ones((N, 5), "float32")),
        r"output has shape \(3,\) per sample, but y holds targets of shape \(5,\)",
    ),
}


@pytest.mark.parametrize("make_model,make_data,match", INVALID.values(), ids=list(INVALID))
def test_data_that_cannot_train_is_explained_in_one_line(make_model, make_data, match):
    model = make_model()
    with pytest.raises(autobatch.InvalidDataError, match=match) as info:
        check_data_matches_model(model, as_training_data(make_data()))
    assert "\n" not in str(info.value)
    with pytest.raises(Exception):  # noqa: B017 - Keras' own error, whichever it is
        keras_fit(model, make_data())


def test_probe_checks_before_the_first_trial():
    model = sequential()
    with pytest.raises(autobatch.InvalidDataError, match=r"x holds samples of shape \(5,\)"):
        autobatch.probe(model, (x(5), Y), memory=autobatch.FakeMemory(10**9), verbose=0)
    with pytest.raises(autobatch.InvalidDataError, match="batched tf.data.Dataset"):
        autobatch.probe(model, dataset(x()).batch(2), memory=autobatch.FakeMemory(10**9), verbose=0)
    assert model.optimizer.iterations.numpy() == 0  # no step ran


def test_tune_checks_the_training_and_the_validation_data(tmp_path):
    model = sequential()
    options = dict(memory=autobatch.FakeMemory(10**9), directory=tmp_path, verbose=0)
    with pytest.raises(autobatch.InvalidDataError, match=r"^data: .*x holds samples of shape"):
        autobatch.tune(model, (x(5), Y), **options)
    with pytest.raises(autobatch.InvalidDataError, match=r"^validation_data: .*\(5,\)"):
        autobatch.tune(model, (x(), Y), validation_data=(x(5), Y), **options)

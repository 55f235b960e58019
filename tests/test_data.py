"""Data forms and their errors: what was passed, what was expected, how to fix it."""

import numpy as np
import pytest

import autobatch
from autobatch.data import ArrayData, CallableData, DatasetData, as_training_data


def test_arrays_dicts_and_lists_are_accepted():
    x = np.zeros((10, 3), "float32")
    assert as_training_data((x, np.zeros(10))).num_samples == 10
    assert as_training_data(({"a": x, "b": x}, np.zeros(10), np.ones(10))).num_samples == 10
    assert as_training_data(([x, x], np.zeros(10))).num_samples == 10


def test_mismatched_lengths_name_each_array(mlp):
    with pytest.raises(autobatch.InvalidDataError, match=r"different numbers of samples \(x has 10, y has 7\)"):
        autobatch.probe(mlp, (np.zeros((10, 8)), np.zeros(7)), verbose=0)
    with pytest.raises(autobatch.InvalidDataError, match=r"x\[1\] has 9"):
        as_training_data(([np.zeros((10, 2)), np.zeros((9, 2))], np.zeros(10)))


def test_empty_data_is_rejected(mlp):
    with pytest.raises(autobatch.InvalidDataError, match=r"empty \(0 samples\).*at least one"):
        autobatch.probe(mlp, (np.zeros((0, 8)), np.zeros(0)), verbose=0)


def test_empty_dataset_is_rejected():
    import tensorflow as tf

    with pytest.raises(autobatch.InvalidDataError, match="empty tf.data.Dataset"):
        as_training_data(tf.data.Dataset.from_tensor_slices((np.zeros((0, 2)), np.zeros(0))))


@pytest.mark.parametrize(
    "data,match",
    [
        ("train.csv", r"data is a str\. Expected \(x, y\)"),
        ((np.zeros(3),), r"tuple of 1 items\. Expected \(x, y\) or \(x, y, sample_weight\)"),
        ((5, np.zeros(3)), r"x holds a int, not an array.*np\.asarray"),
        ((None, np.zeros(3)), r"x is None"),
    ],
)
def test_wrong_forms_say_what_is_expected(data, match):
    with pytest.raises(autobatch.InvalidDataError, match=match):
        as_training_data(data)


def test_the_three_forms_are_recognised():
    import tensorflow as tf

    x = np.zeros((10, 3), "float32")
    assert isinstance(as_training_data((x, x)), ArrayData)
    assert isinstance(as_training_data(tf.data.Dataset.from_tensor_slices((x, x))), DatasetData)
    assert isinstance(as_training_data(lambda b: tf.data.Dataset.from_tensor_slices((x, x)).batch(b)), CallableData)


@pytest.mark.parametrize(
    "batch_size, steps, samples, total_steps",
    [
        (40, 3, 100, 6),  # 2 full batches and the 20 left over, twice: the whole arrays
        (100, 3, 100, 2),  # one batch is all the data: nothing left over
        (10, 3, 30, 6),  # 3 full batches of a pass; 100 % 10 leaves nothing over
        (30, 2, 70, 6),  # 2 full batches, then the 10 that real training ends a pass with
    ],
)
def test_probe_inputs_are_two_passes_ending_with_the_real_partial_batch(
    batch_size, steps, samples, total_steps
):
    data = ArrayData(np.zeros((100, 3)), np.zeros(100))
    inputs = data.probe_inputs(batch_size=batch_size, steps=steps)
    assert inputs.kwargs["batch_size"] == batch_size
    assert len(inputs.kwargs["x"]) == len(inputs.kwargs["y"]) == samples
    assert inputs.epochs == 2 and inputs.steps is None
    assert inputs.total_steps == total_steps


def test_a_callable_that_returns_nothing_useful_is_explained():
    data = CallableData(lambda batch_size: None)
    with pytest.raises(autobatch.InvalidDataError, match=r"returned NoneType\. Expected a batched"):
        data.probe_inputs(8, 2)


def test_the_users_arrays_are_not_modified(mlp):
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.ones((64, 1), "float32")
    x_before, y_before = x.copy(), y.copy()
    autobatch.probe(mlp, (x, y), memory=autobatch.FakeMemory(10**6, 100, 10), verbose=0)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)

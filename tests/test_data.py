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
        ((5, np.zeros(3)), r"x holds an int, not an array.*np\.asarray"),
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
    "batch_size, steps, samples, validation, total_steps",
    [
        # As fit(validation_split=0.2) on 100 samples: 80 train, the last 20 validate.
        (40, 3, 80, 20, 4),  # 2 full batches a pass, nothing left over, twice
        (30, 2, 80, 20, 6),  # 2 full batches, then the 20 that real training ends a pass with
        (10, 3, 30, 10, 6),  # 3 of the 8 full batches a pass (and 1 to validate): steps cut, not shapes
        (35, 1, 45, 20, 4),  # 1 of 2 full batches, and the partial batch of 10 kept
        # Larger than the training split: only a fit without validation has such a batch,
        # and it runs over all 100 samples; validation at that batch size.
        (90, 3, 100, 90, 4),
        (100, 3, 100, 100, 2),
    ],
)
def test_probe_inputs_are_two_passes_as_fit_with_a_validation_split_runs_them(
    batch_size, steps, samples, validation, total_steps
):
    data = ArrayData(np.arange(100).reshape(100, 1), np.arange(100))
    inputs = data.probe_inputs(batch_size=batch_size, steps=steps)
    assert inputs.kwargs["batch_size"] == batch_size
    assert len(inputs.kwargs["x"]) == len(inputs.kwargs["y"]) == samples
    validation_x, validation_y = inputs.kwargs["validation_data"]
    assert len(validation_x) == len(validation_y) == validation
    if samples < 100 or validation < 90:
        # Training never sees the validation samples, as with validation_split.
        assert inputs.kwargs["x"].max() < validation_x.min()
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


def test_the_batch_shapes_of_a_trial_are_those_fit_with_validation_split_runs():
    data = ArrayData(np.zeros((2048, 3)), np.zeros(2048))
    # Keras splits 1638 to train, 410 to validate: 600 leaves a partial batch of 438 in
    # training, and validation runs one batch of 410; 546 divides 1638.
    assert data.batch_shapes_load(600) == 600 + 438 + 410
    assert data.batch_shapes_load(546) == 546 + 410
    assert data.batch_shapes_load(1) == 1 + 1  # no partial batch anywhere
    assert data.batch_shapes_load(100) == 100 + 38 + 100 + 10
    # Above the training split the probe runs passes over all samples, validated at the batch.
    assert data.batch_shapes_load(1700) == 1700 + 348 + 1700
    fits = data.probe_inputs(600, steps=3)
    assert fits.kwargs["batch_size"] == 600
    assert len(fits.kwargs["x"]) % 600 == 438
    assert len(fits.kwargs["validation_data"][0]) == 410


@pytest.mark.skipif(__import__("keras").backend.backend() != "tensorflow",
                    reason="the pipeline is Keras' TensorFlow input pipeline")
def test_a_workers_cut_trial_also_holds_the_pipeline_fit_builds_over_the_rest():
    # fit copies the arrays it gets whole; a trial cut to a few steps gets a fraction of
    # them, so a worker keeps Keras' pipeline over the samples left out while it trains.
    data = ArrayData(np.arange(3000, dtype="float32").reshape(1000, 3), np.zeros(1000))
    inputs = data.probe_inputs(10, steps=3)
    fed = len(inputs.kwargs["x"]) + len(inputs.kwargs["validation_data"][0])
    pipeline = data.unfed_pipeline(inputs)
    x, y = next(pipeline)[:2]
    assert x.shape == (10, 3) and y.shape == (10,)
    assert 0 < fed < 1000
    # One batch taken to start it, one above: the pipeline holds exactly the rest.
    assert 20 + sum(len(batch[0]) for batch in pipeline) == 1000 - fed
    # All of it fed (a batch as large as the training split): nothing to hold.
    assert data.unfed_pipeline(data.probe_inputs(800, steps=3)) is None

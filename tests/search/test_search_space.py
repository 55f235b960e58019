"""The search space and the equal budget: pure Python, plus one check against Keras itself."""

from __future__ import annotations

import itertools

import keras_tuner
import numpy as np
import pytest

from autobatch.errors import InvalidArgumentError
from autobatch.search.space import (
    Budget,
    build_space,
    default_batch_sizes,
    epoch_sizes,
    epochs_for_samples,
)
from autobatch.search.tuner import hyperband_epochs_for, hyperband_random_trials


def test_default_batch_sizes_are_powers_of_two_up_to_the_probed_maximum():
    assert default_batch_sizes(1437, 1437) == [16, 32, 64, 128, 256, 512, 1024, 1437]
    assert default_batch_sizes(512, 100_000) == [16, 32, 64, 128, 256, 512]


def test_tiny_data_starts_below_16_so_a_pass_still_has_several_steps():
    assert default_batch_sizes(100, 100) == [8, 16, 32, 64, 100]
    assert default_batch_sizes(10, 10) == [1, 2, 4, 8, 10]


def test_epoch_sizes_cut_the_epoch_that_reaches_the_end_of_the_data():
    assert list(itertools.islice(epoch_sizes(100, 16, 3, endless=False), 6)) == [
        48, 48, 4, 48, 48, 4,
    ]
    assert list(itertools.islice(epoch_sizes(100, 16, 3, endless=True), 3)) == [48, 48, 48]


def test_epoch_sizes_match_what_keras_fit_runs():
    import keras

    x = np.zeros((100, 1), "float32")
    steps_seen: list[int] = []

    class CountSteps(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps_seen.append(0)

        def on_train_batch_end(self, batch, logs=None):
            steps_seen[-1] += 1

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.warns(UserWarning, match="ran out of data"):
        model.fit(x, x, batch_size=16, steps_per_epoch=3, epochs=6, verbose=0,
                  callbacks=[CountSteps()])
    expected = [16 * 3, 16 * 3, 4, 16 * 3, 16 * 3, 4]
    assert [steps * 16 for steps in steps_seen][:2] == expected[:2]
    # 7 batches per pass (6 full, one of 4): epochs of 3, 3, 1 steps, then a new pass.
    assert steps_seen == [3, 3, 1, 3, 3, 1]
    assert list(itertools.islice(epoch_sizes(100, 16, 3, endless=False), 6)) == expected


def test_every_fraction_of_a_pass_gets_the_same_samples_over_whole_passes():
    space = build_space(num_samples=1000, max_batch_size=1000, endless=False,
                        batch_sizes=None, steps_per_epoch=None)
    budget = Budget(samples=5000, seconds=None, patience_passes=2)
    for batch_size in space.batch_sizes:
        for fraction in space.epoch_fractions:
            values = {"batch_size": batch_size, "epoch_fraction": fraction}
            candidate = budget.candidate(space, values)
            steps = candidate.steps_per_epoch
            assert epochs_for_samples(space.epoch_sizes(batch_size, steps), 5000)[1] == 5000
            assert candidate.max_epochs == 5 * space.epochs_per_pass(batch_size, steps)


def test_a_hyperband_epoch_is_a_share_of_the_sample_budget():
    space = build_space(num_samples=1000, max_batch_size=1000, endless=False,
                        batch_sizes=[100], steps_per_epoch=[0.5])
    budget = Budget(samples=9000, seconds=None, patience_passes=1, hyperband_epochs=9)
    first_round = budget.candidate(space, {"batch_size": 100, "epoch_fraction": 0.5,
                                           "tuner/epochs": 1})
    last_round = budget.candidate(space, {"batch_size": 100, "epoch_fraction": 0.5,
                                          "tuner/epochs": 9})
    assert (first_round.budget_samples, first_round.max_epochs) == (1000, 2)
    assert (last_round.budget_samples, last_round.max_epochs) == (9000, 18)
    assert first_round.patience_epochs == 2  # one pass of half-pass epochs


def test_user_lists_above_the_probed_maximum_are_dropped_and_steps_clamped_to_a_pass():
    space = build_space(num_samples=100, max_batch_size=50, endless=False,
                        batch_sizes=[10, 50, 80], steps_per_epoch=[5, 100])
    assert space.batch_sizes == (10, 50)
    assert space.steps_per_epoch_for(50, {"steps_per_epoch": 100}) == 2
    endless = build_space(num_samples=100, max_batch_size=50, endless=True,
                          batch_sizes=[50], steps_per_epoch=[100])
    assert endless.steps_per_epoch_for(50, {"steps_per_epoch": 100}) == 100


@pytest.mark.parametrize(
    ("batch_sizes", "steps", "match"),
    [
        ([80, 90], None, r"batch_sizes=\[80, 90\]: every one is above the largest batch "
                         r"that fits, 50 \(from the probe\)"),
        ([0, 16], None, r"batch_sizes=\[0, 16\]; expected a non-empty list of positive"),
        (None, [0.5, 2], r"steps_per_epoch=\[0.5, 2\] mixes in fractions"),
        (None, [], r"steps_per_epoch=\[\]; expected a non-empty list"),
        # Its example is of steps, not of batch sizes (it said "e.g. [32, 64, 128]").
        (None, [-1], r"steps_per_epoch=\[-1\]; .*positive integers: step counts such as "
                     r"\[50, 100, 200\], or fractions of a pass such as \[0.25, 0.5, 1.0\]"),
    ],
)
def test_bad_lists_say_what_was_expected(batch_sizes, steps, match):
    with pytest.raises(InvalidArgumentError, match=match):
        build_space(num_samples=100, max_batch_size=50, endless=False,
                    batch_sizes=batch_sizes, steps_per_epoch=steps)


def test_batch_sizes_above_the_data_are_refused_as_such_not_as_too_large_for_memory():
    # The probe's answer is capped at the training samples: that is what the sizes exceed.
    with pytest.raises(InvalidArgumentError, match=r"every one is above the 100 training samples"):
        build_space(num_samples=100, max_batch_size=100, endless=False, batch_sizes=[120],
                    steps_per_epoch=None)


def test_the_space_is_declared_before_the_search_smallest_values_first():
    space = build_space(num_samples=1000, max_batch_size=100, endless=False,
                        batch_sizes=[32, 100], steps_per_epoch=None)
    hp = keras_tuner.HyperParameters()
    space.declare(hp)
    assert {p.name: list(p.values) for p in hp.space} == {
        "batch_size": [32, 100], "epoch_fraction": [0.25, 0.5, 1.0],
    }
    assert hp.get("batch_size") == 32


def test_hyperband_is_sized_so_its_random_draws_fit_in_the_space():
    assert hyperband_random_trials(9) == 17
    assert hyperband_epochs_for(24) == 9
    assert hyperband_epochs_for(10) == 3
    assert hyperband_epochs_for(60) == 27

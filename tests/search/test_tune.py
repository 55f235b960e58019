"""`autobatch.tune` end to end on CPU, with a one-layer model and FakeMemory."""

from __future__ import annotations

import json

import keras
import keras_tuner
import numpy as np
import pytest

import autobatch
from autobatch import AllTrialsFailedError, FakeMemory, InvalidArgumentError, InvalidDataError

NUM_SAMPLES = 160  # 128 train + 32 validation after the default split


def regression_data(num_samples: int = NUM_SAMPLES):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_samples, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], "float32")
         + 0.1 * rng.normal(size=(num_samples, 1))).astype("float32")
    return x, y


class NanAboveBatch(keras.layers.Layer):
    """Training loss becomes NaN for batches larger than ``limit``; inference is untouched."""

    def __init__(self, limit: int, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def call(self, inputs, training=False):
        if not training:
            return inputs
        too_big = keras.ops.shape(inputs)[0] > self.limit
        return inputs + keras.ops.where(too_big, float("nan"), 0.0)


def make_model(nan_above: int | None = None) -> keras.Model:
    keras.utils.set_random_seed(0)
    layers = [keras.Input((4,)), keras.layers.Dense(1)]
    if nan_above is not None:
        layers.append(NanAboveBatch(nan_above))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", metrics=["mae"])
    return model


def model_state(model: keras.Model) -> dict:
    return {
        "weights": [w.numpy().copy() for w in model.weights],
        "optimizer": model.optimizer,
        "optimizer_config": model.optimizer.get_config(),
        "optimizer_built": model.optimizer.built,
        "optimizer_values": [v.numpy().copy() for v in model.optimizer.variables],
        "loss": model.loss,
        "metrics": [m.name for m in model.metrics],
    }


def assert_untouched(model: keras.Model, before: dict) -> None:
    after = model_state(model)
    assert all(np.array_equal(a, b) for a, b in zip(before["weights"], after["weights"], strict=True))
    assert after["optimizer"] is before["optimizer"]
    assert after["optimizer_config"] == before["optimizer_config"]
    assert after["optimizer_built"] == before["optimizer_built"]
    assert all(np.array_equal(a, b)
               for a, b in zip(before["optimizer_values"], after["optimizer_values"], strict=True))
    assert (after["loss"], after["metrics"]) == (before["loss"], before["metrics"])


def small_search(tmp_path, **overrides):
    """A grid of 3 batch sizes x 2 steps_per_epoch, 3 passes each: a few seconds."""
    options = dict(
        tuner="grid", batch_sizes=[16, 32, 64], steps_per_epoch=[0.5, 1.0],
        budget_samples=3 * 128, memory=FakeMemory(2**40), directory=tmp_path, verbose=0,
    )
    options.update(overrides)
    return options


def test_the_result_is_the_best_candidate_and_the_model_is_untouched(tmp_path, capsys):
    x, y = regression_data()
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)  # a built optimizer with state must survive too
    before = model_state(model)

    result = autobatch.tune(model, (x, y), **small_search(tmp_path))

    assert_untouched(model, before)
    assert capsys.readouterr() == ("", "")  # verbose=0: keras-tuner's printing silenced
    assert len(result.trials) == 6
    best = result.ranked_trials()[0]
    assert result.val_loss == best.val_loss == min(t.val_loss for t in result.trials)
    assert result.fit_kwargs() == {
        "batch_size": best.batch_size, "steps_per_epoch": best.steps_per_epoch,
        "epochs": best.best_epoch,
    }
    assert best.val_loss == min(best.val_loss_history)
    assert best.val_loss_history[result.epochs - 1] == result.val_loss
    assert result.probe is not None and result.probe.max_batch_size == 128
    assert {(t.batch_size, t.steps_per_epoch) for t in result.trials} == {
        (16, 4), (16, 8), (32, 2), (32, 4), (64, 1), (64, 2),
    }
    # The equal budget: every candidate that ran to its end saw the same samples.
    assert {t.samples_seen for t in result.trials if t.status == "completed"} == {3 * 128}
    assert autobatch.TuneResult.from_json(result.to_json()) == result


def test_progress_is_visible_at_verbose_1(tmp_path, capsys, probed):
    x, y = regression_data()
    autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path, probe=probed, batch_sizes=[32], steps_per_epoch=[1.0], verbose=1))
    err = capsys.readouterr().err
    assert "candidate   1: batch     32" in err
    assert "Train with batch_size=32" in err


def test_out_of_memory_candidates_are_skipped_and_the_search_goes_on(tmp_path, probed):
    x, y = regression_data()
    model = make_model()
    before = model_state(model)
    # The probe claims 128 fits, but the search's memory runs out above 16: the grid goes
    # along batch sizes, so each steps_per_epoch ends with three failures in a row, which
    # must not abort the search (keras-tuner's default limit is 3).
    memory = FakeMemory(limit_bytes=20, bytes_per_sample=1)

    result = autobatch.tune(model, (x, y), **small_search(
        tmp_path, probe=probed, memory=memory, batch_sizes=[16, 32, 64, 128]))

    assert_untouched(model, before)
    failed = [t for t in result.trials if t.status == "failed"]
    assert {t.batch_size for t in failed} == {32, 64, 128}
    assert all(t.error == "out of memory" and t.val_loss is None for t in failed)
    assert result.batch_size == 16
    assert memory.trial_batch_sizes == [16, 32, 64, 128]  # one run per batch size


def test_a_nan_loss_fails_only_that_candidate(tmp_path, probed):
    x, y = regression_data()
    model = make_model(nan_above=32)
    before = model_state(model)

    result = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed))

    assert_untouched(model, before)
    failed = {t.batch_size: t.error for t in result.trials if t.status == "failed"}
    assert set(failed) == {64}
    assert all("loss is nan in epoch 1" in error for error in failed.values())
    assert result.batch_size in (16, 32) and np.isfinite(result.val_loss)


def test_when_every_candidate_fails_the_error_says_why(tmp_path, probed):
    x, y = regression_data()
    model = make_model(nan_above=0)
    before = model_state(model)

    with pytest.raises(AllTrialsFailedError, match=r"All 6 candidates failed; 6 had a non-finite"):
        autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed))

    assert_untouched(model, before)


class InterruptingMemory(FakeMemory):
    """Ctrl-C at the start of the candidate after ``trials`` candidates."""

    def __init__(self, trials: int):
        super().__init__(limit_bytes=2**40)
        self.trials_left = trials

    def before_trial(self, batch_size: int) -> None:
        if self.trials_left == 0:
            raise KeyboardInterrupt
        self.trials_left -= 1
        super().before_trial(batch_size)


def test_an_interrupted_search_resumes_where_it_stopped(tmp_path, probed):
    x, y = regression_data()
    model = make_model()
    before = model_state(model)

    with pytest.raises(KeyboardInterrupt):
        autobatch.tune(model, (x, y), **small_search(
            tmp_path, probe=probed, memory=InterruptingMemory(trials=2)))
    assert_untouched(model, before)

    memory = FakeMemory(2**40)
    result = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed, memory=memory))
    # One run per batch size: the runs of batch 16 and 32 (finished before the interrupt)
    # are not trained again, only the interrupted one of batch 64.
    assert memory.trial_batch_sizes == [64]
    assert len(result.trials) == 6

    again = FakeMemory(2**40)
    autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed, memory=again))
    assert again.trial_batch_sizes == []  # finished: the answer comes from the saved trials

    fresh = FakeMemory(2**40)
    autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed, memory=fresh,
                                                 overwrite=True))
    assert fresh.trial_batch_sizes == [16, 32, 64]
    assert_untouched(model, before)


def test_a_model_trained_since_gets_a_new_search_and_the_same_weights_resume(tmp_path, probed):
    # A new user tuned a model, trained it, tuned it again: the second call returned the
    # first search's result at once (val_loss equal to every digit), trained from the
    # weights the model had before.
    x, y = regression_data()
    model = make_model()
    first = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed))

    rebuilt = make_model()  # the same seed, so the same weights: the search resumes
    rebuilt.name = model.name  # (a process that rebuilds it numbers it anew: sequential_1)
    again = FakeMemory(2**40)
    resumed = autobatch.tune(rebuilt, (x, y), **small_search(tmp_path, probe=probed, memory=again))
    assert again.trial_batch_sizes == [] and resumed.directory == first.directory

    model.fit(x, y, epochs=1, verbose=0)
    trained = FakeMemory(2**40)
    second = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed, memory=trained))
    assert trained.trial_batch_sizes == [16, 32, 64]
    assert second.directory != first.directory and second.val_loss != first.val_loss


def test_a_trained_models_next_fit_at_fit_kwargs_repeats_the_winners_run(tmp_path, probed):
    # Fine-tuning: the caller's next fit continues the optimizer's step count and moments,
    # so the candidates do too (a new user's tune said 0.386, the retraining gave 0.379).
    x, y = regression_data()
    model = make_model()
    model.fit(x, y, epochs=2, verbose=0)
    before = model_state(model)
    result = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed))
    assert_untouched(model, before)
    history = model.fit(x, y, validation_split=0.2, verbose=0, **result.fit_kwargs())
    assert history.history["val_loss"][-1] == pytest.approx(result.val_loss, rel=1e-6)


def test_the_same_weights_with_another_optimizer_state_get_a_new_search(tmp_path, probed):
    # Candidates start from the state of an optimizer that has stepped: a search scored
    # from one state does not answer for another.
    x, y = regression_data()
    model = make_model()
    model.fit(x, y, epochs=1, verbose=0)
    first = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", metrics=["mae"])
    fresh = FakeMemory(2**40)
    second = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed, memory=fresh))
    assert fresh.trial_batch_sizes == [16, 32, 64] and second.directory != first.directory


def test_an_optimizer_built_for_other_variables_starts_fresh_and_says_so(tmp_path, probed):
    x, y = regression_data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    model.layers[0].trainable = False  # frozen, not recompiled: the state is for 4 variables
    with pytest.warns(UserWarning, match="start with a fresh optimizer"):
        result = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed))
    assert result.val_loss is not None


def test_a_changed_search_gets_its_own_project(tmp_path, probed):
    x, y = regression_data()
    model = make_model()
    first = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed,
                                                         batch_sizes=[16]))
    second = autobatch.tune(model, (x, y), **small_search(tmp_path, probe=probed,
                                                          batch_sizes=[32]))
    assert first.directory != second.directory
    assert {t.batch_size for t in second.trials} == {32}


def test_a_hypermodel_tunes_its_own_hyperparameters_with_the_batch_settings(tmp_path, probed):
    class TwoLayers(keras_tuner.HyperModel):
        def build(self, hp):
            model = keras.Sequential([
                keras.Input((4,)),
                keras.layers.Dense(hp.Choice("units", [2, 8]), activation="relu"),
                keras.layers.Dense(1),
            ])
            model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
            return model

    x, y = regression_data()
    result = autobatch.tune(TwoLayers(), (x, y), **small_search(
        tmp_path, probe=probed, batch_sizes=[16, 32], steps_per_epoch=[1.0]))

    assert {(t.hyperparameters["units"], t.batch_size) for t in result.trials} == {
        (2, 16), (2, 32), (8, 16), (8, 32),
    }
    assert result.hyperparameters["units"] in (2, 8)
    assert "tuner/epochs" not in json.dumps(result.to_dict())


def test_a_dataset_with_validation_data_is_searched(tmp_path, probed):
    import tensorflow as tf

    x, y = regression_data()
    train = tf.data.Dataset.from_tensor_slices((x[:128], y[:128]))
    validation = tf.data.Dataset.from_tensor_slices((x[128:], y[128:]))
    result = autobatch.tune(make_model(), train, validation_data=validation, **small_search(
        tmp_path, probe=probed, batch_sizes=[16, 64], steps_per_epoch=[1.0]))
    assert {t.samples_seen for t in result.trials if t.status == "completed"} == {3 * 128}


def test_an_infinite_dataset_with_its_size_stated_is_searched(tmp_path, probed):
    import tensorflow as tf

    x, y = regression_data()
    train = tf.data.Dataset.from_tensor_slices((x[:128], y[:128])).repeat()
    result = autobatch.tune(make_model(), train, validation_data=(x[128:], y[128:]),
                            num_samples=128, **small_search(
                                tmp_path, probe=probed, batch_sizes=[32], steps_per_epoch=[2]))
    assert result.trials[0].max_epochs == 6  # 3 passes of 128 samples, 64 per epoch


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"validation_split": 1.5}, InvalidArgumentError,
         r"validation_split=1.5 is outside \(0, 1\)"),
        ({"validation_split": 0}, InvalidArgumentError, r"validation_split=0 is outside"),
        ({"tuner": "annealing"}, InvalidArgumentError, r"tuner='annealing' is not a tuner"),
        ({"lr_scaling": "cube"}, InvalidArgumentError, r"lr_scaling='cube'; expected None"),
        ({"patience": 0}, InvalidArgumentError, r"patience=0; expected positive passes"),
        ({"budget_samples": 0}, InvalidArgumentError, r"budget_samples=0; expected a positive"),
        ({"probe": 128}, InvalidArgumentError, r"probe is an int. Expected the ProbeResult"),
        ({"verbose": 2}, InvalidArgumentError, r"verbose=2; expected 0 \(print nothing\) or 1"),
        ({"seed": -1}, InvalidArgumentError, r"seed=-1; expected an integer from 0 to 2\*\*32"),
        ({"seed": 2**32}, InvalidArgumentError, r"seed=4294967296; expected an integer"),
    ],
)
def test_bad_options_are_rejected_before_any_training(tmp_path, arguments, error, match):
    x, y = regression_data()
    memory = FakeMemory(2**40)
    with pytest.raises(error, match=match):
        autobatch.tune(make_model(), (x, y), **small_search(tmp_path, memory=memory, **arguments))
    assert memory.trial_batch_sizes == []


def test_a_dataset_needs_validation_data(tmp_path):
    import tensorflow as tf

    x, y = regression_data()
    with pytest.raises(InvalidDataError, match=r"validation_split applies to arrays only.*"
                                               r"Pass validation_data"):
        autobatch.tune(make_model(), tf.data.Dataset.from_tensor_slices((x, y)),
                       **small_search(tmp_path))


def test_an_infinite_dataset_needs_its_size(tmp_path):
    import tensorflow as tf

    x, y = regression_data()
    endless = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    with pytest.raises(InvalidDataError, match=r"infinite.*State the samples in one pass: "
                                               r".*num_samples="):
        autobatch.tune(make_model(), endless, validation_data=(x, y), **small_search(tmp_path))


def test_an_uncompiled_model_is_rejected(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    with pytest.raises(autobatch.InvalidModelError, match="not compiled"):
        autobatch.tune(model, regression_data(), **small_search(tmp_path))


def test_the_validation_split_is_keras_last_fraction_and_leaves_the_arrays_alone(tmp_path, probed):
    x, y = regression_data()
    x_before, y_before = x.copy(), y.copy()
    from autobatch.data import ArrayData
    from autobatch.search.tune import keras_validation_split

    train, validation = keras_validation_split(ArrayData(x, y), 0.2)
    assert np.array_equal(train.x, x[:128]) and np.array_equal(validation.x, x[128:])
    autobatch.tune(make_model(), (x, y), **small_search(tmp_path, probe=probed,
                                                        batch_sizes=[64], steps_per_epoch=[1.0]))
    assert np.array_equal(x, x_before) and np.array_equal(y, y_before)


def test_the_readme_training_line_reproduces_the_tuned_val_loss(tmp_path, probed):
    import warnings

    x, y = regression_data()
    model = make_model()  # seeds Keras: shuffling is then the same in the search and here
    best = autobatch.tune(model, (x, y), **small_search(
        tmp_path, probe=probed, steps_per_epoch=[0.25, 0.5, 1.0], budget_samples=6 * 128))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Your input ran out of data" would fail the test
        history = model.fit(x, y, validation_split=0.2, **best.fit_kwargs(), verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(best.val_loss, rel=1e-6)
    # The steps trained are the steps the search trained: no epoch ran out of data.
    kwargs = best.fit_kwargs()
    assert int(model.optimizer.iterations) == kwargs["steps_per_epoch"] * kwargs["epochs"]
    assert all(-(-128 // t.batch_size) % t.steps_per_epoch == 0 for t in best.trials)


def test_a_time_budget_stops_every_candidate_at_an_epoch_end(tmp_path, probed):
    x, y = regression_data()
    result = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path, probe=probed, batch_sizes=[16], steps_per_epoch=[1],
        budget_samples=None, budget_seconds=0.3, patience=None))
    (trial,) = result.trials
    assert trial.status == "stopped early" and trial.epochs_run >= 1
    assert trial.samples_seen == 16 * trial.epochs_run
    assert result.budget_samples is None


def test_an_error_that_is_not_out_of_memory_stops_the_search(tmp_path, probed):
    x, y = regression_data()
    model = make_model()
    before = model_state(model)
    # The model outputs (batch, 1): the loss cannot broadcast, which no check foresees.
    unbroadcastable = np.zeros((NUM_SAMPLES, 3, 5), "float32")
    with pytest.raises(autobatch.TrialError, match=r"batch_size=16, steps_per_epoch=4 failed with"):
        autobatch.tune(model, (x, unbroadcastable), **small_search(tmp_path, probe=probed))
    assert_untouched(model, before)


def test_trials_go_to_the_user_cache_never_the_current_directory(tmp_path, monkeypatch, probed):
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOBATCH_CACHE_DIR", str(cache))
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    options = small_search(tmp_path, probe=probed, batch_sizes=[32], steps_per_epoch=[1.0])
    del options["directory"]
    result = autobatch.tune(make_model(), regression_data(), **options)
    assert result.directory.startswith(str(cache / "tune"))
    assert list(working.iterdir()) == []


def test_lr_scaling_scales_the_learning_rate_with_the_batch(tmp_path, probed):
    x, y = regression_data()
    result = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path, probe=probed, batch_sizes=[16, 64], steps_per_epoch=[1.0],
        lr_scaling="linear", reference_batch_size=32))
    rates = {t.batch_size: t.learning_rate for t in result.trials}
    assert rates == pytest.approx({16: 0.025, 64: 0.1})
    assert result.learning_rate == pytest.approx(rates[result.batch_size])


def test_lr_scaling_needs_a_constant_learning_rate(tmp_path):
    model = make_model()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 10, 0.9)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    with pytest.raises(InvalidArgumentError, match=r"lr_scaling='sqrt' needs a constant"):
        autobatch.tune(model, regression_data(), **small_search(tmp_path, lr_scaling="sqrt"))


def test_hyperband_trains_early_rounds_on_a_share_of_the_budget(tmp_path, probed):
    x, y = regression_data()
    result = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path, probe=probed, tuner="hyperband", seed=3))
    # 6 candidates: Hyperband with max_epochs=3, so its first round trains a third of the
    # budget (128 of 384 samples) and the rounds after it the whole budget.
    assert result.tuner == "hyperband"
    assert {t.budget_samples for t in result.trials} == {128, 384}
    best = min((t for t in result.trials if t.val_loss is not None), key=lambda t: t.val_loss)
    assert (result.batch_size, result.val_loss) == (best.batch_size, best.val_loss)
    assert all(not key.startswith("tuner/") for t in result.trials for key in t.hyperparameters)


def test_a_space_too_small_for_hyperband_is_searched_exhaustively(tmp_path, probed):
    x, y = regression_data()
    result = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path, probe=probed, tuner="hyperband", batch_sizes=[16, 32], steps_per_epoch=[1.0]))
    assert result.tuner == "grid"
    assert len(result.trials) == 2


def test_halving_rounds_keep_half_the_batch_sizes_down_to_one():
    from autobatch.search.tuner import halving_max_epochs, halving_max_trials, halving_rounds

    def space(batch_sizes, fractions=(0.25, 0.5, 1.0)):
        return [{"batch_size": b, "epoch_fraction": f} for b in batch_sizes for f in fractions]

    assert halving_rounds(space(range(8))) == [8, 4, 2, 1]
    assert halving_rounds(space(range(6))) == [6, 3, 2, 1]
    assert halving_rounds(space([16])) == [1]
    assert halving_max_epochs(space(range(6))) == 8
    assert halving_max_trials(space(range(6))) == 18 + (3 + 2 + 1) * 3


def test_halving_keeps_the_best_half_of_the_batch_sizes_each_round(tmp_path, probed):
    x, y = regression_data()
    result = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path, probe=probed, tuner="halving"))
    assert result.tuner == "halving"
    # 3 batch sizes: all 6 candidates on a quarter of the budget (96 of 384 samples), then
    # every candidate of the best 2 batch sizes on half of it, of the best one on all of it.
    rounds = [[t for t in result.trials if t.budget_samples == samples]
              for samples in (96, 192, 384)]
    assert [len(r) for r in rounds] == [6, 4, 2] and len(result.trials) == 12
    assert {(t.batch_size, t.steps_per_epoch) for t in rounds[0]} == {
        (16, 4), (16, 8), (32, 2), (32, 4), (64, 1), (64, 2),
    }
    for earlier, later, kept in zip(rounds[:2], rounds[1:], (2, 1), strict=True):
        best = sorted({t.batch_size for t in earlier},
                      key=lambda b: min(t.val_loss for t in earlier if t.batch_size == b))
        assert {t.batch_size for t in later} == set(best[:kept])
        assert all(t.continued_from in {e.trial_id for e in earlier} for t in later)
    winner = autobatch.results.ranked_trials(result.trials)[0]
    assert (result.batch_size, result.steps_per_epoch) == (winner.batch_size, winner.steps_per_epoch)
    assert all(not key.startswith("tuner/") for t in result.trials for key in t.hyperparameters)


def test_halving_is_the_default_and_trains_one_candidate_per_distinct_fit(tmp_path, probed):
    x, y = regression_data()
    # 128 training samples: at batch 128 a half pass and a whole pass are the same single
    # step, so that candidate is trained once; the better batch size then goes on.
    options = small_search(tmp_path, probe=probed, batch_sizes=[16, 128])
    del options["tuner"]
    result = autobatch.tune(make_model(), (x, y), **options)
    assert result.tuner == "halving"
    trained = [(t.batch_size, t.steps_per_epoch, t.budget_samples) for t in result.trials]
    assert sorted(trained[:3]) == [(16, 4, 192), (16, 8, 192), (128, 1, 192)]
    assert {t[1:] for t in trained[3:]} in ({(4, 384), (8, 384)}, {(1, 384)})


def test_halving_promotes_past_failed_candidates(tmp_path, probed):
    x, y = regression_data()
    result = autobatch.tune(make_model(nan_above=32), (x, y), **small_search(
        tmp_path, probe=probed, tuner="halving"))
    failed = {t.batch_size for t in result.trials if t.status == "failed"}
    assert failed == {64}
    # The failed batch size takes no place in the next round.
    second = [t for t in result.trials if t.budget_samples == 192]
    assert {t.batch_size for t in second} == {16, 32} and len(second) == 4


def test_an_interrupted_halving_search_resumes_where_it_stopped(tmp_path, probed):
    x, y = regression_data()
    model = make_model()
    options = dict(tuner="halving", probe=probed)
    with pytest.raises(KeyboardInterrupt):
        autobatch.tune(model, (x, y), **small_search(
            tmp_path, memory=InterruptingMemory(trials=2), **options))

    memory = FakeMemory(2**40)
    result = autobatch.tune(model, (x, y), **small_search(tmp_path, memory=memory, **options))
    whole = FakeMemory(2**40)
    uninterrupted = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path / "whole", memory=whole, **options))
    # The two runs of the first round that finished are not trained again.
    assert memory.trial_batch_sizes == whole.trial_batch_sizes[2:]
    assert len(result.trials) == len(uninterrupted.trials) == 12
    assert [(t.batch_size, t.steps_per_epoch, t.budget_samples) for t in result.trials] == [
        (t.batch_size, t.steps_per_epoch, t.budget_samples) for t in uninterrupted.trials
    ]

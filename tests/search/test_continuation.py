"""A candidate promoted to a later round continues its run instead of training it again."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import autobatch
from autobatch.data import ArrayData
from autobatch.search.candidate import train_candidates
from autobatch.search.space import Candidate
from tests.search.test_tune import (
    assert_untouched,
    make_model,
    model_state,
    regression_data,
    small_search,
)

#: Each run as the callback saw it: batch size, iterations and weights at its start and end.
RUNS: list[dict] = []


class RunRecorder(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        RUNS.append({
            "batch_size": None, "steps": 0,
            "start_iterations": int(self.model.optimizer.iterations.numpy()),
            "start_weights": [w.numpy().copy() for w in self.model.weights],
            "start_optimizer": [v.numpy().copy() for v in self.model.optimizer.variables],
        })

    def on_train_batch_begin(self, batch, logs=None):
        RUNS[-1]["steps"] += 1

    def on_train_end(self, logs=None):
        RUNS[-1].update(
            end_iterations=int(self.model.optimizer.iterations.numpy()),
            end_weights=[w.numpy().copy() for w in self.model.weights],
            end_optimizer=[v.numpy().copy() for v in self.model.optimizer.variables],
        )


def halving(tmp_path, probed, **overrides):
    """Successive halving over 4 batch sizes, no early stopping: rounds of 3, 6 and 12 passes
    (4, 2 and 1 batch sizes), so every run ends at a whole pass (128 samples)."""
    return small_search(tmp_path, probe=probed, tuner="halving", batch_sizes=[8, 16, 32, 64],
                        steps_per_epoch=[1.0], budget_samples=12 * 128, patience=None,
                        **overrides)


def test_a_promoted_candidate_continues_its_weights_optimizer_and_counters(tmp_path, probed):
    RUNS.clear()
    x, y = regression_data()
    model = make_model()
    before = model_state(model)
    result = autobatch.tune(model, (x, y), **halving(tmp_path, probed, callbacks=[RunRecorder()]))
    assert_untouched(model, before)

    # One candidate per batch size, so each trial trained its own run, in order.
    assert [t.budget_samples for t in result.trials] == [384] * 4 + [768] * 2 + [1536]
    assert len(RUNS) == len(result.trials) == 7
    index = {t.trial_id: i for i, t in enumerate(result.trials)}
    for trial in result.trials[4:]:
        earlier = result.trials[index[trial.continued_from]]
        earlier_run, run = RUNS[index[earlier.trial_id]], RUNS[index[trial.trial_id]]
        assert trial.batch_size == earlier.batch_size
        assert trial.budget_samples == 2 * earlier.budget_samples
        # It starts where the earlier round ended: weights, every optimizer variable.
        assert all(np.array_equal(a, b) for a, b in zip(
            earlier_run["end_weights"], run["start_weights"], strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(
            earlier_run["end_optimizer"], run["start_optimizer"], strict=True))
        # The counters add up: optimizer steps, samples and epochs of every round, one history.
        assert run["start_iterations"] == earlier_run["end_iterations"]
        assert run["end_iterations"] == earlier_run["end_iterations"] + run["steps"]
        assert run["end_iterations"] == trial.samples_seen // trial.batch_size
        assert trial.samples_seen == earlier.samples_seen + run["steps"] * trial.batch_size
        assert trial.samples_seen == trial.budget_samples
        assert trial.epochs_run == 2 * earlier.epochs_run
        assert trial.val_loss_history[:earlier.epochs_run] == earlier.val_loss_history
    # The first round started from the model's own weights and a fresh optimizer.
    assert all(r["start_iterations"] == 0 for r in RUNS[:4])
    assert all(np.array_equal(a, b) for a, b in zip(
        RUNS[0]["start_weights"], before["weights"], strict=True))


def test_fit_kwargs_of_a_continued_winner_repeat_its_run_from_fresh_weights(tmp_path, probed):
    x, y = regression_data()
    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss="mse")  # still improving
    result = autobatch.tune(model, (x, y), **halving(tmp_path, probed))
    winner = result.ranked_trials()[0]
    assert winner.continued_from is not None and result.epochs > 3  # past round 1

    again = make_model()
    again.compile(optimizer=keras.optimizers.Adam(0.005), loss="mse")
    history = again.fit(x, y, validation_split=0.2, verbose=0, **result.fit_kwargs())
    assert history.history["val_loss"] == pytest.approx(
        winner.val_loss_history[:result.epochs], rel=1e-6)
    assert history.history["val_loss"][-1] == pytest.approx(result.val_loss, rel=1e-6)


def test_a_round_cut_inside_its_epoch_is_not_continued_as_a_whole_pass(tmp_path, probed):
    # Round one's 64 samples end half-way through batch 8's one epoch of 128: continued as
    # if that epoch were whole, the winner's run was 64 + 128 samples, scored 0.43, while
    # fit_kwargs() (two epochs of 16 steps) trained 256 and gave 0.15.
    x, y = regression_data()
    model = make_model()
    result = autobatch.tune(model, (x, y), **small_search(
        tmp_path, probe=probed, tuner="halving", batch_sizes=[8, 16, 32], steps_per_epoch=[1.0],
        budget_samples=256))
    cut = result.trials[0]
    assert cut.samples_seen < cut.steps_per_epoch * cut.batch_size  # the case in question
    winner = result.ranked_trials()[0]
    assert result.epochs > 1

    again = make_model()
    history = again.fit(x, y, validation_split=0.2, verbose=0, **result.fit_kwargs())
    assert history.history["val_loss"] == pytest.approx(
        winner.val_loss_history[:result.epochs], rel=1e-6)
    # Its samples are the whole epochs fit_kwargs() names, not a cut one and a whole one.
    assert winner.samples_seen == result.epochs * result.steps_per_epoch * result.batch_size


def scripted_fit(val_losses):
    """A ``fit`` that trains nothing and reports ``val_losses[epoch]`` at each epoch end."""

    def fit(model, *, epochs, initial_epoch, callbacks, **kwargs):
        model.stop_training = False
        for callback in callbacks:
            callback.set_model(model)
            callback.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            model.optimizer.iterations.assign_add(1)
            for callback in callbacks:
                callback.on_epoch_end(epoch, {"loss": 1.0, "val_loss": val_losses[epoch]})
            if model.stop_training:
                break

    return fit


def test_early_stopping_carries_its_best_and_its_wait_into_the_next_round():
    model = make_model()
    model.optimizer.build(model.trainable_variables)
    losses = [5.0, 4.0, 3.0, 3.5, 3.2, 1.0, 0.5]
    data = ArrayData(*regression_data(16))
    options = dict(
        model=model, train=data, validation=data, validation_batch_size=16,
        memory=autobatch.FakeMemory(2**40), min_delta=0.0, samples_per_pass=16,
    )

    def candidate(epochs):  # one step of 16 samples per epoch: every epoch ends a pass
        return Candidate(16, 1, epochs, epochs * 16, None, patience_epochs=2)

    first = train_candidates(fit=scripted_fit(losses), candidates=[candidate(4)], **options)
    assert first.outcomes[1].val_losses == losses[:4] and not first.outcomes[1].stopped_early
    state = first.snapshot
    assert (state.epoch, state.samples, state.iterations) == (4, 64, 4)

    second = train_candidates(fit=scripted_fit(losses), candidates=[candidate(12)],
                              resume=state, **options)
    outcome = second.outcomes[1]
    # Best 3.0 (epoch 3) from round 1; 3.5 and 3.2 make two epochs without better: stopped
    # at epoch 5, as one uninterrupted run with patience 2 would have stopped.
    assert outcome.val_losses == losses[:5]
    assert outcome.stopped_early and (outcome.best_epoch, outcome.best_val_loss) == (3, 3.0)
    assert second.snapshot.iterations == 5 and second.snapshot.samples == 80


def test_a_search_interrupted_between_rounds_continues_from_the_saved_states(tmp_path, probed):
    from tests.search.test_tune import InterruptingMemory

    x, y = regression_data()
    model = make_model()
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C as the second round starts
        autobatch.tune(model, (x, y), **halving(tmp_path, probed,
                                                memory=InterruptingMemory(trials=4)))
    states = list(tmp_path.glob("*/autobatch_runs/*.npz"))
    assert len(states) == 4  # each first-round run's state, in the project directory

    RUNS.clear()
    result = autobatch.tune(model, (x, y), **halving(tmp_path, probed, callbacks=[RunRecorder()]))
    whole = autobatch.tune(make_model(), (x, y), **halving(tmp_path / "whole", probed))
    # Only the later rounds trained, each from where the killed search had left its run.
    assert len(RUNS) == 3 and all(r["start_iterations"] > 0 for r in RUNS)
    assert [t.val_loss_history for t in result.trials] == [
        t.val_loss_history for t in whole.trials]
    assert (result.fit_kwargs(), result.val_loss) == (whole.fit_kwargs(), whole.val_loss)
    assert not list(tmp_path.glob("*/autobatch_runs/*.npz"))  # finished: states removed

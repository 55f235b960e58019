"""Candidates that differ only in steps_per_epoch train one run: their curves are read off it."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

import autobatch
from autobatch import report
from autobatch.search.candidate import _Follower, shared_run_plan
from autobatch.search.space import Candidate
from tests.search.test_tune import (
    make_model,
    regression_data,
    small_search,
)


def candidate(steps, max_epochs, patience=None):
    return Candidate(16, steps, max_epochs, None, None, patience)


def test_a_follower_stops_where_keras_early_stopping_would():
    losses = [3.0, 2.0, 2.5, 2.6, 1.0, 0.5]
    follower = _Follower(candidate(1, 10, patience=2), every=1, min_delta=0.0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=2)
    stopper.set_model(model)
    model.stop_training = False
    stopper.on_train_begin()
    keras_epochs = 0
    for epoch, loss in enumerate(losses):
        follower.see(epoch + 1, loss)
        if not model.stop_training:
            stopper.on_epoch_end(epoch, {"val_loss": loss})
            keras_epochs += 1
    assert follower.val_losses == losses[:keras_epochs] == [3.0, 2.0, 2.5, 2.6]
    assert follower.stopped_early


def test_a_coarser_candidate_reads_every_kth_validation_up_to_its_budget():
    follower = _Follower(candidate(4, 2), every=2, min_delta=0.0)
    for epoch, loss in enumerate([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], start=1):
        follower.see(epoch, loss)
    assert follower.val_losses == [4.0, 2.0] and follower.done and not follower.stopped_early
    # The run lasts until the longest candidate ends, at the finest one's validations.
    assert shared_run_plan([candidate(2, 8), candidate(4, 4), candidate(8, 3)]) == (
        2, 12, [1, 2, 4])


def test_one_run_per_batch_size_gives_each_candidate_its_own_fit(tmp_path, probed):
    x, y = regression_data()
    model = make_model()  # seeds Keras, so that separate fits shuffle alike
    memory = autobatch.FakeMemory(2**40)
    result = autobatch.tune(model, (x, y), **small_search(
        tmp_path, probe=probed, memory=memory, batch_sizes=[16, 32], steps_per_epoch=[0.25, 0.5, 1.0]))
    assert memory.trial_batch_sizes == [16, 32]  # 6 candidates, 2 runs
    assert sorted((t.batch_size, t.steps_per_epoch) for t in result.trials) == [
        (16, 2), (16, 4), (16, 8), (32, 1), (32, 2), (32, 4)]
    trained = {t.batch_size: t.trial_id for t in result.trials if t.shared_run is None}
    assert len(trained) == 2
    assert all(t.shared_run in (None, trained[t.batch_size]) for t in result.trials)

    # Each candidate's curve is the one its own model.fit gives: the measured premise.
    initial = [w.numpy().copy() for w in model.weights]
    for trial in result.trials:
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", metrics=["mae"])
        history = model.fit(x, y, validation_split=0.2, batch_size=trial.batch_size,
                            steps_per_epoch=trial.steps_per_epoch, epochs=trial.epochs_run,
                            verbose=0)
        assert history.history["val_loss"] == pytest.approx(trial.val_loss_history, rel=1e-6)


def test_a_budget_smaller_than_one_epoch_is_not_overspent(tmp_path, probed):
    x, y = regression_data()
    # A whole pass is 128 samples; the budget 96: the run stops inside its only epoch.
    (trial,) = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path, probe=probed, batch_sizes=[16], steps_per_epoch=[1.0],
        budget_samples=96)).trials
    assert (trial.samples_seen, trial.epochs_run) == (96, 1)
    # Hyperband's first round (a third of the budget): never more than one validation
    # interval of the shared run (or one batch) over a candidate's budget.
    result = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path / "hyperband", probe=probed, tuner="hyperband", budget_samples=96, seed=3))
    for t in result.trials:
        finest = min(s.steps_per_epoch for s in result.trials if s.batch_size == t.batch_size)
        assert t.samples_seen <= t.budget_samples + finest * t.batch_size


def test_a_candidate_its_run_stopped_before_its_first_validation_fails_saying_why(
    tmp_path, probed
):
    class StopAfterOneEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    x, y = regression_data()
    # One shared run validates every 2 steps; the callback ends it after the first.
    result = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path, probe=probed, batch_sizes=[16], steps_per_epoch=[0.25, 0.5, 1.0],
        callbacks=[StopAfterOneEpoch()]))
    by_steps = {t.steps_per_epoch: t for t in result.trials}
    assert result.steps_per_epoch == 2 and by_steps[2].val_loss is not None
    assert by_steps[4].val_loss is None and by_steps[8].val_loss is None
    # keras-tuner's books say why, rather than a TypeError on float(None).
    tuner_trials = [json.loads(path.read_text())
                    for path in Path(result.directory).glob("trial_*/trial.json")]
    failed = [t for t in tuner_trials if t["status"] == "FAILED"]
    assert len(failed) == 2
    assert all("stopped before its first validation" in t["message"] for t in failed)


def test_a_trial_record_being_written_is_never_seen_half_written(tmp_path, monkeypatch):
    # The chief reads every record while workers write theirs: a reader sees the old record
    # or the new one, never a file the writer has only begun.
    import json

    from autobatch.search import tuner

    path = str(tmp_path / "trial_record.json")
    tuner._write_json_whole(path, {"val_loss": 1.0})
    seen = []
    real_dump = json.dump

    def dump_and_look(data, file):
        file.write("{")  # part of the new record is out, flushed, when a reader looks
        file.flush()
        with open(path, encoding="utf-8") as reader:
            seen.append(json.load(reader))
        file.seek(0)
        file.truncate()
        real_dump(data, file)

    monkeypatch.setattr(tuner.json, "dump", dump_and_look)
    tuner._write_json_whole(path, {"val_loss": 0.5})
    assert seen == [{"val_loss": 1.0}]
    with open(path, encoding="utf-8") as reader:
        assert json.load(reader) == {"val_loss": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial_record.json"]


def test_fit_kwargs_train_the_run_a_budget_capped_winner_scored(tmp_path, probed):
    # A pass is 8 batches of 16; the budget 64 samples. 8 steps per epoch is more than the
    # budget, so that candidate was validated part-way through its epoch, at 64 samples:
    # the same 4 steps as the 4-step candidate. fit_kwargs() must train those 4 steps, not
    # a whole 8-step epoch (a new user's search named 16 x 90 x 1 where 45 steps scored,
    # and retrained to a val_loss 22% lower than tune reported).
    x, y = regression_data()
    model = make_model()
    initial = [w.numpy().copy() for w in model.weights]
    result = autobatch.tune(model, (x, y), **small_search(
        tmp_path, probe=probed, tuner="grid", batch_sizes=[16],
        steps_per_epoch=[0.25, 0.5, 1.0], budget_samples=64))
    assert result.fit_kwargs() == {"batch_size": 16, "steps_per_epoch": 4, "epochs": 1}
    # The candidates are still the three proposed; the capped one's own fit_kwargs() trains
    # the 4 steps it scored, and the table, the summary and the plot say so.
    by_steps = {t.steps_per_epoch: t for t in result.trials}
    assert sorted(by_steps) == [2, 4, 8]
    assert by_steps[8].fit_kwargs() == {"batch_size": 16, "steps_per_epoch": 4, "epochs": 1}
    assert by_steps[8].steps_text() == "4 of 8" and by_steps[4].steps_text() == "4"
    summary = report.tune_summary(result)
    assert "steps_per_epoch=4, epochs=1" in summary
    assert "Runner-up: batch 16 x 4 steps" not in summary  # the winner's own run again
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", metrics=["mae"])
    keras.utils.set_random_seed(0)
    history = model.fit(x, y, validation_split=0.2, verbose=0, **result.fit_kwargs())
    assert history.history["val_loss"][-1] == pytest.approx(result.val_loss, rel=1e-6)

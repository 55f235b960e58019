"""One winner everywhere: the result, the summary, the table and the plots rank alike."""

from __future__ import annotations

import pytest

from autobatch import report
from autobatch.results import TuneResult, TuneTrial, ranked_trials


def trial(trial_id, batch_size, steps, val_loss, *, best_epoch=4, fraction=None, status=None,
          units=None):
    hyperparameters = {"batch_size": batch_size}
    if units is not None:  # a HyperModel's own hyperparameter
        hyperparameters["units"] = units
    if fraction is not None:
        hyperparameters["epoch_fraction"] = fraction
    return TuneTrial(
        batch_size=batch_size, steps_per_epoch=steps,
        status=status or ("failed" if val_loss is None else "completed"),
        val_loss=val_loss, best_epoch=None if val_loss is None else best_epoch,
        samples_seen=1024, seconds=1.0, samples_per_second=1000.0,
        error="out of memory" if val_loss is None else None, trial_id=trial_id,
        val_loss_history=[] if val_loss is None else [1.0] * (best_epoch - 1) + [val_loss],
        hyperparameters=hyperparameters, epochs_run=best_epoch,
    )


def result_of(trials):
    winner = ranked_trials(trials)[0]
    return TuneResult(
        batch_size=winner.batch_size, steps_per_epoch=winner.steps_per_epoch,
        epochs=winner.best_epoch, val_loss=winner.val_loss, trials=trials, probe=None,
        tuner="grid", budget_samples=1024,
    )


def test_ties_are_settled_by_samples_then_larger_batch_then_fewer_validations_then_trial():
    trials = [
        trial("0", 16, 4, 0.5, best_epoch=8),   # tie, but 512 samples to its best
        trial("1", 16, 8, 0.5, best_epoch=2),   # tie, 256 samples
        trial("2", 32, 2, 0.5, best_epoch=4),   # tie, 256 samples, larger batch
        trial("3", 32, 4, 0.5, best_epoch=2),   # ... and fewer validations
        trial("10", 64, 1, 0.9),
        trial("9", 64, 2, None),
        trial("4", 128, 1, 0.4, best_epoch=2),  # the lowest loss wins outright
    ]
    order = [t.trial_id for t in ranked_trials(trials)]
    assert order == ["4", "3", "2", "1", "0", "10", "9"]
    # Trial ids compare as numbers, not strings, as the last resort.
    twins = [trial("10", 16, 4, 0.5, units=8), trial("9", 16, 4, 0.5, units=16)]
    assert [t.trial_id for t in ranked_trials(twins)] == ["9", "10"]


def test_a_candidate_counts_once_whatever_fraction_or_round_named_it():
    trials = [
        trial("0", 16, 4, 0.5, fraction=0.25),
        trial("1", 16, 4, 0.5, fraction=0.5),   # the same fit call as trial 0
        trial("2", 16, 4, 0.45, fraction=0.25),  # trial 0 promoted, trained on more
        trial("3", 32, 2, 0.5, fraction=0.5),
    ]
    ranked = ranked_trials(trials)
    assert [t.trial_id for t in ranked] == ["2", "3"]


def test_the_summary_names_the_result_and_another_candidate_as_runner_up():
    trials = [trial("0", 16, 4, 0.5), trial("1", 16, 4, 0.5), trial("2", 32, 2, 0.5)]
    result = result_of(trials)
    assert (result.batch_size, result.steps_per_epoch) == (32, 2)
    summary = report.tune_summary(result)
    assert "Train with batch_size=32, steps_per_epoch=2" in summary
    assert "Runner-up: batch 16 x 4 steps (val_loss 0.5000, +0.0%)" in summary
    table = report.distinct_candidates(result.trials)
    assert [(t.batch_size, t.steps_per_epoch) for t in table] == [(32, 2), (16, 4)]


def test_the_heatmap_boxes_and_the_curves_lead_with_the_same_winner():
    pytest.importorskip("matplotlib")
    from autobatch import plots

    trials = [trial("0", 16, 4, 0.5, fraction=0.5), trial("1", 32, 2, 0.5, fraction=0.5),
              trial("2", 64, 1, 0.7, fraction=0.5)]
    result = result_of(trials)
    figure_class = plots._figure_class()
    heatmap = plots._tune_val_loss(figure_class, result)
    boxed = [text.get_text() for text in heatmap.axes[0].texts
             if text.get_bbox_patch().get_edgecolor()[:3] == pytest.approx((0.839, 0.153, 0.157), abs=1e-2)]
    assert boxed == ["0.5\n2 steps"]  # batch 32's cell, the result's
    curves = plots._tune_curves(figure_class, result)
    first = curves.axes[0].get_legend().get_texts()[0].get_text()
    assert first.startswith("batch 32, 2 steps/epoch")

"""Tables, summaries, progress and plots of probe and tune results (built by hand: no Keras)."""

from __future__ import annotations

import sys

import pytest
from rich.console import Console

import autobatch
from autobatch import report
from autobatch.results import ProbeResult, ProbeTrial, TuneResult, TuneTrial

GIB = 2**30
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def probe_result(**changes):
    def trial(batch, peak, fits=True, error=None):
        return ProbeTrial(
            batch_size=batch, peak_bytes=peak, seconds_per_step=None if peak is None else 0.02,
            samples_per_second=None if peak is None else batch / 0.02, fits=fits,
            fitted=batch > 8, steps=0 if peak is None else 3, error=error,
        )

    fields = dict(
        max_batch_size=300, limit_bytes=8 * GIB, limit_source="GPU:0 total (NVML)",
        backend="tensorflow", device="GPU:0", memory_source="TensorFlow allocator peak",
        bytes_per_sample=0.02 * GIB, fixed_bytes=1 * GIB, margin=0.05, baseline_bytes=0,
        usable_bytes=int(7.6 * GIB), num_samples=5000,
        trials=[
            trial(8, int(1.16 * GIB)),
            trial(300, int(7.0 * GIB)),
            trial(340, int(7.8 * GIB), fits=False, error="above the safety margin"),
            trial(400, None, fits=False, error="out of memory"),
        ],
        seconds=12.5, num_oom=1, stop_reason="bracketed the limit within the tolerance",
    )
    fields.update(changes)
    return ProbeResult(**fields)


def tune_trial(batch, steps, val_loss, *, status="completed", error=None, history=None, **hp):
    return TuneTrial(
        batch_size=batch, steps_per_epoch=steps, status=status, val_loss=val_loss,
        best_epoch=None if val_loss is None else 3, samples_seen=batch * steps * 3,
        seconds=2.0, samples_per_second=500.0, error=error,
        val_loss_history=history if history is not None else ([] if val_loss is None else [val_loss + 0.2, val_loss]),
        hyperparameters={"batch_size": batch, **hp},
    )


def tune_result(probe=None, trials=None):
    trials = trials if trials is not None else [
        tune_trial(64, 40, 0.50, epoch_fraction=0.5),
        tune_trial(16, 80, 0.31, epoch_fraction=0.25),
        tune_trial(16, 80, 0.45, epoch_fraction=0.25),  # the same candidate, an earlier round
        tune_trial(300, 9, None, status="failed", error="out of memory", epoch_fraction=0.5),
        tune_trial(32, 80, 0.40, epoch_fraction=0.5),
    ]
    return TuneResult(
        batch_size=16, steps_per_epoch=80, epochs=3, val_loss=0.31, trials=trials, probe=probe,
        tuner="hyperband", budget_samples=4000, seconds=30.0,
    )


def rendered(renderable) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_probe_table_has_a_row_per_trial_and_marks_the_choice():
    lines = rendered(report.probe_table(probe_result())).splitlines()
    header = next(line for line in lines if "peak memory" in line)
    for column in ("batch", "% of limit", "step time", "samples/s", "fits"):
        assert column in header
    rows = [line for line in lines if "│" in line and "batch" not in line]
    assert len(rows) == 4
    assert "yes, chosen" in rows[1] and "7.00 GiB" in rows[1] and "88%" in rows[1]
    assert "over margin" in rows[2] and "OOM" in rows[3]


def test_tune_table_shows_each_candidate_once_best_first_failed_last():
    text = rendered(report.tune_table(tune_result()))
    rows = [line.split("│")[1:3] for line in text.splitlines() if line.startswith("│")]
    assert [(int(b), int(s)) for b, s in rows] == [(16, 80), (32, 80), (64, 40), (300, 9)]
    assert "4 candidates, 5 trials" in text
    assert "failed: out of memory" in text


def test_tune_table_shows_a_hypermodels_own_hyperparameters():
    trials = [tune_trial(16, 10, 0.3, units=32), tune_trial(16, 10, 0.2, units=64)]
    text = rendered(report.tune_table(tune_result(trials=trials)))
    assert "units" in text
    assert [line.split("│")[3].strip() for line in text.splitlines() if line.startswith("│")] == ["64", "32"]


def test_tune_summary_says_what_why_and_the_headroom():
    text = report.tune_summary(tune_result(probe=probe_result()))
    assert "batch_size=16, steps_per_epoch=80, epochs=3" in text
    assert "lowest validation loss (0.3100) of 4 candidates (1 failed, 5 trials)" in text
    assert "Runner-up: batch 32 x 80 steps (val_loss 0.4000, +29.0%)" in text
    # Between the trials at 8 (1.16 GiB) and 300 (7.00 GiB): 1.16 + 8/292 x 5.84 = 1.32 GiB.
    assert "batch 16 peaks near 1.32 GiB, leaving 6.68 GiB (84%) of the 8.00 GiB limit" in text


def test_tune_summary_does_not_call_all_the_samples_the_largest_batch_that_fits():
    # The probe stopped at all 5000 samples: the data ran out, not the memory.
    probe = probe_result(max_batch_size=5000, stop_reason="limited by the number of training samples")
    text = report.tune_summary(tune_result(probe=probe))
    assert "Memory limits no batch of these 5000 samples" in text
    assert "largest batch that fits" not in text


def test_an_answer_backed_off_from_a_failed_verification_is_not_called_interpolated():
    # As in a new user's demo: the line's answer failed its verification, and the answer was
    # backed off from it (at least 10% in-process) without a verification of its own.
    from autobatch.results import ProbeVerification

    text = report.probe_summary(probe_result(max_batch_size=290, verifications=[
        ProbeVerification(330, int(7.9 * GIB), False, 2, 8, error="above the safety margin")]))
    assert ("It is backed off from batch 330 by half as much again as its excess at the "
            "measured cost per sample (at least 5% down).") in text
    assert "interpolated" not in text
    assert ("NOT verified itself: real epochs at 330 went above the safety margin; pass a "
            "larger margin=") in text


def test_a_measured_answer_under_failed_verifications_names_the_batch_that_failed():
    # Workers: every verification failed, the answer is the largest batch a trial measured.
    from autobatch.results import ProbeVerification

    text = report.probe_summary(probe_result(max_batch_size=8, verifications=[
        ProbeVerification(300, int(7.9 * GIB), False, 2, 8, error="above the safety margin")]))
    assert "It peaked at 1.16 GiB" in text
    assert "NOT verified itself: real epochs at 300 went above the safety margin" in text


def test_probe_summary_says_when_the_result_came_from_the_cache():
    assert "from the probe cache" in report.probe_summary(probe_result(from_cache=True))
    assert "from the probe cache" not in report.probe_summary(probe_result())


def test_progress_is_silent_with_verbose_0(capsys):
    result = probe_result()
    with report.probe_progress(0) as progress:
        progress.trial_done(result.trials[0])
        progress.done(result)
    assert capsys.readouterr() == ("", "")


def test_progress_prints_each_trial_and_the_summary_on_stderr(capsys):
    result = probe_result()
    with report.probe_progress(1) as progress:
        for trial in result.trials:
            progress.trial_done(trial)
        progress.done(result)
    out, err = capsys.readouterr()
    assert out == ""
    assert "batch     300" in err and "Largest batch size that fits: 300" in err


def test_show_result_of_a_search_prints_both_tables_and_summaries():
    console = Console(record=True, width=140, color_system=None)
    report.show_result(tune_result(probe=probe_result()), console=console)
    text = console.export_text()
    assert "Probe: GPU:0" in text and "Search: 4 candidates" in text
    assert "Largest batch size that fits" in text and "Train with batch_size=16" in text


# --- plots ---------------------------------------------------------------------------


def assert_pngs(paths, names):
    assert sorted(p.name for p in paths) == sorted(names)
    for path in paths:
        assert path.stat().st_size > 5_000
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_probe_plot_writes_memory_and_throughput(tmp_path):
    paths = probe_result().plot(tmp_path / "new" / "dir")
    assert_pngs(paths, ["probe_memory.png", "probe_throughput.png"])


def test_tune_plot_writes_its_two_plots_and_the_probes(tmp_path):
    paths = tune_result(probe=probe_result()).plot(tmp_path)
    assert_pngs(paths, ["tune_val_loss.png", "tune_learning_curves.png",
                        "probe_memory.png", "probe_throughput.png"])


def test_tune_plot_without_probe_and_with_steps_only(tmp_path):
    trials = [tune_trial(16, 10, 0.3), tune_trial(32, 20, 0.4, history=[]),
              tune_trial(64, 5, None, status="failed", error="NaN loss")]
    paths = tune_result(trials=trials).plot(tmp_path)
    assert_pngs(paths, ["tune_val_loss.png", "tune_learning_curves.png"])


def test_plots_of_a_result_without_timings_or_curves_still_render(tmp_path):
    untimed = [ProbeTrial(1, 100, None, None, True, False, 1)]
    probe = probe_result(trials=untimed, max_batch_size=1, bytes_per_sample=None, fixed_bytes=None)
    failed = [tune_trial(16, 10, None, status="failed", error="out of memory")]
    assert len(tune_result(probe=probe, trials=failed).plot(tmp_path)) == 4


def test_plots_without_matplotlib_say_how_to_install_it(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import matplotlib...` raise ImportError.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(autobatch.MissingDependencyError, match=r'pip install "keras-autobatch\[plots\]"'):
        probe_result().plot(tmp_path)
    with pytest.raises(ImportError):  # also an ImportError, for existing handlers
        tune_result().plot(tmp_path)
    assert not list(tmp_path.iterdir())


def test_an_answer_between_two_trials_is_shown_as_predicted():
    result = probe_result(max_batch_size=320)  # between 300 (fits) and 340 (past the margin)
    text = rendered(report.probe_table(result))
    last_row = [line for line in text.splitlines() if line.startswith("│")][-1]
    assert "320" in last_row and "~7.40 GiB" in last_row  # 1 GiB + 320 x 0.02 GiB and "yes, chosen" in last_row
    assert "not run itself" in text
    summary = report.probe_summary(result)
    assert "between batch 300 (peak 7.00 GiB) and batch 340 (peak 7.80 GiB" in summary


# --- output that is not a terminal, and live progress on one ---------------------------------------


def test_output_that_is_not_a_terminal_is_never_wrapped(capsys):
    command = "autobatch probe " + "/a/long/directory" * 8 + "/model.keras --data data.npz --json probe.json"
    report.show_message("Try the command line on the same files:\n  " + command)
    report.show_result(tune_result(trials=[
        tune_trial(16, 80, None, status="failed", error="out of memory " + "x" * 150),
    ]))
    out = capsys.readouterr().out
    assert "  " + command in out.splitlines()  # whole, on one line
    assert any("out of memory " + "x" * 150 in line for line in out.splitlines())  # a table cell too


def terminal():
    import io

    return Console(force_terminal=True, file=io.StringIO(), width=120, color_system=None)


def test_tune_progress_on_a_terminal_shows_a_bar_with_elapsed_and_remaining_time():
    console = terminal()
    with report.tune_progress(1, total=4, console=console) as progress:
        for batch in (16, 32):
            progress.trial_started(batch, 80)
            __import__("time").sleep(0.02)  # two samples apart in time give rich a speed
            progress.trial_done(tune_trial(batch, 80, 0.5))
        progress.trial_started(64, 40)
        progress.bar.refresh()
        screen = console.file.getvalue()
    assert "candidate 3/4, batch 64 x 40 steps/epoch" in screen
    assert "2/4" in screen
    assert __import__("re").search(r"remaining\s+\d:\d\d:\d\d\s+elapsed\s+\d:\d\d:\d\d", screen), screen
    assert "candidate   2: batch     32" in screen  # the finished ones are lines above the bar


def test_probe_progress_on_a_terminal_shows_the_trial_and_elapsed_time():
    console = terminal()
    result = probe_result()
    with report.probe_progress(1, console=console) as progress:
        progress.trial_started(8)
        progress.trial_done(result.trials[0])
        progress.trial_started(300)
        progress.bar.refresh()
        screen = console.file.getvalue()
    assert "probing: trial 2, batch 300" in screen
    assert __import__("re").search(r"elapsed\s+\d:\d\d:\d\d", screen)


def test_tune_progress_elsewhere_is_plain_lines_with_the_time_so_far_and_left(capsys):
    with report.tune_progress(1, total=3) as progress:
        progress.trial_started(16, 80)
        progress.trial_done(tune_trial(16, 80, 0.31))
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "candidate" in line)
    assert __import__("re").search(r"\(1/3 done, 0:00:0\d elapsed, about 0:00:\d\d left\)$", line), line
    assert "\x1b" not in err  # no cursor movement or colour in a log file


def test_tune_progress_of_a_search_that_may_end_sooner_counts_against_a_bound(capsys):
    # A new user's halving search ended "(34/38 done ...)" where the summary said 34
    # trials: halving's schedule is the most it may run.
    with report.tune_progress(1, total=38, at_most=True) as progress:
        progress.trial_started(16, 90)
        progress.trial_done(tune_trial(16, 90, 0.3))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "(1 of at most 38 done" in line and ", at most about " in line, line


def test_tune_progress_is_silent_with_verbose_0(capsys):
    with report.tune_progress(0, total=3) as progress:
        progress.trial_started(16, 80)
        progress.trial_done(tune_trial(16, 80, 0.31))
        progress.done(tune_result())
    assert capsys.readouterr() == ("", "")


def test_more_trials_than_expected_drop_the_estimate(capsys):
    with report.tune_progress(1, total=1) as progress:
        for batch in (16, 32):
            progress.trial_started(batch, 80)
            progress.trial_done(tune_trial(batch, 80, 0.31))
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.endswith("(0:00:00 elapsed)"), last


def tied_result():
    """Two candidates with bit-identical losses; the search's tie-break chose the second."""
    trials = [
        tune_trial(16, 80, 0.25, epoch_fraction=0.25),
        tune_trial(64, 20, 0.25, epoch_fraction=0.25),
        tune_trial(32, 40, 0.40, epoch_fraction=0.25),
    ]
    return TuneResult(batch_size=64, steps_per_epoch=20, epochs=3, val_loss=0.25, trials=trials,
                      probe=None, tuner="grid", budget_samples=4000, seconds=3.0,
                      hyperparameters=dict(trials[1].hyperparameters))


def test_a_tie_names_one_winner_in_the_table_the_summary_and_the_plots():
    result = tied_result()
    summary = report.tune_summary(result)
    assert "Train with batch_size=64, steps_per_epoch=20" in summary
    assert "Runner-up: batch 16 x 80 steps" in summary  # the other tied one, not the winner again
    first_row = rendered(report.tune_table(result)).splitlines()[4]
    assert first_row.split()[1:3] == ["64", "│"], first_row

    from autobatch import plots

    figure = plots._tune_curves(plots._figure_class(), result)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert labels[0].startswith("batch 64, 20 steps/epoch"), labels


def test_progress_inside_the_callers_own_live_display_still_works():
    # Older rich refuses a second live display (LiveError): the progress then prints lines.
    from rich.progress import Progress

    console = terminal()
    with Progress(console=console), report.tune_progress(1, total=2, console=console) as progress:
        progress.trial_started(16, 80)
        progress.trial_done(tune_trial(16, 80, 0.31))
    assert "2.0 s)" in console.file.getvalue()


def test_an_error_text_with_brackets_is_shown_as_is_not_as_markup(capsys):
    error = "InvalidArgumentError [/dim] [bold]x[/bold]"
    with report.tune_progress(1) as progress:
        progress.trial_done(tune_trial(16, 80, None, status="failed", error=error))
    assert error in capsys.readouterr().err
    assert error in rendered(report.tune_table(tune_result(trials=[
        tune_trial(16, 80, None, status="failed", error=error)])))


def test_verbose_is_0_or_1_in_any_integer_type():
    import numpy as np

    from autobatch.errors import InvalidArgumentError

    for fine in (0, 1, True, False, np.int64(1)):
        report.check_verbose(fine)
    for bad in ("yes", 2, -1, 0.5, None):
        with pytest.raises(InvalidArgumentError, match="expected 0 .* or 1"):
            report.check_verbose(bad)

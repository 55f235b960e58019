"""tune(time_budget=...): the whole search is bounded; the best so far comes back, marked."""

from __future__ import annotations

import time

import pytest

import autobatch
from autobatch import FakeMemory, InvalidArgumentError
from autobatch.search.tune import parse_duration
from tests.search.test_tune import (
    make_model,
    regression_data,
    small_search,
)


@pytest.mark.parametrize("value, seconds", [(90, 90.0), (0.5, 0.5), ("90s", 90.0),
                                            ("10min", 600.0), ("1.5h", 5400.0), (" 2 m ", 120.0)])
def test_a_duration_is_seconds_or_a_number_with_a_unit(value, seconds):
    assert parse_duration(value, "time_budget") == seconds


@pytest.mark.parametrize("value", ["soon", "-5s", 0, "10 parsecs", True, float("inf")])
def test_a_bad_duration_says_what_was_expected(value):
    with pytest.raises(InvalidArgumentError, match=r"time_budget=.*expected positive seconds "
                                                   r"or a string such as '90s', '10min'"):
        parse_duration(value, "time_budget")


class SlowFromSecondRun(FakeMemory):
    """The second training run starts only once ``until`` has passed."""

    def __init__(self, until: float):
        super().__init__(limit_bytes=2**40)
        self.until = until

    def before_trial(self, batch_size: int) -> None:
        if self.trial_batch_sizes:
            time.sleep(max(0.0, self.until - time.perf_counter()))
        super().before_trial(batch_size)


def test_the_best_so_far_comes_back_when_time_runs_out_and_a_rerun_finishes(tmp_path, probed):
    x, y = regression_data()
    options = dict(probe=probed, batch_sizes=[16, 32], steps_per_epoch=[1.0])
    budget = 4.0
    model = make_model()
    memory = SlowFromSecondRun(until=time.perf_counter() + budget)
    cut = autobatch.tune(model, (x, y), **small_search(
        tmp_path, memory=memory, time_budget=budget, **options))
    assert cut.out_of_time and cut.time_budget == budget
    statuses = {t.batch_size: t.status for t in cut.trials}
    assert statuses[16] != "out of time" and statuses[32] == "out of time"
    assert [t.epochs_run for t in cut.trials if t.batch_size == 32] == [1]
    assert "time budget ran out" in autobatch.report.tune_summary(cut)

    memory = FakeMemory(2**40)
    finished = autobatch.tune(model, (x, y), **small_search(
        tmp_path, memory=memory, **options))
    assert memory.trial_batch_sizes == [32]  # batch 16's run is not trained again
    assert not finished.out_of_time
    whole = autobatch.tune(make_model(), (x, y), **small_search(tmp_path / "whole", **options))
    assert (finished.batch_size, finished.val_loss) == (whole.batch_size, whole.val_loss)


def test_max_trials_still_bounds_a_search_with_a_time_budget(tmp_path, probed):
    x, y = regression_data()
    result = autobatch.tune(make_model(), (x, y), **small_search(
        tmp_path, probe=probed, max_trials=2, time_budget="1h"))
    assert len(result.trials) == 2 and not result.out_of_time

"""benchmarks/distributed_bench.py's pure logic: the speedup, the same-best check and the
table, on run records shaped as `run` writes them. No processes here (the multi-process
behaviour is in tests/search/test_distributed.py; the benchmark itself takes minutes)."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import distributed_bench


def run_record(num_workers, *, search, wall, chief_cpu, worker_cpu, best=(64, 6), losses=None):
    cpu = {"chief": chief_cpu, **{f"worker-{i}": worker_cpu for i in range(num_workers)}}
    return {
        "num_workers": num_workers, "wall_seconds": wall, "search_seconds": search,
        "cpu_seconds": cpu, "chief_cpu_share": chief_cpu / sum(cpu.values()),
        "best": {"batch_size": best[0], "steps_per_epoch": best[1], "epochs": 9,
                 "val_loss": 0.125},
        "num_trials": 25, "candidates": losses or [[16, 23, 0.2], [64, 6, 0.125]],
    }


def test_the_summary_compares_two_workers_with_one():
    one = run_record(1, search=80.0, wall=100.0, chief_cpu=5.0, worker_cpu=75.0)
    two = run_record(2, search=45.0, wall=65.0, chief_cpu=5.0, worker_cpu=40.0)
    summary = distributed_bench.summary([one, two])
    assert summary["speedup_search"] == 80.0 / 45.0
    assert summary["speedup_wall"] == 100.0 / 65.0
    assert summary["same_best_candidate"] and summary["same_val_losses"]
    assert summary["speedup_goal"] == distributed_bench.SPEEDUP_GOAL == 1.6


def test_another_best_candidate_or_score_is_reported():
    one = run_record(1, search=80.0, wall=100.0, chief_cpu=5.0, worker_cpu=75.0)
    two = run_record(2, search=45.0, wall=65.0, chief_cpu=5.0, worker_cpu=40.0, best=(16, 23),
                     losses=[[16, 23, 0.2], [64, 6, 0.126]])
    summary = distributed_bench.summary([one, two])
    assert not summary["same_best_candidate"]
    assert not summary["same_val_losses"]


def test_the_table_shows_the_chiefs_share_of_the_cpu():
    runs = [run_record(1, search=80.0, wall=100.0, chief_cpu=5.0, worker_cpu=75.0),
            run_record(2, search=45.0, wall=65.0, chief_cpu=5.0, worker_cpu=40.0)]
    lines = distributed_bench.table(runs).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| halving | 1 |")
    assert "| 64 x 6 |" in lines[2] and lines[2].endswith("| 6.2% |")  # 5 of 80 CPU seconds
    assert lines[3].endswith("| 5.9% |")  # 5 of 85


def test_the_bound_counts_halvings_rounds_as_barriers_and_the_grids_runs_as_free():
    # Round one: four runs of 2 s; round two: one run of 6 s. Two workers: 4 s, then 6 s.
    trained = [[100, 2.0]] * 4 + [[300, 6.0]]
    assert distributed_bench.two_worker_bound(trained, rounds_wait=True) == 14.0 / 10.0
    # All independent (the grid): half of 14 s, 7 s, above the slowest run.
    assert distributed_bench.two_worker_bound(trained, rounds_wait=False) == 2.0
    # One run longer than all the others together bounds it.
    assert distributed_bench.two_worker_bound([[1, 9.0], [1, 1.0]], rounds_wait=False) == 10.0 / 9.0


def test_the_record_times_only_trials_that_trained():
    # A trial read off its batch size's shared run (its seconds are that run's) or repeating
    # an earlier trial trained nothing: counting its seconds would count a run twice.
    trials = [
        {"batch_size": 16, "steps_per_epoch": 23, "val_loss": 0.3, "budget_samples": 100,
         "seconds": 2.0},
        {"batch_size": 16, "steps_per_epoch": 45, "val_loss": 0.25, "budget_samples": 100,
         "seconds": 2.0, "shared_run": "trial-0"},
        {"batch_size": 16, "steps_per_epoch": 45, "val_loss": 0.25, "budget_samples": 100,
         "seconds": 2.0, "same_as": "trial-1"},
        {"batch_size": 64, "steps_per_epoch": 6, "val_loss": 0.2, "budget_samples": 300,
         "seconds": 6.0, "shared_run": None, "same_as": None},
        {"batch_size": 128, "steps_per_epoch": 3, "val_loss": None, "budget_samples": 100,
         "seconds": 1.0},
    ]
    result = {"seconds": 9.5, "batch_size": 64, "steps_per_epoch": 6, "epochs": 9,
              "val_loss": 0.2, "trials": trials}
    record = distributed_bench.record(result, "halving", 1, 12.0, {"chief": 1.0, "worker-0": 9.0})
    assert record["trained"] == [[100, 2.0], [300, 6.0], [100, 1.0]]
    assert record["candidates"] == [(16, 23, 0.3), (16, 45, 0.25), (64, 6, 0.2)]
    assert record["num_trials"] == 5 and record["chief_cpu_share"] == 0.1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_pinning_confines_a_worker_to_its_own_cpu_and_leaves_the_chief_free():
    cpus = sorted(os.sched_getaffinity(0))
    show = ["-c", "import os; print(sorted(os.sched_getaffinity(0)))"]

    def affinity(role):
        done = subprocess.run([sys.executable, "-c", distributed_bench.PIN_TO_OWN_CPU, *show],
                              env={**os.environ, "KERASTUNER_TUNER_ID": role},
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    assert affinity("chief") == cpus
    assert affinity("worker-0") == [cpus[0]]
    assert affinity(f"worker-{len(cpus) + 1}") == [cpus[1 % len(cpus)]]

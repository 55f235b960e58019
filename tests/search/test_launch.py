"""`distributed.launch`: when the chief is stopped once its workers are gone."""

from __future__ import annotations

import sys

import pytest

from autobatch.search import distributed

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and processes")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_chief_still_writing_its_results_after_its_workers_left_is_not_stopped():
    # Workers leave as soon as the oracle ends the search; the chief then writes its results.
    # The distributed benchmark's chief was stopped (SIGTERM) right after writing its JSON.
    outcomes = distributed.launch(
        python("import time; time.sleep(2)"), python("pass"), num_workers=2, timeout=30
    )
    assert [o.tuner_id for o in outcomes] == ["chief", "worker-0", "worker-1"]
    assert [o.returncode for o in outcomes] == [0, 0, 0]


def test_a_chief_whose_workers_all_failed_is_stopped_at_once():
    outcomes = distributed.launch(
        python("import time; time.sleep(60)"), python("raise SystemExit(3)"), num_workers=1,
        timeout=60,
    )
    chief = outcomes[0]
    assert chief.returncode != 0
    assert chief.seconds < 30
    assert outcomes[1].returncode == 3


def test_a_chief_that_never_ends_after_clean_workers_is_stopped_after_the_timeout():
    outcomes = distributed.launch(
        python("import time; time.sleep(60)"), python("pass"), num_workers=1, timeout=1
    )
    assert outcomes[0].returncode != 0
    assert outcomes[0].seconds < 30


def test_a_chief_is_not_stopped_when_one_worker_failed_and_another_finished_the_search():
    # worker-0 dies early; worker-1 ends cleanly once the search is over; the chief then
    # writes its results and must not be stopped while it does.
    worker = python(
        "import os, sys, time\n"
        "if os.environ['KERASTUNER_TUNER_ID'] == 'worker-0': sys.exit(3)\n"
        "time.sleep(0.5)"
    )
    outcomes = distributed.launch(
        python("import time; time.sleep(2)"), worker, num_workers=2, timeout=30
    )
    assert [o.returncode for o in outcomes] == [0, 3, 0]


def test_workers_that_fit_side_by_side_each_get_their_own_cpus(monkeypatch):
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5})
    assert distributed.worker_cpus(2, 2) == [{0, 1}, {2, 3}]
    assert distributed.worker_cpus(5, 1) == [{0}, {1}, {2}, {3}, {5}]
    assert distributed.worker_cpus(3, 2) is None  # 6 threads on 5 CPUs: left to the scheduler
    assert distributed.worker_cpus(1, 4) is None  # one worker: nothing to share
    assert distributed.worker_cpus(2, None) is None


@pytest.mark.skipif(not hasattr(distributed.os, "sched_getaffinity")
                    or len(distributed.os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_launched_workers_run_on_their_own_cpus(tmp_path):
    cpus = sorted(distributed.os.sched_getaffinity(0))
    # Read after a pause: the launcher pins a worker just after it starts.
    worker = python(
        "import os, time\n"
        "time.sleep(0.5)\n"
        f"open(os.path.join({str(tmp_path)!r}, os.environ['KERASTUNER_TUNER_ID']), 'w')"
        ".write(repr(sorted(os.sched_getaffinity(0))))"
    )
    outcomes = distributed.launch(python("pass"), worker, num_workers=2, threads=1, timeout=30)
    assert [o.returncode for o in outcomes] == [0, 0, 0]
    assert (tmp_path / "worker-0").read_text() == repr([cpus[0]])
    assert (tmp_path / "worker-1").read_text() == repr([cpus[1]])

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

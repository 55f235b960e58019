"""A search killed with SIGKILL mid-candidate resumes in a new process: finished candidates
are not trained again, and the answer is the uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys, time
import keras
import autobatch
from tests.search.test_tune import make_model, regression_data, small_search

directory, stall_at, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = []

class StallAt(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        runs.append(self.params["steps"])
        if len(runs) == stall_at:
            open(out + ".stalled", "w").close()
            time.sleep(600)  # killed here, mid-candidate

result = autobatch.tune(make_model(), regression_data(), callbacks=[StallAt()],
                        **small_search(directory, tuner="halving"))
with open(out, "w") as file:
    json.dump({"fit_kwargs": result.fit_kwargs(), "val_loss": result.val_loss,
               "runs": len(runs), "trials": len(result.trials)}, file)
"""


def run_child(tmp_path: Path, directory: Path, stall_at: int, name: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, str(script), str(directory), str(stall_at), str(tmp_path / name)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def finished(process: subprocess.Popen, out: Path) -> dict:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-2000:]
    return json.loads(out.read_text())


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_search_killed_mid_candidate_resumes_without_retraining(tmp_path):
    directory = tmp_path / "search"
    killed = run_child(tmp_path, directory, stall_at=3, name="killed.json")
    stalled = tmp_path / "killed.json.stalled"
    deadline = time.monotonic() + 300
    while not stalled.exists():
        assert killed.poll() is None, killed.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()

    resumed = finished(run_child(tmp_path, directory, 0, "resumed.json"), tmp_path / "resumed.json")
    whole = finished(run_child(tmp_path, tmp_path / "whole", 0, "whole.json"),
                     tmp_path / "whole.json")
    # The 2 runs that finished before the kill are not trained again.
    assert resumed["runs"] == whole["runs"] - 2
    assert resumed["trials"] == whole["trials"]
    assert (resumed["fit_kwargs"], resumed["val_loss"]) == (whole["fit_kwargs"], whole["val_loss"])

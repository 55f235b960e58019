"""A probe worker: one fresh process that loads the model and data, runs one job, and exits.

Run by `autobatch.probing.isolated` as ``python -m autobatch.probing.worker JOB.json``. The
job is one trial (a few training steps at one batch size) or one verification (real epochs
with validation). The answer is one line on stdout, ``@@autobatch-worker <json>``; a typed
autobatch error travels the same way and is raised again in the supervisor. A worker that
the OOM killer ends prints nothing: the supervisor sees exit status -9 and counts the batch
as out of memory.

The worker asks the kernel to choose it first when memory runs out (``oom_score_adj``
1000): in a cgroup, the OOM killer must end the worker, never the supervisor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

MARKER = "@@autobatch-worker "


def _volunteer_for_oom_killer() -> None:
    # Raising one's own score needs no privilege; where /proc is missing or read-only the
    # worker still runs, and the supervisor, if killed instead, fails as an in-process
    # probe would.
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def _memory(job: dict[str, Any]) -> Any:
    from autobatch import _units
    from autobatch.devices import resolve_memory_limit
    from autobatch.memory import detect_memory

    limit = job.get("memory_limit")
    return detect_memory(None if limit is None else _units.parse_bytes(resolve_memory_limit(limit)))


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Load the model and data named in ``job``, run it, and describe what happened."""
    from autobatch._versions import library_versions
    from autobatch.data import ArrayData
    from autobatch.data_check import check_data_matches_model
    from autobatch.files import load_model, load_npz
    from autobatch.probing.trial import run_trial
    from autobatch.probing.verify import MAX_STEPS, verify

    for folder in job.get("import_paths", []):
        if folder not in sys.path:
            sys.path.append(folder)
    for module in job.get("imports", []):
        _import_for_custom_objects(module)
    model = load_model(Path(job["model"]))
    data = ArrayData.from_tuple(load_npz(Path(job["data"])))  # what as_training_data does with arrays
    check_data_matches_model(model, data)
    memory = _memory(job)
    memory.release()
    answer: dict[str, Any] = {
        "memory": memory.describe(),
        "baseline_bytes": memory.current_bytes(),
        "num_samples": data.num_samples,
        "backend": _keras_backend(),
        "versions": library_versions(),
    }
    batch_size = int(job["batch_size"])
    # Kept alive through the run: see ArrayData.unfed_pipeline (on a large dataset the cut
    # trials would otherwise count a fraction of the copies that fit makes of it).
    unfed = data.unfed_pipeline(
        data.probe_inputs(batch_size, int(job["steps"])) if job["kind"] == "trial"
        else data.verification_inputs(batch_size, MAX_STEPS)
    )
    outcome: Any
    if job["kind"] == "trial":
        # The arrays as loaded, not `for_trials` tensors: one trial per process copies them
        # once, as the user's fit will (the tensors would hold a second copy).
        outcome = run_trial(
            model,
            data,
            batch_size,
            memory,
            steps=int(job["steps"]),
            stop_above_bytes=job.get("stop_above_bytes"),
        )
    else:
        outcome = verify(
            model,
            data,
            batch_size,
            memory,
            stop_above_bytes=job.get("stop_above_bytes"),
            growth_tolerance_bytes=int(job["growth_tolerance_bytes"]),
        )
    answer["outcome"] = dataclasses.asdict(outcome)
    del unfed
    return answer


def _import_for_custom_objects(module: str) -> None:
    import importlib

    from autobatch.errors import InvalidArgumentError

    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - any failure to import is the user's to fix
        raise InvalidArgumentError(
            f"worker_imports names {module!r}, which a probe worker cannot import "
            f"({type(error).__name__}: {error}). Expected an importable module that registers "
            "the model's custom layers (@keras.saving.register_keras_serializable()); check "
            "that it is on PYTHONPATH."
        ) from error


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()


def main(argv: list[str]) -> int:
    from autobatch.errors import AutobatchError

    _volunteer_for_oom_killer()
    job = json.loads(Path(argv[0]).read_text())
    if not job.get("debug"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        answer = run(job)
    except AutobatchError as error:
        answer = {"error": {"type": type(error).__name__, "message": str(error)}}
    sys.stdout.write(MARKER + json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a process by the supervisor
    sys.exit(main(sys.argv[1:]))

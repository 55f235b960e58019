"""The probe with every trial in a fresh worker process, under a thin supervisor.

Why: on host RAM an in-process probe cannot be made safe or exact. TF/CPU's allocator keeps
blocks of every shape a trial used, so the same batch peaks 33-81 MiB higher in the probe's
process than in a new one, and a new size can need a fresh region all at once (a CNN's step
of +30 samples cost more than 115 MiB where its line predicted about 15): the OOM killer
then ends the probe's own process. Here each trial and each verification is a new process
(`autobatch.probing.worker`) that loads the model and data from files and trains once:

- its peak is exactly what a new process training at that batch reaches (a pipeline's next
  job, or ``autobatch probe`` followed by a training script), with nothing left over from
  earlier trials;
- a worker the kernel kills is an out-of-memory observation, as on a GPU: the supervisor
  survives it (the worker volunteers for the OOM killer), records the batch as too large and
  goes on, so the strategy may take the bold steps of a catchable device;
- the supervisor itself imports neither Keras nor TensorFlow when given file paths, so it
  takes almost nothing from the memory the workers measure.

The cost is a process start per trial (5-6 s to import TensorFlow on a 2-core machine).
Called with a model object (``probe(model, data, isolate=True)``), the model and arrays are
saved to a temporary folder first; the workers then share the limit with the caller's
process, so their answer is what fits *while the caller holds what it holds now*.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from autobatch._units import format_bytes
from autobatch.errors import (
    AutobatchError,
    InvalidArgumentError,
    TrialError,
    WorkerDoesNotFitError,
    kind_of,
)
from autobatch.probing.answer import build_result, trial_record, verified_answer
from autobatch.probing.replicas import ReplicaProbeStrategy
from autobatch.probing.strategy import Observation
from autobatch.probing.trial import TrialOutcome
from autobatch.probing.verify import VerificationOutcome
from autobatch.probing.worker import MARKER
from autobatch.results import ProbeResult

#: Exit status of a process ended by SIGKILL, which is how the OOM killer ends a worker.
KILLED = -9
#: The least margin on host RAM with workers. In-process it is 64 MiB (`HostMemory`), for
#: malloc's jumps within one process; new processes repeat a trial closely (an MLP at 4072
#: and 4085 samples peaked at 653 and 645 MiB in two workers), and the answer's real epochs
#: are verified in a new process before it is returned.
MIN_MARGIN_BYTES = 32 * 2**20
#: The default margin with workers: what a GPU keeps (a killed worker is an observation, as
#: a GPU's out-of-memory error is), not host RAM's in-process 10%. That kept 84 MiB on an
#: LSTM whose real training at 887 samples peaked 46 MiB under its 1180 MiB limit, and the
#: answer's real epochs are verified in a new process before it is returned.
DEFAULT_MARGIN = 0.05
#: Last characters of a failed worker's stderr quoted in the error.
STDERR_TAIL = 1500


@dataclass(frozen=True)
class WorkerAnswer:
    """What one worker reported: the memory it saw and its job's outcome (None: killed)."""

    memory: dict[str, Any]
    baseline_bytes: int
    num_samples: int | None
    backend: str
    versions: dict[str, str]
    outcome: dict[str, Any] | None


class Workers:
    """Starts one worker process per job on the saved model and data.

    Example:
        >>> workers = Workers(Path("model.keras"), Path("data.npz"), memory_limit=None)
        >>> answer = workers.run("trial", 32, steps=3, stop_above_bytes=None)
        >>> answer.outcome is None  # killed: batch 32 ran out of host memory
    """

    def __init__(
        self,
        model_path: Path,
        data_path: Path,
        *,
        memory_limit: int | str | None,
        imports: Sequence[str] = (),
        import_paths: Sequence[str] = (),
        debug: bool = False,
        command: list[str] | None = None,
    ) -> None:
        self.model_path = model_path
        self.data_path = data_path
        self.memory_limit = memory_limit
        self.imports = list(imports)
        #: Folders the worker adds to its module path before ``imports``.
        self.import_paths = list(import_paths)
        self.debug = debug
        # Tests swap in a worker that fakes its memory; see tests/probing/test_isolated.py.
        self.command = command or [sys.executable, "-m", "autobatch.probing.worker"]
        #: The last answer that was not a kill: the memory a worker saw, for the result.
        self.last: WorkerAnswer | None = None

    def run(self, kind: str, batch_size: int, **options: Any) -> WorkerAnswer:
        job = {
            "kind": kind,
            "batch_size": batch_size,
            "model": str(self.model_path),
            "data": str(self.data_path),
            "memory_limit": self.memory_limit,
            "imports": self.imports,
            "import_paths": self.import_paths,
            "debug": self.debug,
            **options,
        }
        with tempfile.TemporaryDirectory(prefix="autobatch-job-") as folder:
            job_file = Path(folder) / "job.json"
            job_file.write_text(json.dumps(job))
            done = subprocess.run(
                [*self.command, str(job_file)],
                env=_worker_environment(),
                stdout=subprocess.PIPE,
                stderr=None if self.debug else subprocess.PIPE,
                text=True,
                check=False,
            )
        if done.returncode == KILLED:
            if self.last is None:
                raise WorkerDoesNotFitError(
                    f"The first probe worker (batch size {batch_size}) was killed (SIGKILL) "
                    "before it reported: the model and data alone do not fit in the memory "
                    "left, or something else killed it. Free memory or raise the limit."
                )
            return dataclasses.replace(self.last, outcome=None)
        answer = _parse(done, batch_size)
        self.last = answer
        return answer


def _worker_environment() -> dict[str, str]:
    """This environment, with this copy of autobatch first on the path: the worker must run
    the same code as its supervisor (a source checkout, whatever the current directory)."""
    root = str(Path(__file__).resolve().parents[2])  # holds this copy's autobatch/
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else root + os.pathsep + path}


def _parse(done: subprocess.CompletedProcess, batch_size: int) -> WorkerAnswer:
    lines = [line for line in (done.stdout or "").splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or "")[-STDERR_TAIL:].strip() or "(no output; run with debug)"
        raise TrialError(
            f"The probe worker at batch size {batch_size} exited with status "
            f"{done.returncode} without an answer. Its last output:\n{tail}"
        )
    payload = json.loads(lines[-1][len(MARKER):])
    if "error" in payload:
        kinds = {kind.__name__: kind for kind in _error_classes(AutobatchError)}
        raise kinds.get(payload["error"]["type"], TrialError)(payload["error"]["message"])
    return WorkerAnswer(**payload)


def _error_classes(base: type[AutobatchError]) -> list[type[AutobatchError]]:
    """``base`` and its subclasses, however deep: the errors a worker may report by name."""
    return [base, *(kind for sub in base.__subclasses__() for kind in _error_classes(sub))]


def trial_outcome(answer: WorkerAnswer, batch_size: int) -> TrialOutcome:
    if answer.outcome is None:
        return TrialOutcome(batch_size, None, 0, None, 0.0, True)
    return TrialOutcome(**answer.outcome)


def verification_outcome(answer: WorkerAnswer, batch_size: int) -> VerificationOutcome:
    if answer.outcome is None:
        return VerificationOutcome(batch_size, None, 0, 0, out_of_memory=True)
    return VerificationOutcome(**answer.outcome)


def saved_for_workers(model: Any, training_data: Any, folder: Path) -> tuple[Path, Path]:
    """Save a model object and its arrays where workers can load them; the paths."""
    import numpy as np

    from autobatch.data import ArrayData

    if not isinstance(training_data, ArrayData):
        raise InvalidArgumentError(
            f"isolate=True needs the data as arrays; got {training_data.describe()}. Pass "
            "(x, y) NumPy arrays (dicts of arrays for named inputs), or isolate=False to "
            "run the trials in this process."
        )
    arrays: dict[str, Any] = {}
    for prefix, value in (("x", training_data.x), ("y", training_data.y)):
        if isinstance(value, dict):
            arrays.update({f"{prefix}_{name}": np.asarray(v) for name, v in value.items()})
        elif isinstance(value, (list, tuple)):
            raise InvalidArgumentError(
                f"isolate=True cannot save {prefix} given as {kind_of(value)} of "
                "arrays: workers match inputs by name. Pass a dict {input_name: array}, or "
                "isolate=False."
            )
        elif value is not None:
            arrays[prefix] = np.asarray(value)
    if training_data.sample_weight is not None:
        arrays["sample_weight"] = np.asarray(training_data.sample_weight)
    model_path, data_path = folder / "model.keras", folder / "data.npz"
    model.save(model_path)
    np.savez(data_path, **arrays)
    return model_path, data_path


def probe_in_workers(
    model_path: Path,
    data_path: Path,
    *,
    memory_limit: int | str | None,
    margin: float | None,
    max_batch_size: int | None,
    steps_per_trial: int,
    verbose: int,
    worker_imports: Sequence[str] = (),
    import_paths: Sequence[str] = (),
    command: list[str] | None = None,
) -> ProbeResult:
    """`autobatch.probe` with each trial and verification in a new process (see the module)."""
    from autobatch import report
    from autobatch.memory.host import HostMemory

    started = time.perf_counter()
    own_memory = HostMemory()
    own_memory.release()
    memory_before = own_memory.current_bytes()
    workers = Workers(
        model_path, data_path, memory_limit=memory_limit, imports=worker_imports,
        import_paths=import_paths, command=command,
    )
    progress = report.probe_progress(verbose)
    history: list[Observation] = []
    outcomes: list[tuple[TrialOutcome, bool]] = []
    verifications: list[VerificationOutcome] = []
    with progress:
        # Batch 1 first, as on host RAM in-process: if it does not fit, nothing does. Its
        # worker also reports the limit and the memory a loaded model and data take.
        progress.trial_started(1)
        first = workers.run("trial", 1, steps=steps_per_trial, stop_above_bytes=None)
        memory = first.memory
        limit, baseline = int(memory["limit_bytes"]), first.baseline_bytes
        if baseline >= limit:
            raise WorkerDoesNotFitError(
                f"The memory limit is {format_bytes(limit)} ({memory['limit_source']}) but a "
                f"worker holding the model and data already uses {format_bytes(baseline)}, "
                "before any training step. Raise memory_limit, or free memory."
            )
        sample_cap = first.num_samples
        if max_batch_size is not None:
            sample_cap = min(sample_cap or max_batch_size, max_batch_size)
        # Workers load the model from its file, without the caller's tf.distribute strategy
        # or Keras distribution: they train on one device (``num_replicas`` 1).
        strategy = ReplicaProbeStrategy(
            1,
            limit_bytes=limit,
            baseline_bytes=baseline,
            margin=DEFAULT_MARGIN if margin is None else margin,
            max_batch_size=sample_cap,
            start_batch_size=1,
            # A killed worker is an observation, not the end: bold steps are affordable.
            oom_is_catchable=True,
            # Each trial starts a process (5-6 s of TensorFlow import on 2 cores), and near the
            # edge peaks scatter by tens of MiB between processes, which a finer bracket only
            # turns into more trials (a CNN's 2% bracket took 11 trials, 5% takes 9, for at
            # most 5% of the answer; 10% under a near miss, see ProbeStrategy._next).
            tolerance=0.05,
            min_margin_bytes=min(int(memory["min_margin_bytes"]), MIN_MARGIN_BYTES),
            measured_answers_only=True,
        )

        def observe(outcome: TrialOutcome, fitted: bool) -> None:
            observation = Observation(outcome.batch_size, outcome.peak_bytes)
            history.append(observation)
            outcomes.append((outcome, fitted))
            progress.trial_done(trial_record(outcome, fitted, strategy, observation))

        observe(trial_outcome(first, 1), False)
        while (proposal := strategy.propose(history)) is not None:
            progress.trial_started(proposal.batch_size)
            answer = workers.run(
                "trial",
                proposal.batch_size,
                steps=steps_per_trial,
                stop_above_bytes=strategy.usable_bytes,
            )
            observe(trial_outcome(answer, proposal.batch_size), proposal.fitted)

        def verify_at(batch_size: int, stop_above: int | None, tolerance: int) -> VerificationOutcome:
            answer = workers.run(
                "verify", batch_size, stop_above_bytes=stop_above, growth_tolerance_bytes=tolerance
            )
            return verification_outcome(answer, batch_size)

        found = strategy.answer(history)
        if found:
            found = verified_answer(
                verify_at, found, strategy, history, verifications, progress, retries=True
            )
    own_memory.release()
    last = workers.last  # every answer after the first: set, since the first ran
    assert last is not None
    result = build_result(
        answer=found,
        strategy=strategy,
        history=history,
        outcomes=outcomes,
        verifications=verifications,
        memory=last.memory,
        backend=last.backend,
        num_samples=first.num_samples,
        versions=last.versions,
        seconds=time.perf_counter() - started,
        memory_before=memory_before,
        memory_after=own_memory.current_bytes(),
        isolated=True,
    )
    progress.done(result)
    return result


def probe_saved_model(model: Any, training_data: Any, **options: Any) -> ProbeResult:
    """`probe_in_workers` for a model object: saved to a temporary folder for the workers."""
    folder = Path(tempfile.mkdtemp(prefix=f"autobatch-isolated-{os.getpid()}-"))
    modules, folders = _custom_object_modules(model)
    options["worker_imports"] = [*options.get("worker_imports", ()), *modules]
    try:
        model_path, data_path = saved_for_workers(model, training_data, folder)
        return probe_in_workers(model_path, data_path, import_paths=folders, **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _custom_object_modules(model: Any) -> tuple[list[str], list[str]]:
    """The modules that define ``model``'s own classes (the model, its layers at any depth,
    its loss), and the folders they are imported from, so that a worker loading the saved
    model finds them as this process did: a model object probed automatically in workers
    has no ``worker_imports`` from its caller (the zoo's batch attention model was refused,
    its layer unknown to the worker). Classes of ``__main__`` cannot be imported elsewhere.
    """
    names = [type(layer).__module__
             for layer in model._flatten_layers(include_self=True, recursive=True)]
    loss = getattr(model, "loss", None)
    if isinstance(loss, types.FunctionType):
        names.append(loss.__module__)
    elif loss is not None and not isinstance(loss, str):
        names.append(type(loss).__module__)
    modules: list[str] = []
    folders: list[str] = []
    for name in names:
        if name.split(".")[0] in ("keras", "tensorflow", "tf_keras", "builtins", "__main__"):
            continue
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if module is None or file is None or name in modules:
            continue
        modules.append(name)
        depth = name.count(".") + hasattr(module, "__path__")  # a package: its folder's parent
        parents = Path(file).resolve().parents
        if depth < len(parents) and str(parents[depth]) not in folders:
            folders.append(str(parents[depth]))
    return modules, folders

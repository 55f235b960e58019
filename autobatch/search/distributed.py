"""A search spread over processes or machines, on Keras Tuner's own chief/worker engine.

Keras Tuner decides the roles from three environment variables: ``KERASTUNER_TUNER_ID``
(``"chief"`` makes the chief), ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``. The
chief serves the oracle over gRPC and trains nothing; each worker asks it for a candidate,
trains it and reports the score. Every process runs the same ``autobatch.tune`` call, and all
of them keep their trials in one project directory (a shared file system across machines).

What this module adds to Keras Tuner's engine, and why:

- Leases (`ChiefServicer`). Keras Tuner's chief waits forever for a worker that died
  mid-trial: the trial stays "ongoing", successive halving waits for it before its next
  round, and the chief never exits. Here a worker sends a heartbeat while it trains; one
  silent for ``timeout`` seconds loses its trial, which goes to the next worker that asks.
- Workers that never hang (`WorkerClient`, keras-tuner #645). Keras Tuner's client waits up
  to an hour for every call; ours waits that long only for the first contact (the chief may
  still be probing), then ``timeout`` seconds, and a heartbeat that gets no answer stops
  the trial in training. The chief, for its part, serves until every worker it has heard
  from was told to stop (or lost its lease).
- A handshake: a worker checks that the chief runs the same search (same project name) and
  that it sees the chief's project directory (a marker file with the chief's token), so a
  worker on a stale or unshared copy fails at once instead of scoring trials no one reads.
- Our oracles work behind Keras Tuner's ``OracleClient``, which forwards only ``objective``,
  ``max_trials``, ``allow_new_entries`` and ``tune_new_entries``: everything a worker needs
  travels in the trial's hyperparameters (``tuner/epochs``, ``tuner/round``), and the list of
  finished trials is read from the shared directory (`WorkerClient.start_order`).

The gRPC server binds to the address the user named (``KERASTUNER_ORACLE_IP``, or
``AUTOBATCH_ORACLE_BIND`` to bind elsewhere, e.g. ``0.0.0.0``): ``autobatch tune --workers``
uses 127.0.0.1. The server has no authentication: bind it to a private network only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from autobatch.errors import AutobatchError, InvalidArgumentError
from autobatch.files import write_atomically

TUNER_ID = "KERASTUNER_TUNER_ID"
ORACLE_IP = "KERASTUNER_ORACLE_IP"
ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
#: The address the chief's server binds, when not the one workers connect to.
ORACLE_BIND = "AUTOBATCH_ORACLE_BIND"
#: Seconds of silence after which a worker (or, seen from a worker, the chief) is gone.
TIMEOUT_VARIABLE = "AUTOBATCH_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
#: A worker's first call waits this long for the chief, which may still be probing.
CONNECT_TIMEOUT = 600.0
#: A worker told "IDLE" (the chief waits for other workers' trials) asks again after this.
IDLE_WAIT_SECONDS = 0.2
MARKER_FILE = "autobatch_chief.json"
#: A trial id no oracle gives out: asking the chief for it returns the handshake.
HANDSHAKE_TRIAL = "autobatch-chief"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


class DistributedSearchError(AutobatchError):
    """A distributed search cannot go on: the chief is unreachable, or a worker's search or
    project directory is not the chief's."""


def role() -> str:
    """``"local"``, ``"chief"`` or ``"worker"``, from Keras Tuner's environment variables.

    Example:
        >>> os.environ.update(KERASTUNER_TUNER_ID="chief", KERASTUNER_ORACLE_IP="127.0.0.1",
        ...                   KERASTUNER_ORACLE_PORT="8000")
        >>> role()
        'chief'
    """
    if ORACLE_IP not in os.environ:
        return "local"
    missing = [name for name in (ORACLE_PORT, TUNER_ID) if not os.environ.get(name)]
    if missing:
        raise InvalidArgumentError(
            f"{ORACLE_IP}={os.environ[ORACLE_IP]!r} is set but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not. Set {ORACLE_PORT} to the chief's port "
            f"and {TUNER_ID} to 'chief' for the chief or a unique name for each worker, or "
            f"unset {ORACLE_IP} to search in this process alone."
        )
    return "chief" if "chief" in os.environ[TUNER_ID] else "worker"


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidArgumentError(
            f"{TIMEOUT_VARIABLE}={text!r}; expected positive seconds (default {DEFAULT_TIMEOUT:g})."
        )
    return value


def run_search(search: Any, *, seed: int | None, progress: Any) -> None:
    """Run the BatchTuner ``search`` in this process's role: alone, as chief or as worker."""
    current = role()
    if current == "chief":
        serve(search, progress=progress)
    elif current == "worker":
        work(search, seed=seed)
    else:
        search.search()


# --- the chief ----------------------------------------------------------------------------


def serve(search: Any, *, progress: Any = None, poll_seconds: float = 0.2) -> None:
    """Serve ``search``'s oracle until every candidate is done and every worker told so."""
    import grpc
    from keras_tuner.src import protos

    oracle = search.oracle
    search.save()  # as Keras Tuner's chief does: a restarted chief resumes from here
    token = secrets.token_hex(8)
    _write_marker(search.project_dir, {"project": search.project_name, "token": token})
    servicer = ChiefServicer(oracle, project=search.project_name, token=token,
                             lease_seconds=timeout_seconds())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = f"{bind_address()}:{os.environ[ORACLE_PORT]}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise DistributedSearchError(
            f"The chief cannot listen on {address} (in use, or not this machine's address). "
            f"Pick another {ORACLE_PORT}, or set {ORACLE_BIND} to an address of this machine."
        )
    server.start()
    reported: set[str] = set()
    try:
        while not servicer.finished():
            time.sleep(poll_seconds)
            servicer.expire_silent_workers()
            if progress is not None:
                _report_new_records(search, reported, progress)
    finally:
        server.stop(grace=2.0).wait()
        oracle.save()  # its last trial's end, so a rerun resumes from a finished search
    if progress is not None:
        _report_new_records(search, reported, progress)


def bind_address() -> str:
    """The address the chief's server binds: the one named, loopback if none is."""
    return os.environ.get(ORACLE_BIND) or os.environ.get(ORACLE_IP) or "127.0.0.1"


def _report_new_records(search: Any, reported: set[str], progress: Any) -> None:
    for record in search.records():
        if record.trial_id not in reported:
            reported.add(record.trial_id)
            if record.same_as is None:  # a repeat is not a new candidate (as BatchTuner)
                progress.trial_done(record)


class ChiefServicer:
    """Keras Tuner's oracle service, with leases on running trials and a handshake.

    Every call from a worker renews its lease; a heartbeat is a ``GetTrial`` of the trial
    it trains. A worker silent for ``lease_seconds`` is gone: its trial goes back to the
    oracle's retry queue (as Keras Tuner does for the trials of a chief that restarts), and
    the chief stops waiting for it.
    """

    def __init__(self, oracle: Any, *, project: str, token: str, lease_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from keras_tuner.src.distribute.oracle_chief import OracleServicer

        self.oracle = oracle
        self._service = OracleServicer(oracle)  # Keras Tuner's, for every call as it is
        self.project = project
        self.token = token
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.last_heard: dict[str, float] = {}
        self.expired: list[tuple[str, str]] = []  # (worker, trial_id) taken back
        self._lock = threading.Lock()

    def _heard(self, tuner_id: str | None) -> None:
        if tuner_id is not None:
            with self._lock:
                self.last_heard[tuner_id] = self.clock()

    def _owner(self, trial_id: str) -> str | None:
        ongoing = dict(self.oracle.ongoing_trials)
        return next((t for t, trial in ongoing.items() if trial.trial_id == trial_id), None)

    @property
    def stop_triggered(self) -> bool:
        """Whether the oracle has told a worker to stop: no candidate is left to hand out."""
        return bool(self._service.stop_triggered)

    # gRPC's method names, as Keras Tuner's OracleServicer spells them.
    def GetSpace(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._service.GetSpace(request, context)

    def UpdateSpace(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._service.UpdateSpace(request, context)

    def GetBestTrials(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._service.GetBestTrials(request, context)

    def CreateTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._heard(request.tuner_id)
        return self._service.CreateTrial(request, context)

    def UpdateTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._heard(self._owner(request.trial_id))
        return self._service.UpdateTrial(request, context)

    def EndTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
        self._heard(self._owner(request.trial.trial_id))
        return self._service.EndTrial(request, context)

    def GetTrial(self, request: Any, context: Any) -> Any:  # noqa: N802
        from keras_tuner.src import protos

        if request.trial_id == HANDSHAKE_TRIAL:
            trial = _handshake_trial(self.project, self.token)
            return protos.get_service().GetTrialResponse(trial=trial.to_proto())
        self._heard(self._owner(request.trial_id))
        return self._service.GetTrial(request, context)

    def expire_silent_workers(self) -> list[tuple[str, str]]:
        """Take back the trials of workers silent for longer than the lease; return them."""
        now = self.clock()
        with self._lock:
            silent = [t for t in list(self.oracle.tuner_ids)
                      if now - self.last_heard.get(t, now) > self.lease_seconds]
        taken = _release(self.oracle, silent)
        self.expired.extend(taken)
        return taken

    def finished(self) -> bool:
        """Every candidate handed out and done, and every worker heard from told to stop."""
        return self.stop_triggered and _nobody_left(self.oracle)


def _with_oracle_lock(function: Callable, oracle: Any, *args: Any) -> Any:
    """``function(oracle, *args)`` holding the oracle's own lock (keras-tuner's
    ``synchronized``, the lock every gRPC call takes), imported only when a chief runs."""
    import keras_tuner

    return keras_tuner.synchronized(function)(oracle, *args)


def _release(oracle: Any, tuner_ids: Sequence[str]) -> list[tuple[str, str]]:
    """Forget the workers ``tuner_ids``; their running trials go to the retry queue."""
    return _with_oracle_lock(_release_locked, oracle, tuner_ids)


def _release_locked(oracle: Any, tuner_ids: Sequence[str]) -> list[tuple[str, str]]:
    taken = []
    for tuner_id in tuner_ids:
        oracle.tuner_ids.discard(tuner_id)
        trial = oracle.ongoing_trials.pop(tuner_id, None)
        if trial is not None:
            oracle._retry_queue.append(trial.trial_id)  # as Oracle.reload() does
            taken.append((tuner_id, trial.trial_id))
    if taken:
        oracle.save()
    return taken


def _nobody_left(oracle: Any) -> bool:
    return bool(_with_oracle_lock(
        lambda o: not o.ongoing_trials and not o.tuner_ids, oracle))


def _handshake_trial(project: str, token: str) -> Any:
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    hp.Fixed("project", project)
    hp.Fixed("token", token)
    return keras_tuner.engine.trial.Trial(hp, trial_id=HANDSHAKE_TRIAL)


def _write_marker(project_dir: str, content: dict[str, str]) -> None:
    write_atomically(Path(project_dir, MARKER_FILE), lambda file: json.dump(content, file))


# --- a worker -----------------------------------------------------------------------------

#: Shared runs this worker is training (see `claim_run`): its heartbeat keeps them fresh.
_claims: set[str] = set()
_claims_lock = threading.Lock()


def claim_run(directory: str, name: str, load: Callable[[], Any]) -> Any:
    """The shared run ``name`` once another worker has trained it, or None once this worker
    has claimed it (then it trains the run and `release_run` ends the claim).

    Candidates that differ only in steps_per_epoch share one training run, and successive
    halving hands them out one after the other: two workers would train the same run at
    once. A claim is a file created exclusively; the claimer's heartbeat touches it, and a
    claim untouched for the timeout is a dead worker's, taken over. Alone, no claims.
    """
    if role() != "worker":
        return None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.claim")
    timeout = timeout_seconds()
    seen: tuple[float, float] | None = None  # (the claim's mtime, when we saw it change)
    while True:
        run = load()
        if run is not None:
            return run
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                mtime = os.stat(path).st_mtime
                now = time.monotonic()
                if seen is None or seen[0] != mtime:
                    seen = (mtime, now)  # local time only: machines' clocks may differ
                elif now - seen[1] > timeout:
                    os.remove(path)  # its worker stopped beating: take the run over
                    seen = None
            time.sleep(IDLE_WAIT_SECONDS)
            continue
        with _claims_lock:
            _claims.add(path)
        return None


def release_run(directory: str, name: str) -> None:
    """End this worker's claim on the shared run ``name`` (saved, or abandoned)."""
    path = os.path.join(directory, f"{name}.claim")
    with _claims_lock:
        if path not in _claims:
            return
        _claims.discard(path)
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _touch_claims() -> None:
    with _claims_lock:
        paths = list(_claims)
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)


def work(search: Any, *, seed: int | None) -> None:
    """Train candidates for the chief until it says stop; raise `DistributedSearchError`
    when it cannot be reached, instead of waiting for it (keras-tuner #645)."""
    client = WorkerClient(search.oracle, project_dir=search.project_dir,
                          timeout=timeout_seconds(), seed=seed)
    search.oracle = client
    client.check_same_search(search.project_name)
    try:
        search.search()
    except _ChiefLost:
        raise client.chief_lost or DistributedSearchError("The chief is gone.") from None
    finally:
        client.close()


class _ChiefLost(BaseException):
    """Raised in the worker's search thread by its heartbeat when the chief stops answering.
    A BaseException, so keras-tuner neither scores nor retries the trial it interrupts."""


def _raise_in_thread(thread_id: int, exception: type[BaseException]) -> None:
    """Raise ``exception`` in the thread ``thread_id`` at its next Python step. Unlike a
    SIGINT (``_thread.interrupt_main``), this works whatever the signal handlers are: a
    process started in the background (``nohup ... &``) ignores SIGINT."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exception))


class WorkerClient:
    """Keras Tuner's ``OracleClient``, made to neither hang nor spin; the tuner's oracle on
    a worker. Built from the ``OracleClient`` Keras Tuner put in place (or a local oracle).
    """

    def __init__(self, oracle: Any, *, project_dir: str, timeout: float,
                 seed: int | None = None, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        from keras_tuner.src.distribute.oracle_client import OracleClient

        self._client = OracleClient(getattr(oracle, "_oracle", oracle))
        self.project_dir = project_dir
        self.timeout = timeout
        self.seed = seed
        self.address = f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}"
        self.chief_lost: DistributedSearchError | None = None
        self.stub = self._client.stub = _DeadlineStub(self._client.stub, self, connect_timeout)
        self._training: str | None = None
        self._search_thread = threading.get_ident()  # the thread that trains, to stop
        self._closed = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="autobatch-heartbeat",
                                           daemon=True)
        self._heartbeat.start()

    def __getattr__(self, name: str) -> Any:
        if name == "_client":  # not set yet: no recursion while unpickling or half-built
            raise AttributeError(name)
        return getattr(self._client, name)

    @property
    def start_order(self) -> list[str]:
        """The trials in the shared project directory, in the order the chief numbered them
        (`BatchTuner.records` reads them; ``OracleClient`` does not forward the oracle's)."""
        ids = [name[len("trial_"):] for name in os.listdir(self.project_dir)
               if name.startswith("trial_")]
        return sorted(ids, key=lambda trial_id: (len(trial_id), trial_id))

    def create_trial(self, tuner_id: str) -> Any:
        trial = self._client.create_trial(tuner_id)
        if trial.status == "IDLE":  # the chief waits for others' trials: don't spin on it
            time.sleep(IDLE_WAIT_SECONDS)
        elif trial.status == "RUNNING":
            self._training = trial.trial_id
            if self.seed is not None:
                _seed_candidate(self.seed)
        return trial

    def end_trial(self, trial: Any) -> None:
        self._training = None
        self._client.end_trial(trial)

    def check_same_search(self, project_name: str) -> None:
        """Raise `DistributedSearchError` unless the chief runs this search, in a project
        directory this worker sees."""
        handshake = self.get_trial(HANDSHAKE_TRIAL).hyperparameters.values
        if handshake.get("project") != project_name:
            raise DistributedSearchError(
                f"The chief at {self.address} runs the search {handshake.get('project')!r}, this "
                f"worker the search {project_name!r}. Start every process with the same model "
                "and weights (one model file, or keras.utils.set_random_seed before building "
                "it), data and options, and the same probe (probe= / --probe from one "
                "autobatch.probe), so that they search the same batch sizes from the same start."
            )
        path = os.path.join(self.project_dir, MARKER_FILE)
        try:
            with open(path, encoding="utf-8") as file:
                token = json.load(file).get("token")
        except (OSError, ValueError):
            token = None
        if token != handshake.get("token"):
            state = "a stale marker of an earlier chief" if token else "no marker of the chief"
            raise DistributedSearchError(
                f"This worker does not see the chief's project directory: {path} holds "
                f"{state} at {self.address}. Every process must use the same directory: on "
                "several machines a shared file system mounted at the same path (directory= / "
                "--directory)."
            )

    def close(self) -> None:
        self._closed.set()

    def _beat(self) -> None:
        from keras_tuner.src import protos

        interval = max(0.05, self.timeout / 6)
        while not self._closed.wait(interval):
            trial_id = self._training
            if trial_id is None:
                continue
            _touch_claims()
            try:
                self.stub.GetTrial(protos.get_service().GetTrialRequest(trial_id=trial_id))
            except DistributedSearchError as error:
                if self._closed.is_set():
                    return
                self.chief_lost = error
                _raise_in_thread(self._search_thread, _ChiefLost)  # at its next Python step
                return


class _DeadlineStub:
    """The gRPC stub, each call bounded: the first waits for the chief to start, later ones
    ``timeout`` seconds; an unreachable chief raises `DistributedSearchError`."""

    def __init__(self, stub: Any, client: WorkerClient, connect_timeout: float) -> None:
        self._stub = stub
        self._client = client
        self._connect_timeout = connect_timeout
        self._connected = False

    def __getattr__(self, name: str) -> Callable[..., Any]:
        import grpc

        method = getattr(self._stub, name)

        def call(request: Any, **_ignored: Any) -> Any:
            first = not self._connected
            limit = self._connect_timeout if first else self._client.timeout
            try:
                response = method(request, wait_for_ready=True, timeout=limit)
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else error
                advice = ("Start the chief first, or check the address and port" if first else
                          "Restart it with the same command: it resumes the search")
                raise DistributedSearchError(
                    f"The chief at {self._client.address} did not answer {name} within "
                    f"{limit:g} s ({code}); it has stopped or is unreachable. {advice} "
                    f"({TIMEOUT_VARIABLE} sets how long to wait)."
                ) from None
            self._connected = True
            return response

        return call


def _seed_candidate(seed: int) -> None:
    """Seed Keras with the search's own seed before each candidate: its training is then the
    same whichever worker runs it, and the same as a retraining after
    ``keras.utils.set_random_seed(seed)`` (what `autobatch tune --seed` does in one
    process). A seed mixed with the candidate's values made every worker's run differ from
    that retraining (a new user's val_loss 0.354 retrained to 0.365)."""
    import keras

    keras.utils.set_random_seed(seed)


# --- starting a chief and workers on this machine ----------------------------------------


@dataclass(frozen=True)
class ProcessOutcome:
    """How one process of a local distributed search ended."""

    tuner_id: str
    returncode: int
    seconds: float
    cpu_seconds: float


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def role_environment(tuner_id: str, port: int, *, address: str = "127.0.0.1",
                     threads: int | None = None, timeout: float | None = None) -> dict[str, str]:
    """The environment variables that give a process its role (and thread limit)."""
    variables = {TUNER_ID: tuner_id, ORACLE_IP: address, ORACLE_PORT: str(port)}
    if threads is not None:
        variables.update({name: str(threads) for name in THREAD_VARIABLES})
    if timeout is not None:
        variables[TIMEOUT_VARIABLE] = f"{timeout:g}"
    return variables


def launch(
    chief_command: Sequence[str], worker_command: Sequence[str], *, num_workers: int,
    threads: int | None = None, chief_threads: int | None = 1, timeout: float | None = None,
    env: dict[str, str] | None = None, worker_output: Any = None,
) -> list[ProcessOutcome]:
    """Run a chief and ``num_workers`` workers on 127.0.0.1 until the search ends.

    The chief's output goes to ours. Returns each process's outcome, the chief first. When
    every worker has stopped but the chief has not, the chief is sent SIGTERM at once if
    every worker failed (none is left to train), and killed if still running ``timeout``
    seconds later (also when a worker ended cleanly: the chief is then writing its results);
    when the chief has ended, workers still running after ``timeout`` seconds are stopped.
    """
    if not (isinstance(num_workers, int) and num_workers >= 1):
        raise InvalidArgumentError(f"num_workers={num_workers!r}; expected a positive integer.")
    port = free_port()
    base = dict(os.environ if env is None else env)
    started = time.perf_counter()
    processes: dict[int, tuple[str, subprocess.Popen]] = {}

    def start(tuner_id: str, command: Sequence[str], count: int | None, output: Any) -> None:
        child_env = {**base, **role_environment(tuner_id, port, threads=count, timeout=timeout)}
        child = subprocess.Popen(list(command), env=child_env, stdout=output, stderr=output)
        processes[child.pid] = (tuner_id, child)

    outcomes: dict[str, ProcessOutcome] = {}
    try:
        start("chief", chief_command, chief_threads, None)
        for index in range(num_workers):
            start(f"worker-{index}", worker_command, threads, worker_output)
        grace_until: float | None = None
        while len(outcomes) < len(processes):
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0 or pid not in processes:
                time.sleep(0.1)
                _stop_stragglers(processes, outcomes, grace_until)
                if "chief" in outcomes and grace_until is None:
                    grace_until = time.perf_counter() + (timeout or DEFAULT_TIMEOUT)
                continue
            tuner_id, child = processes[pid]
            child.returncode = os.waitstatus_to_exitcode(status)
            outcomes[tuner_id] = ProcessOutcome(
                tuner_id, child.returncode, time.perf_counter() - started,
                usage.ru_utime + usage.ru_stime,
            )
            workers_done = all(t in outcomes for t, _ in processes.values() if t != "chief")
            if workers_done and "chief" not in outcomes:
                if all(o.returncode != 0 for t, o in outcomes.items() if t != "chief"):
                    _terminate(processes, "chief")  # no worker left to train: it would wait forever
                if grace_until is None:
                    # A worker that ended cleanly left because the oracle said the search is
                    # over, while the chief may still be writing its results (the benchmark's
                    # chief was stopped after writing its JSON, before it exited): it gets
                    # the grace period. After SIGTERM, the period bounds a chief ignoring it.
                    grace_until = time.perf_counter() + (timeout or DEFAULT_TIMEOUT)
            if tuner_id == "chief" and child.returncode != 0:
                grace_until = time.perf_counter()  # it failed: no worker will get a candidate
    finally:
        for tuner_id, child in processes.values():
            if tuner_id not in outcomes and child.poll() is None:
                child.kill()
                child.wait()
    order = ["chief"] + [f"worker-{i}" for i in range(num_workers)]
    return [outcomes[t] for t in order if t in outcomes]


# Both signal with os.kill, not Popen's methods: those first poll the child, which reaps it if
# it has just exited, and `launch`'s os.wait4 then finds no child to wait for and raises.
def _terminate(processes: dict[int, tuple[str, subprocess.Popen]], tuner_id: str) -> None:
    for pid, (name, _) in processes.items():
        if name == tuner_id:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _stop_stragglers(processes: dict, outcomes: dict, grace_until: float | None) -> None:
    if grace_until is not None and time.perf_counter() > grace_until:
        for pid, (tuner_id, _) in processes.items():
            if tuner_id not in outcomes:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def limit_threads(threads: int) -> None:
    """Limit this process's TensorFlow and OpenMP threads: the variables before TensorFlow
    starts, its own setting too when it is loaded but has not run yet."""
    import sys

    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        with contextlib.suppress(RuntimeError):  # already running: the variables rule
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)

"""The largest batch that fits, found by autobatch.probe and by peer strategies, against the truth.

For each zoo model, under one real memory limit:

1. **The limit.** On Linux, a cgroup of its own (v1 ``memory.limit_in_bytes`` or v2
   ``memory.max``), set to the memory a tiny training run needs plus a per-model headroom:
   a process that crosses it is killed by the kernel, as a training job in a container is.
   Where no cgroup can be made, an explicit limit: a peak above it (peak RSS less
   file-backed pages, the measure of autobatch's host backend) counts as running out, and
   autobatch gets it as ``memory_limit``.
2. **Our probe, as a pipeline step**: a fresh process inside the cgroup calls
   ``autobatch.probe("model.keras", "data.npz")`` (trials in worker processes, TensorFlow
   never imported by the caller), then loads the model and trains at the answer for real.
   It must find the limit by itself and must never be killed (a killed worker is an
   observation; the caller must survive). **As a notebook**: the probe of the model object
   in its own process (the default there), then training at its answer in that process;
   and the same in a process that trained first. The model's weights, optimizer variables
   and ``optimizer.iterations`` must be unchanged.
3. **The true largest batch**: real training, ``fit`` for ``--truth-epochs`` epochs with
   ``validation_split=0.2`` (every pass ends in its partial batch and validates at the same
   batch), in fresh processes inside the cgroup, surviving ``--truth-runs`` runs of as many
   (killed = does not fit); exponential steps from our answer, then bisection to the stated
   precision (memory grows with the batch, so fitting is monotone).
4. **Verification**: one real fit at the pipeline's answer, in a fresh process, for
   ``--verify-epochs`` epochs, must survive.
5. **Peers**, reimplemented in `benchmarks.peers` and run against the same limit in a worker
   process that trains the same model: Lightning "power" and "binsearch", Hugging Face
   Accelerate's halving (and its 1.x 0.9 factor), Ultralytics' fit at 60% of free memory.
   On host RAM running out kills the process, so each OOM event costs a restart (a fresh
   process, TensorFlow import and model build), counted in the peer's wall time.

Run (from the repository root; creating cgroups needs root):
    nice -n 10 python -m benchmarks.probe_bench --quick     # mlp only, a few minutes
    nice -n 10 python -m benchmarks.probe_bench             # all five models
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmarks import _common, peers, zoo
from benchmarks._cgroup import MemoryCage
from benchmarks._child import MARKER

#: Memory above a tiny training run's peak that each model gets (MiB): the true largest batch
#: then lands at a few hundred to a few thousand samples on CPU.
HEADROOM_MIB = {
    "mlp": 250, "cnn": 500, "mobilenet_v2": 1800, "lstm": 800, "transformer": 1800,
    "batch_attention": 400,
}
QUICK_HEADROOM_MIB = {"mlp": 200, "lstm": 400}
QUICK_MODELS = ("mlp",)
OURS = "autobatch.probe"
#: Limit kind on an accelerator: its own memory, out-of-memory errors caught, no cgroup.
DEVICE = "device"


@dataclass
class Limit:
    """The memory limit one model runs under, and how it is enforced."""

    kind: str
    """"cgroup v1", "cgroup v2", "explicit memory_limit" or "device" (an accelerator)."""
    limit_bytes: int
    baseline_bytes: int
    """Peak of a tiny training run (batch 8, one step) in a fresh process."""
    cage: MemoryCage | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "limit_bytes": self.limit_bytes,
            "baseline_bytes": self.baseline_bytes,
            "cgroup": None if self.cage is None else str(self.cage.directory),
        }


class ChildFailed(RuntimeError):
    """A benchmark child process failed for a reason other than running out of memory."""


@dataclass
class Launcher:
    """Starts `benchmarks._child` processes for one model under one limit."""

    model: str
    limit: Limit | None = None
    log_dir: Path = field(
        default_factory=lambda: Path(_common.temporary_directory("autobatch-bench-logs-"))
    )
    num_processes: int = 0

    def spec(self, job: str, **extra: Any) -> dict[str, Any]:
        spec = {"job": job, "model": self.model, **extra}
        if self.limit is None:
            return spec
        if self.limit.kind == DEVICE:
            spec["device"] = True
        elif self.limit.cage is not None:
            spec["cgroup"] = str(self.limit.cage.directory)
        else:
            spec["explicit_limit"] = self.limit.limit_bytes
        return spec

    def _popen_kwargs(self, name: str) -> dict[str, Any]:
        self.num_processes += 1
        cage = None if self.limit is None else self.limit.cage
        stderr = open(self.log_dir / f"{self.model}-{self.num_processes:03d}-{name}.log", "w")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        return {
            "cwd": _common.REPO_ROOT,
            "env": env,
            "stderr": stderr,
            "text": True,
            "preexec_fn": None if cage is None else cage.enter,
        }

    def run(self, job: str, *, timeout: float = 1800, **extra: Any) -> dict[str, Any]:
        """Run one job to its end: its result, or {"killed": True} when the OOM killer ended it."""
        kills_before = self._oom_kills()
        kwargs = self._popen_kwargs(job)
        started = time.perf_counter()
        with kwargs["stderr"]:
            completed = subprocess.run(
                [sys.executable, "-m", "benchmarks._child", json.dumps(self.spec(job, **extra))],
                stdout=subprocess.PIPE, timeout=timeout, **kwargs,
            )
        seconds = time.perf_counter() - started
        result = _parse(completed.stdout)
        if completed.returncode == 0 and result is not None:
            return {**result, "process_seconds": seconds}
        if completed.returncode in (-9, 137) and self._oom_kills() > kills_before:
            # What it reported before the kill (a probe's result, before training at it).
            return {"killed": True, "fits": False, "process_seconds": seconds, "reported": result}
        raise ChildFailed(
            f"{self.model} {job} {extra} exited with {completed.returncode}; log: "
            f"{kwargs['stderr'].name}\n{_tail(Path(kwargs['stderr'].name))}"
        )

    def _oom_kills(self) -> int:
        cage = None if self.limit is None else self.limit.cage
        return cage.oom_kills() if cage is not None else 0

    def worker(self, steps: int) -> Worker:
        return Worker(self, steps)


class Worker:
    """A trial server in a child process: the peers' oracle. Restarted after each OOM kill."""

    def __init__(self, launcher: Launcher, steps: int) -> None:
        self.launcher = launcher
        self.steps = steps
        self.process: subprocess.Popen | None = None
        self.trials: list[dict[str, Any]] = []
        self.restart_seconds = 0.0
        self.num_kills = 0
        self.ready: dict[str, Any] = {}
        self.ready = self._start()

    def _start(self) -> dict[str, Any]:
        kwargs = self.launcher._popen_kwargs("worker")
        spec = json.dumps(self.launcher.spec("worker", steps=self.steps))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._child", spec],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1, **kwargs,
        )
        self._log = kwargs["stderr"]
        ready = self._read()
        if ready is None:
            raise ChildFailed(f"worker for {self.launcher.model} died while starting; log: {self._log.name}")
        return ready

    def _read(self) -> dict[str, Any] | None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(MARKER):
                return json.loads(line[len(MARKER) :])
        return None

    def __call__(self, batch_size: int) -> int | None:
        """The peers' oracle: peak bytes of a trial at ``batch_size``, None when it ran out."""
        assert self.process is not None and self.process.stdin is not None
        kills_before = self.launcher._oom_kills()
        started = time.perf_counter()
        try:
            self.process.stdin.write(f"{batch_size}\n")
            self.process.stdin.flush()
            answer = self._read()
        except BrokenPipeError:
            answer = None
        seconds = time.perf_counter() - started
        if answer is not None and (answer["fits"] or not self._explicit_limit):
            # Fitted, or ran out with an exception the worker caught (a GPU): it goes on.
            self.trials.append({**answer, "round_trip_seconds": seconds})
            return (answer.get("peak_bytes") or 1) if answer["fits"] else None
        if answer is None:
            # The worker died: the OOM killer, or a real failure.
            returncode = self.process.wait()
            self._log.close()
            if returncode not in (-9, 137) or self.launcher._oom_kills() == kills_before:
                raise ChildFailed(
                    f"worker for {self.launcher.model} died at batch {batch_size} with "
                    f"{returncode}; log: {self._log.name}\n{_tail(Path(self._log.name))}"
                )
        else:
            # Past a simulated limit (no cgroup): a real job would have been killed here.
            self._stop()
        self.num_kills += 1
        restart_started = time.perf_counter()
        self._start()  # a killed job restarts from scratch: part of the cost of running out
        restart = time.perf_counter() - restart_started
        self.restart_seconds += restart
        self.trials.append(
            {"batch_size": batch_size, "fits": False, "killed": True, "round_trip_seconds": seconds,
             "restart_seconds": restart}
        )
        return None

    @property
    def _explicit_limit(self) -> bool:
        limit = self.launcher.limit
        return limit is not None and limit.cage is None and limit.kind != DEVICE

    @property
    def seconds(self) -> float:
        """Time spent in trials and in restarts after OOM kills (not the first start)."""
        return sum(t["round_trip_seconds"] for t in self.trials) + self.restart_seconds

    def _stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def close(self) -> None:
        self._stop()


def _parse(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- the limit and the truth


def set_up_limit(model: str, headroom_bytes: int, *, kind: str) -> Limit:
    """Measure a tiny run's peak, then make the limit: that peak plus ``headroom_bytes``.

    ``kind`` "device": the accelerator's own memory is the limit, as it is.
    """
    if kind == DEVICE:
        return Limit(DEVICE, 0, 0, None)
    # One tiny run outside any cage first: the libraries' file pages (TensorFlow's alone are
    # ~400 MiB) are then charged to the parent cgroup, where they were first read. Read for the
    # first time inside the cage, they were charged to it, and the baseline swung from 447 to
    # 1,434 MiB with the page cache's state, which made the limit meaningless.
    Launcher(model).run("fit", batch_size=8, steps=1)
    cage = None if kind == "explicit" else MemoryCage.create(model, 64 * 2**30)
    if cage is not None:
        probe_run = Launcher(model, Limit(f"cgroup v{cage.version}", cage.limit_bytes, 0, cage))
        baseline = probe_run.run("fit", batch_size=8, steps=1)["peak_bytes"]
        cage.set_limit(baseline + headroom_bytes)
        return Limit(f"cgroup v{cage.version}", baseline + headroom_bytes, baseline, cage)
    baseline = Launcher(model).run("fit", batch_size=8, steps=1)["peak_charged_bytes"]
    return Limit("explicit memory_limit", baseline + headroom_bytes, baseline, None)


def find_true_max(
    fits: Callable[[int], bool], start: int, cap: int, precision: float
) -> dict[str, Any]:
    """The largest batch that fits, from ``start``: steps of x1.25, then bisection.

    Stops when the gap between the largest fit and the smallest failure is at most
    ``max(1, precision * largest fit)``. Returns the bracket and every size tried.
    """
    tried: list[tuple[int, bool]] = []

    def test(batch_size: int) -> bool:
        verdict = fits(batch_size)
        tried.append((batch_size, verdict))
        return verdict

    low, high = 0, None
    size = max(1, min(start, cap))
    while True:  # expand up, or down, until the edge is bracketed
        if test(size):
            low = size
            if size >= cap:
                break
            size = min(cap, max(size + 1, math.ceil(size * 1.25)))
            if high is not None:
                break
        else:
            high = size
            if low:
                break
            if size == 1:
                break
            size = max(1, int(size / 1.25))
    while high is not None and high - low > max(1, precision * low):
        middle = (low + high) // 2
        if test(middle):
            low = middle
        else:
            high = middle
    return {"true_max": low, "smallest_failure": high, "tried": tried}


# ---------------------------------------------------------------------- one model, all of it


def bench_model(model: str, args: Any) -> dict[str, Any]:
    headroom = (args.headroom or {}).get(model) or (
        QUICK_HEADROOM_MIB if args.quick else HEADROOM_MIB
    )[model]
    limit = set_up_limit(model, headroom * 2**20, kind=args.limit)
    try:
        return _bench_under(model, limit, headroom, args)
    finally:
        if limit.cage is not None:
            limit.cage.close()


def _bench_under(model: str, limit: Limit, headroom: int, args: Any) -> dict[str, Any]:
    launcher = Launcher(model, limit)
    num_samples = zoo.MODELS[model].num_samples
    if limit.kind != DEVICE:
        _note(f"{model}: {limit.kind}, limit {limit.limit_bytes / 2**20:.0f} MiB "
              f"(tiny run peak {limit.baseline_bytes / 2**20:.0f} MiB + {headroom} MiB)")

    # A pipeline step: the probe given files, its trials in worker processes, in a process
    # that never imported TensorFlow; the same script then trains at the answer.
    folder = launcher.log_dir / f"{model}-files"
    folder.mkdir(exist_ok=True)
    saved = launcher.run("save", folder=str(folder))
    ours = _probe_run(
        launcher, "pipeline", job="probe_files", fit_after_epochs=args.truth_epochs,
        model_path=saved["model_path"], data_path=saved["data_path"],
    )
    answer = ours["answer"]
    if limit.kind == DEVICE and ours.get("result"):
        limit.limit_bytes = ours["result"]["limit_bytes"]

    # A notebook or script holding the model: the probe in its process (the default for a
    # model object), then training at the answer in that same process.
    notebook = _probe_run(launcher, "notebook", fit_after_epochs=args.truth_epochs)

    # A notebook: the user trained a few steps first, then probes, then trains at the answer.
    trained_first = None
    if not args.no_trained_first:
        first_batch = max(8, (answer or 64) // 2)
        trained_first = _probe_run(
            launcher, "trained first", fit_after_epochs=args.truth_epochs,
            train_first={"batch_size": first_batch, "steps": 5},
        )

    def fits(batch_size: int) -> bool:
        """Real training (``--truth-epochs`` epochs, validation_split=0.2) in fresh processes
        survives ``--truth-runs`` times out of as many."""
        runs = []
        for _ in range(args.truth_runs):
            run = launcher.run("fit", batch_size=batch_size, epochs=args.truth_epochs)
            runs.append(run)
            if not run.get("fits"):
                break
        fit_runs.setdefault(batch_size, []).extend(runs)
        return all(r.get("fits") for r in runs)

    fit_runs: dict[int, list[dict[str, Any]]] = {}
    truth = find_true_max(
        fits, start=answer or 64, cap=num_samples - num_samples // 5, precision=args.precision
    )
    truth["runs"] = {str(b): runs for b, runs in fit_runs.items()}
    _note(f"{model}: true max {truth['true_max']} (first failure {truth['smallest_failure']})")

    verification = None
    if answer:
        verification = launcher.run("fit", batch_size=answer, epochs=args.verify_epochs)
        _note(f"{model}: fresh process training at {answer} for {args.verify_epochs} epochs: "
              f"{'ok' if verification.get('fits') else 'FAILED'}")

    peer_runs = []
    for name, strategy in peer_strategies(args.quick, num_samples).items():
        if args.peers and name not in args.peers:
            continue
        worker = launcher.worker(args.trial_steps)
        try:
            run = strategy(worker, worker.ready, limit)
        finally:
            worker.close()
        peer_runs.append(
            {
                "name": name,
                "answer": run.answer,
                "trial_sizes": run.trial_sizes,
                "num_trials": run.num_trials,
                "num_oom": run.num_oom,
                "seconds": worker.seconds,
                "restart_seconds": worker.restart_seconds,
                "note": run.note,
                "trials": worker.trials,
            }
        )
        _note(f"{model}: {name} -> {run.answer} in {run.num_trials} trials, {run.num_oom} OOM, "
              f"{worker.seconds:.0f} s")
    return {
        "model": model,
        "description": zoo.describe(model),
        "num_samples": num_samples,
        "headroom_mib": headroom,
        "limit": limit.to_dict(),
        "truth": truth,
        "ours": ours,
        "notebook": notebook,
        "trained_first": trained_first,
        "verification": verification,
        "peers": peer_runs,
        "num_processes": launcher.num_processes,
    }


def _probe_run(launcher: Launcher, label: str, *, job: str = "probe", **extra: Any) -> dict[str, Any]:
    """Our probe in a fresh process, then real training at its answer in that same process.

    Returns the probe's report with ``killed`` (the probe itself was killed), ``answer`` and
    ``fit_after`` (``{"fits": False, "killed": True}`` when the training was killed).
    """
    run = launcher.run(job, **extra)
    if run.get("killed"):
        reported = run.get("reported")
        if reported is None:
            _note(f"{launcher.model} ({label}): our probe was KILLED by the OOM killer")
            return {"killed": True, "answer": 0, "spec": extra.get("train_first")}
        run = {**reported, "fit_after": {"fits": False, "killed": True}}
    run["killed"] = False
    run["spec"] = extra.get("train_first")
    if "error" in run:
        _note(f"{launcher.model} ({label}): our probe refused: {run['error'][:300]}")
        return {**run, "answer": 0}
    run["answer"] = run["result"]["max_batch_size"]
    after = run.get("fit_after") or {}
    _note(f"{launcher.model} ({label}): probe answered {run['answer']} in "
          f"{run['wall_seconds']:.1f} s; training at it in the same process: "
          f"{'ok' if after.get('fits') else 'FAILED'}")
    return run


def peer_strategies(quick: bool, num_samples: int) -> dict[str, Callable[..., peers.PeerRun]]:
    def ultralytics(oracle: Any, ready: dict[str, Any], limit: Limit) -> peers.PeerRun:
        # Free memory as Ultralytics reads it: the device total minus what is in use now.
        total = ready["limit_bytes"] or limit.limit_bytes
        return peers.ultralytics(oracle, total_bytes=total, used_bytes=ready["usage_bytes"])

    strategies: dict[str, Callable[..., peers.PeerRun]] = {
        "Lightning binsearch": lambda o, r, lim: peers.lightning_binsearch(o, num_samples=num_samples),
        "Lightning power": lambda o, r, lim: peers.lightning_power(o, num_samples=num_samples),
        "HF halving from 1024": lambda o, r, lim: peers.huggingface(o, start=1024),
        "Ultralytics 60%": ultralytics,
    }
    if not quick:
        strategies["HF x0.9 from 1024"] = lambda o, r, lim: peers.huggingface(o, start=1024, factor=0.9)
    return strategies


def _note(text: str) -> None:
    sys.stderr.write(f"[probe_bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------ the report


def rows_for(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per strategy for one model; ratios are to our probe."""
    true_max = entry["truth"]["true_max"]
    ours = entry["ours"]
    rows = []
    if not ours.get("killed"):
        result = ours["result"]
        rows.append(
            {
                "strategy": OURS,
                "answer": result["max_batch_size"],
                "num_trials": len(result["trials"]),
                "trial_sizes": [t["batch_size"] for t in result["trials"]],
                "num_oom": result["num_oom"],
                "seconds": ours["wall_seconds"],
                "killed": False,
            }
        )
    else:
        rows.append({"strategy": OURS, "answer": 0, "num_trials": None, "trial_sizes": [],
                     "num_oom": 1, "seconds": None, "killed": True})
    for run in entry["peers"]:
        rows.append(
            {
                "strategy": run["name"],
                "answer": run["answer"],
                "num_trials": run["num_trials"],
                "trial_sizes": run["trial_sizes"],
                "num_oom": run["num_oom"],
                "seconds": run["seconds"],
                "killed": run["num_oom"] > 0,
            }
        )
    base = rows[0]
    for row in rows:
        row["found_true"] = row["answer"] / true_max if true_max else None
        row["over_limit"] = bool(
            entry["truth"]["smallest_failure"] and row["answer"] >= entry["truth"]["smallest_failure"]
        )
        row["trials_vs_ours"] = (
            row["num_trials"] / base["num_trials"] if base["num_trials"] and row["num_trials"] else None
        )
        row["time_vs_ours"] = (
            row["seconds"] / base["seconds"] if base["seconds"] and row["seconds"] is not None else None
        )
    return rows


def model_table(entry: dict[str, Any]) -> str:
    rows = rows_for(entry)
    return _common.markdown_table(
        ["strategy", "answer", "found / true", "over the limit", "trials", "trial sizes",
         "OOM events", "seconds", "trials / ours", "time / ours"],
        [
            [
                r["strategy"], r["answer"], r["found_true"], "yes" if r["over_limit"] else "no",
                r["num_trials"], " ".join(str(b) for b in r["trial_sizes"]), r["num_oom"],
                r["seconds"], r["trials_vs_ours"], r["time_vs_ours"],
            ]
            for r in rows
        ],
    )


def summary_table(entries: list[dict[str, Any]]) -> str:
    """One row per model: our answer against real training, in every way a user trains next."""
    headers = ["model", "limit (MiB)", "true max", "ours", "found / true", "over",
               "verified", "our trials + verifications", "binsearch trials",
               "trials: ours / binsearch", "probe killed", "fresh fit at ours",
               "same-process fit", "notebook: answer", "notebook: found / true",
               "notebook: probe killed", "notebook: same-process fit", "left behind (MiB)",
               "model unchanged"]
    rows = []
    for entry in entries:
        table_rows = {r["strategy"]: r for r in rows_for(entry)}
        ours, binsearch = table_rows[OURS], table_rows.get("Lightning binsearch")
        run = entry["ours"]
        result = run.get("result") or {}
        count = _our_runs(result)
        notebook = entry.get("notebook") or {}
        notebook_result = notebook.get("result") or {}
        preserved = notebook.get("preserved", {})
        true_max = entry["truth"]["true_max"]
        left = None
        if notebook_result.get("memory_after_bytes") is not None:
            left = (
                notebook_result["memory_after_bytes"] - notebook_result["memory_before_bytes"]
            ) / 2**20
        rows.append(
            [
                entry["model"],
                entry["limit"]["limit_bytes"] / 2**20,
                entry["truth"]["true_max"],
                ours["answer"],
                ours["found_true"],
                "YES" if ours["over_limit"] else "no",
                "yes" if result.get("verified") else "no",
                f"{len(result.get('trials', []))} + {len(result.get('verifications', []))}",
                binsearch["num_trials"] if binsearch else None,
                (count / binsearch["num_trials"]) if binsearch and count else None,
                "KILLED" if run.get("killed") else "no",
                _verdict(entry["verification"]),
                _verdict(run.get("fit_after")),
                notebook.get("answer", "-"),
                notebook.get("answer", 0) / true_max if true_max and notebook else None,
                "KILLED" if notebook.get("killed") else "no",
                _verdict(notebook.get("fit_after")),
                left,
                "yes" if preserved and all(preserved.values()) else f"NO {preserved}",
            ]
        )
    return _common.markdown_table(headers, rows)


def trained_first_table(entries: list[dict[str, Any]]) -> str:
    """The probe in a process that trained first (a notebook), then training at its answer."""
    headers = ["model", "trained first at", "true max (fresh)", "trials in", "answer", "found / true",
               "over", "verified", "trials + verifications", "probe killed", "same-process fit"]
    rows = []
    for entry in entries:
        run = entry.get("trained_first")
        if not run:
            continue
        true_max = entry["truth"]["true_max"]
        failure = entry["truth"]["smallest_failure"]
        result = run.get("result") or {}
        answer = run.get("answer", 0)
        rows.append(
            [
                entry["model"],
                (run.get("spec") or {}).get("batch_size", "-"),
                true_max,
                "-" if not result else ("workers" if result.get("isolated") else "this process"),
                answer,
                answer / true_max if true_max else None,
                "YES" if failure and answer >= failure else "no",
                "yes" if result.get("verified") else "no",
                f"{len(result.get('trials', []))} + {len(result.get('verifications', []))}",
                "KILLED" if run.get("killed") else ("no (refused)" if run.get("error") else "no"),
                _verdict(run.get("fit_after")),
            ]
        )
    return _common.markdown_table(headers, rows)


def _our_runs(result: dict[str, Any]) -> int:
    """Our probe's training runs: trials and verifications (each a real training run)."""
    return len(result.get("trials", [])) + len(result.get("verifications", []))


def _verdict(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    if run.get("fits"):
        return "ok"
    return "KILLED" if run.get("killed") else "FAILED"


def plot(entries: list[dict[str, Any]], directory: Path, stem: str) -> Path:
    plt = _common.pyplot()
    figure, axes = plt.subplots(1, len(entries), figsize=(4.2 * len(entries), 4), squeeze=False)
    for axis, entry in zip(axes[0], entries, strict=False):
        for index, row in enumerate(rows_for(entry)):
            sizes = row["trial_sizes"]
            fits = _fits_sequence(entry, row["strategy"])
            axis.plot(range(1, len(sizes) + 1), sizes, marker="o", markersize=3,
                      label=row["strategy"], color=f"C{index}")
            failed = [(i + 1, b) for i, (b, ok) in enumerate(zip(sizes, fits, strict=False)) if not ok]
            if failed:
                axis.scatter(*zip(*failed, strict=True), marker="x", s=50, color=f"C{index}")
        axis.axhline(entry["truth"]["true_max"], color="black", linestyle="--", linewidth=0.8,
                     label="true max")
        axis.set_yscale("log")
        axis.set_xlabel("trial")
        axis.set_title(f"{entry['model']} (x = out of memory)")
    axes[0][0].set_ylabel("batch size")
    axes[0][-1].legend(fontsize=7)
    return _common.save_figure(figure, directory, f"{stem}-trials")


def _fits_sequence(entry: dict[str, Any], strategy: str) -> list[bool]:
    if strategy == OURS:
        return [t["peak_bytes"] is not None for t in entry["ours"].get("result", {}).get("trials", [])]
    run = next(r for r in entry["peers"] if r["name"] == strategy)
    return [t["fits"] for t in run["trials"]]


def _headroom(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    if name not in zoo.MODELS or not value.isdigit():
        raise ValueError(f"--headroom expects MODEL=MIB with MODEL in {sorted(zoo.MODELS)}, got {text!r}")
    return name, int(value)


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(zoo.MODELS), help="default: all (quick: mlp)")
    parser.add_argument("--headroom", nargs="+", type=_headroom, metavar="MODEL=MIB",
                        help="memory above a tiny run's peak, per model")
    parser.add_argument(
        "--limit", choices=["cgroup", "explicit", DEVICE], default="cgroup",
        help="cgroup: a real limit per model (falls back to explicit where cgroups cannot be "
        "made); explicit: memory_limit=, a simulated limit; device: the accelerator's memory",
    )
    parser.add_argument("--precision", type=float, help="true max bracket, relative (0.02; quick 0.05)")
    parser.add_argument("--truth-epochs", type=int, default=2,
                        help="epochs of each ground-truth fit (validation_split=0.2)")
    parser.add_argument("--truth-runs", type=int, default=2,
                        help="a batch is the truth when this many fresh fits of it all survive")
    parser.add_argument("--trial-steps", type=int, default=3, help="steps per peer trial (Lightning's default)")
    parser.add_argument("--verify-epochs", type=int, default=3,
                        help="epochs when a fresh process trains at our answer")
    parser.add_argument("--peers", nargs="*", help="peer strategies to run (default: all)")
    parser.add_argument("--no-trained-first", action="store_true",
                        help="skip the probe in a process that trained first")
    args = parser.parse_args(argv)
    args.headroom = dict(args.headroom or [])
    args.precision = args.precision or (0.05 if args.quick else 0.02)
    models = args.models or (list(QUICK_MODELS) if args.quick else list(zoo.MODELS))
    _common.prepare_environment()

    started = time.perf_counter()
    meta = _common.run_metadata("quick" if args.quick else "full")
    stem = _common.result_stem("probe_bench", args.quick)
    entries: list[dict[str, Any]] = []
    for model in models:
        entries.append(bench_model(model, args))
        payload = {
            "benchmark": "probe_bench",
            "meta": meta,
            "settings": {
                "models": models, "precision": args.precision, "truth_epochs": args.truth_epochs,
                "truth_runs": args.truth_runs, "trial_steps": args.trial_steps,
                "verify_epochs": args.verify_epochs, "peers": args.peers,
                "limit": args.limit,
            },
            "models": entries,
            "complete": len(entries) == len(models),
            "seconds": time.perf_counter() - started,
        }
        # Written after every model: a run stopped early keeps the models it finished.
        path = _common.write_json(args.results_dir, stem, payload)
    print(f"## Probe benchmark ({meta['mode']}): {meta['device']['cpu']}, {entries[0]['limit']['kind']}\n")
    print(summary_table(entries))
    if any(entry.get("trained_first") for entry in entries):
        print("\n### Probed in a process that trained first (5 steps at half the fresh answer)\n")
        print(trained_first_table(entries))
    for entry in entries:
        print(f"\n### {entry['model']}: {entry['description']}, limit "
              f"{entry['limit']['limit_bytes'] / 2**20:.0f} MiB, true max {entry['truth']['true_max']}\n")
        print(model_table(entry))
    print(f"\nJSON: {path}")
    if not args.no_plots:
        print(f"plot: {plot(entries, args.results_dir, stem)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The same search with 1 worker and with 2 workers: ``autobatch tune --workers N``.

Task: tune_bench's digits (1,437 training / 360 validation samples, an MLP), tune's defaults
(successive halving over every candidate), one probe shared by both runs. Each worker is
limited to one CPU thread (TensorFlow's intra- and inter-op threads and OMP_NUM_THREADS) so
that 2 workers on a 2-core machine compare fairly with 1; the chief (which only serves the
oracle) gets one thread too. Workers seed each candidate from its own values, so both runs
train the same candidates identically and must pick the same best one.

Both tuners run: successive halving (tune's default) and the grid. Measured per run: the
wall time of the whole command (starting 1 + N Python processes included), the chief's search
time (its ``tune`` from start to end, as ``result.seconds``), each process's CPU seconds, and
the chief's share of all CPU time (its overhead). From the 1-worker run's own trial times,
``bound`` is the most 2 workers could gain with no overhead at all: halving's rounds wait for
each other (a round lasts at least its slowest run), the grid's runs are independent (only
its slowest run bounds it).

    $ nice -n 10 python -m benchmarks.distributed_bench
    $ python -m benchmarks.distributed_bench --quick   # a tiny search: mostly process start-up
    $ nice -n 10 python -m benchmarks.distributed_bench --budget-samples 400000 --tuners grid
    $ nice -n 10 python -m benchmarks.distributed_bench --task noisy_digits_cnn --pin

The default search is short (9.5-18.5 s with one worker), so starting the processes
weighs on it; ``--budget-samples`` trains every candidate longer (tune's default budget on
digits is 100,000 samples).

``--pin`` adds, for each tuner, the same pair with every worker confined to one CPU of its
own (``worker-i`` to the i-th CPU this process may use; the chief is not pinned). A thread
limit does not confine a TensorFlow process to one core: its compute thread, tf.data's
threads and gRPC's run beside the Python thread, and a lone worker uses the second core for
them. The pinned pair compares one core against two, the unpinned pair what a user gets.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common
from benchmarks.tune_bench import EPOCH_FRACTIONS, TASKS, load_task, space_batch_sizes

NUM_WORKERS = (1, 2)
TUNERS = ("halving", "grid")
#: The goal of issue 13: 2 workers at least this much faster than 1.
SPEEDUP_GOAL = 1.6


def prepare(directory: Path, quick: bool, budget_samples: int | None = None,
            task_name: str = "digits") -> dict[str, Any]:
    """The model file, data files and probe file both runs use."""
    import autobatch

    task = load_task(task_name)
    model = task.build(0)
    model.save(directory / "model.keras")
    np.savez(directory / "train.npz", x=task.x_train, y=task.y_train)
    np.savez(directory / "validation.npz", x=task.x_val, y=task.y_val)
    probe = autobatch.probe(model, (task.x_train, task.y_train), verbose=0)
    probe.to_json(directory / "probe.json")
    batch_sizes = space_batch_sizes(probe.max_batch_size, len(task.x_train))
    fractions = list(EPOCH_FRACTIONS)
    budget = budget_samples
    if quick:
        batch_sizes, fractions, budget = batch_sizes[:3], [1.0], 3 * len(task.x_train)
    return {"task": task_name, "num_train": len(task.x_train), "num_val": len(task.x_val),
            "probe_max_batch_size": probe.max_batch_size, "batch_sizes": batch_sizes,
            "epoch_fractions": fractions, "budget_samples": budget}


#: Run as ``python -c PIN_TO_OWN_CPU ARGS``: ``python ARGS`` confined to the CPU its worker
#: number names (the chief is left free). The affinity is set before exec, so every thread
#: the process starts inherits it.
PIN_TO_OWN_CPU = (
    "import os, sys\n"
    "role = os.environ['KERASTUNER_TUNER_ID']\n"
    "if role != 'chief':\n"
    "    cpus = sorted(os.sched_getaffinity(0))\n"
    "    os.sched_setaffinity(0, {cpus[int(role.rsplit('-', 1)[1]) % len(cpus)]})\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


def run(directory: Path, setup: dict[str, Any], num_workers: int, tuner: str,
        pinned: bool = False) -> dict[str, Any]:
    """One ``autobatch tune --workers N --tuner T`` search from a fresh project directory."""
    from autobatch.search import distributed

    name = f"{tuner}-{num_workers}" + ("-pinned" if pinned else "")
    output = directory / f"result-{name}.json"
    pin = ["-c", PIN_TO_OWN_CPU] if pinned else []
    command = [
        sys.executable, *pin, "-m", "autobatch", "tune", str(directory / "model.keras"),
        "--data", str(directory / "train.npz"),
        "--validation-data", str(directory / "validation.npz"),
        "--probe", str(directory / "probe.json"),
        "--batch-sizes", ",".join(map(str, setup["batch_sizes"])),
        "--steps-per-epoch", ",".join(map(str, setup["epoch_fractions"])),
        "--directory", str(directory / f"search-{name}"),
        "--tuner", tuner, "--json", str(output), "--quiet",
    ]
    if setup["budget_samples"] is not None:
        command += ["--budget-samples", str(setup["budget_samples"])]
    # What `autobatch tune --workers N --threads 1` runs, called here for each process's CPU time.
    env = {**os.environ, "PYTHONPATH": str(_common.REPO_ROOT)}
    started = time.perf_counter()
    outcomes = distributed.launch(command, [*command, "--threads", "1"], num_workers=num_workers,
                                  threads=1, env=env)
    wall = time.perf_counter() - started
    failed = [o for o in outcomes if o.returncode != 0]
    if failed or not output.exists():
        raise RuntimeError(f"{num_workers} worker(s): {failed or 'no result written'}")
    cpu = {o.tuner_id: o.cpu_seconds for o in outcomes}
    return {**record(json.loads(output.read_text()), tuner, num_workers, wall, cpu),
            "pinned": pinned}


def record(result: dict[str, Any], tuner: str, num_workers: int, wall: float,
           cpu: dict[str, float]) -> dict[str, Any]:
    """One run's figures from its ``--json`` result, wall time and CPU seconds per process."""
    return {
        "tuner": tuner,
        "num_workers": num_workers,
        "wall_seconds": wall,
        "search_seconds": result["seconds"],
        "cpu_seconds": cpu,
        "chief_cpu_share": cpu["chief"] / sum(cpu.values()),
        "best": {"batch_size": result["batch_size"], "steps_per_epoch": result["steps_per_epoch"],
                 "epochs": result["epochs"], "val_loss": result["val_loss"]},
        "num_trials": len(result["trials"]),
        # Each distinct candidate once: whether a repeat of one (a quarter and a half pass
        # can be one step) is read off its first trial or off their shared run depends on
        # whether that trial had ended, i.e. on the number of workers.
        "candidates": sorted({
            (t["batch_size"], t["steps_per_epoch"], t["val_loss"]) for t in result["trials"]
            if t["val_loss"] is not None
        }),
        # [budget, seconds] of each trial that trained (not read off a shared run): the rounds
        # of halving are its budgets.
        "trained": [[t["budget_samples"], t["seconds"]] for t in result["trials"]
                    if t.get("shared_run") is None and t.get("same_as") is None],
    }


def two_worker_bound(trained: list[list[Any]], rounds_wait: bool) -> float:
    """The speedup 2 workers could reach on these trial times with no overhead: each round
    (every budget, when ``rounds_wait``; else all trials at once) takes at least its slowest
    trial and half its total."""
    groups: dict[Any, list[float]] = {}
    for budget, seconds in trained:
        groups.setdefault(budget if rounds_wait else None, []).append(seconds)
    total = sum(sum(times) for times in groups.values())
    ideal = sum(max(max(times), sum(times) / 2) for times in groups.values())
    return total / ideal if ideal else 1.0


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Two workers against one: one run of each, of one tuner."""
    one, two = runs
    best = (one["best"]["batch_size"], one["best"]["steps_per_epoch"])
    return {
        "tuner": one.get("tuner", "halving"),
        "pinned": one.get("pinned", False),
        "speedup_search": one["search_seconds"] / two["search_seconds"],
        "speedup_wall": one["wall_seconds"] / two["wall_seconds"],
        "bound": two_worker_bound(one.get("trained", []), one.get("tuner") != "grid"),
        "same_best_candidate": best == (two["best"]["batch_size"], two["best"]["steps_per_epoch"]),
        "same_val_losses": one["candidates"] == two["candidates"],
        "speedup_goal": SPEEDUP_GOAL,
    }


def table(runs: list[dict[str, Any]]) -> str:
    rows = [
        [r.get("tuner", "halving") + (", pinned" if r.get("pinned") else ""), r["num_workers"],
         r["wall_seconds"], r["search_seconds"],
         f"{r['best']['batch_size']} x {r['best']['steps_per_epoch']}", r["best"]["val_loss"],
         r["num_trials"], r["cpu_seconds"]["chief"], sum(r["cpu_seconds"].values()),
         f"{100 * r['chief_cpu_share']:.1f}%"]
        for r in runs
    ]
    return _common.markdown_table(
        ["tuner", "workers", "wall s (with start-up)", "search s", "best batch x steps", "val_loss",
         "trials", "chief CPU s", "all CPU s", "chief share"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--budget-samples", type=int, default=None,
                        help="training samples per candidate (default: tune's)")
    parser.add_argument("--tuners", nargs="+", choices=TUNERS, default=list(TUNERS))
    parser.add_argument("--task", choices=TASKS, default="digits",
                        help="tune_bench's task to search (default: digits, issue 13's)")
    parser.add_argument("--pin", action="store_true",
                        help="also run each pair with every worker confined to a CPU of its own")
    args = parser.parse_args(argv)
    if args.pin and len(os.sched_getaffinity(0)) < max(NUM_WORKERS):
        parser.error(f"--pin needs {max(NUM_WORKERS)} CPUs; this process may use "
                     f"{len(os.sched_getaffinity(0))}")
    _common.prepare_environment()
    metadata = _common.run_metadata("quick" if args.quick else "full")
    with tempfile.TemporaryDirectory(prefix="autobatch-distributed-bench-") as scratch:
        directory = Path(scratch)
        setup = prepare(directory, args.quick, args.budget_samples, args.task)
        print(f"{args.task}: probe {setup['probe_max_batch_size']}, batch sizes {setup['batch_sizes']}",
              flush=True)
        runs = []
        pairs = [(tuner, pinned) for tuner in args.tuners for pinned in (False, True)[:1 + args.pin]]
        for tuner, pinned in pairs:
            for num_workers in NUM_WORKERS:
                runs.append(run(directory, setup, num_workers, tuner, pinned))
                print(f"{tuner}{', pinned' if pinned else ''}, {num_workers} worker(s): "
                      f"{runs[-1]['search_seconds']:.1f} s search, "
                      f"{runs[-1]['wall_seconds']:.1f} s wall", flush=True)
    summaries = [summary([r for r in runs if (r["tuner"], r["pinned"]) == pair]) for pair in pairs]
    payload = {**metadata, "setup": setup, "runs": runs, "summary": summaries}
    stem = "distributed_bench" + (f"-{args.task}" if args.task != "digits" else "")
    stem += f"-budget{args.budget_samples}" if args.budget_samples else ""
    path = _common.write_json(args.results_dir, _common.result_stem(stem, args.quick), payload)
    print(table(runs))
    for s in summaries:
        print(f"{s['tuner']}{', pinned' if s['pinned'] else ''}: speedup with 2 workers "
              f"{s['speedup_search']:.2f}x search, {s['speedup_wall']:.2f}x wall (goal >= "
              f"{SPEEDUP_GOAL}x; at most {s['bound']:.2f}x on the 1-worker run's trial times); "
              "same best candidate: "
              f"{s['same_best_candidate']}; same val_loss for every candidate: "
              f"{s['same_val_losses']}")
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

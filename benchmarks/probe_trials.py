"""Trial counts of autobatch's probe strategy and of the peers', on exact simulated memory curves.

No TensorFlow, no training: a "trial" is a function call on a known memory curve, so
thousands of limits are compared in seconds and the true largest batch is known exactly.
The real-model version of this comparison is ``probe_bench.py``.

Curves (peak bytes over the baseline at batch b, headroom = limit - baseline):
- ``linear``: fixed + per_sample * b, the fixed part 5% to 50% of the headroom;
- ``convex``: plus a quadratic term worth 2% to 10% of the per-sample part at the true max
  (mildly convex: activations or buffers that grow faster than the batch);
- ``convex+``: the same at 10% to 30% (strongly convex, a stress test);
- ``noisy``: linear with +-1% deterministic jitter on every measurement (run-to-run noise);
- ``tf-cpu``: shaped like TensorFlow's host memory on the zoo's CNN and LSTM: concave
  (``b ** 0.8``: the cost of a sample falls as the batch grows) with +-3% jitter, the
  scatter seen between neighbouring batches (578 and 580 samples: 898 and 878 MiB).

Each case draws a true largest batch log-uniformly between 64 and 16384. autobatch runs as
on host RAM (running out kills the process, so it must never cross the limit) and as on a GPU
(running out is an exception it can catch).

Run:
    python -m benchmarks.probe_trials            # 300 cases per curve
    python -m benchmarks.probe_trials --quick    # 40 cases per curve
"""

from __future__ import annotations

import math
import statistics
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from autobatch.memory.base import MemoryBackend
from autobatch.memory.host import HostMemory
from autobatch.probing.strategy import Observation, ProbeStrategy
from benchmarks import _common, peers

CURVES = ("linear", "convex", "convex+", "noisy", "tf-cpu")
#: Exponent of the per-sample term: below 1, concave.
EXPONENT = {"tf-cpu": 0.8}
NOISE = {"noisy": 0.01, "tf-cpu": 0.03}
#: Quadratic term at the true max, as a share of the linear per-sample part.
CONVEXITY = {"convex": (0.02, 0.10), "convex+": (0.10, 0.30)}
#: autobatch.probe's default margins: the host backend's, and every other backend's (GPUs).
HOST_MARGIN, GPU_MARGIN = HostMemory.default_margin, MemoryBackend.default_margin


@dataclass(frozen=True)
class Case:
    """A memory curve and a limit; ``true_max`` is the exact largest batch under the limit."""

    kind: str
    baseline: int
    fixed: float
    per_sample: float
    quadratic: float
    noise: float
    exponent: float
    limit: int
    true_max: int
    seed: int

    def peak(self, batch_size: int) -> int:
        """Absolute peak bytes of a trial at ``batch_size`` (deterministic)."""
        value = (
            self.fixed + self.per_sample * batch_size**self.exponent + self.quadratic * batch_size**2
        )
        if self.noise:
            # The same batch always measures the same: a hash, not a random stream.
            jitter = zlib.crc32(f"{self.seed}:{batch_size}".encode()) / 2**32 * 2 - 1
            value *= 1 + self.noise * jitter
        return int(self.baseline + value)

    def oracle(self, batch_size: int) -> int | None:
        """A trial: its peak, or None when it crosses the limit (out of memory)."""
        peak = self.peak(batch_size)
        return peak if peak <= self.limit else None


def make_case(kind: str, seed: int) -> Case:
    rng = np.random.default_rng(seed)
    target = int(round(math.exp(rng.uniform(math.log(64), math.log(16384)))))
    baseline = int(rng.uniform(0.3, 1.0) * 2**30)  # what the framework holds before training
    headroom = float(rng.uniform(0.5, 8.0) * 2**30)
    fixed_share = rng.uniform(0.05, 0.5)
    quadratic_share = rng.uniform(*CONVEXITY[kind]) if kind in CONVEXITY else 0.0
    fixed = fixed_share * headroom
    # per_sample * T + quadratic * T^2 = (1 - fixed_share) * headroom, quadratic * T = share * per_sample
    exponent = EXPONENT.get(kind, 1.0)
    per_sample = (1 - fixed_share) * headroom / (target**exponent * (1 + quadratic_share))
    quadratic = quadratic_share * per_sample * target ** (exponent - 2)
    case = Case(
        kind, baseline, fixed, per_sample, quadratic, NOISE.get(kind, 0.0), exponent,
        int(baseline + headroom), 0, seed,
    )
    return Case(**{**case.__dict__, "true_max": _true_max(case)})


def _true_max(case: Case) -> int:
    """The largest b such that every batch up to b fits (the monotone edge)."""
    batch = 1
    while case.oracle(batch) is not None:
        batch += 1
    return batch - 1


def run_autobatch(case: Case, *, catchable: bool) -> peers.PeerRun:
    """autobatch's ProbeStrategy against the case, as `autobatch.probe` drives it."""
    name = "autobatch (GPU: OOM catchable)" if catchable else "autobatch (host RAM)"
    recorder = peers.Recorder(case.oracle, name)
    strategy = ProbeStrategy(
        limit_bytes=case.limit, baseline_bytes=case.baseline,
        margin=GPU_MARGIN if catchable else HOST_MARGIN, oom_is_catchable=catchable,
        min_margin_bytes=0 if catchable else HostMemory.min_margin_bytes,
    )
    history: list[Observation] = []
    while (proposal := strategy.propose(history)) is not None:
        history.append(Observation(proposal.batch_size, recorder.peak(proposal.batch_size)))
    return recorder.done(strategy.answer(history), strategy.stop_reason)


STRATEGIES: dict[str, Callable[[Case], peers.PeerRun]] = {
    "autobatch (host RAM)": lambda c: run_autobatch(c, catchable=False),
    "autobatch (GPU)": lambda c: run_autobatch(c, catchable=True),
    "Lightning binsearch": lambda c: peers.lightning_binsearch(c.oracle),
    "Lightning power": lambda c: peers.lightning_power(c.oracle),
    "HF halving from 1024": lambda c: peers.huggingface(c.oracle, start=1024),
    "HF x0.9 from 1024": lambda c: peers.huggingface(c.oracle, start=1024, factor=0.9),
    "Ultralytics 60%": lambda c: peers.ultralytics(
        c.oracle, total_bytes=c.limit, used_bytes=c.baseline
    ),
}


def evaluate(num_cases: int, seed: int = 0) -> list[dict[str, Any]]:
    """One record per (curve, case, strategy)."""
    records = []
    for kind_index, kind in enumerate(CURVES):
        for index in range(num_cases):
            case = make_case(kind, seed * 1_000_003 + kind_index * 100_003 + index)
            for name, strategy in STRATEGIES.items():
                run = strategy(case)
                records.append(
                    {
                        "curve": kind,
                        "case": index,
                        "strategy": name,
                        "true_max": case.true_max,
                        "answer": run.answer,
                        "num_trials": run.num_trials,
                        "num_oom": run.num_oom,
                        "trial_sizes": run.trial_sizes,
                        # Training at the answer would run out of memory (on host RAM: be killed).
                        "over_limit": run.answer > 0 and case.oracle(run.answer) is None,
                    }
                )
    return records


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per curve and strategy: trials, OOM events, found/true; ratios to autobatch (host RAM)."""
    rows = []
    for kind in CURVES:
        ours = [r for r in records if r["curve"] == kind and r["strategy"] == "autobatch (host RAM)"]
        ours_trials = statistics.mean(r["num_trials"] for r in ours)
        for name in STRATEGIES:
            runs = [r for r in records if r["curve"] == kind and r["strategy"] == name]
            ratios = [r["answer"] / r["true_max"] for r in runs]
            trials = [r["num_trials"] for r in runs]
            rows.append(
                {
                    "curve": kind,
                    "strategy": name,
                    "cases": len(runs),
                    "mean_trials": statistics.mean(trials),
                    "max_trials": max(trials),
                    "trials_vs_ours": statistics.mean(trials) / ours_trials,
                    "mean_oom": statistics.mean(r["num_oom"] for r in runs),
                    "cases_with_oom": sum(r["num_oom"] > 0 for r in runs),
                    "found_true_median": statistics.median(ratios),
                    "found_true_min": min(ratios),
                    "over_limit": sum(r["over_limit"] for r in runs),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "curve", "strategy", "mean trials", "max trials", "trials / ours", "mean OOM",
        "cases with OOM", "found/true median", "found/true min", "answer does not fit",
    ]
    return _common.markdown_table(
        headers,
        [
            [
                r["curve"], r["strategy"], r["mean_trials"], r["max_trials"], r["trials_vs_ours"],
                r["mean_oom"], f"{r['cases_with_oom']}/{r['cases']}", r["found_true_median"],
                r["found_true_min"], f"{r['over_limit']}/{r['cases']}",
            ]
            for r in rows
        ],
    )


def plot(rows: list[dict[str, Any]], directory: Any, stem: str) -> Any:
    plt = _common.pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(STRATEGIES)
    width = 0.8 / len(CURVES)
    for index, kind in enumerate(CURVES):
        by_name = {r["strategy"]: r for r in rows if r["curve"] == kind}
        positions = [i + index * width for i in range(len(names))]
        left.bar(positions, [by_name[n]["mean_trials"] for n in names], width, label=kind)
        right.bar(positions, [by_name[n]["found_true_median"] for n in names], width, label=kind)
    for axis, title in ((left, "mean trials (lower is better)"), (right, "found / true max, median")):
        axis.set_xticks([i + width for i in range(len(names))], names, rotation=30, ha="right")
        axis.set_title(title)
        axis.legend(loc="upper right", fontsize=8, ncol=2)
    right.set_ylim(0, 1.3)
    right.axhline(1.0, color="grey", linewidth=0.8)
    return _common.save_figure(figure, directory, f"{stem}")


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, help="cases per curve (default 300, quick 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", action="store_true",
                        help="also write every case's trials to the JSON (megabytes)")
    args = parser.parse_args(argv)
    num_cases = args.cases or (40 if args.quick else 300)
    started = time.perf_counter()
    records = evaluate(num_cases, args.seed)
    rows = summarize(records)
    stem = _common.result_stem("probe_trials", args.quick)
    payload = {
        "benchmark": "probe_trials",
        "meta": _common.run_metadata("quick" if args.quick else "full"),
        "settings": {
            "cases_per_curve": num_cases, "seed": args.seed,
            "host_margin": HOST_MARGIN, "gpu_margin": GPU_MARGIN,
        },
        "summary": rows,
        # Every case is rebuilt exactly from the seed; the per-case trials only on request.
        "records": records if args.records else None,
        "seconds": time.perf_counter() - started,
    }
    path = _common.write_json(args.results_dir, stem, payload)
    print(f"## Simulated memory curves: {num_cases} limits per curve\n")
    print(table(rows))
    print(f"\nJSON: {path}")
    if not args.no_plots:
        print(f"plot: {plot(rows, args.results_dir, stem)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

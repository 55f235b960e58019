"""Training throughput (samples/s) and peak memory against batch size, up to the memory limit.

For each zoo model: `autobatch.probe` finds the largest batch under the limit (in a fresh
process), then, in another fresh process, batch sizes from 8 up to it (powers of two, and the
maximum), in ascending order, each train a few timed steps (``train_on_batch``, after one
untimed step that traces or compiles). Peak memory comes from autobatch's memory backend for
the device: on CPU the process's peak RSS, which never goes down within a process (the
allocator keeps what it freed), so each row is the peak of a process that has also run the
smaller batches before it; on a GPU, the allocator's peak of that batch. The "knee" is the
smallest batch reaching 90% of the best throughput: larger batches buy little speed for
their memory.

On CPU the limit defaults to 3 GiB (``--memory-limit``) so that a shared machine is not
filled; on a GPU (``KERAS_BACKEND=jax``) pass ``--memory-limit none`` to use the card.

Run:
    nice -n 10 python -m benchmarks.throughput_bench --quick    # mlp and cnn
    nice -n 10 python -m benchmarks.throughput_bench            # all five models
"""

from __future__ import annotations

import gc
import math
import time
from typing import Any

import numpy as np

from benchmarks import _common, zoo

QUICK_MODELS = ("mlp", "cnn")
KNEE = 0.9


def batch_sizes_up_to(maximum: int, smallest: int = 8) -> list[int]:
    sizes = []
    size = smallest
    while size < maximum:
        sizes.append(size)
        size *= 2
    sizes.append(maximum)
    return sizes


def _batch(x: np.ndarray, y: np.ndarray, batch_size: int, index: int) -> tuple[Any, Any]:
    """The index-th batch of the arrays, wrapping around (tiled when the batch exceeds them)."""
    n = len(x)
    if batch_size > n:
        repeats = math.ceil(batch_size / n)
        return np.concatenate([x] * repeats)[:batch_size], np.concatenate([y] * repeats)[:batch_size]
    start = (index * batch_size) % (n - batch_size + 1)
    return x[start : start + batch_size], y[start : start + batch_size]


def measure(model: Any, x: Any, y: Any, batch_size: int, memory: Any, *, min_seconds: float,
            max_steps: int) -> dict[str, Any]:
    """One batch size: seconds per step (after an untimed first step) and peak memory."""
    gc.collect()
    step_times = []
    with memory.trial(batch_size) as reading:
        model.train_on_batch(*_batch(x, y, batch_size, 0))  # traces / compiles
        started = time.perf_counter()
        for index in range(1, max_steps + 1):
            begin = time.perf_counter()
            model.train_on_batch(*_batch(x, y, batch_size, index))  # returns numpy: synced
            step_times.append(time.perf_counter() - begin)
            if time.perf_counter() - started >= min_seconds and index >= 3:
                break
    seconds_per_step = float(np.median(step_times))
    return {
        "batch_size": batch_size,
        "steps": len(step_times),
        "seconds_per_step": seconds_per_step,
        "samples_per_second": batch_size / seconds_per_step,
        "peak_bytes": reading.peak_bytes,
    }


def bench_model(name: str, memory_limit: int | None, args: Any) -> dict[str, Any]:
    from benchmarks.probe_bench import Launcher, Limit

    limit = None if memory_limit is None else Limit("explicit memory_limit", memory_limit, 0)
    launcher = Launcher(name, limit)
    probe = launcher.run("probe")["result"]
    _note(f"{name}: largest batch {probe['max_batch_size']} under {probe['limit_bytes'] / 2**20:.0f} "
          f"MiB ({probe['limit_source']})")
    sweep = launcher.run(
        "sweep", batch_sizes=batch_sizes_up_to(probe["max_batch_size"]),
        min_seconds=args.min_seconds, max_steps=args.max_steps,
    )
    points = [p for p in sweep["points"] if not p.get("out_of_memory")]
    for point in points:
        _note(f"{name}: batch {point['batch_size']}: {point['samples_per_second']:,.0f} samples/s, "
              f"peak {_common.mib(point['peak_bytes']):.0f} MiB")
    best = max(p["samples_per_second"] for p in points)
    knee = min(p["batch_size"] for p in points if p["samples_per_second"] >= KNEE * best)
    return {
        "model": name,
        "description": zoo.describe(name),
        "limit_bytes": probe["limit_bytes"],
        "limit_source": probe["limit_source"],
        "device": sweep["device"],
        "peak_source": sweep["peak_source"],
        "probe_max_batch_size": probe["max_batch_size"],
        "probe_seconds": probe["seconds"],
        "out_of_memory_at": next(
            (p["batch_size"] for p in sweep["points"] if p.get("out_of_memory")), None
        ),
        "points": points,
        "best_samples_per_second": best,
        "knee_batch_size": knee,
    }


def _note(text: str) -> None:
    import sys

    sys.stderr.write(f"[throughput_bench {time.strftime('%H:%M:%S')}] {text}\n")


def model_table(entry: dict[str, Any]) -> str:
    best = entry["best_samples_per_second"]
    return _common.markdown_table(
        ["batch size", "samples/s", "% of best", "ms/step", "peak memory (MiB)", "% of limit"],
        [
            [
                p["batch_size"], p["samples_per_second"], 100 * p["samples_per_second"] / best,
                1000 * p["seconds_per_step"], _common.mib(p["peak_bytes"]),
                None if p["peak_bytes"] is None else 100 * p["peak_bytes"] / entry["limit_bytes"],
            ]
            for p in entry["points"]
        ],
    )


def summary_table(entries: list[dict[str, Any]]) -> str:
    return _common.markdown_table(
        ["model", "limit (MiB)", "largest batch (probe)", "best samples/s", "at batch",
         f"knee ({KNEE:.0%} of best)", "samples/s at the largest batch"],
        [
            [
                e["model"], _common.mib(e["limit_bytes"]), e["probe_max_batch_size"],
                e["best_samples_per_second"],
                max(e["points"], key=lambda p: p["samples_per_second"])["batch_size"],
                e["knee_batch_size"], e["points"][-1]["samples_per_second"],
            ]
            for e in entries
        ],
    )


def plot(entries: list[dict[str, Any]], directory: Any, stem: str) -> Any:
    plt = _common.pyplot()
    figure, axes = plt.subplots(1, len(entries), figsize=(4.2 * len(entries), 3.8), squeeze=False)
    for axis, entry in zip(axes[0], entries, strict=False):
        sizes = [p["batch_size"] for p in entry["points"]]
        axis.plot(sizes, [p["samples_per_second"] for p in entry["points"]], "o-", color="C0")
        axis.axvline(entry["knee_batch_size"], color="C0", linestyle=":", linewidth=1)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_ylabel("samples/s", color="C0")
        axis.set_ylim(bottom=0)
        axis.set_title(entry["model"])
        memory = axis.twinx()
        memory.plot(sizes, [_common.mib(p["peak_bytes"]) for p in entry["points"]], "s--", color="C3")
        memory.axhline(_common.mib(entry["limit_bytes"]), color="C3", linewidth=0.8)
        memory.set_ylim(bottom=0)
        memory.set_ylabel("peak memory (MiB); line = limit", color="C3")
    return _common.save_figure(figure, directory, stem)


def _memory_limit(text: str) -> int | None:
    from autobatch._units import parse_bytes

    return None if text.lower() == "none" else parse_bytes(text, name="--memory-limit")


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(zoo.MODELS))
    parser.add_argument("--memory-limit", type=_memory_limit, default="3GiB",
                        help="limit for the probe, e.g. 3GiB; 'none' for the detected limit")
    parser.add_argument("--min-seconds", type=float, help="timed seconds per batch size (2; quick 0.5)")
    parser.add_argument("--max-steps", type=int, default=20, help="timed steps at most per size")
    args = parser.parse_args(argv)
    args.min_seconds = args.min_seconds or (0.5 if args.quick else 2.0)
    models = args.models or (list(QUICK_MODELS) if args.quick else list(zoo.MODELS))
    _common.prepare_environment()

    started = time.perf_counter()
    meta = _common.run_metadata("quick" if args.quick else "full")
    entries = [bench_model(name, args.memory_limit, args) for name in models]
    stem = _common.result_stem("throughput_bench", args.quick)
    payload = {
        "benchmark": "throughput_bench",
        "meta": meta,
        "settings": {"models": models, "memory_limit": args.memory_limit,
                     "min_seconds": args.min_seconds, "max_steps": args.max_steps},
        "models": entries,
        "seconds": time.perf_counter() - started,
    }
    path = _common.write_json(args.results_dir, stem, payload)
    print(f"## Throughput benchmark ({meta['mode']}): {meta['device']['cpu']}, "
          f"backend {meta['keras_backend']}, device {entries[0]['device']}\n")
    print(summary_table(entries))
    for entry in entries:
        print(f"\n### {entry['model']}: {entry['description']}\n")
        print(model_table(entry))
    print(f"\nJSON: {path}")
    if not args.no_plots:
        print(f"plot: {plot(entries, args.results_dir, stem)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

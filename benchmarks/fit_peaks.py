"""Real training's peak memory at each of a list of batch sizes, several fresh runs each.

Each run is the probe benchmark's ground truth without a limit: a new process builds a zoo
model and runs ``fit(x, y, batch_size=b, epochs=2, validation_split=0.2)``; its peak is peak
RSS less file-backed pages, what autobatch measures on host RAM (host RAM only: on a GPU
machine the fit runs on the GPU and this measures the host). The table shows how far the
peaks are from a line in the batch size: their scatter between runs of one batch, and the
partial batches (training and validation) each batch size ends its passes with, on which
TensorFlow/CPU's memory also depends. Where the peaks are not monotone in the batch size, a
bisection over real training (the benchmark's truth) can land above batches that do not fit.

    $ nice -n 10 python -m benchmarks.fit_peaks cnn 540 573 605 633 680 720 792 --runs 2
    $ python -m benchmarks.fit_peaks --quick            # mlp, 3 batch sizes, 2 runs each
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from autobatch.data import ArrayData, _split_sizes
from benchmarks import _common, zoo
from benchmarks.probe_bench import Launcher

QUICK = ("mlp", [256, 512, 1024])


def measure(model: str, batch_sizes: list[int], runs: int) -> Iterator[dict[str, Any]]:
    """One row per batch size, as each is measured: its partial batches and each run's peak."""
    num_samples = zoo.MODELS[model].num_samples
    num_train, num_validation = _split_sizes(num_samples)  # as fit(validation_split=0.2) splits
    launcher = Launcher(model)
    for batch_size in batch_sizes:
        peaks = []
        for _ in range(runs):
            outcome = launcher.run("fit", batch_size=batch_size, epochs=2)
            if not outcome.get("fits"):  # a catchable out-of-memory error (an accelerator)
                raise SystemExit(f"{model} at batch {batch_size} ran out of memory; "
                                 "give smaller batch sizes")
            peaks.append(outcome["peak_charged_bytes"])
        print(f"{model} {batch_size}: " + ", ".join(f"{_common.mib(p):.0f}" for p in peaks) + " MiB",
              flush=True)
        yield {
            "batch_size": batch_size,
            "train_partial": num_train % batch_size,
            "validation_partial": num_validation % batch_size,
            "shapes_load": _shapes_load(num_samples, batch_size),
            "peaks_bytes": peaks,
        }


def _shapes_load(num_samples: int, batch_size: int) -> int:
    """autobatch's sum of the batch shapes a fit at this batch runs (`batch_shapes_load`)."""
    return ArrayData(np.zeros((num_samples, 1))).batch_shapes_load(batch_size)


def line_residuals(rows: list[dict[str, Any]]) -> list[float]:
    """Each batch's mean peak less a least-squares line through all of them (bytes)."""
    sizes = np.array([r["batch_size"] for r in rows], dtype=float)
    means = np.array([statistics.fmean(r["peaks_bytes"]) for r in rows])
    slope, intercept = np.polyfit(sizes, means, 1)
    return list(means - (slope * sizes + intercept))


def table(rows: list[dict[str, Any]]) -> str:
    residuals = line_residuals(rows) if len(rows) >= 2 else [0.0] * len(rows)
    return _common.markdown_table(
        ["batch", "partial batches (train, val)", "shapes load", "peaks MiB", "spread MiB",
         "off the line MiB"],
        [[r["batch_size"], f"{r['train_partial']}, {r['validation_partial']}", r["shapes_load"],
          " / ".join(f"{_common.mib(p):.0f}" for p in r["peaks_bytes"]),
          _common.mib(max(r["peaks_bytes"]) - min(r["peaks_bytes"])), _common.mib(residual)]
         for r, residual in zip(rows, residuals, strict=True)],
    )


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", choices=sorted(zoo.MODELS), help="a zoo model")
    parser.add_argument("batch_sizes", nargs="*", type=int, help="batch sizes to train at")
    parser.add_argument("--runs", type=int, default=2, help="fresh runs per batch size (2)")
    args = parser.parse_args(argv)
    model, batch_sizes = (args.model, args.batch_sizes) if not args.quick else QUICK
    if model is None or not batch_sizes:
        parser.error("give a zoo model and at least one batch size, or --quick")
    _common.prepare_environment()
    metadata = _common.run_metadata("quick" if args.quick else "full")
    stem = _common.result_stem(f"fit_peaks-{model}", args.quick)
    rows: list[dict[str, Any]] = []
    payload = {**metadata, "model": model, "num_samples": zoo.MODELS[model].num_samples,
               "runs": args.runs, "rows": rows, "complete": False}
    # Written after every batch size: a run of many minutes keeps what it measured if stopped.
    for row in measure(model, sorted(batch_sizes), args.runs):
        rows.append(row)
        path = _common.write_json(args.results_dir, stem, payload)
    payload["complete"] = True
    path = _common.write_json(args.results_dir, stem, payload)
    print(table(rows))
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

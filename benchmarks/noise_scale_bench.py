"""The gradient noise scale of tune_bench's tasks: what it says and what it costs.

For each task (tune_bench's MLPs on scikit-learn's digits and breast_cancer) and seed, the
model is trained with ``fit(batch_size=32)`` and its noise scale B_noise is estimated with
``autobatch.search.noise_scale.estimate_noise_scale`` (defaults: slices of 16 in batches of
1024, 8 batches) at initialization and after 1, 5 and 20 passes over the training data.
Columns: B_noise with its standard error, the estimate's wall seconds against one training
pass at batch 32, and the statistical efficiency B_noise implies for tune's candidate batch
sizes, relative to the smallest (Pollux: the share of per-sample progress a batch keeps).
--small-batch, --big-batch and --num-steps change the estimator's settings.

Run:
    nice -n 10 python -m benchmarks.noise_scale_bench --quick   # breast_cancer, one seed
    nice -n 10 python -m benchmarks.noise_scale_bench           # both tasks, seeds 0 1 2
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from benchmarks import _common, tune_bench

PASSES = (0, 1, 5, 20)  # where B_noise is measured, in passes over the training data
TRAIN_BATCH_SIZE = 32


def bench_run(
    task: tune_bench.Task, seed: int, batch_sizes: list[int], settings: dict[str, int]
) -> list[dict[str, Any]]:
    """B_noise along one training run, with the cost of each estimate and of a pass."""
    from autobatch.search.noise_scale import estimate_noise_scale

    model = task.build(seed)
    points = []
    trained = 0
    for passes in PASSES:
        started = time.perf_counter()
        model.fit(
            task.x_train,
            task.y_train,
            batch_size=TRAIN_BATCH_SIZE,
            epochs=passes - trained,
            verbose=0,
        )
        pass_seconds = (time.perf_counter() - started) / (passes - trained) if passes else None
        trained = passes
        estimate = estimate_noise_scale(model, task.x_train, task.y_train, seed=seed, **settings)
        points.append(
            {
                "passes": passes,
                "estimate": estimate.to_dict(),
                "pass_seconds": pass_seconds,
                "efficiency": {
                    b: estimate.statistical_efficiency(b, base_batch_size=batch_sizes[0])
                    for b in batch_sizes
                },
                "val_loss": float(model.evaluate(task.x_val, task.y_val, verbose=0)),
            }
        )
    return points


def table(entry: dict[str, Any]) -> str:
    batch_sizes = entry["batch_sizes"]
    headers = ["seed", "passes", "val_loss", "B_noise", "+-", "estimate s", "pass s"]
    headers += [f"eff@{b}" for b in batch_sizes[1:]]
    rows = []
    for run in entry["runs"]:
        for point in run["points"]:
            estimate = point["estimate"]
            rows.append(
                [
                    run["seed"],
                    point["passes"],
                    point["val_loss"],
                    estimate["noise_scale"],
                    estimate["standard_error"],
                    estimate["seconds"],
                    point["pass_seconds"],
                ]
                + [point["efficiency"][b] for b in batch_sizes[1:]]
            )
    return _common.markdown_table(headers, rows)


def cost_summary(entry: dict[str, Any]) -> str:
    """The estimate's median time (its trace included), against a training pass at batch 32
    once traced (passes 5 to 20)."""
    points = [p for run in entry["runs"] for p in run["points"]]
    estimate = statistics.median(p["estimate"]["seconds"] for p in points)
    one_pass = statistics.median(run["points"][-1]["pass_seconds"] for run in entry["runs"])
    sample = points[0]["estimate"]
    samples = sample["big_batch"] * sample["num_steps"]
    return (
        f"One estimate ({samples} samples' forward and backward passes in slices of "
        f"{sample['small_batch']}): median {estimate:.2f} s, {estimate / one_pass:.1f}x one "
        f"training pass over {entry['num_train']} samples at batch {TRAIN_BATCH_SIZE} "
        f"({one_pass:.2f} s)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=["digits", "breast_cancer"])
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 (quick: 0)")
    parser.add_argument("--small-batch", type=int, default=16)
    parser.add_argument("--big-batch", type=int, default=1024)
    parser.add_argument("--num-steps", type=int, default=8)
    args = parser.parse_args(argv)
    settings = {
        "small_batch": args.small_batch,
        "big_batch": args.big_batch,
        "num_steps": args.num_steps,
    }
    tasks = args.tasks or (["breast_cancer"] if args.quick else ["digits", "breast_cancer"])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    _common.prepare_environment()

    started = time.perf_counter()
    meta = _common.run_metadata("quick" if args.quick else "full")
    entries = []
    for name in tasks:
        task = tune_bench.load_task(name)
        num_train = len(task.x_train)
        batch_sizes = tune_bench.space_batch_sizes(num_train, num_train)
        runs = []
        for seed in seeds:
            sys.stderr.write(
                f"[noise_scale_bench {time.strftime('%H:%M:%S')}] {name} seed {seed}\n"
            )
            runs.append({"seed": seed, "points": bench_run(task, seed, batch_sizes, settings)})
        entries.append(
            {"task": name, "num_train": num_train, "batch_sizes": batch_sizes, "runs": runs}
        )
    payload = {
        "benchmark": "noise_scale_bench",
        "meta": meta,
        "settings": {
            "tasks": tasks,
            "seeds": seeds,
            "passes": list(PASSES),
            "train_batch_size": TRAIN_BATCH_SIZE,
            **settings,
        },
        "tasks": entries,
        "seconds": time.perf_counter() - started,
    }
    path = _common.write_json(
        args.results_dir, _common.result_stem("noise_scale_bench", args.quick), payload
    )
    print(f"## Gradient noise scale ({meta['mode']}): {meta['device']['cpu']}, seeds {seeds}\n")
    for entry in entries:
        print(f"### {entry['task']}: {entry['num_train']} training samples\n")
        print(table(entry))
        print(f"\n{cost_summary(entry)}\n")
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which tuner should `autobatch.tune` use by default, and should it scale the learning rate?

On two small real tasks (scikit-learn's digits and breast cancer: no download), every tuner
searches the same space as the exhaustive grid, from the same initial weights and the same
probe. For each it prints the best val_loss found, the regret against the grid's best, the
val_loss of ``model.fit(x, y, **result.fit_kwargs())`` retrained from the same initial
weights, the wall and CPU seconds as a share of the grid's, and the passes over the data
trained in all. Then the grid's best with ``lr_scaling`` "linear" and "sqrt" against None.

Memory is not what this measures, so a FakeMemory with room for every batch stands in for
the probe's backend (every batch size up to the data size fits).

Run (about 2 hours on 2 busy CPU cores; ``--seeds 0 --tasks breast_cancer`` for a quick look):
    nice -n 10 python benchmarks/tune_default_choice.py
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import autobatch  # noqa: E402
from autobatch.probing.state import preserved  # noqa: E402

TUNERS = ("grid", "hyperband", "bayesian", "random")


def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")

    def model():
        m = keras.Sequential([
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ])
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        return m

    return "digits", x, y, model


def breast_cancer():
    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype("float32")
    y = y.astype("float32")

    def model():
        m = keras.Sequential([
            keras.Input((30,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ])
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        return m

    return "breast_cancer", x, y, model


def run(task, seed, tuner, lr_scaling=None):
    """One search on a fresh project: the result, the retrained val_loss, wall and CPU seconds."""
    name, x, y, build = task
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    keras.utils.set_random_seed(seed)
    model = build()
    memory = autobatch.FakeMemory(limit_bytes=2**50)
    probe = autobatch.probe(model, (x_train, y_train), memory=memory, verbose=0)
    wall, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as directory:
        result = autobatch.tune(
            model, (x_train, y_train), validation_data=(x_val, y_val), tuner=tuner,
            lr_scaling=lr_scaling, probe=probe, memory=memory, directory=directory,
            seed=seed, verbose=0,
        )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with preserved(model):
        if result.learning_rate is not None:
            model.optimizer = keras.optimizers.Adam(result.learning_rate)
        history = model.fit(
            x_train, y_train, validation_data=(x_val, y_val), verbose=0, **result.fit_kwargs()
        )
    passes = sum(t.samples_seen for t in result.trials) / len(x_train)
    return {
        "result": result, "retrained": history.history["val_loss"][-1], "wall": wall,
        "cpu": cpu, "passes": passes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["digits", "breast_cancer"])
    parser.add_argument("--tuners", nargs="+", default=list(TUNERS))
    parser.add_argument("--lr-seeds", type=int, nargs="*", default=[0],
                        help="seeds of the lr_scaling comparison (grid); none to skip it")
    args = parser.parse_args()
    tasks = {"digits": digits, "breast_cancer": breast_cancer}

    rows, lr_rows = [], []
    for task_name in args.tasks:
        task = tasks[task_name]()
        runs = {tuner: [] for tuner in args.tuners}
        for seed in args.seeds:
            for tuner in args.tuners:
                found = run(task, seed, tuner)
                runs[tuner].append(found)
                result = found["result"]
                print(f"# {task_name} seed {seed} {tuner}: val_loss {result.val_loss:.4f} "
                      f"{result.fit_kwargs()} retrained {found['retrained']:.4f}, "
                      f"{found['wall']:.0f} s wall, {found['cpu']:.0f} s CPU, "
                      f"{len(result.trials)} trials, {found['passes']:.0f} passes", flush=True)
        for tuner, found in runs.items():
            grid = runs.get("grid")
            pairs = list(zip(found, grid, strict=False)) if grid else []
            regrets = [100 * (f["result"].val_loss / g["result"].val_loss - 1) for f, g in pairs]
            wall_ratio = [f["wall"] / g["wall"] for f, g in pairs] or [math.nan]
            cpu_ratio = [f["cpu"] / g["cpu"] for f, g in pairs] or [math.nan]
            regrets = regrets or [math.nan]
            rows.append((
                task_name, tuner, mean(f["result"].val_loss for f in found), mean(regrets),
                max(regrets), mean(f["retrained"] for f in found), mean(f["wall"] for f in found),
                mean(wall_ratio), mean(cpu_ratio), mean(f["passes"] for f in found),
                mean(len(f["result"].trials) for f in found),
            ))
        for scaling in ("linear", "sqrt") if args.lr_seeds else ():
            for seed in args.lr_seeds:
                found = run(task, seed, "grid", lr_scaling=scaling)
                plain = run(task, seed, "grid") if "grid" not in runs or seed not in args.seeds \
                    else runs["grid"][args.seeds.index(seed)]
                lr_rows.append((task_name, seed, scaling, found, plain))
                print(f"# {task_name} seed {seed} lr_scaling={scaling}: "
                      f"{found['result'].val_loss:.4f} (none: {plain['result'].val_loss:.4f})",
                      flush=True)

    print(f"\nSeeds {args.seeds}; means over seeds; regret and time ratios against the grid "
          "of the same seed.\n")
    print("| task | tuner | best val_loss | regret vs grid (mean) | regret (worst) "
          "| retrained val_loss | wall s | wall / grid | CPU / grid | passes trained | trials |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (task_name, tuner, loss, regret, worst, retrained, wall, wall_ratio, cpu_ratio,
         passes, trials) in rows:
        print(f"| {task_name} | {tuner} | {loss:.4f} | {regret:+.1f}% | {worst:+.1f}% "
              f"| {retrained:.4f} | {wall:.0f} | {wall_ratio:.2f} | {cpu_ratio:.2f} "
              f"| {passes:.0f} | {trials:.0f} |")
    if lr_rows:
        print("\n| task | seed | lr_scaling | grid's best val_loss | vs lr_scaling=None "
              "| best batch | retrained val_loss |")
        print("|---|---|---|---|---|---|---|")
        for task_name, seed, scaling, found, plain in lr_rows:
            loss, base = found["result"].val_loss, plain["result"].val_loss
            print(f"| {task_name} | {seed} | {scaling} | {loss:.4f} "
                  f"| {100 * (loss / base - 1):+.1f}% | {found['result'].batch_size} "
                  f"| {found['retrained']:.4f} |")


def mean(values):
    return statistics.mean(list(values))


if __name__ == "__main__":
    main()

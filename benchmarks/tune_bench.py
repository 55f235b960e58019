"""autobatch.tune against an exhaustive grid, Keras Tuner's RandomSearch and the Keras default.

Two small real tasks bundled with scikit-learn (no downloads): ``digits`` (1,797 8x8 images,
10 classes) and ``breast_cancer`` (569 samples, 30 features, 2 classes), each with a small
Keras MLP and a fixed, stratified 80/20 train/validation split. For each task and seed:

- **tune**: ``autobatch.tune(model, (x, y), validation_data=...)`` with its defaults
  (successive halving over every candidate; the budget of training samples is tune's default
  budget; early stopping after 2 passes over the data without a better val_loss);
- **grid**: the same call with ``tuner="grid"``: every candidate of the same space on the
  same budget, the exhaustive reference;
- **random**: ``keras_tuner.RandomSearch`` written as a user would, over the same space with
  the same per-candidate budget and early stopping, given as many trials as tune ran;
- **Keras default**: ``model.fit(batch_size=32, epochs=E)``, E full epochs making the same
  budget of training samples.

Columns: best val_loss, regret against the grid's best, wall seconds, time against the grid,
training samples. Then the judging check: a fresh model trained with ``tune``'s
``result.fit_kwargs()`` must reach a val_loss within 10% of the grid's best (goal 2%).
The probe runs once per task and its result is passed to both tune and grid, so neither
time includes it (it is reported apart).

Run:
    nice -n 10 python -m benchmarks.tune_bench --quick   # breast_cancer, one seed
    nice -n 10 python -m benchmarks.tune_bench           # both tasks, seeds 0 1 2
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from benchmarks import _common

EPOCH_FRACTIONS = (0.25, 0.5, 1.0)  # autobatch.tune's default steps_per_epoch fractions


def patience_passes() -> float:
    """autobatch.tune's default early stopping, in passes over the training data."""
    from autobatch.search.tune import DEFAULT_PATIENCE_PASSES

    return DEFAULT_PATIENCE_PASSES


@dataclass(frozen=True)
class Task:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    hidden: int
    num_classes: int

    def build(self, seed: int) -> Any:
        """A fresh compiled MLP with the seed's initial weights."""
        import keras

        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((self.x_train.shape[1],)),
                keras.layers.Dense(self.hidden, activation="relu"),
                keras.layers.Dense(self.hidden, activation="relu"),
                keras.layers.Dense(self.num_classes, activation="softmax"),
            ],
            name=f"{self.name}_mlp",
        )
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return model


def load_task(name: str) -> Task:
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}[name]
    x, y = loader(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x.astype("float32"), y.astype("int32"), test_size=0.2, stratify=y, random_state=0
    )
    scaler = StandardScaler().fit(x_train)
    hidden = {"digits": 64, "breast_cancer": 32}[name]
    return Task(
        name,
        scaler.transform(x_train).astype("float32"),
        y_train,
        scaler.transform(x_val).astype("float32"),
        y_val,
        hidden,
        int(y.max()) + 1,
    )


def space_batch_sizes(max_batch_size: int, num_samples: int) -> list[int]:
    """tune's default batch sizes below the probed maximum (shared by every method)."""
    from autobatch.search.space import default_batch_sizes

    return default_batch_sizes(min(max_batch_size, num_samples), num_samples)


def run_tune(
    task: Task, seed: int, probe: Any, tuner: str | None, batch_sizes: list[int]
) -> dict[str, Any]:
    """One tune call; ``tuner`` None leaves tune's default, as a user would."""
    import autobatch

    chosen = {} if tuner is None else {"tuner": tuner}

    model = task.build(seed)
    with tempfile.TemporaryDirectory(prefix="autobatch-tune-bench-") as directory:
        started = time.perf_counter()
        result = autobatch.tune(
            model,
            (task.x_train, task.y_train),
            validation_data=(task.x_val, task.y_val),
            **chosen,
            batch_sizes=batch_sizes,
            steps_per_epoch=list(EPOCH_FRACTIONS),
            probe=probe,
            directory=directory,
            overwrite=True,
            seed=seed,
            verbose=0,
        )
        seconds = time.perf_counter() - started
    return {
        "best_val_loss": result.val_loss,
        "seconds": seconds,
        "num_trials": len(result.trials),
        "samples": sum(t.samples_seen for t in result.trials),
        "fit_kwargs": result.fit_kwargs(),
        "result": result.to_dict(),
    }


def run_random_search(
    task: Task, seed: int, batch_sizes: list[int], max_trials: int, budget: int
) -> dict[str, Any]:
    """keras_tuner.RandomSearch over the same space, budget and early stopping, as a user writes it."""
    import keras
    import keras_tuner

    num_samples = len(task.x_train)
    patience_in_passes = patience_passes()
    samples_seen: list[int] = []

    class BatchSettings(keras_tuner.HyperModel):
        def build(self, hp: Any) -> Any:
            return task.build(seed)

        def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            batch_size = hp.get("batch_size")
            batches_per_pass = math.ceil(num_samples / batch_size)
            steps = max(1, math.ceil(hp.get("epoch_fraction") * batches_per_pass))
            epochs = math.ceil(budget / (steps * batch_size))
            patience = max(1, math.ceil(patience_in_passes * batches_per_pass / steps))
            stop = keras.callbacks.EarlyStopping("val_loss", patience=patience)
            # The last epoch of a pass is cut short on arrays (see autobatch.search.space);
            # Keras warns each time, which is expected here.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            history = model.fit(
                task.x_train, task.y_train, batch_size=batch_size, steps_per_epoch=steps,
                epochs=epochs, validation_data=(task.x_val, task.y_val), verbose=0,
                callbacks=[*kwargs.get("callbacks", []), stop],
            )
            samples_seen.append(len(history.history["loss"]) * steps * batch_size)
            return history

    hp = keras_tuner.HyperParameters()
    hp.Choice("batch_size", batch_sizes, ordered=True)
    hp.Choice("epoch_fraction", list(EPOCH_FRACTIONS), ordered=True)
    with tempfile.TemporaryDirectory(prefix="autobatch-tune-bench-random-") as directory:
        tuner = keras_tuner.RandomSearch(
            BatchSettings(), objective="val_loss", max_trials=max_trials, seed=seed,
            hyperparameters=hp, tune_new_entries=False, directory=directory,
            project_name="random", overwrite=True,
        )
        started = time.perf_counter()
        tuner.search(verbose=0)
        seconds = time.perf_counter() - started
        best = tuner.oracle.get_best_trials(1)[0]
        num_trials = len(tuner.oracle.trials)
    return {
        "best_val_loss": best.score,
        "seconds": seconds,
        "num_trials": num_trials,
        "samples": sum(samples_seen),
        "best": dict(best.hyperparameters.values),
    }


def run_keras_default(task: Task, seed: int, budget: int) -> dict[str, Any]:
    """Keras' default batch size, full epochs, as many as the same budget of samples allows."""
    model = task.build(seed)
    epochs = max(1, round(budget / len(task.x_train)))
    started = time.perf_counter()
    history = model.fit(
        task.x_train, task.y_train, batch_size=32, epochs=epochs,
        validation_data=(task.x_val, task.y_val), verbose=0,
    )
    losses = history.history["val_loss"]
    return {
        "best_val_loss": min(losses),
        "final_val_loss": losses[-1],
        "seconds": time.perf_counter() - started,
        "num_trials": 1,
        "epochs": epochs,
        "samples": epochs * len(task.x_train),
    }


def retrain(task: Task, seed: int, fit_kwargs: dict[str, int]) -> dict[str, Any]:
    """A fresh model trained with tune's fit_kwargs, as the user would: its final val_loss."""
    model = task.build(seed)
    started = time.perf_counter()
    history = model.fit(
        task.x_train, task.y_train, validation_data=(task.x_val, task.y_val), verbose=0,
        **fit_kwargs,
    )
    losses = history.history["val_loss"]
    return {"final_val_loss": losses[-1], "best_val_loss": min(losses),
            "seconds": time.perf_counter() - started}


def bench_task(name: str, seeds: list[int], note: Callable[[str], None]) -> dict[str, Any]:
    import autobatch

    task = load_task(name)
    started = time.perf_counter()
    probe = autobatch.probe(task.build(0), (task.x_train, task.y_train), verbose=0)
    probe_seconds = time.perf_counter() - started
    batch_sizes = space_batch_sizes(probe.max_batch_size, len(task.x_train))
    note(f"{name}: probe {probe.max_batch_size} in {probe_seconds:.1f} s; batch sizes {batch_sizes}")
    runs = []
    for seed in seeds:
        grid = run_tune(task, seed, probe, "grid", batch_sizes)
        note(f"{name} seed {seed}: grid {grid['best_val_loss']:.4f} in {grid['seconds']:.0f} s")
        ours = run_tune(task, seed, probe, None, batch_sizes)
        note(f"{name} seed {seed}: tune {ours['best_val_loss']:.4f} in {ours['seconds']:.0f} s, "
             f"{ours['num_trials']} trials, {ours['fit_kwargs']}")
        budget = grid["result"]["budget_samples"]
        random = run_random_search(task, seed, batch_sizes, ours["num_trials"], budget)
        note(f"{name} seed {seed}: random {random['best_val_loss']:.4f} in {random['seconds']:.0f} s")
        default = run_keras_default(task, seed, budget)
        again = retrain(task, seed, ours["fit_kwargs"])
        again["vs_tune"] = again["final_val_loss"] / ours["best_val_loss"] - 1
        note(f"{name} seed {seed}: retrained at tune's fit_kwargs: {again['final_val_loss']:.4f} "
             f"(tune said {ours['best_val_loss']:.4f})")
        runs.append({"seed": seed, "grid": grid, "tune": ours, "random": random,
                     "keras_default": default, "retrain": again})
    return {
        "task": name,
        "num_train": len(task.x_train),
        "num_val": len(task.x_val),
        "probe_max_batch_size": probe.max_batch_size,
        "probe_seconds": probe_seconds,
        "batch_sizes": batch_sizes,
        "epoch_fractions": list(EPOCH_FRACTIONS),
        "space_size": len(batch_sizes) * len(EPOCH_FRACTIONS),
        "runs": runs,
    }


METHODS = (
    ("grid", "grid (tune, tuner='grid')"),
    ("tune", "autobatch.tune (halving)"),
    ("random", "keras_tuner.RandomSearch"),
    ("keras_default", "Keras default (batch 32, full epochs)"),
)


def rows_for(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean over seeds, per method; regret and time are against the grid of the same seed."""
    rows = []
    for key, label in METHODS:
        regrets = [r[key]["best_val_loss"] / r["grid"]["best_val_loss"] - 1 for r in entry["runs"]]
        times = [r[key]["seconds"] / r["grid"]["seconds"] for r in entry["runs"]]
        rows.append(
            {
                "method": label,
                "best_val_loss": statistics.mean(r[key]["best_val_loss"] for r in entry["runs"]),
                "regret": statistics.mean(regrets),
                "worst_regret": max(regrets),
                "seconds": statistics.mean(r[key]["seconds"] for r in entry["runs"]),
                "time_vs_grid": statistics.mean(times),
                "trials": statistics.mean(r[key]["num_trials"] for r in entry["runs"]),
                "samples": statistics.mean(r[key]["samples"] for r in entry["runs"]),
            }
        )
    retrained = [r["retrain"]["final_val_loss"] / r["grid"]["best_val_loss"] - 1 for r in entry["runs"]]
    rows.append(
        {
            "method": "retrained at tune's fit_kwargs()",
            "best_val_loss": statistics.mean(r["retrain"]["final_val_loss"] for r in entry["runs"]),
            "regret": statistics.mean(retrained),
            "worst_regret": max(retrained),
            "seconds": statistics.mean(r["retrain"]["seconds"] for r in entry["runs"]),
            "time_vs_grid": None,
            "trials": 1,
            "samples": None,
        }
    )
    return rows


def table(entry: dict[str, Any]) -> str:
    return _common.markdown_table(
        ["method", "best val_loss", "regret vs grid", "worst regret", "seconds", "time / grid",
         "trials", "training samples"],
        [
            [r["method"], r["best_val_loss"], _percent(r["regret"]), _percent(r["worst_regret"]),
             r["seconds"], r["time_vs_grid"], r["trials"], r["samples"]]
            for r in rows_for(entry)
        ],
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def verdict(entry: dict[str, Any]) -> str:
    rows = {r["method"]: r for r in rows_for(entry)}
    ours = rows["autobatch.tune (halving)"]
    again = rows["retrained at tune's fit_kwargs()"]
    reproduced = max(abs(r["retrain"]["vs_tune"]) for r in entry["runs"])
    return (
        f"tune: regret {_percent(ours['regret'])} (goal <= +2%) at {ours['time_vs_grid']:.2f} of "
        f"the grid's time (goal < 0.33); retrained at fit_kwargs(): {_percent(again['regret'])} "
        f"vs the grid's best (must be <= +10%, goal +2%), {100 * reproduced:.4f}% at most "
        "from the val_loss tune reported"
    )


def plot(entries: list[dict[str, Any]], directory: Any, stem: str) -> Any:
    plt = _common.pyplot()
    figure, axes = plt.subplots(1, len(entries), figsize=(5.5 * len(entries), 4), squeeze=False)
    for axis, entry in zip(axes[0], entries, strict=True):
        for index, (key, label) in enumerate(METHODS):
            points = [(r[key]["seconds"], r[key]["best_val_loss"]) for r in entry["runs"]]
            axis.scatter(*zip(*points, strict=True), label=label, color=f"C{index}", s=40)
        axis.set_xscale("log")
        axis.set_xlabel("wall seconds (log)")
        axis.set_ylabel("best val_loss")
        axis.set_title(entry["task"])
        axis.legend(fontsize=7)
    return _common.save_figure(figure, directory, stem)


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=["digits", "breast_cancer"])
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 (quick: 0)")
    args = parser.parse_args(argv)
    tasks = args.tasks or (["breast_cancer"] if args.quick else ["digits", "breast_cancer"])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    _common.prepare_environment()

    def note(text: str) -> None:
        import sys

        sys.stderr.write(f"[tune_bench {time.strftime('%H:%M:%S')}] {text}\n")

    started = time.perf_counter()
    meta = _common.run_metadata("quick" if args.quick else "full")
    entries = [bench_task(name, seeds, note) for name in tasks]
    stem = _common.result_stem("tune_bench", args.quick)
    payload = {
        "benchmark": "tune_bench",
        "meta": meta,
        "settings": {"tasks": tasks, "seeds": seeds, "patience_passes": patience_passes(),
                     "epoch_fractions": list(EPOCH_FRACTIONS)},
        "tasks": entries,
        "seconds": time.perf_counter() - started,
    }
    path = _common.write_json(args.results_dir, stem, payload)
    print(f"## Tune benchmark ({meta['mode']}): {meta['device']['cpu']}, seeds {seeds}\n")
    for entry in entries:
        print(f"### {entry['task']}: {entry['num_train']} train / {entry['num_val']} validation "
              f"samples, {entry['space_size']} candidates (batch sizes {entry['batch_sizes']} x "
              f"steps_per_epoch fractions {entry['epoch_fractions']})\n")
        print(table(entry))
        print(f"\n{verdict(entry)}\n")
    print(f"JSON: {path}")
    if not args.no_plots:
        print(f"plot: {plot(entries, args.results_dir, stem)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

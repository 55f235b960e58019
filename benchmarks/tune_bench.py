"""autobatch.tune against an exhaustive grid (and, asked, Keras Tuner's RandomSearch) and the Keras default.

Three small real tasks bundled with scikit-learn (no downloads), each with a fixed,
stratified 80/20 train/validation split: ``digits`` (1,797 8x8 images, 10 classes, a Keras
MLP), ``breast_cancer`` (569 samples, 30 features, 2 classes, an MLP) and
``noisy_digits_cnn`` (the digits as 8x8 images, a 2k-parameter CNN, 30% of the training
labels replaced by random ones, clean validation labels: a task where the batch size
matters strongly, val_loss 0.51 at batch 16 and 1.52 at a full-batch 1437 on one seed).
For each task and seed:

- **tune**: ``autobatch.tune(model, (x, y), validation_data=...)`` with its defaults
  (successive halving over every candidate; the budget of training samples is tune's default
  budget; early stopping after 2 passes over the data without a better val_loss);
- **grid**: the same call with ``tuner="grid"``: every candidate of the same space on the
  same budget, the exhaustive reference;
- **random** (with ``--random`` only): ``keras_tuner.RandomSearch`` written as a user would,
  over the same space with the same per-candidate budget and early stopping, given as many
  trials as tune ran. Off by default: it took 2,727 of the 3,328 s of the last two-task run
  (it trains every candidate separately: 8 to 17 times the grid's time), and the three-task
  run must fit in an hour on 2 shared cores;
- **Keras default**: ``model.fit(batch_size=32, epochs=E)``, E full epochs making the same
  budget of training samples.

Columns: best val_loss, regret against the grid's best, wall seconds, time against the grid,
training samples. Then the judging check: a fresh model trained with ``tune``'s
``result.fit_kwargs()`` must reach a val_loss within 10% of the grid's best (goal 2%).
The probe runs once per task and its result is passed to both tune and grid, so neither
time includes it (it is reported apart).

Then the gradient noise scale: tune measures B_noise once per search and reports the
statistical efficiency and goodput (throughput x efficiency, Pollux's) per batch size. The
goodput table asks whether goodput could pick or prune candidates: from the grid's run
(every candidate's throughput measured), the batch size of the highest goodput, the grid's
best val_loss at that batch size against its best overall, and whether the winner's batch
size is among goodput's top three.

The JSON is rewritten after each task, so a run cut short keeps the tasks it finished.

Run:
    nice -n 10 python -m benchmarks.tune_bench --quick   # breast_cancer, one seed
    nice -n 10 python -m benchmarks.tune_bench           # all three tasks, seeds 0 1 2
    nice -n 10 python -m benchmarks.tune_bench --random  # ... and RandomSearch (hours)
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

from autobatch.results import _own_hyperparameters
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
        """A fresh compiled model (an MLP, or a small CNN for image tasks) with the seed's
        initial weights."""
        import keras

        keras.utils.set_random_seed(seed)
        if self.x_train.ndim == 4:  # images: two small convolutions, then the classifier
            body = [
                keras.Input(self.x_train.shape[1:]),
                keras.layers.Conv2D(self.hidden, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(self.hidden, 3, padding="same", activation="relu"),
                keras.layers.Flatten(),
            ]
            kind = "cnn"
        else:
            body = [
                keras.Input((self.x_train.shape[1],)),
                keras.layers.Dense(self.hidden, activation="relu"),
                keras.layers.Dense(self.hidden, activation="relu"),
            ]
            kind = "mlp"
        model = keras.Sequential(
            [*body, keras.layers.Dense(self.num_classes, activation="softmax")],
            name=f"{self.name}_{kind}",
        )
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return model


TASKS = ("digits", "breast_cancer", "noisy_digits_cnn")
#: noisy_digits_cnn: this share of the training labels is replaced by a random class (the
#: validation labels are clean). Noisy labels make the batch size matter: small batches
#: fit the noise sooner, large ones average it out but take few steps.
LABEL_NOISE = 0.3


def load_task(name: str) -> Task:
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    loader = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
              "noisy_digits_cnn": datasets.load_digits}[name]
    x, y = loader(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x.astype("float32"), y.astype("int32"), test_size=0.2, stratify=y, random_state=0
    )
    num_classes = int(y.max()) + 1
    if name == "noisy_digits_cnn":
        # The 8x8 images as images, pixels 0..16 scaled to 0..1; a fixed set of labels
        # replaced (the same for every seed: the task is fixed, the seed moves the weights).
        rng = np.random.default_rng(0)
        flipped = rng.random(len(y_train)) < LABEL_NOISE
        y_train = np.where(flipped, rng.integers(0, num_classes, len(y_train)), y_train)
        return Task(name, (x_train / 16).reshape(-1, 8, 8, 1), y_train.astype("int32"),
                    (x_val / 16).reshape(-1, 8, 8, 1), y_val, 8, num_classes)
    scaler = StandardScaler().fit(x_train)
    hidden = {"digits": 64, "breast_cancer": 32}[name]
    return Task(
        name,
        scaler.transform(x_train).astype("float32"),
        y_train,
        scaler.transform(x_val).astype("float32"),
        y_val,
        hidden,
        num_classes,
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
        "samples": trained_samples(result.trials),
        "fit_kwargs": result.fit_kwargs(),
        "result": result.to_dict(),
    }


def trained_samples(trials: list[Any]) -> int:
    """The samples a search trained. Not the sum of the trials' ``samples_seen``: candidates of
    one batch size share one run (each counts the run up to its own stop) and a later round
    continues it (counting the earlier rounds again), so a batch size's runs trained what
    the largest of its counts says. A run is a batch size and a HyperModel's own values."""
    largest: dict[tuple, int] = {}
    for trial in trials:
        run = (trial.batch_size, _own_hyperparameters(trial))
        largest[run] = max(largest.get(run, 0), trial.samples_seen)
    return sum(largest.values())


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


def bench_task(
    name: str, seeds: list[int], note: Callable[[str], None], with_random: bool = False
) -> dict[str, Any]:
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
        run = {"seed": seed, "grid": grid, "tune": ours}
        if with_random:
            run["random"] = run_random_search(task, seed, batch_sizes, ours["num_trials"], budget)
            note(f"{name} seed {seed}: random {run['random']['best_val_loss']:.4f} in "
                 f"{run['random']['seconds']:.0f} s")
        run["keras_default"] = run_keras_default(task, seed, budget)
        again = retrain(task, seed, ours["fit_kwargs"])
        again["vs_tune"] = again["final_val_loss"] / ours["best_val_loss"] - 1
        note(f"{name} seed {seed}: retrained at tune's fit_kwargs: {again['final_val_loss']:.4f} "
             f"(tune said {ours['best_val_loss']:.4f}); B_noise "
             f"{ours['result']['noise_scale_status']}: {ours['result']['noise_scale']}")
        run["retrain"] = again
        runs.append(run)
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
        if key not in entry["runs"][0]:
            continue
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


def goodput_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Per seed: tune's B_noise, and whether the grid run's goodput points at its winner."""
    rows = []
    for run in entry["runs"]:
        grid, ours = run["grid"]["result"], run["tune"]["result"]
        scored = [r for r in grid["goodput"] if r["goodput"] is not None]
        best_at: dict[int, float] = {}
        for trial in grid["trials"]:
            if trial["val_loss"] is not None:
                size = trial["batch_size"]
                best_at[size] = min(best_at.get(size, math.inf), trial["val_loss"])
        top = sorted(scored, key=lambda r: -r["goodput"])
        pick = top[0]["batch_size"] if top else None
        rows.append({
            "seed": run["seed"],
            "tune_noise_scale": ours["noise_scale"],
            "tune_noise_scale_standard_error": ours["noise_scale_standard_error"],
            "tune_noise_scale_seconds": ours["noise_scale_seconds"],
            "grid_noise_scale": grid["noise_scale"],
            "grid_winner_batch_size": grid["batch_size"],
            "goodput_batch_size": pick,
            "regret_at_goodput_batch": None if pick is None
            else best_at[pick] / grid["val_loss"] - 1,
            "winner_in_goodput_top3": grid["batch_size"] in [r["batch_size"] for r in top[:3]],
        })
    return rows


def goodput_table(entry: dict[str, Any]) -> str:
    def number(value: float | None, spread: float | None = None) -> str:
        if value is None:
            return "-"
        return f"{value:.0f}" + ("" if spread is None else f" +- {spread:.0f}")

    return _common.markdown_table(
        ["seed", "tune's B_noise", "seconds", "grid's B_noise", "grid winner's batch",
         "goodput's batch", "regret at goodput's batch", "winner in goodput's top 3"],
        [
            [r["seed"], number(r["tune_noise_scale"], r["tune_noise_scale_standard_error"]),
             r["tune_noise_scale_seconds"], number(r["grid_noise_scale"]),
             r["grid_winner_batch_size"], r["goodput_batch_size"],
             _percent(r["regret_at_goodput_batch"]), "yes" if r["winner_in_goodput_top3"]
             else "no"]
            for r in goodput_rows(entry)
        ],
    )


def plot(entries: list[dict[str, Any]], directory: Any, stem: str) -> Any:
    plt = _common.pyplot()
    figure, axes = plt.subplots(1, len(entries), figsize=(5.5 * len(entries), 4), squeeze=False)
    for axis, entry in zip(axes[0], entries, strict=True):
        for index, (key, label) in enumerate(METHODS):
            if key not in entry["runs"][0]:
                continue
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
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 (quick: 0)")
    parser.add_argument("--random", action="store_true",
                        help="also run keras_tuner.RandomSearch (10-25x the grid's time)")
    args = parser.parse_args(argv)
    tasks = args.tasks or (["breast_cancer"] if args.quick else list(TASKS))
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    _common.prepare_environment()

    def note(text: str) -> None:
        import sys

        sys.stderr.write(f"[tune_bench {time.strftime('%H:%M:%S')}] {text}\n")

    started = time.perf_counter()
    meta = _common.run_metadata("quick" if args.quick else "full")
    stem = _common.result_stem("tune_bench", args.quick)
    entries: list[dict[str, Any]] = []
    for name in tasks:
        entries.append(bench_task(name, seeds, note, with_random=args.random))
        payload = {
            "benchmark": "tune_bench",
            "meta": meta,
            "settings": {"tasks": tasks, "seeds": seeds, "patience_passes": patience_passes(),
                         "epoch_fractions": list(EPOCH_FRACTIONS), "random": args.random,
                         "label_noise": LABEL_NOISE},
            "tasks": entries,
            "finished_tasks": len(entries),
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
        print(goodput_table(entry) + "\n")
    print(f"JSON: {path}")
    if not args.no_plots:
        print(f"plot: {plot(entries, args.results_dir, stem)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

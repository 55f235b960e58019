"""Resident memory across the candidates of a search with a HyperModel: flat, or leaking?

Each candidate of a HyperModel search builds a new model. This script runs a grid of 30
candidates (5 batch sizes x 6 layer widths, one steps_per_epoch each, so every candidate is
its own training run) and reads the process's RSS when each candidate's training ends (a
callback passed with ``callbacks=``). Reported: RSS after the 5th and the last candidate,
the growth between them (goal: within 10%), and the least-squares slope per candidate.

Run:
    nice -n 10 python -m benchmarks.tune_rss
"""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks import _common

WARM_UP = 5  # candidates before the first reading compared (first traces, allocator pools)


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    _common.prepare_environment()
    import keras
    import keras_tuner
    import psutil

    import autobatch

    process = psutil.Process(os.getpid())
    readings: list[int] = []

    class ReadRss(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            readings.append(process.memory_info().rss)

    class Widths(keras_tuner.HyperModel):
        def build(self, hp):
            units = hp.Choice("units", [16, 24, 32, 48, 64, 96])
            model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(units, activation="relu"),
                                      keras.layers.Dense(1)])
            model.compile("adam", "mse")
            return model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20)).astype("float32")
    y = (x @ rng.normal(size=(20, 1))).astype("float32")
    started = time.perf_counter()
    with _common_directory() as directory:
        result = autobatch.tune(
            Widths(), (x, y), tuner="grid", batch_sizes=[16, 32, 64, 128, 256],
            steps_per_epoch=[1.0], budget_samples=4 * 1600, patience=None,
            memory=autobatch.FakeMemory(2**40), callbacks=[ReadRss()], directory=directory,
            verbose=0,
        )
    mib = [r / 2**20 for r in readings]
    slope = float(np.polyfit(np.arange(WARM_UP, len(mib)), mib[WARM_UP:], 1)[0])
    growth = mib[-1] / mib[WARM_UP - 1] - 1
    payload = {
        "benchmark": "tune_rss", "meta": _common.run_metadata("full"),
        "candidates": len(result.trials), "rss_mib": mib, "growth_after_warm_up": growth,
        "slope_mib_per_candidate": slope, "seconds": time.perf_counter() - started,
    }
    path = _common.write_json(args.results_dir, "tune_rss", payload)
    print(f"{len(result.trials)} candidates: RSS {mib[WARM_UP - 1]:.0f} MiB after candidate "
          f"{WARM_UP}, {mib[-1]:.0f} MiB after the last ({100 * growth:+.1f}%, goal within "
          f"10%); slope {slope:+.2f} MiB per candidate. JSON: {path}")
    return 0


def _common_directory():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="autobatch-tune-rss-")


if __name__ == "__main__":
    raise SystemExit(main())

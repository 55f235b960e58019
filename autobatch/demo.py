"""The built-in example behind ``autobatch demo``: a small CNN on synthetic 32x32 images.

It builds the model and data, saves them (``model.keras``, ``data.npz``) so the other
commands can be tried on the same files, probes, tunes, prints the tables and writes the
results (``probe.json``, ``tune.json``) and the plots (``plots/*.png``). It finishes in one
to three minutes on 2 CPU cores.

On CPU the memory limit defaults to ``+384MiB``: what the process holds once the model and
data are built, plus `HOST_HEADROOM`. With the machine's whole RAM as the limit, this small
model would be limited by the number of samples, and the plots would not show a limit at
work. On a GPU the real limit is used.

Example:
    >>> from autobatch import demo
    >>> probe_result, tune_result = demo.run("autobatch_demo_output")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autobatch import report

#: Extra memory the demo's probe may use on CPU, above what the process holds at the start.
HOST_HEADROOM = "384MiB"
NUM_SAMPLES = 3000
NUM_CLASSES = 10
IMAGE_SIZE = 32
#: The search space, kept small so the demo finishes in minutes on a laptop.
BATCH_SIZES = (16, 32, 64, 128, 256)
STEPS_FRACTIONS = (0.25, 0.5, 1.0)
#: Training samples per candidate, in passes over the training data (tune's default is 10).
BUDGET_PASSES = 4
VALIDATION_SPLIT = 0.2


def make_data(seed: int = 0) -> tuple[Any, Any]:
    """Images of 10 classes: a fixed blurry pattern per class under strong noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(NUM_CLASSES, IMAGE_SIZE // 4, IMAGE_SIZE // 4, 3))
    patterns = patterns.repeat(4, axis=1).repeat(4, axis=2)
    y = rng.integers(0, NUM_CLASSES, size=NUM_SAMPLES)
    x = 0.5 * patterns[y] + rng.normal(size=(NUM_SAMPLES, IMAGE_SIZE, IMAGE_SIZE, 3))
    return x.astype("float32"), y.astype("int32")


def make_model(seed: int = 0) -> Any:
    """A compiled three-convolution CNN (about 15k weights)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(NUM_CLASSES),
        ],
        name="demo_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def default_memory_limit() -> str | None:
    """On CPU ``"+384MiB"`` (what this process holds, plus `HOST_HEADROOM`); on a GPU None."""
    from autobatch.memory import detect_memory

    return f"+{HOST_HEADROOM}" if detect_memory().name == "host" else None


def run(
    output_dir: str | Path = "autobatch_demo_output",
    *,
    memory_limit: int | str | None = None,
    use_cache: bool = True,
    verbose: int = 1,
) -> tuple[Any, Any]:
    """Build, save, probe and tune the example; print the tables; write JSON and plots."""
    import numpy as np

    import autobatch

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    x, y = make_data()
    model = make_model()
    model.save(output / "model.keras")
    np.savez(output / "data.npz", x=x, y=y)
    say = report.show_message if verbose else (lambda text: None)
    say(
        f"[bold]1/3[/] A CNN on {NUM_SAMPLES} synthetic {IMAGE_SIZE}x{IMAGE_SIZE} images, "
        f"saved as {output / 'model.keras'} and {output / 'data.npz'}."
    )

    limit = memory_limit if memory_limit is not None else default_memory_limit()
    say(
        "[bold]2/3[/] Probing the largest batch that fits"
        + ("" if limit is None else f" (--memory-limit {limit})")
        + "..."
    )
    options: dict[str, Any] = {"memory_limit": limit, "verbose": verbose}
    if not use_cache:
        options["use_cache"] = False
    probe_result = autobatch.probe(model, (x, y), **options)
    probe_result.to_json(output / "probe.json")
    if verbose:  # the progress display has printed the summary: the table completes it
        report.show_result(probe_result, summary=False)

    batch_sizes = [b for b in BATCH_SIZES if b < probe_result.max_batch_size]
    batch_sizes = sorted({*batch_sizes, min(probe_result.max_batch_size, max(BATCH_SIZES))})
    say(
        f"[bold]3/3[/] Tuning batch_size over {batch_sizes} and steps_per_epoch over "
        f"{list(STEPS_FRACTIONS)} of a pass, below the probed limit..."
    )
    tune_result = autobatch.tune(
        model,
        (x, y),
        probe=probe_result,
        batch_sizes=batch_sizes,
        steps_per_epoch=list(STEPS_FRACTIONS),
        budget_samples=BUDGET_PASSES * round(NUM_SAMPLES * (1 - VALIDATION_SPLIT)),
        directory=str(output / "tuner"),
        overwrite=True,
        verbose=verbose,
    )
    tune_result.to_json(output / "tune.json")
    paths = tune_result.plot(output / "plots")
    if verbose:
        report.show_result(tune_result, include_probe=False, summary=False)
        report.show_paths("plots", paths)
        report.show_paths("results", [output / "probe.json", output / "tune.json"])
        limit_option = "" if limit is None else f" --memory-limit {limit}"
        report.show_message(
            "Try the command line on the same files:\n"
            f"  autobatch probe {output / 'model.keras'} --data {output / 'data.npz'}"
            f"{limit_option} --json probe.json --plots plots/\n"
            f"  autobatch report {output / 'tune.json'}"
        )
    return probe_result, tune_result

"""One probe trial: a few real training steps of the caller's model at one batch size."""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from autobatch.data import TrainingData
from autobatch.errors import NoTrainingError, TrialError
from autobatch.memory.base import MemoryBackend


@dataclass(frozen=True)
class TrialOutcome:
    batch_size: int
    peak_bytes: int | None
    steps: int
    seconds_per_step: float | None
    seconds: float
    out_of_memory: bool
    #: The watchdog ended the trial early: its peak passed ``stop_above_bytes``.
    stopped_early: bool = False

    @property
    def samples_per_second(self) -> float | None:
        if not self.seconds_per_step:
            return None
        return self.batch_size / self.seconds_per_step


def _step_timer() -> Any:
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Waits for each step's loss, so a late out-of-memory surfaces inside the trial,
        and times a typical step: the median after the first (which traces or compiles),
        so a partial batch and its retrace do not skew it."""

        def __init__(self) -> None:
            super().__init__()
            self.step_ends: list[float] = []
            self.last_loss = math.nan

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])
            self.step_ends.append(time.perf_counter())

        def seconds_per_step(self) -> float | None:
            if len(self.step_ends) < 2:
                return None
            durations = [b - a for a, b in zip(self.step_ends, self.step_ends[1:], strict=False)]
            return statistics.median(durations)

    return StepTimer()


class PastMemoryBound(Exception):
    """Raised by the watchdog inside ``fit`` to end a trial whose peak passed its bound."""


def watchdog(memory: MemoryBackend, stop_above_bytes: int | None) -> Any:
    """A callback that ends training the moment the peak passes ``stop_above_bytes``.

    On host RAM a trial that keeps going past the margin can reach the limit, and there the
    kernel kills the process. Checked after every training and evaluation step (a read of
    /proc/self/status, ~30 us), a peak growing with the steps is caught within one step of
    the margin, which the margin is sized to absorb.
    """
    import keras

    class Watchdog(keras.callbacks.Callback):
        def _check(self) -> None:
            if stop_above_bytes is not None and memory.peak_so_far() > stop_above_bytes:
                raise PastMemoryBound

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            memory.after_step()
            self._check()

        def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
            memory.after_step(validation=True)
            self._check()

    return Watchdog()


@contextlib.contextmanager
def quiet_retracing() -> Any:
    """Hide TensorFlow's "triggered tf.function retracing" warning: probe trials and search
    candidates change the batch shape (or the model) on purpose, and each shape traces anew."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class MeasuredFit:
    """One ``model.fit`` whose peak memory was measured (see `measured_fit`)."""

    peak_bytes: int | None
    """None when it ran out of memory."""
    steps: int
    """Optimizer steps that ran."""
    seconds: float
    out_of_memory: bool
    stopped_early: bool
    """The watchdog ended it: its peak passed ``stop_above_bytes``."""


def measured_fit(
    model: Any,
    memory: MemoryBackend,
    batch_size: int,
    fit_kwargs: dict[str, Any],
    callbacks: list[Any],
    *,
    stop_above_bytes: int | None,
    doing: str,
) -> MeasuredFit:
    """``model.fit(**fit_kwargs)`` at ``batch_size``, its peak measured, under the watchdog.

    What a trial and a verification share. Only out-of-memory errors are caught (and the
    memory released); anything else is raised as `TrialError`, ``doing`` saying what failed
    ("Training at batch size 64"). The caller restores the model's state.
    """
    from autobatch.errors import describe_backend_error

    iterations_before = int(model.optimizer.iterations.numpy())
    # Fresh functions per fit: cached ones would retrace for every new batch shape and keep
    # all those graphs alive.
    model.train_function = model.test_function = None
    # What earlier fits freed is handed back first, so this peak is not measured on top of
    # it (on host RAM, malloc keeps freed heap until asked: see HostMemory.release).
    memory.release()
    out_of_memory = stopped_early = False
    started = time.perf_counter()
    try:
        with memory.trial(batch_size) as reading, quiet_retracing():
            model.fit(
                **fit_kwargs, verbose=0, callbacks=[*callbacks, watchdog(memory, stop_above_bytes)]
            )
    except PastMemoryBound:
        stopped_early = True
    except Exception as error:  # noqa: BLE001 - only out-of-memory is swallowed, below
        if not memory.is_out_of_memory(error):
            raise TrialError(
                f"{doing} failed with {describe_backend_error(error)}. This is not an "
                "out-of-memory error, so autobatch stopped; check that model.fit works on "
                "this data at a small batch size."
            ) from error
        out_of_memory = True
    seconds = time.perf_counter() - started
    model.train_function = model.test_function = None
    if out_of_memory:
        # Outside the except block: its traceback no longer pins the failed step's tensors.
        memory.release()
    steps = int(model.optimizer.iterations.numpy()) - iterations_before
    return MeasuredFit(
        None if out_of_memory else reading.peak_bytes, steps, seconds, out_of_memory, stopped_early
    )


def run_trial(
    model: Any,
    data: TrainingData,
    batch_size: int,
    memory: MemoryBackend,
    *,
    steps: int,
    stop_above_bytes: int | None = None,
) -> TrialOutcome:
    """Train ``model`` for ``steps`` steps at ``batch_size`` and measure the peak memory.

    Only out-of-memory errors are caught (and the memory released); anything else is raised
    as `TrialError`. With ``stop_above_bytes``, the trial ends as soon as its peak passes it
    (``stopped_early``). The caller restores the model's state (see `autobatch.probing.state`).
    """
    inputs = data.probe_inputs(batch_size, steps)
    timer = _step_timer()
    fit = measured_fit(
        model,
        memory,
        batch_size,
        {**inputs.kwargs, "epochs": inputs.epochs, "steps_per_epoch": inputs.steps},
        [timer],
        stop_above_bytes=stop_above_bytes,
        doing=f"Training at batch size {batch_size}",
    )
    if fit.out_of_memory:
        return TrialOutcome(batch_size, None, 0, None, fit.seconds, True)
    if fit.steps < inputs.total_steps and not fit.stopped_early:
        raise NoTrainingError(
            f"The trial at batch size {batch_size} ran {fit.steps} of {inputs.total_steps} optimizer "
            "steps, so it measured nothing. The data ran out (a dataset smaller than one batch, "
            "or a callable that yields fewer batches than asked), or the model has no trainable "
            "weights. Check that model.fit(...) trains on this data."
        )
    return TrialOutcome(
        batch_size,
        fit.peak_bytes,
        fit.steps,
        timer.seconds_per_step(),
        fit.seconds,
        False,
        fit.stopped_early,
    )

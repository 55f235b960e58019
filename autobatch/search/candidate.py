"""Training one search candidate: one ``model.fit`` call on the shared budget, watched.

The call is the one ``model.fit(x, y, **result.fit_kwargs())`` will make: the same
``batch_size`` and ``steps_per_epoch`` on the same data form, with ``epochs`` set by the
candidate's budget. Validation runs after every epoch; early stopping on ``val_loss`` ends a
hopeless candidate. Out-of-memory errors and non-finite losses end the candidate as *failed*;
any other error is a real problem and propagates.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from autobatch.data import TrainingData
from autobatch.memory.base import MemoryBackend
from autobatch.probing.trial import quiet_retracing
from autobatch.search.space import Candidate


@dataclass
class CandidateOutcome:
    """What one candidate's training showed."""

    val_losses: list[float] = field(default_factory=list)
    epochs_run: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    """Wall seconds spent training, without validation."""
    stopped_early: bool = False
    """Early stopping (on val_loss) or the time budget ended it before its sample budget."""
    failure: str | None = None
    """Why the candidate failed ("out of memory", "loss is nan in epoch 3"); None if it did not."""
    peak_bytes: int | None = None

    @property
    def best_epoch(self) -> int | None:
        """1-based epoch of the lowest validation loss."""
        if not self.val_losses:
            return None
        return min(range(len(self.val_losses)), key=self.val_losses.__getitem__) + 1

    @property
    def best_val_loss(self) -> float | None:
        epoch = self.best_epoch
        return None if epoch is None else self.val_losses[epoch - 1]


def _watcher(max_seconds: float | None) -> Any:
    import keras

    class CandidateWatcher(keras.callbacks.Callback):
        """Records val_loss per epoch, stops on a non-finite loss or at the time budget, and
        times training apart from validation. Epoch-level only: a per-step hook would wait
        for every step's loss and slow a GPU down."""

        def __init__(self) -> None:
            super().__init__()
            self.val_losses: list[float] = []
            self.failure: str | None = None
            self.stopped_by_time = False
            self.validation_seconds = 0.0
            self._started = self._validation_started = 0.0

        def on_train_begin(self, logs: dict | None = None) -> None:
            self._started = time.perf_counter()

        def on_test_begin(self, logs: dict | None = None) -> None:
            self._validation_started = time.perf_counter()

        def on_test_end(self, logs: dict | None = None) -> None:
            self.validation_seconds += time.perf_counter() - self._validation_started

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            for name in ("loss", "val_loss"):
                value = logs.get(name)
                if value is None or not math.isfinite(float(value)):
                    self.failure = f"{name} is {value} in epoch {epoch + 1}"
                    self.model.stop_training = True
                    return
            self.val_losses.append(float(logs["val_loss"]))
            if max_seconds is not None and time.perf_counter() - self._started >= max_seconds:
                self.stopped_by_time = True
                self.model.stop_training = True

    return CandidateWatcher()


def train_candidate(
    *,
    fit: Any,
    model: Any,
    candidate: Candidate,
    train: TrainingData,
    validation: TrainingData,
    validation_batch_size: int,
    memory: MemoryBackend,
    min_delta: float,
) -> CandidateOutcome:
    """Train ``model`` as ``candidate`` says; ``fit(model, **kwargs)`` runs ``model.fit``.

    The caller has already given the model its initial weights and a fresh optimizer.
    """
    import keras

    watcher = _watcher(candidate.budget_seconds)
    callbacks = [watcher]
    if candidate.patience_epochs is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", mode="min", patience=candidate.patience_epochs,
                min_delta=min_delta,
            )
        )
    outcome = CandidateOutcome()
    out_of_memory = False
    started = time.perf_counter()
    try:
        with memory.trial(candidate.batch_size) as reading, warnings.catch_warnings(), \
                quiet_retracing():
            # Keras' note that shuffle does not apply to a dataset. (Epochs never run out of
            # data: steps_per_epoch divides a pass, see search/space.py.)
            warnings.filterwarnings("ignore", message=".*shuffle=True.*")
            fit(
                model,
                **train.search_inputs(candidate.batch_size),
                steps_per_epoch=candidate.steps_per_epoch,
                epochs=candidate.max_epochs,
                validation_data=validation.validation_inputs(validation_batch_size),
                validation_batch_size=validation_batch_size,
                callbacks=callbacks,
                verbose=0,
            )
    except Exception as error:  # noqa: BLE001 - only out-of-memory is swallowed, below
        if not memory.is_out_of_memory(error):
            raise
        out_of_memory = True
    outcome.seconds = time.perf_counter() - started
    if out_of_memory:
        # Outside the except block: its traceback no longer pins the failed step's tensors.
        memory.release()
        outcome.failure = "out of memory"
        return outcome
    outcome.peak_bytes = reading.peak_bytes
    outcome.val_losses = watcher.val_losses
    outcome.failure = watcher.failure
    outcome.epochs_run = len(watcher.val_losses) + (watcher.failure is not None)
    outcome.train_seconds = max(0.0, outcome.seconds - watcher.validation_seconds)
    outcome.stopped_early = outcome.epochs_run < candidate.max_epochs
    return outcome

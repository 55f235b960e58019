"""Training search candidates: one ``model.fit`` call per batch size and budget, watched.

Candidates that differ only in steps_per_epoch train the same steps on the same data; only
where validation falls differs. So one call, validated at the finest of their
steps_per_epoch, gives every one's learning curve: each reads every k-th validation, stops
where early stopping on ``val_loss`` would have stopped it, and its run is exactly the one
``model.fit(x, y, **result.fit_kwargs())`` makes (same batch_size, same steps; steps_per_epoch
only moves the validations). Out-of-memory errors and non-finite losses end the candidates as
*failed*; any other error is a real problem and propagates.

A run can continue an earlier one (successive halving's later rounds): the model and the
optimizer get the values saved at the last whole pass of the earlier run (a `RunState`),
its validation history is replayed so each candidate's early stopping goes on where it
was, and ``fit`` goes on from that epoch. Only whole passes are continuation points:
``model.fit`` starts a new pass over arrays at every call, so a continued run is then the
same steps on the same batches as one uninterrupted ``model.fit`` (bit for bit with Keras
seeded: with a global seed set, Keras shuffles every pass alike). Not bit for bit: a
``tf.data`` pipeline that reshuffles each pass starts its shuffle order again at each round
(measured: 0.55% apart from one ``fit`` on a small regression), and callbacks that keep
state across epochs (``ReduceLROnPlateau``) restart it. Endless data has no passes: its
runs are not continued but trained again.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    out_of_time: bool = False
    """The whole search's time budget ended it before its own budget or early stopping."""
    samples_cap: int | None = None
    """Training samples at which its single epoch was cut: the epoch held more than the
    budget (a first round's share smaller than a pass); None when not cut."""

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


@dataclass
class RunState:
    """A shared run at the end of a whole pass over the data: what continuing it needs.

    ``weights`` are the model's variables (Dropout's seed state included) and
    ``optimizer`` the optimizer's (``iterations`` and every slot), in their own order.
    Early stopping's state (each candidate's best val_loss and epochs since) is not kept
    apart: replaying ``val_losses`` rebuilds it exactly, for any candidate reading the run.
    """

    epoch: int
    """Epochs of the run so far (``fit``'s ``initial_epoch`` when continuing)."""
    samples: int
    """Training samples seen so far."""
    train_seconds: float
    """Wall seconds spent training so far, validation left out."""
    val_losses: list[float]
    """The run's val_loss after each of its epochs so far."""
    iterations: int
    """The optimizer's ``iterations`` (its steps so far)."""
    weights: list[Any] = field(default_factory=list, repr=False)
    optimizer: list[Any] = field(default_factory=list, repr=False)

    def load_into(self, model: Any) -> bool:
        """Give ``model`` these values, building its optimizer first; False (and nothing
        changed) when the layout differs.

        Keras skips the variables of an optimizer that is not built yet ("Skipping variable
        loading for optimizer"): Adam would restart from zero moments and step 0.
        """
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        targets = (list(model.variables), list(model.optimizer.variables))
        for variables, values in zip(targets, (self.weights, self.optimizer), strict=True):
            if [tuple(v.shape) for v in variables] != [np.shape(v) for v in values]:
                return False
        for variables, values in zip(targets, (self.weights, self.optimizer), strict=True):
            for variable, value in zip(variables, values, strict=True):
                variable.assign(value)
        return True

    @classmethod
    def of(cls, model: Any, *, epoch: int, samples: int, train_seconds: float,
           val_losses: list[float]) -> RunState:
        """The model's and optimizer's values now, copied."""
        return cls(
            epoch=epoch, samples=samples, train_seconds=train_seconds,
            val_losses=list(val_losses), iterations=int(model.optimizer.iterations.numpy()),
            weights=[np.array(v.numpy(), copy=True) for v in model.variables],
            optimizer=[np.array(v.numpy(), copy=True) for v in model.optimizer.variables],
        )


@dataclass
class _Follower:
    """One candidate read off a shared run: it sees every ``every``-th validation of the run
    and stops as Keras' ``EarlyStopping(monitor="val_loss", patience=..., min_delta=...)``
    would have stopped it, or at its own last epoch."""

    candidate: Candidate
    every: int
    min_delta: float
    val_losses: list[float] = field(default_factory=list)
    best: float | None = None
    wait: int = 0
    stopped_early: bool = False

    @property
    def done(self) -> bool:
        return self.stopped_early or len(self.val_losses) >= self.candidate.max_epochs

    def see(self, run_epoch: int, val_loss: float) -> None:
        """The run's 1-based epoch ``run_epoch`` ended with ``val_loss``."""
        if self.done or run_epoch % self.every:
            return
        self.val_losses.append(val_loss)
        self.wait += 1
        if self.best is None or val_loss + self.min_delta < self.best:
            self.best, self.wait = val_loss, 0
        elif self.candidate.patience_epochs is not None and (
            self.wait >= self.candidate.patience_epochs
        ):
            self.stopped_early = True


def shared_run_plan(candidates: list[Candidate]) -> tuple[int, int, list[int]]:
    """``(steps_per_epoch, epochs, every)`` of the one run that gives every candidate's curve:
    candidate ``i`` reads every ``every[i]``-th validation of the run.

    The candidates share a batch size and differ in steps_per_epoch only, so on the same
    data they train the same steps and differ only in where validation falls (measured:
    bit-identical val_loss for 2, 4 and 8 steps per epoch at batch 16, see
    tests/search/test_shared_runs.py). The run validates at the greatest common divisor of
    their steps_per_epoch (usually the finest of them, see `SearchSpace.steps_per_epoch_for`)
    and lasts until the longest of them would have ended. A candidate whose single epoch
    holds more samples than its budget (a first round's share smaller than a pass) reads the
    first validation at or past the budget instead, so it does not overspend.
    """
    steps = math.gcd(*(c.steps_per_epoch for c in candidates))
    every = []
    for c in candidates:
        k = c.steps_per_epoch // steps
        if c.max_epochs == 1 and c.budget_samples is not None:
            k = min(k, max(1, math.ceil(c.budget_samples / (steps * c.batch_size))))
        every.append(k)
    epochs = max(c.max_epochs * k for c, k in zip(candidates, every, strict=True))
    return steps, epochs, every


def _watcher(
    followers: list[_Follower], max_seconds: float | None, deadline: float | None,
    resume: RunState | None, snapshot_at: Any,
) -> Any:
    import keras

    class CandidateWatcher(keras.callbacks.Callback):
        """Records val_loss per epoch, stops on a non-finite loss, at the time budget or when
        every candidate following the run has stopped, times training apart from
        validation, and keeps the state at each whole pass (``snapshot_at(epoch)`` gives
        the samples seen when the 1-based run epoch ends a pass, None otherwise). Epoch-level
        only: a per-step hook would wait for every step's loss and slow a GPU down."""

        def __init__(self) -> None:
            super().__init__()
            self.val_losses: list[float] = list(resume.val_losses) if resume else []
            self.failure: str | None = None
            self.stopped_by_time = False
            self.stopped_by_deadline = False
            self.validation_seconds = 0.0
            self.snapshot: RunState | None = resume
            self._started = self._validation_started = 0.0

        def train_seconds(self) -> float:
            earlier = resume.train_seconds if resume else 0.0
            return earlier + time.perf_counter() - self._started - self.validation_seconds

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
            samples = snapshot_at(epoch + 1)
            if samples is not None:
                self.snapshot = RunState.of(
                    self.model, epoch=epoch + 1, samples=samples,
                    train_seconds=self.train_seconds(), val_losses=self.val_losses,
                )
            for follower in followers:
                follower.see(epoch + 1, self.val_losses[-1])
            if all(f.done for f in followers):
                self.model.stop_training = True
            if max_seconds is not None and self.train_seconds() >= max_seconds:
                self.stopped_by_time = True
                self.model.stop_training = True
            if deadline is not None and time.perf_counter() >= deadline:
                self.stopped_by_deadline = not self.model.stop_training
                self.model.stop_training = True

    return CandidateWatcher()


def _step_cap(steps: int) -> Any:
    import keras

    class StepCap(keras.callbacks.Callback):
        """Stops training after ``steps`` steps (used only for a run of one epoch)."""

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch + 1 >= steps:
                self.model.stop_training = True

    return StepCap()


@dataclass
class RunOutcome:
    """What one shared run gave: each candidate's outcome by its steps_per_epoch, and the
    state at its last whole pass (None when it reached none, or failed)."""

    outcomes: dict[int, CandidateOutcome]
    snapshot: RunState | None = None


def train_candidates(
    *,
    fit: Any,
    model: Any,
    candidates: list[Candidate],
    train: TrainingData,
    validation: TrainingData,
    validation_batch_size: int,
    memory: MemoryBackend,
    min_delta: float,
    deadline: float | None = None,
    callbacks: list[Any] | None = None,
    samples_per_pass: int | None = None,
    resume: RunState | None = None,
) -> RunOutcome:
    """Train ``model`` once for ``candidates`` (one batch size, several steps_per_epoch and
    the same budget); ``fit(model, **kwargs)`` runs ``model.fit``.

    The caller has already given the model its initial weights and a fresh optimizer, or
    ``resume``'s values (`RunState.load_into`): the run then goes on from ``resume.epoch``,
    each candidate's curve and early stopping carrying on from the replayed history.
    ``samples_per_pass``: the training samples in one pass over finite data; the run keeps
    its state at the end of each pass (`RunOutcome.snapshot`). None (endless data, which
    has no passes) keeps none: such a run cannot be continued.
    ``deadline`` (a ``time.perf_counter()`` value): the whole search's end; the run stops at
    the first epoch end past it, and the candidates it cut are marked ``out_of_time``.
    """
    batch_size = candidates[0].batch_size
    steps, epochs, every = shared_run_plan(candidates)
    followers = [_Follower(c, k, min_delta) for c, k in zip(candidates, every, strict=True)]
    done_before = 0 if resume is None else resume.epoch
    for epoch, val_loss in enumerate(resume.val_losses if resume else [], start=1):
        for follower in followers:
            follower.see(epoch, val_loss)
    budget = candidates[0].budget_samples
    cap_steps = None
    pass_ends = _pass_ends(samples_per_pass, batch_size, steps)
    if epochs == 1 and budget is not None and steps * batch_size > budget:
        # One epoch holds more than the budget: stop inside it (Keras still validates).
        cap_steps = math.ceil(budget / batch_size)
        callbacks = [_step_cap(cap_steps), *(callbacks or [])]
        # The cut epoch is no whole pass: a later round continuing from it would count it
        # as one and train another run than fit_kwargs() names (a winner scored at 0.43
        # retrained to 0.15). Such a run is not kept; a later round trains afresh.
        pass_ends = _pass_ends(None, batch_size, steps)
    watcher = _watcher(followers, candidates[0].budget_seconds, deadline, resume, pass_ends)
    out_of_memory = False
    started = time.perf_counter()
    reading = None
    if epochs > done_before and not all(f.done for f in followers):
        try:
            with memory.trial(batch_size) as reading, warnings.catch_warnings(), \
                    quiet_retracing():
                # Keras' note that shuffle does not apply to a dataset. (Epochs never run out
                # of data: steps_per_epoch divides a pass, see search/space.py.)
                warnings.filterwarnings("ignore", message=".*shuffle=True.*")
                fit(
                    model,
                    **train.search_inputs(batch_size),
                    steps_per_epoch=steps,
                    epochs=epochs,
                    initial_epoch=done_before,
                    validation_data=validation.validation_inputs(validation_batch_size),
                    validation_batch_size=validation_batch_size,
                    callbacks=[watcher, *(callbacks or [])],
                    verbose=0,
                )
        except Exception as error:  # noqa: BLE001 - only out-of-memory is swallowed, below
            if not memory.is_out_of_memory(error):
                raise
            out_of_memory = True
    seconds = time.perf_counter() - started
    if out_of_memory:
        # Outside the except block: its traceback no longer pins the failed step's tensors.
        memory.release()
        return RunOutcome({
            c.steps_per_epoch: CandidateOutcome(seconds=seconds, failure="out of memory")
            for c in candidates
        })
    train_seconds = (resume.train_seconds if resume else 0.0) + max(
        0.0, seconds - watcher.validation_seconds)
    outcomes = {}
    for follower in followers:
        outcome = CandidateOutcome(
            val_losses=follower.val_losses, seconds=seconds, train_seconds=train_seconds,
            peak_bytes=None if reading is None else reading.peak_bytes,
            samples_cap=(
                cap_steps * batch_size if cap_steps is not None
                else follower.every * steps * batch_size
                if follower.every < follower.candidate.steps_per_epoch // steps else None
            ),
        )
        if watcher.failure is not None and not follower.done:
            run_epoch = len(watcher.val_losses) + 1
            outcome.failure = watcher.failure.replace(
                f"epoch {run_epoch}", f"epoch {math.ceil(run_epoch / follower.every)}"
            )
        outcome.out_of_time = watcher.stopped_by_deadline and not follower.done
        outcome.epochs_run = len(follower.val_losses) + (outcome.failure is not None)
        outcome.stopped_early = outcome.epochs_run < follower.candidate.max_epochs
        outcomes[follower.candidate.steps_per_epoch] = outcome
    snapshot = None if watcher.failure is not None else watcher.snapshot
    return RunOutcome(outcomes, snapshot)


def _pass_ends(samples_per_pass: int | None, batch_size: int, steps: int) -> Any:
    """``samples_at(epoch)``: the samples seen when the 1-based run ``epoch`` ends a whole
    pass over the data, else None (always None for endless data: ``samples_per_pass`` None).

    On finite data an epoch of ``steps`` batches never crosses the end of a pass (steps
    divides the batches of a pass, see `autobatch.search.space`), so passes end every
    ``batches / steps`` epochs, the last batch of each the partial one.
    """
    if samples_per_pass is None:
        return lambda epoch: None
    batches = math.ceil(samples_per_pass / batch_size)
    if batches % steps:
        return lambda epoch: None
    per_pass = batches // steps
    return lambda epoch: None if epoch % per_pass else epoch // per_pass * samples_per_pass

"""Verifying the probe's answer the way it will be used: real ``fit`` epochs at that batch.

Probe trials are short, and on some models memory keeps growing with training: the
benchmark's Transformer peaked at 1878 MiB after 8 steps and at 1986 MiB after 22 (a fresh
TF/CPU process at batch 300), and a validation pass at the training batch size adds its own
traced function and buffers. So before the probe returns, one real ``fit`` at the answer runs
whole epochs, each ending with its partial batch and a validation pass at the same batch
size, until the peak stops growing: the epoch that raised it by less than
``growth_tolerance_bytes`` over the one before (at least ``MIN_EPOCHS``, at most
``max_epochs``). Epochs are capped at ``max_steps`` steps so huge datasets stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autobatch.data import TrainingData
from autobatch.memory.base import MemoryBackend
from autobatch.probing.trial import measured_fit

MIN_EPOCHS = 2


@dataclass(frozen=True)
class VerificationOutcome:
    batch_size: int
    peak_bytes: int | None
    """Peak over the whole verification; None when it ran out of memory."""
    epochs: int
    """Epochs completed (train pass + validation pass each)."""
    train_steps: int
    """Optimizer steps run."""
    epoch_peak_bytes: list[int] = field(default_factory=list)
    """The peak so far at the end of each epoch: how memory grew with training."""
    stable: bool = False
    """The peak stopped growing before ``max_epochs``."""
    out_of_memory: bool = False
    stopped_early: bool = False
    """The watchdog ended it: its peak passed the usable memory."""
    seconds: float = 0.0


def _is_stable(epoch_peaks: list[int], tolerance_bytes: int) -> bool:
    return len(epoch_peaks) >= MIN_EPOCHS and epoch_peaks[-1] - epoch_peaks[-2] <= tolerance_bytes


def _stability_stopper(memory: MemoryBackend, tolerance_bytes: int, epoch_peaks: list[int]) -> Any:
    import keras

    class StopWhenPeakIsStable(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            epoch_peaks.append(int(memory.peak_so_far()))
            if _is_stable(epoch_peaks, tolerance_bytes):
                self.model.stop_training = True

    return StopWhenPeakIsStable()


#: Steps of an epoch in a verification: huge datasets stay cheap to verify.
MAX_STEPS = 64


def verify(
    model: Any,
    data: TrainingData,
    batch_size: int,
    memory: MemoryBackend,
    *,
    stop_above_bytes: int | None,
    growth_tolerance_bytes: int,
    max_epochs: int = 4,
    max_steps: int = MAX_STEPS,
) -> VerificationOutcome:
    """Train ``model`` at ``batch_size`` as ``fit`` will, until its peak stops growing.

    Only out-of-memory errors are caught; anything else is raised as `TrialError`. The caller
    restores the model's state.
    """
    inputs = data.verification_inputs(batch_size, max_steps)
    epoch_peaks: list[int] = []
    fit = measured_fit(
        model,
        memory,
        batch_size,
        {**inputs.kwargs, "epochs": max_epochs, "steps_per_epoch": inputs.steps},
        [_stability_stopper(memory, growth_tolerance_bytes, epoch_peaks)],
        stop_above_bytes=stop_above_bytes,
        doing=f"Verifying batch size {batch_size} with real training epochs",
    )
    return VerificationOutcome(
        batch_size=batch_size,
        peak_bytes=fit.peak_bytes,
        epochs=len(epoch_peaks),
        train_steps=fit.steps,
        epoch_peak_bytes=epoch_peaks,
        stable=_is_stable(epoch_peaks, growth_tolerance_bytes),
        out_of_memory=fit.out_of_memory,
        stopped_early=fit.stopped_early,
        seconds=fit.seconds,
    )

"""Which batch size to try next: the probe's search, pure Python, no Keras.

Memory of a training step grows about linearly with the batch: ``peak = fixed + per_sample * b``.
Rather than doubling blindly, the strategy fits that line to the peaks it has measured and
jumps to where it predicts the usable memory ends, then verifies there:

1. One small trial. Its increment over the baseline is an upper bound on the per-sample cost
   (the fixed part is >= 0), so the batch predicted from it is below the real edge.
2. With two measured peaks, fit the line through the two largest and jump to its edge.
3. Stop when a verified batch is within ``tolerance`` of the predicted edge, or of a batch
   that did not fit.

When running out of memory cannot be caught (host RAM: the kernel's OOM killer sends SIGKILL),
a jump of more than twice the largest batch measured goes only half way to the usable memory
(and at most ``max_growth`` times further), so a curve that bends upwards is measured before
it can kill the process; the margin absorbs what the line still misses. Like keras-tuner's Oracle, this class only decides; the trial runs elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Observation:
    """What one trial showed: its batch size and peak memory (None when it ran out)."""

    batch_size: int
    peak_bytes: int | None


@dataclass(frozen=True)
class MemoryModel:
    """``peak = fixed_bytes + bytes_per_sample * batch_size``."""

    fixed_bytes: float
    bytes_per_sample: float

    def predict(self, batch_size: int) -> float:
        return self.fixed_bytes + self.bytes_per_sample * batch_size

    def largest_batch_under(self, peak_bytes: float) -> float:
        """The (fractional) batch size whose predicted peak is ``peak_bytes``."""
        if self.bytes_per_sample <= 0:
            return math.inf
        return (peak_bytes - self.fixed_bytes) / self.bytes_per_sample


@dataclass(frozen=True)
class Proposal:
    batch_size: int
    #: True when the batch size came from the fitted memory model.
    fitted: bool


class ProbeStrategy:
    """Decides the next batch size from the trials so far; see the module docstring.

    Example:
        >>> strategy = ProbeStrategy(limit_bytes=1000, baseline_bytes=0, margin=0.0)
        >>> history = []
        >>> while (proposal := strategy.propose(history)) is not None:
        ...     history.append(Observation(proposal.batch_size, run(proposal.batch_size)))
        >>> strategy.answer(history)
    """

    def __init__(
        self,
        *,
        limit_bytes: int,
        baseline_bytes: int,
        margin: float,
        max_batch_size: int | None = None,
        start_batch_size: int = 8,
        oom_is_catchable: bool = True,
        tolerance: float = 0.01,
        max_growth: float = 16.0,
        max_trials: int = 16,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.baseline_bytes = baseline_bytes
        self.usable_bytes = int(baseline_bytes + (limit_bytes - baseline_bytes) * (1.0 - margin))
        self.max_batch_size = max_batch_size if max_batch_size is not None else math.inf
        self.start_batch_size = start_batch_size
        self.oom_is_catchable = oom_is_catchable
        self.tolerance = tolerance
        self.max_growth = max_growth
        self.max_trials = max_trials
        #: Why the last call to `propose` returned None, in words.
        self.stop_reason = ""

    def fits(self, observation: Observation) -> bool:
        """Ran without running out, and peaked within the usable memory."""
        return observation.peak_bytes is not None and observation.peak_bytes <= self.usable_bytes

    def answer(self, history: list[Observation]) -> int:
        """The largest verified batch size; 0 when none fitted."""
        return max((o.batch_size for o in history if self.fits(o)), default=0)

    def memory_model(self, history: list[Observation]) -> MemoryModel | None:
        """The line through the two largest measured batches (one point: through the baseline).

        Through the baseline, the whole increment is charged to the samples: an upper bound
        on the per-sample cost, so predictions from it err on the safe side.
        """
        measured: dict[int, int] = {}
        for o in history:
            if o.peak_bytes is not None:
                measured[o.batch_size] = max(o.peak_bytes, measured.get(o.batch_size, 0))
        if not measured:
            return None
        sizes = sorted(measured)
        if len(sizes) >= 2:
            small, large = sizes[-2], sizes[-1]
            slope = (measured[large] - measured[small]) / (large - small)
            if slope > 0:
                return MemoryModel(measured[large] - slope * large, slope)
        # One point, or a flat/noisy pair: charge the whole increment to the samples.
        largest = sizes[-1]
        slope = max(measured[largest] - self.baseline_bytes, 0) / largest
        return MemoryModel(float(self.baseline_bytes), slope)

    def propose(self, history: list[Observation]) -> Proposal | None:
        """The next batch size to try, or None when the search is over."""
        proposal, self.stop_reason = self._next(history)
        return proposal

    def _next(self, history: list[Observation]) -> tuple[Proposal | None, str]:
        if len(history) >= self.max_trials:
            return None, f"reached the trial limit ({self.max_trials})"
        largest_fit = self.answer(history)
        smallest_fail = min((o.batch_size for o in history if not self.fits(o)), default=math.inf)
        cap = min(self.max_batch_size, smallest_fail - 1)

        if not history:
            return Proposal(int(min(self.start_batch_size, self.max_batch_size)), False), ""
        if largest_fit == 0:
            if smallest_fail <= 1:
                return None, "batch size 1 does not fit"
            # Nothing fitted yet: shrink fast; the model below needs one point that fits.
            return Proposal(max(1, int(smallest_fail) // 4), False), ""
        if largest_fit >= self.max_batch_size:
            return None, "limited by the number of training samples"
        if largest_fit >= cap:
            return None, "the next batch size up did not fit"

        model = self.memory_model(history)
        assert model is not None  # a batch fitted, so a peak was measured
        measured = sorted({o.batch_size for o in history if o.peak_bytes is not None})
        edge = model.largest_batch_under(self.usable_bytes)
        step = max(1.0, self.tolerance * largest_fit)
        if cap - largest_fit <= step:
            return None, "bracketed the limit within the tolerance"
        if len(measured) == 1:
            # The one-point line is only an upper bound on the cost: its edge is a floor, and
            # a step past it is needed to measure the slope at all.
            edge = max(edge, 2 * largest_fit if self.oom_is_catchable else largest_fit + 1)
        elif edge - largest_fit < step:
            return None, "reached the predicted memory limit"

        if edge >= smallest_fail:
            # The line is wrong above the largest fit: split the bracket instead.
            target = largest_fit + (smallest_fail - largest_fit) / 2
        elif not self.oom_is_catchable and edge > 2 * measured[-1]:
            # A far jump could meet a curve that bends upwards, and here that would kill the
            # process: go half way to the usable memory first, and measure again there.
            largest_peak = model.predict(measured[-1])
            target = model.largest_batch_under((largest_peak + self.usable_bytes) / 2)
            target = min(target, measured[-1] * self.max_growth)
        else:
            target = edge
        batch_size = int(min(max(math.floor(target), largest_fit + 1), cap))
        return Proposal(batch_size, True), ""

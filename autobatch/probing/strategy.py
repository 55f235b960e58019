"""Which batch size to try next: the probe's search, pure Python, no Keras.

Memory of a training step grows about linearly with the batch: ``peak = fixed + per_sample * b``.
Rather than doubling blindly, the strategy fits that line to the peaks it has measured and
jumps to where it predicts the usable memory ends, then verifies there:

1. One small trial. Its increment over the baseline is an upper bound on the per-sample cost
   (the fixed part is >= 0), so the batch predicted from it is below the real edge.
2. With two measured peaks, fit a line to the largest and jump to its edge (see
   `ProbeStrategy.memory_model` for which peaks).
3. Stop when a verified batch is within ``tolerance`` of the predicted edge, or of a batch
   that did not fit (where peaks scatter between processes, within twice the tolerance of
   a batch that did not fit when the line puts the edge just under it), or when two trials
   past the margin peaked alike though their batches differ and the bracket is narrow (the
   peak jumps somewhere under them, where no line can place it; a wide bracket is halved).

When running out of memory cannot be caught (host RAM: the kernel's OOM killer sends SIGKILL),
each step goes at most a quarter of the way from the largest measured peak to the limit, less
the scatter of the peaks around the line, and less again when an earlier step cost more than
its line predicted (after a step that cost 3.5x its prediction, later steps take a fifth of
the room, not a quarter); and it at most doubles the batch from one trial to the next: memory
an earlier training run freed, and the trials reuse, hides the slope (a Transformer probed
after its user trained at batch 186 rose 90 MiB from batch 1 to 192, where a new process
rises 700), so a flat curve is no evidence of room. Where the data's size is known, a step
is also bounded over the batch shapes its trial runs (partial batches and validation
included, summed): TF/CPU keeps memory per shape (`_bounded_by_shapes`). A curve
that bends upwards is thus measured before it can kill the process; the margin absorbs what
the line still misses. Like keras-tuner's Oracle, this class only decides; the
trial runs elsewhere.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

#: Host RAM: a step goes at most this fraction of the room left (1/4): an LSTM's step predicted
#: at 148 MiB cost 407 (2.75x, validation included), and a trial past the margin leaves its
#: memory pooled in the process for the verification and the caller's next fit.
HOST_STEP_DIVISOR = 4.0
#: Host RAM: a step bounded over summed batch shapes may rise this many times a step's share.
SHAPE_STEP_FACTOR = 2.0
#: Host RAM: at most about this many batch sizes are scanned for one whose shapes fit a step.
MAX_SHAPE_SCAN = 100_000
#: Trials past the margin that peaked alike end the search when the largest fit is within
#: this many tolerances under the smallest batch that did not fit (15% for workers): a
#: CNN's 607 after 542 fitted. Further down, the bracket is halved: another CNN run's 620
#: and 558 after 429 would have stopped at 0.63 of the batch real training fits.
FLAT_BRACKET = 3.0
#: Host RAM: steps that rose by less than this share of the free memory do not count towards
#: `ProbeStrategy.surprise` as predictions (their slope is scatter).
FLAT_RISE = 0.02
#: Host RAM: a step up counts towards `ProbeStrategy.surprise` when it raised the peak by at
#: least this share of the free memory.
SURPRISE_RISE = 0.05


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
        start_batch_size: int | None = None,
        oom_is_catchable: bool = True,
        tolerance: float = 0.01,
        max_growth: float | None = None,
        max_trials: int | None = None,
        min_margin_bytes: int = 0,
        measured_answers_only: bool = False,
        shape_load: Callable[[int], int] | None = None,
    ) -> None:
        self.limit_bytes = limit_bytes
        self.baseline_bytes = baseline_bytes
        self.margin = margin
        self.usable_bytes = min(
            int(baseline_bytes + (limit_bytes - baseline_bytes) * (1.0 - margin)),
            limit_bytes - min_margin_bytes,
        )
        self.max_batch_size = max_batch_size if max_batch_size is not None else math.inf
        # Host RAM starts at batch 1: if that is too much, nothing fits, and any larger first
        # trial could be the one the OOM killer ends. A catchable device can afford a bolder
        # start, which gives the first line fit a better-measured point.
        if start_batch_size is None:
            start_batch_size = 8 if oom_is_catchable else 1
        self.start_batch_size = start_batch_size
        self.oom_is_catchable = oom_is_catchable
        self.tolerance = tolerance
        # A catchable device can afford bold jumps (the worst case is one caught OOM); on
        # host RAM a jump the line did not foresee is a SIGKILL: at most doubling there.
        self.max_growth = max_growth if max_growth is not None else (16.0 if oom_is_catchable else 2.0)
        # Doubling from batch 1 takes 10 trials to reach 1024 on host RAM.
        self.max_trials = max_trials if max_trials is not None else (16 if oom_is_catchable else 24)
        #: The answer is a batch a trial measured, never one between trials, and backing off
        #: prefers one (see `autobatch.probing.answer.verified_answer`): where peaks are not
        #: monotone in the batch (TF/CPU, worker processes), an unmeasured batch may sit on
        #: a spike (a CNN's verification peaked at 880 MiB at 553 samples, 807 at 528; a
        #: trial at 665 peaked at 764).
        self.measured_answers_only = measured_answers_only
        #: Host RAM: the batch sizes a trial at ``b`` runs, summed (its partial batches and
        #: validation included; `autobatch.data.TrainingData.batch_shapes_load`). Where
        #: every shape keeps its own memory, a step to a batch with a large partial batch
        #: costs several times what the line over batch sizes predicts, so steps are also
        #: bounded over this sum (`_bounded_by_shapes`). None: the batch size alone.
        self.shape_load = shape_load
        #: Why the last call to `propose` returned None, in words.
        self.stop_reason = ""

    def fits(self, observation: Observation) -> bool:
        """Ran without running out, and peaked within the usable memory."""
        return observation.peak_bytes is not None and observation.peak_bytes <= self.usable_bytes

    def answer(self, history: list[Observation]) -> int:
        """The largest batch size that fits; 0 when none did.

        That is the largest verified batch, or, when a larger batch ran within the limit but
        past the margin, the batch interpolated between the two where the usable memory
        ends: the larger trial shows that it runs, the interpolation keeps the margin (not
        with ``measured_answers_only``).
        """
        fitting = [o for o in history if self.fits(o)]
        if not fitting:
            return 0
        low = max(fitting, key=lambda o: o.batch_size)
        if self.measured_answers_only:
            return low.batch_size
        ran_past_margin = [
            o
            for o in history
            if o.peak_bytes is not None and not self.fits(o) and o.batch_size > low.batch_size
        ]
        if not ran_past_margin:
            return low.batch_size
        high = min(ran_past_margin, key=lambda o: o.batch_size)
        assert low.peak_bytes is not None and high.peak_bytes is not None
        share = (self.usable_bytes - low.peak_bytes) / (high.peak_bytes - low.peak_bytes)
        between = math.floor(low.batch_size + share * (high.batch_size - low.batch_size))
        # Never past a batch that ran out: memory is not monotone in the batch everywhere (a
        # CNN's worker at 514 samples was killed where 630 ran), and the ran-out one is known.
        ran_out = min((o.batch_size for o in history if o.peak_bytes is None), default=math.inf)
        return int(max(low.batch_size, min(between, high.batch_size - 1, ran_out - 1)))

    def memory_model(self, history: list[Observation]) -> MemoryModel | None:
        """The line fitted to the largest measured batches (one point: through the baseline).

        On a device whose out-of-memory can be caught, the line through the two largest
        batches: allocators there are exact, and the newest slope is the one that matters.
        On host RAM, a least-squares line over the batches from half the largest up (and
        the next one below): peaks scatter by tens of MiB from run to run, and a line through
        two close neighbours turns that into nonsense (on a CNN, 578 and 580 samples peaked
        at 898 and 878 MiB: a negative slope, and a step after them 1.3 MiB a sample).

        Through the baseline, the whole increment is charged to the samples: an upper bound
        on the per-sample cost, so predictions from it err on the safe side.
        """
        measured = _largest_peaks(history)
        if not measured:
            return None
        sizes = sorted(measured)
        if len(sizes) >= 2:
            fitted = _least_squares(self._fitted_peaks(measured))
            if fitted.bytes_per_sample > 0:
                return fitted
        # One point, or a flat/noisy pair: charge the whole increment to the samples.
        largest = sizes[-1]
        slope = max(measured[largest] - self.baseline_bytes, 0) / largest
        return MemoryModel(float(self.baseline_bytes), slope)

    def _fitted_peaks(self, measured: dict[int, int]) -> dict[int, int]:
        """The measured peaks that `memory_model` fits its line to (see there which)."""
        sizes = sorted(measured)
        if self.oom_is_catchable:
            chosen = sizes[-2:]
        else:
            below_half = [b for b in sizes if 2 * b < sizes[-1]]
            chosen = below_half[-1:] + [b for b in sizes if 2 * b >= sizes[-1]]
        return {b: measured[b] for b in chosen}

    def propose(self, history: list[Observation]) -> Proposal | None:
        """The next batch size to try, or None when the search is over."""
        proposal, self.stop_reason = self._next(history)
        return proposal

    def _next(self, history: list[Observation]) -> tuple[Proposal | None, str]:
        if len(history) >= self.max_trials:
            return None, f"reached the trial limit ({self.max_trials})"
        largest_fit = max((o.batch_size for o in history if self.fits(o)), default=0)
        smallest_fail = min((o.batch_size for o in history if not self.fits(o)), default=math.inf)
        cap = min(self.max_batch_size, smallest_fail - 1)

        if not history:
            return Proposal(int(min(self.start_batch_size, self.max_batch_size)), False), ""
        if largest_fit == 0:
            if smallest_fail <= 1:
                return None, "batch size 1 does not fit"
            # Nothing fitted yet: batch 1 either fits and gives the line its first point, or
            # nothing does. Halving instead could run out of memory again and again.
            return Proposal(1, False), ""
        if largest_fit >= self.max_batch_size:
            return None, "limited by the number of training samples"
        if largest_fit >= cap:
            return None, "the next batch size up did not fit"
        if not self.oom_is_catchable and smallest_fail is not math.inf:
            # After a trial past the margin, host measurements are inflated by the memory that
            # trial left behind: trials further down would mislead, so stop at the largest fit.
            return None, "a trial went past the safety margin"

        model = self.memory_model(history)
        assert model is not None  # a batch fitted, so a peak was measured
        # Between the largest fit and such trials the peak jumps, at a batch no line places:
        # a CNN's workers at 675 and 607 samples both peaked 1 MiB past the margin, then 574
        # and 558 past it too (542 fitted, 80 MiB lower). Within a narrow bracket, more
        # trials are coin tosses for a few percent; a wide one is split in half.
        flat = self._flat_past_margin(history, largest_fit)
        if flat and largest_fit >= smallest_fail * (1 - FLAT_BRACKET * self.tolerance):
            return None, "trials past the margin at different batch sizes peaked alike"
        num_measured = len({o.batch_size for o in history if o.peak_bytes is not None})
        edge = model.largest_batch_under(self.usable_bytes)
        if math.isinf(edge):
            # No measured growth at all (peaks at or below the baseline, as on tiny models):
            # nothing bounds the step but the largest growth allowed.
            edge = largest_fit * self.max_growth
        close_enough = self.tolerance * largest_fit
        if cap - largest_fit < max(1, close_enough):
            return None, "bracketed the limit within the tolerance"
        if num_measured == 1:
            # The one-point line is only an upper bound on the cost: its edge is a floor, and
            # a step past it is needed to measure the slope at all. On host RAM that step is
            # one sample, taken only while the measured peak is below the limit: it could kill
            # only if one sample cost more than the margin, which then allows ~1/margin samples.
            largest_peak = model.predict(largest_fit)
            if self.oom_is_catchable:
                edge = max(edge, 2 * largest_fit)
            elif largest_peak < self.limit_bytes:
                edge = max(edge, largest_fit + 1)
            elif math.floor(edge) <= largest_fit:
                return None, "a larger batch could cross the limit"
        elif not flat and (math.floor(edge) <= largest_fit or edge - largest_fit < close_enough):
            # (After a flat pair the line says nothing: it may run through that very pair.)
            return None, "reached the predicted memory limit"

        if edge >= smallest_fail or flat:
            # The line is wrong above the largest fit: split the bracket instead.
            target = largest_fit + (smallest_fail - largest_fit) / 2
        elif self.measured_answers_only and edge >= smallest_fail * (1 - self.tolerance):
            # The line puts the limit just under a batch that did not fit (a near miss). Where
            # peaks scatter between processes, the batch right under it is a coin toss that
            # gains nothing: an LSTM's workers at 884 and 880 ran past the margin after 807
            # fitted, then 843 fitted in its trial and failed its verification. Step back by
            # twice the tolerance instead, and stop once a batch there fits.
            floor = math.floor(smallest_fail * (1 - 2 * self.tolerance))
            if largest_fit >= floor:
                return None, "the limit lies within the tolerance under a batch that did not fit"
            target = floor
        elif not self.oom_is_catchable:
            step = self._host_step(history, model)
            if step is None:
                return None, "the measured peaks scatter by more than the room left"
            rest = self.usable_bytes - max(_largest_peaks(history).values())
            if num_measured >= 3 and rest <= (self.limit_bytes - self.usable_bytes) / 2:
                # Within half the margin of the usable memory, more trials that each go a
                # quarter of the rest gain little: the answer is the largest batch that ran.
                # Not the line's edge beyond it: real epochs there (the verification) cost more
                # than any trial measured (a CNN's verification 7% above its largest trial
                # peaked 77 MiB higher, 99% of the limit).
                return None, "within half the margin of the usable memory"
            target = min(edge, step)
            if self.shape_load is not None:
                highest = int(min(math.floor(target), cap))  # the step's growth limit bounds target
                bounded = self._bounded_by_shapes(history, model, largest_fit, highest)
                if bounded is None:
                    return None, "every larger batch adds batch shapes that could cross the limit"
                target = bounded
        else:
            target = edge
        batch_size = int(min(max(math.floor(target), largest_fit + 1), cap))
        return Proposal(batch_size, True), ""

    def _flat_past_margin(self, history: list[Observation], largest_fit: int) -> bool:
        """Whether, of two measured trials past the margin above the largest fit, the smaller
        saved less than half of what the chord from the largest fit to it predicts for the
        samples it dropped. Not the fitted line: on a catchable device that runs through the
        two largest batches, the very pair in question, and a flat pair flattens it too."""
        measured = _largest_peaks(history)
        past = sorted(b for b, peak in measured.items()
                      if b > largest_fit and peak > self.usable_bytes)
        for smaller, larger in itertools.pairwise(past):
            chord = (measured[smaller] - measured[largest_fit]) / (smaller - largest_fit)
            if measured[larger] - measured[smaller] < 0.5 * chord * (larger - smaller):
                return True
        return False

    def _host_step(self, history: list[Observation], model: MemoryModel) -> float | None:
        """The largest next batch that cannot cross the host limit, even if mispredicted;
        None when there is no room left for another step.

        Host memory is not linear in the batch: TensorFlow on CPU switches kernels and keeps
        freed memory (on a small CNN the slope grew 2.6x between batch 512 and 900; on
        another, one step of 22 samples cost 170 MiB where its line predicted 60), and
        crossing the limit kills the process. So the room left is first reduced by how far
        the measured peaks near the top scatter around the line, and a step takes at most a
        quarter of the rest, less when an earlier step already cost more than predicted (see
        `surprise`): a step that costs as many times its prediction as the worst seen so far,
        and half as many again, still survives, and is measured before the next.

        The room is counted from the highest peak any trial reached, not the largest batch's:
        in-process peaks are not monotone (an LSTM at 535 samples peaked at 1055 MiB, then
        at 570 at 929, once its allocator had handed memory back), and a larger batch that
        peaked lower is scatter, not room.
        """
        rise = self._host_rise(history, model)
        if rise is None:
            return None
        measured = _largest_peaks(history)
        largest = max(measured)
        growth = largest * self.max_growth
        slope = self._step_slope(measured, model)
        if slope <= 0:
            return growth
        return min(largest + rise / slope, growth)

    def _host_rise(self, history: list[Observation], model: MemoryModel) -> float | None:
        """How far above the highest peak so far the next host step may go (see
        `_host_step`); None when the scatter leaves no room."""
        measured = _largest_peaks(history)
        fitted = self._fitted_peaks(measured)
        # Scatter around the fitted line even where its slope is useless (flat or negative
        # from noise): measured against the fallback line through the baseline instead, the
        # fixed cost of training would count as scatter and stall the search.
        line = _least_squares(fitted) if len(fitted) >= 2 else model
        scatter = max(abs(peak - line.predict(b)) for b, peak in fitted.items())
        scatter = max(scatter, _largest_inversion(measured))
        room = self.limit_bytes - max(measured.values()) - scatter
        if room <= 0:
            return None
        share = 1.0 / max(HOST_STEP_DIVISOR, 1.5 * self.surprise(history))
        return room * share

    def _bounded_by_shapes(
        self, history: list[Observation], model: MemoryModel, low: int, high: int
    ) -> int | None:
        """The largest batch in ``(low, max(high, low + 1)]`` whose summed batch shapes
        (`shape_load`) stay within the step's allowed rise; None when none does.

        The cost of a shape unit is the steepest rise from the smallest measured load to
        any measured load at least half the largest: an upper bound, as the host step's
        slope is. Loads are not monotone in the batch (600 samples of 1638 leave a partial
        batch of 438, 546 leave none), so the batches are scanned from the top down.
        """
        assert self.shape_load is not None
        measured = _largest_peaks(history)
        rise = self._host_rise(history, model)
        if rise is None:
            return None
        # The step's share of the room allows for a slope that the batch sizes hide; the
        # steepest slope over the shapes already accounts for it, so it may take twice that.
        rise *= SHAPE_STEP_FACTOR
        loads = {b: self.shape_load(b) for b in measured}
        base = min(measured, key=lambda b: (loads[b], b))
        top_load = max(loads.values())
        slope = max(
            ((measured[b] - measured[base]) / (loads[b] - loads[base])
             for b in measured if loads[b] > loads[base] and 2 * loads[b] >= top_load),
            default=0.0,
        )
        high = max(high, low + 1)
        if slope <= 0:
            return high
        highest = max(measured, key=lambda b: measured[b])
        ceiling = min(
            loads[highest] + rise / slope,
            loads[base] + (measured[highest] + rise - measured[base]) / slope,
        )
        # Every batch from the top down; past MAX_SHAPE_SCAN of them, evenly spaced ones
        # (batches of 100k samples and more, where a few samples matter little).
        stride = max(1, math.ceil((high - low) / MAX_SHAPE_SCAN))
        for batch_size in range(high, low, -stride):
            if self.shape_load(batch_size) <= ceiling:
                return batch_size
        return None

    def _step_slope(self, measured: dict[int, int], model: MemoryModel) -> float:
        """Bytes a sample to size host steps with: the steeper of the fitted slope and the
        slope over the whole measured range (a trial that reused memory freed by an earlier
        one flattens the first, much less the second)."""
        sizes = sorted(measured)
        smallest, largest = sizes[0], sizes[-1]
        fitted = self._fitted_peaks(measured)
        slope = _least_squares(fitted).bytes_per_sample if len(fitted) >= 2 else model.bytes_per_sample
        if largest > smallest:
            slope = max(slope, (measured[largest] - measured[smallest]) / (largest - smallest))
        return slope if slope > 0 else model.bytes_per_sample

    def surprise(self, history: list[Observation]) -> float:
        """The most, over the trials so far, that a step up raised the peak beyond what the
        trials before it predicted: actual rise / predicted rise, at least 1.

        Only steps that raised the peak by `SURPRISE_RISE` of the free memory, and were
        predicted to raise it by `FLAT_RISE`, count: below that, tens of MiB of TF/CPU
        scatter, or a slope that memory reuse hid, would read as a many-fold surprise and
        stall the search, while the doubling limit already bounds such steps.
        """
        free = self.limit_bytes - self.baseline_bytes
        worst = 1.0
        for index in range(2, len(history)):
            observation = history[index]
            before = _largest_peaks(history[:index])
            top = max(before, default=0)
            if observation.peak_bytes is None or len(before) < 2 or observation.batch_size <= top:
                continue
            actual = observation.peak_bytes - before[top]
            if actual < SURPRISE_RISE * free:
                continue
            model = self.memory_model(history[:index])
            assert model is not None  # `before` holds measured peaks
            predicted = self._step_slope(before, model) * (observation.batch_size - top)
            if predicted < FLAT_RISE * free:
                continue  # a flat line predicts nothing: the doubling bounds that step
            worst = max(worst, actual / predicted)
        return worst


def _largest_peaks(history: list[Observation]) -> dict[int, int]:
    """Each measured batch size's largest peak (a size tried twice counts at its worst)."""
    measured: dict[int, int] = {}
    for o in history:
        if o.peak_bytes is not None:
            measured[o.batch_size] = max(o.peak_bytes, measured.get(o.batch_size, 0))
    return measured


def _largest_inversion(measured: dict[int, int]) -> int:
    """How much lower, at most, a larger batch peaked than a smaller one (0 when monotone)."""
    highest, inversion = 0, 0
    for batch_size in sorted(measured):
        inversion = max(inversion, highest - measured[batch_size])
        highest = max(highest, measured[batch_size])
    return inversion


def _least_squares(peaks: dict[int, int]) -> MemoryModel:
    """The least-squares line through ``{batch_size: peak_bytes}`` (two sizes at least)."""
    count = len(peaks)
    mean_batch = sum(peaks) / count
    mean_peak = sum(peaks.values()) / count
    spread = sum((b - mean_batch) ** 2 for b in peaks)
    slope = sum((b - mean_batch) * (p - mean_peak) for b, p in peaks.items()) / spread
    return MemoryModel(mean_peak - slope * mean_batch, slope)

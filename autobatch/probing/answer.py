"""The answer of a finished probe search: verifying it with real epochs, and the result.

Shared by the in-process probe (`autobatch.probing.probe`) and the one whose trials run in
worker processes (`autobatch.probing.isolated`): how a verification is judged, how the
answer backs off when one crosses the margin, and how trials become a `ProbeResult`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from autobatch import _units
from autobatch.errors import BatchDoesNotFitError
from autobatch.probing.replicas import ReplicaProbeStrategy, Replicas, multiple_below
from autobatch.probing.strategy import Observation, ProbeStrategy
from autobatch.probing.trial import TrialOutcome
from autobatch.probing.verify import VerificationOutcome
from autobatch.results import ProbeResult, ProbeTrial, ProbeVerification

#: Verifications of the answer at most: the first, and backed-off batches after it. Three
#: left the zoo's batch attention model unverified (killed at 4669, past the margin at the
#: measured 4298, killed at 4083: its peaks scatter by 63 MiB between runs of one batch) and
#: fell back to the measured 2714, 0.59 of its real maximum; a fourth backs off 20% again.
MAX_VERIFICATIONS = 4
#: An epoch that raises the verification's peak by less than this share of the free memory
#: (and at least `MIN_GROWTH_BYTES`) ends it: the peak has stopped growing.
GROWTH_TOLERANCE = 0.01
MIN_GROWTH_BYTES = 4 * 2**20


def build_result(
    *,
    answer: int,
    strategy: ProbeStrategy,
    history: list[Observation],
    outcomes: list[tuple[TrialOutcome, bool]],
    verifications: list[VerificationOutcome],
    memory: dict[str, Any],
    backend: str,
    num_samples: int | None,
    versions: dict[str, str],
    seconds: float,
    memory_before: int | None,
    memory_after: int | None,
    isolated: bool,
    replicas: Replicas | None = None,
) -> ProbeResult:
    """The `ProbeResult` of a finished search, or `BatchDoesNotFitError` when nothing fit.

    ``memory`` is the backend's `MemoryBackend.describe` (it may come from a worker process).
    ``replicas``: the data-parallel replicas the trials ran on (None: one device).
    """
    num_replicas = 1 if replicas is None else replicas.num_replicas
    limit, baseline = strategy.limit_bytes, strategy.baseline_bytes
    trials = [
        trial_record(o, fitted, strategy, Observation(o.batch_size, o.peak_bytes))
        for o, fitted in outcomes
    ]
    if answer == 0:
        smallest = min(trials, key=lambda t: t.batch_size)
        needs = (
            f"it peaked at {_units.format_bytes(smallest.peak_bytes)}"
            if smallest.peak_bytes is not None
            else "it ran out of memory"
        )
        raise BatchDoesNotFitError(
            f"Batch size {smallest.batch_size} does not fit: {needs}, while the usable memory "
            f"is {_units.format_bytes(strategy.usable_bytes)} (limit "
            f"{_units.format_bytes(limit)} from {memory['limit_source']}, margin "
            f"{_units.format_bytes(limit - strategy.usable_bytes)} of the "
            f"{_units.format_bytes(limit - baseline)} free). Raise memory_limit, lower the "
            "margin, or shrink the model or its inputs."
        )
    fitted = strategy.memory_model(history)
    return ProbeResult(
        max_batch_size=answer,
        per_replica_batch_size=answer // num_replicas,
        num_replicas=num_replicas,
        replica_devices=[] if replicas is None else list(replicas.devices),
        limit_bytes=limit,
        limit_source=str(memory["limit_source"]),
        backend=backend,
        device=str(memory["device"]),
        memory_source=str(memory["peak_source"]),
        bytes_per_sample=None if fitted is None else fitted.bytes_per_sample,
        fixed_bytes=None if fitted is None else fitted.fixed_bytes,
        margin=strategy.margin,
        baseline_bytes=baseline,
        usable_bytes=strategy.usable_bytes,
        num_samples=num_samples,
        trials=trials,
        seconds=seconds,
        num_oom=sum(o.out_of_memory for o, _ in outcomes)
        + sum(v.out_of_memory for v in verifications),
        stop_reason=strategy.stop_reason,
        versions=versions,
        verified=bool(verifications) and _fits(verifications[-1], strategy),
        verifications=[_verification_record(v, strategy) for v in verifications],
        memory_before_bytes=memory_before,
        memory_after_bytes=memory_after,
        isolated=isolated,
    )


def verification_bound(strategy: ProbeStrategy) -> int:
    """The peak a verification may reach: the usable memory and half the margin.

    The verification runs after the trials, and on TF/CPU what they allocated stays with the
    process as a pool that later steps reuse (oneDNN's allocator keeps large freed blocks):
    an MLP's verification at batch 893 peaked at 585 MiB after the trials, 509 MiB in a new
    process. Its peak is thus an upper bound for a new process, and what the caller's next
    fit here reuses; half the margin is left for a last step's jump and run-to-run scatter.
    """
    return strategy.usable_bytes + (strategy.limit_bytes - strategy.usable_bytes) // 2


def _fits(verification: VerificationOutcome, strategy: ProbeStrategy) -> bool:
    return (
        verification.peak_bytes is not None
        and not verification.stopped_early
        and verification.peak_bytes <= verification_bound(strategy)
    )


def verified_answer(
    verify_at: Callable[[int, int | None, int], VerificationOutcome],
    answer: int,
    strategy: ReplicaProbeStrategy,
    history: list[Observation],
    verifications: list[VerificationOutcome],
    progress: Any,
    *,
    retries: bool,
) -> int:
    """Verify ``answer`` with real epochs; back off until one fits or the tries run out.

    ``verify_at(batch_size, stop_above_bytes, growth_tolerance_bytes)`` runs one
    verification. Returns the verified batch size, or, when none verified, the smallest one
    tried, or without ``retries`` the batch backed off from it (the result's ``verified`` is
    then False: pass a larger margin). Backing off stops when the excess did not shrink with
    the batch (it is then not the batch's memory). With the strategy's
    ``measured_answers_only``, backing off goes to the next batch a trial measured as
    fitting where that is not further down, and when none verified, the answer is the
    largest measured batch below them all. In-process on host RAM there are no
    retries: what the first verification allocated stays pooled in the process, and a
    second one starting on top of it (fit first copies the arrays) was OOM-killed in a
    880 MiB cgroup.
    """
    free = strategy.limit_bytes - strategy.baseline_bytes
    tolerance = max(int(GROWTH_TOLERANCE * free), MIN_GROWTH_BYTES)
    line = strategy.memory_model(history)
    batch_size = answer
    for _ in range(MAX_VERIFICATIONS):
        progress.verification_started(batch_size)
        outcome = verify_at(batch_size, verification_bound(strategy), tolerance)
        verifications.append(outcome)
        progress.verification_done(_verification_record(outcome, strategy))
        if _fits(outcome, strategy):
            return batch_size
        if not strategy.measured_answers_only and len(verifications) >= 2:
            if not _lower(verifications[-1], verifications[-2]):
                break
        smaller = _backed_off(batch_size, outcome, strategy, line, retries)
        if strategy.measured_answers_only:
            # Rather the next batch a trial measured as fitting, where it is not further
            # down: one between trials may cost more than both neighbours.
            smaller = max(smaller, _largest_fitted_below(history, strategy, batch_size))
        smaller = multiple_below(smaller, strategy.num_replicas)
        if smaller < 1:
            return 0
        if not retries:
            return smaller
        batch_size = smaller
    if strategy.measured_answers_only:
        # Unverified, but below every batch whose verification failed.
        lowest_failed = min(v.batch_size for v in verifications)
        return multiple_below(_largest_fitted_below(history, strategy, lowest_failed), strategy.num_replicas)
    return min(v.batch_size for v in verifications)


def _largest_fitted_below(history: list[Observation], strategy: ProbeStrategy, batch_size: int) -> int:
    """The largest batch below ``batch_size`` whose trial fitted; 0 when none did."""
    return max((o.batch_size for o in history if strategy.fits(o) and o.batch_size < batch_size), default=0)


def _lower(later: VerificationOutcome, earlier: VerificationOutcome) -> bool:
    """The later (smaller) batch peaked clearly lower, or ran where the earlier ran out."""
    if later.peak_bytes is None:
        return False
    return earlier.peak_bytes is None or later.peak_bytes < earlier.peak_bytes - MIN_GROWTH_BYTES


def _backed_off(
    batch_size: int,
    outcome: VerificationOutcome,
    strategy: ProbeStrategy,
    line: Any,
    will_verify: bool,
) -> int:
    """A batch below ``batch_size`` whose verification should fit: the excess over the bound
    taken off at the measured cost per sample, and half as much again (the peak may be a
    lower bound when the watchdog stopped it), at least 5% down, or 10% where it will not
    be verified again (host RAM)."""
    at_most = math.floor(batch_size * (0.95 if will_verify else 0.9))
    if outcome.peak_bytes is None or line is None or line.bytes_per_sample <= 0:
        return min(at_most, math.floor(batch_size * 0.8))
    excess = outcome.peak_bytes - verification_bound(strategy)
    return min(at_most, math.floor(batch_size - 1.5 * excess / line.bytes_per_sample))


def _verification_record(outcome: VerificationOutcome, strategy: ProbeStrategy) -> ProbeVerification:
    error = None
    if outcome.out_of_memory:
        error = "out of memory"
    elif outcome.peak_bytes is not None and outcome.peak_bytes > strategy.limit_bytes:
        error = "over the memory limit"
    elif outcome.stopped_early or (outcome.peak_bytes or 0) > verification_bound(strategy):
        error = "above the safety margin"
    return ProbeVerification(
        batch_size=outcome.batch_size,
        peak_bytes=outcome.peak_bytes,
        fits=_fits(outcome, strategy),
        epochs=outcome.epochs,
        train_steps=outcome.train_steps,
        epoch_peak_bytes=list(outcome.epoch_peak_bytes),
        stable=outcome.stable,
        error=error,
        seconds=outcome.seconds,
    )


def trial_record(
    outcome: TrialOutcome, fitted: bool, strategy: ProbeStrategy, observation: Observation
) -> ProbeTrial:
    error = None
    if outcome.out_of_memory:
        error = "out of memory"
    elif outcome.peak_bytes is not None and outcome.peak_bytes > strategy.limit_bytes:
        error = "over the memory limit"
    elif not strategy.fits(observation):
        error = "above the safety margin"
    return ProbeTrial(
        batch_size=outcome.batch_size,
        peak_bytes=outcome.peak_bytes,
        seconds_per_step=outcome.seconds_per_step,
        samples_per_second=outcome.samples_per_second,
        fits=strategy.fits(observation),
        fitted=fitted,
        steps=outcome.steps,
        error=error,
        seconds=outcome.seconds,
    )

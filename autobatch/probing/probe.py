"""`autobatch.probe`: the largest batch that trains within the memory limit."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from autobatch import _units
from autobatch._versions import library_versions  # also imported from here by search.tune
from autobatch.data import as_training_data
from autobatch.data_check import check_data_matches_model
from autobatch.errors import BatchDoesNotFitError, InvalidArgumentError, InvalidModelError
from autobatch.memory.base import MemoryBackend
from autobatch.probing.replicas import (
    ReplicaProbeStrategy,
    Replicas,
    detect_replicas,
    multiple_below,
)
from autobatch.probing.state import preserved
from autobatch.probing.strategy import Observation, ProbeStrategy
from autobatch.probing.trial import TrialOutcome, run_trial
from autobatch.probing.verify import VerificationOutcome, verify
from autobatch.results import ProbeResult, ProbeTrial, ProbeVerification

#: Verifications of the answer at most: the first, and backed-off batches after it.
MAX_VERIFICATIONS = 3
#: An epoch that raises the verification's peak by less than this share of the free memory
#: (and at least `MIN_GROWTH_BYTES`) ends it: the peak has stopped growing.
GROWTH_TOLERANCE = 0.01
MIN_GROWTH_BYTES = 4 * 2**20


def check_model(model: Any) -> None:
    """Raise `InvalidModelError` unless ``model`` is a compiled Keras model."""
    import keras

    if not isinstance(model, keras.Model):
        raise InvalidModelError(
            f"model is a {type(model).__name__}. Expected a compiled keras.Model "
            "(Sequential, functional or subclassed). Build it with keras, then call "
            "model.compile(optimizer=..., loss=...)."
        )
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise InvalidModelError(
            f"model {model.name!r} is not compiled. Expected a compiled model so the probe can "
            "run real training steps: call model.compile(optimizer='adam', loss=...) first."
        )


def probe(
    model: Any,
    data: Any,
    *,
    memory_limit: int | str | None = None,
    margin: float | None = None,
    max_batch_size: int | None = None,
    steps_per_trial: int = 3,
    memory: MemoryBackend | None = None,
    use_cache: bool = True,
    verbose: int = 1,
    isolate: bool | None = None,
    worker_imports: Sequence[str] = (),
) -> ProbeResult:
    """Find the largest batch size that trains ``model`` on ``data`` within the memory limit.

    Runs a few real training steps (forward, backward, optimizer update) at a handful of
    batch sizes, fits ``peak = fixed + bytes_per_sample * batch_size`` to the peaks it
    measures and jumps near the limit. Then it verifies the answer as ``fit`` will use it:
    real epochs at that batch, each ending with its partial batch and a validation pass at
    the same batch size, until the peak stops growing; if that crosses the margin, it backs
    off and verifies again (``result.verified``, ``result.verifications``). The answer is
    safe in this process, right after the probe, as well as in a new one. The model's
    weights, optimizer state and compile settings are exactly as before when it returns,
    whatever happens.

    Args:
        model: A compiled ``keras.Model``.
        data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays (dicts/lists for several inputs),
            an unbatched ``tf.data.Dataset``, or a callable ``batch_size -> batched dataset``.
        memory_limit: Bytes or a size such as ``"6GiB"``; overrides the detected limit (the
            GPU allocator's, or host RAM and the process's cgroup limit on CPU). ``"+512MiB"``
            means 512 MiB above what is in use now (on CPU the limit counts the whole
            process, so this says "room for training" the same way on every machine).
        margin: Fraction of the free memory (limit minus what is in use before the first
            trial) that the answer leaves unused, against fragmentation and run-to-run noise.
            Default: the memory backend's, 5% on a GPU and 10% on host RAM (where the same
            step's peak varies by several percent between runs, and running out kills the
            process). On host RAM at least 64 MiB is kept whatever the fraction (malloc
            makes peaks jump by tens of MiB).
        max_batch_size: Never try batches above this (default: the number of samples).
        steps_per_trial: Full-batch training steps per pass over the data. On arrays a trial
            runs two passes, each ending with the partial batch that ends every pass of real
            training (it and the next pass can cost more memory than full batches alone).
        memory: A memory backend to use instead of the detected one (e.g. ``FakeMemory``).
        use_cache: Reuse a stored result for the same model, data shapes, settings and
            machine (``result.from_cache`` says so), and store new results.
        verbose: 0 silent, 1 one line per trial.
        isolate: Run every trial and the verification in a new worker process (see
            `autobatch.probing.isolated`): a trial that runs out of host RAM kills only its
            worker, and each peak is what a new process reaches, with nothing left over
            from earlier trials. Default: True when ``model`` and ``data`` are paths to a
            ``.keras`` file and an ``.npz`` archive (the command line, pipelines: the
            calling process then never imports TensorFlow), False for a model object
            (faster: no process start per trial). With a model object and True, the model
            and arrays are saved to a temporary folder, and the answer is what fits while
            this process holds what it holds now. Isolated probes are not cached.
        worker_imports: Modules each worker imports before loading the model: those that
            register its custom layers (``@keras.saving.register_keras_serializable()``),
            e.g. ``["my_project.layers"]``.

    Returns:
        A `ProbeResult`; ``result.max_batch_size`` is the answer.

    Example:
        >>> result = autobatch.probe(model, (x_train, y_train), memory_limit="4GiB")
        >>> model.fit(x_train, y_train, batch_size=result.max_batch_size)
        >>> # A pipeline step: trials in worker processes, TensorFlow never imported here.
        >>> autobatch.probe("model.keras", "train.npz").max_batch_size
    """
    started = time.perf_counter()
    model_is_file = isinstance(model, (str, os.PathLike))
    if isolate is None:
        isolate = model_is_file
    if margin is not None and not 0.0 <= margin < 1.0:
        raise InvalidArgumentError(
            f"margin={margin!r} is outside [0, 1). Expected the fraction of free memory to keep "
            "unused, e.g. margin=0.05 for 5%."
        )
    if steps_per_trial < 1:
        raise InvalidArgumentError(
            f"steps_per_trial={steps_per_trial!r}; expected at least 1 (2 or more to time steps)."
        )
    if max_batch_size is not None and max_batch_size < 1:
        raise InvalidArgumentError(f"max_batch_size={max_batch_size!r}; expected at least 1.")
    if memory is not None and memory_limit is not None:
        raise InvalidArgumentError(
            "Both memory= and memory_limit= were given. Pass one: memory_limit overrides the "
            "detected limit; memory replaces the whole memory backend (which has its own limit)."
        )
    if isolate or model_is_file:
        return _probe_isolated(
            model,
            data,
            memory_limit=memory_limit,
            margin=margin,
            max_batch_size=max_batch_size,
            steps_per_trial=steps_per_trial,
            memory=memory,
            isolate=isolate,
            verbose=verbose,
            worker_imports=worker_imports,
        )
    check_model(model)
    training_data = as_training_data(data)
    check_data_matches_model(model, training_data)
    replicas = detect_replicas(model)
    from autobatch.devices import resolve_memory_limit

    limit_override = None if memory_limit is None else _units.parse_bytes(
        resolve_memory_limit(memory_limit)
    )
    if memory is None:
        from autobatch.memory import detect_memory

        memory = detect_memory(limit_override)
    if margin is None:
        margin = memory.default_margin

    from autobatch import cache, report

    progress = report.probe_progress(verbose)
    key = None
    if use_cache:
        key = cache.probe_key(
            model,
            training_data,
            memory,
            margin=margin,
            # "+SIZE" as given: the bytes it resolves to move with the process's memory,
            # and a key that moved would never be found again.
            memory_limit=_relative_key(memory_limit) or limit_override,
            max_batch_size=max_batch_size,
            steps_per_trial=steps_per_trial,
            num_replicas=replicas.num_replicas,
        )
        cached = cache.load(key, memory)
        if cached is not None:
            progress.done(cached)
            return cached
    sample_cap = training_data.num_samples
    if max_batch_size is not None:
        sample_cap = min(sample_cap or max_batch_size, max_batch_size)
    history: list[Observation] = []
    outcomes: list[tuple[TrialOutcome, bool]] = []
    verifications: list[VerificationOutcome] = []
    memory.release()
    memory_before = memory.current_bytes()
    with preserved(model), progress:
        # Measured once preserved() has saved the model's state: where its temporary folder
        # is a RAM disk (tmpfs), that copy takes memory too, and the room must exclude it.
        # After a release, as before every trial, so that peaks and baseline compare.
        memory.release()
        limit = memory.limit_bytes()
        baseline = memory.current_bytes()
        if baseline >= limit:
            raise BatchDoesNotFitError(
                f"The memory limit is {_units.format_bytes(limit)} ({memory.limit_source}) but "
                f"{_units.format_bytes(baseline)} is already in use on {memory.device}, before "
                "any training step. Raise memory_limit, or free memory (other processes, cached "
                "data)."
            )
        strategy = ReplicaProbeStrategy(
            replicas.num_replicas,
            limit_bytes=limit,
            baseline_bytes=baseline,
            margin=margin,
            max_batch_size=sample_cap,
            oom_is_catchable=memory.oom_is_catchable,
            min_margin_bytes=memory.min_margin_bytes,
        )
        trial_data = training_data.for_trials()
        # Host RAM: the watchdog ends a trial the moment its peak passes the margin, so a
        # peak that grows within the trial cannot carry on to the limit.
        stop_above = None if memory.oom_is_catchable else strategy.usable_bytes
        # The first fit of a process pays one-time costs (runtime start-up, kernels, the input
        # pipeline's buffers) and leaves some of them allocated, which would skew the slope
        # between the first two measured trials. One step at the smallest batch, not measured,
        # pays them: one sample per replica (a replica left without any fails under distribution).
        warmup_batch = replicas.num_replicas
        warmup = run_trial(model, trial_data, warmup_batch, memory, steps=1, stop_above_bytes=stop_above)
        if warmup.out_of_memory:
            raise BatchDoesNotFitError(
                f"Batch size {warmup_batch} ran out of memory on {memory.device} (limit "
                f"{_units.format_bytes(limit)} from {memory.limit_source}). Nothing smaller "
                "exists: free memory, raise memory_limit, or shrink the model or its inputs."
            )
        while (proposal := strategy.propose(history)) is not None:
            progress.trial_started(proposal.batch_size)
            outcome = run_trial(
                model,
                trial_data,
                proposal.batch_size,
                memory,
                steps=steps_per_trial,
                stop_above_bytes=stop_above,
            )
            observation = Observation(outcome.batch_size, outcome.peak_bytes)
            history.append(observation)
            outcomes.append((outcome, proposal.fitted))
            progress.trial_done(trial_record(outcome, proposal.fitted, strategy, observation))
        # The trials' copy of the data goes before verifying: the verification trains on the
        # caller's own data, which fit copies as the caller's fit will.
        del trial_data
        answer = strategy.answer(history)
        if answer:

            def verify_at(batch_size: int, stop_above: int | None, tolerance: int) -> VerificationOutcome:
                return verify(
                    model,
                    training_data,
                    batch_size,
                    memory,
                    stop_above_bytes=None if memory.oom_is_catchable else stop_above,
                    growth_tolerance_bytes=tolerance,
                )

            # On host RAM, no second verification on top of the first's pool (see
            # `verified_answer`).
            answer = verified_answer(
                verify_at, answer, strategy, history, verifications, progress,
                retries=memory.oom_is_catchable,
            )

    memory.release()
    result = build_result(
        answer=answer,
        strategy=strategy,
        history=history,
        outcomes=outcomes,
        verifications=verifications,
        memory=memory.describe(),
        backend=_keras_backend(),
        num_samples=training_data.num_samples,
        versions=library_versions(),
        seconds=time.perf_counter() - started,
        memory_before=memory_before,
        memory_after=memory.current_bytes(),
        isolated=False,
        replicas=replicas,
    )
    cache.store(key, result)
    progress.done(result)
    return result


def _probe_isolated(
    model: Any, data: Any, *, memory: MemoryBackend | None, isolate: bool, **options: Any
) -> ProbeResult:
    """`probe` with its trials in worker processes (`autobatch.probing.isolated`)."""
    from autobatch.probing import isolated

    if memory is not None:
        raise InvalidArgumentError(
            "memory= was given with an isolated probe (a model file, or isolate=True): "
            "worker processes detect their own memory. Pass memory_limit= instead, or a "
            "model object with isolate=False."
        )
    if isinstance(model, (str, os.PathLike)):
        if not isolate:
            raise InvalidArgumentError(
                f"model is a path ({model}) with isolate=False. A model file is probed in "
                "worker processes; load it with keras.saving.load_model(...) to probe it here."
            )
        if not isinstance(data, (str, os.PathLike)):
            raise InvalidArgumentError(
                f"model is a path ({model}) but data is a {type(data).__name__}. With a model "
                'file, pass the data as an .npz file too: np.savez("train.npz", x=x, y=y).'
            )
        from autobatch.files import check_readable

        check_readable(Path(model), "model", ".keras")
        check_readable(Path(data), "data", ".npz")
        return isolated.probe_in_workers(Path(model), Path(data), **options)
    check_model(model)
    training_data = as_training_data(data)
    check_data_matches_model(model, training_data)
    return isolated.probe_saved_model(model, training_data, **options)


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
    the batch (it is then not the batch's memory). In-process on host RAM there are no
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
        if len(verifications) >= 2 and not _lower(verifications[-1], verifications[-2]):
            break
        smaller = _backed_off(batch_size, outcome, strategy, line, retries)
        smaller = multiple_below(smaller, strategy.num_replicas)
        if smaller < 1:
            return 0
        if not retries:
            return smaller
        batch_size = smaller
    return min(v.batch_size for v in verifications)


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


def _relative_key(memory_limit: Any) -> str | None:
    """``"+<bytes>"`` for a relative limit (``" +64 MiB"`` and ``"+67108864"`` alike), else None."""
    if not (isinstance(memory_limit, str) and memory_limit.strip().startswith("+")):
        return None
    return "+" + str(_units.parse_bytes(memory_limit.strip()[1:].strip()))


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


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()

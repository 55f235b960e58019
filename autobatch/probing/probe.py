"""`autobatch.probe`: the largest batch that trains within the memory limit."""

from __future__ import annotations

import time
from typing import Any

from autobatch import _units
from autobatch.data import as_training_data
from autobatch.data_check import check_data_matches_model
from autobatch.errors import BatchDoesNotFitError, InvalidArgumentError, InvalidModelError
from autobatch.memory.base import MemoryBackend
from autobatch.probing.state import preserved
from autobatch.probing.strategy import Observation, ProbeStrategy
from autobatch.probing.trial import TrialOutcome, run_trial
from autobatch.results import ProbeResult, ProbeTrial


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
) -> ProbeResult:
    """Find the largest batch size that trains ``model`` on ``data`` within the memory limit.

    Runs a few real training steps (forward, backward, optimizer update) at a handful of
    batch sizes, fits ``peak = fixed + bytes_per_sample * batch_size`` to the peaks it
    measures, jumps near the limit and verifies there. The model's weights, optimizer state
    and compile settings are exactly as before when it returns, whatever happens.

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

    Returns:
        A `ProbeResult`; ``result.max_batch_size`` is the answer.

    Example:
        >>> result = autobatch.probe(model, (x_train, y_train), memory_limit="4GiB")
        >>> model.fit(x_train, y_train, batch_size=result.max_batch_size)
    """
    started = time.perf_counter()
    check_model(model)
    training_data = as_training_data(data)
    check_data_matches_model(model, training_data)
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
        strategy = ProbeStrategy(
            limit_bytes=limit,
            baseline_bytes=baseline,
            margin=margin,
            max_batch_size=sample_cap,
            oom_is_catchable=memory.oom_is_catchable,
            min_margin_bytes=memory.min_margin_bytes,
        )
        trial_data = training_data.for_trials()
        # The first fit of a process pays one-time costs (runtime start-up, kernels, the input
        # pipeline's buffers) and leaves some of them allocated, which would skew the slope
        # between the first two measured trials. One step at batch 1, not measured, pays them.
        warmup = run_trial(model, trial_data, 1, memory, steps=1)
        if warmup.out_of_memory:
            raise BatchDoesNotFitError(
                f"Batch size 1 ran out of memory on {memory.device} (limit "
                f"{_units.format_bytes(limit)} from {memory.limit_source}). Nothing smaller "
                "exists: free memory, raise memory_limit, or shrink the model or its inputs."
            )
        while (proposal := strategy.propose(history)) is not None:
            outcome = run_trial(
                model, trial_data, proposal.batch_size, memory, steps=steps_per_trial
            )
            observation = Observation(outcome.batch_size, outcome.peak_bytes)
            history.append(observation)
            outcomes.append((outcome, proposal.fitted))
            progress.trial_done(_trial_record(outcome, proposal.fitted, strategy, observation))

    del trial_data  # the trials' copy of the data
    trials = [
        _trial_record(o, fitted, strategy, Observation(o.batch_size, o.peak_bytes))
        for o, fitted in outcomes
    ]
    answer = strategy.answer(history)
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
            f"{_units.format_bytes(limit)} from {memory.limit_source}, margin "
            f"{_units.format_bytes(limit - strategy.usable_bytes)} of the "
            f"{_units.format_bytes(limit - baseline)} free). Raise memory_limit, lower the "
            "margin, or shrink the model or its inputs."
        )
    fitted = strategy.memory_model(history)
    result = ProbeResult(
        max_batch_size=answer,
        limit_bytes=limit,
        limit_source=memory.limit_source,
        backend=_keras_backend(),
        device=memory.device,
        memory_source=memory.peak_source,
        bytes_per_sample=None if fitted is None else fitted.bytes_per_sample,
        fixed_bytes=None if fitted is None else fitted.fixed_bytes,
        margin=margin,
        baseline_bytes=baseline,
        usable_bytes=strategy.usable_bytes,
        num_samples=training_data.num_samples,
        trials=trials,
        seconds=time.perf_counter() - started,
        num_oom=sum(o.out_of_memory for o, _ in outcomes),
        stop_reason=strategy.stop_reason,
        versions=library_versions(),
    )
    cache.store(key, result)
    progress.done(result)
    return result


def _relative_key(memory_limit: Any) -> str | None:
    """``"+<bytes>"`` for a relative limit (``" +64 MiB"`` and ``"+67108864"`` alike), else None."""
    if not (isinstance(memory_limit, str) and memory_limit.strip().startswith("+")):
        return None
    return "+" + str(_units.parse_bytes(memory_limit.strip()[1:].strip()))


def _trial_record(
    outcome: TrialOutcome, fitted: bool, strategy: ProbeStrategy, observation: Observation
) -> ProbeTrial:
    error = None
    if outcome.out_of_memory:
        error = "out of memory"
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


def library_versions() -> dict[str, str]:
    """Versions of what decides memory and behaviour, recorded in every result."""
    import importlib.metadata as metadata

    versions = {}
    for name in ("keras-autobatch", "keras", "tensorflow", "jax", "torch", "keras-tuner"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions

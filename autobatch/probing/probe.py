"""`autobatch.probe`: the largest batch that trains within the memory limit."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from autobatch import _units
from autobatch._versions import library_versions  # also imported from here by search.tune
from autobatch.data import as_training_data
from autobatch.data_check import check_data_matches_model
from autobatch.errors import (
    AutobatchError,
    BatchDoesNotFitError,
    InvalidArgumentError,
    InvalidModelError,
    WorkerDoesNotFitError,
    kind_of,
)
from autobatch.memory.base import MemoryBackend
from autobatch.probing.answer import build_result, trial_record, verified_answer
from autobatch.probing.replicas import (
    ReplicaProbeStrategy,
    detect_replicas,
)
from autobatch.probing.state import preserved
from autobatch.probing.strategy import Observation
from autobatch.probing.trial import TrialOutcome, run_trial
from autobatch.probing.verify import VerificationOutcome, verify
from autobatch.results import ProbeResult


def check_model(model: Any) -> None:
    """Raise `InvalidModelError` unless ``model`` is a compiled Keras model."""
    import keras

    if not isinstance(model, keras.Model):
        raise InvalidModelError(
            f"model is {kind_of(model)}. Expected a compiled keras.Model "
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
            process); 5% with worker processes (``isolate``), where a killed worker is an
            observation, as a GPU's out-of-memory error is. On host RAM at least 64 MiB is
            kept whatever the fraction (malloc makes peaks jump by tens of MiB), 32 MiB with
            workers (each trial in a new process).
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
            calling process then never imports TensorFlow), and for a model that has already
            trained in this process on TensorFlow, host RAM, one replica and arrays (its
            pooled memory makes in-process trials unsafe; a warning says so); False for
            other model objects (faster: no process start per trial). With a model object
            and True, the model and arrays are saved to a temporary folder, and the answer
            is what fits while this process holds what it holds now. Isolated probes are
            not cached.
        worker_imports: Modules each worker imports before loading the model: those that
            register its custom layers (``@keras.saving.register_keras_serializable()``),
            e.g. ``["my_project.layers"]``. For a model object they are found by itself
            (the modules of its model, layer and loss classes, outside ``__main__``).

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
    chosen_isolation = isolate is not None
    if isolate is None:
        isolate = model_is_file or _trained_here_on_host_ram(model, data, memory)
    from autobatch import report  # here, as below: rich is imported only when probing

    report.check_verbose(verbose)
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
        try:
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
        except WorkerDoesNotFitError as error:
            if model_is_file or chosen_isolation:
                raise
            raise WorkerDoesNotFitError(
                f"{error} This model has already trained in this process, so autobatch "
                "probed it in worker processes (in-process trials reuse the memory that "
                "training left pooled and can get this process OOM-killed), but a worker "
                "holding its own copy of the model and data does not fit beside this "
                "process. Probe before training (restart, then probe first), save the model "
                "and probe the file from a new process (autobatch.probe('model.keras', "
                "'train.npz')), or pass isolate=False to probe here at the risk of an OOM kill."
            ) from None
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
            shape_load=training_data.batch_shapes_load,
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
                f"model is a path ({model}) but data is {kind_of(data)}. With a model "
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


def _trained_here_on_host_ram(model: Any, data: Any, memory: MemoryBackend | None) -> bool:
    """True when ``model`` has trained in this process (``fit`` left its train function),
    memory is host RAM and ``data`` are arrays: `probe` then runs its trials in workers.

    TensorFlow/CPU's oneDNN allocator keeps the memory that training used pooled in the
    process (a Transformer trained at batch 200 held 1161 MiB afterwards; with
    TF_ENABLE_ONEDNN_OPTS=0, 440), and in-process trials reuse the pool: their peaks stay
    flat, then jump once a trial outgrows it. After 5 steps at half the answer a new
    process finds, in-process probes of an LSTM and a Transformer were OOM-killed
    (benchmarks/README.md). Workers start clean; their answer counts the pool as used,
    which is cautious and never kills this process.
    """
    if memory is not None or isinstance(model, (str, os.PathLike)):
        return False  # a backend chosen by the caller (a test's FakeMemory), or a file
    if getattr(model, "train_function", None) is None:
        return False  # not trained here (a model loaded with optimizer state counts as fresh)
    if _keras_backend() != "tensorflow":
        return False  # the pool below is TensorFlow's
    if detect_replicas(model).num_replicas > 1:
        return False  # workers train on one device: they would lose the replicas
    from autobatch.data import ArrayData
    from autobatch.memory import detect_memory

    if detect_memory().oom_is_catchable:
        return False  # a GPU: running out is an exception there, and memory is released
    try:
        training_data = as_training_data(data)
    except AutobatchError:
        return False  # bad data: the in-process path explains it
    # Workers load arrays by name: x or y as a list of arrays cannot be saved for them.
    arrays = isinstance(training_data, ArrayData) and not any(
        isinstance(part, (list, tuple)) for part in (training_data.x, training_data.y)
    )
    if arrays:
        warnings.warn(
            "This model has already trained in this process: TensorFlow keeps that "
            "training's memory pooled, which hides how memory grows with the batch and can "
            "get an in-process probe OOM-killed. Probing in worker processes instead; their "
            "answer counts the pool as used (cautious). Pass isolate=False to probe here "
            "anyway, or probe before training.",
            stacklevel=3,
        )
    return arrays


def _relative_key(memory_limit: Any) -> str | None:
    """``"+<bytes>"`` for a relative limit (``" +64 MiB"`` and ``"+67108864"`` alike), else None."""
    if not (isinstance(memory_limit, str) and memory_limit.strip().startswith("+")):
        return None
    return "+" + str(_units.parse_bytes(memory_limit.strip()[1:].strip()))


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()

"""`autobatch.tune`: the batch_size, steps_per_epoch and epochs that train best, for the
same compute, below the memory limit the probe found."""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autobatch.data import ArrayData, DatasetData, TrainingData, as_training_data
from autobatch.data_check import check_data_matches_model
from autobatch.errors import (
    AllTrialsFailedError,
    InvalidArgumentError,
    InvalidDataError,
    TrialError,
    describe_backend_error,
    kind_of,
)
from autobatch.memory.base import MemoryBackend
from autobatch.results import ProbeResult, TuneResult, TuneTrial, ranked_trials

#: The equal budget of every candidate: this many passes over the training data, and at
#: least DEFAULT_MIN_BUDGET_SAMPLES samples. On small data the best candidates need tens of
#: passes to reach their lowest val_loss (digits, batch 16: pass 67; breast cancer: pass 78),
#: and early stopping ends them there; on large data 10 passes is already a real training.
DEFAULT_BUDGET_PASSES = 10
DEFAULT_MIN_BUDGET_SAMPLES = 100_000
#: ... and at least this many samples: small data needs many passes to converge.
#: Early stopping: passes over the training data without a better val_loss.
DEFAULT_PATIENCE_PASSES = 2.0
DEFAULT_TUNER = "halving"
#: Random and Bayesian search try this share of the space unless max_trials says otherwise.
DEFAULT_TRIAL_SHARE = 1 / 3


def tune(
    model: Any,
    data: Any,
    *,
    validation_data: Any = None,
    validation_split: float = 0.2,
    tuner: str = DEFAULT_TUNER,
    batch_sizes: Sequence[int] | None = None,
    steps_per_epoch: Sequence[int | float] | None = None,
    budget_samples: int | None = None,
    budget_seconds: float | None = None,
    patience: float | None = DEFAULT_PATIENCE_PASSES,
    min_delta: float = 0.0,
    lr_scaling: str | None = None,
    reference_batch_size: int = 32,
    max_trials: int | None = None,
    time_budget: float | str | None = None,
    num_samples: int | None = None,
    probe: ProbeResult | None = None,
    memory_limit: int | str | None = None,
    memory: MemoryBackend | None = None,
    callbacks: Sequence[Any] | None = None,
    directory: str | Path | None = None,
    overwrite: bool = False,
    seed: int | None = 0,
    verbose: int = 1,
) -> TuneResult:
    """Search batch_size and steps_per_epoch for the lowest validation loss at equal compute.

    Probes the largest batch that fits (unless ``probe`` is given), then lets keras-tuner
    search batch sizes up to it (powers of two from 16, plus the maximum) times
    steps_per_epoch (a quarter, half or whole pass over the data). Every candidate starts
    from the model's weights and its optimizer's state as passed (fresh, unless the model
    has trained: then its step count and moments, which the next ``fit`` continues) and
    trains on the same number of samples (``budget_samples``), validating after each epoch;
    early stopping ends a hopeless one. A candidate promoted to a later round ("halving",
    "hyperband") continues its run from its last whole pass (weights, optimizer, counters,
    early stopping) rather than starting again, and ``epochs`` counts every round.
    Candidates that differ only in steps_per_epoch train the same steps, so they share one
    run validated at the finest of them. A candidate's score is its best ``val_loss``, and
    ``epochs`` the epoch count that reached it, so ``model.fit(x, y, validation_split=0.2,
    **result.fit_kwargs())`` repeats the winning run (exactly, when Keras was seeded with
    ``keras.utils.set_random_seed`` before the model was built; for a dataset:
    ``model.fit(dataset.batch(result.batch_size), ...)``). Ties go to the candidate
    `autobatch.results.ranked_trials` puts first. A candidate that runs out of memory or
    whose loss becomes NaN is skipped. The model's weights, optimizer and compile settings
    are as before afterwards, whatever happens.

    Args:
        model: A compiled ``keras.Model``, or a ``keras_tuner.HyperModel`` whose ``build(hp)``
            returns one (its own hyperparameters are then searched together with the batch
            settings).
        data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, an unbatched ``tf.data.Dataset``,
            or a callable ``batch_size -> batched dataset`` (as for `autobatch.probe`).
        validation_data: Data in the same forms, to score candidates on. Required for a
            dataset or a callable; overrides ``validation_split``.
        validation_split: For arrays: the fraction held out for validation, the last
            fraction as Keras' own ``validation_split`` takes it, so ``model.fit(x, y,
            validation_split=0.2, **result.fit_kwargs())`` validates on the same samples
            (shuffle arrays sorted by class or time first). Your arrays are not modified.
        tuner: "halving" (the default: successive halving over every candidate, then the
            best half of the batch sizes still improving each round, each continuing its
            run; in benchmarks/tune_bench.py its best val_loss equalled the grid's on all 3
            seeds of digits and of breast cancer, at 0.50 and 0.92 of the grid's time: on
            breast cancer early stopping ends every grid run early, so the grid costs
            little more than the first round), "hyperband"
            (keras-tuner's), "bayesian", "random"
            or "grid" (exhaustive). With a HyperModel, "halving" runs Hyperband, and
            Hyperband on a space of fewer than 5 candidates runs the grid instead.
        batch_sizes: Batch sizes to try instead of the default; those above the probed
            maximum are dropped.
        steps_per_epoch: Integers (step counts) or floats in (0, 1] (fractions of a pass)
            to try; default ``[0.25, 0.5, 1.0]``. Step counts are clamped to a full pass.
        budget_samples: Training samples per candidate (default: 10 passes over the data, and
            at least 100,000 samples so small data can converge).
        budget_seconds: Training seconds per candidate instead (or as well), checked at
            each epoch's end.
        patience: Passes over the training data without a val_loss better by ``min_delta``
            before a candidate is stopped (converted to each candidate's own epochs); None
            turns early stopping off.
        min_delta: The smallest decrease of val_loss that counts as better.
        lr_scaling: None (default), "linear" or "sqrt": scale the learning rate with
            ``batch_size / reference_batch_size``. ``result.learning_rate`` is then the rate
            to train with.
        reference_batch_size: The batch size the optimizer's learning rate was chosen for
            (Keras' default batch size, 32, unless you know better).
        max_trials: At most this many trials (default: a third of the space for random and
            Bayesian search, all of it for grid, the rounds' own schedule for halving and
            hyperband). A grid cut short goes along batch sizes first: each batch size is
            one training run, which its steps_per_epoch candidates share.
        time_budget: Seconds (or a string such as "90s", "10min", "2h") for the whole call,
            probe included. When it runs out, the candidate in training stops at its next
            epoch end and the best candidate so far is returned, with
            ``result.out_of_time`` set. The same call again with more time resumes the
            search (the cut candidate is trained again). ``max_trials`` still applies.
        num_samples: Samples in one pass over ``data`` where it cannot tell: an infinite
            dataset, a callable.
        probe: A `ProbeResult` to use instead of probing.
        memory_limit: Bytes or a size such as ``"6GiB"`` (or ``"+512MiB"``, see
            `autobatch.probe`): the limit for the probe and for every candidate, instead of
            the detected one.
        memory: A memory backend (e.g. ``autobatch.FakeMemory``) for the probe and for every
            candidate, instead of the detected one.
        callbacks: Keras callbacks for every candidate's ``fit``, after autobatch's own (e.g.
            a TensorBoard or a CSVLogger). Candidates that differ only in steps_per_epoch
            share one run, so a callback sees that run's epochs (the finest of them).
        directory: Where the trials are kept (default ``~/.cache/autobatch/tune``, under
            ``$AUTOBATCH_CACHE_DIR`` or ``$XDG_CACHE_HOME`` when set; never the current
            directory). The same call with the same directory resumes an interrupted
            search; a call that changes the search gets a new project there.
        overwrite: Start afresh, deleting this search's earlier trials.
        seed: Seeds the tuner's choices (None: random). Training itself is as random as
            Keras makes it: call ``keras.utils.set_random_seed(...)`` before building the model
            for a search (and a retraining) that repeats exactly.
        verbose: 0 silent, 1 a line per candidate and a summary.

    Returns:
        A `TuneResult`: ``batch_size``, ``steps_per_epoch``, ``epochs``, ``val_loss``, every
        candidate in ``trials``, and ``fit_kwargs()``. For arrays on the TensorFlow backend
        it also reports the gradient noise scale (``noise_scale``, measured once, on the
        weights of the search's first training run) and, per batch size, the statistical
        efficiency it implies and the goodput (throughput x efficiency, as in Pollux) in
        ``goodput()``, ``tune_goodput.png`` and the summary. These are reported only: in
        benchmarks/tune_bench.py the batch size of the highest goodput was never the grid's
        best, so the search ranks candidates on val_loss alone.

    Raises:
        InvalidArgumentError, InvalidDataError, InvalidModelError: bad arguments.
        AllTrialsFailedError: no candidate trained (each ran out of memory or diverged, or
            ``time_budget`` ran out before the first one finished an epoch).
        TrialError: training failed for another reason (a bug in the model or the data).

    Example:
        >>> result = autobatch.tune(model, (x_train, y_train))
        >>> result.fit_kwargs()
        {'batch_size': 64, 'steps_per_epoch': 12, 'epochs': 31}
        >>> model.fit(x_train, y_train, validation_split=0.2, **result.fit_kwargs())
        >>> quick = autobatch.tune(model, (x_train, y_train), probe=limit, time_budget="10min")
        >>> quick.out_of_time  # True when 10 minutes ran out first: the best so far
        >>> result.noise_scale, result.goodput()[0]
        (618.5, {'batch_size': 16, 'samples_per_second': 7696.9, 'statistical_efficiency':
        1.0, 'goodput': 7696.9})
    """
    import keras_tuner

    from autobatch.probing.probe import library_versions

    started = time.perf_counter()
    user_hypermodel = model if isinstance(model, keras_tuner.HyperModel) else None
    _check_arguments(
        model, user_hypermodel, tuner=tuner, validation_split=validation_split,
        budget_samples=budget_samples, budget_seconds=budget_seconds, patience=patience,
        min_delta=min_delta, lr_scaling=lr_scaling, reference_batch_size=reference_batch_size,
        max_trials=max_trials, callbacks=callbacks, probe=probe, verbose=verbose, seed=seed,
    )
    seconds_budget = parse_duration(time_budget, "time_budget")
    train, validation = _training_and_validation(
        data, validation_data, validation_split, num_samples
    )
    check_data_matches_model(model, train, validation)
    memory = _memory_backend(memory, memory_limit)
    keep_model = contextlib.nullcontext() if user_hypermodel else _kept_as_it_was(model)
    with keep_model:
        if probe is None:
            probe = _probe(model, user_hypermodel, train, memory, memory_limit, verbose)
        plan = _plan(
            probe, train, tuner=tuner, user_hypermodel=user_hypermodel, batch_sizes=batch_sizes,
            steps_per_epoch=steps_per_epoch, budget_samples=budget_samples,
            budget_seconds=budget_seconds, patience=patience, max_trials=max_trials,
        )
        settings = {
            "tuner": plan.tuner, "space": plan.space.describe(), "budget": plan.budget.describe(),
            "min_delta": min_delta, "lr_scaling": lr_scaling, "max_trials": plan.max_trials,
            "reference_batch_size": reference_batch_size if lr_scaling else None,
            "seed": seed,
            # 2: Keras' validation split, divisor steps, shared runs: old trials differ.
            # 3: halving by batch size, continued runs: old rounds mean something else.
            # 4: rounds cut inside an epoch not continued, workers seeded with the seed,
            #    candidates from a trained optimizer's state: old trials trained otherwise.
            "search_version": 4,
            "validation": "given" if validation_data is not None else validation_split,
        }
        noise = _NoiseScale(train, seed)
        search = _search(
            plan, model, user_hypermodel, train, validation, settings=settings, memory=memory,
            min_delta=min_delta, lr_scaling=lr_scaling,
            reference_batch_size=reference_batch_size, seed=seed, directory=directory,
            overwrite=overwrite,
            deadline=None if seconds_budget is None else started + seconds_budget,
            callbacks=list(callbacks or []), verbose=verbose, noise=noise,
        )
        records = search.records() + search.cut_records

    if search.out_of_time and not any(r.val_loss is not None for r in records):
        raise AllTrialsFailedError(
            f"time_budget={time_budget!r} ran out after {time.perf_counter() - started:.0f} s, "
            "before any candidate finished an epoch. Give more time, or pass probe= to skip "
            f"probing; the search resumes from {search.project_dir} when called again."
        )
    result = _result(
        records, probe=probe, tuner=plan.tuner, budget=plan.budget, lr_scaling=lr_scaling,
        seconds=time.perf_counter() - started, directory=search.project_dir,
        versions=library_versions(),
        validation_split=None if validation_data is not None else validation_split,
        out_of_time=search.out_of_time, time_budget=seconds_budget, noise=noise.result(),
    )
    search.progress.done(result)
    return result


# --- the steps of tune(), in order -------------------------------------------------------


def _check_arguments(
    model: Any, user_hypermodel: Any, *, tuner: Any, validation_split: Any,
    budget_samples: Any, budget_seconds: Any, patience: Any, min_delta: Any, lr_scaling: Any,
    reference_batch_size: Any, max_trials: Any, callbacks: Any, probe: Any, verbose: Any,
    seed: Any,
) -> None:
    """Raise a typed error for any bad argument, before any work is done."""
    from autobatch import report
    from autobatch.probing.probe import check_model
    from autobatch.search.hypermodel import LR_SCALINGS, learning_rate_of
    from autobatch.search.tuner import TUNERS

    report.check_verbose(verbose)
    if user_hypermodel is None:
        check_model(model)
    _check_options(
        tuner=tuner, tuners=TUNERS, validation_split=validation_split,
        budget_samples=budget_samples, budget_seconds=budget_seconds, patience=patience,
        min_delta=min_delta, lr_scaling=lr_scaling, lr_scalings=LR_SCALINGS,
        reference_batch_size=reference_batch_size, max_trials=max_trials, seed=seed,
    )
    constant_rate = user_hypermodel is not None or learning_rate_of(model.optimizer) is not None
    if lr_scaling is not None and not constant_rate:
        raise InvalidArgumentError(
            f"lr_scaling={lr_scaling!r} needs a constant learning rate, but the model's "
            f"{type(model.optimizer).__name__} has a schedule (or wraps another optimizer). "
            "Use lr_scaling=None, or compile with a float learning_rate."
        )
    _check_callbacks(callbacks)
    if probe is not None and not isinstance(probe, ProbeResult):
        raise InvalidArgumentError(
            f"probe is {kind_of(probe)}. Expected the ProbeResult of autobatch.probe(), "
            "or None to probe first."
        )


def _memory_backend(memory: MemoryBackend | None, memory_limit: Any) -> MemoryBackend:
    """The memory backend of the probe and the candidates: the given one, or the detected
    one with ``memory_limit`` applied."""
    if memory is not None and memory_limit is not None:
        raise InvalidArgumentError(
            "Both memory= and memory_limit= were given. Pass one: memory_limit overrides the "
            "detected limit; memory replaces the whole memory backend (which has its own limit)."
        )
    if memory is not None:
        return memory
    from autobatch import _units
    from autobatch.devices import resolve_memory_limit
    from autobatch.memory import detect_memory

    return detect_memory(None if memory_limit is None else _units.parse_bytes(
        resolve_memory_limit(memory_limit)))


def _probe(
    model: Any, user_hypermodel: Any, train: TrainingData, memory: MemoryBackend,
    memory_limit: Any, verbose: int,
) -> ProbeResult:
    from autobatch.probing.probe import probe

    # In-process, as tune has always probed: tune has no isolate option, and its candidates
    # train in this process anyway.
    return probe(
        _model_to_probe(model, user_hypermodel), train, verbose=verbose, isolate=False,
        # memory_limit as given: the probe's cache keys a relative "+SIZE" as such.
        **({"memory_limit": memory_limit} if memory_limit is not None else {"memory": memory}),
    )


@dataclass(frozen=True)
class _Plan:
    """What the search will do: its space, the tuner that walks it, and each candidate's budget."""

    space: Any
    tuner: str
    budget: Any
    max_trials: int | None
    candidates: list[dict[str, Any]] | None
    """For "halving": every distinct candidate, in the order the first round trains them."""


def _plan(
    probe: ProbeResult, train: TrainingData, *, tuner: str, user_hypermodel: Any,
    batch_sizes: Any, steps_per_epoch: Any, budget_samples: int | None,
    budget_seconds: float | None, patience: float | None, max_trials: int | None,
) -> _Plan:
    """The space below the probed limit, the tuner for it, and the budget of a candidate."""
    from autobatch.search.space import build_space
    from autobatch.search.tuner import (
        halving_max_epochs,
        hyperband_epochs_for,
        hyperband_random_trials,
    )

    num_samples = train.num_samples
    assert num_samples is not None  # _training_and_validation counted it or refused the data
    space = build_space(
        num_samples=num_samples,
        max_batch_size=max(1, min(probe.max_batch_size, num_samples)),
        endless=train.endless,
        batch_sizes=batch_sizes,
        steps_per_epoch=steps_per_epoch,
        num_replicas=probe.num_replicas,
    )
    if tuner == "halving" and user_hypermodel is not None:
        # Halving trains every candidate first: a HyperModel's own space may be endless.
        tuner = "hyperband"
    if tuner == "hyperband" and space.size < hyperband_random_trials(3):
        tuner = "grid"  # too few candidates for even the smallest Hyperband
    if max_trials is None and tuner in ("random", "bayesian"):
        max_trials = max(3, math.ceil(space.size * DEFAULT_TRIAL_SHARE))
    candidates = None
    shares = 1
    if tuner == "halving":
        candidates = _distinct_candidates(space)
        shares = halving_max_epochs(candidates)
    elif tuner == "hyperband":
        shares = hyperband_epochs_for(space.size)
    budget = _budget(
        budget_samples, budget_seconds, patience, num_samples, hyperband_epochs=shares
    )
    return _Plan(space, tuner, budget, max_trials, candidates)


def _search(
    plan: _Plan, model: Any, user_hypermodel: Any, train: TrainingData,
    validation: TrainingData, *, settings: dict[str, Any], memory: MemoryBackend,
    min_delta: float, lr_scaling: str | None, reference_batch_size: int, seed: int | None,
    directory: str | Path | None, overwrite: bool, deadline: float | None,
    callbacks: list[Any], verbose: int, noise: _NoiseScale,
) -> Any:
    """Run (or resume) the keras-tuner search of ``plan``; return the finished BatchTuner,
    its progress display as ``.progress``."""
    import keras_tuner

    from autobatch import report
    from autobatch.search import distributed, project
    from autobatch.search.hypermodel import BatchHyperModel
    from autobatch.search.tuner import BatchTuner, make_oracle

    directory = Path(directory) if directory is not None else project.default_directory()
    name = project.project_name(plan.tuner, settings, model, [train, validation])
    progress = report.tune_progress(
        verbose,
        total=_expected_trials(plan.tuner, plan.space.size, plan.candidates, plan.max_trials),
        at_most=plan.candidates is not None,  # halving may end before its last round
    )
    oracle = make_oracle(
        plan.tuner, max_trials=plan.max_trials, seed=None if seed is None else seed + 1,
        hyperband_epochs=plan.budget.hyperband_epochs, candidates=plan.candidates,
    )
    if plan.max_trials is not None and plan.tuner in ("halving", "hyperband"):
        oracle.max_trials = plan.max_trials
    hypermodel = BatchHyperModel(
        plan.space, model=None if user_hypermodel else model, hypermodel=user_hypermodel,
        lr_scaling=lr_scaling, reference_batch_size=reference_batch_size,
    )
    # keras-tuner prints "Reloading Tuner from ..." when it resumes; our progress says so.
    with contextlib.redirect_stdout(io.StringIO()):
        search = BatchTuner(
            oracle, hypermodel, train=train, validation=validation, budget=plan.budget,
            memory=memory, min_delta=min_delta, validation_batch_size=plan.space.batch_sizes[-1],
            on_candidate=progress.trial_done, on_candidate_start=progress.trial_started,
            directory=str(directory), project_name=name,
            # A worker never deletes the project: it is the chief's (and other workers').
            overwrite=overwrite and distributed.role() != "worker", deadline=deadline,
            callbacks=callbacks + noise.callbacks(),
        )
    noise.keep_in(search.project_dir)
    search.oracle.verbose = 0  # silence keras-tuner's Display: progress is ours
    search.progress = progress
    try:
        with progress:
            distributed.run_search(search, seed=seed, progress=progress)  # alone unless told
    except keras_tuner.errors.FatalError as error:
        # Ours is one line already (see BatchTuner._train); a HyperModel's may not be.
        description = describe_backend_error(error, with_type=False, limit=600)
        raise TrialError(
            f"{description}. This is not an out-of-memory error or a diverging loss, so the "
            "search stopped; check that model.fit works on this data at a small batch "
            f"size. The trials so far are kept in {search.project_dir}."
        ) from error.__cause__
    return search


class _NoiseScale:
    """The search's one measurement of the gradient noise scale (see
    `autobatch.search.noise_scale.search_estimator`): taken when the first training run
    ends, kept in the project directory so a resumed search does not measure again.

    Arrays only (it draws samples with replacement) and the TensorFlow backend only; the
    result then says why it was not measured.
    """

    def __init__(self, train: TrainingData, seed: int | None) -> None:
        import keras

        from autobatch.search.noise_scale import search_estimator

        self.estimator: Any = None
        self.path: str | None = None
        self.reason: str | None = None
        if keras.backend.backend() != "tensorflow":
            self.reason = "needs the TensorFlow backend"
        elif not isinstance(train, ArrayData):
            self.reason = "needs array data"
        else:
            self.estimator = search_estimator(train.x, train.y, seed=seed or 0)

    def callbacks(self) -> list[Any]:
        return [] if self.estimator is None else [self.estimator]

    def keep_in(self, project_dir: str) -> None:
        from autobatch.search.noise_scale import SEARCH_FILE

        self.path = str(Path(project_dir) / SEARCH_FILE)
        if self.estimator is not None:
            self.estimator.path = self.path

    def result(self) -> tuple[Any, str]:
        """(the `NoiseScaleEstimate` or None, a status for `TuneResult.noise_scale_status`)."""
        from autobatch.search.noise_scale import load_search_estimate

        if self.estimator is None:
            return None, f"not measured: {self.reason}"
        estimate = self.estimator.estimate
        if estimate is None and self.path is not None:
            estimate = load_search_estimate(self.path)
        if estimate is None:
            return None, f"not measured: {self.estimator.error or 'no training run ended'}"
        if math.isinf(estimate.noise_scale) or math.isnan(estimate.noise_scale):
            return estimate, "no signal: the gradient was lost in the noise"
        return estimate, "measured"


def _expected_trials(
    tuner: str, space_size: int, candidates: list | None, max_trials: int | None
) -> int | None:
    """How many trials the search will run, for the progress bar; None where the tuner
    decides as it goes (Hyperband's brackets, a HyperModel's own space)."""
    from autobatch.search.tuner import halving_max_trials

    if candidates is not None:  # successive halving: at most this many
        expected = halving_max_trials(candidates)
    elif tuner == "grid":
        expected = space_size
    else:
        return max_trials if tuner in ("random", "bayesian") else None
    return expected if max_trials is None else min(expected, max_trials)


_DURATION_UNITS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60,
                   "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600}


def parse_duration(value: Any, name: str) -> float | None:
    """Seconds from a number or a string such as "90s", "10min", "1.5h"; None stays None.

    Example:
        >>> parse_duration("10min", "time_budget")
        600.0
    """
    if value is None:
        return None
    if _is_real(value) and value > 0:
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value.lower()) if isinstance(
        value, str) else None
    if match and float(match.group(1)) > 0 and (match.group(2) or "s") in _DURATION_UNITS:
        return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    raise InvalidArgumentError(
        f"{name}={value!r}; expected positive seconds or a string such as '90s', '10min' or "
        "'2h', or None for no limit."
    )


def _distinct_candidates(space: Any) -> list[dict[str, Any]]:
    """Every point of the space once, smallest batch first, without the values that make the
    same ``model.fit`` call (a quarter and a half pass are both one step when one batch holds
    half the data): successive halving would otherwise spend its later rounds on copies."""
    from autobatch.search.space import BATCH_SIZE, EPOCH_FRACTION, STEPS_PER_EPOCH

    name, choices = (
        (EPOCH_FRACTION, space.epoch_fractions)
        if space.epoch_fractions
        else (STEPS_PER_EPOCH, space.steps_per_epoch)
    )
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    for batch_size in space.batch_sizes:
        for choice in choices:
            values = {BATCH_SIZE: batch_size, name: choice}
            seen.setdefault((batch_size, space.steps_per_epoch_for(batch_size, values)), values)
    return list(seen.values())


def _budget(
    samples: int | None, seconds: float | None, patience: float | None, num_samples: int,
    *, hyperband_epochs: int,
) -> Any:
    """The equal budget; by default DEFAULT_BUDGET_PASSES passes, at least
    DEFAULT_MIN_BUDGET_SAMPLES samples (a time budget alone sets no sample budget)."""
    from autobatch.search.space import Budget

    if samples is None and seconds is None:
        samples = max(DEFAULT_BUDGET_PASSES * num_samples, DEFAULT_MIN_BUDGET_SAMPLES)
    return Budget(samples, seconds, patience, hyperband_epochs)


@contextlib.contextmanager
def _kept_as_it_was(model: Any) -> Any:
    """`preserved`, and the caller's optimizer object back in place: the search trains with
    its own optimizer, and `preserved` restores a built optimizer's values, not the object."""
    from autobatch.probing.state import preserved

    optimizer = model.optimizer
    with preserved(model):
        try:
            yield
        finally:
            model.optimizer = optimizer


def _check_options(
    *, tuner: Any, tuners: tuple, validation_split: Any, budget_samples: Any,
    budget_seconds: Any, patience: Any, min_delta: Any, lr_scaling: Any, lr_scalings: tuple,
    reference_batch_size: Any, max_trials: Any, seed: Any,
) -> None:
    """Raise `InvalidArgumentError` for an option out of range, before any work is done."""
    if tuner not in tuners:
        raise InvalidArgumentError(
            f"tuner={tuner!r} is not a tuner autobatch knows. Expected one of "
            f"{', '.join(repr(t) for t in tuners)}."
        )
    if not _is_real(validation_split) or not 0 < validation_split < 1:
        raise InvalidArgumentError(
            f"validation_split={validation_split!r} is outside (0, 1). Expected the fraction "
            "of the arrays held out for validation, e.g. validation_split=0.2, or pass "
            "validation_data=(x_val, y_val)."
        )
    if budget_samples is not None and not (_is_int(budget_samples) and budget_samples >= 1):
        raise InvalidArgumentError(
            f"budget_samples={budget_samples!r}; expected a positive number of training samples "
            "per candidate, or None for the default (10 passes, at least 100,000 samples)."
        )
    if budget_seconds is not None and not (_is_real(budget_seconds) and budget_seconds > 0):
        raise InvalidArgumentError(
            f"budget_seconds={budget_seconds!r}; expected positive seconds per candidate, or None."
        )
    if patience is not None and not (_is_real(patience) and patience > 0):
        raise InvalidArgumentError(
            f"patience={patience!r}; expected positive passes over the data without improvement "
            "before a candidate stops (e.g. 2), or None to turn early stopping off."
        )
    if not (_is_real(min_delta) and min_delta >= 0):
        raise InvalidArgumentError(f"min_delta={min_delta!r}; expected a number >= 0.")
    if lr_scaling not in lr_scalings:
        raise InvalidArgumentError(
            f"lr_scaling={lr_scaling!r}; expected None, 'linear' or 'sqrt'."
        )
    if not (_is_int(reference_batch_size) and reference_batch_size >= 1):
        raise InvalidArgumentError(
            f"reference_batch_size={reference_batch_size!r}; expected the positive batch size "
            "the learning rate was chosen for (32 is Keras' default)."
        )
    if max_trials is not None and not (_is_int(max_trials) and max_trials >= 1):
        raise InvalidArgumentError(
            f"max_trials={max_trials!r}; expected a positive integer or None."
        )
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2**32):
        # Workers seed Keras with it, and NumPy refuses seeds outside this range.
        raise InvalidArgumentError(
            f"seed={seed!r}; expected an integer from 0 to 2**32 - 1, or None for a random "
            "search."
        )


def _check_callbacks(callbacks: Any) -> None:
    import keras

    if callbacks is None:
        return
    items = list(callbacks) if isinstance(callbacks, (list, tuple)) else None
    if items is None or not all(isinstance(c, keras.callbacks.Callback) for c in items):
        raise InvalidArgumentError(
            f"callbacks={callbacks!r}; expected a list of keras.callbacks.Callback objects, "
            "e.g. callbacks=[keras.callbacks.CSVLogger('log.csv')]."
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _training_and_validation(
    data: Any, validation_data: Any, validation_split: float, num_samples: int | None,
) -> tuple[TrainingData, TrainingData]:
    if num_samples is not None and not (_is_int(num_samples) and num_samples >= 1):
        raise InvalidArgumentError(
            f"num_samples={num_samples!r}; expected the positive number of samples in one pass "
            "over the data."
        )
    train = as_training_data(data, num_samples=num_samples)
    if train.num_samples is None:
        if isinstance(train, DatasetData) and not train.is_infinite:
            train.count_elements()
        else:
            raise InvalidDataError(
                f"data is a {train.description} whose size autobatch cannot tell, and every "
                "candidate gets a budget of passes over it. State the samples in one pass: "
                "autobatch.tune(model, data, num_samples=60_000, validation_data=...)."
            )
    if validation_data is not None:
        return train, as_training_data(validation_data, name="validation_data")
    if isinstance(train, ArrayData):
        return keras_validation_split(train, validation_split)
    raise InvalidDataError(
        f"data is a {train.description}, and validation_split applies to arrays only. "
        "Pass validation_data in the same form, e.g. an unbatched tf.data.Dataset of "
        "held-out samples: autobatch.tune(model, dataset, validation_data=validation_dataset)."
    )


def keras_validation_split(data: ArrayData, fraction: float) -> tuple[ArrayData, ArrayData]:
    """``(train, validation)`` exactly as Keras' ``model.fit(validation_split=fraction)``
    splits arrays: the last fraction, before shuffling. So the README's
    ``model.fit(x, y, validation_split=0.2, **result.fit_kwargs())`` validates on the samples
    the search scored candidates on (a random split here made that line report 0.2594 where
    tune had reported 0.0104, on digits). Shuffle arrays sorted by class or time first, as
    for Keras. The caller's arrays are not modified.

    Example:
        >>> train, validation = keras_validation_split(ArrayData(x, y), 0.2)
    """
    split_at = math.floor(data.num_samples * (1.0 - fraction))  # Keras' own arithmetic
    if split_at in (0, data.num_samples):
        raise InvalidDataError(
            f"validation_split={fraction} of {data.num_samples} samples leaves "
            f"{split_at} for training and {data.num_samples - split_at} for validation. Pass "
            "more samples, another validation_split, or validation_data=(x_val, y_val)."
        )
    return (
        data.take(np.arange(split_at)),
        data.take(np.arange(split_at, data.num_samples)),
    )


def _model_to_probe(model: Any, user_hypermodel: Any) -> Any:
    """The model whose memory the probe measures: a HyperModel's default build."""
    if user_hypermodel is None:
        return model
    import keras_tuner

    from autobatch.search.hypermodel import check_built_model

    hp = keras_tuner.HyperParameters()
    user_hypermodel.declare_hyperparameters(hp)
    built = user_hypermodel.build(hp)
    check_built_model(built, f"{type(user_hypermodel).__name__}.build()")
    return built


def _result(
    records: list[TuneTrial], *, probe: ProbeResult, tuner: str, budget: Any,
    lr_scaling: str | None, seconds: float, directory: str, versions: dict[str, str],
    validation_split: float | None, out_of_time: bool = False, time_budget: float | None = None,
    noise: tuple[Any, str] = (None, "not measured"),
) -> TuneResult:
    ranked = ranked_trials(records)
    best = ranked[0] if ranked else None
    if best is None or best.status == "failed" or best.val_loss is None:
        raise AllTrialsFailedError(_all_failed_message(records, directory))
    assert best.best_epoch is not None  # a trial with a val_loss has the epoch it came from
    schedule = best.fit_kwargs()  # the run it scored, which may end part-way through an epoch
    return TuneResult(
        batch_size=best.batch_size,
        steps_per_epoch=schedule["steps_per_epoch"],
        epochs=schedule["epochs"],
        val_loss=best.val_loss,
        trials=records,
        probe=probe,
        tuner=tuner,
        budget_samples=budget.samples,
        seconds=seconds,
        hyperparameters=best.hyperparameters,
        versions=versions,
        learning_rate=best.learning_rate,
        lr_scaling=lr_scaling,
        directory=directory,
        validation_split=validation_split,
        out_of_time=out_of_time,
        time_budget=time_budget,
        **_noise_fields(*noise),
    )


def _noise_fields(estimate: Any, status: str) -> dict[str, Any]:
    """TuneResult's noise-scale fields; plain finite numbers or None, so its JSON is strict."""
    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    if estimate is None:
        return {"noise_scale_status": status}
    return {
        "noise_scale": finite(estimate.noise_scale),
        "noise_scale_standard_error": finite(estimate.standard_error),
        "noise_scale_status": status,
        "noise_scale_seconds": estimate.seconds,
    }


def _all_failed_message(records: list[TuneTrial], directory: str) -> str:
    if not records:
        return (
            f"The search ran no candidate (its trials are in {directory}). Pass overwrite=True "
            "to start afresh, or a larger space (batch_sizes, steps_per_epoch)."
        )
    reasons = Counter("out of memory" if r.error == "out of memory" else "a non-finite loss"
                      for r in records)
    out_of_memory = sorted({r.batch_size for r in records if r.error == "out of memory"})
    diverged = [r for r in records if r.error != "out of memory"]
    parts = []
    if out_of_memory:
        parts.append(
            f"{reasons['out of memory']} ran out of memory (batch sizes "
            f"{', '.join(map(str, out_of_memory))}): pass smaller batch_sizes or a ProbeResult "
            "measured with the memory that training really has"
        )
    if diverged:
        parts.append(
            f"{len(diverged)} had a non-finite loss (e.g. {diverged[0].error} at batch size "
            f"{diverged[0].batch_size}): lower the learning rate, check the data for NaN or "
            "inf, or try lr_scaling=None"
        )
    return f"All {len(records)} candidates failed; " + "; ".join(parts) + "."

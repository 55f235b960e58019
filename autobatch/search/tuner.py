"""The keras-tuner Tuner of a search, and the oracles it can use by name.

keras-tuner runs the search: its Oracle (Hyperband, Bayesian optimisation, random or grid)
picks the next candidate, saves every trial to the project directory and resumes from there.
`BatchTuner` only overrides ``run_trial``: train one candidate on the shared budget and
report its best ``val_loss``. A candidate that runs out of memory or whose loss is not finite
raises ``FailedTrialError`` (never scored as inf, which Bayesian optimisation would read as
the best possible value); any other error is fatal, wrapped in ``FatalError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import keras_tuner
from keras_tuner.errors import FailedTrialError, FatalError

from autobatch.data import TrainingData
from autobatch.errors import InvalidArgumentError, MissingDependencyError, describe_backend_error
from autobatch.files import write_atomically
from autobatch.memory.base import MemoryBackend
from autobatch.results import TuneTrial
from autobatch.search import distributed
from autobatch.search.candidate import CandidateOutcome, RunState, train_candidates
from autobatch.search.hypermodel import BatchHyperModel
from autobatch.search.project import RunStore
from autobatch.search.space import BATCH_SIZE, Budget, Candidate, samples_in_epochs

TUNERS = ("halving", "hyperband", "bayesian", "random", "grid")
OBJECTIVE = "val_loss"
#: Hyperband: the whole budget is 9 of its "epochs", each round keeps the best third.
HYPERBAND_EPOCHS = 9
HYPERBAND_FACTOR = 3
#: Successive halving: each round keeps the best half of the batch sizes still improving.
HALVING_FACTOR = 2
#: keras-tuner aborts a search after this many failed trials in a row (default 3). A space
#: whose large batches all run out of memory fails many in a row and must go on.
NEVER_ABORT = 1_000_000
RECORD_FILE = "autobatch_trial.json"
#: A trial metric next to val_loss: 1.0 when early stopping ended the candidate.
STOPPED_EARLY = "stopped_early"
#: Under the project directory: the outcomes of each shared training run (see `_train`).
RUNS_DIRECTORY = "autobatch_runs"


def hyperband_random_trials(max_epochs: int, factor: int = HYPERBAND_FACTOR) -> int:
    """How many distinct candidates one Hyperband iteration draws at random.

    keras-tuner's Hyperband stops the whole search when it cannot draw a new distinct
    candidate, so the space must hold at least this many.
    """
    oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=max_epochs, factor=factor)
    brackets = oracle._get_num_brackets()
    return sum(oracle._get_size(bracket, 0) for bracket in range(brackets))


def hyperband_epochs_for(space_size: int) -> int:
    """The largest Hyperband budget split (27, 9 or 3) whose random draws fit in the space."""
    for max_epochs in (27, HYPERBAND_EPOCHS, 3):
        if hyperband_random_trials(max_epochs) <= space_size:
            return max_epochs
    return 1


def halving_rounds(candidates: list[dict[str, Any]], factor: int = HALVING_FACTOR) -> list[int]:
    """How many batch sizes each round of successive halving trains: all of them, then
    ``1 / factor`` of the previous round's, down to one.

    Example:
        >>> halving_rounds([{"batch_size": b, "epoch_fraction": 1.0} for b in range(8)])
        [8, 4, 2, 1]
    """
    sizes = [max(1, len({c[BATCH_SIZE] for c in candidates}))]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / factor))
    return sizes


def halving_max_epochs(candidates: list[dict[str, Any]], factor: int = HALVING_FACTOR) -> int:
    """The shares the budget is cut into: the first round trains one, the last all of them."""
    return factor ** (len(halving_rounds(candidates, factor)) - 1)


def halving_max_trials(candidates: list[dict[str, Any]], factor: int = HALVING_FACTOR) -> int:
    """The most trials successive halving runs: every candidate, then every candidate of
    each round's batch sizes (fewer when batch sizes stop early)."""
    per_batch_size = Counter(c[BATCH_SIZE] for c in candidates)
    most = max(per_batch_size.values(), default=0)
    return len(candidates) + sum(halving_rounds(candidates, factor)[1:]) * most


def make_oracle(
    tuner: str,
    *,
    max_trials: int | None,
    seed: int | None,
    hyperband_epochs: int,
    candidates: list[dict[str, Any]] | None = None,
) -> keras_tuner.Oracle:
    """The keras-tuner Oracle for a tuner name; raise `InvalidArgumentError` for others.

    ``candidates`` (for "halving"): every point of the space, in the order to try them.
    """
    common = {
        "objective": keras_tuner.Objective(OBJECTIVE, direction="min"),
        "seed": seed,
        "max_consecutive_failed_trials": NEVER_ABORT,
    }
    if tuner == "halving":
        return SuccessiveHalvingOracle(candidates=candidates or [], **common)
    if tuner == "hyperband":
        return keras_tuner.oracles.HyperbandOracle(
            max_epochs=hyperband_epochs, factor=HYPERBAND_FACTOR, hyperband_iterations=1, **common
        )
    if tuner == "bayesian":
        try:
            return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=max_trials, **common)
        except ImportError as error:
            raise MissingDependencyError(
                f"tuner='bayesian' needs scipy and scikit-learn: {error}. Install them with "
                "pip install scipy scikit-learn, or pick tuner='hyperband'."
            ) from error
    if tuner == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if tuner == "grid":
        return ResumableGridSearchOracle(max_trials=max_trials, **common)
    raise InvalidArgumentError(
        f"tuner={tuner!r} is not a tuner autobatch knows. Expected one of "
        f"{', '.join(repr(t) for t in TUNERS)}."
    )


class SuccessiveHalvingOracle(keras_tuner.Oracle):
    """Successive halving over the whole space, by batch size, each round continuing the last.

    The first round trains every candidate, in the given order, on ``1 / max_epochs`` of the
    budget. Each later round takes the best ``1 / factor`` of the previous round's batch sizes
    (`halving_rounds`), ranked by their candidates' best val_loss, and trains every candidate
    of those batch sizes on ``factor`` times as much: their run continues where the previous
    round left it (see `BatchTuner`), so a round costs only its extra share. A trial's
    ``tuner/epochs`` is its share of the budget in units of ``1 / max_epochs``, as for
    Hyperband (see `autobatch.search.space.Budget`).

    Promotion is by batch size because the candidates of one batch size share one run (they
    differ only in steps_per_epoch): promoting all of them costs what promoting one does.
    A batch size whose candidates all stopped early (or failed) has its final score
    already: it takes no place, which goes to the next best one still improving. On
    tune_bench (digits, breast cancer), a third per round with every candidate retrained
    dropped the best batch size in round one on 2 of 6 seeds (2.6% and 5.7% off the grid's
    best): large batches are far behind after a ninth of the budget and catch up later.
    This rule found the grid's best on all 6 seeds, at 0.50 (digits) and 0.92 (breast
    cancer) of the grid's time; there every grid run stops early, and the large batches
    this rule keeps promoting are what the grid spends its time on.

    Why not keras-tuner's Hyperband: its later brackets train random candidates on large
    shares of the budget from the start, which on a space of a few dozen candidates cost
    nearly what the grid costs (breast cancer, 18 candidates: 0.91x the grid's time), and its
    first round draws at random, so it can miss the best candidate. Rounds are read back from
    the trials themselves, so a reloaded search resumes with no state of its own.
    """

    def __init__(
        self, *, candidates: list[dict[str, Any]], factor: int = HALVING_FACTOR, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.candidates = [dict(c) for c in candidates]
        self.factor = factor
        self.round_sizes = halving_rounds(self.candidates, factor)
        self.max_epochs = factor ** (len(self.round_sizes) - 1)

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        rounds: list[list[Any]] = [[] for _ in self.round_sizes]
        for started in self.start_order:
            trial = self.trials[started]
            rounds[trial.hyperparameters.values.get("tuner/round", 0)].append(trial)
        first_round = self._next_unstarted(self.candidates, rounds[0])
        if first_round is not None:
            return self._running(first_round, round_num=0)
        for round_num in range(1, len(self.round_sizes)):
            previous = rounds[round_num - 1]
            ongoing = {t.trial_id for t in self.ongoing_trials.values()}
            if any(t.trial_id in ongoing for t in previous):
                return {"status": "IDLE"}  # another worker's trial may still change the order
            kept = self._promoted_batch_sizes(previous, self.round_sizes[round_num])
            promoted = [values for batch_size in kept for values in self.candidates
                        if values[BATCH_SIZE] == batch_size]
            values = self._next_unstarted(promoted, rounds[round_num])
            if values is not None:
                earlier = {_key(public_values(t.hyperparameters.values)): t.trial_id
                           for t in previous}
                return self._running(values, round_num=round_num,
                                     past_id=earlier.get(_key(values)))
        return {"status": "IDLE" if self.ongoing_trials else "STOPPED"}

    def _next_unstarted(
        self, candidates: list[dict[str, Any]], started_trials: list[Any]
    ) -> dict[str, Any] | None:
        """The first of ``candidates`` not started yet, preferring a batch size no worker is
        training now: candidates of one batch size share one run, and a worker handed a
        sibling of a run in progress waits for it (the distributed benchmark's 2 workers
        were no faster than 1, each waiting on the other's run in turn)."""
        started = {_key(public_values(t.hyperparameters.values)) for t in started_trials}
        pending = [values for values in candidates if _key(values) not in started]
        busy = {t.hyperparameters.values.get(BATCH_SIZE) for t in self.ongoing_trials.values()}
        free = [values for values in pending if values[BATCH_SIZE] not in busy]
        chosen = free or pending
        return chosen[0] if chosen else None

    def _promoted_batch_sizes(self, trials: list[Any], num_kept: int) -> list[Any]:
        """The best ``num_kept`` batch sizes among ``trials`` still improving, best first."""
        scores: dict[Any, float] = {}
        improving = set()
        for trial in trials:
            if trial.status != "COMPLETED" or trial.score is None:
                continue
            batch_size = trial.hyperparameters.values[BATCH_SIZE]
            scores[batch_size] = min(scores.get(batch_size, math.inf), trial.score)
            metrics = trial.metrics
            if not (metrics.exists(STOPPED_EARLY) and metrics.get_last_value(STOPPED_EARLY)):
                improving.add(batch_size)
        return sorted(improving, key=scores.__getitem__)[:num_kept]

    def _running(
        self, values: dict[str, Any], *, round_num: int, past_id: str | None = None
    ) -> dict[str, Any]:
        bookkeeping = {"tuner/epochs": self.factor**round_num, "tuner/round": round_num}
        if past_id is not None:
            bookkeeping["tuner/trial_id"] = past_id
        return {"status": "RUNNING", "values": {**values, **bookkeeping}}


def _key(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=repr)


class ResumableGridSearchOracle(keras_tuner.oracles.GridSearchOracle):
    """keras-tuner's grid search, able to resume.

    keras-tuner 1.4.8 does not save the grid's bookkeeping (the trials in grid order, and
    which ones still have to produce their next combination), so a reloaded grid search dies
    with ``KeyError`` after its first trial (keras-team/keras-tuner#1055). Both are rebuilt
    here from the reloaded trials: in grid order, each trial queued once; a trial whose next
    combination was already tried is skipped by the oracle itself.
    """

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        # keras-tuner queues a trial for "its next combination" only when it ends (the first
        # trial excepted), so while one worker trains, a second is told IDLE: its grid ran
        # one candidate at a time (2 workers 1.15x as fast as 1 in distributed_bench).
        # Queued at once, the next worker gets the next combination; queued again at its end
        # as keras-tuner does, for hyperparameters a trial may add, and skipped when tried.
        answer = super().populate_space(trial_id)
        if answer["status"] == "RUNNING":
            self._populate_next.append(trial_id)
        return answer

    def set_state(self, state: dict) -> None:
        super().set_state(state)

        def compare(first: str, second: str) -> int:
            return self._compare(
                self.trials[first].hyperparameters.values,
                self.trials[second].hyperparameters.values,
            )

        ordered = sorted(self.start_order, key=functools.cmp_to_key(compare))
        # keras-tuner's private LinkedList, emptied: its type taken from the instance rather
        # than imported from a private module.
        self._ordered_ids: Any = type(self._ordered_ids)()
        for trial_id in ordered:
            self._ordered_ids.insert(trial_id)
        self._populate_next = list(ordered)


class BatchTuner(keras_tuner.Tuner):
    """Runs each candidate of the search; everything else is keras-tuner's.

    Example:
        >>> tuner = BatchTuner(make_oracle("grid", max_trials=None, seed=1, hyperband_epochs=1),
        ...                    BatchHyperModel(space, model=model), train=train,
        ...                    validation=validation, budget=budget, memory=memory, min_delta=0.0,
        ...                    validation_batch_size=512, directory=d, project_name="p",
        ...                    overwrite=False)
        >>> tuner.search()
        >>> tuner.records()
    """

    def __init__(
        self,
        oracle: keras_tuner.Oracle,
        hypermodel: BatchHyperModel,
        *,
        train: TrainingData,
        validation: TrainingData,
        budget: Budget,
        memory: MemoryBackend,
        min_delta: float,
        validation_batch_size: int,
        on_candidate: Callable[[TuneTrial], None] = lambda trial: None,
        on_candidate_start: Callable[[int, int], None] = lambda batch_size, steps_per_epoch: None,
        directory: str,
        project_name: str,
        overwrite: bool,
        deadline: float | None = None,
        callbacks: list[Any] | None = None,
    ) -> None:
        super().__init__(
            oracle, hypermodel, directory=directory, project_name=project_name,
            overwrite=overwrite,
        )
        self.train = train
        self.validation = validation
        self.budget = budget
        self.memory = memory
        self.min_delta = min_delta
        # Validation runs at the largest batch of the space: inference needs less memory
        # than the training step that fits there, and fewer, larger batches are faster.
        self.validation_batch_size = validation_batch_size
        self.on_candidate = on_candidate
        self.on_candidate_start = on_candidate_start
        self._finished: dict[str, TuneTrial] = {}
        # The whole search's end (a time.perf_counter() value), and what ran out of it.
        self.deadline = deadline
        self.callbacks = callbacks or []
        self.out_of_time = False
        self.cut_records: list[TuneTrial] = []

    # --- keras-tuner hooks -------------------------------------------------------------

    def search(self, *args: Any, **kwargs: Any) -> None:
        with _failed_trial_tracebacks_hidden():
            try:
                super().search(*args, **kwargs)
            except _OutOfTime:
                self.out_of_time = True
                self.on_search_end()
                return
        # Finished: no later round will continue a run, so the kept states (a model and
        # its optimizer each) would only fill the disk.
        self.runs.remove_states()

    def pre_create_trial(self) -> None:
        super().pre_create_trial()
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            raise _OutOfTime

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        hp = trial.hyperparameters
        candidate = self.budget.candidate(self.hypermodel.space, hp.values)
        self.on_candidate_start(candidate.batch_size, candidate.steps_per_epoch)
        record = self._reusable(candidate, hp.values, trial.trial_id)
        if record is None:
            record = self._train(trial, candidate)
        self._save_record(trial.trial_id, record)
        if record.status == "failed":
            raise FailedTrialError(
                f"batch_size={record.batch_size}, steps_per_epoch={record.steps_per_epoch}: "
                f"{record.error}"
            )
        if record.val_loss is None:
            # Its shared run stopped (budget_seconds, a caller's callback) before this
            # candidate's first validation. keras-tuner would fail the trial anyway, on
            # float(None); this says why.
            raise FailedTrialError(
                f"batch_size={record.batch_size}, steps_per_epoch={record.steps_per_epoch}: "
                "stopped before its first validation, so it has no val_loss"
            )
        # The oracle sees whether early stopping ended the candidate: its score is final
        # and promoting it would train nothing (see SuccessiveHalvingOracle).
        return {OBJECTIVE: record.val_loss, STOPPED_EARLY: float(record.status == "stopped early")}

    def on_trial_end(self, trial: Any) -> None:
        super().on_trial_end(trial)
        record = self._finished.get(trial.trial_id)
        if record is not None and record.same_as is None:  # a repeat is not a new candidate
            self.on_candidate(record)

    # --- one candidate -----------------------------------------------------------------

    def _train(self, trial: Any, candidate: Candidate) -> TuneTrial:
        """Train the candidate, or read it off the run that already trained its batch size
        with the same budget (candidates differing only in steps_per_epoch share one run).
        A run on a larger budget than an earlier one of the same batch size (a later round
        of successive halving or Hyperband) continues the earlier one from its last whole
        pass rather than training again from the initial weights."""
        hp = trial.hyperparameters
        run_name = self._run_name(candidate, hp.values)
        run = self.runs.load(run_name)
        if run is None:  # in a distributed search, another worker may be training it now
            run = distributed.claim_run(str(self.runs.directory), run_name,
                                        functools.partial(self.runs.load, run_name))
        if run is not None and str(candidate.steps_per_epoch) in run["outcomes"]:
            outcome = CandidateOutcome(**run["outcomes"][str(candidate.steps_per_epoch)])
            return self._record(trial, candidate, outcome, run["learning_rate"],
                                shared_run=run["trial_id"], continued_from=run.get("continued"))
        siblings = {candidate.steps_per_epoch: candidate}
        for steps in self.hypermodel.space.steps_choices(candidate.batch_size):
            siblings.setdefault(steps, self.budget.candidate_at(
                self.hypermodel.space, candidate.batch_size, steps, hp.values.get("tuner/epochs")
            ))
        lineage = self._lineage(candidate, hp.values)
        model = self.hypermodel.build(hp)
        try:
            learning_rate = self.hypermodel.prepare(model, candidate.batch_size)
            earlier, resume = self._continuation(lineage, candidate, model)
            space = self.hypermodel.space
            run_outcome = train_candidates(
                fit=lambda m, **kwargs: self.hypermodel.fit(hp, m, **kwargs),
                model=model,
                candidates=[siblings[steps] for steps in sorted(siblings)],
                train=self.train,
                validation=self.validation,
                validation_batch_size=self.validation_batch_size,
                memory=self.memory,
                min_delta=self.min_delta,
                deadline=self.deadline,
                callbacks=self.callbacks,
                samples_per_pass=None if space.endless else space.num_samples,
                resume=resume,
            )
        except (FailedTrialError, FatalError):
            raise  # the caller's HyperModel decided
        except Exception as error:
            raise FatalError(
                f"Training the candidate batch_size={candidate.batch_size}, "
                f"steps_per_epoch={candidate.steps_per_epoch} failed with "
                f"{describe_backend_error(error)}"
            ) from error
        outcomes = run_outcome.outcomes
        continued = None if earlier is None else (self.runs.load(earlier) or {}).get("trial_id")
        if any(outcome.out_of_time for outcome in outcomes.values()):
            # Not saved: a search resumed with more time trains this candidate to its end.
            # The trial stays unfinished in keras-tuner's books, as after Ctrl-C.
            self.cut_records = [
                dataclasses.replace(
                    self._record(trial, siblings[steps], outcome, learning_rate,
                                 continued_from=continued),
                    status="out of time",
                )
                for steps, outcome in outcomes.items()
                if outcome.failure is None and outcome.val_losses
            ]
            raise _OutOfTime
        if run_outcome.snapshot is not None:
            self.runs.save_state(run_name, run_outcome.snapshot)
        self.runs.save(run_name, {
            "trial_id": trial.trial_id, "learning_rate": learning_rate,
            "outcomes": {str(k): dataclasses.asdict(v) for k, v in outcomes.items()},
            "lineage": lineage, "budget": _budget_size(candidate), "continued": continued,
        })
        distributed.release_run(str(self.runs.directory), run_name)
        if earlier is not None:
            self.runs.remove_state(earlier)  # this run's state supersedes it
        return self._record(trial, candidate, outcomes[candidate.steps_per_epoch], learning_rate,
                            continued_from=continued)

    # --- shared runs: one training run per batch size, budget and HyperModel values ------

    def _run_name(self, candidate: Candidate, values: dict[str, Any]) -> str:
        key = json.dumps([self._own_values(candidate, values), candidate.budget_samples,
                          candidate.budget_seconds], sort_keys=True, default=repr)
        return hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()

    def _lineage(self, candidate: Candidate, values: dict[str, Any]) -> str:
        """What runs that can continue one another share: batch size and a HyperModel's own
        values (every budget trains the same trajectory from the same start)."""
        key = json.dumps(self._own_values(candidate, values), sort_keys=True, default=repr)
        return hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()

    @staticmethod
    def _own_values(candidate: Candidate, values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in public_values(values, candidate).items()
                if k != "steps_per_epoch"}

    def _continuation(
        self, lineage: str, candidate: Candidate, model: Any
    ) -> tuple[str | None, RunState | None]:
        """``(run name, state)`` of the earlier run this one continues, its state already
        loaded into ``model``; ``(None, None)`` to train from the initial weights.

        The earlier run is the one of the same lineage with the largest budget below this
        candidate's whose state was kept (a run that reached no whole pass keeps none).
        """
        budget = _budget_size(candidate)
        best: tuple[float, str] | None = None
        for name, run in self.runs.all():
            earlier = run.get("budget")
            if run.get("lineage") != lineage or earlier is None or budget is None:
                continue
            if earlier < budget and self.runs.has_state(name) and (
                    best is None or earlier > best[0]):
                best = (earlier, name)
        state = None if best is None else self.runs.load_state(best[1])
        # Another layout (load_into refuses it) is not expected within one lineage.
        if best is None or state is None or not state.load_into(model):
            return None, None
        return best[1], state

    @property
    def runs(self) -> RunStore:
        """The project's shared runs and the states kept to continue them."""
        return RunStore(os.path.join(self.project_dir, RUNS_DIRECTORY))

    def _record(
        self, trial: Any, candidate: Candidate, outcome: CandidateOutcome, learning_rate: Any,
        shared_run: str | None = None, continued_from: str | None = None,
    ) -> TuneTrial:
        space = self.hypermodel.space
        sizes = space.epoch_sizes(candidate.batch_size, candidate.steps_per_epoch)
        samples = samples_in_epochs(sizes, outcome.epochs_run)
        if outcome.samples_cap is not None:
            samples = min(samples, outcome.samples_cap)
        if outcome.failure is not None:
            status = "failed"
        elif outcome.stopped_early:
            status = "stopped early"
        else:
            status = "completed"
        return TuneTrial(
            batch_size=candidate.batch_size,
            steps_per_epoch=candidate.steps_per_epoch,
            status=status,
            val_loss=None if outcome.failure else outcome.best_val_loss,
            best_epoch=None if outcome.failure else outcome.best_epoch,
            samples_seen=samples,
            seconds=outcome.seconds,
            samples_per_second=samples / outcome.train_seconds if outcome.train_seconds else None,
            error=outcome.failure,
            trial_id=trial.trial_id,
            val_loss_history=outcome.val_losses,
            hyperparameters=public_values(trial.hyperparameters.values),
            epochs_run=outcome.epochs_run,
            max_epochs=candidate.max_epochs,
            budget_samples=candidate.budget_samples,
            learning_rate=learning_rate,
            peak_bytes=outcome.peak_bytes,
            shared_run=shared_run,
            continued_from=continued_from,
        )

    def _reusable(self, candidate: Candidate, values: dict, trial_id: str) -> TuneTrial | None:
        """An earlier trial of the same candidate whose result this one would repeat.

        Several hyperparameter values can mean the same candidate (a quarter and a half pass
        are both one step when a batch holds half the data); Bayesian optimisation proposes
        points it has tried; Hyperband promotes a candidate that early stopping had already
        ended. Training those again would cost time and show nothing new.
        """
        wanted = public_values(values, candidate)
        for record in self.records():
            same = public_values(record.hyperparameters, record) == wanted
            if not same or record.budget_samples is None or candidate.budget_samples is None:
                continue
            done = record.status in ("failed", "stopped early") and (
                record.budget_samples <= candidate.budget_samples
            )
            if record.budget_samples == candidate.budget_samples or done:
                return dataclasses.replace(
                    record, trial_id=trial_id, seconds=0.0, hyperparameters=public_values(values),
                    same_as=record.same_as or record.trial_id,
                )
        return None

    # --- records: our view of each trial, next to keras-tuner's trial.json ---------------

    def _save_record(self, trial_id: str, record: TuneTrial) -> None:
        path = os.path.join(self.get_trial_dir(trial_id), RECORD_FILE)
        _write_json_whole(path, dataclasses.asdict(record))
        self._finished[trial_id] = record

    def records(self) -> list[TuneTrial]:
        """Every finished candidate of this project, earlier runs included, in start order."""
        found = []
        for trial_id in self.oracle.start_order:
            path = os.path.join(self.project_dir, f"trial_{trial_id}", RECORD_FILE)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as file:
                    data = json.load(file)
                known = {f.name for f in dataclasses.fields(TuneTrial)}
                found.append(TuneTrial(**{k: v for k, v in data.items() if k in known}))
        return found


def _write_json_whole(path: str, data: Any) -> None:
    """Write ``data`` to a file beside ``path``, then rename it there: the chief reads every
    record (`BatchTuner.records`) while workers write theirs, and a half-written one failed
    the distributed benchmark's search (JSONDecodeError)."""
    write_atomically(Path(path), lambda file: json.dump(data, file))


class _OutOfTime(BaseException):
    """The whole search's time budget ran out. A BaseException, like KeyboardInterrupt, so
    keras-tuner neither scores nor retries the trial it interrupts: it goes up to `search`."""


@contextlib.contextmanager
def _failed_trial_tracebacks_hidden() -> Any:
    """keras-tuner prints the traceback of every failed trial to stderr (its DEBUG flag is on
    by default). A candidate that runs out of memory is expected here, and its reason is in
    the trial's record and our progress line, so the flag is off during our search."""
    try:
        from keras_tuner.src import config
    except ImportError:  # a keras-tuner without the flag
        yield
        return
    debug = config.DEBUG
    config.DEBUG = False
    try:
        yield
    finally:
        config.DEBUG = debug


def public_values(values: dict[str, Any], candidate: Any = None) -> dict[str, Any]:
    """Hyperparameter values without keras-tuner's Hyperband bookkeeping (``tuner/...``).

    With ``candidate``, the batch settings are its effective ones (what fit received).
    """
    public = {k: v for k, v in values.items() if not k.startswith("tuner/")}
    if candidate is not None:
        public.pop("epoch_fraction", None)
        public["batch_size"] = candidate.batch_size
        public["steps_per_epoch"] = candidate.steps_per_epoch
    return public


def _budget_size(candidate: Candidate) -> float | None:
    """The candidate's share of the budget, comparable between rounds: its samples, or its
    seconds when only a time budget is set."""
    return candidate.budget_samples if candidate.budget_samples is not None else (
        candidate.budget_seconds)

"""Result objects of a probe and of a search: stable fields, dict and JSON round trips.

These are the contract with pipelines that store results, so fields are only ever added.
``from_dict`` ignores keys it does not know, so a result written by a newer autobatch
still loads in an older one. This module sits at the bottom of autobatch's imports: it
imports nothing else of autobatch's but its errors and, inside ``plot()``, the plots
module, which in turn names these classes only for type checkers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from autobatch.errors import InvalidResultError, kind_of

SCHEMA_VERSION = 1

_T = TypeVar("_T")


def _from_known_fields(cls: type[_T], data: Any) -> _T:
    name = cls.__name__
    if not isinstance(data, dict):
        raise InvalidResultError(
            f"A saved {name} is a JSON object; got {type(data).__name__}. Expected what "
            "to_json() writes."
        )
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    missing = [f.name for f in fields if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise InvalidResultError(
            f"Not a saved {name}: it has no {listed}. Expected what to_json() or autobatch's "
            "--json option writes."
        )
    names = {f.name for f in fields}
    return cls(**{key: value for key, value in data.items() if key in names})


def _records(data: dict[str, Any], key: str) -> list[Any]:
    """``data[key]``, a list of records (missing: none)."""
    records = data.get(key, [])
    if not isinstance(records, list):
        raise InvalidResultError(
            f"Its {key} is {kind_of(records)}, not a list. Expected what to_json() or "
            "autobatch's --json option writes."
        )
    return records


def _check_kind(data: Any, kind: str) -> dict[str, Any]:
    """``data``, if it is a dict and not the other kind of result."""
    if not isinstance(data, dict):
        raise InvalidResultError(
            f"A saved {kind} result is a JSON object; got {type(data).__name__}. Expected what "
            "to_json() writes."
        )
    if data.get("kind") not in (None, "probe", "tune"):
        raise InvalidResultError(
            f"Its kind is {data['kind']!r}, not 'probe' or 'tune'. Expected what to_json() or "
            "autobatch's --json option writes."
        )
    if data.get("kind") not in (None, kind):
        other = "TuneResult" if data["kind"] == "tune" else "ProbeResult"
        raise InvalidResultError(
            f"This is a {data['kind']} result, not a {kind} result. Load it with "
            f"{other}.from_json(), or with autobatch.load_result(), which reads either."
        )
    return data


def _read_json(text_or_path: str | Path) -> Any:
    """The JSON text itself (starting with "{"), or the file at that path, parsed."""
    expected = "Expected what to_json() or autobatch's --json option writes."
    text = str(text_or_path)
    if not text.lstrip().startswith("{"):
        try:
            text = Path(text_or_path).read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise InvalidResultError(f"Not JSON (not even text). {expected}") from error
        except OSError as error:
            raise InvalidResultError(
                f"Cannot read {text_or_path} ({error.strerror or error}). {expected[:-1]}: "
                "the path of such a file, or the JSON text itself."
            ) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidResultError(f"Not JSON ({error.msg} at line {error.lineno}). {expected}") from error


class _JsonMixin:
    def to_json(self, path: str | Path | None = None, *, indent: int = 2) -> str:
        """Return the result as JSON; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent)  # type: ignore[attr-defined]
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path):
        """Load a result from a JSON string or from a path to a JSON file; an
        `InvalidResultError` says why when it cannot."""
        return cls.from_dict(_read_json(text_or_path))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ProbeTrial:
    """One probe trial: a few real training steps at one batch size."""

    batch_size: int
    peak_bytes: int | None
    """Peak memory during the trial (None when it ran out of memory)."""
    seconds_per_step: float | None
    samples_per_second: float | None
    fits: bool
    """True when the trial ran and its peak stayed within the usable memory (limit minus margin)."""
    fitted: bool
    """True when the batch size was chosen from the fitted memory model rather than a fixed step."""
    steps: int = 0
    """Optimizer steps that actually ran."""
    error: str | None = None
    """Why the trial did not fit: "out of memory", "above the safety margin", ..."""
    seconds: float = 0.0
    """Wall seconds of the whole trial, compilation included."""


@dataclass(frozen=True)
class ProbeVerification:
    """Real training at the answer, as ``fit`` will run it: whole epochs, each ending with its
    partial batch and a validation pass at the same batch size, until the peak stops growing."""

    batch_size: int
    peak_bytes: int | None
    """Peak over the whole verification (None when it ran out of memory)."""
    fits: bool
    """Ran, and peaked within the usable memory plus half the margin (what the trials left in
    the process's allocator pool is reused by the verification, see `ProbeResult.left_behind_bytes`)."""
    epochs: int
    train_steps: int
    epoch_peak_bytes: list[int] = field(default_factory=list)
    """The peak so far at the end of each epoch: how memory grew with training."""
    stable: bool = False
    """The last epoch raised the peak by less than the growth tolerance (1% of the free memory,
    at least 4 MiB)."""
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ProbeResult(_JsonMixin):
    """What `autobatch.probe` found: the largest batch that fits, and the measured memory curve.

    Example:
        >>> result = autobatch.probe(model, (x, y))
        >>> result.max_batch_size
        512
        >>> result.to_json("probe.json")
    """

    max_batch_size: int
    limit_bytes: int
    """The memory the trials may reach: the detected or given limit."""
    limit_source: str
    """Where the limit came from: "cgroup", "host RAM", "GPU:0 allocator", "memory_limit argument"."""
    backend: str
    """Keras backend the trials ran on ("tensorflow", "jax", "torch")."""
    device: str
    """What was measured, e.g. "CPU (host RAM)", "GPU:0"."""
    memory_source: str
    """How peaks were measured, e.g. "process peak RSS (VmHWM), file-backed pages excluded",
    "tensorflow allocator peak"."""
    bytes_per_sample: float | None
    """Slope of the fitted memory model: peak = fixed_bytes + bytes_per_sample * batch_size."""
    fixed_bytes: float | None
    margin: float
    """Fraction of the headroom (limit minus memory in use before probing) kept free."""
    baseline_bytes: int
    """Memory in use before the first trial."""
    usable_bytes: int
    """Peak a trial may reach and still count as fitting: baseline + (limit - baseline) * (1 - margin),
    and at least the backend's ``min_margin_bytes`` below the limit (64 MiB on host RAM)."""
    num_samples: int | None
    """Training samples available (the answer is never above it); None when unknown."""
    trials: list[ProbeTrial] = field(default_factory=list)
    seconds: float = 0.0
    num_oom: int = 0
    stop_reason: str = ""
    """Why the probe stopped, in words (e.g. "limited by the number of samples")."""
    from_cache: bool = False
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    verified: bool = False
    """True when real training epochs at ``max_batch_size`` (with a validation pass at that
    batch) peaked within the usable memory plus half the margin; see ``verifications``."""
    verifications: list[ProbeVerification] = field(default_factory=list)
    """Each verification run, in order: the first at the search's answer, then backed-off
    batches if it crossed the margin."""
    memory_before_bytes: int | None = None
    """This process's memory in use before the probe started (after releasing freed memory)."""
    memory_after_bytes: int | None = None
    """The same after the probe returned: what it left behind is the difference."""
    isolated: bool = False
    """Every trial and verification ran in a new worker process (``probe(..., isolate=True)``,
    the default for a model file): peaks are those of a new process, a killed worker counted
    as out of memory, and the calling process kept none of the trials' memory."""
    num_replicas: int = 1
    """Data-parallel replicas sharing each batch (a ``tf.distribute`` strategy, or Keras'
    ``DataParallel`` on JAX); 1 without distribution. ``max_batch_size`` is the global batch,
    a multiple of it."""
    per_replica_batch_size: int | None = None
    """Each replica's share of ``max_batch_size``: ``max_batch_size // num_replicas``. On GPUs
    it is what the tightest replica device holds; replicas on one host (logical CPU devices)
    share its RAM, so there it is only a share of what fits in all of it together."""
    replica_devices: list[str] = field(default_factory=list)
    """The replicas' devices, e.g. ``["GPU:0", "GPU:1"]``; empty without distribution."""

    def __post_init__(self) -> None:
        if self.per_replica_batch_size is None:  # results stored before replicas were counted
            object.__setattr__(self, "per_replica_batch_size", self.max_batch_size // self.num_replicas)

    @property
    def num_trials(self) -> int:
        return len(self.trials)

    @property
    def left_behind_bytes(self) -> int | None:
        """Memory the probe left in use in this process, or None. On TF/CPU this is mostly the
        allocator's pool of freed blocks, which the caller's next fit reuses rather than adds
        to: the verification measured the answer on top of it."""
        if self.memory_before_bytes is None or self.memory_after_bytes is None:
            return None
        return self.memory_after_bytes - self.memory_before_bytes

    @property
    def margin_bytes(self) -> int:
        return self.limit_bytes - self.usable_bytes

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["num_trials"] = self.num_trials
        data["kind"] = "probe"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        data = dict(_check_kind(data, "probe"))
        data["trials"] = [_from_known_fields(ProbeTrial, t) for t in _records(data, "trials")]
        data["verifications"] = [
            _from_known_fields(ProbeVerification, v) for v in _records(data, "verifications")
        ]
        return _from_known_fields(cls, data)

    def plot(self, directory: str | Path) -> list[Path]:
        """Write PNG plots of this probe to ``directory``; needs matplotlib."""
        from autobatch import plots

        return plots.plot_probe(self, directory)


@dataclass(frozen=True)
class TuneTrial:
    """One search candidate: a batch size and steps_per_epoch, trained on the shared budget."""

    batch_size: int
    steps_per_epoch: int
    status: str
    """"completed", "failed" (out of memory, NaN loss) or "stopped early"."""
    val_loss: float | None
    """Best validation loss reached (None for a failed candidate)."""
    best_epoch: int | None
    """1-based epoch of the best validation loss."""
    samples_seen: int
    seconds: float
    samples_per_second: float | None
    error: str | None = None
    trial_id: str | None = None
    val_loss_history: list[float] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """Every hyperparameter of the candidate, including a HyperModel's own."""
    epochs_run: int = 0
    """Epochs actually trained (fewer than ``max_epochs`` when stopped early)."""
    max_epochs: int | None = None
    """Epochs that reach the candidate's sample budget."""
    budget_samples: int | None = None
    """Training samples this candidate could see (less than the search's in the early rounds
    of successive halving or Hyperband)."""
    learning_rate: float | None = None
    """The learning rate it trained with (scaled from the model's when ``lr_scaling`` is set)."""
    peak_bytes: int | None = None
    """Peak memory during its training, as the memory backend measured it."""
    same_as: str | None = None
    """The trial whose result this one repeats without training again (the same effective
    candidate and budget, proposed twice); None when it trained."""
    shared_run: str | None = None
    """The trial whose training run this candidate's curve was read from: candidates that
    differ only in steps_per_epoch train the same steps, so one run validated at the finest
    of them serves all. None when its own trial ran it. ``seconds`` is that run's time."""
    continued_from: str | None = None
    """The trial whose run this one continued from its last whole pass (a later round of
    successive halving or Hyperband); None when it trained from the initial weights.
    ``samples_seen``, ``epochs_run`` and ``val_loss_history`` then count every round,
    ``seconds`` only this one."""

    def fit_kwargs(self) -> dict[str, int]:
        """Keyword arguments for ``model.fit`` that train the run this trial scored: its batch
        size, steps_per_epoch and ``best_epoch`` epochs.

        A candidate of one epoch that holds more samples than its budget (an early round of
        successive halving or Hyperband) is validated part-way through that epoch, after
        ``samples_seen`` samples (always whole batches): its steps_per_epoch here is that
        shorter epoch. Trained for the whole epoch, it would be another run (a new user's
        16 x 90 winner, scored after 45 steps, retrained to a val_loss 22% lower).

        Example:
            >>> runner_up = result.ranked_trials()[1]
            >>> model.fit(x, y, validation_split=0.2, **runner_up.fit_kwargs())
        """
        steps, epochs = self.steps_per_epoch, self.best_epoch or self.epochs_run
        if self.max_epochs == 1 and self.samples_seen:
            steps = min(steps, math.ceil(self.samples_seen / self.batch_size))
        return {"batch_size": self.batch_size, "steps_per_epoch": steps, "epochs": epochs}


    def steps_text(self) -> str:
        """steps_per_epoch for tables and plots: "8", or "4 of 8" where its one epoch was
        validated part-way through (its budget was smaller), as its `fit_kwargs` trains."""
        scored = self.fit_kwargs()["steps_per_epoch"]
        if scored == self.steps_per_epoch:
            return f"{self.steps_per_epoch:,}"
        return f"{scored:,} of {self.steps_per_epoch:,}"


#: Hyperparameters every candidate has; the others (a HyperModel's own) tell candidates apart.
_BATCH_SETTINGS = frozenset({"batch_size", "steps_per_epoch", "epoch_fraction"})


def ranked_trials(trials: list[TuneTrial]) -> list[TuneTrial]:
    """One trial per distinct candidate, the winner first, then by the same order; failed
    candidates last, in the order they ran.

    A candidate is what ``model.fit`` receives: batch size, steps_per_epoch and a
    HyperModel's own hyperparameters (two fractions of a pass that give the same step count
    are one candidate). Its trial is its best one (successive halving and Hyperband train
    a candidate several times). The order, so that ties are settled the same way in the
    result, the summary, the table and every plot:

    1. lower best val_loss;
    2. fewer training samples to reach it (the cheaper run);
    3. larger batch size (faster per sample);
    4. more steps_per_epoch (fewer validations);
    5. earlier trial.

    Example:
        >>> winner, runner_up = ranked_trials(result.trials)[:2]
    """
    best: dict[tuple, TuneTrial] = {}
    for trial in trials:
        key = _candidate_key(trial)
        kept = best.get(key)
        if kept is None or _rank_key(trial) < _rank_key(kept):
            best[key] = trial
    scored = sorted((t for t in best.values() if _is_scored(t)), key=_rank_key)
    return scored + [t for t in best.values() if not _is_scored(t)]


def _is_scored(trial: TuneTrial) -> bool:
    return trial.val_loss is not None and math.isfinite(trial.val_loss)


def _candidate_key(trial: TuneTrial) -> tuple:
    return (trial.batch_size, trial.steps_per_epoch, _own_hyperparameters(trial))


def _own_hyperparameters(trial: TuneTrial) -> tuple:
    """A HyperModel's own hyperparameters of ``trial``, as sorted (name, repr) pairs."""
    own = {k: v for k, v in trial.hyperparameters.items()
           if k not in _BATCH_SETTINGS and not k.startswith("tuner/")}
    return tuple(sorted((k, repr(v)) for k, v in own.items()))


def _rank_key(trial: TuneTrial) -> tuple:
    if not _is_scored(trial):  # among a candidate's failed trials, the one that went furthest
        return (1, 0.0, -trial.samples_seen, 0, 0, 0, "")
    samples_to_best = min(
        trial.samples_seen, (trial.best_epoch or 0) * trial.steps_per_epoch * trial.batch_size
    )
    trial_id = trial.trial_id or ""
    return (0, trial.val_loss, samples_to_best, -trial.batch_size, -trial.steps_per_epoch,
            len(trial_id), trial_id)  # ids "9" < "10": by length first


@dataclass(frozen=True)
class TuneResult(_JsonMixin):
    """What `autobatch.tune` found: the settings to train with.

    Example:
        >>> result = autobatch.tune(model, (x, y))
        >>> model.fit(x, y, **result.fit_kwargs())
    """

    batch_size: int
    steps_per_epoch: int
    epochs: int
    val_loss: float
    trials: list[TuneTrial]
    probe: ProbeResult | None
    tuner: str
    budget_samples: int | None
    """Training samples each candidate could see (the equal budget)."""
    seconds: float = 0.0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """The best candidate's hyperparameters (a HyperModel's own included)."""
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    learning_rate: float | None = None
    """The best candidate's learning rate: set it on the optimizer when ``lr_scaling`` was
    used (it then differs from the model's own)."""
    lr_scaling: str | None = None
    directory: str | None = None
    """The project directory holding the trials; calling tune again with it resumes."""
    validation_split: float | None = None
    """The fraction of the arrays held out, as Keras' ``validation_split`` holds it out (the
    last fraction); None when ``validation_data`` was given. Pass the same to ``model.fit``."""

    out_of_time: bool = False
    """True when ``time_budget`` ran out before the search finished: the result is the best
    candidate so far (a candidate cut by it has status "out of time")."""
    time_budget: float | None = None
    """The whole search's time budget in seconds; None without one."""

    noise_scale: float | None = None
    """The gradient noise scale B_noise = tr(Sigma) / |G|^2 in samples (McCandlish et al.
    2018), measured once per search on the weights of its first training run (see
    `autobatch.search.noise_scale.search_estimator`); about the critical batch size, past
    which a larger batch mostly wastes samples. None when not measured or when no signal was
    found (``noise_scale_status`` says which)."""
    noise_scale_standard_error: float | None = None
    noise_scale_status: str = "not measured"
    """"measured", "no signal: ..." or "not measured: <why>"."""
    noise_scale_seconds: float | None = None
    """What the measurement cost (forward and backward passes, no optimizer step)."""

    def statistical_efficiency(self, batch_size: int) -> float | None:
        """The share of a training sample's progress kept at ``batch_size``, relative to the
        smallest batch searched: (B_noise + B_min) / (B_noise + B), Pollux's statistical
        efficiency (Qiao et al. 2021). 1 at the smallest batch, 1 everywhere when no signal
        was found; None when the noise scale was not measured.

        Example:
            >>> result.statistical_efficiency(512)   # 0.2: a sample at 512 does a fifth
        """
        if self.noise_scale is None:
            return 1.0 if self.noise_scale_status.startswith("no signal") else None
        base = min(t.batch_size for t in self.trials)
        return (self.noise_scale + base) / (self.noise_scale + batch_size)

    def goodput(self) -> list[dict[str, Any]]:
        """Per batch size searched: the training throughput the candidates measured (median
        samples per second), the statistical efficiency and their product, Pollux's goodput
        (useful samples per second, counted at the smallest batch's efficiency). Efficiency
        and goodput are None when the noise scale was not measured.

        Example:
            >>> max(result.goodput(), key=lambda row: row["goodput"] or 0)["batch_size"]
        """
        speeds: dict[int, list[float]] = {}
        for trial in self.trials:
            if trial.samples_per_second and trial.same_as is None and trial.shared_run is None:
                speeds.setdefault(trial.batch_size, []).append(trial.samples_per_second)
        rows = []
        for batch_size in sorted({t.batch_size for t in self.trials}):
            measured = speeds.get(batch_size)
            throughput = sorted(measured)[len(measured) // 2] if measured else None
            efficiency = self.statistical_efficiency(batch_size)
            rows.append({
                "batch_size": batch_size,
                "samples_per_second": throughput,
                "statistical_efficiency": efficiency,
                "goodput": None if throughput is None or efficiency is None
                else throughput * efficiency,
            })
        return rows

    def ranked_trials(self) -> list[TuneTrial]:
        """One trial per distinct candidate, the winner first (see `ranked_trials`)."""
        return ranked_trials(self.trials)

    def fit_kwargs(self) -> dict[str, int]:
        """Keyword arguments for ``model.fit``: batch_size, steps_per_epoch and epochs."""
        return {
            "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
        }

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["probe"] = None if self.probe is None else self.probe.to_dict()
        data["kind"] = "tune"
        # Derived, for readers of the JSON; from_dict recomputes it from the fields above.
        data["goodput"] = self.goodput()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneResult:
        data = dict(_check_kind(data, "tune"))
        data["trials"] = [_from_known_fields(TuneTrial, t) for t in _records(data, "trials")]
        if data.get("probe") is not None:
            data["probe"] = ProbeResult.from_dict(data["probe"])
        return _from_known_fields(cls, data)

    def plot(self, directory: str | Path) -> list[Path]:
        """Write PNG plots of this search (and its probe) to ``directory``; needs matplotlib."""
        from autobatch import plots

        return plots.plot_tune(self, directory)


def load_result(path: str | Path) -> ProbeResult | TuneResult:
    """Load a probe or tune result saved with ``to_json``; an `InvalidResultError` says why
    when it cannot."""
    data = _read_json(path)
    if isinstance(data, dict) and (data.get("kind") == "tune" or "steps_per_epoch" in data):
        return TuneResult.from_dict(data)
    return ProbeResult.from_dict(data)

"""Everything autobatch shows a person: progress, tables, summaries, plots.

No other module prints. Progress goes to stderr (so ``--json -`` on stdout stays clean) and
is silent with ``verbose=0``; rich renders it in terminals and notebooks alike.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
import traceback
from typing import Any

from autobatch._units import format_bytes
from autobatch.errors import InvalidArgumentError
from autobatch.results import ProbeResult, ProbeTrial, ranked_trials

#: The width of output that is not a terminal (a file, a pipe, a CI log): wide enough that no
#: line is ever broken, so a suggested command can be copied back whole.
UNWRAPPED_WIDTH = 10_000


def _console(stderr: bool = True) -> Any:
    """A rich console: the terminal's width on a terminal, lines never wrapped elsewhere."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and not console.is_jupyter:
        console = Console(stderr=stderr, soft_wrap=True, width=UNWRAPPED_WIDTH)
    return console


def _is_live(console: Any) -> bool:
    """True where a live display can redraw itself: a terminal or a notebook."""
    return bool(console.is_terminal or console.is_jupyter)


class _Silent:
    """The progress display for ``verbose=0``: every hook does nothing."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def trial_started(self, batch_size: int, steps_per_epoch: int | None = None) -> None:
        pass

    def trial_done(self, trial: Any) -> None:
        pass

    def verification_started(self, batch_size: int) -> None:
        pass

    def verification_done(self, verification: Any) -> None:
        pass

    def done(self, result: Any) -> None:
        pass


class _Progress(_Silent):
    """Lines as trials end; on a terminal, under a live bar with the elapsed (and, when the
    number of trials is known, the remaining) time. Elsewhere the lines alone, each with the
    time so far, since a log file cannot redraw a bar."""

    label = "working"

    def __init__(self, total: int | None = None, console: Any = None, *,
                 at_most: bool = False) -> None:
        self.console = console or _console()
        self.total = total
        #: ``total`` is a bound the work may stop short of (successive halving's schedule).
        self.at_most = at_most
        self.num_started = 0
        self.num_done = 0
        self.began = time.monotonic()
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        self.began = time.monotonic()
        if _is_live(self.console):
            from rich.errors import LiveError
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
            if self.total is not None:
                columns += [BarColumn(), MofNCompleteColumn(), TextColumn("remaining"),
                            TimeRemainingColumn()]
            columns += [TextColumn("elapsed"), TimeElapsedColumn()]
            self.bar = Progress(*columns, console=self.console, transient=True)
            try:
                self.bar.start()
            except LiveError:  # the caller shows a live display of their own: plain lines then
                self.bar = None
                return self
            self.task = self.bar.add_task(f"{self.label}...", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def _started(self, description: str) -> None:
        self.num_started += 1
        if self.bar is not None:
            self.bar.update(self.task, description=description)

    def _done(self, line: str) -> None:
        self.num_done += 1
        if self.total is not None and self.num_done > self.total:
            self.total = None  # more than expected (a HyperModel's own space): stop guessing
            if self.bar is not None:
                self.bar.update(self.task, total=None)
        if self.bar is not None:
            self.bar.advance(self.task)
        else:
            line += f"  [dim]({self._times()})[/]"
        self.console.print(line, highlight=False)

    def _times(self) -> str:
        elapsed = time.monotonic() - self.began
        text = f"{_clock(elapsed)} elapsed"
        if self.total is not None:
            text = f"{self.num_done}{self._of_total()} done, {text}"
            if 0 < self.num_done < self.total:
                left = elapsed / self.num_done * (self.total - self.num_done)
                text += f", {'at most ' if self.at_most else ''}about {_clock(left)} left"
        return text

    def _of_total(self) -> str:
        """"/38", or " of at most 38" for a bound; "" when the total is unknown."""
        if self.total is None:
            return ""
        return f" of at most {self.total}" if self.at_most else f"/{self.total}"


def _escape(text: Any) -> str:
    """Text from elsewhere (an exception's message) shown as is, never read as rich markup."""
    from rich.markup import escape

    return escape(str(text))


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class _ProbeProgress(_Progress):
    """A line per probe trial; how many trials a probe needs is not known in advance."""

    label = "probing"

    def trial_started(self, batch_size: int, steps_per_epoch: int | None = None) -> None:
        self._started(f"probing: trial {self.num_started + 1}, batch {batch_size:,}")

    def trial_done(self, trial: ProbeTrial) -> None:
        verdict = "[green]fits[/]" if trial.fits else f"[red]{_escape(trial.error)}[/]"
        speed = f", {trial.samples_per_second:,.0f} samples/s" if trial.samples_per_second else ""
        self._done(
            f"  batch {trial.batch_size:>7}: peak {format_bytes(trial.peak_bytes)}{speed} -> {verdict}"
        )

    def verification_started(self, batch_size: int) -> None:
        self._started(f"probing: verifying batch {batch_size:,} with real epochs")

    def verification_done(self, verification: Any) -> None:
        verdict = "[green]fits[/]" if verification.fits else f"[red]{_escape(verification.error)}[/]"
        self._done(
            f"  verify {verification.batch_size:>6}: {verification.epochs} epochs with validation, "
            f"{verification.train_steps} steps, peak {format_bytes(verification.peak_bytes)} -> {verdict}"
        )

    def done(self, result: ProbeResult) -> None:
        self.console.print(probe_summary(result))


def check_verbose(verbose: Any) -> None:
    """Refuse a ``verbose`` other than 0 or 1 (True/False and NumPy integers are fine),
    before any work is done."""
    if isinstance(verbose, numbers.Integral) and int(verbose) in (0, 1):
        return
    raise InvalidArgumentError(
        f"verbose={verbose!r}; expected 0 (print nothing) or 1 (a line per trial and a summary)."
    )


def probe_progress(verbose: int, *, console: Any = None) -> _Silent:
    """The progress display of a probe: silent for verbose=0.

    The probe calls ``trial_started(batch_size)`` and ``trial_done(trial)`` for each trial
    and ``done(result)`` at the end, inside ``with progress:``.
    """
    return _ProbeProgress(console=console) if verbose else _Silent()


def probe_summary(result: ProbeResult) -> str:
    """One paragraph: the answer, why, and the headroom left."""
    cached = " (from the probe cache)" if result.from_cache else ""
    return (
        f"Largest batch size that fits: {result.max_batch_size}{cached}{_replicas(result)} "
        f"on {result.device}, "
        f"limit {format_bytes(result.limit_bytes)} ({result.limit_source}), "
        f"{result.num_trials} trials, {result.num_oom} out of memory, "
        f"{result.seconds:.1f} s; stopped because {result.stop_reason}.{_answer_headroom(result)}"
        f"{_verification_summary(result)}{_isolation_summary(result)}"
    )


def _isolation_summary(result: ProbeResult) -> str:
    if not result.isolated:
        return ""
    return (
        " Each trial ran in a new worker process: the answer is what a new process trains at"
        + (f"; {result.num_oom} killed worker(s) counted as out of memory." if result.num_oom else ".")
    )


def _replicas(result: ProbeResult) -> str:
    if result.num_replicas <= 1:
        return ""
    return f" ({result.per_replica_batch_size} per replica x {result.num_replicas} replicas)"


def _verification_summary(result: ProbeResult) -> str:
    if not result.verifications:
        return ""
    last = result.verifications[-1]
    if result.verified:
        return (
            f" Verified with {last.epochs} real epochs ({last.train_steps} steps, validation at "
            f"the same batch): peak {format_bytes(last.peak_bytes)}."
        )
    if result.max_batch_size < last.batch_size:
        lowest = min((v for v in result.verifications if not v.fits), key=lambda v: v.batch_size)
        return (
            f" NOT verified itself: real epochs at {lowest.batch_size} went "
            f"{lowest.error or 'past the margin'}; pass a larger margin= for an answer that is."
        )
    return (
        f" NOT verified: real epochs at {last.batch_size} went {last.error}; pass a larger "
        "margin=."
    )


def _answer_headroom(result: ProbeResult) -> str:
    """Where the answer's peak stands against the limit: measured, or between two trials."""
    chosen = _chosen_trial(result)
    if chosen is not None and chosen.peak_bytes is not None:
        return (
            f" It peaked at {format_bytes(chosen.peak_bytes)}, "
            f"{100 * chosen.peak_bytes / result.limit_bytes:.0f}% of the limit."
        )
    failed = [v for v in result.verifications if not v.fits and v.batch_size > result.max_batch_size]
    if failed and not result.verified:
        # Backed off from a verification, not interpolated between trials.
        lowest = min(failed, key=lambda v: v.batch_size)
        return (
            f" It is backed off from batch {lowest.batch_size} by half as much again as its "
            "excess at the measured cost per sample (at least 5% down)."
        )
    below = max((t for t in result.trials if t.fits and t.batch_size < result.max_batch_size),
                key=lambda t: t.batch_size, default=None)
    above = min((t for t in result.trials if not t.fits and t.peak_bytes is not None
                 and t.batch_size > result.max_batch_size),
                key=lambda t: t.batch_size, default=None)
    if below is None or above is None:
        return ""
    return (
        f" It lies between batch {below.batch_size} (peak {format_bytes(below.peak_bytes)}) "
        f"and batch {above.batch_size} (peak {format_bytes(above.peak_bytes)}, past the margin), "
        f"interpolated where the usable {format_bytes(result.usable_bytes)} ends."
    )


def _chosen_trial(result: ProbeResult) -> ProbeTrial | None:
    """The trial that ran at the answer, if one did (it can lie between two trials)."""
    return next(
        (t for t in result.trials if t.fits and t.batch_size == result.max_batch_size), None
    )


# Short forms of ProbeTrial.error for the table's narrow "fits" column.
_SHORT_ERRORS = {"out of memory": "OOM", "above the safety margin": "over margin", "": "did not fit"}


def probe_table(result: ProbeResult) -> Any:
    """A rich table of the probe's trials, then its verifications with real epochs, in the
    order they ran; the answer's row in bold."""
    from rich.table import Table

    table = Table(title=f"Probe: {result.device}, limit {format_bytes(result.limit_bytes)} "
                  f"({result.limit_source})", title_justify="left", caption_justify="left")
    for name in ("batch", "peak memory", "% of limit", "step time", "samples/s", "fits"):
        table.add_column(name, justify="left" if name == "fits" else "right", no_wrap=True)
    for trial in result.trials:
        chosen = (
            not result.verifications and trial.fits and trial.batch_size == result.max_batch_size
        )
        if trial.fits:
            verdict = "[green]yes, chosen[/]" if chosen else "[green]yes[/]"
        else:
            verdict = f"[red]no: {_escape(_SHORT_ERRORS.get(trial.error or '', trial.error))}[/]"
        share = "-" if trial.peak_bytes is None else f"{100 * trial.peak_bytes / result.limit_bytes:.0f}%"
        table.add_row(
            f"{trial.batch_size:,}",
            format_bytes(trial.peak_bytes),
            share,
            _seconds(trial.seconds_per_step),
            "-" if trial.samples_per_second is None else f"{trial.samples_per_second:,.0f}",
            verdict,
            style="bold" if chosen else None,
        )
    for verification in result.verifications:
        chosen = result.verified and verification.batch_size == result.max_batch_size
        if verification.fits:
            verdict = "[green]yes, verified, chosen[/]" if chosen else "[green]yes[/]"
        else:
            verdict = f"[red]no: {_escape(_SHORT_ERRORS.get(verification.error or '', verification.error))}[/]"
        share = "-" if verification.peak_bytes is None else (
            f"{100 * verification.peak_bytes / result.limit_bytes:.0f}%"
        )
        table.add_row(
            f"{verification.batch_size:,} (verify: {verification.epochs} epochs)",
            format_bytes(verification.peak_bytes),
            share,
            "-",
            "-",
            verdict,
            style="bold" if chosen else None,
        )
    if result.verifications:
        table.caption = (
            "verify: real epochs with a validation pass at the same batch, until the peak "
            "stops growing."
        )
    if result.isolated:
        table.caption = (table.caption or "") + (
            " Each trial ran in a new worker process (a killed one counts as out of memory)."
        )
    elif _chosen_trial(result) is None and result.trials:
        # The answer lies between two trials: show where the fitted line puts it.
        predicted = None
        if result.bytes_per_sample is not None and result.fixed_bytes is not None:
            predicted = result.fixed_bytes + result.bytes_per_sample * result.max_batch_size
        table.add_row(
            f"{result.max_batch_size:,}",
            "-" if predicted is None else "~" + format_bytes(predicted),
            "-" if predicted is None else f"~{100 * predicted / result.limit_bytes:.0f}%",
            "-",
            "-",
            "[green]yes, chosen[/]",
            style="bold",
        )
        table.caption = "~ predicted: the answer lies between two trials (not run itself)."
    return table


def tune_table(result: Any) -> Any:
    """A rich table of the search: one row per candidate, best first, failed ones last.

    A candidate is one setting of the hyperparameters; when successive halving or Hyperband
    trained it several times with growing budgets, its row shows its best run.
    """
    from rich.table import Table

    candidates = distinct_candidates(result.trials)
    extra = _other_hyperparameter_names(result.trials)
    table = Table(
        title=f"Search: {len(candidates)} candidates, {len(result.trials)} trials ({result.tuner})",
        title_justify="left",
    )
    columns = ["batch", "steps/epoch", *extra, "val_loss", "epoch", "samples", "time", "status"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("status", *extra) else "right",
                         no_wrap=name != "status")
    for trial in candidates:
        scored = _has_loss(trial)
        best = scored and trial is candidates[0]
        status = _escape(trial.status if trial.error is None else f"{trial.status}: {trial.error}")
        table.add_row(
            f"{trial.batch_size:,}",
            trial.steps_text(),
            *[str(trial.hyperparameters.get(name, "-")) for name in extra],
            f"{trial.val_loss:.4f}" if scored else "-",
            "-" if trial.best_epoch is None else str(trial.best_epoch),
            f"{trial.samples_seen:,}",
            f"{trial.seconds:.1f} s",
            f"[green]{status}[/]" if scored else f"[red]{status}[/]",
            style="bold" if best else None,
        )
    return table


def distinct_candidates(trials: list[Any]) -> list[Any]:
    """The best trial of each distinct candidate, the winner first, failed ones last."""
    return ranked_trials(trials)


def tune_summary(result: Any) -> str:
    """One paragraph: the settings to train with, why, and the memory headroom at that batch."""
    candidates = distinct_candidates(result.trials)
    ranked = [t for t in candidates if _has_loss(t)]
    num_failed = len(candidates) - len(ranked)
    budget = (
        "" if result.budget_samples is None
        else f", each given up to {result.budget_samples:,} training samples"
    )
    text = (
        f"Train with batch_size={result.batch_size}, steps_per_epoch={result.steps_per_epoch}, "
        f"epochs={result.epochs}: the lowest validation loss ({result.val_loss:.4f}) of "
        f"{len(candidates)} candidates ({num_failed} failed, {len(result.trials)} trials) "
        f"searched with {result.tuner} in {result.seconds:.1f} s{budget}."
    )
    if getattr(result, "out_of_time", False):
        text += " The time budget ran out first: this is the best candidate so far."
    # A runner-up that trains the same run as the winner (a one-epoch candidate validated
    # part-way through, at the winner's steps) is not another choice.
    others = [t for t in ranked[1:] if t.fit_kwargs() != ranked[0].fit_kwargs()] if ranked else []
    if others:
        runner_up = others[0]
        gap = _relative_gap(runner_up.val_loss, result.val_loss)
        text += (
            f" Runner-up: batch {runner_up.batch_size} x {runner_up.steps_text()} steps "
            f"(val_loss {runner_up.val_loss:.4f}{gap})."
        )
    if getattr(result, "lr_scaling", None) and getattr(result, "learning_rate", None):
        text += (
            f" With lr_scaling={result.lr_scaling!r}, set the optimizer's learning rate to "
            f"{result.learning_rate:.3g}."
        )
    if result.probe is not None:
        text += " " + _headroom(result.probe, result.batch_size)
    noise = _noise_scale_sentence(result)
    if noise:
        text += " " + noise
    return text + " Use model.fit(..., **result.fit_kwargs())."


def _noise_scale_sentence(result: Any) -> str:
    """The gradient noise scale, what it implies at the largest batch, and the batch of the
    highest goodput; empty for a result without those fields (an older JSON)."""
    status = getattr(result, "noise_scale_status", None)
    if status is None:
        return ""
    if result.noise_scale is None:
        return f"Gradient noise scale: {status}."
    error = result.noise_scale_standard_error
    spread = "" if error is None else f" +- {error:.3g}"
    text = f"Gradient noise scale (after the first run): B_noise ~ {result.noise_scale:.3g}{spread}"
    rows = result.goodput()
    if len(rows) >= 2:
        smallest, largest = rows[0], rows[-1]
        text += (
            f"; a sample at batch {largest['batch_size']} does "
            f"{100 * largest['statistical_efficiency']:.0f}% of what it does at "
            f"{smallest['batch_size']}"
        )
        scored = [r for r in rows if r["goodput"] is not None]
        if scored:
            top = max(scored, key=lambda r: r["goodput"])
            text += (
                f"; highest goodput (throughput x efficiency) at batch {top['batch_size']}, "
                f"{top['goodput']:,.0f} samples/s"
            )
    return text + "."


def console_for(*, stderr: bool) -> Any:
    """A rich console on stdout, or on stderr when stdout carries machine-readable output."""
    return _console(stderr=stderr)


def show_result(
    result: Any, *, console: Any = None, include_probe: bool = True, summary: bool = True
) -> None:
    """Print a probe or tune result: tables and summaries (the probe's too, for a search).

    ``summary=False`` leaves out the summary paragraphs, for callers whose progress display
    has just printed them.
    """
    console = console or _console(stderr=False)
    is_probe = isinstance(result, ProbeResult)
    probe = result if is_probe else result.probe
    if probe is not None and include_probe:
        console.print(probe_table(probe))
        if summary:
            console.print(probe_summary(probe))
    if not is_probe:
        if probe is not None and include_probe:
            console.print()
        console.print(tune_table(result))
        if summary:
            console.print(tune_summary(result))


def show_devices(info: dict[str, Any], *, console: Any = None) -> None:
    """Print what `autobatch devices` found (see `autobatch.devices.inspect_devices`)."""
    from rich.table import Table

    console = console or _console(stderr=False)
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("Keras", f"{info['keras_version']}, {info['keras_backend']} backend")
    table.add_row("a probe measures", info["probe_uses"])
    for backend in info["backends"]:
        table.add_row(f"backend {backend['name']}", backend["device"])
        table.add_row("  limit", f"{format_bytes(backend['limit_bytes'])} ({backend['limit_source']})")
        table.add_row("  in use now", format_bytes(backend["current_bytes"]))
        table.add_row("  peaks from", backend["peak_source"])
        table.add_row("  out of memory", "raises, the probe catches it" if backend["oom_is_catchable"]
                      else "kills the process: the probe stays below the limit")
    host = info["host"]
    table.add_row("host RAM", f"{format_bytes(host['total_bytes'])} total, "
                  f"{format_bytes(host['available_bytes'])} available")
    cgroup = info["cgroup"]
    if cgroup is None:
        table.add_row("cgroup", "none found (no container memory limit)")
    else:
        limit = "no limit" if cgroup["limit_bytes"] is None else f"limit {format_bytes(cgroup['limit_bytes'])}"
        table.add_row("cgroup", f"v{cgroup['version']}, {limit}, {format_bytes(cgroup['usage_bytes'])} "
                      f"in use ({cgroup['path']})")
    nvml = info["nvml"]
    if not nvml["available"]:
        table.add_row("NVML", f"no GPU ({nvml['reason']})")
    for gpu in nvml["gpus"]:
        others = "" if gpu["other_processes_bytes"] is None else (
            f", {format_bytes(gpu['other_processes_bytes'])} held by other processes")
        table.add_row(f"NVML GPU {gpu['index']}", f"{gpu['name']}: {format_bytes(gpu['total_bytes'])} "
                      f"total, {format_bytes(gpu['used_bytes'])} used{others}")
    for framework, devices in info["framework_gpus"].items():
        table.add_row(f"{framework} GPUs", ", ".join(devices) if devices else "none")
    console.print(table, highlight=False)


def show_paths(label: str, paths: list[Any], *, console: Any = None) -> None:
    """One line naming the files written, e.g. the plots."""
    console = console or _console(stderr=False)
    console.print(f"{label}: " + ", ".join(str(p) for p in paths), highlight=False)


def show_message(text: str, *, console: Any = None) -> None:
    """A line of text for people (the demo's steps)."""
    console = console or _console(stderr=False)
    console.print(text, highlight=False)


def write_text(text: str) -> None:
    """Raw text on stdout, for machine-readable output (``--json -``)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def error_line(message: str) -> None:
    """An error as ONE line on stderr: no rich wrapping, newlines folded."""
    sys.stderr.write("autobatch: error: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()


def error_traceback() -> None:
    """The current exception's traceback on stderr (for ``--debug``)."""
    traceback.print_exc(file=sys.stderr)


def plot_probe(result: ProbeResult, directory: Any) -> list:
    """Write the probe's PNG plots (memory and throughput vs batch size); needs matplotlib."""
    from autobatch import plots

    return plots.plot_probe(result, directory)


def plot_tune(result: Any, directory: Any) -> list:
    """Write the search's PNG plots (and its probe's); needs matplotlib."""
    from autobatch import plots

    return plots.plot_tune(result, directory)


# Hyperparameters every candidate has, shown in their own columns (or implied by them).
_BATCH_HYPERPARAMETERS = {"batch_size", "steps_per_epoch", "epoch_fraction"}


def _other_hyperparameter_names(trials: list[Any]) -> list[str]:
    """A HyperModel's own hyperparameters (units, learning rate, ...), for extra columns."""
    names = {
        name for t in trials for name in t.hyperparameters
        if name not in _BATCH_HYPERPARAMETERS and not name.startswith("tuner/")
    }
    return sorted(names)


def _has_loss(trial: Any) -> bool:
    return trial.val_loss is not None and math.isfinite(trial.val_loss)


def _relative_gap(value: float, best: float) -> str:
    if best == 0 or not math.isfinite(best):
        return ""
    return f", {100 * (value - best) / abs(best):+.1f}%"


def _headroom(probe: ProbeResult, batch_size: int) -> str:
    """How much memory the chosen batch leaves free, from what the probe measured."""
    if probe.num_samples is not None and probe.max_batch_size >= probe.num_samples:
        # The probe ran out of samples, not of memory: 'the largest that fits' would mislead.
        text = f"Memory limits no batch of these {probe.num_samples} samples"
    else:
        text = f"The largest batch that fits is {probe.max_batch_size}"
    peak, how = _peak_at(probe, batch_size)
    if peak is None:
        return text + "."
    free = probe.limit_bytes - peak
    return (
        f"{text}; batch {batch_size} peaks {how} {format_bytes(peak)}, leaving "
        f"{format_bytes(free)} ({100 * free / probe.limit_bytes:.0f}%) of the "
        f"{format_bytes(probe.limit_bytes)} limit free."
    )


def _peak_at(probe: ProbeResult, batch_size: int) -> tuple[float | None, str]:
    """The peak memory at ``batch_size``, read off the probe's trials.

    Between two measured batches: the straight line between them (memory grows linearly
    or bends upwards with the batch, so the chord does not underestimate it); below the
    smallest: that trial's peak; above the largest: the probe's fitted line.
    """
    measured = sorted(
        (t.batch_size, float(t.peak_bytes)) for t in probe.trials if t.peak_bytes is not None
    )
    above = [(b, p) for b, p in measured if b >= batch_size]
    below = [(b, p) for b, p in measured if b <= batch_size]
    if above and below:
        (low, low_peak), (high, high_peak) = below[-1], above[0]
        if high == low:
            return low_peak, "at"
        share = (batch_size - low) / (high - low)
        return low_peak + share * (high_peak - low_peak), "near"
    if above:
        return above[0][1], f"at most (measured at batch {above[0][0]})"
    if probe.bytes_per_sample is None or probe.fixed_bytes is None:
        return None, ""
    predicted = probe.fixed_bytes + probe.bytes_per_sample * batch_size
    return max(predicted, float(probe.baseline_bytes)), "near (fitted line)"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


class _TuneProgress(_Progress):
    """A line per search candidate as it ends; the bar counts trials against the expected
    number (when the tuner's schedule tells it), so the remaining time is an estimate."""

    label = "tuning"

    def trial_started(self, batch_size: int, steps_per_epoch: int | None = None) -> None:
        self._started(
            f"tuning: candidate {self.num_started + 1}{self._of_total()}, batch {batch_size:,} x "
            f"{steps_per_epoch} steps/epoch"
        )

    def trial_done(self, trial: Any) -> None:
        if trial.status == "failed":
            verdict = f"[red]failed: {_escape(trial.error)}[/]"
        else:
            verdict = (
                f"val_loss {trial.val_loss:.4f} at epoch {trial.best_epoch} "
                f"({trial.status}, {trial.samples_seen:,} samples, {trial.seconds:.1f} s)"
            )
        self._done(
            f"  candidate {self.num_done + 1:>3}: batch {trial.batch_size:>6} x "
            f"{trial.steps_per_epoch:>5} steps/epoch -> {verdict}"
        )

    def done(self, result: Any) -> None:
        self.console.print(tune_summary(result))


def tune_progress(verbose: int, total: int | None = None, *, console: Any = None,
                  at_most: bool = False) -> _Silent:
    """The progress display of a search: silent for verbose=0.

    ``total`` is the number of trials the search expects to run (None when unknown;
    ``at_most``: the most it may run, as successive halving may end sooner). The
    search calls ``trial_started(batch_size, steps_per_epoch)`` when a candidate starts
    training, ``trial_done(trial)`` with its `TuneTrial` when it ends, and ``done(result)``
    at the end, inside ``with progress:``.
    """
    return _TuneProgress(total, console=console, at_most=at_most) if verbose else _Silent()

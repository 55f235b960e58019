"""Everything autobatch shows a person: progress, tables, summaries, plots.

No other module prints. Progress goes to stderr (so ``--json -`` on stdout stays clean) and
is silent with ``verbose=0``; rich renders it in terminals and notebooks alike.
"""

from __future__ import annotations

from typing import Any

from autobatch._units import format_bytes
from autobatch.results import ProbeResult, ProbeTrial


def _console(stderr: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


class _Silent:
    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def trial_done(self, trial: Any) -> None:
        pass

    def done(self, result: Any) -> None:
        pass


class _ProbeProgress(_Silent):
    """One line per probe trial as it ends, under a spinner while a trial runs."""

    def __init__(self) -> None:
        self.console = _console()
        self.status: Any = None

    def __enter__(self) -> _ProbeProgress:
        self.status = self.console.status("probing: first trial...")
        self.status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.__exit__(*exc)

    def trial_done(self, trial: ProbeTrial) -> None:
        verdict = "[green]fits[/]" if trial.fits else f"[red]{trial.error}[/]"
        speed = f", {trial.samples_per_second:,.0f} samples/s" if trial.samples_per_second else ""
        self.console.print(
            f"  batch {trial.batch_size:>7}: peak {format_bytes(trial.peak_bytes)}{speed} -> {verdict}"
        )
        self.status.update(f"probing: {trial.batch_size} done, next trial...")

    def done(self, result: ProbeResult) -> None:
        self.console.print(probe_summary(result))


def probe_progress(verbose: int) -> _Silent:
    """The progress display of a probe: silent for verbose=0."""
    return _ProbeProgress() if verbose else _Silent()


def probe_summary(result: ProbeResult) -> str:
    """One paragraph: the answer, why, and the headroom left."""
    last = max((t for t in result.trials if t.fits), key=lambda t: t.batch_size, default=None)
    peak = last.peak_bytes if last else None
    headroom = "" if peak is None else (
        f" It peaked at {format_bytes(peak)}, "
        f"{100 * peak / result.limit_bytes:.0f}% of the limit."
    )
    cached = " (from the probe cache)" if result.from_cache else ""
    return (
        f"Largest batch size that fits: {result.max_batch_size}{cached} on {result.device}, "
        f"limit {format_bytes(result.limit_bytes)} ({result.limit_source}), "
        f"{result.num_trials} trials, {result.num_oom} out of memory, "
        f"{result.seconds:.1f} s; stopped because {result.stop_reason}.{headroom}"
    )


def plot_probe(result: ProbeResult, directory: Any) -> list:
    raise NotImplementedError("plots arrive with the report issue")


def plot_tune(result: Any, directory: Any) -> list:
    raise NotImplementedError("plots arrive with the report issue")

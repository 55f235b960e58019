"""PNG plots of probe and tune results (matplotlib, an optional dependency).

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``) and saved with
its Agg renderer: nothing touches pyplot's global state or the backend a notebook chose, and
no figure stays open after it is written. Reached through `autobatch.report.plot_probe` /
`plot_tune` and ``result.plot(directory)``.

Example:
    >>> paths = result.plot("plots/")
    >>> [p.name for p in paths]
    ['probe_memory.png', 'probe_throughput.png']
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autobatch._units import format_bytes
from autobatch.errors import MissingDependencyError

if TYPE_CHECKING:  # only names: results.plot() imports this module, so no runtime import back
    from autobatch.results import ProbeResult, TuneResult, TuneTrial

#: How many of the best candidates get a learning curve.
NUM_CURVES = 5
_SIZE = (7.5, 4.8)
_DPI = 120


def plot_probe(result: ProbeResult, directory: str | Path) -> list[Path]:
    """Write ``probe_memory.png`` and ``probe_throughput.png``; return their paths."""
    figure_class = _figure_class()
    directory = _prepared(directory)
    return [
        _save(_probe_memory(figure_class, result), directory / "probe_memory.png"),
        _save(_probe_throughput(figure_class, result), directory / "probe_throughput.png"),
    ]


def plot_tune(result: TuneResult, directory: str | Path) -> list[Path]:
    """Write ``tune_val_loss.png``, ``tune_learning_curves.png``, ``tune_goodput.png`` when
    the gradient noise scale was measured, and, when the result holds its probe, the two
    probe plots; return their paths."""
    figure_class = _figure_class()
    directory = _prepared(directory)
    paths = [
        _save(_tune_val_loss(figure_class, result), directory / "tune_val_loss.png"),
        _save(_tune_curves(figure_class, result), directory / "tune_learning_curves.png"),
    ]
    if any(row["statistical_efficiency"] is not None for row in result.goodput()):
        paths.append(_save(_tune_goodput(figure_class, result), directory / "tune_goodput.png"))
    if result.probe is not None:
        paths += plot_probe(result.probe, directory)
    return paths


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MissingDependencyError(
            "Plots need matplotlib, which is not installed. Install it with: "
            'pip install "keras-autobatch[plots]" (or pip install matplotlib).'
        ) from error
    return Figure


def _prepared(directory: str | Path) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=_DPI, format="png")
    return path


def _byte_scale(largest: float) -> tuple[float, str]:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if largest >= size:
            return float(size), unit
    return 1.0, "B"


def _log2_axis(axis: Any, axes: Any, which: str) -> None:
    """A base-2 log scale labelled with plain numbers (64, not 2^6)."""
    from matplotlib.ticker import FuncFormatter

    (axes.set_xscale if which == "x" else axes.set_yscale)("log", base=2)
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _memory_floor(result: ProbeResult) -> float:
    """Where the memory axis starts: 0, unless what was in use before probing dwarfs the
    headroom (host RAM, where the framework itself holds ~1 GiB), then just below it."""
    if result.baseline_bytes < 0.25 * result.limit_bytes:
        return 0.0
    return max(0.0, result.baseline_bytes - 0.1 * (result.limit_bytes - result.baseline_bytes))


# --- probe ----------------------------------------------------------------------------


def _probe_memory(figure_class: Any, result: ProbeResult) -> Any:
    figure = figure_class(figsize=(_SIZE[0] + 3.0, _SIZE[1]), layout="constrained")
    axes = figure.add_subplot()
    scale, unit = _byte_scale(result.limit_bytes)
    sizes = [t.batch_size for t in result.trials]
    right = max(sizes + [result.max_batch_size, 1]) * 1.15

    fitting = [t for t in result.trials if t.fits]
    over = [t for t in result.trials if not t.fits and t.peak_bytes is not None]
    oom = [t for t in result.trials if t.peak_bytes is None]
    if result.bytes_per_sample is not None and result.fixed_bytes is not None:
        # The probe fits its line to the largest trials, to find the edge: drawn there only,
        # since further down the real curve may bend away from it.
        measured = sorted({t.batch_size for t in result.trials if t.peak_bytes is not None})
        start = measured[-2] if len(measured) >= 2 else 0.0
        xs = [start, right]
        ys = [(result.fixed_bytes + result.bytes_per_sample * x) / scale for x in xs]
        axes.plot(
            xs, ys, color="tab:blue", linewidth=1.2, alpha=0.8,
            label=f"fitted line: {format_bytes(result.bytes_per_sample)} per sample",
        )
    axes.scatter(
        [t.batch_size for t in fitting], [t.peak_bytes / scale for t in fitting],  # type: ignore[operator]
        color="tab:green", zorder=3, label="trial: fits",
    )
    if over:
        axes.scatter(
            [t.batch_size for t in over], [t.peak_bytes / scale for t in over],  # type: ignore[operator]
            color="tab:orange", zorder=3, label="trial: above the margin",
        )
    if oom:
        axes.scatter(
            [t.batch_size for t in oom], [result.limit_bytes / scale] * len(oom),
            color="tab:red", marker="x", s=60, zorder=3, label="trial: out of memory",
        )
    axes.axhline(
        result.limit_bytes / scale, color="tab:red", linestyle="--",
        label=f"limit {format_bytes(result.limit_bytes)} ({result.limit_source})",
    )
    axes.axhline(
        result.usable_bytes / scale, color="tab:orange", linestyle=":",
        label=f"usable {format_bytes(result.usable_bytes)} (limit minus {format_bytes(result.margin_bytes)} margin)",
    )
    if result.baseline_bytes:
        axes.axhline(
            result.baseline_bytes / scale, color="grey", linestyle=":", linewidth=1,
            label=f"in use before probing {format_bytes(result.baseline_bytes)}",
        )
    axes.axvline(
        result.max_batch_size, color="black", linewidth=1,
        label=f"chosen batch size {result.max_batch_size}",
    )
    axes.set_xlim(0, right)
    highest = max([result.limit_bytes] + [t.peak_bytes for t in result.trials if t.peak_bytes])
    axes.set_ylim(_memory_floor(result) / scale, highest / scale * 1.04)
    axes.set_xlabel("batch size")
    axes.set_ylabel(f"peak memory ({unit})")
    axes.set_title(
        f"Peak memory of a training step on {result.device}\nmeasured as {result.memory_source}",
        fontsize=10,
    )
    axes.grid(alpha=0.3)
    # Outside the axes: inside, it would hide trials or the limit lines.
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    return figure


def _probe_throughput(figure_class: Any, result: ProbeResult) -> Any:
    figure = figure_class(figsize=_SIZE, layout="constrained")
    axes = figure.add_subplot()
    timed = sorted(
        (t for t in result.trials if t.samples_per_second), key=lambda t: t.batch_size
    )
    if timed:
        axes.plot(
            [t.batch_size for t in timed], [t.samples_per_second for t in timed],
            marker="o", color="tab:blue", label="trial",
        )
        axes.axvline(
            result.max_batch_size, color="black", linewidth=1,
            label=f"chosen batch size {result.max_batch_size}",
        )
        _log2_axis(axes.xaxis, axes, "x")
        axes.set_ylim(bottom=0)
        axes.legend(loc="lower right", fontsize=8)
    else:
        axes.text(
            0.5, 0.5, "no timings: every trial ran fewer than 2 steps or ran out of memory",
            ha="center", va="center", transform=axes.transAxes,
        )
    axes.set_xlabel("batch size")
    axes.set_ylabel("training samples per second")
    axes.set_title(f"Throughput per batch size on {result.device}", fontsize=10)
    axes.grid(alpha=0.3)
    return figure


# --- tune ---


def _has_loss(trial: TuneTrial) -> bool:
    return trial.val_loss is not None and math.isfinite(trial.val_loss)


def _epoch_axis(trials: list[TuneTrial]) -> tuple[str, Any]:
    """The second axis of the grid: the fraction of a pass when every candidate has one
    (a regular grid), else the step count."""
    if trials and all("epoch_fraction" in t.hyperparameters for t in trials):
        return "steps per epoch (fraction of a pass)", lambda t: t.hyperparameters["epoch_fraction"]
    return "steps per epoch", lambda t: t.steps_per_epoch


def _best_per_cell(trials: list[TuneTrial], row_of: Any) -> dict[tuple, TuneTrial]:
    """The best trial of each (batch size, row) cell: Hyperband trains a candidate several
    times with growing budgets, and a HyperModel's own hyperparameters share a cell."""
    cells: dict[tuple, TuneTrial] = {}
    for trial in trials:
        cell = (trial.batch_size, row_of(trial))
        kept = cells.get(cell)
        if kept is None or _better(trial, kept):
            cells[cell] = trial
    return cells


def _better(trial: TuneTrial, other: TuneTrial) -> bool:
    if _has_loss(trial) != _has_loss(other):
        return _has_loss(trial)
    if _has_loss(trial):
        return trial.val_loss < other.val_loss  # type: ignore[operator]
    return trial.samples_seen > other.samples_seen


def _loss_norm(losses: list[float]) -> Any:
    """A log colour scale when the losses span more than a factor 10 (good candidates would
    otherwise share one colour), else a linear one."""
    if min(losses) > 0 and max(losses) / min(losses) > 10:
        from matplotlib.colors import LogNorm

        return LogNorm(vmin=min(losses), vmax=max(losses))
    return None


def _cell_area(num_columns: int, num_rows: int) -> float:
    """Marker area (points squared) of a square that nearly fills one cell of the grid."""
    width, height = _SIZE[0] * 72 * 0.72, _SIZE[1] * 72 * 0.72  # the axes' share of the figure
    side = 0.85 * min(width / max(1, num_columns), height / max(1, num_rows))
    return side**2


def _fraction_label(value: Any) -> str:
    if isinstance(value, float) and 0 < value < 1 and abs(1 / value - round(1 / value)) < 1e-9:
        return f"1/{round(1 / value)}"
    return f"{value:g}"


def _tune_val_loss(figure_class: Any, result: TuneResult) -> Any:
    """A heatmap: batch sizes across, steps_per_epoch up, each cell its best validation loss."""
    figure = figure_class(figsize=_SIZE, layout="constrained")
    axes = figure.add_subplot()
    row_label, row_of = _epoch_axis(result.trials)
    cells = _best_per_cell(result.trials, row_of)
    columns = sorted({batch for batch, _ in cells})
    rows = sorted({row for _, row in cells})
    scored = {cell: t for cell, t in cells.items() if _has_loss(t)}
    best_label = "no candidate finished"
    if scored:
        losses = [t.val_loss for t in scored.values() if t.val_loss is not None]  # all of them
        points = axes.scatter(
            [columns.index(b) for b, _ in scored], [rows.index(r) for _, r in scored],
            c=losses, cmap="viridis_r", marker="s", s=_cell_area(len(columns), len(rows)),
            norm=_loss_norm(losses), zorder=2,
        )
        figure.colorbar(points, ax=axes, label="best validation loss (lower is better)")
        winner = result.ranked_trials()[0]  # the result's own winner, ties settled alike
        best_cell = (winner.batch_size, row_of(winner))
        best_label = f"best: batch {winner.batch_size} x {winner.steps_text()} steps (red box)"
        for (batch, row), trial in scored.items():
            best = (batch, row) == best_cell
            axes.annotate(
                f"{trial.val_loss:.3g}\n{trial.steps_text()} steps",
                (columns.index(batch), rows.index(row)), ha="center", va="center",
                fontsize=7, color="black", zorder=3, fontweight="bold" if best else "normal",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.75,
                      "edgecolor": "tab:red" if best else "none",
                      "linewidth": 2 if best else 0},
            )
    failed = [cell for cell, t in cells.items() if not _has_loss(t)]
    if failed:
        axes.scatter(
            [columns.index(b) for b, _ in failed], [rows.index(r) for _, r in failed],
            marker="x", color="tab:red", s=90, zorder=3, label="failed (out of memory or NaN)",
        )
        axes.legend(loc="upper right", fontsize=8)
    axes.set_xticks(range(len(columns)), [str(b) for b in columns])
    axes.set_yticks(range(len(rows)), [_fraction_label(r) for r in rows])
    axes.set_xlim(-0.6, len(columns) - 0.4)
    axes.set_ylim(-0.6, len(rows) - 0.4)
    axes.set_xlabel("batch size")
    axes.set_ylabel(row_label)
    budget = "" if result.budget_samples is None else f", up to {result.budget_samples:,} samples each"
    axes.set_title(
        f"Validation loss per candidate ({result.tuner}{budget})\n{best_label}", fontsize=10
    )
    return figure


def _tune_curves(figure_class: Any, result: TuneResult) -> Any:
    """Validation loss against training samples seen, for the best candidates."""
    figure = figure_class(figsize=(_SIZE[0] + 3.0, _SIZE[1]), layout="constrained")
    axes = figure.add_subplot()
    ranked = [t for t in result.ranked_trials() if _has_loss(t)]  # the winner first
    best = [t for t in ranked if t.val_loss_history][:NUM_CURVES]
    for rank, trial in enumerate(best):
        per_epoch = trial.batch_size * trial.steps_per_epoch
        samples = [per_epoch * (epoch + 1) for epoch in range(len(trial.val_loss_history))]
        axes.plot(
            samples, trial.val_loss_history, marker="o", markersize=3,
            linewidth=2.4 if rank == 0 else 1.2, zorder=3 if rank == 0 else 2,
            label=f"batch {trial.batch_size}, {trial.steps_per_epoch} steps/epoch "
            f"(best {trial.val_loss:.4g})",
        )
    if best:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    else:
        axes.text(
            0.5, 0.5, "no learning curves recorded", ha="center", va="center",
            transform=axes.transAxes,
        )
    axes.set_xlabel("training samples seen")
    axes.set_ylabel("validation loss")
    axes.set_title(f"Learning curves of the {len(best)} best candidates", fontsize=10)
    axes.grid(alpha=0.3)
    return figure


def _tune_goodput(figure_class: Any, result: TuneResult) -> Any:
    """Statistical efficiency (left), and throughput and goodput (right), per batch size."""
    rows = result.goodput()
    figure = figure_class(figsize=(_SIZE[0] + 3.0, _SIZE[1]), layout="constrained")
    left, right = figure.subplots(1, 2)
    sizes = [r["batch_size"] for r in rows]
    left.plot(sizes, [r["statistical_efficiency"] for r in rows], marker="o", color="C2")
    left.set_ylim(0, 1.05)
    left.set_ylabel(f"statistical efficiency (1 at batch {sizes[0]})")
    spread = (
        "" if result.noise_scale_standard_error is None
        else f" +- {result.noise_scale_standard_error:.3g}"
    )
    noise = "no signal" if result.noise_scale is None else f"{result.noise_scale:.3g}{spread}"
    left.set_title(f"Efficiency at B_noise = {noise}", fontsize=10)
    measured = [r for r in rows if r["goodput"] is not None]
    if measured:
        right.plot([r["batch_size"] for r in measured],
                   [r["samples_per_second"] for r in measured], marker="o", label="throughput")
        right.plot([r["batch_size"] for r in measured], [r["goodput"] for r in measured],
                   marker="s", label="goodput = throughput x efficiency")
        best = max(measured, key=lambda r: r["goodput"])
        right.axvline(best["batch_size"], color="0.6", linestyle=":", zorder=1)
        right.set_yscale("log")
        right.legend(fontsize=8)
    right.set_ylabel("training samples per second")
    right.set_title("Throughput measured by the candidates, and goodput", fontsize=10)
    for axes in (left, right):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("batch size")
        axes.grid(alpha=0.3)
    if result.batch_size in sizes:
        left.axvline(result.batch_size, color="C3", linestyle="--", label="tune's choice")
        left.legend(fontsize=8)
    return figure

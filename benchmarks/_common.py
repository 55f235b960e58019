"""What every benchmark script shares: run metadata, JSON results, Markdown tables, plots.

Every result file carries the date, the device, the library versions and the command that
made it, so a table in the README can always be traced back to a run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata as _metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"

_VERSIONED = (
    "keras-autobatch",
    "keras",
    "tensorflow",
    "jax",
    "jaxlib",
    "torch",
    "keras-tuner",
    "numpy",
    "scikit-learn",
)


def library_versions() -> dict[str, str]:
    """Versions of Python and of every library that decides memory or speed."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return versions


def cpu_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"


def ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def git_commit() -> str:
    """The commit the benchmarks ran at, with "+dirty" when the tree had changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_metadata(mode: str) -> dict[str, Any]:
    """Date, device, versions, command and machine load of this run."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "command": command_line(),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "device": {
            "cpu": cpu_description(),
            "ram_bytes": ram_bytes(),
            "platform": platform.platform(),
        },
        "load_average_at_start": None if load is None else [round(v, 2) for v in load],
        "versions": library_versions(),
        "git_commit": git_commit(),
    }


def command_line() -> str:
    """The command that reproduces this run, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        module = ".".join(script.relative_to(REPO_ROOT).with_suffix("").parts)
    except ValueError:
        module = str(script)
    prefix = f"KERAS_BACKEND={os.environ['KERAS_BACKEND']} " if "KERAS_BACKEND" in os.environ else ""
    return f"{prefix}python -m {module} {' '.join(sys.argv[1:])}".strip()


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a few minutes on 2 CPU cores: the CI smoke test"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help=f"where JSON and PNGs go ({RESULTS_DIR})"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def result_stem(name: str, quick: bool) -> str:
    return f"{name}-quick" if quick else name


def write_json(directory: Path, stem: str, payload: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---:" if n else "---" for n in numeric) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or an ImportError with the install hint."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "The benchmark plots need matplotlib: pip install 'keras-autobatch[bench]', "
            "or pass --no-plots."
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    return path


def mib(num_bytes: float | None) -> float | None:
    return None if num_bytes is None else num_bytes / 2**20


def prepare_environment() -> None:
    """For this process and the ones it starts: quiet TensorFlow, and a private probe cache.

    autobatch keeps probe results on disk and reuses them; a benchmark must measure every
    probe afresh, so each run points the cache at a new temporary directory.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["AUTOBATCH_CACHE_DIR"] = temporary_directory("autobatch-bench-cache-")


def temporary_directory(prefix: str) -> str:
    """A new temporary directory, removed when this process exits."""
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path

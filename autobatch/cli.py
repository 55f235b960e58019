"""The ``autobatch`` command line: probe, tune, report, devices, demo.

Exit codes: 0 success, 2 bad usage (unknown option, a value out of range, an input path
that does not exist), 1 failure (a file that cannot be read, a model that does not train,
...). Errors are one line on stderr; ``--debug`` adds the traceback. Tables go to stdout,
progress to stderr.

Example:
    $ autobatch probe model.keras --data train.npz --memory-limit 6GiB --json probe.json
    $ autobatch tune model.keras --data train.npz --json tune.json --plots plots/
    $ autobatch report tune.json --plots plots/
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import math
import os
import re
import socket
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

from autobatch import report
from autobatch._quiet import native_stderr_silenced
from autobatch._units import parse_bytes
from autobatch.demo import HOST_HEADROOM
from autobatch.devices import resolve_memory_limit
from autobatch.errors import (
    AutobatchError,
    InvalidArgumentError,
    InvalidDataError,
    InvalidModelError,
    InvalidResultError,
    MissingDependencyError,
    describe_backend_error,
)
from autobatch.files import NPZ_HELP, load_model, load_npz
from autobatch.memory.host import HostMemory
from autobatch.probing.isolated import DEFAULT_MARGIN as ISOLATED_MARGIN
from autobatch.search import distributed
from autobatch.search.space import DEFAULT_EPOCH_FRACTIONS
from autobatch.search.tune import DEFAULT_BUDGET_PASSES, DEFAULT_MIN_BUDGET_SAMPLES

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

EXIT_HELP = "Exit codes: 0 success, 1 failure, 2 bad usage, 130 interrupted."


#: The search algorithms `autobatch.tune` knows (autobatch.search.tuner.TUNERS; a test keeps
#: them equal). Spelled out here because importing the search pulls in keras_tuner.
TUNERS = ("halving", "hyperband", "bayesian", "random", "grid")


class UsageError(AutobatchError):
    """A command line that cannot mean anything (exit code 2)."""


class CannotWriteError(AutobatchError):
    """An output file or directory that cannot be written (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line naming the option, not usage + message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # for `tune --workers`
    except SystemExit as exit_:  # --help or --version: argparse printed them
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    except UsageError as error:
        report.error_line(str(error))
        return EXIT_USAGE
    if args.command is None:
        report.error_line("no command given; choose one of: probe, tune, report, devices, demo "
                          "(see autobatch --help)")
        return EXIT_USAGE
    try:
        return args.run(args) or EXIT_OK
    except KeyboardInterrupt:
        report.error_line("interrupted")
        return 130
    except (UsageError, InvalidArgumentError) as error:
        _report_error(error, args.debug)
        return EXIT_USAGE
    except (AutobatchError, OSError) as error:
        _report_error(error, args.debug)
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - the CLI's last resort: one line, not a traceback
        _report_error(error, args.debug, unexpected=True)
        return EXIT_FAILURE


def _report_error(error: BaseException, debug: bool, *, unexpected: bool = False) -> None:
    if debug:
        report.error_traceback()
    message = str(error) or type(error).__name__
    if unexpected:  # not one of ours: its type is part of the message
        message = f"{type(error).__name__}: {message}"
        if not debug:
            message += " (run with --debug for the traceback)"
    report.error_line(message)


# --- the parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from autobatch import __version__

    parser = _Parser(
        prog="autobatch",
        description="The largest batch that fits in memory, and the batch settings that train "
        "best, for a Keras model.",
        epilog=NPZ_HELP + "\n" + EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"autobatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    common.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow's logs")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=textwrap.fill(description, 88), parents=[common],
            epilog=NPZ_HELP + "\n" + EXIT_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    probe = command(
        "probe", "find the largest batch size that trains within the memory limit",
        "Run a few real training steps at growing batch sizes and report the largest batch "
        "that fits, with the measured memory curve.",
    )
    _model_and_data(probe)
    _memory_limit(probe)
    probe.add_argument("--margin", type=_margin, default=None, metavar="FRACTION",
                       help="fraction of the free memory to leave unused (default "
                       f"{ISOLATED_MARGIN:.2f} with worker processes and on a GPU, "
                       f"{HostMemory.default_margin:.2f} on host RAM with --in-process)")
    probe.add_argument("--max-batch-size", type=_positive_int, default=None, metavar="N",
                       help="never try a batch above this (default: the number of samples)")
    probe.add_argument("--no-cache", action="store_true",
                       help="probe again even if a cached result for this model and machine "
                       "exists (--in-process probes are cached)")
    probe.add_argument("--import", dest="worker_imports", action="append", default=[],
                       metavar="MODULE",
                       help="import MODULE before loading the model (repeatable): the module "
                       "that registers the model's custom layers")
    probe.add_argument("--in-process", action="store_true",
                       help="run the trials in this process rather than one new worker process "
                       "each: faster (no framework start per trial), but on host RAM a trial "
                       "that runs out kills this command, and peaks carry what earlier trials "
                       "left in the process")
    _outputs(probe)
    probe.set_defaults(run=_run_probe)

    tune = command(
        "tune", "search batch_size and steps_per_epoch for the best validation loss",
        "Probe the memory limit, then run a Keras Tuner search over batch_size and "
        "steps_per_epoch below it, each candidate trained on the same sample budget and "
        "scored by validation loss.",
    )
    _model_and_data(tune)
    tune.add_argument("--validation-data", metavar="VAL.npz", type=Path, default=None,
                      help="validation arrays (same names as --data); default: split --data")
    tune.add_argument("--validation-split", type=_fraction, default=None, metavar="FRACTION",
                      help="fraction of --data held out for validation when --validation-data "
                      f"is not given (default {_tune_default('validation_split')})")
    tune.add_argument("--tuner", default=None, metavar="NAME", choices=TUNERS,
                      help="search algorithm: halving (the default), hyperband, bayesian, random or grid")
    _memory_limit(tune)
    tune.add_argument("--probe", metavar="PROBE.json", type=Path, default=None,
                      help="a saved probe result (autobatch probe --json) instead of probing again")
    tune.add_argument("--batch-sizes", type=_int_list, default=None, metavar="B1,B2,...",
                      help="candidate batch sizes (default: powers of two from 16 up to the "
                      "probed limit, plus the limit)")
    tune.add_argument("--steps-per-epoch", type=_steps_list, default=None, metavar="S1,S2,...",
                      help="candidate steps_per_epoch: values up to 1 are fractions of a pass "
                      "over the data, larger whole numbers are step counts (default: "
                      f"{','.join(f'{f:g}' for f in DEFAULT_EPOCH_FRACTIONS)})")
    tune.add_argument("--budget-samples", type=_positive_int, default=None, metavar="N",
                      help=f"training samples per candidate (default: {DEFAULT_BUDGET_PASSES} passes "
                      f"over the training data, and at least {DEFAULT_MIN_BUDGET_SAMPLES:,} samples so "
                      "that small data can converge: pass a smaller N for a quicker search)")
    tune.add_argument("--max-trials", type=_positive_int, default=None, metavar="N",
                      help="at most this many candidates (default: depends on the tuner)")
    tune.add_argument("--seed", type=_seed, default=0, metavar="N",
                      help="seeds the search's choices and Keras' random numbers (shuffling, "
                      "dropout), so that the same command gives the same result (default: 0)")
    tune.add_argument("--time-budget", type=_duration, default=None, metavar="TIME",
                      help="seconds or e.g. 10min, 2h for the whole search; when it runs out "
                      "the best candidate so far is returned (default: no limit)")
    tune.add_argument("--directory", type=Path, default=None, metavar="DIR",
                      help="where the search keeps its trials (default: a per-user cache "
                      "directory); running again with the same directory resumes")
    tune.add_argument("--overwrite", action="store_true",
                      help="start the search afresh instead of resuming it")
    _outputs(tune)
    _distribution(tune)
    tune.set_defaults(run=_run_tune)

    show = command(
        "report", "print the tables of a saved result and draw its plots",
        "Re-render a result saved with --json (probe or tune): tables, summary and plots.",
    )
    show.add_argument("result", metavar="RESULT.json", type=Path, help="a saved probe or tune result")
    show.add_argument("--plots", metavar="DIR", type=Path, default=None,
                      help="write PNG plots into DIR (needs matplotlib)")
    show.set_defaults(run=_run_report)

    devices = command(
        "devices", "show the memory sources and limits autobatch sees here",
        "List the memory backends a probe could measure (GPUs through the framework and "
        "NVML, host RAM, the container's cgroup limit) and the limits each reports.",
    )
    devices.add_argument("--json", metavar="OUT.json", default=None,
                         help="also write the findings as JSON ('-' for stdout)")
    devices.set_defaults(run=_run_devices)

    demo = command(
        "demo", "probe and tune a small built-in example (a CNN on synthetic images)",
        "Build a small CNN and synthetic 32x32 images, probe it and tune it (about a minute on "
        "2 CPU cores), print the tables, and write the model, the data, JSON results and PNG "
        "plots into the output directory, ready for the other commands.",
    )
    demo.add_argument("--output-dir", type=Path, default=Path("autobatch_demo_output"), metavar="DIR",
                      help="where to write everything (default: ./autobatch_demo_output)")
    demo.add_argument("--memory-limit", type=_memory_size, default=None, metavar="SIZE",
                      help="memory limit for the probe, e.g. 2GiB or +512MiB (default on CPU: "
                      f"+{HOST_HEADROOM}, so that the limit, not the data size, decides; on a GPU: "
                      "the GPU's memory)")
    demo.add_argument("--no-cache", action="store_true", help="do not reuse a cached probe")
    demo.set_defaults(run=_run_demo)
    return parser


def _tune_default(name: str) -> Any:
    """The default of one of `autobatch.tune`'s arguments, so that --help states it truly."""
    import inspect

    from autobatch.search.tune import tune

    return inspect.signature(tune).parameters[name].default


def _distribution(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "several processes or machines (Keras Tuner's chief and workers; KERASTUNER_TUNER_ID, "
        "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT, when set, give the role instead)")
    roles = group.add_mutually_exclusive_group()
    roles.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                       help="train N candidates at a time in N worker processes on this "
                       "machine, under a chief on 127.0.0.1 (probing once first unless "
                       "--probe is given)")
    roles.add_argument("--chief", type=_chief_address, default=None, metavar="[ADDRESS:]PORT",
                       help="serve the search to workers on other machines, listening on "
                       "ADDRESS (default 127.0.0.1; e.g. 0.0.0.0 for every interface: the "
                       "service has no authentication, use a private network)")
    roles.add_argument("--worker", type=_worker_address, default=None, metavar="ADDRESS:PORT",
                       help="train candidates for the chief at ADDRESS:PORT; every process "
                       "needs the same MODEL, --data, --probe and options, and a --directory "
                       "on a file system they share")
    group.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="TensorFlow and OpenMP threads of this process (with --workers: "
                       "of each worker; default: the CPU count divided by N)")


def _seed(text: str) -> int:
    """A seed Keras (NumPy) accepts: 0 to 2**32 - 1."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed: expected an integer from 0 to {2**32 - 1}")
    return seed


def _chief_address(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(":")
    return address or "127.0.0.1", _port(port, text)


def _worker_address(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(":")
    if not address:
        raise argparse.ArgumentTypeError(f"{text!r} has no address: give the chief's ADDRESS:PORT")
    return address, _port(port, text)


def _port(port: str, text: str) -> int:
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"{text!r}: the port is not a number from 1 to 65535")
    return int(port)


def _model_and_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.keras", type=Path,
                        help="a compiled Keras model saved with model.save('model.keras')")
    parser.add_argument("--data", metavar="DATA.npz", type=Path, required=True,
                        help="training arrays: x (or x_<name>), y, optional sample_weight")


def _memory_limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory-limit", type=_memory_size, default=None, metavar="SIZE",
                        help="memory a training step may reach, e.g. 6GiB, or +512MiB for 512 "
                        "MiB above what the process holds once the model and data are loaded "
                        "(on CPU the limit counts the whole process). Default: detected: the "
                        "GPU's memory, or host RAM and the cgroup limit")


def _outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="OUT.json", default=None,
                        help="write the result as JSON ('-' for stdout: tables then go to stderr)")
    parser.add_argument("--plots", metavar="DIR", type=Path, default=None,
                        help="write PNG plots into DIR (needs matplotlib)")


def _memory_size(text: str) -> str:
    try:
        parse_bytes(text.strip().removeprefix("+"))
    except InvalidArgumentError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size; expected bytes or a size such as '6GiB', '512MiB' "
            "or '2GB', or '+512MiB' for 512 MiB above what the process holds"
        ) from None
    return text


def _margin(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1); e.g. 0.05 keeps 5% free")
    return value


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1), e.g. 0.2")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        number = _float(text)  # "1e5" is a whole number too
        if not math.isfinite(number) or number != int(number):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        value = int(number)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is below 1")
    return value


def _duration(text: str) -> float:
    from autobatch.search.tune import parse_duration

    try:
        return parse_duration(text, "time") or 0.0
    except InvalidArgumentError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds or e.g. 90s, 10min, 2h"
        ) from None


def _int_list(text: str) -> list[int]:
    values = [_positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one value, e.g. 32,64,128")
    return values


def _steps_list(text: str) -> list[int | float]:
    values: list[int | float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        value = _float(part)
        if 0.0 < value <= 1.0:
            values.append(value)  # a fraction of a pass; "1" is one full pass
        elif value > 1.0 and value == int(value):
            values.append(int(value))
        else:
            raise argparse.ArgumentTypeError(
                f"{part!r} in {text!r}: expected fractions of a pass in (0, 1] or whole step "
                "counts above 1, e.g. 0.25,0.5,1 or 50,100"
            )
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one value")
    return values


# --- files named on the command line ---------------------------------------------------------
# Checked before any work starts: a typo in --json must not cost a three-minute search.


def check_output_file(value: str | Path | None, option: str) -> None:
    """Fail now, naming ``option``, if ``value`` cannot be written later ('-' is stdout)."""
    if value is None or str(value) == "-":
        return
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"{option} {value} is a directory; expected a file name, e.g. {path / 'result.json'}.")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {value}: the directory {parent} does not exist; create it first.")
    if reason := _cannot_write_in(parent):
        raise UsageError(f"{option} {value}: cannot write in {parent} ({reason}).")
    if path.exists():
        try:  # opened to append, nothing written: an existing file that may not be replaced
            with path.open("ab"):
                pass
        except OSError as error:
            raise UsageError(f"{option} {value}: cannot write it ({error.strerror or error}).") from error


def check_output_dir(value: Path | None, option: str) -> None:
    """Fail now, naming ``option``, if the directory ``value`` cannot be created or written."""
    if value is None:
        return
    if value.exists() and not value.is_dir():
        raise UsageError(f"{option} {value} is a file; expected a directory (created if missing).")
    existing = value
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {value}: cannot create it, {existing} is a file.")
    if reason := _cannot_write_in(existing):
        raise UsageError(f"{option} {value}: cannot create or write it in {existing} ({reason}).")


def _cannot_write_in(directory: Path) -> str | None:
    """Why no file can be written in ``directory`` (None when one can): by trying, since
    permission bits do not tell (root may write anywhere they say, yet not in /proc)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return None
    except OSError as error:
        return error.strerror or str(error)


def check_plots(value: Path | None, option: str = "--plots") -> None:
    """``check_output_dir``, and matplotlib installed (the plots need it)."""
    check_output_dir(value, option)
    if value is not None and importlib.util.find_spec("matplotlib") is None:
        raise MissingDependencyError(
            f"{option} needs matplotlib, which is not installed. Install it with: "
            'pip install "keras-autobatch[plots]" (or pip install matplotlib), or leave out '
            f"{option}."
        )


@contextlib.contextmanager
def _writing(option: str, path: Any) -> Iterator[None]:
    """An OSError while writing ``path`` becomes one line naming ``option``."""
    try:
        yield
    except OSError as error:
        raise CannotWriteError(f"{option} {path}: cannot write it ({error.strerror or error}).") from error


def load_result_file(path: Path, option: str) -> Any:
    """A probe or tune result saved with --json, with errors that name ``option``."""
    from autobatch.results import load_result

    check_input_file(path, option, "a JSON file written by --json")
    try:
        return load_result(path)
    except InvalidResultError as error:
        raise InvalidDataError(f"{option} {path}: {error}") from error
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # what no check foresaw
        raise InvalidDataError(
            f"{option} {path} is not a result saved by autobatch ({describe_backend_error(error)})."
            " Expected the file written by autobatch's --json option (or result.to_json(path))."
        ) from error


# --- loading the model and the data ----------------------------------------------------------


# --- the commands -------------------------------------------------------------------------


def _run_probe(args: argparse.Namespace) -> int:
    import autobatch

    _check_inputs(args)
    _check_outputs(args)
    options: dict[str, Any] = {
        "memory_limit": args.memory_limit,
        "verbose": 0 if args.quiet else 1,
    }
    if args.margin is not None:
        options["margin"] = args.margin
    if args.max_batch_size is not None:
        options["max_batch_size"] = args.max_batch_size
    if args.in_process:
        _start_framework(args.debug)
        for module in args.worker_imports:
            importlib.import_module(module)
        model, data = load_model(args.model), load_npz(args.data)
        if args.no_cache:
            options["use_cache"] = False
    else:
        # Given the files, the probe runs each trial in a worker process of its own and this
        # process never imports the framework: it keeps nothing of the memory being measured.
        model, data = args.model, args.data
        options["worker_imports"] = args.worker_imports
    with _in_option_terms(args):
        result = autobatch.probe(model, data, **options)
    _write_outputs(result, args)
    return EXIT_OK


def _run_tune(args: argparse.Namespace) -> int:
    import autobatch

    if args.validation_data is not None and args.validation_split is not None:
        raise UsageError("--validation-data and --validation-split exclude each other; pass one.")
    _check_inputs(args)
    _check_outputs(args)
    check_output_dir(args.directory, "--directory")
    probe = None
    if args.probe is not None:  # before TensorFlow starts: a wrong file fails in a blink
        probe = load_result_file(args.probe, "--probe")
        if not isinstance(probe, autobatch.ProbeResult):
            raise InvalidDataError(
                f"--probe {args.probe} holds a tune result, not a probe result; pass the file "
                "written by autobatch probe --json."
            )
    role = _take_role(args)
    if args.workers is not None and role == "local":
        return _launch_workers(args)
    if args.threads is not None:
        distributed.limit_threads(args.threads)
    _start_framework(args.debug)
    if args.threads is not None:
        distributed.limit_threads(args.threads)  # TensorFlow's own setting, now it is loaded
    import keras

    # This process is ours (in Python, the caller's global seed is left alone): seeding it
    # makes a command's search repeatable.
    keras.utils.set_random_seed(args.seed)
    model = load_model(args.model)
    data = load_npz(args.data)
    options: dict[str, Any] = {"verbose": 0 if args.quiet else 1, "seed": args.seed}
    if args.validation_data is not None:
        options["validation_data"] = load_npz(args.validation_data, option="--validation-data")
    if probe is not None:
        options["probe"] = probe
    if args.memory_limit is not None:
        from autobatch.memory import detect_memory

        options["memory"] = detect_memory(parse_bytes(resolve_memory_limit(args.memory_limit)))
    given = {
        "validation_split": args.validation_split,
        "tuner": args.tuner,
        "batch_sizes": args.batch_sizes,
        "steps_per_epoch": args.steps_per_epoch,
        "budget_samples": args.budget_samples,
        "max_trials": args.max_trials,
        "time_budget": args.time_budget,
        "directory": None if args.directory is None else str(args.directory),
    }
    # Only what the user gave: tune()'s own defaults are the documented best practice.
    options.update({name: value for name, value in given.items() if value is not None})
    if args.overwrite:
        options["overwrite"] = True
    with _in_option_terms(args):
        result = autobatch.tune(model, data, **options)
    if role == "worker":  # the chief has the whole search, and writes it
        if not args.quiet:
            report.show_message(
                f"worker finished: the chief at {os.environ[distributed.ORACLE_IP]}:"
                f"{os.environ[distributed.ORACLE_PORT]} has the result",
                console=report.console_for(stderr=True))
        return EXIT_OK
    _write_outputs(result, args)
    return EXIT_OK


def _take_role(args: argparse.Namespace) -> str:
    """Set Keras Tuner's variables for --chief / --worker; this process's role."""
    if args.chief is not None:
        os.environ.update(distributed.role_environment("chief", args.chief[1],
                                                       address=args.chief[0]))
    elif args.worker is not None:
        own = os.environ.get(distributed.TUNER_ID, "")
        tuner_id = own if own and "chief" not in own else f"worker-{socket.gethostname()}-{os.getpid()}"
        os.environ.update(distributed.role_environment(tuner_id, args.worker[1],
                                                       address=args.worker[0]))
    role = distributed.role()
    if args.worker is not None and (args.json is not None or args.plots is not None):
        raise UsageError("--json and --plots are the chief's: a worker sees only part of the "
                         "search. Pass them to the chief's command.")
    return role


def _launch_workers(args: argparse.Namespace) -> int:
    """`tune --workers N`: probe once (unless --probe), then a chief and N workers on
    127.0.0.1, each running this same command line in its role."""
    import subprocess
    import tempfile

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    command = [sys.executable, "-m", "autobatch", *args.argv]
    # The children import the autobatch this process runs, wherever it was imported from.
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory(prefix="autobatch-workers-") as scratch:
        if args.probe is None:
            probe_file = os.path.join(scratch, "probe.json")
            # Quiet: its tables would name a file deleted with this folder, and the chief's
            # result shows the probe again.
            probe_command = [sys.executable, "-m", "autobatch", "probe", str(args.model),
                             "--data", str(args.data), "--json", probe_file, "--quiet"]
            if args.memory_limit is not None:
                probe_command += ["--memory-limit", str(args.memory_limit)]
            if not args.quiet:
                report.show_message("probing the largest batch that fits, once for every "
                                    "worker...", console=report.console_for(stderr=True))
            probed = subprocess.run(probe_command, check=False, env=env)
            if probed.returncode != EXIT_OK:
                return probed.returncode
            command += ["--probe", probe_file]
        outcomes = distributed.launch(
            command, [*command, "--quiet", "--threads", str(threads)],
            num_workers=args.workers, threads=threads, env=env,
        )
    chief = next(o for o in outcomes if o.tuner_id == "chief")
    failed = [o.tuner_id for o in outcomes if o.tuner_id != "chief" and o.returncode != EXIT_OK]
    if chief.returncode == EXIT_OK:
        if failed:
            report.error_line(f"{', '.join(failed)} stopped early; the others finished the search")
        return EXIT_OK
    if len(failed) == args.workers:
        report.error_line("every worker stopped before the search ended (their errors are "
                          "above); the trials so far are kept: run the same command to resume")
    return chief.returncode if chief.returncode > 0 else EXIT_FAILURE


def _run_report(args: argparse.Namespace) -> int:
    check_plots(args.plots)
    result = load_result_file(args.result, "RESULT")
    report.show_result(result)
    if args.plots is not None:
        with _writing("--plots", args.plots):
            report.show_paths("plots", result.plot(args.plots))
    return EXIT_OK


def _run_devices(args: argparse.Namespace) -> int:
    import json

    from autobatch.devices import inspect_devices

    check_output_file(args.json, "--json")
    _start_framework(args.debug)
    info = inspect_devices()
    to_stdout = args.json == "-"
    if not to_stdout:
        report.show_devices(info)
    if args.json is not None:
        text = json.dumps(info, indent=2)
        if to_stdout:
            report.write_text(text)
        else:
            with _writing("--json", args.json):
                Path(args.json).write_text(text + "\n", encoding="utf-8")
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    from autobatch import demo

    check_plots(args.output_dir, "--output-dir")  # the demo always draws its plots
    _start_framework(args.debug)
    with _writing("--output-dir", args.output_dir), _in_option_terms(args):
        demo.run(
            args.output_dir,
            memory_limit=args.memory_limit,
            use_cache=not args.no_cache,
            verbose=0 if args.quiet else 1,
        )
    return EXIT_OK


def _check_outputs(args: argparse.Namespace) -> None:
    check_output_file(args.json, "--json")
    check_plots(args.plots)


def check_input_file(path: Path | None, option: str, expected: str) -> None:
    """Fail now with bad usage (exit 2), naming ``option``, if ``path`` is not a file: a
    path that does not exist is a mistake in the command, not a failure of the work."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; expected {expected}.")
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file. Expected {expected}.")
    if not path.is_file():
        raise UsageError(f"{option} {path} is not a regular file; expected {expected}.")


def _check_inputs(args: argparse.Namespace) -> None:
    check_input_file(args.model, "MODEL", "a .keras file")
    check_input_file(args.data, "--data", "a .npz file")
    check_input_file(getattr(args, "validation_data", None), "--validation-data", "a .npz file")


# The options that become `probe`/`tune` arguments, by the argument's Python name.
_OPTIONS = {
    "memory_limit": "--memory-limit", "margin": "--margin", "max_batch_size": "--max-batch-size",
    "validation_split": "--validation-split", "tuner": "--tuner", "batch_sizes": "--batch-sizes",
    "steps_per_epoch": "--steps-per-epoch", "budget_samples": "--budget-samples",
    "max_trials": "--max-trials", "directory": "--directory",
}


@contextlib.contextmanager
def _in_option_terms(args: argparse.Namespace) -> Iterator[None]:
    """Errors of the Python API, reworded for the command line: the option, not the argument.

    ``max_batch_size=0; expected ...`` becomes ``--max-batch-size 0; expected ...``; a data
    or model error names the file it came from.
    """
    try:
        yield
    except InvalidArgumentError as error:
        message = str(error)
        for name, option in _OPTIONS.items():
            message = re.sub(rf"\bleave {name}=None\b", f"leave out {option}", message)
            message = re.sub(rf"(?<![\w-]){name}=", f"{option} ", message)
        if message == str(error):  # no option named: it came from the command line all the same
            raise
        raise UsageError(message) from error
    except InvalidModelError as error:
        if getattr(args, "model", None) is None or str(args.model) in str(error):
            raise  # no file to name, or named already
        raise InvalidModelError(f"MODEL {args.model}: {error}") from error
    except InvalidDataError as error:
        files = [f"--data {args.data}"] if getattr(args, "data", None) else []
        if getattr(args, "validation_data", None) is not None:
            files.append(f"--validation-data {args.validation_data}")
        named = [path for path in (getattr(args, "data", None),
                                   getattr(args, "validation_data", None))
                 if path is not None and str(path) in str(error)]
        if not files or named:
            raise
        raise InvalidDataError(f"{' or '.join(files)}: {error}") from error


def _write_outputs(result: Any, args: argparse.Namespace) -> None:
    """Tables to stdout (stderr when the JSON goes to stdout), then JSON and plots.

    With --quiet nothing is printed but errors (and the JSON, for ``--json -``)."""
    to_stdout = args.json == "-"
    console = report.console_for(stderr=to_stdout)
    if not args.quiet:
        # The progress display (on stderr) ended with the summary: the tables complete it.
        report.show_result(result, console=console, summary=False)
    if args.json is not None:
        if to_stdout:
            report.write_text(result.to_json())
        else:
            with _writing("--json", args.json):
                result.to_json(args.json)
    if args.plots is not None:
        with _writing("--plots", args.plots):
            paths = result.plot(args.plots)
        if not args.quiet:
            report.show_paths("plots", paths, console=console)
    if args.json not in (None, "-") and not args.quiet:
        report.show_paths("result", [args.json], console=console)


# --- TensorFlow's start-up noise --------------------------------------------------------------


def _start_framework(debug: bool) -> None:
    """Import Keras and start its framework, keeping the framework's C++ log lines away.

    TF_CPP_MIN_LOG_LEVEL=2 silences TensorFlow's info and warning logs, but TensorFlow 2.21
    still writes a few lines (oneDNN, CUDA stubs, cuInit) to the process's stderr before its
    logging starts, which no setting reaches. Unless --debug is given (or the user chose
    TF_CPP_MIN_LOG_LEVEL themselves), the file descriptor 2 is pointed at /dev/null while
    TensorFlow starts and looks for devices; Python exceptions still surface normally.
    """
    user_chose = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    if not user_chose and not debug:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    quiet = native_stderr_silenced() if not (debug or user_chose) else contextlib.nullcontext()
    with quiet:
        import keras

        if not debug:
            # TensorFlow's Python-side warnings (retracing notices during probe trials) are
            # about autobatch's own fits, not the user's code.
            logging.getLogger("tensorflow").setLevel(logging.ERROR)

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery logs here, once per process



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

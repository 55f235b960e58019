"""The command line, run in-process through `cli.main` (and once as a real subprocess).

Probes use a FakeMemory (patched in as the detected memory) so they are fast and their answer
known: 1000 bytes + 64 per sample under a 20 000-byte limit, 5% margin -> batch 281.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autobatch
from autobatch import cli, demo
from autobatch.memory.fake import FakeMemory
from autobatch.results import ProbeResult, TuneResult, load_result
from tests.conftest import make_mlp

EXPECTED_MAX_BATCH = 281  # floor((20_000 * 0.95 - 1_000) / 64)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli")
    make_mlp().save(directory / "model.keras")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    np.savez(directory / "data.npz", x=x, y=y)
    return directory


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Fake memory in place of the detected one; a private probe cache."""
    import autobatch.memory

    monkeypatch.setenv("AUTOBATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(
        autobatch.memory, "detect_memory",
        lambda memory_limit=None: FakeMemory(memory_limit or 20_000, 1_000, 64),
    )


def run(*argv):
    """The command line in this process. Probes run in-process here, so that the fake memory
    applies: the default, a worker process per trial, is tested end to end by
    test_python_dash_m_probes_in_worker_processes_without_tensorflow_noise."""
    argv = [str(a) for a in argv]
    if argv[:1] == ["probe"] and "--help" not in argv:
        argv.append("--in-process")
    return cli.main(argv)


def error_lines(err):
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("command", [[], ["probe"], ["tune"]], ids=["main", "probe", "tune"])
def test_help_explains_the_npz_array_names(capsys, command):
    assert run(*command, "--help") == 0
    out = capsys.readouterr().out
    for name in ("x_<name>", "y_<name>", "sample_weight", 'np.savez("train.npz"', "Exit codes"):
        assert name in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["probe", "model.keras"],  # --data is required
        ["probe", "model.keras", "--data", "d.npz", "--memory-limit", "6 gigs"],
        ["probe", "model.keras", "--data", "d.npz", "--margin", "1.5"],
        ["tune", "model.keras", "--data", "d.npz", "--steps-per-epoch", "0.5,2.5"],
        ["tune", "model.keras", "--data", "d.npz", "--validation-data", "v.npz",
         "--validation-split", "0.1"],
    ],
    ids=["no command", "unknown command", "no data", "bad size", "bad margin", "bad steps",
         "validation twice"],
)
def test_bad_usage_exits_2_with_a_message(capsys, argv):
    assert run(*argv) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", str(2**32), "x"])
def test_a_seed_keras_would_refuse_is_bad_usage_before_any_work(capsys, files, seed):
    assert run("tune", files / "model.keras", "--data", files / "data.npz", "--seed", seed) == 2
    assert "is not a seed: expected an integer from 0 to 4294967295" in capsys.readouterr().err


def test_a_bad_memory_limit_says_what_a_size_looks_like(capsys):
    assert run("probe", "m.keras", "--data", "d.npz", "--memory-limit", "6 gigs") == 2
    assert "'6GiB'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing model", "no such file"),
        ("missing data", "no such file"),
        ("not an npz", "not a readable .npz archive"),
        ("no y", r"has no y \(it holds: inputs, x\)"),
        ("x twice", "has both x and x_a"),
        ("uncompiled model", "saved without compile"),
    ],
)
def test_failures_are_one_line_without_a_traceback(capsys, files, tmp_path, case, message):
    model, data = files / "model.keras", files / "data.npz"
    x = np.zeros((4, 8), "float32")
    if case == "missing model":
        model = tmp_path / "nope.keras"
    elif case == "missing data":
        data = tmp_path / "nope.npz"
    elif case == "not an npz":
        data = tmp_path / "text.npz"
        data.write_text("hello")
    elif case == "no y":
        data = tmp_path / "no_y.npz"
        np.savez(data, x=x, inputs=x)
    elif case == "x twice":
        data = tmp_path / "x_twice.npz"
        np.savez(data, x=x, x_a=x, y=x)
    elif case == "uncompiled model":
        import keras

        model = tmp_path / "uncompiled.keras"
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)]).save(model)
    # A path that does not exist is a mistake in the command (2); a bad file, a failure (1).
    assert run("probe", model, "--data", data) == (2 if case.startswith("missing") else 1)
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1, err
    assert err.startswith("autobatch: error: ")
    assert "Traceback" not in err
    assert __import__("re").search(message, err)
    # The file at fault is named once ("MODEL m.keras: model m.keras: no such file" was not).
    assert err.count(str(model if "model" in case else data)) == 1, err


def test_a_file_that_is_not_a_model_is_one_line_naming_it_once(capsys, files):
    assert run("probe", files / "data.npz", "--data", files / "data.npz", "--in-process") == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "cannot load a Keras model from it" in err, err
    assert err.count(f"MODEL {files / 'data.npz'}") == 1, err


def test_debug_adds_the_traceback(capsys, tmp_path):
    assert run("probe", tmp_path / "nope.keras", "--data", tmp_path / "d.npz", "--debug") == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "no such file" in err


def test_an_unexpected_error_is_one_line_pointing_to_debug(capsys, files, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(autobatch, "probe", broken)
    assert run("probe", files / "model.keras", "--data", files / "data.npz") == 1
    assert error_lines(capsys.readouterr().err) == [
        "autobatch: error: RuntimeError: boom (run with --debug for the traceback)"
    ]


def test_probe_prints_the_table_and_writes_json_and_plots(capsys, files, tmp_path):
    out_json, plots = tmp_path / "probe.json", tmp_path / "plots"
    code = run("probe", files / "model.keras", "--data", files / "data.npz",
               "--json", out_json, "--plots", plots)
    assert code == 0
    out, err = capsys.readouterr()
    assert "Probe: fake device" in out and "yes, verified, chosen" in out
    assert "Largest batch size that fits: 281" in err  # the progress display's summary
    result = load_result(out_json)
    assert isinstance(result, ProbeResult) and result.max_batch_size == EXPECTED_MAX_BATCH
    assert result == ProbeResult.from_json(result.to_json())
    assert sorted(p.name for p in plots.iterdir()) == ["probe_memory.png", "probe_throughput.png"]


def test_json_to_stdout_is_machine_readable(capsys, files):
    assert run("probe", files / "model.keras", "--data", files / "data.npz", "--json", "-") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["max_batch_size"] == EXPECTED_MAX_BATCH
    assert "Probe: fake device" in err  # the tables moved to stderr


def test_quiet_prints_nothing(capsys, files, tmp_path):
    code = run("probe", files / "model.keras", "--data", files / "data.npz", "-q",
               "--json", tmp_path / "p.json")
    assert code == 0
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "p.json").exists()


def test_memory_limit_and_margin_reach_the_probe(files, tmp_path):
    out_json = tmp_path / "probe.json"
    code = run("probe", files / "model.keras", "--data", files / "data.npz", "-q",
               "--memory-limit", "10000", "--margin", "0", "--json", out_json)
    assert code == 0
    assert load_result(out_json).max_batch_size == (10_000 - 1_000) // 64


def test_a_memory_limit_with_a_plus_counts_from_what_is_in_use(files, tmp_path, monkeypatch):
    import autobatch.memory

    monkeypatch.setattr(
        autobatch.memory, "detect_memory",
        lambda memory_limit=None: FakeMemory(memory_limit or 20_000, 1_000, 64, baseline_bytes=5_000),
    )
    code = run("probe", files / "model.keras", "--data", files / "data.npz", "-q",
               "--memory-limit", "+10000", "--margin", "0", "--json", tmp_path / "p.json")
    assert code == 0
    result = load_result(tmp_path / "p.json")
    assert result.limit_bytes == 15_000  # the 5000 in use, plus 10000
    assert result.max_batch_size == (10_000 - 1_000) // 64


def test_named_inputs_and_sample_weight_from_npz(files, tmp_path):
    import keras

    a, b = keras.Input((3,), name="a"), keras.Input((5,), name="b")
    output = keras.layers.Dense(1)(keras.layers.Concatenate()([a, b]))
    model = keras.Model({"a": a, "b": b}, output)
    model.compile(optimizer="adam", loss="mse")
    model.save(tmp_path / "two_inputs.keras")
    n = 64
    np.savez(tmp_path / "named.npz", x_a=np.ones((n, 3), "float32"), x_b=np.ones((n, 5), "float32"),
             y=np.ones((n, 1), "float32"), sample_weight=np.ones(n, "float32"))
    x, y, weights = cli.load_npz(tmp_path / "named.npz")
    assert sorted(x) == ["a", "b"] and weights.shape == (n,)
    code = run("probe", tmp_path / "two_inputs.keras", "--data", tmp_path / "named.npz", "-q",
               "--json", tmp_path / "p.json")
    assert code == 0
    assert load_result(tmp_path / "p.json").max_batch_size == n  # all 64 samples fit


def test_report_rerenders_a_saved_result_with_plots(capsys, files, tmp_path):
    run("probe", files / "model.keras", "--data", files / "data.npz", "-q", "--json", tmp_path / "p.json")
    assert run("report", tmp_path / "p.json", "--plots", tmp_path / "plots") == 0
    out = capsys.readouterr().out
    assert "Probe: fake device" in out and "Largest batch size that fits: 281" in out
    assert len(list((tmp_path / "plots").glob("*.png"))) == 2


def test_report_of_a_file_that_is_not_a_result_fails(capsys, tmp_path):
    (tmp_path / "other.json").write_text('{"hello": 1}')
    assert run("report", tmp_path / "other.json") == 1
    assert "Not a saved ProbeResult: it has no max_batch_size" in capsys.readouterr().err


def test_report_plots_without_matplotlib_give_the_install_hint(capsys, files, tmp_path, monkeypatch):
    run("probe", files / "model.keras", "--data", files / "data.npz", "-q", "--json", tmp_path / "p.json")
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run("report", tmp_path / "p.json", "--plots", tmp_path / "plots") == 1
    assert 'pip install "keras-autobatch[plots]"' in capsys.readouterr().err


@pytest.mark.skipif(
    "use_cache" not in inspect.signature(autobatch.probe).parameters,
    reason="probe() has no use_cache parameter yet",
)
def test_a_second_probe_comes_from_the_cache_unless_no_cache(capsys, files):
    # A few trials suffice: the cache is what is tested.
    args = ["probe", files / "model.keras", "--data", files / "data.npz", "--max-batch-size", "16"]
    assert run(*args) == 0
    assert "from the probe cache" not in capsys.readouterr().err
    assert run(*args) == 0
    assert "from the probe cache" in capsys.readouterr().err
    assert run(*args, "--no-cache") == 0
    assert "from the probe cache" not in capsys.readouterr().err


def test_tune_writes_a_result_that_round_trips_and_its_plots(capsys, files, tmp_path):
    out_json, plots = tmp_path / "tune.json", tmp_path / "plots"
    code = run(
        "tune", files / "model.keras", "--data", files / "data.npz",
        "--batch-sizes", "16,64", "--steps-per-epoch", "1", "--budget-samples", "800",
        "--directory", tmp_path / "search", "--json", out_json, "--plots", plots,
    )
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "Search: 2 candidates" in out
    result = load_result(out_json)
    assert isinstance(result, TuneResult)
    assert result.fit_kwargs() == result.ranked_trials()[0].fit_kwargs()
    assert result == TuneResult.from_json(result.to_json())
    assert sorted(p.name for p in plots.glob("*.png")) == [
        "probe_memory.png", "probe_throughput.png", "tune_goodput.png",
        "tune_learning_curves.png", "tune_val_loss.png",
    ]


def test_the_same_tune_command_gives_the_same_result(files, tmp_path):
    # With dropout, training draws random numbers: --seed (default 0) seeds them, so a
    # pipeline reruns a command to the same answer, even in a process whose random state
    # moved on in between.
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.save(tmp_path / "dropout.keras")

    def search(name, *seed):
        out = tmp_path / f"{name}.json"
        assert run("tune", tmp_path / "dropout.keras", "--data", files / "data.npz", "-q",
                   "--batch-sizes", "16,64", "--budget-samples", "800", *seed,
                   "--directory", tmp_path / name, "--json", out) == 0
        return [(t.batch_size, t.steps_per_epoch, t.val_loss) for t in load_result(out).trials]

    first = search("first")
    keras.random.normal((3,))
    assert search("again") == first
    assert search("other seed", "--seed", "1") != first


def test_devices_reports_the_host_memory(capsys, tmp_path, monkeypatch):
    monkeypatch.undo()  # the real backends: that is what this command is for
    monkeypatch.setenv("AUTOBATCH_CACHE_DIR", str(tmp_path / "cache"))
    assert run("devices", "--json", tmp_path / "devices.json") == 0
    assert "host RAM" in capsys.readouterr().out
    info = json.loads((tmp_path / "devices.json").read_text())
    assert info["backends"][0]["name"] == "host" and info["host"]["total_bytes"] > 0


def test_demo_writes_everything_the_readme_promises(files, tmp_path, monkeypatch):
    # The real demo takes a minute or two; the same steps on a smaller example take seconds.
    monkeypatch.setattr(demo, "NUM_SAMPLES", 200)
    monkeypatch.setattr(demo, "BATCH_SIZES", (16,))
    monkeypatch.setattr(demo, "STEPS_FRACTIONS", (1.0,))
    monkeypatch.setattr(demo, "BUDGET_PASSES", 1)
    output = tmp_path / "demo"
    assert run("demo", "--output-dir", output, "-q") == 0
    written = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    assert {"model.keras", "data.npz", "probe.json", "tune.json", "plots/probe_memory.png",
            "plots/probe_throughput.png", "plots/tune_val_loss.png",
            "plots/tune_learning_curves.png"} <= written
    assert isinstance(load_result(output / "tune.json"), TuneResult)


def test_the_demos_suggested_command_is_one_unbroken_line_in_a_log(capsys, tmp_path, monkeypatch):
    # Output that is not a terminal (capsys, a pipe, a CI log) must not wrap at 80 columns:
    # a command split mid-argument cannot be pasted back.
    monkeypatch.setattr(demo, "NUM_SAMPLES", 200)
    monkeypatch.setattr(demo, "BATCH_SIZES", (16,))
    monkeypatch.setattr(demo, "STEPS_FRACTIONS", (1.0,))
    monkeypatch.setattr(demo, "BUDGET_PASSES", 1)
    output = tmp_path / ("a_rather_long_directory_name_" * 3) / "demo"
    assert run("demo", "--output-dir", output) == 0
    out, err = capsys.readouterr()
    command = f"  autobatch probe {output / 'model.keras'} --data {output / 'data.npz'}"
    assert any(line.startswith(command) and line.endswith("--plots plots/")
               for line in out.splitlines()), out
    assert max(len(line) for line in out.splitlines()) > 80
    assert "elapsed" in err  # the progress lines, plain, with the time so far


def test_python_dash_m_probes_in_worker_processes_without_tensorflow_noise(files, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["AUTOBATCH_CACHE_DIR"] = str(tmp_path / "cache")
    completed = subprocess.run(
        [sys.executable, "-m", "autobatch", "probe", str(files / "model.keras"),
         "--data", str(files / "data.npz"), "--max-batch-size", "16",
         "--json", str(tmp_path / "p.json")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Probe: CPU (host RAM)" in completed.stdout
    assert "absl::InitializeLog" not in completed.stderr and "oneDNN" not in completed.stderr
    result = load_result(tmp_path / "p.json")
    assert result.max_batch_size == 16 and result.verified
    # Every trial and the verification ran in a worker process of its own, each measured.
    assert result.isolated and "new worker process" in " ".join(completed.stdout.split())
    assert all(t.peak_bytes and t.peak_bytes > result.baseline_bytes * 0.5 for t in result.trials)
    assert result.left_behind_bytes is not None and result.left_behind_bytes < 64 * 2**20


# --- every error is one line naming the option at fault ------------------------------------------


def _one_line_naming(capsys, option):
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("autobatch: error: "), err
    assert option in lines[0], err
    assert "Traceback" not in err and "Errno" not in err
    return lines[0]


BAD_VALUES = [
    # (case id, argv after "MODEL --data DATA" of the command, option named, message)
    ("probe", ["--memory-limit", "6 gigs"], "--memory-limit", "'6GiB'"),
    ("probe", ["--margin", "1.5"], "--margin", r"outside \[0, 1\)"),
    ("probe", ["--margin", "abc"], "--margin", "not a number"),
    ("probe", ["--max-batch-size", "0"], "--max-batch-size", "below 1"),
    ("probe", ["--frobnicate"], "--frobnicate", "unrecognized"),
    ("tune", ["--tuner", "nosuch"], "--tuner", "'halving', 'hyperband'"),
    ("tune", ["--batch-sizes", ","], "--batch-sizes", "at least one value"),
    ("tune", ["--budget-samples", "1.5"], "--budget-samples", "not a whole number"),
    ("tune", ["--steps-per-epoch", "2.5"], "--steps-per-epoch", "whole step counts"),
    ("tune", ["--validation-split", "2"], "--validation-split", "not a fraction"),
]


@pytest.mark.parametrize("command, extra, option, message", BAD_VALUES,
                         ids=[f"{c[0]} {c[1][0]} {c[1][1] if len(c[1]) > 1 else ''}" for c in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_its_option(capsys, files, command, extra, option, message):
    assert run(command, files / "model.keras", "--data", files / "data.npz", *extra) == 2
    assert __import__("re").search(message, _one_line_naming(capsys, option))


def test_a_missing_required_option_and_a_missing_command_are_one_line(capsys, files):
    assert run("probe", files / "model.keras") == 2
    _one_line_naming(capsys, "--data")
    assert run() == 2
    _one_line_naming(capsys, "choose one of: probe, tune")
    assert run("frobnicate") == 2
    _one_line_naming(capsys, "'frobnicate'")


def _bad_file(kind, tmp_path, files):
    """A path of the given kind: missing, a directory, an .npz where JSON belongs, ..."""
    if kind == "missing":
        return tmp_path / "nosuch.json"
    if kind == "directory":
        return tmp_path
    if kind == "npz":
        return files / "data.npz"
    if kind == "other json":
        (tmp_path / "other.json").write_text('{"hello": 1}')
        return tmp_path / "other.json"
    if kind == "tune result":
        result = TuneResult(batch_size=16, steps_per_epoch=4, epochs=2, val_loss=0.1, trials=[],
                            probe=None, tuner="grid", budget_samples=None)
        result.to_json(tmp_path / "tune.json")
        return tmp_path / "tune.json"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [("missing", "no such file"), ("directory", "is a directory"), ("npz", "Not JSON"),
     ("other json", "Not a saved ProbeResult"), ("tune result", "holds a tune result")],
)
def test_a_bad_probe_file_is_one_line_naming_probe(capsys, files, tmp_path, monkeypatch, kind, message):
    monkeypatch.setattr(autobatch, "tune", _must_not_run)
    path = _bad_file(kind, tmp_path, files)
    code = run("tune", files / "model.keras", "--data", files / "data.npz", "--probe", path)
    assert code == (2 if kind in ("missing", "directory") else 1)
    assert message in _one_line_naming(capsys, f"--probe {path}")


@pytest.mark.parametrize("kind, message", [("missing", "no such file"), ("npz", "Not JSON"),
                                           ("directory", "is a directory")])
def test_a_bad_result_file_for_report_is_one_line(capsys, files, tmp_path, kind, message):
    path = _bad_file(kind, tmp_path, files)
    assert run("report", path) == (2 if kind in ("missing", "directory") else 1)
    assert message in _one_line_naming(capsys, f"RESULT {path}")


def test_a_directory_as_model_or_data_is_one_line(capsys, files, tmp_path):
    assert run("probe", tmp_path, "--data", files / "data.npz") == 2
    assert "is a directory" in _one_line_naming(capsys, f"MODEL {tmp_path}")
    assert run("probe", files / "model.keras", "--data", tmp_path) == 2
    assert "is a directory" in _one_line_naming(capsys, f"--data {tmp_path}")


def _must_not_run(*args, **kwargs):
    raise AssertionError("the work started although an output cannot be written")


@pytest.mark.parametrize(
    "command, option, target, message",
    [
        ("probe", "--json", "no_dir/p.json", "does not exist"),
        ("probe", "--json", ".", "is a directory"),
        ("probe", "--plots", "file.txt", "is a file"),
        ("probe", "--plots", "file.txt/plots", "cannot create it"),
        ("tune", "--json", "no_dir/t.json", "does not exist"),
        ("tune", "--directory", "file.txt", "is a file"),
        # Root passes every permission check, yet cannot create files in /proc: tried.
        ("probe", "--json", "/proc/p.json", "cannot write in /proc"),
        ("probe", "--plots", "/proc/plots", "cannot create or write it in /proc"),
    ],
)
def test_an_unwritable_output_fails_before_any_work(capsys, files, tmp_path, monkeypatch,
                                                     command, option, target, message):
    monkeypatch.setattr(autobatch, "probe", _must_not_run)
    monkeypatch.setattr(autobatch, "tune", _must_not_run)
    (tmp_path / "file.txt").write_text("not a directory")
    path = tmp_path / target
    assert run(command, files / "model.keras", "--data", files / "data.npz", option, path) == 2
    assert message in _one_line_naming(capsys, f"{option} {path}")


def test_an_existing_output_that_cannot_be_replaced_fails_before_any_work(capsys, files, tmp_path,
                                                                         monkeypatch):
    # (Root may write to a read-only file, so the refusal is simulated where it opens.)
    monkeypatch.setattr(autobatch, "probe", _must_not_run)
    target = tmp_path / "locked.json"
    target.write_text("{}")
    real_open = Path.open

    def locked_open(self, *args, **kwargs):
        if self == target:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", locked_open)
    assert run("probe", files / "model.keras", "--data", files / "data.npz", "--json", target) == 2
    assert "cannot write it (Permission denied)" in _one_line_naming(capsys, f"--json {target}")


def test_an_input_that_is_not_a_regular_file_is_bad_usage(capsys, files, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert run("report", fifo) == 2
    assert "is not a regular file" in _one_line_naming(capsys, f"RESULT {fifo}")


def test_unwritable_outputs_of_devices_and_demo_are_one_line(capsys, tmp_path):
    (tmp_path / "file.txt").write_text("not a directory")
    assert run("devices", "--json", tmp_path / "no_dir" / "d.json") == 2
    _one_line_naming(capsys, "--json")
    assert run("demo", "--output-dir", tmp_path / "file.txt") == 2
    _one_line_naming(capsys, "--output-dir")


def test_a_write_that_fails_at_the_end_names_the_option(capsys, files, tmp_path, monkeypatch):
    def denied(self, path=None, **kwargs):
        if path is not None:
            raise PermissionError(13, "Permission denied")
        return "{}"

    monkeypatch.setattr(ProbeResult, "to_json", denied)
    target = tmp_path / "p.json"
    assert run("probe", files / "model.keras", "--data", files / "data.npz", "-q", "--json", target) == 1
    assert "cannot write it (Permission denied)" in _one_line_naming(capsys, f"--json {target}")


def test_an_api_argument_error_is_reworded_with_the_option(capsys, files, tmp_path):
    code = run("tune", files / "model.keras", "--data", files / "data.npz", "-q",
               "--batch-sizes", "100000", "--directory", tmp_path / "search")
    assert code == 2
    line = _one_line_naming(capsys, "--batch-sizes")
    assert "batch_sizes=" not in line and "leave out --batch-sizes" in line


def test_tune_help_states_the_real_default_budget(capsys):
    from autobatch.search.tune import DEFAULT_BUDGET_PASSES, DEFAULT_MIN_BUDGET_SAMPLES

    assert run("tune", "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"{DEFAULT_BUDGET_PASSES} passes" in text
    assert f"at least {DEFAULT_MIN_BUDGET_SAMPLES:,} samples" in text


def test_help_texts_state_the_defaults_the_code_uses(capsys):
    import inspect

    from autobatch.memory.base import MemoryBackend
    from autobatch.memory.host import HostMemory
    from autobatch.search.space import DEFAULT_EPOCH_FRACTIONS

    def help_of(*command):
        assert run(*command, "--help") == 0
        return " ".join(capsys.readouterr().out.split())

    probe_help, tune_help, demo_help = help_of("probe"), help_of("tune"), help_of("demo")
    from autobatch.probing.isolated import DEFAULT_MARGIN

    assert (f"default {DEFAULT_MARGIN:.2f} with worker processes and on a GPU, "
            f"{HostMemory.default_margin:.2f} on host RAM with --in-process") in probe_help
    assert DEFAULT_MARGIN == MemoryBackend.default_margin
    split = inspect.signature(autobatch.tune).parameters["validation_split"].default
    assert f"(default {split})" in tune_help
    assert "(default: " + ",".join(f"{f:g}" for f in DEFAULT_EPOCH_FRACTIONS) + ")" in tune_help
    assert f"default on CPU: +{demo.HOST_HEADROOM}" in demo_help


def test_the_cli_offers_exactly_the_tuners_the_search_knows():
    from autobatch.search.tuner import TUNERS

    assert cli.TUNERS == TUNERS

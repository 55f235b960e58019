"""Distributed search on Keras Tuner's chief/worker engine: leases, the handshake, workers
that do not hang, and real chief and worker processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import keras_tuner
import numpy as np
import pytest

from autobatch.errors import InvalidArgumentError
from autobatch.search import distributed
from autobatch.search.tuner import make_oracle

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and processes")


@pytest.fixture
def chief_variables(monkeypatch):
    """Keras Tuner's variables for a chief on a free loopback port; the port."""
    port = distributed.free_port()
    for name, value in distributed.role_environment("chief", port).items():
        monkeypatch.setenv(name, value)
    return port


def test_the_role_comes_from_keras_tuners_variables(monkeypatch):
    for name in (distributed.ORACLE_IP, distributed.ORACLE_PORT, distributed.TUNER_ID):
        monkeypatch.delenv(name, raising=False)
    assert distributed.role() == "local"
    monkeypatch.setenv(distributed.ORACLE_IP, "127.0.0.1")
    with pytest.raises(InvalidArgumentError, match="KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID are not"):
        distributed.role()
    monkeypatch.setenv(distributed.ORACLE_PORT, "8000")
    monkeypatch.setenv(distributed.TUNER_ID, "worker-3")
    assert distributed.role() == "worker"
    monkeypatch.setenv(distributed.TUNER_ID, "chief")
    assert distributed.role() == "chief"
    assert distributed.bind_address() == "127.0.0.1"


@pytest.mark.parametrize("options, message", [
    (["--worker", "8000"], "'8000' has no address: give the chief's ADDRESS:PORT"),
    (["--chief", "127.0.0.1:99999"], "the port is not a number from 1 to 65535"),
    (["--workers", "2", "--chief", "8000"], "not allowed with argument --workers"),
    (["--worker", "10.0.0.5:8000", "--json", "out.json"], "--json and --plots are the chief's"),
])
def test_the_command_line_refuses_roles_that_cannot_work(options, message, tmp_path, capsys,
                                                         monkeypatch):
    from autobatch import cli

    for name in (distributed.ORACLE_IP, distributed.ORACLE_PORT, distributed.TUNER_ID):
        monkeypatch.setenv(name, "")  # recorded, so the variables --worker sets are undone
        monkeypatch.delenv(name)
    for name in ("m.keras", "d.npz"):  # present (inputs are checked first), never read
        (tmp_path / name).touch()
    assert cli.main(["tune", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"),
                     *options]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


# --- one chief in this process, workers as gRPC clients: no training ----------------------


class Chief:
    """A real gRPC chief over a real successive-halving oracle of 3 candidates."""

    def __init__(self, directory: Path, port: int, lease_seconds: float) -> None:
        self.oracle = make_oracle("halving", max_trials=None, seed=1, hyperband_epochs=1,
                                  candidates=[{"batch_size": b} for b in (8, 16, 32)])
        self.oracle._set_project_dir(str(directory), "project")
        space = keras_tuner.HyperParameters()
        space.Choice("batch_size", [8, 16, 32])
        self.oracle.update_space(space)
        self.project_dir = str(directory / "project")
        os.makedirs(self.project_dir, exist_ok=True)
        distributed._write_marker(self.project_dir, {"project": "project", "token": "t0"})
        self.servicer = distributed.ChiefServicer(
            self.oracle, project="project", token="t0", lease_seconds=lease_seconds)
        from concurrent import futures

        from keras_tuner.src import protos

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        protos.get_service_grpc().add_OracleServicer_to_server(self.servicer, self.server)
        assert self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def client(self, timeout: float = 5.0) -> distributed.WorkerClient:
        return distributed.WorkerClient(self.oracle, project_dir=self.project_dir,
                                        timeout=timeout, connect_timeout=5.0)


@pytest.fixture
def chief(tmp_path, chief_variables):
    chief = Chief(tmp_path, chief_variables, lease_seconds=0.5)
    yield chief
    chief.server.stop(grace=None)


def finish(client, trial, val_loss: float) -> None:
    client.update_trial(trial.trial_id, {"val_loss": val_loss})
    trial.status = "COMPLETED"
    client.end_trial(trial)


def test_a_silent_workers_trial_goes_to_the_next_worker_and_the_search_ends(chief):
    silent = chief.client()
    taken = silent.create_trial("worker-a")
    silent.close()  # no heartbeat: as if the process were killed mid-trial
    time.sleep(0.7)
    assert chief.servicer.expire_silent_workers() == [("worker-a", taken.trial_id)]

    other = chief.client()
    retried = other.create_trial("worker-b")
    assert (retried.trial_id, retried.status) == (taken.trial_id, "RUNNING")
    finish(other, retried, 0.5)
    finished = [0.5]
    # The rest of the search, however many rounds halving runs (3 batch sizes, then the best).
    for val_loss in (0.3, 0.4, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02):
        trial = other.create_trial("worker-b")
        if trial.status == "STOPPED":
            break
        finish(other, trial, val_loss)
        finished.append(val_loss)
    else:
        pytest.fail("the search did not end")
    assert len(finished) >= 3
    assert chief.servicer.finished()
    scores = sorted(t.score for t in chief.oracle.trials.values())
    assert scores == sorted(finished)  # nothing finished is lost, the retried trial included
    # The worker reads the finished trials from the shared directory, in the chief's order.
    assert other.start_order == sorted(chief.oracle.trials)
    other.close()


def test_a_worker_that_beats_keeps_its_trial_and_an_idle_worker_pauses(chief):
    beating = chief.client(timeout=0.3)  # a heartbeat every 0.05 s
    kept = beating.create_trial("worker-a")
    silent = chief.client()
    lost = [silent.create_trial("worker-b"), silent.create_trial("worker-c")]
    # Every candidate of the round is taken: halving waits for them, and says so.
    started = time.monotonic()
    assert silent.create_trial("worker-d").status == "IDLE"
    assert time.monotonic() - started >= distributed.IDLE_WAIT_SECONDS
    silent.close()
    time.sleep(0.8)
    expired = chief.servicer.expire_silent_workers()
    assert sorted(expired) == [("worker-b", lost[0].trial_id), ("worker-c", lost[1].trial_id)]
    assert chief.oracle.tuner_ids == {"worker-a"}
    assert chief.oracle.ongoing_trials["worker-a"].trial_id == kept.trial_id
    beating.close()


def test_a_worker_checks_it_runs_the_chiefs_search_in_the_chiefs_directory(chief, tmp_path):
    client = chief.client()
    client.check_same_search("project")
    with pytest.raises(distributed.DistributedSearchError,
                       match="runs the search 'project', this worker the search 'other'"):
        client.check_same_search("other")
    distributed._write_marker(chief.project_dir, {"project": "project", "token": "old"})
    with pytest.raises(distributed.DistributedSearchError, match="a stale marker of an earlier chief"):
        client.check_same_search("project")
    os.remove(os.path.join(chief.project_dir, distributed.MARKER_FILE))
    with pytest.raises(distributed.DistributedSearchError, match="no marker of the chief.*shared file system"):
        client.check_same_search("project")
    client.close()


def test_a_worker_does_not_wait_for_a_chief_that_is_gone(tmp_path, chief_variables, monkeypatch):
    monkeypatch.setenv(distributed.TUNER_ID, "worker-0")
    oracle = make_oracle("grid", max_trials=None, seed=1, hyperband_epochs=1)
    client = distributed.WorkerClient(oracle, project_dir=str(tmp_path), timeout=0.3,
                                      connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(distributed.DistributedSearchError, match="did not answer CreateTrial within 0.3 s"):
        client.create_trial("worker-0")
    assert time.monotonic() - started < 5
    client.close()


def test_two_workers_do_not_train_the_same_shared_run(tmp_path, chief_variables, monkeypatch):
    import threading

    monkeypatch.setenv(distributed.TUNER_ID, "worker-0")
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "0.5")
    run_file = tmp_path / "run.json"

    def load():
        return json.loads(run_file.read_text()) if run_file.exists() else None

    assert distributed.claim_run(str(tmp_path), "run", load) is None  # ours to train
    waited = {}
    other = threading.Thread(target=lambda: waited.update(
        run=distributed.claim_run(str(tmp_path), "run", load)))
    other.start()
    time.sleep(0.3)
    assert other.is_alive()  # waits for the run instead of training it again
    run_file.write_text('{"outcomes": {}}')
    distributed.release_run(str(tmp_path), "run")
    other.join(5)
    assert waited == {"run": {"outcomes": {}}}

    # A claim nobody refreshes is a dead worker's: taken over after the timeout.
    (tmp_path / "stale.claim").touch()
    started = time.monotonic()
    assert distributed.claim_run(str(tmp_path), "stale", lambda: None) is None
    assert 0.5 < time.monotonic() - started < 5
    distributed.release_run(str(tmp_path), "stale")
    assert not (tmp_path / "stale.claim").exists()


# --- real processes: a chief (`autobatch tune --chief`) and workers (`autobatch.tune`) -------

WORKER = """
import json, os, signal, sys, time
# As under `nohup ... &`: SIGINT ignored, so stopping a worker cannot rely on it.
signal.signal(signal.SIGINT, signal.SIG_IGN)
import keras, numpy as np
import autobatch

files, stall = sys.argv[1], sys.argv[2] == "stall"

class Stall(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        if stall:
            open(files + "/stalled", "w").close()
            for _ in range(3000):  # killed, or stopped, here: mid-candidate
                time.sleep(0.1)

arrays = np.load(files + "/train.npz")
model = keras.models.load_model(files + "/model.keras")
while sys.argv[2] == "after-stall" and not os.path.exists(files + "/stalled"):
    time.sleep(0.1)  # started with the others, it asks for a trial once one is stalled
autobatch.tune(model, (arrays["x"], arrays["y"]),
               probe=autobatch.ProbeResult.from_json(files + "/probe.json"), **SEARCH,
               directory=files + "/search", verbose=0, callbacks=[Stall()])
"""
SEARCH = {"tuner": "halving", "batch_sizes": [8, 16, 32], "steps_per_epoch": [1.0],
          "budget_samples": 256}


@pytest.fixture
def files(tmp_path):
    """The model, data and probe every process of a search loads."""
    from tests.search.test_tune import make_model, regression_data
    from tests.test_cache import probe_result

    x, y = regression_data()
    np.savez(tmp_path / "train.npz", x=x, y=y)
    make_model().save(tmp_path / "model.keras")
    probe_result(32).to_json(tmp_path / "probe.json")
    (tmp_path / "worker.py").write_text(f"SEARCH = {SEARCH!r}\n" + WORKER)
    return tmp_path


def environment(**variables: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **variables}


def start_chief(files: Path, port: int, timeout: float) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "autobatch", "tune", str(files / "model.keras"),
        "--data", str(files / "train.npz"), "--probe", str(files / "probe.json"),
        "--tuner", "halving", "--batch-sizes", "8,16,32", "--steps-per-epoch", "1.0",
        "--budget-samples", "256", "--directory", str(files / "search"),
        "--chief", f"127.0.0.1:{port}", "--threads", "1", "--json", str(files / "result.json"),
        "--quiet",
    ]
    env = environment(**{distributed.TIMEOUT_VARIABLE: str(timeout)})
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def start_worker(files: Path, port: int, tuner_id: str, *, mode: str = "run",
                 timeout: float = 4.0) -> subprocess.Popen:
    env = environment(**distributed.role_environment(tuner_id, port, threads=1, timeout=timeout))
    # No preexec_fn: it makes Popen fork() rather than vfork(), and a fork of this process,
    # whose earlier tests left gRPC running, can abort in the child before exec (grpcio >=
    # 1.80, grpc/grpc#43055: "epoll_wait error: Bad file descriptor", exit -6).
    return subprocess.Popen(
        [sys.executable, str(files / "worker.py"), str(files), mode],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def wait_for(path: Path, processes: list[subprocess.Popen], limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        for process in processes:
            assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_a_worker_killed_mid_trial_loses_nothing_and_the_search_ends(files):
    port = distributed.free_port()
    chief = start_chief(files, port, timeout=4.0)
    doomed = start_worker(files, port, "worker-doomed", mode="stall")
    survivor = start_worker(files, port, "worker-0", mode="after-stall")
    wait_for(files / "stalled", [chief, doomed, survivor])
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()

    for process in (survivor, chief):
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode()[-2000:]
    result = json.loads((files / "result.json").read_text())
    # Every candidate trained, the killed worker's included (by the survivor), and the
    # chief's project left with no trial running.
    # (halving's later rounds continue the best batch sizes: 3 + 2 + 1 trials)
    assert set(t["batch_size"] for t in result["trials"]) == {8, 16, 32}
    assert all(t["val_loss"] is not None for t in result["trials"])
    oracle = json.loads((Path(result["directory"]) / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {}


def test_a_workers_winner_retrains_to_the_val_loss_it_reported(files):
    # The retraining a user runs after a search: seeded as `autobatch tune --seed 0` seeds
    # its own process, then fit at the result's fit_kwargs(). Workers once seeded each
    # candidate from its values, and no retraining could repeat their runs.
    import keras

    import autobatch

    port = distributed.free_port()
    chief = start_chief(files, port, timeout=4.0)
    worker = start_worker(files, port, "worker-0")
    for process in (worker, chief):
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode()[-2000:]
    result = autobatch.TuneResult.from_json(files / "result.json")
    arrays = np.load(files / "train.npz")
    keras.utils.set_random_seed(0)
    model = keras.models.load_model(files / "model.keras")
    history = model.fit(arrays["x"], arrays["y"], validation_split=0.2, verbose=0,
                        **result.fit_kwargs())
    assert history.history["val_loss"][-1] == pytest.approx(result.val_loss, rel=1e-6)


def test_workers_on_this_machine_print_one_result_and_no_error(files):
    # A new user's `--workers 2` printed the probe's tables naming a temporary file deleted
    # when the command ended, then the probe again in the chief's result.
    command = [
        sys.executable, "-m", "autobatch", "tune", str(files / "model.keras"),
        "--data", str(files / "train.npz"), "--tuner", "halving", "--batch-sizes", "8,16,32",
        "--steps-per-epoch", "1.0", "--budget-samples", "256", "--workers", "2",
        "--directory", str(files / "search"), "--json", str(files / "result.json"),
    ]
    done = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "autobatch-workers-" not in done.stdout + done.stderr
    assert "autobatch: error" not in done.stderr
    assert done.stdout.count(str(files / "result.json")) == 1
    assert done.stdout.count("Probe:") == 1  # the chief's result shows the probe, once


def test_workers_stop_when_the_chief_is_gone(files):
    port = distributed.free_port()
    chief = start_chief(files, port, timeout=2.0)
    worker = start_worker(files, port, "worker-0", mode="stall", timeout=2.0)
    wait_for(files / "stalled", [chief, worker])
    chief.send_signal(signal.SIGKILL)
    chief.wait()
    killed_at = time.monotonic()
    _, stderr = worker.communicate(timeout=60)
    # A heartbeat found no chief within 2 s and stopped the trial: no hour-long wait (#645).
    assert time.monotonic() - killed_at < 30
    assert worker.returncode != 0
    assert "did not answer GetTrial within 2 s" in stderr.decode()



def test_a_second_worker_gets_a_batch_size_no_worker_is_training(tmp_path):
    # Candidates of one batch size share one run: a worker handed 8 x 2 while another trains
    # 8 x 1 would wait for that run, and 2 workers would be no faster than 1.
    candidates = [{"batch_size": b, "steps_per_epoch": s} for b in (8, 16) for s in (1, 2)]
    oracle = make_oracle("halving", max_trials=None, seed=1, hyperband_epochs=1,
                         candidates=candidates)
    oracle._set_project_dir(str(tmp_path), "project")
    space = keras_tuner.HyperParameters()
    space.Choice("batch_size", [8, 16])
    space.Choice("steps_per_epoch", [1, 2])
    oracle.update_space(space)

    def taken(trial):
        values = trial.hyperparameters.values
        return values["batch_size"], values["steps_per_epoch"]

    first, second = oracle.create_trial("worker-a"), oracle.create_trial("worker-b")
    assert (taken(first), taken(second)) == ((8, 1), (16, 1))
    oracle.update_trial(first.trial_id, {"val_loss": 0.5})
    oracle.end_trial(first)
    # Only 8 x 2 and 16 x 2 are left, and 16 is busy: its sibling waits for a free batch size.
    assert taken(oracle.create_trial("worker-a")) == (8, 2)
    assert taken(oracle.create_trial("worker-c")) == (16, 2)  # all busy: the first left


def test_a_grid_hands_a_second_worker_another_batch_size_and_covers_the_grid(tmp_path):
    # Two workers each get a candidate (keras-tuner's grid made the second one wait), of
    # another batch size: candidates of one batch size share one run, and a worker handed a
    # sibling of the run another trains waits for it (the grid went along steps_per_epoch
    # first, so the next candidate was always that sibling).
    from autobatch.search.space import SearchSpace

    space = SearchSpace(num_samples=1000, batch_sizes=(16, 32, 64), epoch_fractions=(0.25, 0.5, 1.0))
    oracle = make_oracle("grid", max_trials=None, seed=1, hyperband_epochs=1)
    oracle._set_project_dir(str(tmp_path), "project")
    hp = keras_tuner.HyperParameters()
    space.declare(hp)
    oracle.update_space(hp)
    handed = []
    while True:
        first = oracle.create_trial("worker-a")
        if first.status != "RUNNING":
            break
        second = oracle.create_trial("worker-b")
        # keras-tuner's grid told the second worker IDLE until the first trial ended.
        assert second.status == "RUNNING" or len(handed) == space.size - 1
        pair = [first] + ([second] if second.status == "RUNNING" else [])
        sizes = [t.hyperparameters.values["batch_size"] for t in pair]
        assert len(set(sizes)) == len(sizes), f"both workers got batch size {sizes[0]}"
        for trial in pair:
            handed.append(tuple(sorted(trial.hyperparameters.values.items())))
            oracle.update_trial(trial.trial_id, {"val_loss": 1.0})
            oracle.end_trial(trial)
    assert len(handed) == len(set(handed)) == space.size

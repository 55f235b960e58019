"""The supervisor of isolated probes: a killed worker is an out-of-memory observation.

Its workers here are `fake_worker.py` (no Keras: a memory curve from a JSON file, SIGKILL
past a threshold), so these tests are fast; the real worker runs end to end in
tests/test_cli.py::test_python_dash_m_probes_in_worker_processes_without_tensorflow_noise.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from autobatch.errors import BatchDoesNotFitError, InvalidArgumentError, InvalidDataError, TrialError
from autobatch.probing.isolated import probe_in_workers, saved_for_workers

FAKE_WORKER = [sys.executable, str(Path(__file__).with_name("fake_worker.py"))]
MiB = 2**20


def probe_curve(tmp_path, margin=0.1, **curve):
    curve = {"baseline": 400 * MiB, "per_sample": 1 * MiB, "limit": 1400 * MiB,
             "kill_above": 1400 * MiB, "num_samples": 5000, "log": str(tmp_path / "jobs.log"),
             **curve}
    (tmp_path / "curve.json").write_text(json.dumps(curve))
    result = probe_in_workers(
        tmp_path / "curve.json", tmp_path / "unused.npz", memory_limit=None, margin=margin,
        max_batch_size=None, steps_per_trial=3, verbose=0, command=FAKE_WORKER,
    )
    jobs = [json.loads(line) for line in (tmp_path / "jobs.log").read_text().splitlines()]
    return result, jobs


def test_a_killed_worker_is_out_of_memory_and_the_probe_answers_below_it(tmp_path):
    # Memory jumps past the limit from batch 700 (a cliff the line cannot predict): a worker
    # there is SIGKILLed; the probe must survive, count it and answer below it.
    result, jobs = probe_curve(tmp_path, kill_above=1099 * MiB)
    assert result.isolated
    assert result.num_oom >= 1
    killed = [t.batch_size for t in result.trials if t.error == "out of memory"]
    assert killed and min(killed) >= 700
    assert 0.9 * 699 <= result.max_batch_size < 700
    assert result.verified and result.verifications[-1].batch_size == result.max_batch_size
    assert jobs[0] == {"kind": "trial", "batch_size": 1}  # batch 1 first, as on host RAM
    assert jobs[-1]["kind"] == "verify"


def test_an_answer_above_a_killed_batch_is_never_returned(tmp_path):
    # Usable memory ends at 1300 MiB (batch 900), but a worker at any batch from 700 up is
    # killed by the fake kernel, so whatever ran past the margin above, the answer stays below.
    result, _ = probe_curve(tmp_path, kill_above=1099 * MiB, limit=1500 * MiB)
    assert result.max_batch_size < 700


def test_a_verification_that_is_killed_backs_off_and_verifies_again(tmp_path):
    # Trials fit up to the usable memory, but real epochs cost 150 MiB more: the first
    # verification is killed, a smaller batch is verified in a new worker.
    result, jobs = probe_curve(tmp_path, verify_extra=150 * MiB, kill_above=1350 * MiB)
    verifies = [j["batch_size"] for j in jobs if j["kind"] == "verify"]
    assert len(verifies) >= 2 and verifies == sorted(verifies, reverse=True)
    assert result.verifications[0].error == "out of memory"
    assert result.verified and result.max_batch_size == verifies[-1]
    assert 400 + result.max_batch_size + 150 <= 1350


def test_the_answer_is_a_measured_batch_and_backing_off_prefers_one(tmp_path):
    # A cliff from batch 700 (workers killed), real epochs 100 MiB above trials, and a spike
    # at batch 540 that no trial measured. The answer is the largest batch a trial fitted
    # (675), not one interpolated towards the cliff; its verification is killed and the
    # usual back-off (to 80%) lands on the spike; from there the next batch is the one a
    # trial measured (450), which is above the usual back-off's 432.
    result, jobs = probe_curve(tmp_path, kill_above=1099 * MiB, verify_extra=100 * MiB,
                               spikes={"540": 300 * MiB})
    fitted = {t.batch_size for t in result.trials if t.fits}
    verifies = [j["batch_size"] for j in jobs if j["kind"] == "verify"]
    assert verifies == [675, 540, 450]
    assert 675 in fitted and 450 in fitted and 540 not in fitted
    assert result.verified and result.max_batch_size == 450


def test_three_killed_verifications_do_not_end_the_backing_off(tmp_path):
    # Real epochs cost 400 MiB more than trials: 900, 720 and 576 are killed; the fourth,
    # 20% further down, fits. With three the answer fell back, unverified, to the largest
    # measured batch below 576: batch 1.
    result, jobs = probe_curve(tmp_path, verify_extra=400 * MiB, kill_above=1350 * MiB)
    verifies = [j["batch_size"] for j in jobs if j["kind"] == "verify"]
    assert verifies == [900, 720, 576, 460]
    assert result.verified and result.max_batch_size == 460


def test_when_no_verification_fits_the_answer_is_below_them_all(tmp_path):
    # Real epochs cost 600 MiB more than trials at every batch: four verifications are
    # killed; the answer is the next measured batch below them, marked unverified.
    result, jobs = probe_curve(tmp_path, verify_extra=600 * MiB, kill_above=1350 * MiB)
    verifies = [j["batch_size"] for j in jobs if j["kind"] == "verify"]
    assert len(verifies) == 4 and not result.verified
    fitted_below = [t.batch_size for t in result.trials if t.fits and t.batch_size < min(verifies)]
    assert result.max_batch_size == max(fitted_below)


def test_workers_keep_a_gpu_sized_margin_by_default(tmp_path):
    result, _ = probe_curve(tmp_path, margin=None)
    assert result.margin == 0.05
    assert result.usable_bytes == 400 * MiB + int(1000 * MiB * 0.95)


def test_a_first_worker_that_is_killed_means_nothing_fits(tmp_path):
    with pytest.raises(BatchDoesNotFitError, match="first probe worker .* was killed"):
        probe_curve(tmp_path, kill_above=100 * MiB)


def test_a_typed_error_in_a_worker_is_raised_again_here(tmp_path):
    with pytest.raises(InvalidDataError, match="y has 3 columns"):
        probe_curve(tmp_path, error="y has 3 columns, the model outputs 1")


def test_a_crashed_worker_is_a_trial_error_quoting_its_output(tmp_path):
    with pytest.raises(TrialError, match="exited with status 3(.|\n)*Segmentation fault"):
        probe_curve(tmp_path, crash=True)


def test_a_model_object_and_named_arrays_are_saved_for_workers(tmp_path):
    import keras

    from autobatch.data import as_training_data
    from autobatch.files import load_model, load_npz

    first = keras.Input((3,), name="first")
    second = keras.Input((2,), name="second")
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([first, second]))
    model = keras.Model({"first": first, "second": second}, out)
    model.compile("adam", "mse")
    x = {"first": np.ones((10, 3), "float32"), "second": np.zeros((10, 2), "float32")}
    data = as_training_data((x, np.ones((10, 1), "float32"), np.full(10, 2.0)))
    model_path, data_path = saved_for_workers(model, data, tmp_path)
    loaded_x, loaded_y, weights = load_npz(data_path)
    assert sorted(loaded_x) == ["first", "second"] and np.all(loaded_x["first"] == 1)
    assert loaded_y.shape == (10, 1) and np.all(weights == 2.0)
    assert load_model(model_path).count_params() == model.count_params()


def test_isolate_needs_arrays_and_files_need_each_other(tmp_path):
    import autobatch

    (tmp_path / "model.keras").write_text("not read")
    with pytest.raises(InvalidArgumentError, match="data is a tuple.*npz"):
        autobatch.probe(str(tmp_path / "model.keras"), (np.ones((4, 2)), np.ones(4)))
    with pytest.raises(InvalidArgumentError, match="isolate=False"):
        autobatch.probe(tmp_path / "model.keras", tmp_path / "d.npz", isolate=False)
    with pytest.raises(InvalidDataError, match="no such file"):
        autobatch.probe(tmp_path / "model.keras", tmp_path / "d.npz")


CUSTOM_LAYER_MODULE = '''
import keras


@keras.saving.register_keras_serializable(package="autobatch_test_layers")
class Doubled(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0
'''


def test_a_model_objects_custom_layers_are_imported_by_its_workers(tmp_path, monkeypatch):
    # A model object probed in workers automatically (it trained here) has no worker_imports
    # from its caller: the workers import what defines its classes, from where this process
    # found it (the zoo's batch attention model was refused, its layer unknown there).
    import importlib

    import keras

    from autobatch.data import as_training_data
    from autobatch.probing.isolated import Workers, _custom_object_modules

    package = tmp_path / "code" / "autobatch_test_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(CUSTOM_LAYER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    layers = importlib.import_module("autobatch_test_pkg.layers")
    model = keras.Sequential([keras.Input((3,)), layers.Doubled(), keras.layers.Dense(1)])
    model.compile("adam", "mse")

    modules, folders = _custom_object_modules(model)
    assert (modules, folders) == (["autobatch_test_pkg.layers"], [str(tmp_path / "code")])

    data = as_training_data((np.ones((16, 3), "float32"), np.ones((16, 1), "float32")))
    model_path, data_path = saved_for_workers(model, data, tmp_path)
    workers = Workers(model_path, data_path, memory_limit=None, imports=modules,
                      import_paths=folders)
    answer = workers.run("trial", 2, steps=1, stop_above_bytes=None)
    assert answer.outcome is not None and answer.outcome["peak_bytes"] > 0

"""probe() end to end on TensorFlow/CPU: real training steps, fake or real host memory."""

import json

import numpy as np
import pytest

import autobatch
from autobatch.memory.fake import FakeOutOfMemoryError
from autobatch.memory.host import HostMemory
from tests.conftest import make_mlp


def snapshot(model):
    optimizer = model.optimizer
    return {
        "weights": [np.array(v) for v in model.get_weights()],
        "optimizer_built": optimizer.built,
        "optimizer": [np.array(v.numpy()) for v in optimizer.variables] if optimizer.built else None,
        "iterations": int(optimizer.iterations.numpy()),
        "compile_config": model.get_compile_config(),
        "optimizer_config": optimizer.get_config(),
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after["optimizer_built"] == before["optimizer_built"]
    assert after["iterations"] == before["iterations"]
    assert after["compile_config"] == before["compile_config"]
    assert after["optimizer_config"] == before["optimizer_config"]
    for a, b in zip(after["weights"], before["weights"], strict=True):
        np.testing.assert_array_equal(a, b)
    if before["optimizer"] is not None:
        for a, b in zip(after["optimizer"], before["optimizer"], strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threshold", [1, 5, 37, 128, 300])
def test_exact_answer_against_fake_memory(mlp, regression_data, threshold):
    # peak = 1000 + 10 * batch; the limit makes exactly `threshold` fit.
    memory = autobatch.FakeMemory(limit_bytes=1000 + 10 * threshold, fixed_bytes=1000, bytes_per_sample=10)
    result = autobatch.probe(mlp, regression_data, memory=memory, margin=0.0, verbose=0)
    assert result.max_batch_size == threshold
    assert result.num_oom <= 2
    assert result.bytes_per_sample == pytest.approx(10) or result.num_trials <= 3
    assert all(t.steps >= 1 for t in result.trials if t.fits)


def test_never_above_the_number_of_samples(mlp, regression_data):
    memory = autobatch.FakeMemory(limit_bytes=10**12, fixed_bytes=0, bytes_per_sample=1)
    result = autobatch.probe(mlp, regression_data, memory=memory, verbose=0)
    assert result.max_batch_size == len(regression_data[0])
    assert result.stop_reason == "limited by the number of training samples"
    capped = autobatch.probe(mlp, regression_data, memory=memory, max_batch_size=100, verbose=0)
    assert capped.max_batch_size == 100


def test_margin_is_applied_and_reported(mlp, regression_data):
    memory = autobatch.FakeMemory(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    result = autobatch.probe(mlp, regression_data, memory=memory, margin=0.1, verbose=0)
    assert result.margin == 0.1
    assert result.usable_bytes == 4500  # baseline 0 + 90% of the 5000 free
    assert result.margin_bytes == 500
    assert result.max_batch_size == (4500 - 1000) // 10


def test_backend_minimum_margin_wins_over_a_small_fraction(mlp, regression_data):
    # Host RAM keeps at least 64 MiB: malloc's jumps are larger than 5% of a small cgroup.
    memory = autobatch.FakeMemory(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    memory.min_margin_bytes = 800
    result = autobatch.probe(mlp, regression_data, memory=memory, margin=0.1, verbose=0)
    assert result.usable_bytes == 4200 and result.margin_bytes == 800
    assert result.max_batch_size == (4200 - 1000) // 10
    from autobatch.memory.host import HostMemory

    assert HostMemory.min_margin_bytes == 64 * 2**20


def test_real_host_memory_under_an_explicit_limit(regression_data):
    """Real TF steps and real peak RSS: the answer's own training stays within the limit."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 2048)).astype("float32")
    y = rng.normal(size=(4096, 1)).astype("float32")
    model = make_mlp(2048)
    before = snapshot(model)
    memory = HostMemory()
    limit = memory.current_bytes() + 400 * 2**20
    result = autobatch.probe(model, (x, y), memory_limit=limit, verbose=0)

    assert result.limit_bytes == limit
    assert result.limit_source == "memory_limit argument"
    assert 1 <= result.max_batch_size <= 4096
    assert result.bytes_per_sample and result.bytes_per_sample > 0
    for trial in result.trials:
        assert trial.peak_bytes is not None and trial.peak_bytes > 0
        assert trial.fits == (trial.peak_bytes <= result.usable_bytes)
    assert max(t.peak_bytes for t in result.trials) <= limit, "a trial crossed the host limit"
    assert result.num_trials <= 14  # doubling from 1 to the 4096 samples, then quarter steps
    assert_unchanged(model, before)

    assert result.verified and result.verifications[-1].batch_size == result.max_batch_size
    assert result.verifications[-1].peak_bytes <= result.usable_bytes

    # Independent check: real training at the answer, as the README says, peaks within the limit.
    with memory.trial(result.max_batch_size) as reading:
        model.fit(
            x, y, batch_size=result.max_batch_size, epochs=2, validation_split=0.2, verbose=0
        )
    assert reading.peak_bytes <= limit


def test_model_restored_after_success_on_a_trained_model(regression_data):
    model = make_mlp()
    model.fit(*regression_data, batch_size=64, epochs=1, verbose=0)
    before = snapshot(model)
    assert before["optimizer_built"] and before["iterations"] > 0
    memory = autobatch.FakeMemory(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    autobatch.probe(model, regression_data, memory=memory, verbose=0)
    assert_unchanged(model, before)
    assert model.history is before.get("history", model.history)


def test_unbuilt_optimizer_stays_unbuilt_and_the_model_still_trains(mlp, regression_data):
    before = snapshot(mlp)
    memory = autobatch.FakeMemory(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    autobatch.probe(mlp, regression_data, memory=memory, verbose=0)
    assert_unchanged(mlp, before)
    assert not mlp.optimizer.built
    history = mlp.fit(*regression_data, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(mlp.optimizer.iterations.numpy()) == 16


def test_model_restored_after_out_of_memory_and_the_process_stays_usable(mlp, regression_data):
    before = snapshot(mlp)
    # Linear up to 30, then a wall: the line's jump past 30 runs out of memory.
    memory = autobatch.FakeMemory(limit_bytes=1500, peak_of=lambda b: 1000 + 10 * b if b <= 30 else 10**6)
    result = autobatch.probe(mlp, regression_data, memory=memory, verbose=0)
    assert result.max_batch_size == 30
    assert result.num_oom >= 1
    assert any(t.error == "out of memory" for t in result.trials)
    assert_unchanged(mlp, before)
    mlp.fit(*regression_data, batch_size=8, epochs=1, verbose=0)


class FailingMemory(autobatch.FakeMemory):
    """Raises ``error`` when the n-th trial starts."""

    def __init__(self, error, on_trial, **kwargs):
        super().__init__(**kwargs)
        self.error, self.on_trial = error, on_trial

    def before_trial(self, batch_size):
        super().before_trial(batch_size)
        if len(self.trial_batch_sizes) == self.on_trial:
            raise self.error


@pytest.mark.parametrize(
    "error,expected",
    [
        (KeyboardInterrupt(), KeyboardInterrupt),
        (RuntimeError("disk on fire"), autobatch.TrialError),
    ],
)
def test_model_restored_after_other_errors_and_ctrl_c(regression_data, error, expected):
    model = make_mlp()
    model.fit(*regression_data, batch_size=64, epochs=1, verbose=0)
    before = snapshot(model)
    memory = FailingMemory(error, on_trial=3, limit_bytes=10**9, fixed_bytes=1000, bytes_per_sample=10)
    with pytest.raises(expected):
        autobatch.probe(model, regression_data, memory=memory, verbose=0)
    assert_unchanged(model, before)


def test_non_oom_error_is_wrapped_with_its_cause(mlp):
    x = np.zeros((64, 8), "float32")
    y = np.zeros((64, 3, 5), "float32")  # the model outputs (batch, 1): the loss cannot broadcast
    with pytest.raises(autobatch.TrialError, match="not an out-of-memory error") as info:
        autobatch.probe(mlp, (x, y), memory=autobatch.FakeMemory(10**9), verbose=0)
    assert info.value.__cause__ is not None
    assert not isinstance(info.value.__cause__, FakeOutOfMemoryError)


def test_batch_one_not_fitting_says_how_much_it_needs(mlp, regression_data):
    memory = autobatch.FakeMemory(limit_bytes=1000, fixed_bytes=900, bytes_per_sample=200)
    with pytest.raises(autobatch.BatchDoesNotFitError, match=r"Batch size 1 ran out of memory.*shrink the model"):
        autobatch.probe(mlp, regression_data, memory=memory, verbose=0)
    fits_but_over_margin = autobatch.FakeMemory(limit_bytes=1000, fixed_bytes=900, bytes_per_sample=90)
    with pytest.raises(autobatch.BatchDoesNotFitError, match=r"peaked at 990 B.*usable memory is 950 B"):
        autobatch.probe(mlp, regression_data, memory=fits_but_over_margin, verbose=0)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"memory_limit": "lots"}, autobatch.InvalidArgumentError, r"memory_limit='lots' is not a memory size"),
        ({"memory_limit": -5}, autobatch.InvalidArgumentError, r"memory_limit=-5 is not a memory size"),
        ({"margin": 1.5}, autobatch.InvalidArgumentError, r"margin=1.5 is outside \[0, 1\)"),
        ({"steps_per_trial": 0}, autobatch.InvalidArgumentError, r"steps_per_trial=0"),
        ({"max_batch_size": 0}, autobatch.InvalidArgumentError, r"max_batch_size=0"),
        ({"verbose": "yes"}, autobatch.InvalidArgumentError, r"verbose='yes'; expected 0 .* or 1"),
    ],
)
def test_bad_arguments(mlp, regression_data, kwargs, error, match):
    with pytest.raises(error, match=match):
        autobatch.probe(mlp, regression_data, **{"verbose": 0, **kwargs})


def test_memory_and_memory_limit_together_is_an_error(mlp, regression_data):
    with pytest.raises(autobatch.InvalidArgumentError, match="Both memory= and memory_limit="):
        autobatch.probe(mlp, regression_data, memory=autobatch.FakeMemory(10**6), memory_limit="1GiB")


def test_uncompiled_model_and_non_models_are_rejected(regression_data):
    import keras

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    with pytest.raises(autobatch.InvalidModelError, match="is not compiled.*model.compile"):
        autobatch.probe(model, regression_data)
    with pytest.raises(autobatch.InvalidModelError, match="model is an int"):
        autobatch.probe(42, regression_data)
    # A path is a model file, probed in worker processes: then the data must be a file too.
    with pytest.raises(autobatch.InvalidArgumentError, match="model is a path.*npz"):
        autobatch.probe("model.keras", regression_data)
    assert issubclass(autobatch.InvalidModelError, TypeError)


def test_a_limit_below_current_use_is_explained(mlp, regression_data):
    with pytest.raises(autobatch.BatchDoesNotFitError, match="already in use"):
        autobatch.probe(mlp, regression_data, memory_limit="1MiB", verbose=0)


def test_unbatched_dataset_and_callable(mlp, regression_data):
    import tensorflow as tf

    x, y = regression_data
    memory = autobatch.FakeMemory(limit_bytes=1000 + 10 * 100, fixed_bytes=1000, bytes_per_sample=10)
    from_dataset = autobatch.probe(
        mlp, tf.data.Dataset.from_tensor_slices((x, y)), memory=memory, margin=0.0, verbose=0
    )
    assert from_dataset.max_batch_size == 100
    assert from_dataset.num_samples == len(x)

    def batches(batch_size):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)

    from_callable = autobatch.probe(mlp, batches, memory=memory, margin=0.0, verbose=0)
    assert from_callable.max_batch_size == 100
    assert from_callable.num_samples is None


def test_variable_length_dataset_is_probed_at_its_longest_element():
    import keras
    import tensorflow as tf

    lengths = [3, 9, 40, 7, 12]
    rows = [np.arange(n, dtype="float32")[:, None] for n in lengths]
    dataset = tf.data.Dataset.from_generator(
        lambda: ((r, np.float32(1.0)) for r in rows),
        output_signature=(tf.TensorSpec((None, 1), tf.float32), tf.TensorSpec((), tf.float32)),
    )
    seen_lengths = []

    class RecordLength(keras.layers.Layer):
        def call(self, inputs):
            seen_lengths.append(inputs.shape[1])
            return inputs

    model = keras.Sequential(
        [keras.Input((None, 1)), RecordLength(), keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    result = autobatch.probe(model, dataset, memory=autobatch.FakeMemory(10**9), verbose=0)
    assert result.max_batch_size == len(lengths)
    assert set(seen_lengths) - {None} == {40}  # None: Keras' symbolic build


def test_result_round_trips_through_json(mlp, regression_data, tmp_path):
    memory = autobatch.FakeMemory(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    result = autobatch.probe(mlp, regression_data, memory=memory, verbose=0)
    path = tmp_path / "probe.json"
    result.to_json(path)
    loaded = autobatch.ProbeResult.from_json(path)
    assert loaded == result
    assert json.loads(path.read_text())["num_trials"] == result.num_trials
    assert autobatch.load_result(path) == result


def test_verbose_zero_prints_nothing(mlp, regression_data, capfd):
    memory = autobatch.FakeMemory(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    autobatch.probe(mlp, regression_data, memory=memory, verbose=0)
    captured = capfd.readouterr()
    assert "batch" not in captured.out + captured.err


def test_every_trial_starts_after_freed_memory_is_handed_back(mlp, regression_data):
    events = []

    class Recording(autobatch.FakeMemory):
        def release(self):
            events.append("release")
            super().release()

        def before_trial(self, batch_size):
            events.append(batch_size)
            super().before_trial(batch_size)

    memory = Recording(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    result = autobatch.probe(mlp, regression_data, memory=memory, verbose=0, use_cache=False)

    trials = [e for e in events if e != "release"]
    # the warm-up step, the measured trials, then the verifications of the answer
    assert len(trials) == result.num_trials + 1 + len(result.verifications)
    for index, event in enumerate(events):
        if event != "release":
            assert index > 0 and events[index - 1] == "release", events


def test_the_limit_is_read_after_the_model_state_is_saved(mlp, regression_data, monkeypatch):
    # Where the saved state sits on a RAM disk (tmpfs) it takes memory: the room must be
    # measured with that copy in place, or trials could aim past the real limit.
    import contextlib
    import importlib

    probe_module = importlib.import_module("autobatch.probing.probe")

    events = []
    real_preserved = probe_module.preserved

    @contextlib.contextmanager
    def recording_preserved(model):
        with real_preserved(model):
            events.append("saved")
            yield

    class Recording(autobatch.FakeMemory):
        def limit_bytes(self):
            events.append("limit")
            return super().limit_bytes()

    monkeypatch.setattr(probe_module, "preserved", recording_preserved)
    memory = Recording(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    autobatch.probe(mlp, regression_data, memory=memory, verbose=0, use_cache=False)

    assert events[events.index("saved") + 1] == "limit"


def test_a_trial_runs_the_partial_batch_that_ends_each_pass_of_real_training():
    # Run eagerly, a layer sees every batch's real size. fit(validation_split=0.2) on 100
    # samples at batch 30 trains on 80, so every pass ends with a batch of 20 (which costs
    # memory of its own), then validates on the last 20 in one batch; the trial must too.
    import keras

    from autobatch.data import ArrayData
    from autobatch.memory.fake import FakeMemory
    from autobatch.probing.trial import run_trial

    shapes = set()

    class Recorder(keras.layers.Layer):
        def call(self, inputs):
            shapes.add(inputs.shape[0])
            return inputs

    model = keras.Sequential([keras.Input((4,)), Recorder(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    data = ArrayData(np.zeros((100, 4), "float32"), np.zeros((100, 1), "float32"))
    memory = FakeMemory(limit_bytes=10**9, fixed_bytes=0, bytes_per_sample=1)

    outcome = run_trial(model, data, 30, memory, steps=2)

    assert outcome.steps == 6  # two passes of 2 full batches and the partial one
    assert shapes - {None} == {30, 20}  # None: the symbolic build call


def test_the_default_margin_is_the_memory_backends(mlp, regression_data):
    # Host RAM keeps 10% (the same step peaks several percent apart between runs, and
    # running out kills the process); a GPU allocator, like the fake, 5%.
    from autobatch.memory.host import HostMemory

    assert HostMemory.default_margin > autobatch.FakeMemory.default_margin
    fake = autobatch.FakeMemory(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    result = autobatch.probe(mlp, regression_data, memory=fake, verbose=0)
    assert result.margin == fake.default_margin == 0.05
    free = 5000 - result.baseline_bytes
    assert result.usable_bytes == result.baseline_bytes + int(free * 0.95)
    host = autobatch.probe(
        mlp, regression_data, memory_limit="+256MiB", max_batch_size=8, use_cache=False, verbose=0
    )
    assert host.margin == HostMemory.default_margin


def test_a_model_that_trained_here_is_probed_in_workers_on_host_ram(mlp, regression_data, monkeypatch):
    # TensorFlow keeps what training used pooled in the process; in-process trials reuse it,
    # stay flat, then jump: the probe goes to worker processes, and says so.
    from autobatch.probing import isolated

    mlp.fit(*regression_data, batch_size=64, epochs=1, verbose=0)
    calls = []
    monkeypatch.setattr(isolated, "probe_saved_model", lambda *args, **kwargs: calls.append(args) or "isolated")
    with pytest.warns(UserWarning, match=r"already trained in this process"):
        assert autobatch.probe(mlp, regression_data, verbose=0) == "isolated"
    assert calls and calls[0][0] is mlp


def test_only_a_trained_model_on_host_ram_with_arrays_goes_to_workers(mlp, regression_data):
    import tensorflow as tf

    from autobatch.probing.probe import _trained_here_on_host_ram

    assert not _trained_here_on_host_ram(mlp, regression_data, None)  # not trained yet
    mlp.optimizer.build(mlp.trainable_variables)
    mlp.optimizer.iterations.assign(7)  # as when loaded with its optimizer state
    assert not _trained_here_on_host_ram(mlp, regression_data, None)  # not trained here
    mlp.fit(*regression_data, batch_size=256, epochs=1, verbose=0)
    fake = autobatch.FakeMemory(limit_bytes=10**6, fixed_bytes=100, bytes_per_sample=10)
    assert not _trained_here_on_host_ram(mlp, regression_data, fake)  # the caller's backend
    dataset = tf.data.Dataset.from_tensor_slices(regression_data)
    assert not _trained_here_on_host_ram(mlp, dataset, None)  # workers need arrays
    with pytest.warns(UserWarning, match="isolate=False to probe here anyway"):
        assert _trained_here_on_host_ram(mlp, regression_data, None)


def test_isolate_false_keeps_a_trained_model_in_process(mlp, regression_data, recwarn):
    mlp.fit(*regression_data, batch_size=256, epochs=1, verbose=0)
    result = autobatch.probe(mlp, regression_data, isolate=False, memory_limit="+256MiB", verbose=0)
    assert not result.isolated and result.max_batch_size > 0
    assert not [w for w in recwarn if "already trained" in str(w.message)]


def test_no_room_for_a_worker_beside_a_trained_process_is_a_clear_refusal(mlp, regression_data, monkeypatch):
    from autobatch.probing import isolated

    def first_worker_killed(*args, **kwargs):
        raise autobatch.WorkerDoesNotFitError("The first probe worker (batch size 1) was killed.")

    mlp.fit(*regression_data, batch_size=64, epochs=1, verbose=0)
    monkeypatch.setattr(isolated, "probe_saved_model", first_worker_killed)
    with pytest.warns(UserWarning), pytest.raises(
        autobatch.WorkerDoesNotFitError, match=r"does not fit beside this process\. Probe before training"
    ):
        autobatch.probe(mlp, regression_data, verbose=0)

"""The probe's answer verified as fit uses it, the host watchdog, and what a probe leaves behind."""

import os

import numpy as np
import pytest

import autobatch
from autobatch.data import as_training_data
from autobatch.memory.host import HostMemory
from autobatch.probing.state import remove_stale_folders
from autobatch.probing.strategy import Observation, ProbeStrategy
from autobatch.probing.trial import TrialOutcome, run_trial
from tests.conftest import make_mlp


class GrowsWithTraining(autobatch.FakeMemory):
    """Peak memory that grows by ``per_step`` bytes a training step for the first 30 steps,
    as the benchmark's Transformer does on TF/CPU: short trials never see all of it."""

    def __init__(self, per_step, **kwargs):
        super().__init__(**kwargs)
        self.per_step = per_step

    def before_trial(self, batch_size):
        self.steps = 0
        super().before_trial(batch_size)

    def after_step(self, *, validation=False):
        super().after_step(validation=validation)
        if not validation:
            self.steps += 1
            grown = self.peak_for(self._batch_size) + self.per_step * min(self.steps, 30)
            self._set_peak(max(self._peak, grown))


@pytest.fixture
def larger_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 8)).astype("float32")
    return x, (x @ rng.normal(size=(8, 1))).astype("float32")


@pytest.mark.parametrize("catchable", [True, False])
def test_answer_backs_off_when_memory_grows_with_training(mlp, larger_data, catchable):
    # Trials run 8 steps; real epochs run more, and the peak keeps growing for 30 steps: the
    # verification at the trials' answer passes the margin and backs off. Host RAM:
    # FakeMemory raises FakeProcessKilled past the limit, so this also says "never killed".
    memory = GrowsWithTraining(
        50, limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10, oom_is_catchable=catchable
    )
    result = autobatch.probe(mlp, larger_data, memory=memory, margin=0.2, verbose=0)

    first, last = result.verifications[0], result.verifications[-1]
    assert not first.fits and first.error in ("above the safety margin", "out of memory")
    if not catchable:
        # Host RAM: what the verification allocated stays pooled in the process, and another
        # one on top of it could cross the limit: the answer backs off 10%, unverified.
        assert len(result.verifications) == 1 and not result.verified
        assert result.max_batch_size <= 0.9 * first.batch_size
        return
    assert last.fits and result.verified
    assert result.max_batch_size == last.batch_size < first.batch_size
    bound = result.usable_bytes + result.margin_bytes // 2
    assert last.peak_bytes <= bound
    assert last.epoch_peak_bytes[0] < last.epoch_peak_bytes[-1] or last.train_steps >= 30


def test_trials_validate_at_their_batch_size_so_the_host_probe_survives_it(mlp, regression_data):
    # Validating costs 5 bytes a sample more, at the training batch size: trials validate as
    # fit does, so their line includes it and no step up can be killed by it.
    memory = autobatch.FakeMemory(
        limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10, validation_bytes_per_sample=5,
        oom_is_catchable=False,
    )
    result = autobatch.probe(mlp, regression_data, memory=memory, margin=0.2, verbose=0)
    assert result.verified
    assert memory.peak_for(result.max_batch_size, validating=True) <= result.usable_bytes + result.margin_bytes // 2
    assert all(t.peak_bytes == memory.peak_for(t.batch_size, validating=True) for t in result.trials)


def test_answer_is_verified_with_validation_at_the_same_batch(mlp, regression_data):
    memory = autobatch.FakeMemory(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    result = autobatch.probe(mlp, regression_data, memory=memory, margin=0.1, verbose=0)
    assert result.verified and len(result.verifications) == 1
    verification = result.verifications[0]
    assert verification.batch_size == result.max_batch_size
    assert verification.stable  # a flat peak stops after the minimum two epochs
    assert verification.epochs == 2
    # 512 samples: 409 train (the last fifth validates) -> one full batch and a partial one.
    full, partial = divmod(512 - 512 // 5, result.max_batch_size)
    assert verification.train_steps == 2 * (full + (partial > 0))
    from autobatch import report

    assert "Verified with 2 real epochs" in report.probe_summary(result)


def test_result_round_trips_with_its_verifications(mlp, regression_data):
    memory = autobatch.FakeMemory(limit_bytes=5000, fixed_bytes=1000, bytes_per_sample=10)
    result = autobatch.probe(mlp, regression_data, memory=memory, verbose=0)
    again = autobatch.ProbeResult.from_json(result.to_json())
    assert again == result
    assert again.verifications[0].epoch_peak_bytes == result.verifications[0].epoch_peak_bytes
    assert again.left_behind_bytes == result.left_behind_bytes == 0


def test_watchdog_ends_a_real_host_trial_at_its_bound():
    # A trial whose bound is already passed stops after its first step instead of running
    # the rest, which on host RAM could carry on to the limit.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4096, 64)).astype("float32"), rng.normal(size=(4096, 1)).astype("float32")
    model = make_mlp(64)
    memory = HostMemory()
    data = as_training_data((x, y)).for_trials()
    bound = memory.current_bytes() - 1
    outcome = run_trial(model, data, 64, memory, steps=5, stop_above_bytes=bound)
    assert outcome.stopped_early
    assert outcome.steps == 1
    assert outcome.peak_bytes > bound


def test_real_host_probe_reports_what_it_leaves_and_its_answer_trains_in_the_same_process():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 128)).astype("float32")
    y = rng.integers(0, 10, size=1024).astype("int32")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((128,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    memory = HostMemory()
    limit = memory.current_bytes() + 300 * 2**20
    result = autobatch.probe(model, (x, y), memory_limit=limit, verbose=0)

    assert result.verified
    assert result.memory_before_bytes is not None and result.memory_after_bytes is not None
    assert result.left_behind_bytes == result.memory_after_bytes - result.memory_before_bytes
    # The notebook case: train right after the probe, in this process, as the README says.
    with memory.trial(result.max_batch_size) as reading:
        model.fit(x, y, batch_size=result.max_batch_size, epochs=2, validation_split=0.2, verbose=0)
    assert reading.peak_bytes <= limit


def test_a_trial_past_the_limit_is_reported_as_over_the_limit():
    from autobatch.probing.answer import trial_record

    strategy = ProbeStrategy(limit_bytes=1000, baseline_bytes=0, margin=0.1, oom_is_catchable=False)
    over = TrialOutcome(64, 1200, 2, 0.01, 0.1, False)
    past_margin = TrialOutcome(32, 950, 2, 0.01, 0.1, False)
    assert trial_record(over, True, strategy, Observation(64, 1200)).error == "over the memory limit"
    assert trial_record(past_margin, True, strategy, Observation(32, 950)).error == (
        "above the safety margin"
    )


def test_stale_state_folders_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / "autobatch-state-999999999-abc"
    alive = tmp_path / f"autobatch-state-{os.getpid()}-def"
    unrelated = tmp_path / "autobatch-state-xyz"
    for folder in (dead, alive, unrelated):
        folder.mkdir()
        (folder / "model-0.bin").write_bytes(b"\0" * 16)
    assert remove_stale_folders(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and unrelated.exists()

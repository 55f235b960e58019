"""Per-replica probing under data parallelism: the pure search in per-replica steps, and real
probes and searches on two logical CPU devices (TensorFlow's MirroredStrategy, Keras'
DataParallel on JAX), each in a subprocess so the devices exist before the framework starts."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autobatch.errors import InvalidArgumentError
from autobatch.probing.replicas import ReplicaProbeStrategy, multiple_below
from autobatch.probing.strategy import Observation, ProbeStrategy
from autobatch.results import ProbeResult
from autobatch.search.space import build_space

ROOT = Path(__file__).resolve().parents[2]


def run_search(strategy, peak_of, limit):
    """Drive ``strategy`` against a device that runs out above ``limit`` bytes."""
    history = []
    while (proposal := strategy.propose(history)) is not None:
        peak = peak_of(proposal.batch_size)
        history.append(Observation(proposal.batch_size, peak if peak <= limit else None))
    return history, strategy.answer(history)


@pytest.mark.parametrize("oom_is_catchable", [True, False])
@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_every_batch_is_a_multiple_of_the_replicas(num_replicas, oom_is_catchable):
    # One replica's device: peak = 100 + 20 * (its share of the global batch); 45 per replica fit.
    def peak_of(batch_size):
        return 100 + 20 * batch_size // num_replicas

    settings = dict(limit_bytes=1000, baseline_bytes=0, margin=0.0, oom_is_catchable=oom_is_catchable)
    strategy = ReplicaProbeStrategy(num_replicas, max_batch_size=10_000, **settings)
    history, answer = run_search(strategy, peak_of, 1000)

    assert all(o.batch_size % num_replicas == 0 for o in history)
    assert answer % num_replicas == 0
    assert peak_of(answer) <= 1000 < peak_of(answer + num_replicas)
    # The per-replica search is the one-replica search, scaled.
    plain = ProbeStrategy(max_batch_size=10_000 // num_replicas, **settings)
    plain_history, plain_answer = run_search(plain, lambda b: 100 + 20 * b, 1000)
    assert [o.batch_size for o in history] == [num_replicas * o.batch_size for o in plain_history]
    assert answer == num_replicas * plain_answer
    line = strategy.memory_model(history)
    assert line.bytes_per_sample == pytest.approx(20 / num_replicas)  # per global sample


def test_an_interpolated_answer_is_rounded_down_to_a_multiple():
    strategy = ReplicaProbeStrategy(4, limit_bytes=1000, baseline_bytes=0, margin=0.1)
    # Batch 8 fits (peak 400), batch 16 ran past the 900 usable: 900 is reached at batch 14.6.
    history = [Observation(8, 400), Observation(16, 1000)]
    assert ProbeStrategy(limit_bytes=1000, baseline_bytes=0, margin=0.1).answer(history) == 14
    assert strategy.answer(history) == 12
    assert multiple_below(45, 4) == 44 and multiple_below(3, 4) == 0


def test_fewer_samples_than_replicas_is_refused():
    with pytest.raises(InvalidArgumentError, match=r"largest batch allowed is 3 .* below the 4 replicas"):
        ReplicaProbeStrategy(4, max_batch_size=3, limit_bytes=1000, baseline_bytes=0, margin=0.0)


def test_the_search_space_holds_global_batches_of_whole_replicas():
    space = build_space(num_samples=1000, max_batch_size=90, endless=False, batch_sizes=None,
                        steps_per_epoch=None, num_replicas=3)
    assert space.batch_sizes == (15, 30, 63, 90)
    assert build_space(num_samples=1000, max_batch_size=90, endless=False, batch_sizes=None,
                       steps_per_epoch=None).batch_sizes == (16, 32, 64, 90)
    with pytest.raises(InvalidArgumentError, match=r"holds \[32\], not multiples of the 3 replicas"):
        build_space(num_samples=1000, max_batch_size=90, endless=False, batch_sizes=[30, 32],
                    steps_per_epoch=None, num_replicas=3)


def test_result_fields_round_trip_and_default_for_older_results():
    fields = dict(max_batch_size=44, limit_bytes=1000, limit_source="fake", backend="tensorflow",
                  device="fake", memory_source="fake", bytes_per_sample=10.0, fixed_bytes=100.0,
                  margin=0.0, baseline_bytes=0, usable_bytes=1000, num_samples=96)
    result = ProbeResult(**fields, num_replicas=2, per_replica_batch_size=22,
                         replica_devices=["CPU:0", "CPU:1"])
    assert ProbeResult.from_json(result.to_json()) == result
    assert json.loads(result.to_json())["per_replica_batch_size"] == 22
    older = ProbeResult(**fields)  # a result stored before replicas were counted
    assert (older.num_replicas, older.per_replica_batch_size) == (1, 44)


def test_the_probe_cache_tells_replica_counts_apart(mlp, regression_data):
    from autobatch import FakeMemory, cache

    def key(**replicas):
        return cache.probe_key(mlp, regression_data, FakeMemory(1000), margin=0.0, memory_limit=None,
                               max_batch_size=None, **replicas)

    assert key(num_replicas=2) != key(num_replicas=1) == key()  # keys stored before still match


# Each script prints one JSON line: the probe's fields, the search's batch sizes, and what the
# Recorder layer saw: (replica, rows) for every training step that ran.
TENSORFLOW_SCRIPT = """
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras

seen = set()

class Recorder(keras.layers.Layer):
    def call(self, x):
        context = tf.distribute.get_replica_context()
        if context is not None:  # None while Keras builds the model, outside any step
            record = lambda replica, rows: seen.add((int(replica), int(rows)))
            tf.py_function(record, [context.replica_id_in_sync_group, tf.shape(x)[0]], [])
        return x

    def compute_output_shape(self, shape):
        return shape

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = build_model(Recorder())
"""

JAX_SCRIPT = """
import jax
import keras

seen = set()

class Recorder(keras.layers.Layer):
    def call(self, x):
        # Called while XLA compiles a step: how the batch is split over the devices.
        def record(sharding):
            for device, index in sharding.devices_indices_map(x.shape).items():
                rows = index[0]
                seen.add((device.id, len(range(*rows.indices(x.shape[0])))))
        jax.debug.inspect_array_sharding(x, callback=record)
        return x

    def compute_output_shape(self, shape):
        return shape

keras.distribution.set_distribution(keras.distribution.DataParallel())
model = build_model(Recorder())
"""

COMMON = """
import json, sys, tempfile
import numpy as np
import autobatch
from autobatch.report import probe_summary

def build_model(recorder):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), recorder, keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model

{framework}

rng = np.random.default_rng(0)
x = rng.normal(size=(100, 8)).astype("float32")
y = x.sum(axis=1, keepdims=True)
# One replica's device: 100 bytes fixed and 100 per sample of its share; 9 samples fit on
# each, so the largest global batch is 18 (a single device would take 9).
memory = autobatch.FakeMemory(limit_bytes=1000, peak_of=lambda b: 100 + 100 * -(-b // 2))
weights = [w.copy() for w in model.get_weights()]
result = autobatch.probe(model, (x, y), memory=memory, margin=0.0, use_cache=False, verbose=0)
probe_steps = sorted(seen)
seen.clear()
search = autobatch.tune(model, (x, y), probe=result, memory=memory, tuner="grid",
                        steps_per_epoch=[1.0], budget_samples=100, patience=None,
                        directory=tempfile.mkdtemp(), verbose=0)
print(json.dumps({{
    "result": result.to_dict(), "summary": probe_summary(result),
    "tried": memory.trial_batch_sizes, "probe_steps": probe_steps,
    "search_batch_sizes": sorted({{t.batch_size for t in search.trials}}),
    "search_steps": sorted(seen),
    "unchanged": all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights())),
}}))
"""


def run_on_two_devices(framework_script, **environment):
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COMMON).format(framework=framework_script)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **environment},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def check_two_replicas(report, devices):
    result = report["result"]
    assert result["num_replicas"] == 2
    assert result["max_batch_size"] == 18 and result["per_replica_batch_size"] == 9
    assert result["replica_devices"] == devices
    assert "18 (9 per replica x 2 replicas)" in report["summary"]
    assert all(size % 2 == 0 for size in report["tried"])  # warm-up, trials, verifications
    assert report["unchanged"]
    # Both replicas trained, each on half of every global batch the probe ran.
    ran = {t["batch_size"] for t in result["trials"] if t["fits"]} | {result["max_batch_size"]}
    for replica in (0, 1):
        assert {(replica, size // 2) for size in ran} <= set(map(tuple, report["probe_steps"]))
    assert report["search_batch_sizes"] and all(s % 2 == 0 for s in report["search_batch_sizes"])
    assert {replica for replica, _ in report["search_steps"]} == {0, 1}


def test_mirrored_strategy_on_two_logical_cpus():
    report = run_on_two_devices(TENSORFLOW_SCRIPT, KERAS_BACKEND="tensorflow")
    check_two_replicas(report, ["CPU:0", "CPU:1"])


def test_data_parallel_on_two_jax_cpu_devices():
    has_jax = subprocess.run([sys.executable, "-c", "import jax"], capture_output=True).returncode == 0
    if not has_jax:
        pytest.skip("jax is not installed")
    report = run_on_two_devices(
        JAX_SCRIPT, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    check_two_replicas(report, ["cpu:0", "cpu:1"])

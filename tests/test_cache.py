"""The probe cache: the key changes with each part that decides memory, and never more; entries
are written atomically, and a damaged entry warns instead of failing."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import pytest

import autobatch
from autobatch import cache
from autobatch.memory.fake import FakeMemory

LIMIT = 10_000


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOBATCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "probe"


def build(units=16, *, optimizer="adam", jit_compile=False, dtype=None, frozen=False, input_dim=8):
    import keras

    keras.utils.set_random_seed(0)
    first = keras.layers.Dense(units, activation="relu", dtype=dtype)
    first.trainable = not frozen
    model = keras.Sequential([keras.Input((input_dim,)), first, keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return model


def arrays(num_samples=256, dtype="float32", input_dim=8):
    x = np.zeros((num_samples, input_dim), dtype=dtype)
    y = np.zeros((num_samples, 1), dtype="float32")
    return x, y


def key(model=None, data=None, memory=None, **probe_options):
    options = {"margin": 0.05, "memory_limit": None, "max_batch_size": None, **probe_options}
    return cache.probe_key(
        model if model is not None else build(),
        data if data is not None else arrays(),
        memory if memory is not None else FakeMemory(LIMIT, 100, 10),
        **options,
    )


def probe_result(max_batch_size=90, *, peak=1000, baseline=0, margin=0.0):
    trial = autobatch.ProbeTrial(
        batch_size=max_batch_size, peak_bytes=peak, seconds_per_step=0.01,
        samples_per_second=max_batch_size / 0.01, fits=True, fitted=True, steps=3,
    )
    return autobatch.ProbeResult(
        max_batch_size=max_batch_size, limit_bytes=LIMIT, limit_source="fake limit",
        backend="tensorflow", device="fake device", memory_source="modelled peak",
        bytes_per_sample=10.0, fixed_bytes=100.0, margin=margin, baseline_bytes=baseline,
        usable_bytes=LIMIT, num_samples=256, trials=[trial], stop_reason="test",
    )


def test_the_same_model_rebuilt_has_the_same_key():
    # Rebuilding gets new auto-generated names ("dense_7", "adam_3"): still the same key.
    first, second = key(build()), key(build())
    assert first == second
    assert len(first) == 64 and int(first, 16) >= 0


def _mixed_precision_model():
    import keras

    keras.config.set_dtype_policy("mixed_float16")
    try:
        return build()
    finally:
        keras.config.set_dtype_policy("float32")


CHANGES = {
    "model config": lambda: key(build(units=32)),
    "weights dtype": lambda: key(build(dtype="float64")),
    "trainable weights": lambda: key(build(frozen=True)),
    "dtype policy": lambda: key(_mixed_precision_model()),
    "optimizer config": lambda: key(build(optimizer="sgd")),
    "jit_compile": lambda: key(build(jit_compile=True)),
    "number of samples": lambda: key(data=arrays(num_samples=128)),
    "input dtype": lambda: key(data=arrays(dtype="float64")),
    "input shape": lambda: key(build(input_dim=4), data=arrays(input_dim=4)),
    "sample weights": lambda: key(data=(*arrays(), np.ones(256, "float32"))),
    "device name": lambda: key(memory=_renamed_device(FakeMemory(LIMIT, 100, 10))),
    "device memory": lambda: key(memory=FakeMemory(2 * LIMIT, 100, 10)),
    "fake memory curve": lambda: key(memory=FakeMemory(LIMIT, 100, 20)),
    "out of memory catchable": lambda: key(memory=FakeMemory(LIMIT, 100, 10, oom_is_catchable=False)),
    "margin": lambda: key(margin=0.1),
    "memory_limit": lambda: key(memory_limit="1GiB"),
    "max_batch_size": lambda: key(max_batch_size=64),
    "steps_per_trial": lambda: key(steps_per_trial=5),
}


def _renamed_device(memory):
    memory.device = "another fake device"
    return memory


@pytest.mark.parametrize("part", sorted(CHANGES))
def test_changing_any_part_changes_the_key(part):
    assert CHANGES[part]() != key()


@pytest.mark.parametrize(
    "module, name, value",
    [
        ("autobatch.cache", "_keras_backend", lambda: "jax"),
        ("autobatch.cache", "library_versions", lambda: {"keras": "9.9.9"}),
    ],
    ids=["keras backend", "library versions"],
)
def test_backend_and_versions_change_the_key(monkeypatch, module, name, value):
    before = key()
    monkeypatch.setattr(sys.modules[module], name, value)
    assert key() != before


def test_allocator_environment_changes_the_key(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    before = key()
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level=0")
    assert key() != before


def test_values_of_the_data_do_not_change_the_key():
    x, y = arrays()
    assert key(data=(x + 1.0, y - 1.0)) == key(data=(x, y))


def test_a_probe_leaves_the_key_unchanged(regression_data):
    # The lead computes the key before probing; a second probe of the same model must hit.
    model = build()
    memory = FakeMemory(50_000, 1_000, 64)
    before = key(model, regression_data, memory)
    autobatch.probe(model, regression_data, memory=memory, verbose=0)
    assert key(model, regression_data, memory) == before


def test_a_callable_cannot_be_keyed_and_is_never_cached():
    assert key(data=lambda batch_size: None) is None
    assert cache.load(None) is None
    cache.store(None, probe_result())  # nothing to do, nothing raised


def test_store_then_load_round_trips_and_says_from_cache(cache_dir):
    result = probe_result()
    cache.store(key(), result)
    loaded = cache.load(key())
    assert loaded is not None and loaded.from_cache
    assert dataclasses.replace(loaded, from_cache=False) == result
    assert [p.name for p in cache_dir.iterdir()] == [f"{key()}.json"]


def test_a_missing_entry_is_a_silent_miss(recwarn):
    assert cache.load(key()) is None
    assert not recwarn.list


def test_directory_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOBATCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.probe_dir() == tmp_path / "xdg" / "autobatch" / "probe"


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"key": "someone else", "result": {}}', '{"key": "KEY"}', ""],
    ids=["invalid json", "other key", "no result", "empty"],
)
def test_a_corrupt_entry_warns_and_misses(cache_dir, content):
    k = key()
    cache_dir.mkdir(parents=True)
    (cache_dir / f"{k}.json").write_text(content.replace("KEY", k))
    with pytest.warns(UserWarning, match=r"Ignoring the probe cache entry .* probes again"):
        assert cache.load(k) is None


def test_an_entry_is_replaced_atomically(cache_dir, monkeypatch):
    k = key()
    cache.store(k, probe_result(90))

    def interrupted(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.warns(UserWarning, match="Could not write the probe cache entry"):
        cache.store(k, probe_result(50))
    monkeypatch.undo()
    # The old entry is whole, and no temporary file is left behind.
    assert [p.name for p in cache_dir.iterdir()] == [f"{k}.json"]
    assert json.loads((cache_dir / f"{k}.json").read_text())["result"]["max_batch_size"] == 90


def test_an_unwritable_directory_warns_instead_of_failing(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("AUTOBATCH_CACHE_DIR", str(blocker))  # probe/ cannot be created in a file
    with pytest.warns(UserWarning, match="AUTOBATCH_CACHE_DIR"):
        cache.store(key(), probe_result())


def test_a_hit_that_no_longer_fits_the_free_memory_is_a_miss():
    # Cached: batch 90 took 1000 bytes above the baseline. Now only 500 are free.
    cache.store(key(), probe_result(90, peak=1000))
    assert cache.load(key(), FakeMemory(LIMIT, 100, 10)) is not None
    assert cache.load(key(), FakeMemory(500, 100, 10)) is None


def test_a_key_that_is_not_a_digest_is_refused():
    with pytest.raises(ValueError, match="not a SHA-256 hex digest"):
        cache.load("../../etc/passwd")


def test_a_relative_memory_limit_is_found_again_though_memory_moved(regression_data):
    # "+SIZE" resolves against the memory in use now, which moves between runs; the key must
    # not move with it, or the demo and the CLI default would never hit the cache. (Above the
    # 64 MiB that the host probe always keeps free, or batch 1 would not fit.)
    model = build()
    # max_batch_size keeps each real probe to a few trials: the key is what is tested.
    first = autobatch.probe(model, regression_data, memory_limit="+192MiB", max_batch_size=16, verbose=0)
    ballast = np.ones(4 * 2**20)  # 32 MiB more in use: the resolved limit moves up with it
    second = autobatch.probe(model, regression_data, memory_limit="+192MiB", max_batch_size=16, verbose=0)
    del ballast

    assert not first.from_cache
    assert second.from_cache
    assert second.max_batch_size == first.max_batch_size
    spelled_otherwise = autobatch.probe(
        model, regression_data, memory_limit=" +201326592", max_batch_size=16, verbose=0
    )
    assert spelled_otherwise.from_cache
    other = autobatch.probe(model, regression_data, memory_limit="+256MiB", max_batch_size=16, verbose=0)
    assert not other.from_cache

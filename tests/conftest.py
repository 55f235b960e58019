"""Shared fixtures: tiny compiled Keras models and data that train in milliseconds on CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture
def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 1))).astype("float32")
    return x, y


def make_mlp(input_dim=8, *, optimizer="adam", seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((input_dim,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


@pytest.fixture
def mlp():
    return make_mlp()


@pytest.fixture(autouse=True)
def _private_probe_cache(tmp_path, monkeypatch):
    """Tests never write to ~/.cache, and never reuse each other's probes."""
    monkeypatch.setenv("AUTOBATCH_CACHE_DIR", str(tmp_path / "autobatch-cache"))

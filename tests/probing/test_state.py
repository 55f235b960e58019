"""preserved(): the model comes back exactly as it was, and the saved copy is not held in RAM."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

from autobatch.errors import AutobatchError
from autobatch.probing import state
from autobatch.probing.state import preserved
from tests.conftest import make_mlp


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def test_values_come_back_after_training_and_the_folder_is_removed(regression_data, monkeypatch):
    model = make_mlp()
    x, y = regression_data
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # builds the optimizer: state to keep
    weights, slots = _values(model.variables), _values(model.optimizer.variables)
    metrics = _values(model.metrics_variables)
    optimizer = model.optimizer
    folders = []
    real = tempfile.TemporaryDirectory

    def recording(*args, **kwargs):
        folder = real(*args, **kwargs)
        folders.append(Path(folder.name))
        return folder

    monkeypatch.setattr(tempfile, "TemporaryDirectory", recording)
    with preserved(model):
        saved = sorted(p.name for p in folders[0].iterdir())
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    # One file per model and optimizer variable: the copy is on disk, not in this process.
    assert len(saved) >= len(weights) + len(slots)
    assert not folders[0].exists()
    for after, before in zip(_values(model.variables), weights, strict=True):
        np.testing.assert_array_equal(after, before)
    for after, before in zip(_values(model.optimizer.variables), slots, strict=True):
        np.testing.assert_array_equal(after, before)
    for after, before in zip(_values(model.metrics_variables), metrics, strict=True):
        np.testing.assert_array_equal(after, before)
    assert model.optimizer is optimizer


def test_bfloat16_and_scalar_variables_round_trip():
    import keras

    variables = [
        keras.Variable(np.arange(6, dtype="float32").reshape(2, 3), dtype="bfloat16"),
        keras.Variable(7, dtype="int64"),
    ]

    class Holder:  # just what preserved() reads off a model
        optimizer = type("Unused", (), {"built": True, "variables": []})()

    holder = Holder()
    holder.variables = variables
    before = _values(variables)
    with preserved(holder):
        variables[0].assign(np.zeros((2, 3), dtype="float32"))
        variables[1].assign(0)
    after = _values(variables)
    assert after[0].dtype == before[0].dtype
    np.testing.assert_array_equal(after[0], before[0])
    assert int(after[1]) == 7


def test_restored_on_error():
    model = make_mlp()
    weights = _values(model.variables)
    with pytest.raises(KeyboardInterrupt):
        with preserved(model):
            for variable in model.trainable_variables:
                variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
            raise KeyboardInterrupt
    for after, before in zip(_values(model.variables), weights, strict=True):
        np.testing.assert_array_equal(after, before)


def test_an_unwritable_temporary_folder_keeps_the_values_in_ram_with_a_warning(monkeypatch):
    model = make_mlp()
    weights = _values(model.variables)

    class VanishedFolder:  # a temporary folder whose files cannot be written
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return "/nonexistent/autobatch-state"

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tempfile, "TemporaryDirectory", VanishedFolder)
    with pytest.warns(RuntimeWarning, match="TMPDIR"):
        with preserved(model):
            for variable in model.trainable_variables:
                variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    for after, before in zip(_values(model.variables), weights, strict=True):
        np.testing.assert_array_equal(after, before)


def test_a_value_that_cannot_be_read_back_still_lets_the_others_return(monkeypatch):
    model = make_mlp()
    weights = _values(model.variables)
    real_fromfile = np.fromfile
    calls = []

    def fail_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError("removed by a /tmp cleaner")
        return real_fromfile(*args, **kwargs)

    with pytest.raises(AutobatchError, match="could not be put back"):
        with preserved(model):
            for variable in model.variables:
                variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
            monkeypatch.setattr(state.np, "fromfile", fail_once)
    after = _values(model.variables)
    # The first variable is lost (its file is gone); every other one is back.
    for a, b in zip(after[1:], weights[1:], strict=True):
        np.testing.assert_array_equal(a, b)

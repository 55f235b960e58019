"""preserved(): the model comes back exactly as it was, and the saved copy is not held in RAM."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

from autobatch.probing.state import preserved
from tests.conftest import make_mlp


def _values(variables):
    return [np.array(v.numpy()) for v in variables]


def test_values_come_back_after_training_and_the_folder_is_removed(regression_data, monkeypatch):
    model = make_mlp()
    x, y = regression_data
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # builds the optimizer: state to keep
    weights, slots = _values(model.variables), _values(model.optimizer.variables)
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


def test_restored_on_error(regression_data):
    model = make_mlp()
    weights = _values(model.variables)
    with pytest.raises(KeyboardInterrupt):
        with preserved(model):
            for variable in model.trainable_variables:
                variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
            raise KeyboardInterrupt
    for after, before in zip(_values(model.variables), weights, strict=True):
        np.testing.assert_array_equal(after, before)

"""Quiet means quiet: verbose=0 prints nothing, autobatch causes no third-party warning, and
TensorFlow's start-up lines stay hidden where autobatch is what starts TensorFlow."""

import json
import logging
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf  # noqa: F401 - TensorFlow's own start-up lines print here, not below

import autobatch

N = 64


def tiny_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    return model


def arrays():
    return np.ones((N, 4), "float32"), np.ones((N, 1), "float32")


@pytest.mark.parametrize("form", ["arrays", "tf.data"])
def test_verbose_0_prints_nothing_and_warns_nothing(form, capfd):
    data = arrays() if form == "arrays" else tf.data.Dataset.from_tensor_slices(arrays())
    model = tiny_model()  # the user's model: what creating it prints is not autobatch's
    capfd.readouterr()
    filters, tf_level = list(warnings.filters), logging.getLogger("tensorflow").level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        autobatch.probe(model, data, memory_limit="+256MiB", max_batch_size=16, verbose=0)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []
    # ... and the user's own warning and logging settings are as they were.
    assert (warnings.filters, logging.getLogger("tensorflow").level) == (filters, tf_level)


STARTS_TENSORFLOW = """
import json, logging, os
from autobatch.memory.tensorflow import tensorflow_sees_gpu
tensorflow_sees_gpu()  # the first import of TensorFlow and its device search
import tensorflow as tf
tf.constant(1.0) + 1  # the runtime is up: nothing left to print later
print(json.dumps({
    "environment": os.environ.get("TF_CPP_MIN_LOG_LEVEL"),
    "tensorflow_logger": logging.getLogger("tensorflow").level,
}))
"""


def test_tensorflow_start_up_lines_are_hidden_when_autobatch_starts_it():
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", STARTS_TENSORFLOW], capture_output=True, text=True, timeout=300,
        env=environment, cwd=os.path.dirname(os.path.dirname(autobatch.__file__)),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    # Hidden for the start-up only: no setting of the user's was changed to do it.
    assert json.loads(done.stdout) == {
        "environment": None, "tensorflow_logger": logging.NOTSET,
    }

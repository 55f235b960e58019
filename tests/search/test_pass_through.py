"""callbacks= and memory_limit= reach every candidate."""

from __future__ import annotations

import keras
import pytest

import autobatch
from autobatch import InvalidArgumentError
from tests.search.test_tune import (
    make_model,
    regression_data,
    small_search,
)


class Counting(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.runs = 0

    def on_train_begin(self, logs=None):
        self.runs += 1


def test_callbacks_see_every_training_run(tmp_path, probed):
    counting = Counting()
    result = autobatch.tune(make_model(), regression_data(), **small_search(
        tmp_path, probe=probed, callbacks=[counting]))
    # 6 candidates, one run per batch size (16, 32, 64).
    assert len(result.trials) == 6 and counting.runs == 3


@pytest.mark.parametrize("callbacks", [keras.callbacks.History(), ["log.csv"]])
def test_callbacks_must_be_a_list_of_keras_callbacks(tmp_path, callbacks):
    with pytest.raises(InvalidArgumentError, match=r"expected a list of keras.callbacks"):
        autobatch.tune(make_model(), regression_data(), **small_search(
            tmp_path, callbacks=callbacks))


def test_memory_limit_reaches_the_probe_and_conflicts_with_memory(tmp_path):
    x, y = regression_data()
    options = small_search(tmp_path, batch_sizes=[16], steps_per_epoch=[1.0])
    with pytest.raises(InvalidArgumentError, match=r"Both memory= and memory_limit="):
        autobatch.tune(make_model(), (x, y), memory_limit="64GiB", **options)
    del options["memory"]
    result = autobatch.tune(make_model(), (x, y), memory_limit="64GiB", **options)
    assert result.probe.limit_bytes == 64 * 2**30
    assert result.probe.limit_source == "memory_limit argument"

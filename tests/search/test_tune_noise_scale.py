"""tune() measures the gradient noise scale once per search and reports what it implies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import tensorflow as tf

import autobatch
from autobatch import report
from autobatch.data import DatasetData
from autobatch.results import TuneResult
from autobatch.search.noise_scale import SEARCH_FILE
from autobatch.search.tune import _NoiseScale
from tests.search.test_tune import (
    assert_untouched,
    make_model,
    model_state,
    regression_data,
    small_search,
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, probed):
    """One small search: (its directory, the model before and after, the result)."""
    directory = tmp_path_factory.mktemp("search")
    x, y = regression_data()
    model = make_model()
    before = model_state(model)
    result = autobatch.tune(model, (x, y), probe=probed, **small_search(directory))
    return directory, model, before, result


def test_a_search_reports_the_noise_scale_its_efficiency_and_goodput(searched, probed):
    directory, model, before, result = searched

    assert_untouched(model, before)  # the measurement ran on the search's model, put back
    assert result.noise_scale_status == "measured"
    assert result.noise_scale > 0 and math.isfinite(result.noise_scale)
    assert 0 <= result.noise_scale_standard_error < result.noise_scale
    assert result.noise_scale_seconds > 0
    rows = result.goodput()
    assert [r["batch_size"] for r in rows] == [16, 32, 64]
    efficiencies = [r["statistical_efficiency"] for r in rows]
    assert efficiencies[0] == 1.0 and efficiencies[0] > efficiencies[1] > efficiencies[2] > 0
    assert efficiencies[2] == pytest.approx(
        (result.noise_scale + 16) / (result.noise_scale + 64))
    for row in rows:
        assert row["goodput"] == pytest.approx(row["samples_per_second"]
                                               * row["statistical_efficiency"])
    assert f"B_noise ~ {result.noise_scale:.3g}" in report.tune_summary(result)

    # The JSON holds the fields and the derived table under stable keys, and loads back.
    data = json.loads(result.to_json())
    assert data["noise_scale"] == result.noise_scale
    assert data["noise_scale_status"] == "measured"
    assert data["goodput"] == rows
    assert TuneResult.from_json(result.to_json()) == result

    # Resumed, the search reads its measurement instead of measuring again.
    saved = json.loads((Path(result.directory) / SEARCH_FILE).read_text())
    assert saved["noise_scale"] == result.noise_scale
    x, y = regression_data()
    resumed = autobatch.tune(make_model(), (x, y), probe=probed, **small_search(directory))
    assert resumed.noise_scale == result.noise_scale


def test_the_goodput_plot_is_written(searched, tmp_path):
    pytest.importorskip("matplotlib")
    result = searched[-1]

    paths = result.plot(tmp_path)

    assert tmp_path / "tune_goodput.png" in paths
    assert (tmp_path / "tune_goodput.png").stat().st_size > 10_000


def test_data_other_than_arrays_is_not_measured_and_says_why():
    x, y = regression_data(32)
    noise = _NoiseScale(DatasetData(tf.data.Dataset.from_tensor_slices((x, y))), seed=0)

    assert noise.callbacks() == []
    assert noise.result() == (None, "not measured: needs array data")


def test_an_older_result_without_the_fields_still_loads_and_summarises(searched):
    data = searched[-1].to_dict()
    for key in ("noise_scale", "noise_scale_standard_error", "noise_scale_status",
                "noise_scale_seconds", "goodput"):
        del data[key]

    old = TuneResult.from_dict(data)

    assert old.noise_scale is None and old.statistical_efficiency(16) is None
    assert old.goodput()[0]["goodput"] is None
    assert "Gradient noise scale: not measured." in report.tune_summary(old)

"""Result objects are a contract with pipelines: round trips, and tolerance of newer fields."""

import json

import pytest

from autobatch import ProbeResult, ProbeTrial, TuneResult, TuneTrial, load_result
from autobatch._units import format_bytes, parse_bytes
from autobatch.errors import InvalidArgumentError, InvalidResultError


def probe_result(**changes):
    fields = dict(
        max_batch_size=128, limit_bytes=1000, limit_source="cgroup", backend="tensorflow",
        device="CPU (host RAM)", memory_source="VmHWM", bytes_per_sample=5.0, fixed_bytes=100.0,
        margin=0.05, baseline_bytes=50, usable_bytes=952, num_samples=1000,
        trials=[ProbeTrial(128, 740, 0.01, 12800.0, True, True, steps=3)],
    )
    fields.update(changes)
    return ProbeResult(**fields)


def test_probe_result_round_trips_and_ignores_unknown_keys():
    result = probe_result()
    data = result.to_dict()
    assert data["num_trials"] == 1 and data["kind"] == "probe"
    data["a_field_from_a_newer_version"] = 1
    assert ProbeResult.from_dict(data) == result
    assert ProbeResult.from_json(result.to_json()) == result
    assert result.margin_bytes == 48


def test_tune_result_fit_kwargs_and_round_trip(tmp_path):
    trial = TuneTrial(64, 10, "completed", 0.5, 3, 1920, 1.5, 1280.0)
    result = TuneResult(64, 10, 3, 0.5, [trial], probe_result(), "hyperband", 6400)
    assert result.fit_kwargs() == {"batch_size": 64, "steps_per_epoch": 10, "epochs": 3}
    path = tmp_path / "tune.json"
    result.to_json(path)
    assert json.loads(path.read_text())["kind"] == "tune"
    assert load_result(path) == result
    assert load_result(path).probe == probe_result()


@pytest.mark.parametrize(
    "load, content, message",
    [
        (ProbeResult.from_json, None, "Cannot read"),  # no such file
        (ProbeResult.from_json, "not json at all", "Not JSON (Expecting value at line 1)"),
        (ProbeResult.from_json, b"\xff\xfe\x00", "Not JSON (not even text)"),
        (ProbeResult.from_json, '{"hello": 1}', "Not a saved ProbeResult: it has no "
                                                "max_batch_size, limit_bytes, limit_source, "
                                                "backend and 8 more"),
        (ProbeResult.from_json, "[1, 2]", "A saved probe result is a JSON object; got list"),
        (TuneResult.from_json, "PROBE", "This is a probe result, not a tune result"),
        (load_result, '{"kind": "tune", "trials": [{"batch_size": 16}]}',
         "Not a saved TuneTrial: it has no steps_per_epoch"),
        (load_result, "[]", "A saved probe result is a JSON object"),
        (load_result, '{"trials": null}', "Its trials is a NoneType, not a list"),
        (load_result, '{"kind": "tune", "trials": 3}', "Its trials is an int, not a list"),
        (load_result, '{"kind": "banana"}', "Its kind is 'banana', not 'probe' or 'tune'"),
    ],
)
def test_a_file_that_is_not_a_result_is_one_typed_error_saying_why(tmp_path, load, content,
                                                                   message):
    path = tmp_path / "result.json"
    if content == "PROBE":
        probe_result().to_json(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InvalidResultError) as raised:
        load(path)
    assert message in str(raised.value)
    # One line that says how to fix it.
    assert "\n" not in str(raised.value)
    assert "Expected" in str(raised.value) or "Load it with" in str(raised.value)


@pytest.mark.parametrize(
    "text,expected",
    [("6GiB", 6 * 2**30), ("512 MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)), (4096, 4096)],
)
def test_sizes_parse(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1GiB", "6 parsecs", 0, -3, True, None, float("nan")])
def test_bad_sizes_explain_the_expected_form(bad):
    with pytest.raises(InvalidArgumentError, match="is not a memory size.*'6GiB'"):
        parse_bytes(bad)


def test_format_bytes():
    assert format_bytes(3 * 2**30) == "3.00 GiB"
    assert format_bytes(512) == "512 B"
    assert format_bytes(None) == "-"

"""NVML queries degrade to "not available" instead of raising; device numbering and labels."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

from autobatch.memory.nvml import GpuInfo, gpu_label, query_gpus, visible_nvml_indices

GiB = 2**30


class NVMLError(Exception):
    pass


def _fake_pynvml(gpus: list[dict], init_error: Exception | None = None) -> SimpleNamespace:
    """pynvml's functions as query_gpus calls them; each gpu dict: name, total, used, processes."""
    calls = {"shutdown": 0}

    def init() -> None:
        if init_error is not None:
            raise init_error

    def shutdown() -> None:
        calls["shutdown"] += 1

    return SimpleNamespace(
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: gpus[i],
        nvmlDeviceGetName=lambda h: h["name"],
        nvmlDeviceGetUUID=lambda h: h.get("uuid", "GPU-0000"),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=h["total"], used=h["used"]),
        nvmlDeviceGetComputeRunningProcesses=lambda h: [
            SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in h["processes"]
        ],
    )


def test_this_machine_degrades_without_raising():
    report = query_gpus()
    if report.available:
        assert report.gpus and all(gpu.total_bytes > 0 for gpu in report.gpus)
    else:
        assert report.reason and report.gpus == []


def test_library_not_found_is_reported(monkeypatch):
    fake = _fake_pynvml([], init_error=NVMLError("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    report = query_gpus()

    assert not report.available
    assert "NVML Shared Library Not Found" in report.reason


def test_package_not_installed_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    report = query_gpus()
    assert (report.available, report.reason) == (False, "the nvidia-ml-py package is not installed")


def test_gpus_and_other_processes(monkeypatch):
    me = os.getpid()
    fake = _fake_pynvml(
        [
            {"name": b"NVIDIA H100", "total": 80 * GiB, "used": 70 * GiB,
             "processes": [(me, 60 * GiB), (me + 1, 6 * GiB), (me + 2, None)]},
            {"name": "NVIDIA H100", "total": 80 * GiB, "used": 1 * GiB, "processes": []},
            # Our PID is not listed: inside a container NVML reports host PIDs.
            {"name": "NVIDIA H100", "total": 80 * GiB, "used": 9 * GiB,
             "processes": [(123456, 9 * GiB)]},
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    report = query_gpus()

    assert report.available
    assert [gpu.name for gpu in report.gpus] == ["NVIDIA H100"] * 3
    assert [gpu.other_processes_bytes for gpu in report.gpus] == [6 * GiB, 0, None]
    assert fake.calls["shutdown"] == 1


def test_query_failure_after_init_is_reported_and_shuts_down(monkeypatch):
    fake = _fake_pynvml([{"name": "x", "total": 1, "used": 0, "processes": []}])
    fake.nvmlDeviceGetMemoryInfo = lambda handle: (_ for _ in ()).throw(NVMLError("GPU is lost"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    report = query_gpus()

    assert not report.available and "GPU is lost" in report.reason
    assert fake.calls["shutdown"] == 1


@pytest.mark.parametrize(
    "value, expected",
    [(None, [0, 1, 2]), ("2,0", [2, 0]), ("GPU-bbb", [1]), ("1,GPU-zzz,0", [1]), ("", []),
     ("-1", [])],
)
def test_visible_nvml_indices(value, expected):
    gpus = [GpuInfo(i, "x", uuid, GiB, 0, 0) for i, uuid in enumerate(["GPU-aaa", "GPU-bbb"])]
    environ = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert visible_nvml_indices(3, environ, gpus) == expected


@pytest.mark.parametrize(
    "indices, label",
    [([0], "GPU:0"), ([0, 1, 2, 3], "GPU:0-3 (4 devices)"), ([3, 1], "GPU:1,3 (2 devices)")],
)
def test_gpu_label(indices, label):
    assert gpu_label(indices) == label

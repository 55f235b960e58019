"""detect_memory picks the backend of the active Keras backend; available_backends lists all."""

from __future__ import annotations

import logging

import pytest

import autobatch.memory as memory_package
from autobatch.errors import InvalidArgumentError
from autobatch.memory import (
    FakeMemory,
    HostMemory,
    MemoryBackend,
    available_backends,
    detect_memory,
)

GiB = 2**30


class StandInGpuMemory(FakeMemory):
    """A GPU backend stand-in that records the memory_limit it was built with."""

    def __init__(self, memory_limit: int | None = None) -> None:
        super().__init__(limit_bytes=memory_limit or 80 * GiB)
        self.memory_limit = memory_limit


def _use_keras_backend(monkeypatch, name: str, sees_gpu: bool) -> None:
    monkeypatch.setattr(memory_package, "_keras_backend", lambda: name)
    monkeypatch.setitem(
        memory_package._GPU_BACKENDS, name, (name, lambda: sees_gpu, StandInGpuMemory)
    )


def test_no_gpu_here_gives_host_memory():
    if any(b.name != "host" for b in available_backends()):
        pytest.skip("a GPU is visible here")
    memory = detect_memory()
    assert isinstance(memory, HostMemory)


@pytest.mark.parametrize("name", ["tensorflow", "jax", "torch"])
def test_the_active_keras_backend_gpu_is_picked(monkeypatch, name):
    _use_keras_backend(monkeypatch, name, sees_gpu=True)

    memory = detect_memory(memory_limit=4 * GiB)

    assert isinstance(memory, StandInGpuMemory)
    assert memory.memory_limit == 4 * GiB


def test_framework_without_gpu_falls_back_to_host(monkeypatch):
    _use_keras_backend(monkeypatch, "torch", sees_gpu=False)
    assert isinstance(detect_memory(), HostMemory)


def test_unknown_keras_backend_falls_back_to_host(monkeypatch):
    monkeypatch.setattr(memory_package, "_keras_backend", lambda: "numpy")
    assert isinstance(detect_memory(), HostMemory)


def test_memory_limit_overrides_the_detected_limit():
    memory = detect_memory(memory_limit=3 * GiB)
    assert (memory.limit_bytes(), memory.limit_source) == (3 * GiB, "memory_limit argument")


def test_bad_memory_limit_fails_before_any_backend_is_built(monkeypatch):
    monkeypatch.setattr(memory_package, "_keras_backend", lambda: pytest.fail("too late"))
    with pytest.raises(InvalidArgumentError, match="memory_limit=-1 is not a memory size"):
        detect_memory(memory_limit=-1)


def test_available_backends_lists_host_first():
    backends = available_backends()
    assert isinstance(backends[0], HostMemory)
    assert all(isinstance(b, MemoryBackend) for b in backends)
    assert len({b.name for b in backends}) == len(backends)


def test_available_backends_skips_a_broken_one_with_a_warning(monkeypatch, caplog):
    def broken(memory_limit=None):
        raise RuntimeError("driver exploded")

    monkeypatch.setitem(
        memory_package._GPU_BACKENDS, "tensorflow", ("tensorflow", lambda: True, broken)
    )
    with caplog.at_level(logging.WARNING, logger="autobatch.memory"):
        backends = available_backends()

    assert "tensorflow" not in {b.name.split("-")[0] for b in backends}
    assert "driver exploded" in caplog.text

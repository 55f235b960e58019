"""The contract every memory backend must meet, run over each backend available here.

A new backend is added to ``CASES`` with a way to allocate memory on its device; GPU
backends skip (with the reason) where their framework sees no GPU.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from autobatch.memory import FakeMemory, HostMemory, MemoryBackend

MiB = 2**20
SMALL, LARGE = 8 * MiB, 128 * MiB
DESCRIBE_KEYS = {
    "name",
    "device",
    "peak_source",
    "limit_source",
    "limit_bytes",
    "current_bytes",
    "oom_is_catchable",
}


@dataclass
class Case:
    make: Callable[[], MemoryBackend]
    #: Runs one trial that allocates about ``num_bytes`` on the device; returns the peak.
    run_trial: Callable[[MemoryBackend, int], int]
    real: bool = True


def _fake() -> MemoryBackend:
    return FakeMemory(limit_bytes=10**12, fixed_bytes=MiB, bytes_per_sample=MiB)


def _fake_trial(memory: MemoryBackend, num_bytes: int) -> int:
    with memory.trial(num_bytes // MiB) as reading:  # the fake models bytes from the batch size
        pass
    return reading.peak_bytes


def _host_trial(memory: MemoryBackend, num_bytes: int) -> int:
    with memory.trial(1) as reading:
        block = np.ones(num_bytes // 8)
        del block
    return reading.peak_bytes


def _tensorflow() -> MemoryBackend:
    _skip_unless("tensorflow", "tensorflow_sees_gpu", "TensorFlow sees no GPU")
    from autobatch.memory import TensorFlowGPUMemory

    return TensorFlowGPUMemory()


def _tensorflow_trial(memory: MemoryBackend, num_bytes: int) -> int:
    import tensorflow as tf

    with memory.trial(1) as reading:
        with tf.device("GPU:0"):
            block = tf.ones([num_bytes // 4], tf.float32)
        del block
    return reading.peak_bytes


def _jax() -> MemoryBackend:
    _skip_unless("jax", "jax_sees_gpu", "JAX sees no GPU")
    from autobatch.memory import JaxGPUMemory

    return JaxGPUMemory()


def _jax_trial(memory: MemoryBackend, num_bytes: int) -> int:
    import jax.numpy as jnp

    with memory.trial(1) as reading:
        block = jnp.ones(num_bytes // 4, jnp.float32).block_until_ready()
        del block
    return reading.peak_bytes


def _torch() -> MemoryBackend:
    _skip_unless("torch", "torch_sees_gpu", "torch sees no CUDA GPU")
    from autobatch.memory import TorchGPUMemory

    return TorchGPUMemory()


def _torch_trial(memory: MemoryBackend, num_bytes: int) -> int:
    import torch

    with memory.trial(1) as reading:
        block = torch.ones(num_bytes // 4, dtype=torch.float32, device="cuda")
        del block
    return reading.peak_bytes


def _skip_unless(module: str, check: str, reason: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    import autobatch.memory as memory_package

    if not getattr(memory_package, check)():
        pytest.skip(reason)


CASES = {
    "fake": Case(_fake, _fake_trial, real=False),
    "host": Case(HostMemory, _host_trial),
    "tensorflow-gpu": Case(_tensorflow, _tensorflow_trial),
    "jax-gpu": Case(_jax, _jax_trial),
    "torch-gpu": Case(_torch, _torch_trial),
}


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    return CASES[request.param]


@pytest.fixture
def backend(case: Case) -> MemoryBackend:
    return case.make()


def test_limit_is_a_positive_int(backend):
    limit = backend.limit_bytes()
    assert isinstance(limit, int) and limit > 0


def test_current_is_within_the_limit(backend):
    current = backend.current_bytes()
    assert isinstance(current, int) and 0 <= current <= backend.limit_bytes()


def test_trial_sets_an_int_peak(backend):
    with backend.trial(1) as reading:
        assert reading.peak_bytes is None  # set only when the block exits
    assert isinstance(reading.peak_bytes, int) and reading.peak_bytes >= 0


def test_trial_sets_the_peak_when_the_block_raises(backend):
    with pytest.raises(ValueError):
        with backend.trial(1) as reading:
            raise ValueError("not memory")
    assert isinstance(reading.peak_bytes, int)


def test_larger_allocation_has_larger_peak(case, backend):
    small = case.run_trial(backend, SMALL)
    large = case.run_trial(backend, LARGE)

    assert large >= small
    if case.real:
        # Real backends must see the allocation itself, not just be monotone.
        assert large - small >= (LARGE - SMALL) // 2


def test_describe_has_every_key(backend):
    description = backend.describe()

    assert DESCRIBE_KEYS <= set(description)
    assert all(description[key] for key in ("name", "device", "peak_source", "limit_source"))
    assert isinstance(description["oom_is_catchable"], bool)


def test_is_out_of_memory_is_typed(backend):
    assert backend.is_out_of_memory(MemoryError())
    assert not backend.is_out_of_memory(ValueError("out of memory"))


def test_release_does_not_raise(backend):
    backend.release()
    backend.release()

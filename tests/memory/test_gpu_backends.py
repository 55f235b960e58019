"""GPU backends' own logic (several devices, limits, sources) on CPU, with stand-in frameworks.

The stand-ins expose only the calls each backend makes, with the real signatures
(tf.config.experimental.get_memory_info, jax Device.memory_stats, torch.cuda.*). They test
our arithmetic and fallbacks, not the frameworks: the contract suite runs the real ones
wherever a GPU is present.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

import autobatch.memory.tensorflow as tf_backend
from autobatch.errors import InvalidArgumentError, MissingDependencyError
from autobatch.memory import JaxGPUMemory, TensorFlowGPUMemory, TorchGPUMemory
from autobatch.memory.jax import jax_sees_gpu
from autobatch.memory.nvml import GpuInfo, NvmlReport

GiB = 2**30


# --- TensorFlow --------------------------------------------------------------------------


class FakeTensorFlow:
    """``tf.config`` as TensorFlowGPUMemory uses it; memory stats per "GPU:i"."""

    def __init__(self, num_gpus: int, memory_limits_mib: dict[int, int] | None = None) -> None:
        self.physical = [SimpleNamespace(name=f"/physical_device:GPU:{i}") for i in range(num_gpus)]
        self.stats = {f"GPU:{i}": {"current": 0, "peak": 0} for i in range(num_gpus)}
        limits = memory_limits_mib or {}
        self.config = SimpleNamespace(
            list_physical_devices=lambda kind: list(self.physical),
            list_logical_devices=lambda kind: [
                SimpleNamespace(name=f"/device:GPU:{i}") for i in range(num_gpus)
            ],
            get_logical_device_configuration=lambda device: (
                [SimpleNamespace(memory_limit=limits[i])]
                if (i := self.physical.index(device)) in limits
                else None
            ),
            experimental=SimpleNamespace(
                get_memory_info=lambda name: dict(self.stats[name]),
                reset_memory_stats=self._reset,
            ),
        )

    def _reset(self, name: str) -> None:
        self.stats[name]["peak"] = self.stats[name]["current"]

    def allocate(self, name: str, num_bytes: int) -> None:
        stats = self.stats[name]
        stats["peak"] = max(stats["peak"], stats["current"] + num_bytes)


def _nvml(*gpus: tuple[int, int | None]) -> NvmlReport:
    return NvmlReport(
        True,
        "",
        [
            GpuInfo(i, "H100", f"GPU-{i}{i}{i}", total, total // 2, others)
            for i, (total, others) in enumerate(gpus)
        ],
    )


@pytest.fixture
def fake_tf(monkeypatch):
    def install(num_gpus: int, nvml: NvmlReport | None = None, **kwargs) -> FakeTensorFlow:
        fake = FakeTensorFlow(num_gpus, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorflow", fake)
        monkeypatch.setattr(tf_backend, "query_gpus", lambda: nvml or NvmlReport(False, "no NVML"))
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        return fake

    return install


def test_tensorflow_measures_every_gpu(fake_tf):
    fake = fake_tf(2, _nvml((80 * GiB, 0), (80 * GiB, 10 * GiB)))
    memory = TensorFlowGPUMemory()

    with memory.trial(64) as reading:
        fake.allocate("GPU:0", 1 * GiB)
        fake.allocate("GPU:1", 3 * GiB)

    assert memory.device == "GPU:0-1 (2 devices)"
    assert reading.peak_bytes == 3 * GiB  # the largest per-device peak
    assert memory.limit_bytes() == 70 * GiB  # the smallest per-device limit
    assert memory.limit_source == "GPU:1 total minus other processes (NVML)"


def test_tensorflow_peak_is_reset_between_trials(fake_tf):
    fake = fake_tf(1, _nvml((16 * GiB, 0)))
    memory = TensorFlowGPUMemory()
    with memory.trial(128):
        fake.allocate("GPU:0", 4 * GiB)
    with memory.trial(8) as reading:
        fake.allocate("GPU:0", 1 * GiB)
    assert reading.peak_bytes == 1 * GiB


def test_tensorflow_unknown_other_processes_uses_the_card_total(fake_tf):
    fake_tf(1, _nvml((24 * GiB, None)))
    memory = TensorFlowGPUMemory()
    assert memory.limit_bytes() == 24 * GiB
    assert memory.limit_source == "GPU:0 total (NVML)"


def test_tensorflow_logical_device_memory_limit_is_in_mib(fake_tf):
    fake_tf(1, memory_limits_mib={0: 2048})  # no NVML needed
    memory = TensorFlowGPUMemory()
    assert memory.limit_bytes() == 2 * GiB
    assert "memory_limit" in memory.limit_source


def test_tensorflow_maps_cuda_visible_devices_to_nvml(fake_tf, monkeypatch):
    fake_tf(1, _nvml((80 * GiB, 0), (40 * GiB, 0)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert TensorFlowGPUMemory().limit_bytes() == 40 * GiB


def test_tensorflow_without_nvml_needs_memory_limit(fake_tf):
    fake_tf(1)
    with pytest.raises(MissingDependencyError, match="nvidia-ml-py.*memory_limit"):
        TensorFlowGPUMemory()

    memory = TensorFlowGPUMemory(memory_limit=8 * GiB)
    assert (memory.limit_bytes(), memory.limit_source) == (8 * GiB, "memory_limit argument")


def test_tensorflow_without_gpu_is_an_error(fake_tf):
    fake_tf(0)
    with pytest.raises(InvalidArgumentError, match="TensorFlow sees none.*HostMemory"):
        TensorFlowGPUMemory()


# --- JAX ---------------------------------------------------------------------------------


def _jax_device(index: int, platform: str = "gpu", **stats) -> SimpleNamespace:
    return SimpleNamespace(
        id=index, platform=platform, memory_stats=lambda: dict(stats) if stats else None
    )


@pytest.fixture
def fake_jax(monkeypatch):
    def install(*devices: SimpleNamespace) -> None:
        jax = SimpleNamespace(local_devices=lambda: list(devices))
        monkeypatch.setitem(sys.modules, "jax", jax)

    return install


def test_jax_measures_every_gpu(fake_jax):
    fake_jax(
        _jax_device(0, bytes_limit=60 * GiB, bytes_in_use=GiB, peak_bytes_in_use=5 * GiB),
        _jax_device(1, bytes_limit=50 * GiB, bytes_in_use=2 * GiB, peak_bytes_in_use=4 * GiB),
    )
    memory = JaxGPUMemory()

    with memory.trial(32) as reading:
        pass

    assert memory.device == "GPU:0-1 (2 devices)"
    assert reading.peak_bytes == 5 * GiB
    assert memory.current_bytes() == 2 * GiB
    assert (memory.limit_bytes(), memory.limit_source) == (50 * GiB, "GPU:1 allocator")


def test_jax_memory_limit_argument(fake_jax):
    fake_jax(_jax_device(0, bytes_limit=60 * GiB, bytes_in_use=0, peak_bytes_in_use=0))
    memory = JaxGPUMemory(memory_limit=GiB)
    assert (memory.limit_bytes(), memory.limit_source) == (GiB, "memory_limit argument")


def test_jax_cpu_only_is_not_a_gpu(fake_jax):
    fake_jax(_jax_device(0, platform="cpu"))
    assert not jax_sees_gpu()
    with pytest.raises(InvalidArgumentError, match="JAX sees none"):
        JaxGPUMemory()


# --- torch -------------------------------------------------------------------------------


class FakeCuda:
    """``torch.cuda`` as TorchGPUMemory uses it."""

    def __init__(self, num_gpus: int, current: int = 0) -> None:
        self.num_gpus, self.current = num_gpus, current
        self.allocated = [0] * num_gpus
        self.peak = [0] * num_gpus
        self.reserved = [2 * GiB] * num_gpus
        self.free = [30 * GiB] * num_gpus
        self.fraction = [1.0] * num_gpus
        self.emptied = 0

    def is_available(self) -> bool:
        return self.num_gpus > 0

    def device_count(self) -> int:
        return self.num_gpus

    def current_device(self) -> int:
        return self.current

    def mem_get_info(self, index: int) -> tuple[int, int]:
        return self.free[index], 40 * GiB

    def memory_reserved(self, index: int) -> int:
        return self.reserved[index]

    def memory_allocated(self, index: int) -> int:
        return self.allocated[index]

    def max_memory_allocated(self, index: int) -> int:
        return self.peak[index]

    def reset_peak_memory_stats(self, index: int) -> None:
        self.peak[index] = self.allocated[index]

    def get_per_process_memory_fraction(self, index: int) -> float:
        return self.fraction[index]

    def empty_cache(self) -> None:
        self.emptied += 1


@pytest.fixture
def fake_cuda(monkeypatch):
    def install(num_gpus: int, current: int = 0) -> FakeCuda:
        cuda = FakeCuda(num_gpus, current)
        monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
        monkeypatch.delenv("KERAS_TORCH_DEVICE", raising=False)
        return cuda

    return install


def test_torch_measures_the_device_keras_uses(fake_cuda):
    cuda = fake_cuda(4, current=2)
    memory = TorchGPUMemory()

    with memory.trial(16) as reading:
        cuda.peak[2] = 3 * GiB

    assert memory.device == "GPU:2"
    assert reading.peak_bytes == 3 * GiB
    assert memory.limit_bytes() == 32 * GiB  # free + what torch already reserved
    assert memory.limit_source == "GPU:2 free + torch reserved (mem_get_info)"


def test_torch_follows_keras_torch_device(fake_cuda, monkeypatch):
    fake_cuda(2)
    monkeypatch.setenv("KERAS_TORCH_DEVICE", "cuda:1")
    assert TorchGPUMemory().device == "GPU:1"


def test_torch_several_devices_and_fraction_cap(fake_cuda):
    cuda = fake_cuda(2)
    cuda.fraction[1] = 0.25  # torch.cuda.set_per_process_memory_fraction(0.25, 1)
    memory = TorchGPUMemory(devices=[0, 1])

    assert memory.device == "GPU:0-1 (2 devices)"
    assert memory.limit_bytes() == 10 * GiB
    assert memory.limit_source == "GPU:1 per-process memory fraction"


def test_torch_release_empties_the_cache(fake_cuda):
    cuda = fake_cuda(1)
    TorchGPUMemory().release()
    assert cuda.emptied == 1


def test_torch_bad_devices_and_no_gpu(fake_cuda):
    fake_cuda(1)
    with pytest.raises(InvalidArgumentError, match=r"devices=\[3\].*from 0 to 0"):
        TorchGPUMemory(devices=[3])
    fake_cuda(0)
    with pytest.raises(InvalidArgumentError, match="torch sees none"):
        TorchGPUMemory()

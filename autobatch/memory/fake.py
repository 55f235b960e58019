"""A deterministic memory backend for tests: it "runs out" above a set number of bytes.

Peak memory follows ``fixed_bytes + bytes_per_sample * batch_size`` exactly (or any
function you give), plus ``bytes_per_step`` for every training step a trial runs (a model
whose peak keeps growing with training, as attention models do on TF/CPU), so a probe or a search can be tested on CPU, in milliseconds, with a
known answer. Like httpx's MockTransport, it is public API so users can test their own
pipelines with it.

Example:
    >>> memory = FakeMemory(limit_bytes=1_000, fixed_bytes=100, bytes_per_sample=10)
    >>> autobatch.probe(model, (x, y), memory=memory).max_batch_size  # 90 with margin=0
"""

from __future__ import annotations

from typing import Callable

from autobatch.memory.base import MemoryBackend


class FakeOutOfMemoryError(MemoryError):
    """Raised by `FakeMemory` when a trial's modelled peak is above the limit."""


class FakeProcessKilled(BaseException):
    """Raised by a non-catchable `FakeMemory` when a trial crosses the limit.

    It stands for the kernel's OOM killer: a probe must never trigger it. It derives from
    BaseException so that no ``except Exception`` in the code under test can swallow it.
    """


class FakeMemory(MemoryBackend):
    """A memory backend whose peak is a known function of the batch size."""

    name = "fake"
    device = "fake device"
    peak_source = "modelled peak"
    limit_source = "fake limit"

    def __init__(
        self,
        limit_bytes: int,
        fixed_bytes: int = 0,
        bytes_per_sample: int = 1,
        *,
        peak_of: Callable[[int], int] | None = None,
        oom_is_catchable: bool = True,
        baseline_bytes: int = 0,
        bytes_per_step: int = 0,
    ) -> None:
        self._limit = int(limit_bytes)
        self._peak_of = peak_of or (lambda b: int(fixed_bytes + bytes_per_sample * b))
        self._baseline = int(baseline_bytes)
        self._bytes_per_step = int(bytes_per_step)
        self.oom_is_catchable = oom_is_catchable
        self._peak = self._baseline
        #: Batch sizes of every trial started, in order (for assertions in tests).
        self.trial_batch_sizes: list[int] = []
        self.num_oom = 0

    def limit_bytes(self) -> int:
        return self._limit

    def current_bytes(self) -> int:
        return self._baseline

    def peak_for(self, batch_size: int, steps: int | None = None) -> int:
        """The modelled peak of a trial of ``steps`` steps at ``batch_size``."""
        return self._baseline + self._peak_of(batch_size) + self._bytes_per_step * (steps or 0)

    def _reset_peak(self) -> None:
        self._peak = self._baseline

    def _read_peak(self) -> int:
        return self._peak

    def before_trial(self, batch_size: int, steps: int | None = None) -> None:
        self.trial_batch_sizes.append(batch_size)
        peak = self.peak_for(batch_size, steps)
        if peak > self._limit:
            self.num_oom += 1
            if not self.oom_is_catchable:
                raise FakeProcessKilled(f"batch {batch_size} needs {peak} bytes > {self._limit}")
            raise FakeOutOfMemoryError(
                f"fake device out of memory: batch {batch_size} needs {peak} bytes, "
                f"limit {self._limit}"
            )
        self._peak = peak

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, FakeOutOfMemoryError) or super().is_out_of_memory(error)

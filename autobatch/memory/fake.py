"""A deterministic memory backend for tests: it "runs out" above a set number of bytes.

Peak memory follows ``fixed_bytes + bytes_per_sample * batch_size`` exactly (or any
function you give), and a validation step at that batch adds ``validation_bytes_per_sample``
for each sample (real ``fit`` validates at the training batch size: it runs out, or is
"killed", at the step that crosses the limit), so a probe or a search can be tested on CPU,
in milliseconds, with a known answer. Like httpx's MockTransport, it is public API so users can test their own
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
        validation_bytes_per_sample: int = 0,
    ) -> None:
        self._limit = int(limit_bytes)
        self._peak_of = peak_of or (lambda b: int(fixed_bytes + bytes_per_sample * b))
        self._baseline = int(baseline_bytes)
        self._validation_bytes_per_sample = int(validation_bytes_per_sample)
        self.oom_is_catchable = oom_is_catchable
        self._peak = self._baseline
        self._batch_size = 0
        #: Batch sizes of every trial started, in order (for assertions in tests).
        self.trial_batch_sizes: list[int] = []
        self.num_oom = 0

    def limit_bytes(self) -> int:
        return self._limit

    def current_bytes(self) -> int:
        return self._baseline

    def peak_for(self, batch_size: int, validating: bool = False) -> int:
        """The modelled peak of a trial at ``batch_size`` (once it validates, with ``validating``)."""
        extra = self._validation_bytes_per_sample * batch_size if validating else 0
        return self._baseline + self._peak_of(batch_size) + extra

    def _reset_peak(self) -> None:
        self._peak = self._baseline

    def _read_peak(self) -> int:
        return self._peak

    def before_trial(self, batch_size: int) -> None:
        self.trial_batch_sizes.append(batch_size)
        self._batch_size = batch_size
        self._set_peak(self.peak_for(batch_size))

    def after_step(self, *, validation: bool = False) -> None:
        if validation:
            self._set_peak(max(self._peak, self.peak_for(self._batch_size, validating=True)))

    def _set_peak(self, peak: int) -> None:
        if peak > self._limit:
            self.num_oom += 1
            if not self.oom_is_catchable:
                raise FakeProcessKilled(f"batch {self._batch_size} needs {peak} bytes > {self._limit}")
            raise FakeOutOfMemoryError(
                f"fake device out of memory: batch {self._batch_size} needs {peak} bytes, "
                f"limit {self._limit}"
            )
        self._peak = peak

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, FakeOutOfMemoryError) or super().is_out_of_memory(error)

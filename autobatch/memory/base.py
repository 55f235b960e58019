"""The one interface every memory source implements.

A backend answers three questions for the probe: how much memory may a training step
reach (``limit_bytes``), how much is in use now (``current_bytes``), and what was the
peak during a trial (``trial``). Peaks, current use and the limit are in the same units
and on the same baseline, so ``peak <= limit`` means "fits".
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Iterator


@dataclass
class TrialMemory:
    """Filled in by `MemoryBackend.trial` when the trial's block exits."""

    peak_bytes: int | None = None


class MemoryBackend(abc.ABC):
    """A source of memory limits and peaks for one device (or a group of devices)."""

    #: Short name: "host", "tensorflow-gpu", "jax-gpu", "torch-gpu", "fake".
    name: str = "base"
    #: What is measured, e.g. "CPU (host RAM)", "GPU:0", "GPU:0-1 (2 devices)".
    device: str = ""
    #: How peaks are measured, e.g. "process peak RSS (VmHWM), file-backed pages excluded".
    peak_source: str = ""
    #: Where the limit came from: "cgroup", "host RAM", "GPU:0 allocator", "memory_limit argument".
    limit_source: str = ""
    #: True when running out raises an exception we can catch (GPU allocators). False for host
    #: RAM, where the kernel's OOM killer ends the process with SIGKILL: the probe must then
    #: never start a trial whose predicted peak crosses the limit.
    oom_is_catchable: bool = False
    #: The fraction of free memory the probe keeps unused when the caller gives no ``margin``:
    #: how much peaks of the same training step vary from one run to the next.
    default_margin: float = 0.05
    #: The least memory the probe keeps unused below the limit, whatever ``margin`` says:
    #: how far one trial's peak can jump beyond what the batch explains (0: never seen).
    min_margin_bytes: int = 0

    @abc.abstractmethod
    def limit_bytes(self) -> int:
        """The most memory a training step may reach (same baseline as ``current_bytes``)."""

    @abc.abstractmethod
    def current_bytes(self) -> int:
        """Memory in use now."""

    @abc.abstractmethod
    def _reset_peak(self) -> None:
        """Start a new peak measurement."""

    @abc.abstractmethod
    def _read_peak(self) -> int:
        """Peak since the last ``_reset_peak``."""

    def before_trial(self, batch_size: int) -> None:  # noqa: B027 - an optional hook
        """Hook run before each trial; the fake backend "runs out" here."""

    def after_step(self, *, validation: bool = False) -> None:  # noqa: B027 - an optional hook
        """Hook run after each training (or ``validation``) step of a trial; the fake
        backend's memory grows here."""

    def peak_so_far(self) -> int:
        """The peak since the current trial began, read without ending the measurement: the
        probe's watchdog checks it after every step, to stop a trial at the margin."""
        return self._read_peak()

    @contextlib.contextmanager
    def trial(self, batch_size: int) -> Iterator[TrialMemory]:
        """Measure the peak memory of the block; the reading is set when the block exits.

        Example:
            >>> with backend.trial(64) as reading:
            ...     run_training_steps()
            >>> reading.peak_bytes
        """
        reading = TrialMemory()
        self._reset_peak()
        try:
            self.before_trial(batch_size)
            yield reading
        finally:
            reading.peak_bytes = self._read_peak()

    def is_out_of_memory(self, error: BaseException) -> bool:
        """True when ``error`` means this device ran out of memory."""
        from autobatch.memory.oom import is_out_of_memory

        return is_out_of_memory(error)

    def release(self) -> None:
        """Give freed and cached memory back (collect garbage, empty caches): before each probe
        trial, and after an out-of-memory error."""
        import gc

        gc.collect()

    def describe(self) -> dict[str, object]:
        """What this backend sees, for `autobatch devices` and reports."""
        return {
            "name": self.name,
            "device": self.device,
            "peak_source": self.peak_source,
            "limit_source": self.limit_source,
            "limit_bytes": self.limit_bytes(),
            "current_bytes": self.current_bytes(),
            "oom_is_catchable": self.oom_is_catchable,
            "default_margin": self.default_margin,
            "min_margin_bytes": self.min_margin_bytes,
        }

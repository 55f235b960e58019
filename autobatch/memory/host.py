"""Host RAM: the peak resident memory of this process during a trial, file-backed pages excluded.

On CPU, TensorFlow gives memory back after each step, so RSS after a trial says little:
the peak during the trial is what must fit. On Linux the kernel keeps that peak
(``VmHWM`` in /proc/self/status) and resets it to the current RSS when "5" is written to
/proc/self/clear_refs (Linux 4.0+), which measures the peak exactly and for free. Where
that is not possible (macOS, Windows, a locked-down /proc), a background thread samples
the same measure as ``current_bytes`` every 2 ms, which can miss a short spike. (The reset also lowers what
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` reports for this process afterwards.)

The limit is this process's RSS plus the room left before the OOM killer: the cgroup's
headroom (limit minus its working set) or the host's available RAM, whichever is
smaller. Running out of host RAM kills the process (SIGKILL), so ``oom_is_catchable`` is
False and the probe must stay below the limit.

Example:
    >>> memory = HostMemory()
    >>> with memory.trial(32) as reading:
    ...     model.train_on_batch(x[:32], y[:32])
    >>> reading.peak_bytes <= memory.limit_bytes()
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable

import psutil

from autobatch._units import parse_bytes
from autobatch.memory.base import MemoryBackend
from autobatch.memory.cgroup import read_cgroup_memory

__all__ = ["HostMemory"]

_SAMPLE_INTERVAL_S = 0.002
_VMHWM_SOURCE = "process peak RSS (VmHWM), file-backed pages excluded"
_SAMPLED_SOURCE = "sampled RSS (every 2 ms), file-backed pages excluded where known"
_STATUS_KB = re.compile(r"^(VmHWM|VmRSS|RssFile):\s+(\d+)\s+kB", re.MULTILINE)


class HostMemory(MemoryBackend):
    """Peak RSS of this process against the cgroup or host RAM limit."""

    name = "host"
    device = "CPU (host RAM)"
    oom_is_catchable = False
    # malloc's arenas make TF/CPU peaks jump by tens of MiB at random: in a 672 MiB cgroup an
    # MLP's step of 29 samples, predicted at 3 MiB, cost 27 (another of 35 cost 19). The
    # margin at the limit must absorb such a jump at the last step, or the OOM killer ends
    # the process; 5% of a small cgroup's free memory (11 MiB of 218) did not.
    min_margin_bytes = 64 * 2**20
    # Fresh processes training the same steps peak differently on TF/CPU: an LSTM at batch
    # 1144 peaked at 1543 and 1600 MiB in two runs, above the 1515 MiB the probe measured at
    # 1139, and the answer kept 5% of the free memory (61 MiB) - the fresh run at the answer
    # was killed in a 1592 MiB cgroup. A chosen batch must survive real training, so host
    # RAM keeps twice the GPU's default.
    default_margin = 0.10

    def __init__(
        self,
        memory_limit: int | None = None,
        *,
        proc_self: str | os.PathLike[str] = "/proc/self",
        cgroup_root: str | os.PathLike[str] = "/",
    ) -> None:
        """
        Args:
            memory_limit: bytes; replaces the detected limit (``limit_source`` then says
                "memory_limit argument").
            proc_self: where to find ``clear_refs`` and ``status`` (for tests).
            cgroup_root: file system root under which to look for the cgroup (for tests).
        """
        self._memory_limit = None if memory_limit is None else parse_bytes(memory_limit)
        self._proc_self = Path(proc_self)
        self._cgroup_root = cgroup_root
        self._process = psutil.Process()
        self._sampler: _RssSampler | None = None
        self._use_vmhwm = self._reset_vmhwm() and self._read_status("VmHWM") is not None
        self.peak_source = (
            _VMHWM_SOURCE if self._use_vmhwm else _SAMPLED_SOURCE
        )
        self.limit_bytes()  # sets limit_source

    def limit_bytes(self) -> int:
        if self._memory_limit is not None:
            self.limit_source = "memory_limit argument"
            return self._memory_limit
        available = int(psutil.virtual_memory().available)
        cgroup = read_cgroup_memory(self._cgroup_root)
        headroom = None if cgroup is None else cgroup.headroom_bytes
        if headroom is not None and headroom < available:
            self.limit_source = "cgroup"
            return self.current_bytes() + headroom
        self.limit_source = "host RAM"
        return self.current_bytes() + available

    def current_bytes(self) -> int:
        rss = self._read_status("VmRSS")
        if rss is None:
            return int(self._process.memory_info().rss)
        return rss - self._file_backed()

    def _file_backed(self) -> int:
        # File-backed pages (TensorFlow's shared libraries alone are ~400 MiB) are dropped
        # under memory pressure rather than counted towards an OOM kill; in a fresh cgroup
        # they are often not even charged to it. Counting them understated the room by that
        # much (a CNN's probe stopped at 65% of the batch a fresh process could train).
        return self._read_status("RssFile") or 0

    def release(self) -> None:
        # Also run before each probe trial: heap that earlier trials freed but malloc kept
        # inflated later peaks (an MLP at batch 4727: 629 MiB after eight smaller trials,
        # 577 MiB with the trim, 595 MiB in a new process).
        _return_freed_heap()

    def _reset_peak(self) -> None:
        if self._use_vmhwm and self._reset_vmhwm():
            return
        self._use_vmhwm = False  # clear_refs stopped working: measure by sampling instead
        self.peak_source = _SAMPLED_SOURCE
        self._stop_sampler()
        self._sampler = _RssSampler(self.current_bytes)
        self._sampler.start()

    def _read_peak(self) -> int:
        if self._use_vmhwm:
            peak = self._read_status("VmHWM")
            if peak is not None:
                return peak - self._file_backed()
        if self._sampler is None:
            return self.current_bytes()
        return self._stop_sampler()

    def peak_so_far(self) -> int:
        if self._use_vmhwm:
            peak = self._read_status("VmHWM")
            if peak is not None:
                return peak - self._file_backed()
        if self._sampler is not None:
            return max(self._sampler.peak, self.current_bytes())
        return self.current_bytes()

    def _stop_sampler(self) -> int:
        sampler, self._sampler = self._sampler, None
        return sampler.stop() if sampler is not None else 0

    def _reset_vmhwm(self) -> bool:
        try:
            (self._proc_self / "clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def _read_status(self, key: str) -> int | None:
        try:
            text = (self._proc_self / "status").read_text()
        except OSError:
            return None
        for name, kib in _STATUS_KB.findall(text):
            if name == key:
                return int(kib) * 1024
        return None


def _return_freed_heap() -> None:
    """Collect garbage, then ask glibc to hand freed heap pages back to the kernel."""
    gc.collect()
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    # glibc only: musl, macOS and Windows have no malloc_trim. Loaded on first use, as
    # ctypes.util.find_library would start a process (ldconfig) at import time.
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class _RssSampler:
    """A daemon thread that records the largest reading of ``current_bytes`` until stopped.

    It samples the backend's own measure, so peaks and current use stay on one baseline
    (file-backed pages excluded wherever /proc/self/status can be read)."""

    def __init__(self, current_bytes: Callable[[], int]) -> None:
        self._current_bytes = current_bytes
        self._stop = threading.Event()
        self._peak = self._read()
        self._thread = threading.Thread(target=self._run, name="autobatch-rss", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def peak(self) -> int:
        return self._peak

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._read())
        return self._peak

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_INTERVAL_S):
            self._peak = max(self._peak, self._read())

    def _read(self) -> int:
        try:
            return int(self._current_bytes())
        except (psutil.Error, OSError):
            return 0

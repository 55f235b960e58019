"""What other libraries do to find the largest batch, reimplemented over one oracle.

Each peer is a pure function of an oracle ``trial(batch_size) -> peak bytes, or None when
that batch ran out of memory``, so the same code runs against a real model (a trial is a few
training steps in a worker process) and against an exact simulated memory curve (a trial is
a function call). The logic follows each library's source; what we changed is said inline.

- `lightning_power`: PyTorch Lightning ``Tuner.scale_batch_size(mode="power")``: start at 2,
  double until out of memory, answer the last size that ran.
- `lightning_binsearch`: ``mode="binsearch"``: double until out of memory, then bisect
  between the last success and the first failure down to a gap of 1.
- `huggingface`: Accelerate's ``find_executable_batch_size`` (what the Trainer's
  ``auto_find_batch_size`` uses): start high and shrink after each out-of-memory error, by half
  (Accelerate before 1.x, its documented behaviour) or by 10% (``factor=0.9``, Accelerate 1.x).
- `ultralytics`: Ultralytics ``autobatch``: measure batches 1..16, fit a line to log(memory)
  against log(batch), solve for 60% of the free memory; outside [1, 1024] use the default 16.

Example:
    >>> curve = lambda b: 100 + 3 * b            # peak bytes at batch b
    >>> oracle = lambda b: curve(b) if curve(b) <= 1000 else None
    >>> lightning_binsearch(oracle).answer       # 300, the exact largest fit
    300
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = [
    "Oracle",
    "PeerRun",
    "Recorder",
    "huggingface",
    "lightning_binsearch",
    "lightning_power",
    "ultralytics",
]

#: ``trial(batch_size)`` -> peak bytes of a few training steps, or None when out of memory.
Oracle = Callable[[int], "int | None"]


@dataclass
class PeerRun:
    """One peer's search: its answer and every trial it ran, in order."""

    name: str
    answer: int
    """The batch size the peer would train with (0: it found none)."""
    trials: list[tuple[int, bool]] = field(default_factory=list)
    """(batch size, ran without running out of memory) for each trial."""
    note: str = ""

    @property
    def num_trials(self) -> int:
        return len(self.trials)

    @property
    def num_oom(self) -> int:
        return sum(not fitted for _, fitted in self.trials)

    @property
    def trial_sizes(self) -> list[int]:
        return [batch for batch, _ in self.trials]


class Recorder:
    """Wraps an oracle and logs every call into a `PeerRun`."""

    def __init__(self, oracle: Oracle, name: str) -> None:
        self.oracle = oracle
        self.run = PeerRun(name, 0)

    def peak(self, batch_size: int) -> int | None:
        peak = self.oracle(batch_size)
        self.run.trials.append((batch_size, peak is not None))
        return peak

    def fits(self, batch_size: int) -> bool:
        return self.peak(batch_size) is not None

    def done(self, answer: int, note: str = "") -> PeerRun:
        self.run.answer = max(0, int(answer))
        self.run.note = note
        return self.run


def lightning_power(
    oracle: Oracle, *, init_val: int = 2, max_trials: int = 25, num_samples: int | None = None
) -> PeerRun:
    """Lightning's "power" mode (``_run_power_scaling``): double until out of memory."""
    recorder = Recorder(oracle, "Lightning power")
    size, any_success = init_val, False
    for _ in range(max_trials):
        if recorder.fits(size):
            # Lightning stops growing once the batch reaches the dataset's length.
            if num_samples is not None and size >= num_samples:
                return recorder.done(size, "reached the number of samples")
            size, any_success = size * 2, True
        else:
            size = size // 2
            if any_success or size == 0:
                break
    # As in Lightning, hitting max_trials without an OOM returns the last *untried* doubling.
    return recorder.done(size)


def lightning_binsearch(
    oracle: Oracle, *, init_val: int = 2, max_trials: int = 25, num_samples: int | None = None
) -> PeerRun:
    """Lightning's "binsearch" mode (``_run_binary_scaling``): double, then bisect to a gap of 1."""
    recorder = Recorder(oracle, "Lightning binsearch")
    low, high, count, size = 1, None, 0, init_val
    while size >= 1:
        if recorder.fits(size):
            count += 1
            if count > max_trials:
                break
            low = size
            if num_samples is not None and size >= num_samples:
                break
            if high is not None:
                if high - low <= 1:
                    break
                size = (high + low) // 2
            else:
                size = size * 2
        else:
            high = size
            size = (high + low) // 2
            if high - low <= 1:
                break
    return recorder.done(size if recorder.run.trials and size >= 1 else 0)


def huggingface(oracle: Oracle, *, start: int = 1024, factor: float = 0.5) -> PeerRun:
    """Accelerate's ``find_executable_batch_size``: shrink from ``start`` until a batch runs.

    ``factor=0.5`` halves (Accelerate's documented behaviour before 1.x, "decreasing the batch
    size in half after each failed run"); ``factor=0.9`` is Accelerate 1.x's default.
    """
    name = "HF halving" if factor == 0.5 else f"HF x{factor:g}"
    recorder = Recorder(oracle, name)
    size = start
    while size > 0:
        if recorder.fits(size):
            return recorder.done(size)
        size = size // 2 if factor == 0.5 else int(size * factor)
    return recorder.done(0, "no executable batch size found, reached zero")


def ultralytics(
    oracle: Oracle,
    *,
    total_bytes: int,
    used_bytes: int,
    fraction: float = 0.6,
    default: int = 16,
) -> PeerRun:
    """Ultralytics ``autobatch``: a log-log line through batches 1..16, solved at 60% of free memory.

    ``total_bytes`` is the device's memory (here the memory limit) and ``used_bytes`` what is
    in use before profiling; the oracle's peaks are absolute (what the device holds at the
    trial's peak), as Ultralytics reads ``torch.cuda.memory_reserved()``.
    """
    recorder = Recorder(oracle, "Ultralytics")
    gib = 1 << 30
    total, free = total_bytes / gib, (total_bytes - used_bytes) / gib
    sizes = [1, 2, 4, 8, 16] if total < 16 else [1, 2, 4, 8, 16, 32, 64]
    results = [recorder.peak(b) for b in sizes]
    memory = [None if r is None else r / gib for r in results]
    points = [
        (b, y)
        for i, (b, y) in enumerate(zip(sizes, memory, strict=True))
        if y is not None and 0 < y < total and (i == 0 or memory[i - 1] is None or y > memory[i - 1])
    ]
    if len(points) < 2:
        return recorder.done(default, f"fewer than two usable points, default {default}")
    slope, intercept = np.polyfit(np.log([b for b, _ in points]), np.log([y for _, y in points]), 1)
    if slope <= 0 or free * fraction <= 0:
        return recorder.done(default, f"no growing fit, default {default}")
    exponent = (math.log(free * fraction) - intercept) / slope
    if exponent > math.log(2**62):
        # numpy's exp overflows to inf and round() raises; Ultralytics' `except Exception`
        # then falls back to the default batch size.
        return recorder.done(default, f"fit overflowed, default {default}")
    answer = round(math.exp(exponent))
    if None in results:
        first_fail = results.index(None)
        if answer >= sizes[first_fail]:
            answer = sizes[max(first_fail - 1, 0)]
    if answer < 1 or answer > 1024:
        return recorder.done(default, f"fit gave {answer}, outside [1, 1024]: default {default}")
    return recorder.done(answer)

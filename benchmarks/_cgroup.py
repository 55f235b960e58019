"""A real memory limit for benchmark processes: a cgroup of their own (Linux, v1 or v2).

A process started in a `MemoryCage` is killed by the kernel's OOM killer (SIGKILL) when the
cage's memory use crosses its limit, exactly what happens to a training job in a container.
Creating a cgroup needs write access to the cgroup file system (root, or a delegated
subtree); `MemoryCage.create` returns None where that is not possible, and the benchmarks
fall back to an explicit ``memory_limit``.

Example:
    >>> with MemoryCage.create("bench-mlp", 2 * 2**30) as cage:
    ...     subprocess.run(cmd, preexec_fn=cage.enter)   # the child runs under 2 GiB
    ...     cage.oom_kills()                              # how many times the kernel killed
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["MemoryCage", "find_memory_hierarchy"]

# A v1 limit this large means "no limit" (PAGE_COUNTER_MAX rounded to pages).
_UNLIMITED_FROM = 2**60


def find_memory_hierarchy() -> tuple[int, Path] | None:
    """(cgroup version, mount point) of a writable memory controller, or None.

    v1 wins where both are mounted: on hybrid machines the v2 tree has no memory controller.
    """
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    v1, v2 = None, None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        fs_type, options = fields[separator + 1], fields[-1].split(",")
        mount_point = Path(fields[4])
        if fs_type == "cgroup" and "memory" in options:
            v1 = mount_point
        elif fs_type == "cgroup2":
            controllers = _read(mount_point / "cgroup.subtree_control") or ""
            if "memory" in controllers.split():
                v2 = mount_point
    for version, mount_point in ((1, v1), (2, v2)):
        if mount_point is not None and os.access(mount_point, os.W_OK):
            return version, mount_point
    return None


class MemoryCage:
    """One cgroup with a memory limit; processes enter it with `enter` (a ``preexec_fn``)."""

    def __init__(self, version: int, directory: Path, limit_bytes: int) -> None:
        self.version = version
        self.directory = directory
        self.limit_bytes = limit_bytes

    @classmethod
    def create(cls, name: str, limit_bytes: int) -> MemoryCage | None:
        """Make the cgroup and set its limit (no swap); None when cgroups cannot be made here."""
        found = find_memory_hierarchy()
        if found is None:
            return None
        version, mount_point = found
        directory = mount_point / f"autobatch-bench-{os.getpid()}-{name}"
        try:
            directory.mkdir()
        except OSError:
            return None
        cage = cls(version, directory, limit_bytes)
        try:
            cage.set_limit(limit_bytes)
        except OSError:
            cage.close()
            return None
        return cage

    def set_limit(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        if self.version == 1:
            # memsw (memory + swap) must stay >= the memory limit: raise it first, set it last.
            memsw = self.directory / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text("-1")
            (self.directory / "memory.limit_in_bytes").write_text(str(limit_bytes))
            if memsw.exists():
                memsw.write_text(str(limit_bytes))
        else:
            (self.directory / "memory.max").write_text(str(limit_bytes))
            swap = self.directory / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")

    @property
    def description(self) -> str:
        return f"cgroup v{self.version} {self.directory} limit {self.limit_bytes / 2**20:.0f} MiB"

    def enter(self) -> None:
        """Move the calling process into the cage (use as ``subprocess``'s ``preexec_fn``).

        Runs in the child after fork and before exec, so the whole program (its imports too)
        runs under the limit.
        """
        (self.directory / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        """How many processes the OOM killer has ended in this cage so far."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (_read(self.directory / name) or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def usage_bytes(self) -> int | None:
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        text = _read(self.directory / name)
        return int(text) if text and text.isdigit() else None

    def reset_peak(self) -> bool:
        """Start a new peak measurement; False where the kernel cannot reset it."""
        try:
            if self.version == 1:
                (self.directory / "memory.max_usage_in_bytes").write_text("0")
                return True
        except OSError:
            pass
        return False

    def peak_bytes(self) -> int | None:
        """The cage's peak memory use since `reset_peak` (v2: since it was made)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        text = _read(self.directory / name)
        return int(text) if text and text.isdigit() else None

    def processes(self) -> list[int]:
        text = _read(self.directory / "cgroup.procs") or ""
        return [int(pid) for pid in text.split()]

    def close(self) -> None:
        """Remove the cgroup, first ending processes still in it (only ours can be there)."""
        for _ in range(50):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        try:
            self.directory.rmdir()
        except FileNotFoundError:
            pass

    def __enter__(self) -> MemoryCage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None

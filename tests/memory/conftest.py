"""Fixture trees that look like a machine's /proc and /sys/fs/cgroup, built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

V1_UNLIMITED = 9223372036854771712  # PAGE_COUNTER_MAX * 4 KiB: what v1 reports for "no limit"

V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 {root} /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
V2_MOUNTINFO = (
    "24 30 0:22 / /proc rw,nosuid - proc proc rw\n"
    "35 24 0:30 {root} /sys/fs/cgroup rw,nosuid,nodev shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
)


class CgroupTree:
    """Writes /proc/self/{cgroup,mountinfo} and cgroup files under a fake root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "proc" / "self").mkdir(parents=True)

    def v1(self, cgroup_path: str, mount_root: str = "/") -> "CgroupTree":
        self._write("proc/self/cgroup", f"5:cpu,cpuacct:/\n4:memory:{cgroup_path}\n0::/\n")
        self._write("proc/self/mountinfo", V1_MOUNTINFO.format(root=mount_root))
        (self.root / "sys/fs/cgroup/memory").mkdir(parents=True, exist_ok=True)
        return self

    def v2(self, cgroup_path: str, mount_root: str = "/") -> "CgroupTree":
        self._write("proc/self/cgroup", f"0::{cgroup_path}\n")
        self._write("proc/self/mountinfo", V2_MOUNTINFO.format(root=mount_root))
        (self.root / "sys/fs/cgroup").mkdir(parents=True, exist_ok=True)
        return self

    def v1_level(self, directory: str, limit: int, usage: int, inactive_file: int = 0) -> Path:
        """A v1 cgroup directory (relative to the memory mount point)."""
        path = self.root / "sys/fs/cgroup/memory" / directory.strip("/")
        self._files(
            path,
            {
                "memory.limit_in_bytes": f"{limit}\n",
                "memory.usage_in_bytes": f"{usage}\n",
                "memory.stat": f"cache 1\ninactive_file 7\ntotal_inactive_file {inactive_file}\n",
            },
        )
        return path

    def v2_level(
        self, directory: str, limit: int | str, current: int, inactive_file: int = 0
    ) -> Path:
        """A v2 cgroup directory (relative to the cgroup2 mount point)."""
        path = self.root / "sys/fs/cgroup" / directory.strip("/")
        self._files(
            path,
            {
                "memory.max": f"{limit}\n",
                "memory.current": f"{current}\n",
                "memory.stat": f"anon 5\nfile 9\ninactive_file {inactive_file}\n",
            },
        )
        return path

    def _files(self, directory: Path, files: dict[str, str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (directory / name).write_text(text)

    def _write(self, relative: str, text: str) -> None:
        (self.root / relative).write_text(text)


@pytest.fixture
def cgroup_tree(tmp_path: Path) -> CgroupTree:
    return CgroupTree(tmp_path)

"""This process's memory limit from its cgroup (v1 or v2), read from plain files.

``psutil.virtual_memory()`` describes the host, not the container: a job with a 16 GiB
cgroup limit on a 512 GiB machine is killed at 16 GiB. The limit lives in the cgroup
filesystem:

- v1: ``memory.limit_in_bytes`` (a huge sentinel means "no limit"), ``memory.usage_in_bytes``,
  ``memory.stat`` (``total_inactive_file``);
- v2: ``memory.max`` ("max" means none), ``memory.current``, ``memory.stat`` (``inactive_file``).

Every level of the tree up to the mount root can set a limit, and the tightest one wins.
Nothing here raises on missing or odd files: a value that cannot be read is None and the
caller falls back to host RAM. Every function takes ``root`` (default "/") so tests can
point it at a fixture tree.

Example:
    >>> memory = read_cgroup_memory()
    >>> memory.headroom_bytes if memory else None  # bytes left before the OOM killer
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CgroupMemory",
    "MemoryCgroup",
    "Mount",
    "find_memory_cgroup",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "read_cgroup_memory",
    "read_level",
]

# v1 has no "max": an unlimited cgroup reports PAGE_COUNTER_MAX * PAGE_SIZE, which is
# 9223372036854771712 with 4 KiB pages but smaller with 16/64 KiB pages. No machine has
# an exbibyte of RAM, so anything from 2**60 up means "no limit".
_UNLIMITED_FROM = 2**60


@dataclass(frozen=True)
class CgroupMemory:
    """The tightest memory limit over this process's cgroup and its ancestors."""

    limit_bytes: int | None
    """The limit of the level in ``path``; None when no level sets one."""
    usage_bytes: int | None
    """Working set of that level: usage minus inactive file cache (the kernel reclaims
    inactive page cache before it OOM-kills, so it is not counted as used)."""
    version: int
    """1 or 2."""
    path: str
    """The cgroup directory the numbers come from."""

    @property
    def headroom_bytes(self) -> int | None:
        """Bytes the cgroup may still grow by (never negative); None without a limit."""
        if self.limit_bytes is None:
            return None
        return max(0, self.limit_bytes - (self.usage_bytes or 0))


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo, reduced to what we need."""

    root: str
    """The path inside the cgroup hierarchy that is mounted (often "/")."""
    mount_point: str
    fs_type: str
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class MemoryCgroup:
    """Where this process's memory cgroup is: version, mount, and leaf directory."""

    version: int
    mount_point: Path
    directory: Path


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map each controller to this process's cgroup path, from /proc/self/cgroup.

    v1 lines look like ``4:memory:/docker/abc``; the v2 line is ``0::/user.slice``
    and is returned under the key ``""``.
    """
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)  # the path itself may contain ':'
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts of /proc/self/mountinfo (see proc(5))."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")  # optional fields come before it
        if separator < 5 or len(fields) < separator + 2:
            continue
        fs_type = fields[separator + 1]
        if fs_type not in ("cgroup", "cgroup2"):
            continue
        options = fields[separator + 3] if len(fields) > separator + 3 else ""
        mounts.append(
            Mount(
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fs_type=fs_type,
                super_options=tuple(options.split(",")),
            )
        )
    return mounts


def find_memory_cgroup(
    cgroup_text: str, mountinfo_text: str, root: str | os.PathLike[str] = "/"
) -> MemoryCgroup | None:
    """Locate this process's memory cgroup directory; None when there is none.

    A v1 memory controller wins over v2: on hybrid systems the v2 tree is mounted but
    has no memory controller. Inside containers the path in /proc/self/cgroup may be
    relative to the host's hierarchy, not to what is mounted: strip the mount's root
    from it, and if the directory still does not exist, walk up to the nearest one that
    does (in the common case, the mount point itself is the container's cgroup).
    """
    paths = parse_proc_cgroup(cgroup_text)
    mounts = parse_mountinfo(mountinfo_text)
    candidates: list[tuple[int, str, list[Mount]]] = []
    if "memory" in paths:
        v1 = [m for m in mounts if m.fs_type == "cgroup" and "memory" in m.super_options]
        candidates.append((1, paths["memory"], v1))
    if "" in paths:
        candidates.append((2, paths[""], [m for m in mounts if m.fs_type == "cgroup2"]))
    for version, cgroup_path, version_mounts in candidates:
        if not version_mounts:
            continue
        mount = _best_mount(cgroup_path, version_mounts)
        mount_point = Path(root) / mount.mount_point.lstrip("/")
        directory = _existing_directory(mount_point, _relative_to_mount(cgroup_path, mount.root))
        if directory is not None:
            # A v2 tree without the memory controller has no memory.* files: every value
            # then reads as None, which callers treat as "no cgroup limit".
            return MemoryCgroup(version=version, mount_point=mount_point, directory=directory)
    return None


def read_level(directory: str | os.PathLike[str], version: int) -> CgroupMemory:
    """Limit and working set of one cgroup directory (values that cannot be read are None)."""
    directory = Path(directory)
    if version == 1:
        limit = _read_int(directory / "memory.limit_in_bytes")
        if limit is not None and limit >= _UNLIMITED_FROM:
            limit = None
        usage = _read_int(directory / "memory.usage_in_bytes")
        stat = _read_stat(directory / "memory.stat")
        # total_inactive_file covers the subtree, like usage_in_bytes does.
        inactive = stat.get("total_inactive_file", stat.get("inactive_file"))
    else:
        raw = _read_text(directory / "memory.max")
        limit = None if raw is None or raw == "max" else _to_int(raw)
        usage = _read_int(directory / "memory.current")
        inactive = _read_stat(directory / "memory.stat").get("inactive_file")
    if usage is not None and inactive is not None:
        usage = max(0, usage - inactive)
    return CgroupMemory(limit_bytes=limit, usage_bytes=usage, version=version, path=str(directory))


def read_cgroup_memory(root: str | os.PathLike[str] = "/") -> CgroupMemory | None:
    """The binding memory limit of this process's cgroup, or None if there is no cgroup.

    Walks from the process's cgroup up to the mount root and returns the level with the
    least headroom (limit minus working set): usually the smallest limit, but a parent
    with a larger limit that siblings have nearly filled binds first. With no limit at
    any level, returns the leaf with ``limit_bytes=None``.
    """
    proc_self = Path(root) / "proc" / "self"
    cgroup_text = _read_text(proc_self / "cgroup")
    mountinfo_text = _read_text(proc_self / "mountinfo")
    if cgroup_text is None or mountinfo_text is None:
        return None
    found = find_memory_cgroup(cgroup_text, mountinfo_text, root)
    if found is None:
        return None
    levels = [read_level(d, found.version) for d in _up_to(found.directory, found.mount_point)]
    limited = [level for level in levels if level.limit_bytes is not None]
    if not limited:
        return levels[0]
    return min(limited, key=lambda level: level.headroom_bytes or 0)


def _best_mount(cgroup_path: str, mounts: list[Mount]) -> Mount:
    # Prefer the mount whose root contains our cgroup (the deepest such root); nested
    # containers can have several mounts of one hierarchy.
    containing = [m for m in mounts if _is_within(cgroup_path, m.root)]
    if containing:
        return max(containing, key=lambda m: len(m.root))
    return mounts[0]


def _relative_to_mount(cgroup_path: str, mount_root: str) -> str:
    if _is_within(cgroup_path, mount_root):
        return cgroup_path[len(mount_root.rstrip("/")) :].lstrip("/")
    return cgroup_path.lstrip("/")


def _is_within(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def _existing_directory(mount_point: Path, relative: str) -> Path | None:
    if not mount_point.is_dir():
        return None
    directory = mount_point / relative if relative else mount_point
    while directory != mount_point and not directory.is_dir():
        directory = directory.parent
    return directory


def _up_to(directory: Path, mount_point: Path) -> list[Path]:
    """``directory`` and its parents, stopping at the mount point (included)."""
    chain = [directory]
    while chain[-1] != mount_point and mount_point in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except (OSError, ValueError):
        return None


def _to_int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    return None if text is None else _to_int(text)


def _read_stat(path: Path) -> dict[str, int]:
    stat: dict[str, int] = {}
    for line in (_read_text(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and (value := _to_int(parts[1])) is not None:
            stat[parts[0]] = value
    return stat

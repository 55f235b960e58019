"""Finding this process's memory limit in cgroup v1 and v2 trees (fixture trees in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autobatch.memory.cgroup import (
    CgroupMemory,
    find_memory_cgroup,
    parse_mountinfo,
    parse_proc_cgroup,
    read_cgroup_memory,
    read_level,
)
from tests.memory.conftest import V1_UNLIMITED

GiB = 2**30
MiB = 2**20


# --- cgroup v1 ---------------------------------------------------------------------------


def test_v1_unlimited_sentinel_means_no_limit(cgroup_tree):
    cgroup_tree.v1("/job")
    cgroup_tree.v1_level("/", V1_UNLIMITED, 5 * GiB)
    leaf = cgroup_tree.v1_level("/job", V1_UNLIMITED, 1000, inactive_file=100)

    memory = read_cgroup_memory(cgroup_tree.root)

    assert memory == CgroupMemory(limit_bytes=None, usage_bytes=900, version=1, path=str(leaf))
    assert memory.headroom_bytes is None


def test_v1_sentinel_with_64k_pages_is_also_no_limit(cgroup_tree):
    # PAGE_COUNTER_MAX * 64 KiB pages: smaller than the 4 KiB-page sentinel.
    cgroup_tree.v1("/job")
    cgroup_tree.v1_level("/job", 9223372036854710272, 1000)
    assert read_cgroup_memory(cgroup_tree.root).limit_bytes is None


def test_v1_limit_and_working_set(cgroup_tree):
    cgroup_tree.v1("/job")
    cgroup_tree.v1_level("/job", 2 * GiB, 1 * GiB, inactive_file=256 * MiB)

    memory = read_cgroup_memory(cgroup_tree.root)

    assert memory.version == 1
    assert memory.limit_bytes == 2 * GiB
    # Inactive page cache is reclaimed before the OOM killer runs: not counted as used.
    assert memory.usage_bytes == 768 * MiB
    assert memory.headroom_bytes == 2 * GiB - 768 * MiB


def test_v1_wins_over_the_unified_tree_on_hybrid_systems(cgroup_tree):
    # The fixture mounts cgroup2 at /sys/fs/cgroup/unified too, like this project's machines.
    cgroup_tree.v1("/job")
    cgroup_tree.v1_level("/job", 3 * GiB, 0)
    assert read_cgroup_memory(cgroup_tree.root).version == 1


# --- cgroup v2 ---------------------------------------------------------------------------


def test_v2_max_means_no_limit(cgroup_tree):
    cgroup_tree.v2("/user.slice/job")
    cgroup_tree.v2_level("/user.slice", "max", 10 * GiB)
    leaf = cgroup_tree.v2_level("/user.slice/job", "max", 3 * GiB, inactive_file=GiB)

    memory = read_cgroup_memory(cgroup_tree.root)

    assert memory == CgroupMemory(limit_bytes=None, usage_bytes=2 * GiB, version=2, path=str(leaf))


def test_v2_limit(cgroup_tree):
    cgroup_tree.v2("/job")
    cgroup_tree.v2_level("/job", 4 * GiB, 3 * GiB, inactive_file=GiB)

    memory = read_cgroup_memory(cgroup_tree.root)

    assert (memory.version, memory.limit_bytes, memory.usage_bytes) == (2, 4 * GiB, 2 * GiB)
    assert memory.headroom_bytes == 2 * GiB


# --- walking up the tree -----------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_smaller_parent_limit_wins(cgroup_tree, version):
    if version == 1:
        cgroup_tree.v1("/a/b")
        parent = cgroup_tree.v1_level("/a", 1 * GiB, 100 * MiB)
        cgroup_tree.v1_level("/a/b", 4 * GiB, 50 * MiB)
    else:
        cgroup_tree.v2("/a/b")
        parent = cgroup_tree.v2_level("/a", 1 * GiB, 100 * MiB)
        cgroup_tree.v2_level("/a/b", 4 * GiB, 50 * MiB)

    memory = read_cgroup_memory(cgroup_tree.root)

    assert memory.limit_bytes == 1 * GiB
    assert memory.path == str(parent)


def test_larger_but_fuller_parent_binds_first(cgroup_tree):
    # The parent's 10 GiB is shared with siblings that use 9.5 GiB: only 0.5 GiB is left
    # there, although the child's own limit (8 GiB) is smaller.
    cgroup_tree.v2("/a/b")
    parent = cgroup_tree.v2_level("/a", 10 * GiB, 10 * GiB - 512 * MiB)
    cgroup_tree.v2_level("/a/b", 8 * GiB, 1 * GiB)

    memory = read_cgroup_memory(cgroup_tree.root)

    assert memory.path == str(parent)
    assert memory.headroom_bytes == 512 * MiB


def test_levels_above_the_mount_point_are_not_read(cgroup_tree):
    cgroup_tree.v2("/job")
    cgroup_tree.v2_level("/job", "max", 0)
    # A file beside the mount point, i.e. outside the cgroup tree, must be ignored.
    (cgroup_tree.root / "sys/fs/memory.max").write_text(f"{GiB}\n")
    assert read_cgroup_memory(cgroup_tree.root).limit_bytes is None


# --- containers: the path in /proc/self/cgroup is not under the mount -------------------


def test_container_path_missing_under_mount_falls_back_to_mount_point(cgroup_tree):
    # Like this project's machines: /proc/self/cgroup names /process_api/<id>, the mount's
    # root is "/", and the mount point itself is the process's cgroup.
    cgroup_tree.v1("/process_api/58643fb3e4ae0e161c3c76672491fb7e")
    mount_point = cgroup_tree.v1_level("/", 6 * GiB, 2 * GiB)

    memory = read_cgroup_memory(cgroup_tree.root)

    assert memory.path == str(mount_point)
    assert memory.limit_bytes == 6 * GiB


def test_container_nearest_existing_ancestor_is_used(cgroup_tree):
    cgroup_tree.v2("/kubepods/pod1/container9")
    pod = cgroup_tree.v2_level("/kubepods/pod1", 2 * GiB, 0)
    cgroup_tree.v2_level("/", "max", 0)

    memory = read_cgroup_memory(cgroup_tree.root)

    assert memory.path == str(pod)
    assert memory.limit_bytes == 2 * GiB


def test_container_mount_root_is_stripped_from_the_path(cgroup_tree):
    # Docker without a cgroup namespace: the mount's root is the container's cgroup.
    cgroup_tree.v1("/docker/abc/worker", mount_root="/docker/abc")
    leaf = cgroup_tree.v1_level("/worker", 3 * GiB, 0)
    mount_point = cgroup_tree.v1_level("/", 1 * GiB, 0)  # the container's own limit
    proc_self = cgroup_tree.root / "proc/self"

    found = find_memory_cgroup(
        (proc_self / "cgroup").read_text(), (proc_self / "mountinfo").read_text(), cgroup_tree.root
    )
    memory = read_cgroup_memory(cgroup_tree.root)

    assert found.directory == leaf
    assert (memory.limit_bytes, memory.path) == (1 * GiB, str(mount_point))


# --- missing and odd files ---------------------------------------------------------------


def test_no_proc_files_gives_none(tmp_path):
    assert read_cgroup_memory(tmp_path) is None


def test_no_memory_mount_gives_none(cgroup_tree):
    cgroup_tree.v1("/job")
    (cgroup_tree.root / "proc/self/mountinfo").write_text(
        "24 30 0:22 / /proc rw,nosuid - proc proc rw\n"
    )
    assert read_cgroup_memory(cgroup_tree.root) is None


def test_missing_mount_point_directory_gives_none(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/job\n")
    (tmp_path / "proc/self/mountinfo").write_text(
        "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    )
    assert read_cgroup_memory(tmp_path) is None


def test_missing_memory_files_read_as_unknown(cgroup_tree):
    cgroup_tree.v2("/job")
    (cgroup_tree.root / "sys/fs/cgroup/job").mkdir()

    memory = read_cgroup_memory(cgroup_tree.root)

    assert (memory.limit_bytes, memory.usage_bytes) == (None, None)


def test_garbage_values_read_as_unknown(tmp_path):
    (tmp_path / "memory.limit_in_bytes").write_text("lots\n")
    (tmp_path / "memory.usage_in_bytes").write_text("")
    (tmp_path / "memory.stat").write_text("total_inactive_file x\nbroken line here\n")

    memory = read_level(tmp_path, 1)

    assert (memory.limit_bytes, memory.usage_bytes) == (None, None)


def test_working_set_never_negative(tmp_path):
    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("10\n")
    (tmp_path / "memory.stat").write_text("inactive_file 50\n")
    assert read_level(tmp_path, 2).usage_bytes == 0


def test_headroom_never_negative():
    assert CgroupMemory(1000, 1500, 2, "/x").headroom_bytes == 0


# --- parsers -----------------------------------------------------------------------------


def test_parse_proc_cgroup():
    text = "5:cpu,cpuacct:/a\n4:memory:/process_api/x:y\n0::/user.slice\nbad line\n"
    assert parse_proc_cgroup(text) == {
        "cpu": "/a",
        "cpuacct": "/a",
        "memory": "/process_api/x:y",
        "": "/user.slice",
    }


def test_parse_mountinfo_keeps_cgroup_mounts_and_unescapes():
    text = (
        "24 30 0:22 / /proc rw - proc proc rw\n"
        r"35 31 0:32 /my\040job /sys/fs/cgroup/memory rw shared:1 master:2 - "
        "cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "garbage\n"
    )
    v1, v2 = parse_mountinfo(text)
    assert (v1.root, v1.mount_point, v1.fs_type) == ("/my job", "/sys/fs/cgroup/memory", "cgroup")
    assert "memory" in v1.super_options
    assert (v2.fs_type, v2.mount_point) == ("cgroup2", "/sys/fs/cgroup/unified")


def test_find_memory_cgroup_on_text_only(tmp_path):
    (tmp_path / "sys/fs/cgroup/job").mkdir(parents=True)
    found = find_memory_cgroup(
        "0::/job\n", "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", tmp_path
    )
    assert found.version == 2
    assert found.directory == tmp_path / "sys/fs/cgroup/job"


# --- this machine ------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/cgroup").exists(), reason="no /proc/self/cgroup")
def test_this_machine_is_readable():
    memory = read_cgroup_memory()
    if memory is None:
        pytest.skip("no memory cgroup mounted here")
    assert memory.version in (1, 2)
    assert Path(memory.path).is_dir()
    assert memory.limit_bytes is None or memory.limit_bytes > 0

"""HostMemory on this machine: real peak-RSS measurements, limits and overrides."""

from __future__ import annotations

import mmap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from autobatch.errors import InvalidArgumentError
from autobatch.memory import HostMemory

MiB = 2**20
GiB = 2**30

VMHWM = "process peak RSS (VmHWM), file-backed pages excluded"
SAMPLED = "sampled RSS (every 2 ms), file-backed pages excluded where known"


def _allocate(num_bytes: int, hold_s: float = 0.0) -> None:
    """Touch ``num_bytes`` of fresh memory (np.ones writes every page), then free it."""
    block = np.ones(num_bytes // 8)
    if hold_s:
        time.sleep(hold_s)  # give a sampling thread time to see it
    del block


def _peak_of(memory: HostMemory, num_bytes: int, hold_s: float = 0.0) -> tuple[int, int]:
    """(RSS before, peak) of a trial that allocates ``num_bytes``."""
    before = memory.current_bytes()
    with memory.trial(1) as reading:
        _allocate(num_bytes, hold_s)
    return before, reading.peak_bytes


@pytest.fixture
def vmhwm_memory() -> HostMemory:
    memory = HostMemory()
    if memory.peak_source != VMHWM:
        pytest.skip("/proc/self/clear_refs is not writable here (not Linux >= 4.0)")
    return memory


def test_peak_of_200_mib_allocation_is_measured_exactly(vmhwm_memory):
    before, peak = _peak_of(vmhwm_memory, 200 * MiB)

    assert 195 * MiB <= peak - before <= 215 * MiB
    assert vmhwm_memory.current_bytes() < before + 50 * MiB  # and it was given back


def test_each_trial_starts_a_new_peak(vmhwm_memory):
    _, big_peak = _peak_of(vmhwm_memory, 200 * MiB)
    before, small_peak = _peak_of(vmhwm_memory, 20 * MiB)

    # Without the clear_refs reset, the small trial would read the big one's peak.
    assert small_peak < big_peak - 100 * MiB
    assert 15 * MiB <= small_peak - before <= 35 * MiB


def test_release_hands_freed_heap_back():
    from autobatch.memory import host

    if host._malloc_trim() is None:
        pytest.skip("no glibc malloc_trim here")
    memory = HostMemory()
    # 120 MB of heap blocks below malloc's mmap threshold; freeing every other one leaves
    # holes that malloc keeps (the live blocks pin the heap's top), as TF trials do.
    blocks = [b"x" * 60000 for _ in range(2000)]
    del blocks[::2]
    kept = memory.current_bytes()
    memory.release()

    assert kept - memory.current_bytes() > 40 * MiB
    del blocks


def test_sampling_fallback_when_clear_refs_is_unavailable(tmp_path: Path):
    memory = HostMemory(proc_self=tmp_path)  # no clear_refs or status there

    assert memory.peak_source == SAMPLED
    before, peak = _peak_of(memory, 200 * MiB, hold_s=0.05)
    assert 150 * MiB <= peak - before <= 260 * MiB
    assert memory.current_bytes() == pytest.approx(psutil.Process().memory_info().rss, abs=20 * MiB)


def test_sampled_peaks_exclude_file_pages_like_current_use(tmp_path: Path):
    # /proc/self/status readable, clear_refs not (a locked-down /proc): the sampler must
    # measure what current_bytes measures, or every peak reads ~file pages too high.
    (tmp_path / "status").symlink_to("/proc/self/status")
    (tmp_path / "clear_refs").mkdir()  # writing to it fails, as on a read-only /proc
    memory = HostMemory(proc_self=tmp_path)
    if memory._read_status("RssFile") is None:
        pytest.skip("no RssFile in /proc/self/status here")

    assert memory.peak_source == SAMPLED
    # 128 MiB of file-backed pages, resident while the peak is measured.
    mapped_file = tmp_path / "mapped.bin"
    mapped_file.write_bytes(b"\1" * (128 * MiB))
    with open(mapped_file, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as pages:
        assert sum(pages[i] for i in range(0, len(pages), 4096)) > 0  # touch every page
        if (memory._read_status("RssFile") or 0) < 100 * MiB:
            pytest.skip("the mapped file is not counted as file-backed here (tmpfs?)")
        before, peak = _peak_of(memory, 200 * MiB, hold_s=0.05)
    assert 150 * MiB <= peak - before <= 260 * MiB


def test_sampler_thread_stops_when_the_block_raises(tmp_path: Path):
    memory = HostMemory(proc_self=tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with memory.trial(1) as reading:
            raise RuntimeError("boom")
    assert isinstance(reading.peak_bytes, int) and reading.peak_bytes > 0
    assert memory._sampler is None


def test_limit_is_at_most_physical_ram_and_above_current():
    memory = HostMemory()

    limit = memory.limit_bytes()

    assert memory.current_bytes() < limit <= psutil.virtual_memory().total
    assert memory.limit_source in ("cgroup", "host RAM")
    assert memory.oom_is_catchable is False
    assert memory.device == "CPU (host RAM)"


def test_cgroup_headroom_below_available_ram_sets_the_limit(cgroup_tree):
    cgroup_tree.v2("/job")
    cgroup_tree.v2_level("/job", 3 * GiB, 2 * GiB + 512 * MiB)  # 512 MiB left
    memory = HostMemory(cgroup_root=cgroup_tree.root)

    limit = memory.limit_bytes()

    assert memory.limit_source == "cgroup"
    assert limit - memory.current_bytes() == pytest.approx(512 * MiB, abs=8 * MiB)


def test_cgroup_without_limit_falls_back_to_host_ram(cgroup_tree):
    cgroup_tree.v2("/job")
    cgroup_tree.v2_level("/job", "max", GiB)
    memory = HostMemory(cgroup_root=cgroup_tree.root)

    memory.limit_bytes()

    assert memory.limit_source == "host RAM"


def test_memory_limit_argument_overrides_the_limit():
    memory = HostMemory(memory_limit=3 * GiB)

    assert memory.limit_bytes() == 3 * GiB
    assert memory.limit_source == "memory_limit argument"
    assert memory.describe()["limit_bytes"] == 3 * GiB


@pytest.mark.parametrize("bad", [0, -5, True, "lots", 1.5j])
def test_bad_memory_limit_is_rejected(bad):
    with pytest.raises(InvalidArgumentError, match="memory_limit=.* is not a memory size"):
        HostMemory(memory_limit=bad)

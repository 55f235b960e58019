"""`autobatch.files.write_atomically`: readers see the old file or the new one, never half."""

import json

import numpy as np
import pytest

from autobatch.files import write_atomically


def test_text_and_binary_files_land_whole(tmp_path):
    target = tmp_path / "sub" / "record.json"
    write_atomically(target, lambda file: json.dump({"a": 1}, file))
    assert json.loads(target.read_text()) == {"a": 1}

    arrays = tmp_path / "state.npz"
    write_atomically(arrays, lambda file: np.savez(file, w=np.arange(3)), binary=True)
    with np.load(arrays) as saved:
        assert saved["w"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["record.json", "state.npz", "sub"]


def test_a_file_gets_the_permissions_open_would_give_it(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        write_atomically(tmp_path / "record.json", lambda file: file.write("{}"))
    finally:
        os.umask(umask)
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")

    def fail_half_way(file):
        file.write("new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail_half_way)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]

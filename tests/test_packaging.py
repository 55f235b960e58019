"""What a library is expected to ship: type information and its own lint settings."""

from __future__ import annotations

from pathlib import Path

import pytest

import autobatch

ROOT = Path(autobatch.__file__).parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_py_typed_marker_is_shipped_with_the_package():
    assert (ROOT / "autobatch" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["autobatch"]


def test_ruff_and_mypy_are_dev_dependencies_and_configured():
    config = _pyproject()
    dev = " ".join(config["project"]["optional-dependencies"]["dev"])
    assert "ruff" in dev and "mypy" in dev
    assert {"F", "B"} <= set(config["tool"]["ruff"]["lint"]["select"])
    assert config["tool"]["mypy"]["packages"] == ["autobatch"]

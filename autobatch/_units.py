"""Parsing and printing byte sizes ("6GiB", "512 MB", 2**30)."""

from __future__ import annotations

import re

from autobatch.errors import InvalidArgumentError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str, *, name: str = "memory_limit") -> int:
    """Return ``value`` as a whole number of bytes.

    Accepts an int, a float, or a string such as ``"6GiB"``, ``"512MB"``, ``"1.5 GiB"``.
    """
    if isinstance(value, bool):
        raise InvalidArgumentError(_bad_size(name, value))
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match or match.group(2).lower() not in _UNITS:
            raise InvalidArgumentError(_bad_size(name, value))
        number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    else:
        raise InvalidArgumentError(_bad_size(name, value))
    if number != number or number <= 0 or number == float("inf"):
        raise InvalidArgumentError(_bad_size(name, value))
    return int(number)


def _bad_size(name: str, value: object) -> str:
    return (
        f"{name}={value!r} is not a memory size. Expected a positive number of bytes "
        f"or a string such as '6GiB', '512MiB' or '2GB' (units: B, KB, MB, GB, TB, "
        f"KiB, MiB, GiB, TiB)."
    )


def format_bytes(num_bytes: float | None) -> str:
    """Format bytes for people: ``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    if num_bytes is None:
        return "-"
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} TiB"

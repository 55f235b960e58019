"""The library versions every result and every cache key records.

Low in the import graph on purpose: the probe, the search and the probe cache all need it,
and none of them may import another just for this.
"""

from __future__ import annotations

import importlib.metadata as metadata

#: What decides memory use and behaviour: a change in any of these may change the answer.
RECORDED_LIBRARIES = ("keras-autobatch", "keras", "tensorflow", "jax", "torch", "keras-tuner")


def library_versions() -> dict[str, str]:
    """Versions of the installed libraries in `RECORDED_LIBRARIES` (missing ones left out)."""
    versions = {}
    for name in RECORDED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions

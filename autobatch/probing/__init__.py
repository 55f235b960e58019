"""Probing: the search strategy (pure), one trial (Keras), state restoration, and `probe()`."""

from autobatch.probing.probe import probe

__all__ = ["probe"]

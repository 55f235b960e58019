"""The search over batch settings: the only package that imports keras_tuner.

`tune` ties together the space (pure Python), the HyperModel around the caller's model, and
the keras-tuner Tuner that trains each candidate.
"""

from autobatch.search.tune import tune

__all__ = ["tune"]

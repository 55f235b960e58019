"""Fixtures shared by the search tests."""

import pytest

import autobatch
from tests.search.test_tune import make_model, regression_data


@pytest.fixture(scope="module")
def probed():
    """One probe for the tests that do not test probing: every batch up to the data fits."""
    x, y = regression_data(128)
    # use_cache=False: a module fixture runs before the per-test private cache is set up.
    return autobatch.probe(
        make_model(), (x, y), memory=autobatch.FakeMemory(2**40), use_cache=False, verbose=0
    )

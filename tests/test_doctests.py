"""The examples in docstrings run (and must pass): the pure functions' documentation stays true."""

import doctest
import importlib

import pytest

MODULES = ["volviz.views.grid", "volviz.views.colors", "volviz.analysis.reorder", "volviz.store.plan"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0

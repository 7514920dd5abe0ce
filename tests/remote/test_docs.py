"""The runnable examples in tfppml.remote's docstrings still run."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["tfppml.remote", "tfppml.remote.audit", "tfppml.remote.policy",
                                  "tfppml.remote.service", "tfppml.remote.cli", "tfppml.remote.models",
                                  "tfppml.remote.provenance", "tfppml.remote.compiling", "tfppml.remote.ledger",
                                  "tfppml.remote.releases", "tfppml.remote.dp_pointer"])  # fmt: skip
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

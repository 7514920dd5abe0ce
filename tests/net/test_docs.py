"""The runnable examples in tfppml.net's docstrings still run."""

import doctest
import importlib

import pytest

MODULES = [
    "codec",
    "certs",
    "config",
    "local",
    "mailbox",
    "services",
    "channel",
    "client",
    "server",
    "cluster",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"tfppml.net.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

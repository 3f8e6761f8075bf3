"""The runnable examples in the public docstrings stay true."""
import doctest
import importlib
import warnings

import pytest

MODULES = ["lightning_smpc.mpc.session", "lightning_smpc.mpc.tensor", "lightning_smpc.mpc.encoding",
           "lightning_smpc.metrics", "lightning_smpc.cli"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

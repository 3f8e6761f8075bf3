"""The runnable examples in the public docstrings stay true."""
import doctest
import importlib
import pkgutil
import warnings

import pytest

import lightning_smpc

# every module of the package: a runnable example in any docstring is run (a new module needs no listing)
MODULES = sorted(m.name for m in pkgutil.walk_packages(lightning_smpc.__path__, "lightning_smpc."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

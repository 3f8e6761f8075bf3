"""Torch callables -> protocols, one module per op family. Handlers only normalise arguments (public vs shared,
scales, shapes) and then call the protocols, so every byte sent is attributable to a protocol.

Importing this package registers every op (``implements`` in :mod:`..tensor`). Each family module imports
:mod:`._common`; :mod:`.arithmetic` is the one family the others build on (``_add``, ``_divide_public``).
The max-pooling protocol switch lives in :mod:`.pooling`: set ``pooling.MAXPOOL_DEFAULT`` there, not here.
"""
from . import arithmetic, bilinear, layers, nonlinear, pooling, reduction, shape, smooth, transformer  # noqa: F401  (registers the ops)
from ._common import _fixed, to_precision  # noqa: F401
from .arithmetic import _divide_public  # noqa: F401
from .nonlinear import argmax_onehot
from .pooling import MAXPOOL_METHOD, maxpool_fill, maxpool_method
from .table import ops_table_markdown, supported_ops

__all__ = ["MAXPOOL_METHOD", "argmax_onehot", "maxpool_fill", "maxpool_method", "ops_table_markdown", "supported_ops",
           "to_precision"]

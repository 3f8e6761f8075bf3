"""Protocols on additive shares (pure torch). Each one declares its online cost in :data:`COSTS`
(rounds and bytes sent per party, as functions of the party count and sizes); a conformance test checks
every declaration against the traffic the communicator measured."""
from ._cost import COSTS, Cost, protocol  # noqa: F401
from . import beaver as beaver_module  # noqa: F401
from .beaver import beaver  # noqa: F401
from .compare import argmax_onehot, compare_bit, compare_thresholds, relu  # noqa: F401
from .sharing import remask, reveal, share  # noqa: F401
from .truncation import truncate  # noqa: F401

"""Dealer material kinds: one module per kind, each declaring its parameters, wire schema, per-party layout,
generation and an example (see :mod:`.base`). :data:`KINDS` is the registry the wire format and the dealer
dispatch on; adding a kind is one module here plus its import below.

- :mod:`.input_mask`: a party's (or an outside owner's) input mask, ``x - A`` opened once.
- :mod:`.outside_input`: the input mask of an owner outside the compute parties (it derives the mask from a key).
- :mod:`.fresh_mask`: a mask with no owner, for values already held as shares (kept model shares), ``W - B`` opened once.
- :mod:`.beaver`: multiplication triples for mul/matmul/linear/conv2d, reusing earlier masks.
- :mod:`.trunc`: probabilistic truncation.
- :mod:`.cmp`: comparison tables, AND triples and daBits (bits, ReLU, argmax, thresholds).
"""
from ._layout import OWNER_SEEDS, Layout, LayoutBuilder, Slot, expand_seeded, narrow, narrow_dtype
from .base import KINDS, MaterialKind, kind_of, register
from .beaver import Beaver, BeaverParams
from .cmp import Cmp, CmpParams
from .fresh_mask import FreshMask, FreshMaskParams
from .input_mask import InputMask, InputMaskParams
from .outside_input import OutsideInputMask, OutsideInputParams
from .trunc import Trunc, TruncParams

__all__ = ["KINDS", "MaterialKind", "register", "kind_of", "Layout", "LayoutBuilder", "Slot", "OWNER_SEEDS",
           "narrow", "narrow_dtype", "expand_seeded", "InputMask", "InputMaskParams", "Beaver", "BeaverParams", "Trunc", "TruncParams",
           "Cmp", "CmpParams", "FreshMask", "FreshMaskParams", "OutsideInputMask",
           "OutsideInputParams"]

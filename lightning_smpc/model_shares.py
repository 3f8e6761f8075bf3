"""Model shares kept by the compute parties: the model owner shares its weights once, hands each party its file and
goes offline; later runs predict from the files (``SecurePredictStrategy(model_shares=directory)``).

:func:`save_model_shares` folds the BatchNorms (what a run would share), encodes the weights in fixed point, splits
them into additive shares with the CSPRNG in the owner's process and writes one file per compute party holding that
party's shares only (:mod:`lightning_smpc.mpc.share_files`: the format, the seal and the encryption). A run reads
them with :func:`load_model_shares` (each party's process its own file) and gives the stored shares a fresh opened
mask (``W - B``, one opening of the weights' size per run): the stored shares are never opened, and the model
instance passed to ``predict`` gives the architecture only (its weights are never used: a fresh, untrained instance
works).

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> paths = save_model_shares(model, tempfile.mkdtemp(), parties=("alice", "bob"))
    >>> sorted(p.name for p in paths.values())
    ['alice.shares', 'bob.shares']
    >>> header, rows = load_model_shares(paths["alice"].parent, ("alice", "bob"), nn.Sequential(
    ...     nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), RingConfig())
    >>> [(name, tuple(t.shape)) for name, t in rows.items()][:2]   # both parties' rows (one process plays both)
    [('0.weight', (2, 3, 4)), ('0.bias', (2, 3))]
    >>> load_model_shares(paths["alice"].parent, ("alice", "bob"), nn.Sequential(nn.Linear(4, 5)), RingConfig())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_smpc.mpc.share_files.ModelSharesError: The model does not have the architecture the shares were saved for...
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from . import folding
from .forward import shared_weights
from .mpc import RingConfig
from .mpc.encoding import FixedPointEncoder
from .mpc.identities import Identity, Roster
from .mpc.prg import make_prg
from .mpc.share_files import ModelSharesError, ShareFileHeader, file_name, read_share_file, write_share_file

__all__ = ["save_model_shares", "load_model_shares", "model_fingerprints", "ModelSharesError"]

Source = Union[str, os.PathLike, Mapping[str, Union[str, os.PathLike]]]


def _folded(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors a run shares (BatchNorms folded), from the model in eval mode (the user's module is restored)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            params, _ = folding.secure_view(model, shared_weights(model))
    finally:
        model.train(training)
    return [(name, t.detach().cpu()) for name, t in params]


def _architecture(params: Sequence[tuple[str, Any]]) -> str:
    layout = [[name, list(t.shape)] for name, t in params]
    return hashlib.sha256(json.dumps(layout, separators=(",", ":")).encode()).hexdigest()


def _weights_fingerprint(encoded: Sequence[tuple[str, torch.Tensor]], key: bytes) -> str:
    """HMAC-SHA256 of the encoded weights under the owner's key: without the key, nobody can test a guessed model
    (a public checkpoint, a retrain with a known recipe) against the files."""
    h = hmac.new(key, b"lightning_smpc/model-shares/weights/v1", hashlib.sha256)
    for name, t in encoded:
        h.update(name.encode() + b"\0" + t.contiguous().numpy().astype("<i8").tobytes())
    return h.hexdigest()


RECEIPT = "owner.receipt.json"  # the model owner's: its fingerprint key (not for the parties)


def model_fingerprints(model: nn.Module, receipt: Union[str, os.PathLike], precision_bits: int = 16,
                       compare_bits: int = 32) -> tuple[str, str]:
    """``(architecture, weights)`` of ``model`` as :func:`save_model_shares` writes them into every file, for the
    owner to check which model a set of files holds; ``receipt``: the owner's receipt (``owner.receipt.json``,
    holding the weights fingerprint's key)."""
    key = bytes.fromhex(json.loads(Path(receipt).read_text())["weights_key"])
    params = _folded(model)
    encoder = FixedPointEncoder(precision_bits, compare_bits)
    return _architecture(params), _weights_fingerprint([(n, encoder.encode(t)) for n, t in params], key)


def save_model_shares(
    model: Union[nn.Module, str, os.PathLike], directory: Union[str, os.PathLike],
    parties: Sequence[str] = ("alice", "bob"), precision_bits: int = 16, compare_bits: int = 32,
    compare_digit_bits: int = 4, model_class: Optional[type] = None, roster: Union[Roster, str, None] = None,
    identity: Union[Identity, str, None] = None, owner: Optional[str] = None, seed: Optional[int] = None,
) -> dict[str, Path]:
    """Secret-share a trained model once and write one file per compute party (``<directory>/<party>.shares``).

    Args:
        model: the trained module, or a Lightning checkpoint path (then ``model_class``, a LightningModule class,
            loads it).
        directory: where the files go (created); hand each party its own file.
        parties: the compute parties that will hold the shares (the run's ``parties``).
        precision_bits / compare_bits / compare_digit_bits: the run's ring (the run must use the same precision).
        roster / identity: with them (a :class:`~lightning_smpc.mpc.identities.Roster` or its path, the model
            owner's :class:`~lightning_smpc.mpc.identities.Identity` or its key path), each file is encrypted to its
            party's key and signed by the owner's, so the files may travel over any channel; without, each file
            carries a digest (finds damage, not forgery).
        owner: the owner's name in the roster (default: ``identity``'s name, else the first party).
        seed: only for tests (deterministic, insecure shares).

    Returns the path of each party's file; the owner's receipt (``owner.receipt.json``: the sharing id and the key
    of the weights' fingerprint, for :func:`model_fingerprints`) is written beside them and stays with the owner.
    Raises ``ValueError`` (NaN/inf or out-of-range weights) before anything is written.
    """
    if not isinstance(model, nn.Module):
        if model_class is None:
            raise TypeError("Pass the trained module, or a checkpoint path together with `model_class` (the "
                            "LightningModule class that loads it).")
        model = model_class.load_from_checkpoint(model, map_location="cpu")
    parties = tuple(parties)
    ring = RingConfig(precision_bits, compare_bits, compare_digit_bits)
    if len(parties) < 2 or len(set(parties)) != len(parties):
        raise ValueError(f"Expected at least two distinct compute parties, but got {parties!r}.")
    if (roster is None) != (identity is None):
        raise ValueError("Pass both `roster` and the owner's `identity` (signed, encrypted files), or neither.")
    if isinstance(roster, (str, os.PathLike)):
        roster = Roster.load(roster)
    if isinstance(identity, (str, os.PathLike)):
        identity = Identity.load(owner or parties[0], identity)
    signer = identity.name if identity is not None else None
    if roster is not None:
        missing = [p for p in parties + (signer,) if p not in roster.names]
        if missing:
            raise ValueError(f"The roster has no key for {missing}: it must list every party and the owner.")
    params = _folded(model)
    encoder = FixedPointEncoder(ring.precision_bits, ring.compare_bits)
    encoded = [(name, encoder.encode(t)) for name, t in params]  # checks NaN/inf and the range, before writing
    prg = make_prg(seed)
    shares: dict[str, dict[str, torch.Tensor]] = {p: {} for p in parties}
    for name, x in encoded:  # n - 1 uniform shares, the last one completes the sum (mod 2^64)
        rest = x.clone()
        for p in parties[:-1]:
            shares[p][name] = prg.int64(tuple(x.shape))
            rest -= shares[p][name]
        shares[parties[-1]][name] = rest
    weights_key = secrets.token_bytes(32)
    common = dict(parties=parties, ring=asdict(ring), frac_bits=ring.precision_bits,
                  architecture=_architecture(params), weights=_weights_fingerprint(encoded, weights_key),
                  tensors=[(name, tuple(t.shape)) for name, t in params], sealed_by=signer,
                  encrypted=roster is not None, model_class=type(model).__qualname__, test_seed=seed is not None)
    sharing_id = secrets.token_hex(16)  # one per sharing: the files of one sharing carry the same
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    receipt = json.dumps({"sharing_id": sharing_id, "weights": common["weights"], "weights_key": weights_key.hex(),
                          "note": "the model owner's receipt: keep it, do not hand it to the parties"})
    fd = os.open(directory / RECEIPT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(receipt)
    paths = {}
    for p in parties:
        header = ShareFileHeader.new(p, sharing_id=sharing_id, **common)
        paths[p] = directory / file_name(p)
        write_share_file(paths[p], header, shares[p], signer=identity,
                         recipient_key=roster.key_of(p) if roster is not None else None)
    return paths


def _path_of(source: Source, party: str) -> Path:
    if isinstance(source, Mapping):
        if party not in source:
            raise ModelSharesError(f"`model_shares` names no file for {party!r} (it names {sorted(source)}).")
        return Path(source[party])
    path = Path(source)
    return path if path.is_file() else path / file_name(party)


def load_model_shares(
    source: Source, parties: Sequence[str], model: nn.Module, ring: RingConfig, local_party: Optional[str] = None,
    owner: Optional[str] = None, roster: Optional[Roster] = None, identity: Optional[Identity] = None,
    allow_test_seed: bool = False, sharing_id: Optional[str] = None, folded: Optional[Sequence] = None,
) -> tuple[ShareFileHeader, dict[str, torch.Tensor]]:
    """The stored shares for a run, checked against it: ``{name: int64 rows}`` with the leading party axis (every
    party's rows when ``local_party`` is None, one process playing all; else that party's own file only).

    ``source``: the directory :func:`save_model_shares` wrote, a ``{party: path}`` mapping, or one party's file.
    Raises :class:`ModelSharesError` when the files do not fit the model's architecture, the parties, the ring's
    precision, or each other (a missing, swapped, damaged, forged or mixed file), before anything runs. Files saved
    with a test ``seed`` (predictable shares) are refused unless ``allow_test_seed`` (a run with a test seed);
    ``sharing_id`` pins the sharing (an older set of files, validly signed all the same, is refused). ``folded``: the
    model's ``(name, tensor)`` list as the run shares it (BatchNorms folded), where the caller already made it."""
    parties = tuple(parties)
    readers = parties if local_party is None else (local_party,)
    files = []
    for p in readers:  # each checked against the run as it is read (a party set that differs names itself first)
        files.append(read_share_file(_path_of(source, p), p, roster=roster, identity=identity, owner=owner))
        _check_run(files[-1][0], parties, ring)
        if sharing_id is not None and files[-1][0].sharing_id != sharing_id:
            raise ModelSharesError(f"The model shares of {p!r} are of sharing {files[-1][0].sharing_id}, but this run "
                                   f"expects sharing {sharing_id} (an older set of files?).")
        if files[-1][0].test_seed and not allow_test_seed:
            raise ModelSharesError(f"The model shares of {p!r} were saved with a test seed (predictable shares: "
                                   "insecure); save them again without `seed`.")
    header = files[0][0]
    mixed = {h.sharing_id for h, _ in files}
    if len(mixed) > 1:
        raise ModelSharesError(f"The files come from {len(mixed)} different sharings (ids {sorted(mixed)}): shares "
                               "of different sharings do not add up to the weights. Use the files of one "
                               "save_model_shares call.")
    params = _folded(model) if folded is None else folded  # the architecture only: names and shapes
    layout = [(name, tuple(t.shape)) for name, t in params]
    if _architecture(params) != header.architecture or layout != list(header.tensors):
        expected = dict(header.tensors)
        diff = [f"{name} {tuple(t.shape)} (saved: {expected.get(name, 'absent')})" for name, t in params
                if expected.get(name) != tuple(t.shape)]
        diff += [f"{name} (saved, absent from the model)" for name in expected if name not in dict(params)]
        raise ModelSharesError(
            f"The model does not have the architecture the shares were saved for ({header.model_class}): "
            f"{'; '.join(diff[:6]) or 'the tensors differ in order'}. Pass an instance of the saved model's class.")
    rows = {name: torch.stack([tensors[name] for _, tensors in files]) for name, _ in header.tensors}
    return header, rows


def _check_run(header: ShareFileHeader, parties: tuple, ring: RingConfig) -> None:
    if set(header.parties) != set(parties):
        raise ModelSharesError(f"The shares were saved for the parties {header.parties}, but this run's parties "
                               f"are {parties}: save them again for these parties.")
    saved = header.ring
    if saved.get("precision_bits") != ring.precision_bits:
        raise ModelSharesError(f"The shares were saved with precision_bits={saved.get('precision_bits')}, but this "
                               f"run uses {ring.precision_bits}: run with the saved precision, or save them again.")
    if ring.compare_bits < saved.get("compare_bits", 0):
        raise ModelSharesError(f"The shares were saved for compare_bits={saved.get('compare_bits')} (their range was "
                               f"checked for it), but this run uses {ring.compare_bits}: use at least that.")

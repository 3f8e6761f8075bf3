"""Secure MNIST inference with every role in its own process or machine (one launch per role).

Roles by rank: ``parties[0]`` (default alice) is the model owner — only its process reads the checkpoint;
``parties[-1]`` (default bob) is the client — only its process reads the images; the last rank is the crypto
provider. The processes find each other the way Lightning's multi-node jobs do (``MASTER_ADDR``, ``MASTER_PORT``,
``NODE_RANK``, ``WORLD_SIZE``, ``LOCAL_RANK=0``; or torchrun / SLURM), authenticate with the roster's keys and
talk over encrypted links. Three machines (or three terminals), after ``make-keys`` once (copy the roster to
every machine, each private key only to its own)::

    python examples/secure_predict_roles.py make-keys --out keys            # keys/roster.json, keys/<role>.pem
    export MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 WORLD_SIZE=3 LOCAL_RANK=0
    NODE_RANK=0 python examples/secure_predict_roles.py predict --keys keys --ckpt out/mnist_mlp_10ep_all_seed0.ckpt  # alice: the model owner (README command 1 wrote it)
    NODE_RANK=1 python examples/secure_predict_roles.py predict --keys keys --data-dir ../shared/data  # bob: client
    NODE_RANK=2 python examples/secure_predict_roles.py predict --keys keys                     # crypto provider

Model shares kept by the compute parties (the model owner shares once, hands each party its file over any channel,
and need not be online for later runs; the files are encrypted to each party's key and signed by the owner's)::

    python examples/secure_predict_roles.py share-model --keys keys --ckpt out/mnist_mlp_10ep_all_seed0.ckpt --out shares
    NODE_RANK=0 python examples/secure_predict_roles.py predict --keys keys --model-shares shares/alice.shares
    NODE_RANK=1 python examples/secure_predict_roles.py predict --keys keys --model-shares shares/bob.shares --data-dir ../shared/data
    NODE_RANK=2 python examples/secure_predict_roles.py predict --keys keys

The seed's five roles (the model owner's server and the client outside the compute parties, each only providing
its inputs and receiving its release; ranks: the parties, server, client, the crypto provider)::

    python examples/secure_predict_roles.py make-keys --out keys --parties alice,bob --outside server,client
    export MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 WORLD_SIZE=5 LOCAL_RANK=0
    FIVE="--model-owner server --client client"
    python examples/secure_predict_roles.py predict --keys keys $FIVE --role alice
    python examples/secure_predict_roles.py predict --keys keys $FIVE --role bob
    python examples/secure_predict_roles.py predict --keys keys $FIVE --role server --ckpt out/mnist_mlp_10ep_all_seed0.ckpt
    python examples/secure_predict_roles.py predict --keys keys $FIVE --role client --data-dir ../shared/data
    python examples/secure_predict_roles.py predict --keys keys $FIVE --role crypto_provider

The model owner prints the revealed accuracy; the client prints its revealed labels (how many, the first ones, and
how many match its own targets; it never sees the model); the crypto provider prints what it sent each party.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Trainer

from lightning_smpc import SecureAccuracy, SecurePredictStrategy, save_model_shares
from lightning_smpc.mnist import MNISTClassifier, MNISTDataModule
from lightning_smpc.mpc.identities import Roster, generate_identity
from lightning_smpc.topology import Topology


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("make-keys", help="one key pair per role and the roster of public keys")
    keys.add_argument("--out", default="keys")
    keys.add_argument("--parties", default="alice,bob")
    keys.add_argument("--crypto-provider", default="crypto_provider")
    keys.add_argument("--outside", default="", help="roles outside the compute parties, e.g. server,client")
    share = sub.add_parser("share-model", help="the model owner: one model shares file per compute party")
    share.add_argument("--keys", default=None, help="directory with roster.json and the owner's <role>.pem: the files "
                       "are encrypted to each party and signed (omit: a digest only)")
    share.add_argument("--ckpt", required=True, help="the model owner's checkpoint")
    share.add_argument("--out", default="shares")
    share.add_argument("--parties", default="alice,bob")
    share.add_argument("--precision-bits", type=int, default=16)
    run = sub.add_parser("predict", help="play the role of this process's rank (NODE_RANK / RANK)")
    run.add_argument("--keys", default=None, help="directory with roster.json and <role>.pem (omit on one machine)")
    run.add_argument("--parties", default="alice,bob")
    run.add_argument("--crypto-provider", default="crypto_provider")
    run.add_argument("--ckpt", default=None, help="the model owner's checkpoint (only the model owner reads it)")
    run.add_argument("--data-dir", default=None, help="the client's MNIST directory (only the client reads it)")
    run.add_argument("--test-subset", type=int, default=None)
    run.add_argument("--batch-size", type=int, default=1000)
    run.add_argument("--timeout", type=float, default=60.0, help="seconds any wait may take once every role started")
    run.add_argument("--start-timeout", type=float, default=600.0,
                     help="seconds a role waits for the others to start (roles started by hand, minutes apart)")
    run.add_argument("--precision-bits", type=int, default=16, help="fixed-point fractional bits (the same on every role)")
    run.add_argument("--model-owner", default=None, help="the model owner's role: a party (default the first) or "
                     "a role of its own, e.g. server")
    run.add_argument("--client", default=None, help="the client's role: a party (default the last) or a role of its "
                     "own, e.g. client")
    run.add_argument("--role", default=None, help="this process's role (instead of NODE_RANK / RANK)")
    run.add_argument("--model-shares", default=None, help="this party's model shares file (share-model wrote it): "
                     "the model owner's checkpoint is then not needed")
    run.add_argument("--report", default=None, help="write this role's results as JSON here")
    return p.parse_args(argv)


def make_keys(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.parties.split(",") + [n for n in args.outside.split(",") if n] + [args.crypto_provider]
    identities = [generate_identity(name, out / f"{name}.pem") for name in names]
    Roster.from_identities(identities).save(out / "roster.json")
    print(f"wrote {out / 'roster.json'} and {', '.join(f'{n}.pem' for n in names)}")


def share_model(args: argparse.Namespace) -> None:
    parties = tuple(args.parties.split(","))
    keys = dict(roster=Path(args.keys) / "roster.json", identity=Path(args.keys) / f"{parties[0]}.pem") if args.keys else {}
    paths = save_model_shares(args.ckpt, args.out, parties=parties, precision_bits=args.precision_bits,
                              model_class=MNISTClassifier, owner=parties[0], **keys)
    print("wrote " + ", ".join(f"{p}: {path} ({path.stat().st_size} bytes)" for p, path in paths.items()))


def predict(args: argparse.Namespace) -> dict:
    parties = tuple(args.parties.split(","))
    owner, client = args.model_owner or parties[0], args.client or parties[-1]
    roles = Topology(parties, args.crypto_provider, owner, client).roles
    if args.role is not None:  # the role names its rank (the parties, the outside roles, the crypto provider)
        os.environ["NODE_RANK"] = str(roles.index(args.role))
    rank = int(os.environ.get("RANK", os.environ.get("NODE_RANK", "0")))
    role = roles[rank]
    keys = dict(roster=str(Path(args.keys) / "roster.json"), identity=str(Path(args.keys) / f"{role}.pem")) if args.keys else {}
    # Every role runs the same call. Lightning would restore `ckpt_path` and set up the datamodule in every
    # process; the strategy lets only the model owner's process read the checkpoint and only the client's the
    # data (the others learn shapes). Both are read once the roles are connected, so a role that cannot read
    # its file is named to the others at once.
    dm = MNISTDataModule(args.data_dir or "<the client's>", test_batch_size=args.batch_size,
                         test_subset=args.test_subset, download=False)
    strategy = SecurePredictStrategy(parties=parties, crypto_provider=args.crypto_provider, runtime="distributed",
                                     reveal="labels", metrics={"accuracy": SecureAccuracy(num_classes=10)},
                                     precision_bits=args.precision_bits, timeout=args.timeout,
                                     start_timeout=args.start_timeout, model_shares=args.model_shares,
                                     model_owner_party=owner, client_party=client, **keys)
    trainer = Trainer(strategy=strategy, num_nodes=len(roles), devices=1, accelerator="cpu", logger=False,
                      enable_progress_bar=role in parties, enable_model_summary=False)
    out = trainer.predict(MNISTClassifier(), datamodule=dm, ckpt_path=args.ckpt if role == owner else None)
    return _report(args, role, strategy, dm, out)


def _report(args: argparse.Namespace, role: str, strategy: SecurePredictStrategy, dm: MNISTDataModule, out) -> dict:
    """What this role learned: the owner the accuracy, the client its labels (scored against its own targets),
    the crypto provider only what it sent."""
    report = {"role": role, "ledger": [str(r) for r in strategy.reveal_ledger]}
    report["comm"] = strategy.comm_stats(offline=role == args.crypto_provider)
    if strategy.revealed_counts:
        report["accuracy"] = float(strategy.revealed_metrics["accuracy"])
        report["correct"], report["total"] = strategy.revealed_counts["accuracy"]
    labels = [b for b in (out or []) if b is not None]
    if labels:
        report["labels"] = torch.cat(labels).tolist()
        targets = torch.tensor([int(y) for _, y in dm.test_set])  # the client's own data: it knows its targets
        report["labels_correct"] = int((torch.tensor(report["labels"]) == targets).sum())
    summary = {k: v for k, v in report.items() if k != "labels"}
    if "labels" in report:
        summary["labels"] = f"{len(report['labels'])} labels, first {report['labels'][:10]}"
    print(json.dumps(summary))
    if args.report:
        Path(args.report).write_text(json.dumps(report))
    return report


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    {"make-keys": make_keys, "share-model": share_model, "predict": predict}[args.command](args)


if __name__ == "__main__":
    main()

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

The model owner prints the revealed accuracy; the client prints its revealed labels' count and agreement
with nothing else (it never sees the model); the crypto provider prints what it sent.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_smpc import SecureAccuracy, SecurePredictStrategy
from lightning_smpc.mnist import MNISTClassifier, MNISTDataModule
from lightning_smpc.mpc.links import Roster, generate_identity


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("make-keys", help="one key pair per role and the roster of public keys")
    keys.add_argument("--out", default="keys")
    keys.add_argument("--parties", default="alice,bob")
    keys.add_argument("--crypto-provider", default="crypto_provider")
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
    run.add_argument("--report", default=None, help="write this role's results as JSON here")
    return p.parse_args(argv)


def make_keys(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.parties.split(",") + [args.crypto_provider]
    identities = [generate_identity(name, out / f"{name}.pem") for name in names]
    Roster.from_identities(identities).save(out / "roster.json")
    print(f"wrote {out / 'roster.json'} and {', '.join(f'{n}.pem' for n in names)}")


def predict(args: argparse.Namespace) -> dict:
    parties = tuple(args.parties.split(","))
    rank = int(os.environ.get("RANK", os.environ.get("NODE_RANK", "0")))
    role = parties[rank] if rank < len(parties) else args.crypto_provider
    keys = dict(roster=str(Path(args.keys) / "roster.json"), identity=str(Path(args.keys) / f"{role}.pem")) if args.keys else {}
    model = MNISTClassifier()
    if role == parties[0]:  # the model owner: the only process that reads the weights
        model.load_state_dict(torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"])
    if role == parties[-1]:  # the client: the only process that reads the data
        dm = MNISTDataModule(args.data_dir, test_batch_size=args.batch_size, test_subset=args.test_subset, download=False)
        dm.setup("predict")
        loader = dm.predict_dataloader()
    else:  # the others learn batch shapes from the client; nothing here is ever iterated
        loader = DataLoader([])
    strategy = SecurePredictStrategy(parties=parties, crypto_provider=args.crypto_provider, runtime="distributed",
                                     reveal="labels", metrics={"accuracy": SecureAccuracy(num_classes=10)},
                                     timeout=args.timeout, start_timeout=args.start_timeout, **keys)
    trainer = Trainer(strategy=strategy, num_nodes=len(parties) + 1, devices=1, accelerator="cpu", logger=False,
                      enable_progress_bar=role == parties[-1], enable_model_summary=False)
    out = trainer.predict(model, loader)
    report = {"role": role, "comm": strategy.comm_stats(), "ledger": [str(r) for r in strategy.reveal_ledger]}
    if strategy.revealed_counts:
        report["accuracy"] = float(strategy.revealed_metrics["accuracy"])
        report["correct"], report["total"] = strategy.revealed_counts["accuracy"]
    labels = [b for b in (out or []) if b is not None]
    if labels:
        report["labels"] = torch.cat(labels).tolist()
    print(json.dumps({k: v for k, v in report.items() if k != "labels"}))
    if args.report:
        Path(args.report).write_text(json.dumps(report))
    return report


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    make_keys(args) if args.command == "make-keys" else predict(args)


if __name__ == "__main__":
    main()

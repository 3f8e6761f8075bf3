"""Train the seed tutorial's MNIST MLP in plaintext, then classify the test set under secure MPC.

The model owner trains as usual; inference then runs with :class:`lightning_smpc.SecurePredictStrategy`
on additive secret shares held by the parties, and only the accuracy is revealed (to the model owner).

Quick run (about a minute on 2 CPU cores)::

    python examples/mnist_secure_classification.py --data-dir ../shared/data --epochs 1 \\
        --train-subset 10000 --test-subset 1000 --check-agreement

Full run (10 epochs, the whole 10k test set; the trained model is kept in ``out/mnist_mlp_10ep_all_seed0.ckpt``, loaded by the next
run and usable as the roles recipe's ``--ckpt``)::

    python examples/mnist_secure_classification.py --data-dir ../shared/data

``--data-dir`` must contain ``MNIST/raw/`` with the four IDX files (downloaded there if missing and online).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_smpc.cli import format_secure_report
from lightning_smpc.mnist import MNISTClassifier, MNISTDataModule


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command-line flags of the example."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data", help="directory holding MNIST/raw/ (default: data)")
    p.add_argument("--epochs", type=int, default=10, help="plaintext training epochs (default: 10)")
    p.add_argument("--train-subset", type=int, default=None, help="first N training images (default: all 60k)")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images (default: all 10k)")
    p.add_argument("--test-batch-size", type=int, default=1000, help="batch size of secure inference")
    p.add_argument("--parties", default="alice,bob", help="comma-separated party names (default: alice,bob)")
    p.add_argument("--precision-bits", type=int, default=16, help="fixed-point fractional bits (default: 16)")
    p.add_argument("--check-agreement", action="store_true",
                   help="second secure pass revealing labels, compared with the plaintext argmax")
    p.add_argument("--seed", type=int, default=0, help="seed for training and data order (default: 0)")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint cache: loaded if present, else written after training (default: one file per "
                   "training setting, out/mnist_mlp_<epochs>ep_<train subset or all>_seed<seed>.ckpt, so a quick run "
                   "never stands in for a full one; the roles recipe's --ckpt); pass '' to keep nothing")
    p.add_argument("--retrain", action="store_true", help="train even if --ckpt exists (and overwrite it)")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator (default: cpu)")
    args = p.parse_args(argv)
    if args.ckpt is None:
        args.ckpt = default_ckpt(args)
    return args


def default_ckpt(args: argparse.Namespace) -> str:
    """The checkpoint of this training setting (epochs, training subset, seed): a cache only for the same setting."""
    return f"out/mnist_mlp_{args.epochs}ep_{args.train_subset or 'all'}_seed{args.seed}.ckpt"


def train_or_load(args: argparse.Namespace, dm: MNISTDataModule) -> MNISTClassifier:
    """Train the plaintext model with an ordinary Trainer, or load it from the ``--ckpt`` cache."""
    if args.ckpt and os.path.isfile(args.ckpt) and not args.retrain:
        print(f"loading trained model from {args.ckpt} (pass --retrain to train again)")
        return MNISTClassifier.load_from_checkpoint(args.ckpt, map_location="cpu")
    model = MNISTClassifier()
    trainer = Trainer(
        max_epochs=args.epochs, accelerator=args.accelerator, logger=False, enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    if args.ckpt:
        os.makedirs(os.path.dirname(os.path.abspath(args.ckpt)), exist_ok=True)
        trainer.save_checkpoint(args.ckpt)
        print(f"saved trained model to {args.ckpt}")
    return model


@torch.inference_mode()
def plaintext_predictions(model: MNISTClassifier, dm: MNISTDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """Plaintext argmax predictions and targets on the predict (test) set, in order."""
    model.eval()
    dm.setup("predict")
    preds, targets = [], []
    for x, y in dm.predict_dataloader():
        preds.append(model(x.to(model.device)).argmax(dim=1).cpu())
        targets.append(y)
    return torch.cat(preds), torch.cat(targets)


@torch.inference_mode()
def _top2_gaps(model: MNISTClassifier, dm: MNISTDataModule, indices: torch.Tensor) -> list[tuple[int, float]]:
    logits = torch.cat([model(x.to(model.device)).cpu() for x, _ in dm.predict_dataloader()])
    top = logits[indices].topk(2, dim=1).values
    return [(int(i), float(t[0] - t[1])) for i, t in zip(indices, top)]


def main(argv: Optional[list[str]] = None) -> None:
    """Train, evaluate in plaintext, run secure inference, and print what was revealed and what it cost."""
    args = parse_args(argv)
    seed_everything(args.seed)
    dm = MNISTDataModule(
        data_dir=args.data_dir, test_batch_size=args.test_batch_size,
        train_subset=args.train_subset, test_subset=args.test_subset,
    )
    dm.prepare_data()  # clear FileNotFoundError (which files, where) if MNIST is missing and offline
    model = train_or_load(args, dm)

    plain_pred, target = plaintext_predictions(model, dm)
    correct, total = int((plain_pred == target).sum()), target.numel()
    print(f"plaintext accuracy: {correct / total:.4f} ({correct}/{total})")

    from lightning_smpc import SecureAccuracy, SecurePredictStrategy

    parties = [p.strip() for p in args.parties.split(",") if p.strip()]
    strategy = SecurePredictStrategy(
        parties=parties, precision_bits=args.precision_bits, reveal="metrics",
        metrics={"accuracy": SecureAccuracy(num_classes=10)},
    )
    secure = Trainer(strategy=strategy, accelerator=args.accelerator, logger=False, enable_checkpointing=False)
    t0 = time.perf_counter()
    secure.predict(model, datamodule=dm)
    wall = time.perf_counter() - t0
    print(format_secure_report(strategy))
    print(f"secure inference wall time: {wall:.1f} s ({total} images, {1000 * wall / total:.2f} ms/image, "
          f"{len(parties)} parties, {args.precision_bits} fractional bits)")
    dealer = strategy.session.stats()["dealer"]
    offline = strategy.timings["share_weights_seconds"] + dealer["inline_seconds"] + dealer["preprocess_seconds"]
    print(f"  offline (weight sharing + dealer material): {offline:.1f} s, online: {wall - offline:.1f} s")

    if args.check_agreement:
        labels_strategy = SecurePredictStrategy(parties=parties, precision_bits=args.precision_bits, reveal="labels")
        secure = Trainer(strategy=labels_strategy, accelerator=args.accelerator, logger=False,
                         enable_checkpointing=False)
        batches = secure.predict(model, datamodule=dm)
        secure_pred = torch.cat([torch.as_tensor(b).reshape(-1).cpu() for b in batches])
        agree = int((secure_pred == plain_pred).sum())
        print(f"agreement: {agree}/{total}")
        if agree < total:  # a disagreement must be a fixed-point near-tie: show the plaintext top-2 gaps
            gaps = _top2_gaps(model, dm, (secure_pred != plain_pred).nonzero().flatten())
            print("  disagreements (index: plaintext top-2 logit gap): "
                  + ", ".join(f"{i}: {g:.2e}" for i, g in gaps))
        secure_correct = int((secure_pred == target).sum())
        print(f"secure-label accuracy: {secure_correct / total:.4f} ({secure_correct}/{total})")


if __name__ == "__main__":
    main()

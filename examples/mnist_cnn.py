"""Train a LeNet-5-style CNN on MNIST in plaintext, then classify the test set on secret shares.

The model owner trains as usual with Lightning; :class:`lightning_smpc.SecurePredictStrategy` then runs the same
``forward`` (conv, ReLU, max pooling, linear layers; with ``--batchnorm`` also BatchNorm after every conv/linear,
folded into it on the owner's plaintext weights before sharing) on additive shares, and only the accuracy is
revealed, to the model owner. A second secure pass reveals the labels (to the client) to count the agreement with
the plaintext argmax.

Quick run (under a minute on 2 CPU cores)::

    python examples/mnist_cnn.py --data-dir ../shared/data --train-subset 20000 --test-subset 1000
    python examples/mnist_cnn.py --data-dir ../shared/data --train-subset 20000 --test-subset 1000 --batchnorm

The peers' LeNet (``../shared/peers/lenet.pt``, the weights of the SPU and CrypTen benchmarks) instead of training::

    python examples/mnist_cnn.py --data-dir ../shared/data --weights ../shared/peers/lenet.pt --test-subset 1000

``--data-dir`` must contain ``MNIST/raw/`` with the four IDX files (downloaded there if missing and online).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn

from lightning_smpc.mnist import MNISTDataModule


class LeNet(LightningModule):
    """LeNet-5 style: conv 6@5x5 (pad 2), ReLU, max-pool 2; conv 16@5x5, ReLU, max-pool 2; 120-84-10.

    The parameter names match ``../shared/peers/lenet.pt``. ``batchnorm=True`` adds ``BatchNorm2d`` after each
    conv and ``BatchNorm1d`` after ``fc1``/``fc2`` (each directly after its layer, so secure predict folds it).
    """

    def __init__(self, batchnorm: bool = False, lr: float = 0.03) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        bn = (lambda c, cls: cls(c)) if batchnorm else (lambda c, cls: nn.Identity())
        self.bn1, self.bn2 = bn(6, nn.BatchNorm2d), bn(16, nn.BatchNorm2d)
        self.bn3, self.bn4 = bn(120, nn.BatchNorm1d), bn(84, nn.BatchNorm1d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.bn3(self.fc1(x)))
        x = F.relu(self.bn4(self.fc2(x)))
        return self.fc3(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = example_parser(__doc__)
    p.add_argument("--batchnorm", action="store_true", help="the variant with BatchNorm after every conv/linear")
    return p.parse_args(argv)


def example_parser(doc: str) -> argparse.ArgumentParser:
    """The options every MNIST example shares (data, training, test subset, parties, runtime)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--data-dir", default="data", help="directory holding MNIST/raw/ (default: data)")
    p.add_argument("--epochs", type=int, default=1, help="plaintext training epochs (default: 1)")
    p.add_argument("--train-subset", type=int, default=None, help="first N training images (default: all 60k)")
    p.add_argument("--test-subset", type=int, default=1000, help="first N test images (default: 1000)")
    p.add_argument("--test-batch-size", type=int, default=100, help="batch size of secure inference (default: 100)")
    p.add_argument("--parties", default="alice,bob", help="comma-separated party names (default: alice,bob)")
    p.add_argument("--weights", default=None, help="a state_dict to load instead of training (e.g. ../shared/peers/lenet.pt)")
    p.add_argument("--ckpt", default=None, help="checkpoint cache: loaded if present, else written after training")
    p.add_argument("--seed", type=int, default=0, help="seed for training and data order (default: 0)")
    p.add_argument("--runtime", choices=["simulated", "distributed"], default="simulated",
                   help="parties in this process (default), or one process per party plus the crypto provider")
    p.add_argument("--no-agreement", action="store_true", help="skip the second secure pass that reveals labels")
    return p


def train_or_load(args: argparse.Namespace, dm: MNISTDataModule, model_cls: type = LeNet, **hparams) -> LightningModule:
    """Train in plaintext with an ordinary Trainer, or load ``--weights`` / the ``--ckpt`` cache."""
    hparams = hparams or {"batchnorm": args.batchnorm}
    if args.weights:
        model = model_cls(**hparams)
        model.load_state_dict(torch.load(args.weights, map_location="cpu"))
        print(f"loaded weights from {args.weights}")
        return model
    if args.ckpt and os.path.isfile(args.ckpt):
        print(f"loading trained model from {args.ckpt}")
        return model_cls.load_from_checkpoint(args.ckpt, map_location="cpu")
    model = model_cls(**hparams)
    trainer = Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    if args.ckpt:
        os.makedirs(os.path.dirname(os.path.abspath(args.ckpt)), exist_ok=True)
        trainer.save_checkpoint(args.ckpt)
    return model


@torch.inference_mode()
def plaintext_logits(model: LightningModule, dm: MNISTDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    dm.setup("predict")
    logits, targets = [], []
    for x, y in dm.predict_dataloader():
        logits.append(model(x))
        targets.append(y)
    return torch.cat(logits), torch.cat(targets)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    seed_everything(args.seed)
    dm = MNISTDataModule(data_dir=args.data_dir, batch_size=64, test_batch_size=args.test_batch_size,
                         train_subset=args.train_subset, test_subset=args.test_subset)
    dm.prepare_data()
    model = train_or_load(args, dm)

    compare_secure_and_plaintext(model, dm, args)


def compare_secure_and_plaintext(model: LightningModule, dm: MNISTDataModule, args: argparse.Namespace) -> None:
    """Plaintext accuracy, secure accuracy (revealed to the model owner), traffic, and the agreement of the secure
    labels (a second pass, revealed to the client) with the plaintext argmax."""
    t0 = time.perf_counter()
    logits, target = plaintext_logits(model, dm)
    plain_s = time.perf_counter() - t0
    plain_pred, total = logits.argmax(-1), target.numel()
    plain_correct = int((plain_pred == target).sum())
    print(f"plaintext accuracy: {plain_correct / total:.4f} ({plain_correct}/{total}), {plain_s:.3f} s")

    from lightning_smpc import SecureAccuracy, SecurePredictStrategy

    parties = tuple(p.strip() for p in args.parties.split(",") if p.strip())
    strategy = SecurePredictStrategy(parties=parties, metrics={"accuracy": SecureAccuracy(num_classes=10)},
                                     runtime=args.runtime)
    trainer = Trainer(strategy=strategy, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.predict(model, datamodule=dm)
    wall = time.perf_counter() - t0
    correct, n = strategy.revealed_counts["accuracy"]
    print(f"secure accuracy:    {correct / n:.4f} ({correct}/{n}); revealed: "
          + "; ".join(f"{r.name} to {', '.join(r.to)}" for r in strategy.reveal_ledger))
    print(f"secure wall time:   {wall:.1f} s ({1000 * wall / total:.1f} ms/image, {len(parties)} parties, "
          f"batch {args.test_batch_size}, {args.runtime} runtime)")
    online, offline = strategy.comm_stats(), strategy.comm_stats(offline=True)
    for p in parties:
        print(f"  {p}: online {online[p]['rounds']} rounds, sent {online[p]['bytes_sent'] / 1e6:.1f} MB, "
              f"received {online[p]['bytes_received'] / 1e6:.1f} MB; from the dealer "
              f"{offline.get(p, {}).get('bytes_received', 0) / 1e6:.1f} MB ({offline.get(p, {}).get('bytes_received', 0) / total / 1e6:.2f} MB/image)")

    if not args.no_agreement:
        labels_strategy = SecurePredictStrategy(parties=parties, reveal="labels", runtime=args.runtime)
        trainer = Trainer(strategy=labels_strategy, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False)
        secure_pred = torch.cat([torch.as_tensor(b).reshape(-1) for b in trainer.predict(model, datamodule=dm)])
        agree = int((secure_pred == plain_pred).sum())
        print(f"agreement with the plaintext argmax: {agree}/{total} ({agree / total:.4f})")
        if agree < total:  # each disagreement should be a fixed-point near-tie: show the plaintext top-2 gap
            top2 = logits.topk(2, dim=-1).values
            bad = (secure_pred != plain_pred).nonzero().flatten().tolist()
            print("  disagreements (index: plaintext top-2 logit gap): "
                  + ", ".join(f"{i}: {float(top2[i, 0] - top2[i, 1]):.2e}" for i in bad))


if __name__ == "__main__":
    main()

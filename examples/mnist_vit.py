"""Train a tiny Vision Transformer on MNIST in plaintext, then classify the test set on secret shares.

The model is written as a user writes one (``nn.LayerNorm``, ``nn.GELU``, a softmax attention over the keys, a class
token and position embeddings used as parameters); :class:`lightning_smpc.SecurePredictStrategy` runs that same
``forward`` on additive shares: LayerNorm, GELU and the attention softmax are computed on shares (see the README's
transformer section), and only the accuracy is revealed, to the model owner. A second secure pass reveals the labels
(to the client) to count the agreement with the plaintext argmax; it also prints rounds and bytes per party.

Architecture (the peers' tiny ViT, ``../shared/peers/vit_model.py``; the same parameter names, so ``vit.pt`` loads):
7x7 patches (Conv2d 1->32, stride 7) -> 16 tokens + a class token + learned position embeddings; 2 pre-norm blocks
(LayerNorm, 2-head self-attention, residual; LayerNorm, MLP 32-64-32 with exact GELU, residual); a final LayerNorm and
a linear head on the class token.

Quick run (a few minutes on 2 CPU cores)::

    python examples/mnist_vit.py --data-dir ../shared/data --train-subset 20000 --test-subset 500
    python examples/mnist_vit.py --data-dir ../shared/data --weights ../shared/peers/vit.pt --test-subset 1000

``--data-dir`` must contain ``MNIST/raw/`` with the four IDX files (downloaded there if missing and online).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn

from lightning_smpc.mnist import MNISTDataModule
from mnist_cnn import compare_secure_and_plaintext, example_parser, train_or_load  # the LeNet example's runner


class Attention(nn.Module):
    """Multi-head self-attention, written out: ``softmax(q k^T / sqrt(d)) v`` over the keys."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm encoder block."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(LightningModule):
    """A tiny ViT for 28x28 images; parameter names match ``../shared/peers/vit.pt``."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, hidden: int = 64, patch: int = 7,
                 n_classes: int = 10, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        n_tokens = (28 // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.blocks = nn.ModuleList([Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, tokens, dim]
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        return self.head(self.norm(t[:, 0]))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main(argv: Optional[list[str]] = None) -> None:
    p = example_parser(__doc__)
    p.set_defaults(epochs=3, train_subset=20000, test_subset=500)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default: 3e-3)")
    args = p.parse_args(argv)
    seed_everything(args.seed)
    dm = MNISTDataModule(data_dir=args.data_dir, batch_size=64, test_batch_size=args.test_batch_size,
                         train_subset=args.train_subset, test_subset=args.test_subset)
    dm.prepare_data()
    model = train_or_load(args, dm, ViT, lr=args.lr)
    compare_secure_and_plaintext(model, dm, args)


if __name__ == "__main__":
    main()

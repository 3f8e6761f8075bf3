"""The seed tutorial's MNIST task: a data module and a two-layer MLP classifier.

This module depends only on torch, torchvision, torchmetrics and Lightning (not on the MPC code), so the
plaintext model can be trained, checkpointed and evaluated on its own and later handed to
:class:`lightning_smpc.SecurePredictStrategy` for private inference.

Example (offline, with the four IDX files already under ``data/MNIST/raw/``)::

    >>> from lightning.pytorch import Trainer
    >>> dm = MNISTDataModule("data", train_subset=2000, download=False)  # doctest: +SKIP
    >>> Trainer(max_epochs=1).fit(MNISTClassifier(), datamodule=dm)      # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["MNIST_FILES", "MNIST_MEAN", "MNIST_STD", "MNISTClassifier", "MNISTDataModule", "missing_mnist_files"]

#: The four raw IDX files torchvision's ``MNIST`` reads, expected under ``<data_dir>/MNIST/raw/``.
MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: Normalisation constants of the seed tutorial (mean and std of the MNIST training pixels).
MNIST_MEAN: float = 0.1307
MNIST_STD: float = 0.3081


def missing_mnist_files(data_dir: str) -> list[str]:
    """Return the paths of the raw MNIST IDX files that are missing under ``data_dir``.

    Example::

        >>> missing_mnist_files("/nonexistent")[0]
        '/nonexistent/MNIST/raw/train-images-idx3-ubyte'
    """
    raw = os.path.join(os.path.expanduser(data_dir), "MNIST", "raw")
    return [p for p in (os.path.join(raw, f) for f in MNIST_FILES) if not os.path.isfile(p)]


def _missing_data_error(data_dir: str, reason: str) -> FileNotFoundError:
    raw = os.path.join(os.path.expanduser(data_dir), "MNIST", "raw")
    return FileNotFoundError(
        f"MNIST data not found ({reason}). Put the four uncompressed IDX files "
        f"{', '.join(MNIST_FILES)} into {raw}/ (i.e. <data_dir>/MNIST/raw/{{{', '.join(MNIST_FILES)}}}), "
        f"or pass a data_dir that contains MNIST/raw/ (CLI: --data.data_dir, example: --data-dir). "
        f"Missing: {', '.join(missing_mnist_files(data_dir))}"
    )


class MNISTDataModule(LightningDataModule):
    """MNIST with the seed tutorial's transform ``ToTensor() + Normalize((0.1307,), (0.3081,))``.

    Batches are ``(x, y)`` with ``x`` of shape ``[B, 1, 28, 28]`` (float32) and ``y`` of shape ``[B]``
    (int64). Training uses the 60k training set (shuffled); validation, test and predict all use the 10k
    test set in order, with ``test_batch_size``.

    Args:
        data_dir: root directory; the raw files live in ``<data_dir>/MNIST/raw/``.
        batch_size: training batch size.
        test_batch_size: batch size for validation, test and predict.
        num_workers: ``DataLoader`` worker processes.
        train_subset: keep only the first ``train_subset`` training images (``None``: all 60,000).
        test_subset: keep only the first ``test_subset`` test images (``None``: all 10,000).
        download: download the files when missing. If the files are present the network is never used;
            if they are missing and the download fails (or ``download=False``), :meth:`prepare_data`
            raises a ``FileNotFoundError`` naming the four files and where to put them.

    Example::

        >>> dm = MNISTDataModule("data", test_subset=100, download=False)  # doctest: +SKIP
        >>> dm.prepare_data(); dm.setup("predict")                        # doctest: +SKIP
        >>> x, y = next(iter(dm.predict_dataloader()))                    # doctest: +SKIP
        >>> x.shape, y.dtype                                              # doctest: +SKIP
        (torch.Size([100, 1, 28, 28]), torch.int64)
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        test_batch_size: int = 1000,
        num_workers: int = 0,
        train_subset: Optional[int] = None,
        test_subset: Optional[int] = None,
        download: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = os.path.expanduser(data_dir)
        self.batch_size = batch_size
        self.test_batch_size = test_batch_size
        self.num_workers = num_workers
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.download = download
        self.train_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    @property
    def transform(self) -> Any:
        """The tutorial's transform: ``Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])``."""
        from torchvision import transforms

        return transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])

    def prepare_data(self) -> None:
        """Make sure the raw files exist, downloading them only when they are missing and ``download``."""
        if not missing_mnist_files(self.data_dir):
            return  # everything is there: never touch the network
        if not self.download:
            raise _missing_data_error(self.data_dir, "download=False")
        from torchvision.datasets import MNIST

        try:
            for train in (True, False):
                MNIST(self.data_dir, train=train, download=True)
        except Exception as err:  # URLError, RuntimeError("Error downloading ..."), OSError, ...
            raise _missing_data_error(self.data_dir, f"download failed: {err}") from err
        if missing_mnist_files(self.data_dir):
            raise _missing_data_error(self.data_dir, "download did not produce the raw files")

    def _load(self, train: bool, subset: Optional[int]) -> Dataset:
        from torchvision.datasets import MNIST

        if missing_mnist_files(self.data_dir):
            raise _missing_data_error(self.data_dir, "setup() called before the files were in place")
        ds = MNIST(self.data_dir, train=train, transform=self.transform, download=False)
        return ds if subset is None else Subset(ds, range(min(int(subset), len(ds))))

    def setup(self, stage: str) -> None:
        """Load the training set for ``fit`` and the (sub-sampled) 10k test set for every stage."""
        if stage == "fit" and self.train_set is None:
            self.train_set = self._load(True, self.train_subset)
        if self.test_set is None:
            self.test_set = self._load(False, self.test_subset)

    def _loader(self, ds: Optional[Dataset], batch_size: int, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError("Expected `setup()` to be called before requesting a dataloader, but it was not.")
        return DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of ``batch_size``."""
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Test-set batches of ``test_batch_size``, in order."""
        return self._loader(self.test_set, self.test_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test-set batches of ``test_batch_size``, in order."""
        return self._loader(self.test_set, self.test_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Test-set batches of ``test_batch_size``, in order (what the secure strategy evaluates)."""
        return self._loader(self.test_set, self.test_batch_size, shuffle=False)


class MNISTClassifier(LightningModule):
    """The seed tutorial's MLP: ``784 -> Linear -> ReLU -> Linear -> 10`` logits (no softmax).

    ``predict_step`` is deliberately Lightning's default (``self(batch)``): the secure strategy runs it on
    secret shares and decides which part of the ``(x, y)`` batch is the input; in plaintext ``forward``
    takes ``x`` from an ``(x, y)`` batch itself.

    Args:
        lr: SGD learning rate.
        hidden: width of the hidden layer.

    Example::

        >>> model = MNISTClassifier()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, lr: float = 0.01, hidden: int = 500) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.fc2 = nn.Linear(hidden, 10)
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        """Map images ``[B, 1, 28, 28]`` (or ``[B, 784]``) to logits ``[B, 10]``.

        A whole ``(x, y)`` batch is also accepted (its ``x`` is used), so Lightning's default
        ``predict_step`` (``self(batch)``) works in plaintext as well.
        """
        if isinstance(x, (tuple, list)):
            x = x[0]
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on a training batch; logs ``train_loss``."""
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Logs ``val_loss`` and ``val_acc`` (micro accuracy, accumulated over the epoch)."""
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Logs ``test_loss`` and ``test_acc`` (micro accuracy, accumulated over the epoch)."""
        x, y = batch
        logits = self(x)
        self.test_acc.update(logits, y)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.log("test_acc", self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Plain SGD with ``lr``, as in the tutorial."""
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

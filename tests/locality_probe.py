"""Run by tests/test_data_locality.py in a fresh interpreter: one ``predict`` with parties as processes (forked, so
every role inherits the audit hook installed here), recording which role opens which file under ``DIR``.

Usage: python tests/locality_probe.py DIR {datamodule,loader,modhooks,shares,five}. Writes DIR/opens.txt: "<role rank or parent> <path>".
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

DIR, MODE = os.path.abspath(sys.argv[1]), sys.argv[2]
LOG = os.open(os.path.join(DIR, "opens.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _audit(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if path.startswith(DIR) and not path.endswith("opens.txt"):
            os.write(LOG, f"{os.environ.get('LOCAL_RANK', 'parent')} {os.path.basename(path)}\n".encode())


class Net(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class HookNet(Net):
    """A model whose own prepare_data writes a file (as a download would): the client's process only."""

    def prepare_data(self) -> None:
        open(os.path.join(DIR, "mod_prepared.txt"), "w").close()


class FileRows(Dataset):
    """Reads each example from its file when asked (as an image folder does)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        x, y = torch.load(os.path.join(DIR, "data.pt"))
        return x[i], y[i]


class Files(LightningDataModule):
    def prepare_data(self) -> None:
        open(os.path.join(DIR, "prepared.txt"), "w").close()  # as a download would

    def setup(self, stage: str) -> None:
        self.x, self.y = torch.load(os.path.join(DIR, "data.pt"))

    def predict_dataloader(self):
        return DataLoader(list(zip(self.x, self.y)), batch_size=8)


if __name__ == "__main__":
    from lightning_smpc import SecureAccuracy, SecurePredictStrategy

    torch.manual_seed(0)
    trained = Net()
    torch.save({"state_dict": trained.state_dict(), "pytorch-lightning_version": "2.6.0"}, os.path.join(DIR, "model.ckpt"))
    x = torch.randn(24, 8)
    torch.save((x, torch.randint(0, 4, (24,))), os.path.join(DIR, "data.pt"))
    if MODE == "shares":  # the owner shares once; the run reads the files with an untrained instance
        from lightning_smpc import save_model_shares

        save_model_shares(trained, os.path.join(DIR, "shares"))
    sys.addaudithook(_audit)
    strategy = SecurePredictStrategy(runtime="distributed", reveal="labels", start_method="fork", preprocess=False,
                                     metrics={"accuracy": SecureAccuracy(num_classes=4)},
                                     model_shares=os.path.join(DIR, "shares") if MODE == "shares" else None,
                                     **(dict(model_owner_party="server", client_party="client") if MODE == "five" else {}))
    trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(1)  # an untrained instance: the weights must come from the owner's checkpoint
    if MODE in ("datamodule", "five"):
        out = trainer.predict(Net(), datamodule=Files(), ckpt_path=os.path.join(DIR, "model.ckpt"))
    elif MODE == "modhooks":
        hooked = HookNet()
        hooked.load_state_dict(trained.state_dict())
        out = trainer.predict(hooked, DataLoader(FileRows(24), batch_size=8))
    elif MODE == "shares":
        out = trainer.predict(Net(), DataLoader(FileRows(24), batch_size=8))
    else:
        out = trainer.predict(trained, DataLoader(FileRows(24), batch_size=8))
    with torch.no_grad():
        agree = float((torch.cat(out) == trained(x).argmax(-1)).float().mean())
    print(f"agreement {agree:.3f}")
    print(f"accuracy-total {strategy.revealed_counts['accuracy'][1]}")

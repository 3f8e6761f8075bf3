"""Transformers through SecurePredictStrategy, unmodified (issue 17): the example ViT (nn.LayerNorm, nn.GELU, a softmax
attention), timm's VisionTransformer, Hugging Face's BertForSequenceClassification on secret token ids with a public
attention mask, and a model with sigmoid/tanh gates, each against plaintext, in the simulated runtime and (the ViT and
BERT) with parties as processes. timm and transformers come with the ``test`` extra; their tests skip without them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_smpc import SecureAccuracy, SecurePredictStrategy, UnsupportedModuleError
from lightning_smpc.mnist import MNIST_FILES, MNISTDataModule
from lightning_smpc.mpc import UnsupportedOpError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))  # the examples import each other by name (and so do spawned roles)
from mnist_vit import ViT  # noqa: E402

DATA_DIR = os.environ.get("SMPC_DATA_DIR", str(REPO.parent / "shared" / "data"))
VIT_WEIGHTS = REPO.parent / "shared" / "peers" / "vit.pt"
HAVE_DATA = all((Path(DATA_DIR) / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES)

pytestmark = [pytest.mark.filterwarnings("ignore:SeededTestPRG:UserWarning"), pytest.mark.usefixtures("torch_single_thread")]


def _predict(strategy, model, loader) -> list:
    trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.predict(model, loader)


def _labels(outputs) -> torch.Tensor:
    return torch.cat([torch.as_tensor(o).reshape(-1) for o in outputs]).long()


def _images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _plain_labels(model, loader, forward=lambda m, b: m(b[0])) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([forward(model, b).argmax(-1) for b in loader])


def _random_vit(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    model = ViT()
    with torch.no_grad():  # trained-like scales: LayerNorm affine and a class token that is not zero
        for name, p in model.named_parameters():
            if name.endswith("cls_token"):
                p.normal_(0, 0.5)
            elif ".ln" in name or name.startswith("norm"):
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


# ---------------------------------------------------------------------------------------------- the example ViT
@pytest.mark.parametrize("runtime", ["simulated", "distributed"])
def test_example_vit_logits_match_plaintext(runtime) -> None:
    model = _random_vit()
    loader = DataLoader(TensorDataset(_images(6)), batch_size=3)
    strategy = SecurePredictStrategy(reveal="logits", seed=0 if runtime == "simulated" else None, runtime=runtime)
    logits = torch.cat([torch.as_tensor(o) for o in _predict(strategy, model, loader)]).double()
    with torch.no_grad():
        plain = torch.cat([model(b[0]) for b in loader]).double()
    assert (logits - plain).abs().max() < 2e-3


@pytest.mark.skipif(not (HAVE_DATA and VIT_WEIGHTS.is_file()), reason="needs MNIST and ../shared/peers/vit.pt")
def test_peers_vit_on_mnist_agrees_with_plaintext() -> None:
    """The peers' tiny ViT (same weights as the SPU and CrypTen benchmarks): labels and accuracy equal plaintext."""
    model = ViT()
    model.load_state_dict(torch.load(VIT_WEIGHTS, map_location="cpu"))
    dm = MNISTDataModule(DATA_DIR, test_batch_size=100, test_subset=200, download=False)
    dm.setup("predict")
    loader = dm.predict_dataloader()
    plain = _plain_labels(model, loader)
    secure = _labels(_predict(SecurePredictStrategy(reveal="labels", seed=0), model, loader))
    assert torch.equal(secure, plain)
    strategy = SecurePredictStrategy(metrics={"accuracy": SecureAccuracy(num_classes=10)}, seed=0)
    _predict(strategy, model, loader)
    targets = torch.cat([y for _, y in loader])
    assert strategy.revealed_counts["accuracy"] == (int((plain == targets).sum()), 200)


# ---------------------------------------------------------------------------------------------- timm
def test_timm_vision_transformer_unmodified() -> None:
    timm = pytest.importorskip("timm")

    class TimmViT(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.vit = timm.models.vision_transformer.VisionTransformer(
                img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2,
                mlp_ratio=2.0)

        def forward(self, x):
            return self.vit(x)

    torch.manual_seed(0)
    model = TimmViT().eval()
    loader = DataLoader(TensorDataset(_images(6)), batch_size=3)
    logits = torch.cat([torch.as_tensor(o) for o in _predict(SecurePredictStrategy(reveal="logits", seed=0), model, loader)])
    with torch.no_grad():
        plain = torch.cat([model(b[0]) for b in loader])
    assert (logits.double() - plain.double()).abs().max() < 2e-3


# ---------------------------------------------------------------------------------------------- Hugging Face BERT
class _Texts(Dataset):
    """Token ids (secret), an attention mask with padding (public) and labels, as a tokenizer's collate gives."""

    def __init__(self, n: int = 8, vocab: int = 40, length: int = 9) -> None:
        g = torch.Generator().manual_seed(3)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        self.mask = torch.ones(n, length, dtype=torch.long)
        self.mask[::2, 5:] = 0
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.y[i]}


def _bert():
    transformers = pytest.importorskip("transformers")

    class TextClassifier(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            config = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=16, num_labels=3,
                                             initializer_range=0.3)  # logits of order 1, not 0.02
            self.bert = transformers.BertForSequenceClassification(config)

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).logits

    torch.manual_seed(0)
    return TextClassifier().eval()


@pytest.mark.parametrize("runtime", ["simulated", "distributed"])
def test_bert_on_secret_token_ids_with_a_public_mask(runtime) -> None:
    model = _bert()
    loader = DataLoader(_Texts(), batch_size=4)
    strategy = SecurePredictStrategy(
        reveal="logits", input_key=("input_ids", "attention_mask"), public_inputs=("attention_mask",),
        seed=0 if runtime == "simulated" else None, runtime=runtime)
    logits = torch.cat([torch.as_tensor(o) for o in _predict(strategy, model, loader)]).double()
    with torch.no_grad():
        plain = torch.cat([model(b["input_ids"], b["attention_mask"]) for b in loader]).double()
    assert (logits - plain).abs().max() < 2e-3
    # the padding matters: with the mask ignored, the padded sequences' logits differ
    with torch.no_grad():
        unmasked = torch.cat([model(b["input_ids"], torch.ones_like(b["attention_mask"])) for b in loader]).double()
    assert (unmasked - plain).abs().max() > 1e-2


def test_bert_accuracy_is_revealed_to_the_owner_only() -> None:
    model = _bert()
    loader = DataLoader(_Texts(), batch_size=4)
    strategy = SecurePredictStrategy(input_key=("input_ids", "attention_mask"), public_inputs=("attention_mask",),
                                     target_key="labels", metrics={"accuracy": SecureAccuracy(num_classes=3)}, seed=0)
    _predict(strategy, model, loader)
    plain = _plain_labels(model, loader, lambda m, b: m(b["input_ids"], b["attention_mask"]))
    targets = torch.cat([b["labels"] for b in loader])
    assert strategy.revealed_counts["accuracy"] == (int((plain == targets).sum()), len(targets))
    assert [(r.name, r.to) for r in strategy.reveal_ledger] == [("accuracy", ("model owner",))]


def test_secret_ids_must_be_integers() -> None:
    model = _bert()
    loader = DataLoader(TensorDataset(_Texts().ids.float(), _Texts().mask), batch_size=4)
    strategy = SecurePredictStrategy(input_key=(0, 1), public_inputs=(1,), seed=0)
    with pytest.raises(UnsupportedOpError, match="integers"):
        _predict(strategy, model, loader)


def test_input_configuration_errors() -> None:
    with pytest.raises(ValueError, match="several inputs"):
        SecurePredictStrategy(public_inputs=("attention_mask",))
    with pytest.raises(ValueError, match="not among the inputs"):
        SecurePredictStrategy(input_key=("input_ids", "attention_mask"), public_inputs=("mask",))
    with pytest.raises(ValueError, match="at least one input must stay secret"):
        SecurePredictStrategy(input_key=("a", "b"), public_inputs=("a", "b"))
    with pytest.raises(ValueError, match="distinct"):
        SecurePredictStrategy(input_key=("a", "a"))


# ---------------------------------------------------------------------------------------------- gates
class Gated(LightningModule):
    """A gated unit (GRU/LSTM-cell style): tanh(W x) * sigmoid(V x), then SiLU and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.v, self.head = nn.Linear(12, 16), nn.Linear(12, 16), nn.Linear(16, 4)
        self.gate, self.act = nn.Sigmoid(), nn.SiLU()

    def forward(self, x):
        h = torch.tanh(self.w(x)) * self.gate(self.v(x))
        return self.head(self.act(h * 3))


def test_sigmoid_tanh_gates_match_plaintext() -> None:
    torch.manual_seed(0)
    model = Gated().eval()
    x = torch.randn(16, 12) * 2
    loader = DataLoader(TensorDataset(x), batch_size=8)
    logits = torch.cat([torch.as_tensor(o) for o in _predict(SecurePredictStrategy(reveal="logits", seed=0), model, loader)])
    with torch.no_grad():
        plain = model(x)
    assert (logits.double() - plain.double()).abs().max() < 2e-3


class Encoder(LightningModule):
    """torch's own encoder: nn.TransformerEncoder (nn.MultiheadAttention inside), a padding mask, the first token
    pooled (in eval, plaintext torch may take its nested-tensor fast path, which outputs 0 at padded positions; on
    shares the padded positions hold what the slow path computes: pool real tokens only)."""

    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, activation="gelu", batch_first=True, norm_first=norm_first)
        self.encoder, self.head = nn.TransformerEncoder(layer, 2), nn.Linear(16, 3)

    def forward(self, x, padding):
        return self.head(self.encoder(x, src_key_padding_mask=padding)[:, 0])


@pytest.mark.parametrize("norm_first", [False, True])
def test_torch_transformer_encoder_with_a_padding_mask(norm_first) -> None:
    torch.manual_seed(0)
    model = Encoder(norm_first).eval()
    x = torch.randn(6, 5, 16)
    padding = torch.zeros(6, 5, dtype=torch.bool)
    padding[::2, 3:] = True
    loader = DataLoader(TensorDataset(x, padding), batch_size=3)
    strategy = SecurePredictStrategy(reveal="logits", input_key=(0, 1), public_inputs=(1,), seed=0)
    logits = torch.cat([torch.as_tensor(o) for o in _predict(strategy, model, loader)]).double()
    with torch.no_grad():
        plain = torch.cat([model(a, b) for a, b in loader]).double()
    assert (logits - plain).abs().max() < 2e-3


def test_still_unsupported_transformer_layers_are_listed_before_sharing() -> None:
    class Unsupported(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.GroupNorm(2, 8)
            self.bag = nn.EmbeddingBag(10, 8)
            self.emb = nn.Embedding(10, 8, max_norm=1.0)
            self.ok = nn.Sequential(nn.LayerNorm(8), nn.GELU(), nn.Embedding(10, 8), nn.Sigmoid(), nn.Tanh(), nn.SiLU(),
                                    nn.MultiheadAttention(8, 2))

        def forward(self, x):
            return x

    strategy = SecurePredictStrategy(seed=0)
    with pytest.raises(UnsupportedModuleError) as info:
        _predict(strategy, Unsupported(), DataLoader(TensorDataset(torch.randn(2, 8)), batch_size=2))
    msg = str(info.value)
    assert "`norm` (GroupNorm)" in msg
    assert "`bag` (EmbeddingBag)" in msg and "`emb` (Embedding)" in msg and "max_norm" in msg
    assert "`ok" not in msg

"""Secure MNIST inference benchmark: the seed workload (784-500-10 MLP), LeNet-5 or a tiny ViT, as a user runs it.

Runs ``Trainer(strategy=SecurePredictStrategy(...)).predict`` with ``SecureAccuracy`` (only the number of
correct predictions is revealed) on N test images at batch B, several repetitions, and prints ONE JSON
line per configuration: medians and minima of the secure and the plaintext wall time (same model, same
batches, same process), their ratio, offline (dealer) and online seconds, rounds and bytes per party,
accuracy secure vs plaintext, agreement of the secure labels with plaintext argmax, and wall-time
estimates for a LAN and a WAN from the counted rounds and bytes.

    python benchmarks/bench_mnist.py --data-dir ../shared/data              # both modes
    python benchmarks/bench_mnist.py --mode throughput --breakdown --plot out/breakdown.png
    python benchmarks/bench_mnist.py --data-dir ../shared/data --model lenet --mode throughput   # 1,000 images, batch 100
    python benchmarks/bench_mnist.py --data-dir ../shared/data --model vit --mode throughput --runtime distributed

``--model lenet`` is the LeNet-5 of ``examples/mnist_cnn.py`` with the peers' weights (``--lenet-weights``, default
``../shared/peers/lenet.pt``, the model of the SPU and CrypTen LeNet benchmarks; trained for one epoch and cached when
missing); ``--model lenet_bn`` is its BatchNorm variant (trained for one epoch, cached; folded at predict). Their JSON
lines carry the MLP's fields plus ``model``, ``dealer_bytes_per_image_party0`` and ``layers``: per op call of the
forward (``conv2d#1``, ``relu#1``, ``max_pool2d#1``, ...; a conv's truncation is fused into the next ReLU and
counted there) the seconds (dealer work included: measured on an extra run that generates dealer material inline),
online rounds and bytes sent, and dealer bytes, of the first party, over all batches (simulated runtime only).
``--model vit`` is the tiny ViT of ``examples/mnist_vit.py`` (``nn.LayerNorm``, ``nn.GELU``, a softmax attention)
with the peers' weights (``--vit-weights``, default ``../shared/peers/vit.pt``, the model of the SPU and CrypTen ViT
benchmarks), 1,000 images at batch 100 like the LeNet; its line (and the LeNet's) adds ``max_abs_logit_err`` and
``mean_abs_logit_err`` (an extra pass that reveals the logits) and ``rounds_per_batch``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset, default_collate

from lightning_smpc import SecureAccuracy, SecurePredictStrategy
from lightning_smpc.mnist import MNISTClassifier, MNISTDataModule
from lightning_smpc.mpc import ShareTensor
from lightning_smpc.mpc.tensor import MATERIALIZE, OP_TABLE

NETWORKS = {"lan": (0.2e-3, 10e9), "wan": (40e-3, 100e6)}  # (round-trip seconds, bits per second)
MODES = {"throughput": (10000, 1000), "latency": (1000, 10)}
LENET_MODES = {"throughput": (1000, 100), "latency": (100, 10)}  # the peers' LeNet benchmark: 1,000 images, batch 100
REPO = Path(__file__).resolve().parents[1]


def trained_model(data_dir: str, cache: Path, epochs: int) -> MNISTClassifier:
    """The seed model (10 epochs SGD lr 0.01, batch 64), trained once and cached."""
    if cache.exists():
        return MNISTClassifier.load_from_checkpoint(cache, map_location="cpu")
    seed_everything(0)
    model = MNISTClassifier(lr=0.01)
    trainer = Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, MNISTDataModule(data_dir, batch_size=64))
    cache.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(cache)
    return model


def lenet_model(args) -> torch.nn.Module:
    """LeNet-5 of examples/mnist_cnn.py: the peers' weights (``--model lenet``), or trained one epoch and cached."""
    sys.path.insert(0, str(REPO / "examples"))  # a plain import: the distributed runtime pickles the model by name
    import mnist_cnn as example
    batchnorm = args.model == "lenet_bn"
    if not batchnorm and Path(args.lenet_weights).is_file():
        model = example.LeNet()
        model.load_state_dict(torch.load(args.lenet_weights, map_location="cpu"))
        return model
    cache = Path(f"benchmarks/results/{args.model}.ckpt")
    if cache.exists():
        return example.LeNet.load_from_checkpoint(cache, map_location="cpu")
    seed_everything(0)
    model = example.LeNet(batchnorm=batchnorm)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(model, MNISTDataModule(args.data_dir, batch_size=64))
    cache.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(cache)
    return model


def test_batches(data_dir: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    dm = MNISTDataModule(data_dir, test_batch_size=n, test_subset=n)
    dm.prepare_data()
    dm.setup("predict")
    return next(iter(dm.predict_dataloader()))


def plaintext_seconds(model, loader, preloaded: bool = False) -> float:
    """The same model on the same batches: through the same DataLoader (what the secure run iterates too),
    or on batches already in memory (the forward pass alone)."""
    batches = [x for x, _ in loader] if preloaded else None
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in batches if preloaded else (x for x, _ in loader):
            model(x).argmax(-1)
    return time.perf_counter() - t0


def plaintext_median(model, loader, preloaded: bool, runs: int = 11) -> tuple[float, float]:
    plaintext_seconds(model, loader, preloaded)  # warm-up
    times = [plaintext_seconds(model, loader, preloaded) for _ in range(runs)]
    return statistics.median(times), min(times)


def secure_run(model, loader, args, reveal: str = "metrics", callbacks=None,
               preprocess: bool | None = None) -> tuple[float, SecurePredictStrategy, list]:
    strategy = SecurePredictStrategy(
        parties=args.parties, precision_bits=args.precision_bits, reveal=reveal,
        metrics={"accuracy": SecureAccuracy(num_classes=10)},
        preprocess=not args.no_preprocess if preprocess is None else preprocess, runtime=args.runtime,
        compare_digit_bits=args.compare_digit_bits, dealer_overlap=getattr(args, "dealer_overlap", None),
        private=getattr(args, "private", "both"),
        **(dict(model_owner_party="server", client_party="client") if getattr(args, "five_roles", False) else {}),
    )
    trainer = Trainer(strategy=strategy, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks)
    t0 = time.perf_counter()
    out = trainer.predict(model, dataloaders=loader)
    return time.perf_counter() - t0, strategy, out


def network_estimate(online_s: float, rounds: int, bytes_sent: int, rtt: float, bps: float) -> float:
    return online_s + rounds * rtt + bytes_sent * 8 / bps


class SpacedCollate:
    """The client's requests arrive ``gap_s`` apart (a service at low load, not saturated): the collate sleeps."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s

    def __call__(self, items):
        time.sleep(self.gap_s)
        return default_collate(items)


def vit_model(args) -> torch.nn.Module:
    """The tiny ViT of examples/mnist_vit.py with the peers' weights (required: ``--vit-weights``)."""
    sys.path.insert(0, str(REPO / "examples"))  # a plain import: the distributed runtime pickles the model by name
    import mnist_vit as example
    model = example.ViT()
    model.load_state_dict(torch.load(args.vit_weights, map_location="cpu"))
    return model


def logit_errors(model, loader, args) -> dict:
    """Max and mean absolute error of the secure logits (revealed in an extra, untimed pass) against plaintext."""
    _, _, logits = secure_run(model, loader, args, reveal="logits")
    secure = torch.cat([torch.as_tensor(v).reshape(-1, 10) for v in logits]).double()
    with torch.no_grad():
        plain = torch.cat([model(xb) for xb, _ in loader]).double()
    err = (secure - plain).abs()
    return {"max_abs_logit_err": round(float(err.max()), 5), "mean_abs_logit_err": round(float(err.mean()), 6)}


def run_config(model, x, y, n: int, batch: int, args) -> dict:
    loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch)
    secure_loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch,
                               collate_fn=SpacedCollate(args.gap_ms / 1000) if args.gap_ms else None)
    plain_med, plain_min = plaintext_median(model, loader, preloaded=False)
    forward_med, _ = plaintext_median(model, loader, preloaded=True)
    walls, offline, stats = [], [], None
    in_party, aead, dealer_bytes, batch_online = [], [], {}, []
    for _ in range(args.repeats):
        wall, st, _ = secure_run(model, secure_loader, args)
        if args.runtime == "distributed":  # processes: no preprocessing store yet, the dealer works inline
            reports = st.process_reports
            party0 = reports[0]
            in_party.append(party0.timings["in_party_seconds"])
            # as the client sees it: from its batch in hand to the result (the first batch records the plan, inline)
            client = next(r for r in reports.values() if r.role == ("client" if args.five_roles else args.parties[-1]))
            batch_online.extend(client.batch_seconds[1:])
            aead.append(max(r.links.get("aead_seconds", 0.0) for r in reports.values()))
            off = party0.timings["share_weights_seconds"]
            dealer_bytes = {p: v["bytes_received"] for p, v in st.comm_stats(offline=True).items()}
        else:
            dealer = st.session.stats()["dealer"]
            off = st.timings["share_weights_seconds"] + dealer["inline_seconds"] + dealer["preprocess_seconds"]
        walls.append(wall)
        offline.append(off)
        stats = st
    with torch.no_grad():
        plain_labels = torch.cat([model(xb).argmax(-1) for xb, _ in loader])
    _, labels_st, labels = secure_run(model, loader, args, reveal="labels")
    secure_labels = torch.cat(labels)
    party = args.parties[0]
    online_stats, offline_stats = stats.comm_stats()[party], stats.comm_stats(offline=True).get(party, {})
    med_wall, med_off = statistics.median(walls), statistics.median(offline)
    med_online = statistics.median(w - o for w, o in zip(walls, offline))
    correct, total = stats.revealed_counts["accuracy"]
    result = {
        "n": n, "batch": batch, "parties": len(args.parties), "precision_bits": args.precision_bits,
        "private": getattr(args, "private", "both"),
        "compare_digit_bits": args.compare_digit_bits,
        "secure_median_s": round(med_wall, 4), "secure_min_s": round(min(walls), 4),
        "plaintext_median_s": round(plain_med, 5), "plaintext_min_s": round(plain_min, 5),
        "plaintext_forward_only_median_s": round(forward_med, 5),
        "ratio_secure_over_plaintext": round(med_wall / plain_med, 1),
        "offline_s": round(med_off, 4), "online_s": round(med_online, 4),
        "online_ratio": round(med_online / plain_med, 1),
        "per_batch_online_ms": round(1000 * med_online / (n // batch), 2),
        "rounds_online": online_stats["rounds"], "bytes_sent_online_per_party": online_stats["bytes_sent"],
        "bytes_received_online_per_party": online_stats["bytes_received"],
        "bytes_received_offline_party0": offline_stats.get("bytes_received", 0),
        "dealer_bytes_per_image_party0": round(offline_stats.get("bytes_received", 0) / n),
        "secure_accuracy": round(float(stats.revealed_metrics["accuracy"]), 4), "secure_correct": correct,
        "plaintext_accuracy": round(float((plain_labels == y[:n]).float().mean()), 4),
        "plaintext_correct": int((plain_labels == y[:n]).sum()),
        "agreement": int((secure_labels == plain_labels).sum()),
    }
    if args.runtime == "distributed":
        result.update({
            "runtime": "distributed", "five_roles": args.five_roles,
            "in_party_median_s": round(statistics.median(in_party), 4),
            "per_batch_in_party_ms": round(1000 * statistics.median(in_party) / (n // batch), 2),
            "gap_ms": args.gap_ms,
            "batch_online_median_ms": round(1000 * statistics.median(batch_online), 2) if batch_online else None,
            "aead_seconds_max_process_median": round(statistics.median(aead), 4),
            "dealer_bytes_per_party": dealer_bytes,
            "dealer_bytes_total": sum(dealer_bytes.values()),
        })
    for net, (rtt, bps) in NETWORKS.items():
        result[f"est_{net}_s"] = round(network_estimate(med_wall, online_stats["rounds"], online_stats["bytes_sent"], rtt, bps), 3)
        # pessimistic: the dealer's bytes to the first party go over the same link, not overlapped with the online phase
        result[f"est_{net}_with_dealer_s"] = round(result[f"est_{net}_s"] + offline_stats.get("bytes_received", 0) * 8 / bps, 3)
    result["breakdown"] = breakdown(stats)
    if args.model != "mlp":
        result.update(logit_errors(model, loader, args))
        result["rounds_per_batch"] = online_stats["rounds"] // (n // batch)
    if args.model != "mlp" and args.runtime == "simulated":
        result = {"model": args.model, **result, "layers": layer_breakdown(model, loader, args)}
    elif args.model != "mlp":
        result = {"model": args.model, **result}
    return result


class _LayerMeter(Callback):
    """Time, online rounds/bytes and dealer bytes of the first party per op call of the forward (``relu#2`` is the
    second ReLU of a batch), summed over batches, by wrapping the op table's handlers for this run only."""

    OPS = ("conv2d", "linear", "relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
           "argmax", "add", "mul", "pad", "mean", "layer_norm", "gelu", "softmax", "matmul", "sigmoid", "tanh", "silu",
           "scaled_dot_product_attention", "cat")

    def __init__(self, party: str) -> None:
        self.party, self.rows, self.calls, self.depth, self.saved = party, {}, {}, 0, {}

    def __enter__(self):
        for func, handler in list(OP_TABLE.items()):
            name = (torch.overrides.resolve_name(func) or getattr(func, "__name__", "")).rsplit(".", 1)[-1].strip("_")
            if name in self.OPS:
                self.saved[func] = handler
                OP_TABLE[func] = self._wrap(name, handler)
        # a softmax inside the network is computed when its consumer runs, before that op's handler: count it apart
        self.materialize = MATERIALIZE[0]
        MATERIALIZE[0] = self._wrap("softmax", self.materialize)
        return self

    def __exit__(self, *exc):
        OP_TABLE.update(self.saved)
        MATERIALIZE[0] = self.materialize
        return False

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.calls = {}

    def _wrap(self, name, handler):
        def measured(*args, **kwargs):
            sess = next((a._session for a in args if isinstance(a, ShareTensor)), None)
            if sess is None or self.depth:  # public operands, or an op inside another measured op
                return handler(*args, **kwargs)
            self.calls[name] = self.calls.get(name, 0) + 1
            key = f"{name}#{self.calls[name]}"
            on0, off0 = sess.comm.stats()[self.party], sess.comm.stats(offline=True).get(self.party, {})
            t0 = time.perf_counter()
            self.depth += 1
            try:
                return handler(*args, **kwargs)
            finally:
                self.depth -= 1
                on1, off1 = sess.comm.stats()[self.party], sess.comm.stats(offline=True).get(self.party, {})
                row = self.rows.setdefault(key, {"op": key, "seconds": 0.0, "rounds": 0, "bytes_sent": 0, "dealer_bytes": 0})
                row["seconds"] += time.perf_counter() - t0
                row["rounds"] += on1["rounds"] - on0["rounds"]
                row["bytes_sent"] += on1["bytes_sent"] - on0["bytes_sent"]
                row["dealer_bytes"] += off1.get("bytes_received", 0) - off0.get("bytes_received", 0)

        return measured


def layer_breakdown(model, loader, args) -> list[dict]:
    """Per op call of the forward (and the final argmax), summed over all batches: see :class:`_LayerMeter`."""
    with _LayerMeter(args.parties[0]) as meter:
        secure_run(model, loader, args, reveal="labels", callbacks=[meter], preprocess=False)
    return [dict(r, seconds=round(r["seconds"], 4)) for r in meter.rows.values() if r["seconds"] > 1e-3 or r["bytes_sent"]]


def breakdown(strategy) -> list[dict]:
    """Per protocol: wall seconds (last run), online rounds and bytes sent by the first party."""
    sess = strategy.session
    if sess is not None:
        by_tag, op_seconds, party = sess.comm.stats_by_tag(), sess.op_seconds, sess.parties[0]
    else:  # distributed runtime: the first party's own report
        report = strategy.process_reports[0]
        by_tag, op_seconds, party = report.by_protocol, report.op_seconds, strategy.parties[0]
    rows = []
    for tag in sorted(set(by_tag) | set(op_seconds)):
        t = by_tag.get(tag, {"rounds": 0, "parties": {}})
        rows.append({"op": tag, "seconds": round(op_seconds.get(tag, 0.0), 4), "rounds": t["rounds"],
                     "bytes_sent": t["parties"].get(party, {}).get("bytes_sent", 0)})
    return rows


def print_table(rows: list[dict], out=sys.stderr) -> None:
    print(f"{'op':<16}{'seconds':>10}{'rounds':>8}{'MB sent':>10}", file=out)
    for r in rows:
        print(f"{r['op']:<16}{r['seconds']:>10.3f}{r['rounds']:>8}{r['bytes_sent'] / 1e6:>10.2f}", file=out)


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print("--plot needs matplotlib: pip install -e '.[bench]'", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([r["op"] for r in rows], [r["seconds"] for r in rows])
    ax.set_xlabel("seconds (last run)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--model", choices=["mlp", "lenet", "lenet_bn", "vit"], default="mlp",
                   help="the seed MLP, LeNet-5 (the peers' weights), LeNet-5 with BatchNorm (trained one epoch), or the "
                   "tiny ViT (the peers' weights)")
    p.add_argument("--vit-weights", default=str(REPO.parent / "shared" / "peers" / "vit.pt"),
                   help="state_dict of the tiny ViT (default: the peers' vit.pt)")
    p.add_argument("--lenet-weights", default=str(REPO.parent / "shared" / "peers" / "lenet.pt"),
                   help="state_dict of the LeNet (default: the peers' lenet.pt; trained when missing)")
    p.add_argument("--mode", choices=["throughput", "latency", "both"], default="both")
    p.add_argument("--n", type=int, help="override N (test images)")
    p.add_argument("--batch", type=int, help="override B (batch size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parties", default="alice,bob")
    p.add_argument("--precision-bits", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--cache", default="benchmarks/results/seed_mlp.ckpt")
    p.add_argument("--no-preprocess", action="store_true", help="generate dealer material inline")
    p.add_argument("--breakdown", action="store_true", help="print the per-protocol table to stderr")
    p.add_argument("--plot", help="save a per-protocol bar chart (needs matplotlib)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")
    p.add_argument("--compare-digit-bits", type=int, choices=[8, 4], default=4,
                   help="comparison digit size: 4 (default) = 16x smaller dealer tables than 8, one more round per ReLU/argmax")
    p.add_argument("--dealer-overlap", choices=["yes", "no"], help="distributed: the dealer generates the next "
                   "batch's material during the current one (yes) or between batches (no); default: the strategy's")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="the client's batches arrive this far apart (latency at low load); 0: back to back")
    p.add_argument("--private", choices=["both", "data", "model"], default="both",
                   help="what stays secret from the compute parties (SecurePredictStrategy(private=...))")
    p.add_argument("--five-roles", action="store_true", help="distributed: the model owner's server and the client "
                   "in processes of their own, outside the compute parties (the seed's topology)")
    p.add_argument("--runtime", choices=["simulated", "distributed"], default="simulated",
                   help="parties in this process, or one process per party plus the crypto provider")
    args = p.parse_args(argv)
    args.parties = tuple(args.parties.split(","))
    args.dealer_overlap = None if args.dealer_overlap is None else args.dealer_overlap == "yes"
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "mlp":
        model, modes_n = trained_model(args.data_dir, Path(args.cache), args.epochs).eval(), MODES
    elif args.model == "vit":
        model, modes_n = vit_model(args).eval(), LENET_MODES
    else:
        model, modes_n = lenet_model(args).eval(), LENET_MODES
    modes = ["throughput", "latency"] if args.mode == "both" else [args.mode]
    x, y = test_batches(args.data_dir, max(args.n or 0, *(modes_n[m][0] for m in modes)))
    for mode in modes:
        n, batch = args.n or modes_n[mode][0], args.batch or modes_n[mode][1]
        result = run_config(model, x, y, n, batch, args)
        rows = result.pop("breakdown")
        print(json.dumps({"mode": mode, **result}), flush=True)
        if args.breakdown:
            print_table(rows)
        if args.plot:
            plot(rows, args.plot.replace(".png", f"_{mode}.png"))


if __name__ == "__main__":
    main()

"""Secure MNIST inference benchmark: the seed workload (784-500-10 MLP), as a user runs it.

Runs ``Trainer(strategy=SecurePredictStrategy(...)).predict`` with ``SecureAccuracy`` (only the number of
correct predictions is revealed) on N test images at batch B, several repetitions, and prints ONE JSON
line per configuration: medians and minima of the secure and the plaintext wall time (same model, same
batches, same process), their ratio, offline (dealer) and online seconds, rounds and bytes per party,
accuracy secure vs plaintext, agreement of the secure labels with plaintext argmax, and wall-time
estimates for a LAN and a WAN from the counted rounds and bytes.

    python benchmarks/bench_mnist.py --data-dir ../shared/data              # both modes
    python benchmarks/bench_mnist.py --mode throughput --breakdown --plot out/breakdown.png
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
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from lightning_smpc import SecureAccuracy, SecurePredictStrategy
from lightning_smpc.mnist import MNISTClassifier, MNISTDataModule

NETWORKS = {"lan": (0.2e-3, 10e9), "wan": (40e-3, 100e6)}  # (round-trip seconds, bits per second)
MODES = {"throughput": (10000, 1000), "latency": (1000, 10)}


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


def secure_run(model, loader, args, reveal: str = "metrics") -> tuple[float, SecurePredictStrategy, list]:
    strategy = SecurePredictStrategy(
        parties=args.parties, precision_bits=args.precision_bits, reveal=reveal,
        metrics={"accuracy": SecureAccuracy(num_classes=10)}, preprocess=not args.no_preprocess, runtime=args.runtime,
    )
    trainer = Trainer(strategy=strategy, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    t0 = time.perf_counter()
    out = trainer.predict(model, dataloaders=loader)
    return time.perf_counter() - t0, strategy, out


def network_estimate(online_s: float, rounds: int, bytes_sent: int, rtt: float, bps: float) -> float:
    return online_s + rounds * rtt + bytes_sent * 8 / bps


def run_config(model, x, y, n: int, batch: int, args) -> dict:
    loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch)
    plain_med, plain_min = plaintext_median(model, loader, preloaded=False)
    forward_med, _ = plaintext_median(model, loader, preloaded=True)
    walls, offline, stats = [], [], None
    in_party, aead, dealer_bytes = [], [], {}
    for _ in range(args.repeats):
        wall, st, _ = secure_run(model, loader, args)
        if args.runtime == "distributed":  # processes: no preprocessing store yet, the dealer works inline
            reports = st.process_reports
            party0 = reports[0]
            in_party.append(party0["timings"]["in_party_seconds"])
            aead.append(max(r.get("links", {}).get("aead_seconds", 0.0) for r in reports.values()))
            off = party0["timings"]["share_weights_seconds"]
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
        "secure_accuracy": round(float(stats.revealed_metrics["accuracy"]), 4), "secure_correct": correct,
        "plaintext_accuracy": round(float((plain_labels == y[:n]).float().mean()), 4),
        "plaintext_correct": int((plain_labels == y[:n]).sum()),
        "agreement": int((secure_labels == plain_labels).sum()),
    }
    if args.runtime == "distributed":
        result.update({
            "runtime": "distributed", "in_party_median_s": round(statistics.median(in_party), 4),
            "aead_seconds_max_process_median": round(statistics.median(aead), 4),
            "dealer_bytes_per_party": dealer_bytes,
            "dealer_bytes_total": sum(dealer_bytes.values()),
        })
    for net, (rtt, bps) in NETWORKS.items():
        result[f"est_{net}_s"] = round(network_estimate(med_wall, online_stats["rounds"], online_stats["bytes_sent"], rtt, bps), 3)
    result["breakdown"] = breakdown(stats)
    return result


def breakdown(strategy) -> list[dict]:
    """Per protocol: wall seconds (last run), online rounds and bytes sent by the first party."""
    sess = strategy.session
    if sess is None:  # distributed runtime: the per-protocol split stays in the party processes
        return []
    by_tag = sess.comm.stats_by_tag()
    party = sess.parties[0]
    rows = []
    for tag in sorted(set(by_tag) | set(sess.op_seconds)):
        t = by_tag.get(tag, {"rounds": 0, "parties": {}})
        rows.append({"op": tag, "seconds": round(sess.op_seconds.get(tag, 0.0), 4), "rounds": t["rounds"],
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
    p.add_argument("--runtime", choices=["simulated", "distributed"], default="simulated",
                   help="parties in this process, or one process per party plus the crypto provider")
    args = p.parse_args(argv)
    args.parties = tuple(args.parties.split(","))
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = trained_model(args.data_dir, Path(args.cache), args.epochs).eval()
    modes = ["throughput", "latency"] if args.mode == "both" else [args.mode]
    x, y = test_batches(args.data_dir, max(args.n or 0, *(MODES[m][0] for m in modes)))
    for mode in modes:
        n, batch = args.n or MODES[mode][0], args.batch or MODES[mode][1]
        result = run_config(model, x, y, n, batch, args)
        rows = result.pop("breakdown")
        print(json.dumps({"mode": mode, **result}), flush=True)
        if args.breakdown:
            print_table(rows)
        if args.plot:
            plot(rows, args.plot.replace(".png", f"_{mode}.png"))


if __name__ == "__main__":
    main()

"""Model shares kept by the compute parties (issue 18): the whole ``predict`` call from share files beside one that
shares the trained model afresh, in the same sitting, and the files' sizes.

The owner shares once (``save_model_shares``, timed); each repetition then runs, back to back, ``predict`` with the
trained model (weights shared afresh: the owner's process reads them) and ``predict(model_shares=...)`` with an
untrained instance (its weights are never used: every weight NaN). Prints ONE JSON line: medians and minima of
both, their ratio, the labels' agreement between the two, the files' bytes per party against 8 bytes per parameter,
and the compute parties' online bytes of each (a run from files adds one opening of the weights, ``W - B``).

    python benchmarks/bench_model_shares.py --data-dir ../shared/data --runtime distributed
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_smpc import SecureAccuracy, SecurePredictStrategy, save_model_shares
from lightning_smpc.mnist import MNISTClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mnist import test_batches, trained_model  # noqa: E402  (the seed model, trained once and cached)


def roles(args, from_files: bool) -> dict:
    """``--topology seed``: sharing afresh runs the five roles (the server and the client outside the parties); a run
    from the files has no server process at all (the metrics go to alice, a compute party)."""
    if args.topology != "seed" or args.runtime != "distributed":
        return {}
    return dict(model_owner_party="alice" if from_files else "server", client_party="client")


def run(model, loader, args, model_shares=None) -> tuple[float, SecurePredictStrategy, torch.Tensor]:
    strategy = SecurePredictStrategy(runtime=args.runtime, reveal="labels", model_shares=model_shares,
                                     metrics={"accuracy": SecureAccuracy(num_classes=10)},
                                     **roles(args, model_shares is not None))
    trainer = Trainer(strategy=strategy, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    t0 = time.perf_counter()
    out = trainer.predict(model, dataloaders=loader)
    return time.perf_counter() - t0, strategy, torch.cat(out)


def blank() -> MNISTClassifier:
    model = MNISTClassifier()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model.eval()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data")
    p.add_argument("--cache", default="benchmarks/results/seed_mlp.ckpt")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runtime", choices=["simulated", "distributed"], default="distributed")
    p.add_argument("--topology", choices=["parties", "seed"], default="parties",
                   help="parties: the owner and the client are compute parties; seed: the five roles afresh against "
                   "four processes (no server) from the files")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    model = trained_model(args.data_dir, Path(args.cache), 10).eval()
    x, y = test_batches(args.data_dir, args.n)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch)
    directory = tempfile.mkdtemp()
    t0 = time.perf_counter()
    paths = save_model_shares(model, directory, parties=("alice", "bob"))
    save_s = time.perf_counter() - t0
    n_params = sum(t.numel() for t in model.parameters())
    fresh, kept = [], []
    for _ in range(args.repeats):  # interleaved: the machine's drift hits both alike
        wall, fresh_st, fresh_labels = run(model, loader, args)
        fresh.append(wall)
        wall, kept_st, kept_labels = run(blank(), loader, args, model_shares=directory)
        kept.append(wall)
    med_fresh, med_kept = statistics.median(fresh), statistics.median(kept)
    print(json.dumps({
        "bench": "model_shares", "runtime": args.runtime, "topology": args.topology,
        "processes_fresh": fresh_st.num_processes, "processes_files": kept_st.num_processes, "n": args.n, "batch": args.batch, "repeats": args.repeats,
        "fresh_sharing_median_s": round(med_fresh, 3), "fresh_sharing_min_s": round(min(fresh), 3),
        "from_share_files_median_s": round(med_kept, 3), "from_share_files_min_s": round(min(kept), 3),
        "ratio_files_over_fresh": round(med_kept / med_fresh, 3),
        "labels_equal": bool(torch.equal(fresh_labels, kept_labels)),
        "accuracy_fresh": fresh_st.revealed_counts["accuracy"], "accuracy_files": kept_st.revealed_counts["accuracy"],
        "save_model_shares_s": round(save_s, 3), "parameters": n_params,
        "file_bytes": {party: path.stat().st_size for party, path in paths.items()},
        "bytes_per_parameter": round(paths["alice"].stat().st_size / n_params, 4),
        "online_bytes_sent_alice_fresh": fresh_st.comm_stats()["alice"]["bytes_sent"],
        "online_bytes_sent_alice_files": kept_st.comm_stats()["alice"]["bytes_sent"],
        "online_bytes_sent_bob_fresh": fresh_st.comm_stats()["bob"]["bytes_sent"],
        "online_bytes_sent_bob_files": kept_st.comm_stats()["bob"]["bytes_sent"],
    }), flush=True)


if __name__ == "__main__":
    main()

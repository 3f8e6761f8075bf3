"""Run by test_distributed.py in a fresh interpreter: a run_parties job (forked roles inherit the audit hook set
here) that records every ``pickle.find_class`` (what unpickling any object other than a builtin needs) in a role's
process. Usage: python unpickle_probe.py LOG [--unpickle-on-purpose]."""
import os
import pickle
import sys

import torch

LOG = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
PARENT = os.getpid()
ON_PURPOSE = "--unpickle-on-purpose" in sys.argv


def _audit(event, args):
    if event == "pickle.find_class" and os.getpid() != PARENT:
        os.write(LOG, f"{os.getpid()} {args[0]}.{args[1]}\n".encode())


def job(sess):
    x = sess.share(torch.randn(4, 6) if sess.local_party == "alice" else None, owner="alice", shape=(4, 6))
    w = sess.share(torch.randn(3, 6) if sess.local_party == "alice" else None, owner="alice", shape=(3, 6))
    if ON_PURPOSE:  # the probe's own check: an object unpickled in a role's process is seen
        pickle.loads(pickle.dumps(torch.ones(1)))
    return torch.nn.functional.linear(x, w).relu().argmax(-1).reveal()


if __name__ == "__main__":
    from lightning_smpc.mpc.distributed import run_parties

    sys.addaudithook(_audit)
    out = run_parties(job, parties=("alice", "bob", "carol"), start_method="fork", timeout=30)
    print("ok", out[0].result.tolist())

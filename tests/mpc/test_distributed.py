"""The multi-process runtime (one gloo process per party + one for the dealer) runs the same protocols as the
simulated runtime: same results, same counted traffic, and each party only learns what was revealed to it."""
from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_smpc.mpc import Session
from lightning_smpc.mpc.distributed import PartyProcessError, run_parties
from lightning_smpc.mpc.links import Identity, LinkAuthError, Roster


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 20, generator=g), torch.randn(5, 20, generator=g) * 0.3, torch.randn(5, generator=g) * 0.1


def job(sess):
    """alice owns the input, bob the model; bob learns the argmax, alice the sum of squares, all see h."""
    warnings.simplefilter("ignore")
    X, W, b = _data()
    mine = lambda owner, v: v if sess.local_party in (None, owner) else None  # noqa: E731
    x = sess.share(mine("alice", X), owner="alice", shape=tuple(X.shape))
    w = sess.share(mine("bob", W), owner="bob", shape=tuple(W.shape))
    bb = sess.share(mine("bob", b), owner="bob", shape=tuple(b.shape))
    h = F.relu(F.linear(x, w, bb))
    return {"h": h.reveal(), "sumsq": (h * h).sum(1).reveal(to="alice"), "argmax": h.argmax(dim=1).reveal(to="bob")}


@pytest.mark.parametrize("parties, pinned", [(("alice", "bob"), True), (("alice", "bob", "carol"), False)],
                         ids=["2-parties-roster", "3-parties-ephemeral-identities"])
def test_gloo_runtime_matches_plaintext_and_simulated_traffic(parties, pinned):
    X, W, b = _data()
    H = F.relu(F.linear(X, W, b)).double()
    kw = {}
    if pinned:  # every process proves the identity a roster lists for it
        ids = {n: Identity.generate(n) for n in parties + ("crypto_provider",)}
        kw = {"roster": Roster.from_identities(ids.values()).to_text(), "identities": ids}
    runs = run_parties(job, parties=parties, timeout=60, **kw)
    by_party = dict(zip(parties, runs[: len(parties)]))
    for p, run in by_party.items():
        assert (run.result["h"] - H).abs().max() < 1e-3
        assert (run.result["sumsq"] is not None) == (p == "alice")  # only the receiver learns it
        assert (run.result["argmax"] is not None) == (p == "bob")
    assert torch.allclose(by_party["alice"].result["sumsq"], (H * H).sum(1), atol=1e-2)
    assert torch.equal(by_party["bob"].result["argmax"], H.argmax(1).double())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = Session(parties=parties, seed=0)
    job(sim)
    for p, run in by_party.items():  # the same protocol sends the same bytes in the same rounds
        assert run.rounds == sim.comm.rounds
        assert run.stats[p] == sim.comm.stats()[p]
        assert run["rounds"] == run.to_dict()["rounds"] == run.rounds  # the dict it was, still readable
        cost = run.links  # the encryption's own cost is reported apart from the protocol's traffic
        assert cost["aead_seconds"] > 0 and cost["wire_bytes_sent"] > cost["plain_bytes_sent"] > 0
        assert cost["overhead_bytes_sent"] <= 24 * 4 * cost["messages_sent"]  # counter + GCM tag per tensor
    assert runs[-1][parties[0]]["bytes_received"] > 0  # the dealer process sent material


def outside_job(role):
    """Issue 18.1: the model owner's server and the client outside the compute parties, each in its own process: the
    server shares W and b, the client two inputs; the client learns the argmax, the server the sum."""
    warnings.simplefilter("ignore")
    X, W, b = _data()
    if not isinstance(role, Session):  # an outside role: it shares its inputs, then receives what is revealed to it
        for v in ((W, b) if role.name == "server" else (X, X * 2)):
            role.share(v)
        return role.receive_all()
    sess = role
    w, bb = sess.share(None, owner="server", shape=tuple(W.shape)), sess.share(None, owner="server", shape=(5,))
    x, x2 = (sess.share(None, owner="client", shape=tuple(X.shape)) for _ in range(2))
    h = F.relu(F.linear(x, w, bb)) + F.linear(x2, w)
    sess.reveal(h.argmax(dim=1), to=(), outside="client", name="labels")
    sess.reveal(h.sum(), to=(), outside="server", name="sum")
    return None


def outside_sim():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = Session(("alice", "bob"), seed=0)
    X, W, b = _data()
    w, bb = sim.share(W, owner="server"), sim.share(b, owner="server")
    x, x2 = sim.share(X, owner="client"), sim.share(X * 2, owner="client")
    h = F.relu(F.linear(x, w, bb)) + F.linear(x2, w)
    return (sim, sim.reveal(h.argmax(dim=1), to=(), outside="client", name="labels"),
            sim.reveal(h.sum(), to=(), outside="server", name="sum"))


def test_outside_owners_and_receivers_as_processes_match_the_simulated_runtime():
    runs = run_parties(outside_job, parties=("alice", "bob"), outside=("server", "client"), timeout=60)
    alice, bob, server, client = runs[:4]
    sim, labels, total = outside_sim()
    X, W, b = _data()
    plain = F.relu(F.linear(X, W, b)) + F.linear(2 * X, W)
    assert torch.equal(client.result["labels"], labels) and torch.equal(labels, plain.argmax(1).double())
    assert set(client.result) == {"labels"} and set(server.result) == {"sum"}  # each learns only its own release
    assert abs(float(server.result["sum"]) - float(total)) < 1e-3
    for p, run in (("alice", alice), ("bob", bob)):  # the parties' traffic is the simulated runtime's
        assert run.rounds == sim.comm.rounds and run.stats[p] == sim.comm.stats()[p]
    assert client.stats["client"]["bytes_sent"] == sim.comm.stats()["client"]["bytes_sent"] == 2 * 2 * 8 * X.numel()
    assert runs[-1]["alice"]["bytes_received"] > 0


def disagreeing_job(role):
    """The parties disagree on a public constant just before revealing to an outside receiver; the server's input
    counter is off by one where ``role.name == 'server'`` and ``SKIP`` is set."""
    warnings.simplefilter("ignore")
    X, W, b = _data()
    if not isinstance(role, Session):
        if role.name == "server":
            role._inputs += int(os.environ.get("SMPC_TEST_SKIP") or 0)  # a server out of step with the parties
            role.share(W)
        else:
            role.share(X)
        return role.receive_all()
    sess = role
    w = sess.share(None, owner="server", shape=tuple(W.shape))
    x = sess.share(None, owner="client", shape=tuple(X.shape))
    sess.reveal(F.linear(x, w).sum(), to=(), outside="client", name="sum")
    if not os.environ.get("SMPC_TEST_SKIP"):  # after the parties' last exchange: a public value they disagree on
        sess.reveal(x * (2 if sess.local_party == "alice" else 3), to=(), outside="client", name="scaled")
    return None


@pytest.mark.parametrize("skip", ["", "1"], ids=["public-value", "input-count"])
def test_parties_out_of_step_fail_before_an_outside_role_takes_a_wrong_value(skip, monkeypatch):
    """Review (issue 18.1): a reveal to an outside role carries each party's hash of the public values, and an
    outside owner's input its index and shape: a disagreement fails authentication instead of a wrong value."""
    monkeypatch.setenv("SMPC_TEST_SKIP", skip)
    with pytest.raises(Exception, match="LinkIntegrityError|authenticat"):
        run_parties(disagreeing_job, parties=("alice", "bob"), outside=("server", "client"), timeout=30)


def test_processes_without_their_roster_keys_are_refused_by_name():
    names = ("alice", "bob", "crypto_provider")
    ids = {n: Identity.generate(n) for n in names}
    roster = Roster.from_identities(ids.values())
    ids["bob"] = Identity.generate("bob")  # a key the roster does not list
    del ids["crypto_provider"]  # no key at all
    with pytest.raises(LinkAuthError) as info:  # a role's own error keeps its type; the run's report is its cause
        run_parties(job, parties=names[:2], timeout=30, roster=roster, identities=ids)
    msg = str(info.value.__cause__)
    for n in names:  # every process refused both, by name, before any protocol message
        assert re.search(rf"{n} \(rank \d\) failed during the identity handshake: LinkAuthError: "
                         r"Refused 'bob', 'crypto_provider': 'bob' \(rank 1\): its signature does not verify", msg), msg
    assert "'crypto_provider' (rank 2): its signature does not verify against the roster key (no key)" in msg
    assert not multiprocessing.active_children()


def job_dies(sess):
    """bob's process dies abruptly after a few protocol rounds; alice then gets stuck (as a process blocked in
    native code would): run_parties must still end, name bob, and leave no process behind."""
    warnings.simplefilter("ignore")
    X, W, b = _data()
    mine = lambda owner, v: v if sess.local_party in (None, owner) else None  # noqa: E731
    x = sess.share(mine("alice", X), owner="alice", shape=tuple(X.shape))
    w = sess.share(mine("bob", W), owner="bob", shape=tuple(W.shape))
    h = F.linear(x, w).relu()
    if sess.local_party == "bob":
        with open(os.environ["LSMPC_TEST_DEATH"], "w") as f:
            f.write(repr(time.time()))
        os._exit(3)
    try:
        return h.argmax(dim=1).reveal(to="alice")
    except RuntimeError:
        time.sleep(600)


def _spawned_children() -> list[int]:
    """pids of live (or zombie) processes that this process started with multiprocessing (spawned, or forked:
    those share this process's command line)."""
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
        own = f.read()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == os.getpid() and (b"spawn_main" in cmd or cmd == own):
            out.append(int(pid))
    return out


def test_a_dying_party_fails_the_run_fast_by_name_without_orphans(tmp_path, monkeypatch):
    death = tmp_path / "death"
    monkeypatch.setenv("LSMPC_TEST_DEATH", str(death))
    timeout = 30
    with pytest.raises(PartyProcessError) as info:
        run_parties(job_dies, parties=("alice", "bob"), timeout=timeout)
    raised = time.time()
    msg = str(info.value)
    assert "bob (rank 1) died (exit code 3) without a report" in msg, msg
    assert re.search(r"during local work after 'open/[^:']+:relu(\|public:[0-9a-f]+)?' with alice", msg), msg  # what it was last doing
    assert "crypto_provider (rank 2) failed during sending/receiving 'material:" in msg, msg  # failed fast
    assert "alice (rank 0) was stopped during" in msg, msg  # stuck: stopped by run_parties
    assert raised - float(death.read_text()) < timeout / 3  # well within the timeout
    assert not multiprocessing.active_children() and not _spawned_children()


def _unpickled_in_roles(tmp_path, *flags) -> list[str]:
    log = tmp_path / "find_class.log"
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("unpickle_probe.py")), str(log), *flags],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
    return log.read_text().splitlines()


def test_no_object_is_unpickled_in_any_roles_process(tmp_path):
    """Issue 15.4 (it grepped the source for "pickle"): an audit hook on ``pickle.find_class``, inherited by every
    forked role (three parties and the crypto provider), sees no object unpickled during a run with openings,
    dealer requests and a reveal; the same probe sees one that a role unpickles on purpose."""
    assert _unpickled_in_roles(tmp_path) == []
    assert any("torch" in line for line in _unpickled_in_roles(tmp_path, "--unpickle-on-purpose"))


def job_out_of_range(sess):
    big = torch.full((2,), 1e9) if sess.local_party == "alice" else None  # far outside the 16-bit fixed-point range
    return sess.share(big, owner="alice", shape=(2,)).reveal()


def test_a_partys_own_error_keeps_its_type_with_the_party_named():
    """Issue 16.9 for run_parties: `except EncodingRangeError` works as in one process."""
    from lightning_smpc.mpc.errors import EncodingRangeError

    with pytest.raises(EncodingRangeError, match=r"^alice \(rank 0\): ") as info:
        run_parties(job_out_of_range, parties=("alice", "bob"), timeout=20)
    assert isinstance(info.value.__cause__, PartyProcessError)


def job_first_party_hangs(sess):
    if sess.local_party == "alice":
        time.sleep(60)  # hung before its first request: the dealer waits on alice's control channel
    else:
        time.sleep(6)  # bob starts waiting on alice later: the dealer's wait must end first (2x the timeout)
    x = sess.share(torch.ones(3) if sess.local_party == "alice" else None, owner="alice", shape=(3,))
    return x.relu().reveal()


def test_a_hung_first_party_keeps_no_one_waiting_longer_than_the_timeout():
    """Issue 16.7: the crypto provider waited 10x the timeout on the first party's control channel; now at most 2x
    (the first party's keep-alive bounds its silence), so here it fails before bob does (with 10x it was stopped)."""
    with pytest.raises(PartyProcessError) as info:
        run_parties(job_first_party_hangs, parties=("alice", "bob"), timeout=4)
    msg = str(info.value)
    assert re.search(r"crypto_provider \(rank 2\) failed during [^\n]*dealer/control", msg), msg  # not "was stopped"


def job_long_batch(sess):
    x = sess.share(torch.ones(8) if sess.local_party == "alice" else None, owner="alice", shape=(8,))
    t_end = time.monotonic() + 11  # over twice the timeout, without a dealer request: only openings
    while time.monotonic() < t_end:
        sess.comm.open([(torch.zeros(1, 1, dtype=torch.int64), "arith", 64)], "ping")
        time.sleep(0.05)
    return (x * x).reveal()


def test_the_first_partys_keep_alive_holds_the_dealer_through_a_long_stretch_without_requests():
    out = run_parties(job_long_batch, parties=("alice", "bob"), timeout=5)  # (3 s was tight on a loaded 2-core box)
    assert torch.allclose(out[0].result, torch.ones(8, dtype=torch.float64))

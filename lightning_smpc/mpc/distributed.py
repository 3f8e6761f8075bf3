"""Multi-process runtime over ``torch.distributed`` (gloo): one process per compute party, one for the dealer.

The protocols are the same code as in the simulated runtime; only the transport changes. Each party's
process holds its own row of every share tensor (a party axis of length 1), public constants are added by
the first party only (``Session.holds_first``), and the three transport hooks of
:class:`~.comm.Communicator` become encrypted, authenticated messages over :class:`~.links.Links`:

* ``_exchange`` (opening a masked value): all-gather of each party's share; 1-bit XOR shares are
  packed 8 per byte, and a value opened modulo ``2**bits`` is reduced modulo ``2**bits`` before it leaves
  the process (the full share would leak the unreduced sum) and sent in the smallest integer type that
  holds it (the communicator counts ``bits`` per element);
* ``_exchange_to`` (revealing to some parties): gather to each receiver only — the others never see
  the shares;
* ``_broadcast`` (an input owner's masked input): from the owner to every other party.

The counted traffic (``Session.stats()``) is the protocol's and identical to the simulated runtime's; the
cost of the encryption itself is in ``links.stats`` (seconds of AEAD, ciphertext overhead).

The crypto provider runs in its own process: the first party forwards each request as canonical JSON
(:mod:`.wire`: shapes, ops and mask ids only — no data), and the dealer sends every party its own message,
point to point, in a layout each party derives from the request itself: parties 1..n-1 get a fresh 16-byte
seed they expand into their shares, the first party a seed and the corrections of the correlated values.
Nothing crossing between processes is ever deserialized into arbitrary objects: only validated JSON and raw
tensor bytes.

**Seam for launchers** (e.g. a Lightning strategy whose ranks are the parties + the dealer; the process
group may already exist): :func:`establish_links` after the group starts (every rank), then
:func:`party_session` on a compute party's rank or :func:`serve_dealer` on the dealer's rank, and
:func:`finish` on the first party when it is done. :func:`run_parties` does all of it on 127.0.0.1.
Example (each party's function gets its Session; only the owner passes the value)::

    def job(sess):
        x = sess.share(torch.randn(4, 3) if sess.local_party == "alice" else None, owner="alice", shape=(4, 3))
        return x.relu().reveal(to="bob")          # tensor in bob's process, None in alice's

    results = run_parties(job, parties=("alice", "bob"))   # [PartyResult(result=None, ...), PartyResult(result=tensor(...), ...), dealer]

**Faults.** Every operation has the process group's timeout (``run_parties(timeout=60)``). A process that
fails tears its process group down at once, so its peers fail within milliseconds instead of waiting for
the timeout; :func:`run_parties` then raises :class:`PartyProcessError` naming the party that failed (or
died) and what it was doing, after stopping every process it started.
"""
from __future__ import annotations

from .errors import PartyProcessError
from .process.dealer_server import serve_dealer
from .process.launch import PartyResult, run_parties
from .process.parties import DEFAULT_TIMEOUT, _Runtime, establish_links, party_session
from .process.remote_dealer import RemoteDealer, finish
from .process.supervisor import (PEER_FAILURES, SPAWN_HINT, START_METHODS, check_start_method, is_peer_failure,
                                 main_is_a_file, resolve_start_method, user_error)
from .process.transport import DistributedCommunicator

__all__ = [
    "run_parties", "PartyResult", "establish_links", "party_session", "serve_dealer", "finish", "DistributedCommunicator",
    "RemoteDealer", "PartyProcessError", "DEFAULT_TIMEOUT", "START_METHODS", "check_start_method", "resolve_start_method",
    "PEER_FAILURES", "is_peer_failure", "user_error", "SPAWN_HINT", "main_is_a_file", "_Runtime",
]

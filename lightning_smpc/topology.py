"""Who plays which role with parties as processes, and which process (rank) each role runs in.

Two topologies (``SecurePredictStrategy(runtime="distributed")``):

* **owner and client among the compute parties** (the default, the fastest: ``model_owner_party`` and
  ``client_party`` name parties): one process per compute party plus the crypto provider's.
* **the seed's five roles**: the model owner's server and/or the client outside the compute parties
  (``model_owner_party="server"``, ``client_party="client"``, ``parties=("alice", "bob")``): each outside role runs
  in a process of its own that only provides its inputs and receives its release; the compute parties hold every
  share. Ranks: the parties first, then the outside roles, the crypto provider last.

    >>> t = Topology(("alice", "bob"), "crypto_provider", "server", "client")
    >>> t.roles, t.outside
    (('alice', 'bob', 'server', 'client', 'crypto_provider'), ('server', 'client'))
    >>> Topology(("alice", "bob"), "crypto_provider", "alice", "bob").roles
    ('alice', 'bob', 'crypto_provider')
"""
from __future__ import annotations

from dataclasses import dataclass

from .mpc.errors import PartyConfigError

__all__ = ["Topology"]


@dataclass(frozen=True)
class Topology:
    """The compute parties, the crypto provider, and the model owner's and the client's roles (a party's name, or
    a role of its own)."""

    parties: tuple
    crypto_provider: str
    model_owner: str
    client: str

    def __post_init__(self) -> None:
        for what, name in (("model_owner_party", self.model_owner), ("client_party", self.client)):
            if not isinstance(name, str) or not name or name == self.crypto_provider:
                raise PartyConfigError(
                    f"Expected `{what}` to be a compute party {self.parties} or a role of its own (e.g. 'server', "
                    f"'client'), never the crypto provider, but got {name!r}.")

    @property
    def outside(self) -> tuple[str, ...]:
        """The roles outside the compute parties, each in a process of its own (model owner first)."""
        return tuple(dict.fromkeys(n for n in (self.model_owner, self.client) if n not in self.parties))

    @property
    def roles(self) -> tuple[str, ...]:
        """Every process's role, by rank: the parties, the outside roles, the crypto provider."""
        return tuple(self.parties) + self.outside + (self.crypto_provider,)

    def role_of(self, rank: int) -> str:
        return self.roles[rank]

    def describe(self) -> str:
        outside = f", {' and '.join(self.outside)} (outside the parties)" if self.outside else ""
        return f"parties {self.parties}{outside} and the crypto provider"

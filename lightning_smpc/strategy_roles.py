"""The roles-and-processes side of :class:`~lightning_smpc.strategy.SecurePredictStrategy` (a mixin).

Which role this process plays (a compute party, an outside role, the crypto provider; see
:mod:`lightning_smpc.topology`), how many processes a run has and how they are launched (``predict`` spawning them
here through :class:`~lightning_smpc.launcher.PartyLauncher`, or torchrun / SLURM / one launch per role), joining
the distributed runtime with this role's keys, and who reads the checkpoint (the model owner's process only).

``RolesMixin`` overrides Lightning ``Strategy`` methods (``setup_environment``, ``load_checkpoint``,
``load_model_state_dict``, ``num_nodes``, ``is_distributed``, ``distributed_sampler_kwargs``, ...), so it must come
before ``ParallelStrategy`` in the strategy's bases; its ``super()`` calls then reach Lightning's. It reads the
strategy's settings (``runtime``, ``topology``, ``roster``, ...) set in ``SecurePredictStrategy.__init__``.
"""
from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from . import locality, party_runtime
from .launcher import PartyLauncher
from .mpc.errors import PartyConfigError

__all__ = ["RolesMixin"]


class RolesMixin:
    """Roles and processes of :class:`~lightning_smpc.strategy.SecurePredictStrategy` (see the module docstring)."""

    @property
    def distributed(self) -> bool:
        return self.runtime == "distributed"

    @property
    def num_processes(self) -> int:
        """Processes of one run: 1 (simulated) or one per compute party plus the crypto provider."""
        return len(self.topology.roles) if self.distributed else 1

    @property
    def num_nodes(self) -> int:
        return self._num_nodes

    @num_nodes.setter
    def num_nodes(self, num_nodes: int) -> None:
        self._num_nodes = num_nodes

    @property
    def is_distributed(self) -> bool:  # no DistributedSampler: the client's process iterates the whole loader
        return False

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": 1, "rank": 0}

    def role_name(self, rank: int) -> str:
        """The role of process ``rank``: a compute party, or the crypto provider (the last rank)."""
        return self.topology.role_of(rank)

    @property
    def role(self) -> str:
        return self.role_name(self.global_rank) if self.distributed else "all (simulated)"

    @property
    def dealer_overlaps(self) -> bool:
        """Whether the dealer process generates the next batch's material during the current one (see
        ``dealer_overlap``)."""
        if self.dealer_overlap is not None:
            return self.dealer_overlap
        return not getattr(self, "_spawn_here", False)

    @property
    def is_dealer(self) -> bool:
        return self.distributed and self.global_rank == len(self.topology.roles) - 1

    @property
    def is_outside(self) -> bool:
        """This process plays a role outside the compute parties (the model owner's server, the client)."""
        return self.distributed and self.role in self.topology.outside

    def _configure_launcher(self) -> None:
        env = self.cluster_environment
        external = env is not None and env.creates_processes_externally
        # decided once, in the user's process: the spawned children see LOCAL_RANK and would think otherwise
        self._spawn_here = self.distributed and not external
        self._launcher = PartyLauncher(self) if self._spawn_here else None
        if self._spawn_here and self.roster is None:  # pin the run: fresh keys made here, handed to the roles
            self._spawn_keys = party_runtime.fresh_keys(self.topology.roles)

    @property
    def _processes_per_node(self) -> int:
        """Spawned here: every role on this machine; launched outside (torchrun, SLURM, env vars): the launcher's
        processes per node (``Trainer(devices=...)``, one per machine when each role has its own)."""
        return self.num_processes if getattr(self, "_spawn_here", False) else len(self.parallel_devices or [None])

    def set_world_ranks(self) -> None:
        if self.cluster_environment is None or not self.distributed:
            return
        per_node = self._processes_per_node
        self.cluster_environment.set_global_rank(self.node_rank * per_node + self.local_rank)
        self.cluster_environment.set_world_size(self.num_nodes * per_node)
        rank_zero_only.rank = self.cluster_environment.global_rank()

    def setup_environment(self) -> None:
        if self.distributed:
            self.set_world_ranks()
            if self.world_size != self.num_processes:
                raise PartyConfigError(
                    f"Expected a world of {self.num_processes} processes ({self.topology.describe()}), but the "
                    f"launcher started {self.world_size}. Launch one process per role, e.g. "
                    f"`Trainer(num_nodes={self.num_processes}, devices=1)` with NODE_RANK=0..{self.num_processes - 1} "
                    f"on the machines (rank i plays {self.topology.roles}[i])."
                )
            name = self.role_name(self.global_rank)
            spawn_keys, self._spawn_keys = getattr(self, "_spawn_keys", None), None  # keep no other role's key
            if spawn_keys is None and self.roster is None:  # every role is refused alike, before connecting
                raise PartyConfigError(
                    "A run launched outside `predict` (torchrun, SLURM, one launch per role) needs a roster: without "
                    "one, any process that reaches MASTER_PORT could take a role (the store accepts anyone). Make "
                    "the keys once with `python examples/secure_predict_roles.py make-keys --out keys` (or "
                    "`lightning_smpc.mpc.links.generate_identity` per role), copy keys/roster.json to every machine "
                    "and keys/<role>.pem to its own, and pass SecurePredictStrategy(roster=..., identity=...)."
                )
            self._world = party_runtime.join(self.cluster_environment, self.global_rank, self.parties,
                                             self.crypto_provider, self.timeout, keys=lambda: self._keys(name, spawn_keys),
                                             start_timeout=self.start_timeout, ring=self.ring,
                                             outside=self.topology.outside, client=self.client_party)
            trainer = getattr(self.lightning_module, "_trainer", None)
            if trainer is not None:  # before Lightning's prepare_data / setup / dataloader steps in this process
                locality.keep_data_with_client(trainer, is_client=name == self.client_party)
        super().setup_environment()

    def _keys(self, name: str, spawn_keys) -> tuple:
        """This role's (roster, identity): handed over by ``predict`` spawning the roles, or read from the files
        (once connected: a file that cannot be read is named to the other roles)."""
        if spawn_keys is not None:
            return party_runtime.spawn_identity(spawn_keys, name)
        return party_runtime.load_keys(self.roster, self.identity, name)

    def share_file_keys(self, party: Optional[str]) -> tuple:
        """(roster, identity) that check and decrypt model share files: the run's durable keys (``roster`` and
        ``identity`` paths; a run's fresh spawn keys sign nothing), the identity only in ``party``'s process."""
        if self.roster is None:
            return None, None
        if party is None:  # one process plays every party: it can check the seals, but holds no party's key
            return party_runtime.load_keys(self.roster, self.identity, self.model_owner_party)[0], None
        return party_runtime.load_keys(self.roster, self.identity, party)

    # ------------------------------------------------------------------ only the model owner's process reads weights
    def load_checkpoint(self, checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
        """``ckpt_path``: read in the model owner's process only (Lightning restores it in every process); the
        others get a placeholder and learn the weights' shapes only."""
        if self.distributed and self.role != self.model_owner_party:
            return locality.placeholder_checkpoint()
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)

    def load_model_state_dict(self, checkpoint: dict[str, Any], strict: bool = True) -> None:
        if not locality.is_placeholder(checkpoint):
            super().load_model_state_dict(checkpoint, strict=strict)

"""``SecurePredictStrategy``: run a trained LightningModule's own forward on secret shares.

Threat model: semi-honest, non-colluding compute parties (default "alice", "bob"); a crypto provider
(trusted dealer) that only hands out correlated randomness; the model owner secret-shares the weights
once per predict run; the client secret-shares each batch (inputs and one-hot targets). Only what
``reveal`` names is ever released: the final metric values to the model owner (``"metrics"``), or
the predicted labels / logits to the client. Every release is listed in :attr:`reveal_ledger`.
"""
from __future__ import annotations

import dataclasses

import time
from typing import Any, Literal, Optional, Sequence, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import ParallelStrategy, StrategyRegistry
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torchmetrics import Metric

from . import locality, party_runtime
from .batches import PlaceholderBatch, several_inputs
from .launcher import PartyLauncher
from .mpc import RingConfig, Session
from .mpc.distributed import check_start_method
from .mpc.errors import PartyConfigError, SmpcError
from .mpc.material import DIGIT_BITS
from .mpc.wire import MAX_MATERIAL_BYTES
from .costs import CostReport
from .preflight import preflight as run_preflight
from .outside_run import OutsideRun
from .reports import ProcessReport, RunReports, dealer_report, link_stats, outside_report, party_report
from .secure_run import SecureRun
from .topology import Topology
from .validate import validate_module

__all__ = ["SecurePredictStrategy", "StrategyUsageError"]

Key = Union[int, str]


class StrategyUsageError(SmpcError, RuntimeError):
    """The secure strategy was used for something other than ``predict``."""


def _input_config(input_key, target_key, public_inputs) -> tuple:
    """``(input_key, target_key)`` after checking the public inputs against them (several keys become a tuple)."""
    keys = several_inputs(input_key)
    public = tuple(public_inputs)
    if public and keys is None:
        raise ValueError(f"`public_inputs={public!r}` needs several inputs: pass `input_key` as a tuple of keys.")
    if keys is not None:
        unknown = [k for k in public if k not in keys]
        if unknown:
            raise ValueError(f"`public_inputs` names {unknown}, which are not among the inputs {keys}.")
        if all(k in public for k in keys):
            raise ValueError("Every input is public: at least one input must stay secret (or use a plain strategy).")
        if target_key is not None and target_key in keys:
            raise ValueError(f"`target_key={target_key!r}` is also an input key.")
        return keys, target_key
    return input_key, target_key


class SecurePredictStrategy(ParallelStrategy):
    """Secure inference: weights and batches become additive shares; the user's forward runs on them.

    Args:
        parties: compute party names (n >= 2).
        crypto_provider: the trusted dealer's name.
        precision_bits: fixed-point fractional bits.
        compare_bits: range of values entering comparisons, ``|x| < 2**(compare_bits - precision_bits)``.
        compare_digit_bits: comparison digit size, 4 (default) or 8: 8 needs one round less per ReLU/argmax and
            ~10% fewer online bytes, but 2.8x more dealer bytes for a ReLU network (16x larger comparison tables;
            see ``lightning_smpc.mpc.protocols.compare``): worth it only when the dealer's material is delivered
            ahead of time and round trips are expensive.
        reveal: ``"metrics"`` (default: predictions stay secret; only the metrics are revealed, to the model
            owner; the simulated runtime's ``predict`` returns :class:`ShareTensor` objects, the distributed one
            returns nothing), ``"labels"`` (argmax class indices revealed to the client) or ``"logits"`` (the
            model output revealed to the client).
        metrics: ``{name: metric}`` of secure metrics, e.g. ``{"accuracy": SecureAccuracy(num_classes=10)}``.
        input_key / target_key: where inputs and targets sit in a batch: an index for tuples/lists
            (default 0 and 1), a key for dicts (default "x"/"input"/"image" and "y"/"target"/"label").
            A bare tensor batch has no targets. Several inputs: a tuple of keys (dict batches: passed to
            ``forward`` by name, e.g. ``("input_ids", "attention_mask")``) or of positions (tuple batches: in
            order). Integer inputs (token ids) are shared as integers, without fixed-point scaling.
        public_inputs: the input keys that are public: given in clear to every compute party (e.g. an attention
            mask, which reveals each sequence's length and padding), not shared. At least one input stays secret.
        preprocess: generate the dealer material for all full batches ahead of the online phase, from the
            plan recorded on the first batch (offline/online split). ``False`` generates it inline. With
            parties as processes, the dealer process streams the next batch's material while the parties
            compute the current one (when the client's next batch has the same shape), and a request costs
            no round trip to the dealer.
        preprocess_ahead: how many batches of dealer material the store holds at most (~120 MB per party
            per 1000 MNIST images); it is refilled between batches, so memory stays bounded. (Parties as
            processes: always one batch ahead.)
        seed: ``None`` (cryptographically secure) or an int for the deterministic *insecure* test PRG.
        model_owner / client: names used in the reveal ledger (simulated runtime).
        runtime: ``"simulated"`` (default: every party in this process — a demonstration) or ``"distributed"``
            (one process per compute party plus one for the crypto provider, over ``torch.distributed`` gloo;
            spawned on this machine by ``predict``, or joined when launched by torchrun / SLURM / env vars).
        model_owner_party / client_party: with ``runtime="distributed"``, the compute parties whose processes
            hold the model (default the first party) and the client's data (default the last party); only
            those processes read them, the others learn shapes only.
        timeout: seconds a party waits for a peer before the run fails (distributed runtime), once every role
            has started.
        start_timeout: seconds a role waits for the others to start and authenticate (default 600: roles started
            by hand, minutes apart); every later wait is bounded by ``timeout``.
        roster / identity: paths of the roster (every role's name and Ed25519 public key, shared by all) and of
            this process's private key, for runs across machines (see ``lightning_smpc.mpc.links``); a process
            whose key does not match the roster is refused by every other. Without them, ``predict`` spawning the
            roles on this machine makes fresh keys and their roster in your process and hands each role its own
            key, so the run is pinned all the same; a run launched outside ``predict`` (torchrun, SLURM, one launch
            per role) without a roster is refused (anyone reaching ``MASTER_PORT`` could otherwise take a role).
        start_method: how ``predict`` starts the role processes on this machine (distributed runtime, not
            launched by torchrun/SLURM). ``None``: ``"fork"`` on Linux when each role would get one core anyway
            and CUDA is not initialized (milliseconds instead of ~2 s per process), else ``"spawn"``. Forked
            roles run one intra-op thread each (OpenMP hangs in a forked child once the parent used it).
        dealer_overlap: with ``preprocess``, parties as processes: ``True``: the crypto provider's process generates
            the next batch's material while the parties compute the current batch (best when it has a machine of
            its own); ``False``: between batches (on a machine shared with the parties it then does not slow their
            online phase: batch-10 online latency 26 ms instead of 33 ms on a 2-core machine, for ~10% less
            throughput when batches come back to back). ``None``: ``False`` when ``predict`` spawns the roles on
            this machine, else ``True``.
        private: what stays secret from the compute parties. ``"both"`` (default): the weights and the inputs.
            ``"data"``: only the client's inputs; the model is public to the compute parties (open weights run on
            the client's own compute parties, say): the model owner's process sends its weights in clear, and
            products with them are local (no Beaver triples, no weight sharing). ``"model"``: only the weights; the
            inputs are public (a public benchmark set, a private model): the client's process sends them in
            clear, and the first layer's products are local. Either release is recorded in the reveal ledger.
        preflight: check, before anything is shared, that every value stays in the range the secure computation is
            exact in (see :func:`lightning_smpc.preflight`): calibration data the model owner may see (a batch or a
            dataloader), or ``True`` for the predict loader's first batch (only where the owner may see the
            client's data: the simulated runtime, or ``predict`` spawning the roles in your process). It runs in
            your process (one launch per role: the model owner's) and raises :class:`PreflightError` naming the
            layer, the magnitude and settings that work; the report is :attr:`preflight_report`.
        max_material_bytes: parties as processes: the crypto provider's process refuses a request whose material
            exceeds this many bytes per party (default 4 GiB; LeNet-5 on a batch of 1000 asks for at most 0.47 GB),
            a bound on its memory against a malformed or hostile request. It is the crypto provider's own setting.
        model_shares: predict with model shares the compute parties kept (see
            :func:`lightning_smpc.save_model_shares`): the directory it wrote, a ``{party: path}`` mapping, or (one
            launch per role) this party's own file. The model passed to ``predict`` then gives the architecture only:
            its weights are never used (a fresh, untrained instance works) and the model owner need not be online.
            Each party's process reads its own file only; each run gives the stored shares a fresh mask (``W - B``
            opened once, one message of the weights' size). Files that do not fit (architecture, parties,
            precision, a missing, swapped, damaged, forged or mixed file) raise ``ModelSharesError`` before anything
            runs. Signed and encrypted files (saved with a roster) are checked against ``roster`` and decrypted with
            ``identity``.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning_smpc import SecurePredictStrategy, SecureAccuracy
        >>> strategy = SecurePredictStrategy(metrics={"accuracy": SecureAccuracy(num_classes=10)})
        >>> trainer = Trainer(strategy=strategy, logger=False)  # then: trainer.predict(model, datamodule=dm)
        >>> SecurePredictStrategy(runtime="distributed").num_processes  # alice, bob and the crypto provider
        3
    """

    strategy_name = "secure_predict"

    def __init__(
        self,
        parties: Sequence[str] = ("alice", "bob"),
        crypto_provider: str = "crypto_provider",
        precision_bits: int = 16,
        compare_bits: int = 32,
        reveal: Literal["metrics", "labels", "logits"] = "metrics",
        metrics: Optional[dict[str, Metric]] = None,
        input_key: Optional[Union[Key, Sequence[Key]]] = None,
        target_key: Optional[Key] = None,
        public_inputs: Sequence[Key] = (),
        preprocess: bool = True,
        preprocess_ahead: int = 16,
        seed: Optional[int] = None,
        model_owner: str = "model owner",
        client: str = "client",
        runtime: Literal["simulated", "distributed"] = "simulated",
        model_owner_party: Optional[str] = None,
        client_party: Optional[str] = None,
        timeout: float = 60.0,
        start_timeout: float = 600.0,
        roster: Optional[str] = None,
        identity: Optional[str] = None,
        compare_digit_bits: int = DIGIT_BITS,
        start_method: Optional[Literal["fork", "spawn", "forkserver"]] = None,
        dealer_overlap: Optional[bool] = None,
        max_material_bytes: int = MAX_MATERIAL_BYTES,
        preflight: Any = None,
        private: Literal["both", "data", "model"] = "both",
        model_shares: Optional[Union[str, dict[str, str]]] = None,
    ) -> None:
        super().__init__()
        if reveal not in ("metrics", "labels", "logits"):
            raise ValueError(f"Expected `reveal` to be one of 'metrics', 'labels', 'logits', but got {reveal!r}.")
        if runtime not in ("simulated", "distributed"):
            raise ValueError(f"Expected `runtime` to be 'simulated' or 'distributed', but got {runtime!r}.")
        Session(tuple(parties), crypto_provider)  # validates the party names now
        # what every party and the crypto provider must agree on, as one value (validated now; compared between the
        # roles before their handshake, and bound into their messages)
        self.ring = RingConfig(precision_bits, compare_bits, compare_digit_bits)
        self.parties = tuple(parties)
        self.crypto_provider = crypto_provider
        self.precision_bits = precision_bits
        self.compare_bits = compare_bits
        self.compare_digit_bits = compare_digit_bits
        self.reveal = reveal
        self.metrics: dict[str, Metric] = dict(metrics or {})
        self.input_key, self.target_key = _input_config(input_key, target_key, public_inputs)
        self.public_inputs = tuple(public_inputs)
        self.preprocess = preprocess
        if preprocess_ahead < 1:
            raise ValueError(f"Expected `preprocess_ahead` to be a positive integer, but got {preprocess_ahead}.")
        self.preprocess_ahead = preprocess_ahead
        self.seed = seed
        self.model_owner, self.client = model_owner, client
        self.runtime = runtime
        self.model_owner_party = model_owner_party or self.parties[0]
        self.client_party = client_party or self.parties[-1]
        self.topology = Topology(self.parties, crypto_provider, self.model_owner_party, self.client_party)
        if self.topology.outside and private != "both":
            raise PartyConfigError(
                f"private={private!r} with {self.topology.outside} outside the compute parties is not supported yet: "
                "use private='both', or make the model owner and the client compute parties.")
        if timeout <= 0:
            raise ValueError(f"Expected a positive `timeout` in seconds, but got {timeout}.")
        self.timeout = float(timeout)
        if start_timeout <= 0:
            raise ValueError(f"Expected a positive `start_timeout` in seconds, but got {start_timeout}.")
        self.start_timeout = float(start_timeout)
        if (roster is None) != (identity is None):
            raise PartyConfigError("Pass both `roster` (every role's public key) and `identity` (this process's "
                                   "private key), or neither (one machine: fresh keys per run).")
        self.roster, self.identity = roster, identity
        check_start_method(start_method)
        self.start_method = start_method
        self.dealer_overlap = dealer_overlap
        if max_material_bytes <= 0:
            raise ValueError(f"Expected a positive `max_material_bytes`, but got {max_material_bytes}.")
        self.max_material_bytes = int(max_material_bytes)
        self.preflight = preflight
        if private not in ("both", "data", "model"):
            raise ValueError(f"Expected `private` to be 'both', 'data' or 'model', but got {private!r}.")
        self.private = private
        if model_shares is not None and private == "data":
            raise ValueError("`model_shares` keeps the weights secret, but private='data' makes them public to the "
                             "compute parties: use private='both' (or 'model'), or share the weights in clear.")
        if model_shares is not None and preflight is not None:
            raise PartyConfigError("The pre-flight needs the plaintext model, which a run from `model_shares` never "
                                   "reads: run lightning_smpc.preflight(model, data) where the model is, before "
                                   "saving its shares.")
        self.model_shares = model_shares
        self.preflight_report = None  # the pre-flight's report, in the process that ran it
        self._preflight_done = False
        self._num_nodes = 1
        self._world = None  # this process's handle on the distributed runtime
        self.secure_run: Optional[SecureRun] = None  # this process's part of the run (a compute party's)
        self.shared_weight_names: tuple[str, ...] = ()  # the model tensors that were shared (BatchNorms folded)
        self._reports: Optional[RunReports] = None
        self.revealed_metrics: dict[str, torch.Tensor] = {}
        self.revealed_counts: dict[str, tuple[int, int]] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ roles and processes
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

    # ------------------------------------------------------------------ device handling and (local) collectives
    @property
    def root_device(self) -> torch.device:
        acc = getattr(self, "_accelerator", None)
        if acc is not None and type(acc).__name__ == "CUDAAccelerator" and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def model_to_device(self) -> None:
        assert self.model is not None
        self.model.to(self.root_device)

    # Lightning's own collectives stay local: the roles differ, and every byte between parties goes through the
    # MPC runtime (no plaintext broadcast of one rank's state to the others, no pickled objects between parties).
    def reduce(self, tensor: Any, group: Optional[Any] = None, reduce_op: Optional[Any] = "mean") -> Any:
        return tensor

    def barrier(self, name: Optional[str] = None) -> None:
        return None

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def all_gather(self, tensor: torch.Tensor, group: Optional[Any] = None, sync_grads: bool = False) -> torch.Tensor:
        return tensor

    # ------------------------------------------------------------------ lifecycle: the work is in SecureRun
    def connect(self, model: LightningModule) -> None:
        trainer = getattr(model, "_trainer", None)
        fn = trainer.state.fn if trainer is not None else None
        if fn is not None and fn != TrainerFn.PREDICTING:
            raise StrategyUsageError(
                f"SecurePredictStrategy only runs `Trainer.predict`, but `{fn.value}` was called. Train (and "
                "validate/test) with a normal strategy first, e.g. `Trainer().fit(model, dm)`, then run "
                "`Trainer(strategy=SecurePredictStrategy(...)).predict(model, datamodule=dm)`."
            )
        if is_param_in_hook_signature(model.predict_step, "dataloader_iter", explicit=True):
            raise StrategyUsageError(
                "predict_step(dataloader_iter) is not supported by SecurePredictStrategy: batches must pass "
                "through the strategy to be secret-shared. Take `batch` as the first argument instead."
            )
        super().connect(model)

    def run_preflight(self, model, data: Any) -> None:
        """The pre-flight check of ``model`` on ``data`` with this strategy's settings (see ``preflight``)."""
        if self.preflight is None or self._preflight_done:
            return
        calibration = data if self.preflight is True else self.preflight
        if calibration is None:
            raise PartyConfigError(
                "preflight=True needs the predict data in the model owner's process, but with one launch per role "
                "only the client's process reads it. Pass calibration data the owner may see: "
                "SecurePredictStrategy(preflight=<a batch or a dataloader>).")
        self.preflight_report = run_preflight(model, calibration, self.precision_bits, self.compare_bits,
                                              input_key=self.input_key, target_key=self.target_key)
        self._preflight_done = True
        self.preflight_report.raise_if_not_ok()

    def setup(self, trainer) -> None:
        self._t_setup = time.perf_counter()
        self._finished = False
        super().setup(trainer)
        model = self.lightning_module
        model.eval()
        validate_module(model)
        if self.preflight is not None and (not self.distributed or self.role == self.model_owner_party):
            first = locality.first_batch(trainer) if self.preflight is True and not self.distributed else None
            self.run_preflight(model, first)  # before anything is shared
        self.revealed_metrics, self.revealed_counts = {}, {}
        if self.is_dealer:  # the crypto provider answers requests until the first party says the run is over
            t0 = time.perf_counter()
            self._dealer_stats = party_runtime.serve_dealer(self._world, self.crypto_provider, self.ring, self.seed,
                                                             self.max_material_bytes)
            self.timings = {"dealer_seconds": time.perf_counter() - t0}
            return
        run = OutsideRun if self.is_outside else SecureRun
        self.secure_run = run(self, model, self._world, self.root_device, t_start=self._t_setup)
        self.shared_weight_names = tuple(self.secure_run.shared_params)
        self.timings = self.secure_run.timings
        if self.is_outside and not self.secure_run.is_client:  # the model owner's server: no batch, it waits for the
            self._finish_run()  # metrics here (as the crypto provider serves here); its predict loop is empty

    def process_dataloader(self, dataloader: Any) -> Any:
        if self.is_dealer:
            return []
        return self.secure_run.wrap_loader(dataloader)

    def batch_to_device(self, batch: Any, device: Optional[torch.device] = None, dataloader_idx: int = 0) -> Any:
        if self.is_dealer:
            return batch
        if not isinstance(batch, PlaceholderBatch):
            batch = super().batch_to_device(batch, device, dataloader_idx)
        return self.secure_run.share_batch(batch)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_dealer:
            return None
        return self.secure_run.step(self.lightning_module, args, kwargs)

    def on_predict_end(self) -> None:
        if not self.is_dealer and not self._finished:
            self._finish_run()
        super().on_predict_end()

    def _finish_run(self) -> None:
        """This role's end of the run: what was revealed to it, its report, and (one launch per role) its log."""
        self._finished = True
        self.revealed_metrics, self.revealed_counts = self.secure_run.finish()
        self.timings["in_party_seconds"] = time.perf_counter() - self._t_setup
        report = outside_report if self.is_outside else party_report
        self._own = report(self.secure_run, self.role, self.global_rank, self.timings, self.revealed_metrics,
                           self.revealed_counts)
        if not getattr(self, "_spawn_here", False):  # spawned roles: your process logs the merged results
            self.log_results(self.lightning_module.trainer.logger)

    def on_exception(self, exception: BaseException) -> None:
        """This role stops: tell the others (the error's class only: its message may hold data, such as the client's
        label range; it is in this role's own output), so that they name the first cause, not only the last peer."""
        if self._world is not None:
            self._world.links.say_goodbye(type(exception).__name__)  # the class only: its text may hold data
        super().on_exception(exception)

    def teardown(self) -> None:
        if self.secure_run is not None:
            self.secure_run.close()
        if self._world is not None:
            party_runtime.leave(self._world)
            self._world = None
        super().teardown()

    # ------------------------------------------------------------------ results in the user's process
    @property
    def session(self) -> Optional[Session]:
        """This process's MPC session (None before setup, in the crypto provider's process, and in the user's
        process when the parties ran as processes: their results then come from :attr:`process_reports`)."""
        return self.secure_run.session if self.secure_run is not None else None

    def _report(self, predictions: Any) -> ProcessReport:
        """This process's report to the launcher in the user's process (distributed runtime, spawned locally)."""
        if self.is_dealer:
            return dealer_report(self.role, self.global_rank, self.timings, getattr(self, "_dealer_stats", {}),
                                 link_stats(self._world))
        if self.role == self.client_party:
            return self._own.with_predictions(predictions)
        return self._own

    def _receive_reports(self, reports: dict[int, ProcessReport]) -> None:
        """In the user's process: fill the results from the report of the process that holds each of them."""
        self._reports = RunReports(reports, self.parties, self.model_owner_party, self.client_party)
        self.revealed_metrics, self.revealed_counts = self._reports.revealed_metrics, self._reports.revealed_counts
        self.timings = self._reports.timings

    def _predictions_from(self, reports: dict[int, ProcessReport]) -> Any:
        return self._reports.predictions

    @property
    def process_reports(self) -> dict[int, ProcessReport]:
        """Distributed runtime spawned here: each process's report by rank, a :class:`~.reports.PartyReport` per
        compute party (role, timings, traffic, link stats, ...) and the crypto provider's
        :class:`~.reports.DealerReport` last (``report.to_dict()`` or ``report["key"]``: the dicts they were)."""
        return dict(self._reports.by_rank) if self._reports is not None else {}

    @property
    def reveal_ledger(self) -> list:
        """Everything released beyond uniformly masked openings: name, shape, receivers (in an outside role's own
        process: what was revealed to it)."""
        if self.is_outside and self.secure_run is not None:
            return list(self.secure_run.role.learned)
        if self.session is not None:
            return list(self.session.ledger)
        return self._reports.ledger if self._reports is not None else []

    def cost_report(self) -> Optional[CostReport]:
        """Seconds, rounds and bytes per party for every layer (module path) and protocol step of the last run
        (its rows sum to :meth:`comm_stats`); ``print`` shows the layers by time. None before a run, and in the
        crypto provider's process. With parties as processes each party's traffic is its own count and each
        step's time the slowest party's."""
        if self.session is not None:
            return CostReport.from_profiles({self.session.local_party or "all": self.session.comm.cost_profile()})
        if self._reports is not None:
            return CostReport.from_profiles(self._reports.cost_profiles())
        return None

    def log_results(self, logger: Any) -> None:
        """Log the revealed metrics (``secure_<name>``, where this process learnt them) and the per-layer cost
        profile (``cost/<layer>/...``) through a Lightning logger; done at the end of ``predict`` (when ``predict``
        spawned the roles: in your process, once, with every party's profile)."""
        if logger is None:
            return
        metrics = {f"secure_{k}": float(v.mean()) for k, v in self.revealed_metrics.items()}
        report = self.cost_report()
        if report is not None:
            metrics.update(report.metrics())
        if metrics:
            logger.log_metrics(metrics, step=0)
            logger.save()

    def comm_stats(self, offline: bool = False) -> dict[str, dict[str, int]]:
        """Per compute party: rounds, messages, bytes sent/received (online, or offline from the dealer). In the
        crypto provider's own process (one launch per role): its offline traffic to each party."""
        if self.is_dealer:  # the crypto provider's process: what it sent each party (offline), nothing online
            stats = getattr(self, "_dealer_stats", {}) if offline else {}
            return {p: stats[p] for p in self.parties if p in stats}
        if self.is_outside and self.secure_run is not None:  # an outside role's own process: its own traffic
            return {self.role: dataclasses.asdict(self.secure_run.role.stats)}
        if self.session is None:  # each party's own process counted its own traffic
            return self._reports.comm_stats(offline) if self._reports is not None else {}
        stats = self.session.comm.stats(offline=offline)
        return {p: stats[p] for p in self.parties if p in stats}

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description=cls.__name__)
        strategy_registry.register(
            "secure_predict_3pc", cls, description="SecurePredictStrategy with three compute parties",
            parties=("alice", "bob", "carol"),
        )


if SecurePredictStrategy.strategy_name not in StrategyRegistry:
    SecurePredictStrategy.register_strategies(StrategyRegistry)

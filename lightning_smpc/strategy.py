"""``SecurePredictStrategy``: run a trained LightningModule's own forward on secret shares.

Threat model: semi-honest, non-colluding compute parties (default "alice", "bob"); a crypto provider
(trusted dealer) that only hands out correlated randomness; the model owner secret-shares the weights
once per predict run; the client secret-shares each batch (inputs and one-hot targets). Only what
``reveal`` names is ever released: the final metric values to the model owner (``"metrics"``), or
the predicted labels / logits to the client. Every release is listed in :attr:`reveal_ledger`.

The strategy is a thin shell over Lightning's hooks (setup, the predict loop's hooks, teardown, the local device and
collectives); the work lives beside it: :mod:`~lightning_smpc.strategy_args` (the constructor's argument checks),
:mod:`~lightning_smpc.strategy_roles` (``RolesMixin``: roles, processes, launch, keys, who reads the checkpoint),
:mod:`~lightning_smpc.strategy_results` (``ResultsMixin``: session, reports, ledger, costs, logging), and
:mod:`~lightning_smpc.secure_run` / :mod:`~lightning_smpc.outside_run` (one process's part of a run).
"""
from __future__ import annotations

import time
from typing import Any, Literal, Optional, Sequence, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import ParallelStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torchmetrics import Metric

from . import locality, party_runtime
from .batches import PlaceholderBatch
from .mpc import RingConfig
from .mpc.errors import PartyConfigError, SmpcError
from .mpc.material import DIGIT_BITS
from .mpc.wire import MAX_MATERIAL_BYTES
from .preflight import preflight as run_preflight
from .outside_run import OutsideRun
from .reports import RunReports, link_stats, outside_report, party_report
from .secure_run import SecureRun
from .strategy_args import check_choices, check_run_settings, input_config
from .strategy_results import ResultsMixin
from .strategy_roles import RolesMixin
from .topology import Topology
from .validate import validate_module

__all__ = ["SecurePredictStrategy", "StrategyUsageError"]

Key = Union[int, str]


class StrategyUsageError(SmpcError, RuntimeError):
    """The secure strategy was used for something other than ``predict``."""


class SecurePredictStrategy(RolesMixin, ResultsMixin, ParallelStrategy):
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
        model_owner_party / client_party: with ``runtime="distributed"``, whose process holds the model (default the
            first party) and the client's data (default the last party): a compute party, or a role of its own (e.g.
            ``"server"``, ``"client"``: the seed's five roles, each outside role in a process that only provides its
            input and receives its release; see :mod:`lightning_smpc.topology`). Only those processes read them;
            the others learn shapes only.
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
        model_shares_id: the sharing the files must be of (``save_model_shares``' receipt and every file's header
            name it): an older, still validly signed set of files is then refused (a signature says who made the
            files, not when).

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
        model_shares_id: Optional[str] = None,
    ) -> None:
        super().__init__()
        check_choices(reveal, runtime, parties, crypto_provider)
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
        self.input_key, self.target_key = input_config(input_key, target_key, public_inputs)
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
        check_run_settings(self.topology, private=private, timeout=timeout, start_timeout=start_timeout, roster=roster,
                           identity=identity, start_method=start_method, max_material_bytes=max_material_bytes,
                           preflight=preflight, model_shares=model_shares)
        self.timeout = float(timeout)
        self.start_timeout = float(start_timeout)
        self.roster, self.identity = roster, identity
        self.start_method = start_method
        self.dealer_overlap = dealer_overlap
        self.max_material_bytes = int(max_material_bytes)
        self.preflight = preflight
        self.private = private
        self.model_shares = model_shares
        if model_shares_id is not None and model_shares is None:
            raise ValueError("`model_shares_id` pins the sharing of `model_shares`: pass both.")
        self.model_shares_id = model_shares_id
        self.preflight_report = None  # the pre-flight's report, in the process that ran it
        self._num_nodes = 1
        self._world = None  # this process's handle on the distributed runtime
        self.secure_run: Optional[SecureRun] = None  # this process's part of the run (a compute party's)
        self.shared_weight_names: tuple[str, ...] = ()  # the model tensors that were shared (BatchNorms folded)
        self._reports: Optional[RunReports] = None
        self.revealed_metrics: dict[str, torch.Tensor] = {}
        self.revealed_counts: dict[str, tuple[int, int]] = {}
        self.timings: dict[str, float] = {}

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
        if self.preflight is None or self.preflight_report is not None:  # once per strategy
            return
        calibration = data if self.preflight is True else self.preflight
        if calibration is None:
            raise PartyConfigError(
                "preflight=True needs the predict data in the model owner's process, but with one launch per role "
                "only the client's process reads it. Pass calibration data the owner may see: "
                "SecurePredictStrategy(preflight=<a batch or a dataloader>).")
        self.preflight_report = run_preflight(model, calibration, self.precision_bits, self.compare_bits,
                                              input_key=self.input_key, target_key=self.target_key)
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
            self._dealer_links = link_stats(self._world)  # now: teardown closes the links before the report is made
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

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description=cls.__name__)
        strategy_registry.register(
            "secure_predict_3pc", cls, description="SecurePredictStrategy with three compute parties",
            parties=("alice", "bob", "carol"),
        )


if SecurePredictStrategy.strategy_name not in StrategyRegistry:
    SecurePredictStrategy.register_strategies(StrategyRegistry)

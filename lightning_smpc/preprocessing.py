"""The offline/online schedules: the first batch's dealer requests are recorded (its plan); the material of the
following batches of the same shape is generated ahead.

* simulated runtime (:class:`PreprocessSchedule`): into the dealer's store, at most ``ahead`` batches at a time;
* parties as processes (:class:`StreamSchedule`): the dealer process streams the next batch's material, during the
  current batch or between the two, whenever the client announced that the next batch has the same shape.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Optional

__all__ = ["PreprocessSchedule", "StreamSchedule", "full_batches_after_first"]


class _Schedule:
    """What both schedules share: the session, the plan they recorded, and the seconds of their offline work."""

    def __init__(self, session, enabled: bool) -> None:
        self.session, self.enabled = session, enabled
        self.recording = False
        self.plan: Optional[list] = None
        self.seconds = 0.0

    def _keep_plan(self) -> None:
        """Stop recording: the recorded requests are the plan; a later batch that does not match it goes inline."""
        self.recording = False
        self.plan = self.session.dealer.stop_recording()
        self.session.dealer.fallback_inline = True

    @contextmanager
    def _offline(self):
        """Counts the enclosed work in :attr:`seconds`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0


class PreprocessSchedule(_Schedule):
    """Records the plan on the first batch and keeps the dealer's store filled between batches."""

    def __init__(self, session, enabled: bool, ahead: int) -> None:
        super().__init__(session, enabled)
        self.ahead = ahead
        self.batches_seen = 0
        self.full_batches_left = 0

    def before_batch(self) -> None:
        """Called before a batch is shared: start recording on the first, refill an empty store later."""
        self.recording = self.enabled and self.batches_seen == 0
        if self.recording:  # the plan of one batch starts with sharing it
            self.session.record_plan()
        elif self.plan and self.session.dealer.store_size == 0 and self.full_batches_left > 0:
            self._refill()  # offline work between batches: the store holds at most `ahead` batches
        self.batches_seen += 1

    def after_batch(self, trainer, batch_size: int) -> None:
        """After the first batch: keep its plan and preprocess the next full batches.

        How many batches follow comes from what the predict loop will run (``trainer.num_predict_batches``,
        which honours samplers and ``limit_predict_batches``), not from the dataset's length. A batch that
        does not match the plan anyway (a short last batch) finds the store mismatched: the dealer then drops
        the store and works inline for it instead of failing.
        """
        if not self.recording:
            return
        self._keep_plan()
        self.full_batches_left = full_batches_after_first(trainer, batch_size)
        self._refill()

    def _refill(self) -> None:
        repeats = min(self.ahead, self.full_batches_left)
        if repeats <= 0:
            return
        with self._offline():
            self.session.preprocess(self.plan, repeats)
        self.full_batches_left -= repeats


def full_batches_after_first(trainer, batch_size: int) -> int:
    """Batches after the first that the predict loop will run at ``batch_size`` (a short last batch excluded)."""
    counts = getattr(trainer, "num_predict_batches", None) or [0]
    n_batches = counts[0]
    if not isinstance(n_batches, int) or n_batches <= 1:  # unknown (iterable loader, inf) or a single batch
        return 0
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:  # items the sampler yields: a short last batch exists when the loop reaches its end
        n_items = len(loader.batch_sampler.sampler) if loader.batch_sampler is not None else None
        drop_last = bool(getattr(loader.batch_sampler, "drop_last", False))
    except (AttributeError, TypeError):
        n_items, drop_last = None, False
    short_last = (n_items is not None and not drop_last and n_items % batch_size != 0
                  and n_batches >= -(-n_items // batch_size))
    return n_batches - 1 - int(short_last)


class StreamSchedule(_Schedule):
    """Parties as processes: keep the dealer process one batch ahead for runs of batches of the same shape.

    Every party calls the same hooks with the same ``next_same`` (from the client's header of this batch), so
    the parties and the dealer process agree on what is streamed without further messages. A batch whose
    material was not streamed and whose successor has its shape is recorded as the plan; the successor's
    material is requested when it ends. From then on each batch asks for the next one's when it starts, so
    that the dealer process generates it while the parties compute (``overlap``), or when it ends (the dealer
    then works between batches: on a machine it shares with the parties it does not slow their online phase).
    Either way the parties take it, and fold its data-independent products, between the two batches. A batch
    of another shape (a short last one, or one that left the plan) is served inline, and the next run of
    same-shaped batches records a new plan.
    """

    def __init__(self, session, enabled: bool, overlap: bool = True) -> None:
        super().__init__(session, enabled)
        self.overlap = overlap
        self.next_same = False
        self._discards = 0  # the dealer's store discards when this batch began

    def before_batch(self, next_same: bool) -> None:
        self.next_same = bool(next_same) and self.enabled
        streamed = self.session.dealer.store_size > 0  # this batch's material is on its way
        self._discards = self.session.dealer.times.store_discards
        self.recording = self.next_same and not streamed
        if self.recording:
            self.session.record_plan()
        elif streamed and self.next_same and self.overlap:
            self._stream()

    def after_batch(self, trainer=None, batch_size: int = 0) -> None:
        """After a batch's online phase: keep a new plan and have its successor streamed; then, offline, take
        the successor's material and fold its data-independent products (the online phase only reads it)."""
        if self.recording:
            self._keep_plan()
            self._stream()
        elif (self.next_same and not self.overlap and self.session.dealer.store_size == 0
              and self.session.dealer.times.store_discards == self._discards):  # a batch that left the plan: record anew
            self._stream()
        if self.next_same:
            with self._offline():
                self.session.dealer.take_ahead()

    def _stream(self) -> None:
        with self._offline():
            self.session.preprocess(self.plan, 1)

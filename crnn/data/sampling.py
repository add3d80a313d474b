"""Batch order and random draws as pure functions of ``(seed, epoch, batch index)``, for exact resume.

Nothing here reads or advances torch's global generator. Epoch ``e``'s order is a permutation seeded by
``(seed, e)``; batch ``i`` of that epoch carries its own seed ``derive_seed(BATCH, seed, e, i)``, from
which the data set draws that batch's augmentation. So batch ``i`` of epoch ``e`` is the same whether
the epoch is iterated from its start or from batch ``i`` (as after a resume), on any machine.

- :class:`EpochShuffleSampler`: the indices of epoch ``e`` (``set_epoch``, called by Lightning).
- :class:`EpochBatchSampler`: its batches as :class:`SeededBatch` ``(indices, seed)``, from ``start_batch``.
- :class:`EpochLoader`: an iterable over a :class:`~torch.utils.data.DataLoader` of those batches that
  asks ``first_batch()`` where to start when an iteration begins, and raises data errors that a
  worker returned as values. It is not a DataLoader subclass on purpose: Lightning then leaves it
  as it is (no sampler injection); under DDP the sampler shards each epoch's order itself.
- :func:`epoch_loader`: the three wired for a data module's split (what the data modules call).

How this reproduces under Lightning (2.x, read in ``loops/fit_loop.py``, ``loops/training_epoch_loop.py``):
a run resumed from a mid-epoch checkpoint restores the loop counters, calls ``set_epoch(e)`` on
``loader.batch_sampler.sampler`` and iterates the train loader again from a fresh iterator, numbering
the batches from ``epoch_loop.batch_progress.current.ready`` (the batches completed before the
checkpoint). A plain DataLoader would start the epoch over, so the resumed epoch would see its first
batches again (Lightning warns "dataloader is not resumable"). The data modules pass that counter as
``first_batch``; it is read at the first ``next()`` (after Lightning's loop reset), so the resumed
epoch continues with exactly the batches, and the augmentation, of the uninterrupted run, whether
the checkpoint was saved after a batch (``every_n_train_steps``) or inside one (``on_exception``:
Lightning redoes that batch, and so does the loader). The DataLoader iterator, and with it any
worker's index queue, is created at that first ``next()`` too, and its worker base seed comes from
the loader's own generator, not from torch's global one (which dropout draws from).
Tests: ``tests/test_data_cifar100.py::test_lightning_resume_mid_epoch_sees_the_uninterrupted_batches``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from crnn.data.errors import CorruptDatasetError, DatasetNotFoundError

log = logging.getLogger("crnn")

__all__ = [
    "DataErrorValue",
    "EpochBatchSampler",
    "EpochLoader",
    "EpochShuffleSampler",
    "SeededBatch",
    "SkippedSamples",
    "derive_seed",
    "epoch_loader",
    "next_training_batch",
    "process_rank",
]

# Leading tags keep the streams apart (SeedSequence pads entropy with zeros: [s, e] == [s, e, 0]).
ORDER, BATCH, SAMPLE = 1, 2, 3


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer ``keys`` (numpy's SeedSequence: nearby keys, unrelated seeds)."""
    state = np.random.SeedSequence([int(k) % 2**64 for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32 | int(state[1])) >> 1


class SeededBatch(NamedTuple):
    """What the batch sampler hands to ``dataset.__getitems__``: the indices and the batch's seed
    (``None`` for evaluation batches, which draw nothing)."""

    indices: list[int]
    seed: int | None


class DataErrorValue(NamedTuple):
    """A data error returned by a dataset instead of raised, so a worker process does not wrap its
    message in a traceback; :class:`EpochLoader` raises it in the main process."""

    kind: str  # "not_found" or "corrupt"
    message: str

    @classmethod
    def of(cls, err: DatasetNotFoundError | CorruptDatasetError) -> DataErrorValue:
        return cls("not_found" if isinstance(err, DatasetNotFoundError) else "corrupt", str(err))

    def exception(self) -> Exception:
        return (DatasetNotFoundError if self.kind == "not_found" else CorruptDatasetError)(self.message)


class SkippedSamples(NamedTuple):
    """A batch without the samples its dataset had to leave out, and the message of each;
    :class:`EpochLoader` counts and reports them in the main process (workers included)."""

    batch: Any
    skipped: list[str]


def next_training_batch(trainer: Any) -> int:
    """The index Lightning gives the next training batch of the epoch: the batches completed before
    the checkpoint in an epoch resumed mid-way, else 0 (also outside training and without a trainer).
    Read when an :class:`EpochLoader` iteration starts, after Lightning's loop reset."""
    if trainer is None or not trainer.training:
        return 0
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready


def shuffles(trainer: Any, train: bool) -> bool:
    """Whether a split's order is shuffled: training batches are, except under Lightning's
    ``overfit_batches`` (the same first batches every epoch, as Lightning's own samplers do then)."""
    return train and not (trainer is not None and getattr(trainer, "overfit_batches", 0))


def process_rank(trainer: Any) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the trainer's run; ``(0, 1)`` without a trainer."""
    return (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))


class EpochShuffleSampler(Sampler[int]):
    """The indices of one epoch: a permutation of ``range(n)`` that is a pure function of ``(seed, epoch)``.

    ``set_epoch(e)`` selects epoch ``e`` (Lightning calls it before every training epoch, also when it
    resumes one). ``shuffle=False``: ``0..n-1`` every epoch. With ``world_size > 1`` (DDP) process
    ``rank`` takes every ``world_size``-th index of the order, padded from its start to equal lengths
    (as :class:`~torch.utils.data.DistributedSampler` does).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), bool(shuffle), 0
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self, epoch: int) -> torch.Tensor:
        """This process's order of epoch ``epoch``: ``int64 (len(self),)``."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(ORDER, self.seed, epoch))
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        if self.world_size == 1:
            return order
        order = torch.cat([order, order[: len(self) * self.world_size - self.n]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation(self.epoch).tolist())

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)


class EpochBatchSampler(Sampler[SeededBatch]):
    """Batches of ``batch_size`` consecutive indices of ``sampler``'s epoch, from batch ``start_batch``.

    Batch ``i`` of epoch ``e`` is ``SeededBatch(order[i*B:(i+1)*B], derive_seed(BATCH, seed, e, i, rank))``
    (seed ``None`` when ``seeded=False``). ``drop_last`` drops the last incomplete batch.
    ``sampler`` keeps its name so that Lightning finds ``batch_sampler.sampler.set_epoch``.
    """

    def __init__(self, sampler: EpochShuffleSampler, batch_size: int, drop_last: bool, seeded: bool):
        self.sampler, self.batch_size = sampler, int(batch_size)
        self.drop_last, self.seeded = bool(drop_last), bool(seeded)
        self.start_batch = 0

    def batch(self, epoch: int, index: int, order: torch.Tensor | None = None) -> SeededBatch:
        """Batch ``index`` of epoch ``epoch`` (``order``: that epoch's permutation, if already drawn)."""
        order = self.sampler.permutation(epoch) if order is None else order
        indices = order[index * self.batch_size : (index + 1) * self.batch_size].tolist()
        seed = derive_seed(BATCH, self.sampler.seed, epoch, index, self.sampler.rank) if self.seeded else None
        return SeededBatch(indices, seed)

    def __iter__(self) -> Iterator[SeededBatch]:
        epoch = self.sampler.epoch
        order = self.sampler.permutation(epoch)
        for i in range(self.start_batch, len(self)):
            yield self.batch(epoch, i, order)

    def __len__(self) -> int:
        n, b = len(self.sampler), self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)


class EpochLoader:
    """Iterable over a :class:`~torch.utils.data.DataLoader` whose ``batch_sampler`` is ``batch_sampler``.

    Each iteration starts at batch ``first_batch()`` of the sampler's epoch (``None``: 0), read when
    the iteration starts (at the first ``next()``, so after Lightning has restored and reset its loop
    counters; see the module docstring). Batches that are :class:`DataErrorValue` are raised here;
    :class:`SkippedSamples` are unwrapped, their messages logged and kept in :attr:`skipped`.
    ``dataloader_kwargs`` go to the DataLoader (workers, pinning, ``collate_fn``).

    ``order`` is the epoch sampler (Lightning calls its ``set_epoch``). ``state_dict()`` holds the
    order's seed (the position itself is Lightning's batch counter, already in its checkpoint);
    having it also tells Lightning the loader resumes mid-epoch. ``load_state_dict`` warns when the
    checkpoint was made with another seed (the order then differs).
    """

    def __init__(
        self,
        dataset: Any,
        batch_sampler: EpochBatchSampler,
        first_batch: Callable[[], int] | None = None,
        **dataloader_kwargs: Any,
    ):
        # The epoch order is `order`, not `sampler`: with a `sampler` attribute Lightning would rebuild
        # the loader around its own sampler under `overfit_batches`; `shuffles()` handles that case.
        # (Lightning still finds it for `set_epoch` as `batch_sampler.sampler`.)
        self.dataset, self.batch_sampler, self.order = dataset, batch_sampler, batch_sampler.sampler
        self.first_batch = first_batch
        self.skipped: list[str] = []
        # DataLoader draws each iterator's worker base seed from `generator`; its own generator keeps
        # that draw off torch's global one (whose state the model's dropout depends on).
        generator = torch.Generator().manual_seed(self.order.seed)
        self.loader = DataLoader(
            dataset, batch_sampler=batch_sampler, generator=generator, **dataloader_kwargs
        )

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.order.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved, now = state.get("seed"), self.order.seed
        if saved is not None and saved != now:
            warnings.warn(
                f"resuming with data seed {now}, but the checkpoint was made with {saved}: the batch order "
                "and augmentation differ from the interrupted run",
                stacklevel=2,
            )

    def __iter__(self) -> Iterator[Any]:
        self.batch_sampler.start_batch = int(self.first_batch()) if self.first_batch is not None else 0
        for batch in self.loader:
            if isinstance(batch, DataErrorValue):
                raise batch.exception()
            if isinstance(batch, SkippedSamples):
                for message in batch.skipped:
                    self.skipped.append(message)
                    log.warning("left out of its batch (%d so far): %s", len(self.skipped), message)
                batch = batch.batch
            yield batch


def epoch_loader(
    dataset: Any,
    batch_size: int,
    *,
    train: bool,
    trainer: Any,
    shuffle_seed: int | None,
    num_workers: int,
    drop_last: bool = False,
    **dataloader_kwargs: Any,
) -> EpochLoader:
    """A data module's loader of one split: :class:`EpochShuffleSampler` -> :class:`EpochBatchSampler`
    -> :class:`EpochLoader`.

    ``train``: shuffled (see :func:`shuffles`), sharded under DDP, seeded batches, starting at the batch
    Lightning numbers next; otherwise the whole split in order everywhere, unseeded, from batch 0.
    ``shuffle_seed``: seed of the epoch orders and the augmentation (``None``: ``torch.initial_seed()``,
    the run's seed, read now). ``drop_last`` (training only) drops the last incomplete batch, unless
    that would leave no batch. ``trainer``: the data module's (``None`` outside a run).
    ``dataloader_kwargs`` go to the DataLoader (``collate_fn``, ``pin_memory``); workers persist.
    """
    seed = shuffle_seed if shuffle_seed is not None else torch.initial_seed()
    # DDP: each process trains on its shard of the epoch; evaluation reads the whole split everywhere.
    batches = EpochBatchSampler(
        EpochShuffleSampler(
            len(dataset), seed, shuffles(trainer, train), *process_rank(trainer if train else None)
        ),
        batch_size,
        drop_last=train and drop_last and len(dataset) >= batch_size,
        seeded=train,
    )
    return EpochLoader(
        dataset,
        batches,
        first_batch=(lambda: next_training_batch(trainer)) if train else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        **dataloader_kwargs,
    )

"""Deterministic, resumable order of prompt and ptx batches, split over data-parallel ranks.

Every rank computes the same seeded permutation of the dataset per epoch, cuts it into global batches
of ``per_device_batch * data_parallel_world_size`` items and takes its contiguous slice, so one
process with a global batch of 2B sees exactly the rows that two ranks with B each see (what the
data-parallel equivalence test relies on). An incomplete last batch is filled from the start of the
epoch's permutation (``drop_last=False``, every rank keeps the same number of rows) or dropped.
The position is two integers (epoch, batch) and travels in the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np

__all__ = ["BatchOrder", "BatchStream"]


class BatchOrder:
    """Global batch ``i`` of epoch ``e`` as dataset indices (the same on every rank)."""

    def __init__(self, num_items: int, global_batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = False):
        if num_items < 1:
            raise ValueError("BatchOrder: the dataset is empty")
        if drop_last and num_items < global_batch_size:
            raise ValueError(
                f"BatchOrder: {num_items} items cannot fill one batch of {global_batch_size} with drop_last"
            )
        self.num_items, self.global_batch_size = num_items, global_batch_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last

    @property
    def batches_per_epoch(self) -> int:
        n, b = self.num_items, self.global_batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng((self.seed, epoch)).permutation(self.num_items)

    def batch(self, epoch: int, index: int) -> List[int]:
        perm = self.permutation(epoch)
        start = index * self.global_batch_size
        # wrap around (repeating from the epoch's start) so the last batch is full
        return [int(perm[(start + k) % self.num_items]) for k in range(self.global_batch_size)]


class BatchStream:
    """Endless iterator of collated batches for one rank, with a (epoch, batch) position to save/restore."""

    def __init__(
        self,
        dataset: Any,
        per_device_batch_size: int,
        *,
        collate: Callable[[List[Any]], Any],
        world_size: int = 1,
        rank: int = 0,
        seed: int = 42,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        self.dataset, self.collate = dataset, collate
        self.per_device_batch_size, self.world_size, self.rank = per_device_batch_size, world_size, rank
        self.order = BatchOrder(
            len(dataset), per_device_batch_size * world_size, seed=seed, shuffle=shuffle, drop_last=drop_last
        )
        self.epoch, self.index = 0, 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.index >= self.order.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        indices = self.order.batch(self.epoch, self.index)
        mine = indices[self.rank * self.per_device_batch_size : (self.rank + 1) * self.per_device_batch_size]
        self.index += 1
        return self.collate([self.dataset[i] for i in mine])

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def set_state_dict(self, state: Optional[Dict[str, int]]) -> None:
        if state:
            self.epoch, self.index = int(state["epoch"]), int(state["index"])

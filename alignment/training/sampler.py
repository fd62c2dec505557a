"""Batches that do not depend on the world size, for the Trainer-based stages (SFT, reward model).

``GlobalBatchSampler`` takes one permutation of the dataset per epoch (seed + epoch), cuts it into global
batches of b * world_size and gives rank r the r-th slice of each: N processes with per-device batch b
together see exactly the batches of one process with batch N*b. ``global_batch_sampler(trainer)`` builds
it from a PaddleNLP Trainer's arguments (a ``_get_train_sampler`` replacement). ``GlobalBatchMixin`` puts
it into a Trainer, and evaluates one batch per pipeline call whatever the accumulation steps.
"""

from __future__ import annotations

import math
from typing import Iterator, List, Optional

import numpy as np
from paddle.io import DistributedBatchSampler
from paddlenlp.trainer import Trainer

__all__ = ["GlobalBatchMixin", "GlobalBatchSampler", "global_batch_sampler"]


class GlobalBatchSampler(DistributedBatchSampler):
    """Batches that do not depend on the number of data-parallel ranks (see the module docstring).

    Not ``drop_last``: the indices are padded (wrapping around the permutation) to a multiple of
    ``num_replicas`` so every rank yields the same number of batches; the last global batch may be short.
    ``drop_last``: only full global batches.
    """

    def __init__(self, dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0):
        super().__init__(dataset, batch_size, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         drop_last=drop_last)
        self.seed = int(seed)

    def _global_indices(self) -> List[int]:
        n = len(self.dataset)
        order = np.arange(n)
        if self.shuffle:
            np.random.RandomState(self.seed + self.epoch).shuffle(order)
        order = order.tolist()
        global_batch = self.batch_size * self.nranks
        if self.drop_last:
            return order[: n - n % global_batch]
        padding = (-n) % self.nranks
        return order + (order * math.ceil(padding / max(n, 1)))[:padding]

    def __iter__(self) -> Iterator[List[int]]:
        order = self._global_indices()
        global_batch = self.batch_size * self.nranks
        for start in range(0, len(order), global_batch):
            chunk = order[start : start + global_batch]
            per_rank = len(chunk) // self.nranks
            yield chunk[self.local_rank * per_rank : (self.local_rank + 1) * per_rank]

    def __len__(self) -> int:
        return math.ceil(len(self._global_indices()) / (self.batch_size * self.nranks))


def global_batch_sampler(trainer: Trainer) -> Optional[GlobalBatchSampler]:
    """The training sampler of ``trainer`` (replaces PaddleNLP's world-size-dependent default)."""
    if trainer.train_dataset is None:
        return None
    args = trainer.args
    return GlobalBatchSampler(
        trainer.train_dataset,
        batch_size=args.per_device_train_batch_size,
        num_replicas=max(int(args.dataset_world_size), 1),
        rank=int(args.dataset_rank),
        shuffle=True,
        drop_last=bool(args.dataloader_drop_last),
        seed=int(getattr(args, "data_seed", None) or args.seed),
    )


class GlobalBatchMixin:
    """Trainer mixin: training batches from ``GlobalBatchSampler``, so one process and any layout with the
    same global batch see the same examples in the same order (PaddleNLP's default sampler does not)."""

    def _get_train_sampler(self):
        return global_batch_sampler(self)

    def prediction_pipeline_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """PaddleNLP's pipeline evaluation gets one batch per call: one micro-batch, whatever
        ``gradient_accumulation_steps`` is (the pipeline would otherwise wait for that many)."""
        steps = model.accumulate_steps
        model.accumulate_steps = 1
        try:
            return super().prediction_pipeline_step(model, inputs, prediction_loss_only, ignore_keys)
        finally:
            model.accumulate_steps = steps

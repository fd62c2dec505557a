"""Sharding stage 3 for frozen models (reference, reward, teacher): parameters split over the sharding group.

fleet's stage-3 wrapper manages trainable parameters only (it is built around an optimizer), so a frozen
model would stay whole on every rank. ``shard_frozen_parameters`` gives it the same saving without an
optimizer:

* every parameter with at least ``segment_size`` elements is flattened, padded to a multiple of the group
  size N, and only this rank's 1/N slice is kept; the full tensor's memory is released (the parameter keeps
  its name, shape, dtype and identity);
* a forward pre-hook on each layer that owns sharded parameters all-gathers them into full tensors for the
  duration of that layer's forward, and a post-hook releases them again, so at most one layer's parameters
  are whole at a time.

Every rank of the sharding group must run the same sequence of forward passes (the gathers are
collectives): true for scoring a batch, not for generation, whose length depends on the rows; do not shard
a model that generates. Parameters below ``segment_size`` (norms, small biases) stay whole.
"""

from __future__ import annotations

from typing import Dict, List

import paddle
import paddle.distributed as dist

__all__ = ["FrozenShards", "shard_frozen_parameters"]


class FrozenShards:
    """The bookkeeping of one sharded frozen model (see the module docstring)."""

    def __init__(self, model: paddle.nn.Layer, group, segment_size: int = 2 ** 15):
        self.group = group
        self.world = int(group.nranks)
        self.rank = int(group.rank)
        self.shards: Dict[int, paddle.Tensor] = {}  # id(param) -> this rank's flat slice
        self.numel: Dict[int, int] = {}
        self._full: Dict[int, paddle.Tensor] = {}
        self.hooks: List = []
        for layer in model.sublayers(include_self=True):
            own = [p for p in layer._parameters.values() if p is not None and int(p.numel()) >= segment_size]
            for p in own:
                if id(p) not in self.shards:  # a tied weight is sharded once, gathered by each owner
                    self._shard(p)
            if own:
                self.hooks.append(layer.register_forward_pre_hook(self._gather_hook(own)))
                self.hooks.append(layer.register_forward_post_hook(self._release_hook(own)))

    def _shard(self, p: paddle.Tensor) -> None:
        n = int(p.numel())
        per = -(-n // self.world)
        flat = p.detach().reshape([-1])
        if per * self.world > n:
            flat = paddle.concat([flat, paddle.zeros([per * self.world - n], dtype=flat.dtype)])
        self.shards[id(p)] = flat[self.rank * per:(self.rank + 1) * per].clone()
        self.numel[id(p)] = n
        p.get_tensor()._clear()  # the full tensor's memory goes; name, shape and dtype stay

    def gather(self, params) -> None:
        for p in params:
            if id(p) in self._full:
                continue
            parts: List[paddle.Tensor] = []
            dist.all_gather(parts, self.shards[id(p)], group=self.group)
            full = paddle.concat(parts)[: self.numel[id(p)]].reshape(p.shape)
            p.get_tensor()._share_data_with(full.get_tensor())
            self._full[id(p)] = full

    def release(self, params) -> None:
        for p in params:
            if self._full.pop(id(p), None) is not None:
                p.get_tensor()._clear()

    def _gather_hook(self, params):
        def hook(layer, inputs):
            self.gather(params)

        return hook

    def _release_hook(self, params):
        def hook(layer, inputs, outputs):
            self.release(params)

        return hook

    def local_bytes(self) -> int:
        """Bytes of the parameter slices this rank keeps."""
        return sum(int(t.numel()) * t.element_size() for t in self.shards.values())


def shard_frozen_parameters(model: paddle.nn.Layer, group, segment_size: int = 2 ** 15) -> FrozenShards:
    """Split ``model``'s large parameters over ``group`` (a frozen model: no gradients, no optimizer)."""
    shards = FrozenShards(model, group, segment_size)
    model._frozen_shards = shards  # kept alive with the model
    return shards

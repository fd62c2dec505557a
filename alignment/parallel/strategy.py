"""The one strategy object over ``paddle.distributed``: every model, collective and rank question goes here.

Only this package imports ``paddle.distributed``. Trainers ask the strategy to create and wrap their
models, to average metrics, to gather statistics for global whitening/normalisation and to tell the
main process apart, so tensor/pipeline/sharding parallelism, eval-mode resharding and offload can land
later behind the same calls.

What runs today: one process, or data parallel over every launched process
(``python -m paddle.distributed.launch --nproc_per_node N ...``; NCCL on GPUs, gloo on CPU).
Tensor/pipeline/sharding degrees > 1 raise ``NotImplementedError`` naming the degree.

    strategy = ParallelStrategy.from_args(args)        # or ParallelStrategy() for one process
    strategy.init()                                    # no-op for one process
    actor = strategy.create_model(lambda: load_actor(path), role="actor", trainable=True)
    metrics = strategy.all_reduce_mean({"reward": 0.3, "kl": 0.01})
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

import paddle
import paddle.distributed as dist

__all__ = ["ParallelStrategy", "unwrap_model", "masked_moments"]


def unwrap_model(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """The plain model inside a ``paddle.DataParallel`` (or any ``_layers`` wrapper); itself otherwise."""
    while isinstance(model, paddle.DataParallel) or (
        hasattr(model, "_layers") and isinstance(getattr(model, "_layers"), paddle.nn.Layer)
    ):
        model = model._layers
    return model


@dataclass
class ParallelStrategy:
    """Process layout of a run. Degrees other than 1 for tensor/pipeline/sharding are not implemented yet."""

    tensor_parallel_degree: int = 1
    pipeline_parallel_degree: int = 1
    sharding_parallel_degree: int = 1
    sharding: str = ""

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_degree", "pipeline_parallel_degree", "sharding_parallel_degree"):
            value = getattr(self, name)
            if value in (-1, 0):  # PaddleNLP's "unset"
                setattr(self, name, 1)
            elif value != 1:
                raise NotImplementedError(
                    f"{name}={value} is not implemented yet: this version runs one process or pure data "
                    f"parallel over all launched processes; set {name} to 1 (tensor/pipeline/sharding "
                    "parallelism is a later issue)"
                )
        # "stage1" with sharding_parallel_degree 1 shards nothing: accepted (PaddleNLP configs often carry it).
        if self.sharding.strip() not in ("", "stage1"):
            raise NotImplementedError(
                f"sharding='{self.sharding}' is not implemented yet; leave it empty (data parallel only)"
            )
        self._initialized = False

    @classmethod
    def from_args(cls, args) -> "ParallelStrategy":
        """Build from any object with the PaddleNLP-named degree attributes (missing ones default to 1)."""
        return cls(
            tensor_parallel_degree=int(getattr(args, "tensor_parallel_degree", 1) or 1),
            pipeline_parallel_degree=int(getattr(args, "pipeline_parallel_degree", 1) or 1),
            sharding_parallel_degree=int(getattr(args, "sharding_parallel_degree", 1) or 1),
            sharding=str(getattr(args, "sharding", "") or ""),
        )

    # ------------------------------------------------------------------ process group
    @staticmethod
    def launched_world_size() -> int:
        """World size announced by ``paddle.distributed.launch`` (1 for a plain ``python`` run)."""
        return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))

    def init(self) -> "ParallelStrategy":
        """Join the process group when launched with several processes (idempotent)."""
        if not self._initialized:
            if self.launched_world_size() > 1 and not dist.is_initialized():
                dist.init_parallel_env()
            self._initialized = True
        return self

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else 0

    @property
    def data_parallel_world_size(self) -> int:
        """Ranks that see different data (all of them, while only data parallel exists)."""
        return self.world_size

    @property
    def data_parallel_rank(self) -> int:
        return self.rank

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # ------------------------------------------------------------------ models
    def create_model(
        self,
        factory: Callable[[], paddle.nn.Layer],
        *,
        role: str,
        trainable: bool,
        find_unused_parameters: bool = False,
    ) -> paddle.nn.Layer:
        """Build a model with ``factory()`` and prepare it for its ``role`` (actor, reference, reward, critic).

        Frozen models (``trainable=False``) are put in eval mode with ``stop_gradient`` on every
        parameter and returned unwrapped; trainable ones are wrapped for data parallel when the world
        has more than one rank. (Later: the tensor-parallel config goes into ``factory`` here.)
        """
        model = factory()
        if not trainable:
            model.eval()
            for p in model.parameters():
                p.stop_gradient = True
            return model
        model.train()
        return self.wrap_model(model, find_unused_parameters=find_unused_parameters)

    def wrap_model(self, model: paddle.nn.Layer, find_unused_parameters: bool = False) -> paddle.nn.Layer:
        """``paddle.DataParallel`` when distributed (parameters are broadcast from rank 0), else ``model``."""
        if not self.distributed or isinstance(model, paddle.DataParallel):
            return model
        return paddle.DataParallel(model, find_unused_parameters=find_unused_parameters)

    unwrap = staticmethod(unwrap_model)

    # ------------------------------------------------------------------ collectives
    def all_reduce_sum(self, tensor: paddle.Tensor) -> paddle.Tensor:
        """Sum of ``tensor`` over data-parallel ranks (a new tensor; the input is not modified)."""
        out = tensor.clone()
        if self.distributed:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def all_reduce_max(self, tensor: paddle.Tensor) -> paddle.Tensor:
        out = tensor.clone()
        if self.distributed:
            dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out

    def all_reduce_mean(self, metrics: Mapping[str, float]) -> Dict[str, float]:
        """Average a dict of scalars over ranks (keys sorted so every rank packs the same order).

        Keys ending in ``_max`` / ``_min`` are reduced with max / min instead of the mean.
        """
        keys = sorted(metrics)
        if not self.distributed or not keys:
            return {k: float(metrics[k]) for k in keys}
        values = [float(metrics[k]) for k in keys]
        sign = [(-1.0 if k.endswith("_min") else 1.0) for k in keys]
        is_extreme = [k.endswith("_max") or k.endswith("_min") for k in keys]
        mean_part = paddle.to_tensor([0.0 if e else v for v, e in zip(values, is_extreme)], dtype="float64")
        ext_part = paddle.to_tensor(
            [s * v if e else float("-inf") for v, s, e in zip(values, sign, is_extreme)], dtype="float64"
        )
        dist.all_reduce(mean_part, op=dist.ReduceOp.SUM)
        dist.all_reduce(ext_part, op=dist.ReduceOp.MAX)
        mean_np = (mean_part / self.world_size).numpy()
        ext_np = ext_part.numpy()
        return {
            k: float(s * ext_np[i]) if is_extreme[i] else float(mean_np[i])
            for i, (k, s) in enumerate(zip(keys, sign))
        }

    def all_gather(self, tensor: paddle.Tensor) -> paddle.Tensor:
        """Concatenate a 1-D tensor of possibly different length per rank, in rank order."""
        tensor = tensor.reshape([-1])
        if not self.distributed:
            return tensor
        size = paddle.to_tensor([tensor.shape[0]], dtype="int64")
        sizes: List[paddle.Tensor] = []
        dist.all_gather(sizes, size)
        sizes_int = [int(s.item()) for s in sizes]
        longest = max(sizes_int)
        padded = paddle.concat([tensor, paddle.zeros([longest - tensor.shape[0]], dtype=tensor.dtype)])
        parts: List[paddle.Tensor] = []
        dist.all_gather(parts, padded)
        return paddle.concat([p[:n] for p, n in zip(parts, sizes_int)])

    def all_gather_object(self, obj) -> list:
        """Python objects from every rank (host round-trip; for small things like RNG states or counts)."""
        if not self.distributed:
            return [obj]
        out: list = []
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of rank ``src`` on every rank."""
        if not self.distributed:
            return obj
        return self.all_gather_object(obj)[src]

    def shard_slice(self, num_items: int) -> slice:
        """Contiguous slice of ``num_items`` global items that this rank owns (equal parts required)."""
        world = self.data_parallel_world_size
        if num_items % world:
            raise ValueError(f"cannot split {num_items} items evenly over {world} data-parallel ranks")
        per = num_items // world
        return slice(self.data_parallel_rank * per, (self.data_parallel_rank + 1) * per)

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world_size} (data parallel {self.data_parallel_world_size})"


def masked_moments(strategy: Optional[ParallelStrategy], values: paddle.Tensor, mask: paddle.Tensor):
    """Global (count, mean, unbiased var) of ``values`` where ``mask`` is 1, over all data-parallel ranks."""
    mask = mask.astype("float64")
    v = values.astype("float64")
    stats = paddle.stack([mask.sum(), (v * mask).sum(), (v * v * mask).sum()])
    if strategy is not None:
        stats = strategy.all_reduce_sum(stats)
    count, total, total_sq = stats[0], stats[1], stats[2]
    mean = total / paddle.clip(count, min=1.0)
    var = (total_sq - count * mean * mean) / paddle.clip(count - 1.0, min=1.0)
    return count, mean, paddle.clip(var, min=0.0)


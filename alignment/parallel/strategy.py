"""The one strategy object over ``paddle.distributed``: every model, collective and rank question goes here.

Only this package imports ``paddle.distributed``. The layout uses PaddleNLP's switch names:

    tensor_parallel_degree    split every linear layer and the vocabulary over this many ranks
    pipeline_parallel_degree  cut the decoder into this many stages
    sharding_parallel_degree  shard optimizer states (stage1), + gradients (stage2), + parameters (stage3)
    sharding                  "stage1" | "stage2" | "stage3" (one of them when sharding_parallel_degree > 1)

The remaining ranks are data parallel: ``data_parallel_degree = world / (tp * pp * sharding)``, which must be
a whole number (a one-line ``ValueError`` names the degrees and the world size otherwise). Ranks are
ordered as PaddleNLP's default ``pp_first`` topology: ``[dp, pp, sharding, mp]``, tensor parallel innermost.

*Data-carrying ranks*: ranks with the same pipeline stage and tensor-parallel rank but different data
(the data-parallel and sharding axes together). There are ``data_parallel_world_size = dp * sharding`` of
them; every cross-rank statistic (metrics, reward normalisation, advantage whitening, group baselines,
running values) reduces over that group only, never over the tensor-parallel replicas of the same data.

    strategy = ParallelStrategy(tensor_parallel_degree=2).init()   # under paddle.distributed.launch
    kwargs = strategy.model_kwargs()          # tensor_parallel_degree / rank for from_pretrained
    model = strategy.create_model(factory, role="actor", trainable=True)
    metrics = strategy.all_reduce_mean({"reward": 0.3, "kl": 0.01})

One process, or pure data parallel, keeps the earlier behaviour (``paddle.DataParallel``). On CPU builds of
Paddle, ``init`` first installs the fill-ins of ``compat.py`` (inert on CUDA builds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import paddle
import paddle.distributed as dist

from . import compat

__all__ = ["ParallelStrategy", "unwrap_model", "masked_moments", "SHARDING_STAGES", "DEGREE_NAMES"]

SHARDING_STAGES = ("stage1", "stage2", "stage3")
DEGREE_NAMES = ("tensor_parallel_degree", "pipeline_parallel_degree", "sharding_parallel_degree")
_TOPOLOGY_ORDER = ["dp", "pp", "sharding", "sep", "mp"]
_CURRENT: Optional["ParallelStrategy"] = None


def unwrap_model(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """The plain model inside ``paddle.DataParallel`` / fleet wrappers (any ``_layers`` chain); itself otherwise."""
    while hasattr(model, "_layers") and isinstance(getattr(model, "_layers"), paddle.nn.Layer):
        model = model._layers
    return model


def _parse_sharding(value: Any) -> str:
    """'' or one of SHARDING_STAGES from a string ("stage2", "stage2 offload") or a PaddleNLP option list."""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(getattr(v, "value", v)) for v in value)
    words = [w for w in str(value or "").replace(",", " ").split() if w]
    stages = [w for w in words if w in SHARDING_STAGES]
    unknown = [w for w in words if w not in SHARDING_STAGES and w != "offload"]
    if unknown or len(stages) > 1:
        raise ValueError(
            f"sharding='{value}' is not valid; allowed values: {', '.join(SHARDING_STAGES)} (one of them), or empty"
        )
    return stages[0] if stages else ""


@dataclass
class ParallelStrategy:
    """Process layout of a run; see the module docstring."""

    tensor_parallel_degree: int = 1
    pipeline_parallel_degree: int = 1
    sharding_parallel_degree: int = 1
    sharding: str = ""

    def __post_init__(self) -> None:
        for name in DEGREE_NAMES:
            value = int(getattr(self, name))
            if value in (-1, 0):  # PaddleNLP's "unset"
                value = 1
            if value < 1:
                raise ValueError(f"{name} must be >= 1 (or -1 for unset), got {value}")
            setattr(self, name, value)
        self.sharding = _parse_sharding(self.sharding)
        if self.sharding_parallel_degree > 1 and not self.sharding:
            self.sharding = "stage1"  # PaddleNLP's default when only the degree is given
        if self.pipeline_parallel_degree > 1 and self.sharding in ("stage2", "stage3") \
                and self.sharding_parallel_degree > 1:
            raise ValueError(
                f"sharding='{self.sharding}' cannot be combined with pipeline_parallel_degree="
                f"{self.pipeline_parallel_degree}; use sharding='stage1' with pipeline parallelism"
            )
        if self.tensor_parallel_degree > 1 and self.sharding == "stage3" and self.sharding_parallel_degree > 1:
            raise ValueError(
                f"sharding='stage3' cannot be combined with tensor_parallel_degree={self.tensor_parallel_degree} "
                "(as in PaddleNLP); use sharding='stage1' or 'stage2' with tensor parallelism"
            )
        self._initialized = False
        self._hcg = None
        self._data_group = None
        self._world = 1
        self._rank = 0

    @classmethod
    def from_args(cls, args) -> "ParallelStrategy":
        """Build from any object with the PaddleNLP-named attributes (missing ones default to 1 / '')."""
        return cls(
            tensor_parallel_degree=int(getattr(args, "tensor_parallel_degree", 1) or 1),
            pipeline_parallel_degree=int(getattr(args, "pipeline_parallel_degree", 1) or 1),
            sharding_parallel_degree=int(getattr(args, "sharding_parallel_degree", 1) or 1),
            sharding=getattr(args, "sharding", "") or "",
        )

    @classmethod
    def current(cls) -> "ParallelStrategy":
        """The strategy this process initialised last; else one adopting fleet's groups (a PaddleNLP Trainer
        set them up) or, with neither, a fresh one for one process / pure data parallel."""
        global _CURRENT
        if _CURRENT is None:
            from paddle.distributed.fleet.base import topology as tp

            hcg = tp._HYBRID_PARALLEL_GROUP
            if hcg is None:
                return cls().init()
            cls(
                tensor_parallel_degree=hcg.get_model_parallel_world_size(),
                pipeline_parallel_degree=hcg.get_pipe_parallel_world_size(),
                sharding_parallel_degree=hcg.get_sharding_parallel_world_size(),
            ).init()
        return _CURRENT

    # ------------------------------------------------------------------ process group
    @staticmethod
    def launched_world_size() -> int:
        """World size announced by ``paddle.distributed.launch`` (1 for a plain ``python`` run)."""
        return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))

    @property
    def model_parallel_size(self) -> int:
        """Ranks that hold one copy of the model: tp * pp * sharding."""
        return self.tensor_parallel_degree * self.pipeline_parallel_degree * self.sharding_parallel_degree

    @property
    def hybrid(self) -> bool:
        """True when any of tensor / pipeline / sharding parallelism is on (fleet's hybrid groups are used)."""
        return self.model_parallel_size > 1

    def check_world_size(self, world: int) -> int:
        """The data-parallel degree for ``world`` ranks; a one-line ValueError if the degrees do not divide it."""
        if world % self.model_parallel_size:
            raise ValueError(
                f"tensor_parallel_degree={self.tensor_parallel_degree} x pipeline_parallel_degree="
                f"{self.pipeline_parallel_degree} x sharding_parallel_degree={self.sharding_parallel_degree} = "
                f"{self.model_parallel_size} does not divide the world size {world}; launch a multiple of "
                f"{self.model_parallel_size} processes (--nproc_per_node) or change the degrees"
            )
        return world // self.model_parallel_size

    def init(self) -> "ParallelStrategy":
        """Join the process group and build the hybrid groups (idempotent; adopts a fleet set up earlier)."""
        if self._initialized:
            return self
        compat.apply()
        world = self.launched_world_size()
        self.data_parallel_degree = self.check_world_size(world)
        if world > 1:
            if self.hybrid:
                self._init_fleet()
            elif not dist.is_initialized():
                dist.init_parallel_env()
            self._world, self._rank = dist.get_world_size(), dist.get_rank()
        self._initialized = True
        global _CURRENT
        _CURRENT = self
        return self

    def _init_fleet(self) -> None:
        from paddle.distributed import fleet
        from paddle.distributed.fleet.base import topology as tp

        hcg = tp._HYBRID_PARALLEL_GROUP
        if hcg is None:
            strategy = fleet.DistributedStrategy()
            strategy.hybrid_configs = {
                "dp_degree": self.data_parallel_degree,
                "mp_degree": self.tensor_parallel_degree,
                "pp_degree": self.pipeline_parallel_degree,
                "sharding_degree": self.sharding_parallel_degree,
                "sep_degree": 1,
                "order": list(_TOPOLOGY_ORDER),
            }
            if self.pipeline_parallel_degree > 1:
                # assign the whole dict: item assignment on strategy.pipeline_configs is silently lost
                strategy.pipeline_configs = {
                    "accumulate_steps": 1, "micro_batch_size": 1,
                    "enable_partial_send_recv": not compat.applied(),  # gloo has no partial send/recv
                    "p2p_cache_shape": False,  # sequence lengths change between micro-batches
                }
            fleet.init(is_collective=True, strategy=strategy)
            hcg = fleet.get_hybrid_communicate_group()
        got = (hcg.get_model_parallel_world_size(), hcg.get_pipe_parallel_world_size(),
               hcg.get_sharding_parallel_world_size(), hcg.get_data_parallel_world_size())
        want = (self.tensor_parallel_degree, self.pipeline_parallel_degree, self.sharding_parallel_degree,
                self.data_parallel_degree)
        if got != want:
            raise ValueError(f"fleet was initialised with (tp, pp, sharding, dp) = {got}, this run asks for {want}")
        self._hcg = hcg
        if self.data_parallel_world_size > 1:
            _, self._data_group = hcg.create_fuse_group(["data", "sharding"])

    # ------------------------------------------------------------------ rank questions
    @property
    def world_size(self) -> int:
        return self._world if self._initialized else (dist.get_world_size() if dist.is_initialized() else 1)

    @property
    def rank(self) -> int:
        return self._rank if self._initialized else (dist.get_rank() if dist.is_initialized() else 0)

    @property
    def hcg(self):
        """fleet's HybridCommunicateGroup (None for one process or pure data parallel)."""
        return self._hcg

    @property
    def tensor_parallel_rank(self) -> int:
        return self._hcg.get_model_parallel_rank() if self._hcg is not None else 0

    @property
    def pipeline_parallel_rank(self) -> int:
        return self._hcg.get_stage_id() if self._hcg is not None else 0

    @property
    def sharding_parallel_rank(self) -> int:
        return self._hcg.get_sharding_parallel_rank() if self._hcg is not None else 0

    @property
    def data_parallel_world_size(self) -> int:
        """Ranks that see different data: data parallel x sharding (tensor/pipeline ranks share their data)."""
        if self._hcg is None:
            return self.world_size
        return self.data_parallel_degree * self.sharding_parallel_degree

    @property
    def data_parallel_rank(self) -> int:
        """This rank's index among the data-carrying ranks (PaddleNLP's ``dataset_rank``)."""
        if self._hcg is None:
            return self.rank
        return self.sharding_parallel_degree * self._hcg.get_data_parallel_rank() + self.sharding_parallel_rank

    @property
    def is_first_stage(self) -> bool:
        return self.pipeline_parallel_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pipeline_parallel_rank == self.pipeline_parallel_degree - 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def tensor_parallel_group(self):
        return self._hcg.get_model_parallel_group() if self._hcg is not None else None

    @property
    def pipeline_parallel_group(self):
        return self._hcg.get_pipe_parallel_group() if self._hcg is not None else None

    @property
    def sharding_parallel_group(self):
        return self._hcg.get_sharding_parallel_group() if self._hcg is not None else None

    @property
    def data_group(self):
        """The group of data-carrying ranks (None: the whole world, or nothing to reduce)."""
        return self._data_group

    def model_kwargs(self) -> Dict[str, Any]:
        """Keywords for PaddleNLP ``from_pretrained`` / configs that make a model tensor parallel."""
        if self.tensor_parallel_degree == 1:
            return {}
        return {"tensor_parallel_degree": self.tensor_parallel_degree,
                "tensor_parallel_rank": self.tensor_parallel_rank}

    def register_vocab(self, vocab_size: int) -> None:
        """Under tensor parallelism: LM logits hold ``vocab_size / tp`` entries per rank; install the
        vocabulary shard so log-probs, entropy and JSD reduce across it (``alignment.parallel.vocab``)."""
        if self.tensor_parallel_degree == 1:
            return
        from alignment.algorithms.utils import get_vocab_shard, set_vocab_shard

        from .vocab import vocab_shard

        current = get_vocab_shard()
        if current is not None and current.full_size != vocab_size:
            raise ValueError(
                f"models of one run must share the vocabulary under tensor parallelism: {current.full_size} "
                f"and {vocab_size}"
            )
        if current is None:
            set_vocab_shard(vocab_shard(self.tensor_parallel_group, vocab_size))

    def gather_vocab(self, logits: paddle.Tensor) -> paddle.Tensor:
        """Full-vocabulary logits of a vocabulary-parallel (..., V / tp) tensor (sampling's last position only)."""
        from alignment.algorithms.utils import get_vocab_shard

        shard = get_vocab_shard()
        if shard is None or logits.shape[-1] != shard.local_size or shard.local_size == shard.full_size:
            return logits
        from .vocab import gather_vocab

        return gather_vocab(logits, self.tensor_parallel_group)

    def broadcast_from_last_stage(self, obj):
        """``obj`` of the last pipeline stage on every stage of this pipeline group (host round-trip)."""
        if self.pipeline_parallel_degree == 1:
            return obj
        parts: list = []
        dist.all_gather_object(parts, obj, group=self.pipeline_parallel_group)
        return parts[-1]

    def tensor_parallel_broadcast(self, tensor: paddle.Tensor) -> paddle.Tensor:
        """``tensor`` of tensor-parallel rank 0 on every rank of this tensor-parallel group (in place)."""
        if self.tensor_parallel_degree > 1:
            group = self.tensor_parallel_group
            dist.broadcast(tensor, src=group.ranks[0], group=group)
        return tensor

    def all_done(self, done: bool) -> bool:
        """``done`` agreed over the ranks whose forward passes are collectives with this one's.

        Under sharding stage 3 every forward gathers parameters over the sharding group, so a decode loop
        may only stop when every data-carrying rank's rows have finished (the others keep emitting pad);
        elsewhere each rank decides alone.
        """
        if self.sharding != "stage3" or self.sharding_parallel_degree == 1:
            return done
        pending = self.all_reduce_max(paddle.to_tensor([0.0 if done else 1.0]))
        return float(pending[0]) == 0.0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shutdown(self) -> None:
        """End of a multi-process run: wait for every rank, then tear the process groups down explicitly
        (leaving gloo groups to interpreter exit has been seen to abort a finished rank)."""
        if not self.distributed:
            return
        dist.barrier()
        try:
            dist.destroy_process_group()
        except Exception as e:  # pragma: no cover - teardown only
            import logging

            logging.getLogger(__name__).warning("destroy_process_group failed at shutdown: %s", e)

    def describe(self) -> str:
        """One line: this rank and the layout, e.g. ``rank 1/4: tp 2 x pp 2 x sharding 1 x dp 1``."""
        dp = getattr(self, "data_parallel_degree", self.world_size // max(self.model_parallel_size, 1))
        text = (f"rank {self.rank}/{self.world_size}: tp {self.tensor_parallel_degree} x pp "
                f"{self.pipeline_parallel_degree} x sharding {self.sharding_parallel_degree} x dp {dp}")
        return text + (f" ({self.sharding})" if self.sharding_parallel_degree > 1 else "")

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

        ``factory`` must build the model for this layout (pass ``model_kwargs()`` to ``from_pretrained``).
        Frozen models (``trainable=False``) are put in eval mode with ``stop_gradient`` on every parameter
        and returned unwrapped (under stage3 with their parameters sharded: ``shard_frozen``); trainable ones are wrapped for data parallel (one process: unchanged).
        Under hybrid parallelism the trainer wraps a trainable model together with its optimizer
        (``wrap_model_and_optimizer``), since sharding stage 2 / 3 wrap both at once.
        """
        model = factory()
        if not trainable:
            model.eval()
            for p in model.parameters():
                p.stop_gradient = True
            return self.shard_frozen(model)
        model.train()
        if self.hybrid:
            return model
        return self.wrap_model(model, find_unused_parameters=find_unused_parameters)

    def shard_frozen(self, model: paddle.nn.Layer) -> paddle.nn.Layer:
        """Under ``sharding='stage3'`` a frozen model's parameters are split over the sharding group too
        (``alignment.parallel.frozen``); elsewhere ``model`` is unchanged. Not for a model that generates."""
        if self.sharding == "stage3" and self.sharding_parallel_degree > 1:
            from .frozen import shard_frozen_parameters

            shard_frozen_parameters(model, self.sharding_parallel_group)
        return model

    def wrap_model(self, model: paddle.nn.Layer, find_unused_parameters: bool = False) -> paddle.nn.Layer:
        """``paddle.DataParallel`` for pure data parallel (parameters are broadcast from rank 0), else ``model``."""
        if not self.distributed or self.hybrid or isinstance(model, paddle.DataParallel):
            return model
        return paddle.DataParallel(model, find_unused_parameters=find_unused_parameters)

    def wrap_model_and_optimizer(self, model: paddle.nn.Layer, optimizer, accumulate_steps: int = 1):
        """(model, optimizer) prepared for the hybrid layout: tensor/pipeline wrappers, sharded optimizer.

        A pipeline model becomes fleet's ``PipelineParallel``; ``train_batch`` then takes lists of
        ``accumulate_steps`` micro-batches per optimizer step.

        stage1: fleet's ``DygraphShardingOptimizer`` (optimizer states split over the sharding group);
        stage2 / stage3: ``group_sharded_parallel`` levels ``os_g`` / ``p_g_os`` (gradients, and parameters).
        Without hybrid parallelism both come back unchanged (data parallel wraps in ``create_model``).
        """
        if not self.hybrid:
            return model, optimizer
        from paddle.distributed import fleet

        if self.sharding in ("stage2", "stage3") and self.sharding_parallel_degree > 1:
            from paddle.distributed.sharding import group_sharded_parallel

            level = "os_g" if self.sharding == "stage2" else "p_g_os"
            if self.tensor_parallel_degree > 1:
                model = fleet.distributed_model(model)
            dp_group = self._hcg.get_data_parallel_group() if self.data_parallel_degree > 1 else None
            # stage 3 slices every parameter above segment_size elements; Paddle's default (2**20) leaves
            # small models (and every matrix below 1M entries) whole on every rank
            model, optimizer, _ = group_sharded_parallel(
                model, optimizer, level=level, group=self.sharding_parallel_group, dp_group=dp_group,
                segment_size=2 ** 15,
            )
            return model, optimizer
        wrapped = fleet.distributed_model(model)
        if hasattr(wrapped, "accumulate_steps") and wrapped.accumulate_steps != int(accumulate_steps):
            wrapped.accumulate_steps = int(accumulate_steps)
            if hasattr(wrapped, "_init_user_hooks"):  # per-micro-step hook slots are sized at wrap time
                wrapped._init_user_hooks()
        return wrapped, fleet.distributed_optimizer(optimizer)

    def wrap_frozen_pipeline(self, model: paddle.nn.Layer) -> paddle.nn.Layer:
        """A frozen ``PipelineLayer`` as fleet's ``PipelineParallel`` for forward-only ``eval_batch`` passes
        (eval mode, ``stop_gradient`` on every parameter, no optimizer)."""
        from paddle.distributed import fleet

        model.eval()
        for p in model.parameters():
            p.stop_gradient = True
        return fleet.distributed_model(model)

    unwrap = staticmethod(unwrap_model)

    # ------------------------------------------------------------------ collectives
    def _reduce(self, tensor: paddle.Tensor, op) -> paddle.Tensor:
        out = tensor.clone()
        if self.data_parallel_world_size > 1:
            dist.all_reduce(out, op=op, group=self._data_group)
        return out

    def all_reduce_sum(self, tensor: paddle.Tensor) -> paddle.Tensor:
        """Sum of ``tensor`` over the data-carrying ranks (a new tensor; the input is not modified)."""
        return self._reduce(tensor, dist.ReduceOp.SUM)

    def all_reduce_max(self, tensor: paddle.Tensor) -> paddle.Tensor:
        return self._reduce(tensor, dist.ReduceOp.MAX)

    def all_reduce_mean(self, metrics: Mapping[str, float]) -> Dict[str, float]:
        """Average a dict of scalars over the data-carrying ranks (keys sorted so every rank packs one order).

        Keys ending in ``_max`` / ``_min`` are reduced with max / min instead of the mean.
        """
        keys = sorted(metrics)
        if self.data_parallel_world_size == 1 or not keys:
            return {k: float(metrics[k]) for k in keys}
        values = [float(metrics[k]) for k in keys]
        sign = [(-1.0 if k.endswith("_min") else 1.0) for k in keys]
        is_extreme = [k.endswith("_max") or k.endswith("_min") for k in keys]
        mean_part = paddle.to_tensor([0.0 if e else v for v, e in zip(values, is_extreme)], dtype="float64")
        ext_part = paddle.to_tensor(
            [s * v if e else float("-inf") for v, s, e in zip(values, sign, is_extreme)], dtype="float64"
        )
        mean_part = self.all_reduce_sum(mean_part)
        ext_part = self.all_reduce_max(ext_part)
        mean_np = (mean_part / self.data_parallel_world_size).numpy()
        ext_np = ext_part.numpy()
        return {
            k: float(s * ext_np[i]) if is_extreme[i] else float(mean_np[i])
            for i, (k, s) in enumerate(zip(keys, sign))
        }

    def all_gather(self, tensor: paddle.Tensor) -> paddle.Tensor:
        """Concatenate a 1-D tensor of possibly different length per data-carrying rank, in rank order."""
        tensor = tensor.reshape([-1])
        if self.data_parallel_world_size == 1:
            return tensor
        size = paddle.to_tensor([tensor.shape[0]], dtype="int64")
        sizes: List[paddle.Tensor] = []
        dist.all_gather(sizes, size, group=self._data_group)
        sizes_int = [int(s.item()) for s in sizes]
        longest = max(sizes_int)
        padded = paddle.concat([tensor, paddle.zeros([longest - tensor.shape[0]], dtype=tensor.dtype)])
        parts: List[paddle.Tensor] = []
        dist.all_gather(parts, padded, group=self._data_group)
        return paddle.concat([p[:n] for p, n in zip(parts, sizes_int)])

    def all_gather_object(self, obj) -> list:
        """Python objects from every rank of the world (host round-trip; small things: RNG states, counts)."""
        if not self.distributed:
            return [obj]
        out: list = []
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of global rank ``src`` on every rank."""
        if not self.distributed:
            return obj
        return self.all_gather_object(obj)[src]

    def shard_slice(self, num_items: int) -> slice:
        """Contiguous slice of ``num_items`` global items that this data-carrying rank owns (equal parts)."""
        world = self.data_parallel_world_size
        if num_items % world:
            raise ValueError(f"cannot split {num_items} items evenly over {world} data-parallel ranks")
        per = num_items // world
        return slice(self.data_parallel_rank * per, (self.data_parallel_rank + 1) * per)


def masked_moments(strategy: Optional[ParallelStrategy], values: paddle.Tensor, mask: paddle.Tensor):
    """Global (count, mean, unbiased var) of ``values`` where ``mask`` is 1, over the data-carrying ranks."""
    mask = mask.astype("float64")
    v = values.astype("float64")
    stats = paddle.stack([mask.sum(), (v * mask).sum(), (v * v * mask).sum()])
    if strategy is not None:
        stats = strategy.all_reduce_sum(stats)
    count, total, total_sq = stats[0], stats[1], stats[2]
    mean = total / paddle.clip(count, min=1.0)
    var = (total_sq - count * mean * mean) / paddle.clip(count - 1.0, min=1.0)
    return count, mean, paddle.clip(var, min=0.0)

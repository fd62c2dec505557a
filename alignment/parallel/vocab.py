"""Vocabulary-parallel reductions for tensor-parallel LM heads (the logits of each rank cover V / tp tokens).

``vocab_shard(group, full_size)`` builds the ``alignment.algorithms.utils.VocabShard`` of this rank; once
installed (``ParallelStrategy.init`` does it when ``tensor_parallel_degree > 1``), log-probs, entropy,
log-softmax and GKD's JSD combine per-shard partial sums with one all-reduce of a (B, L) tensor instead of
gathering (B, L, V) logits. Megatron-LM's vocab-parallel cross entropy (Shoeybi et al., arXiv 1909.08053,
§3) is the same idea.

Gradients: the shard-sum is an all-reduce whose backward is the identity (what follows it is the same on
every rank, so the gradient of the loss with respect to this rank's partial sum is that upstream gradient).
Where a replicated value flows back into per-shard tensors (``log p = z - lse``), ``to_local`` is an
identity whose backward all-reduces: each rank only sees the gradient of its own vocabulary slice's uses
of ``lse``, and their sum is the true one. The shard-max is only a detached shift inside logsumexp.
"""

from __future__ import annotations

import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer

from alignment.algorithms.utils import VocabShard

__all__ = ["vocab_shard", "gather_vocab"]


class _ShardSum(PyLayer):
    @staticmethod
    def forward(ctx, x, group):
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, dy):
        return dy


class _ToLocal(PyLayer):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.clone()

    @staticmethod
    def backward(ctx, dy):
        out = dy.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.group)
        return out


def vocab_shard(group, full_size: int) -> VocabShard:
    """The shard of rank ``group.rank`` in ``group`` of an even split of ``full_size`` vocabulary entries."""
    if full_size % group.nranks:
        raise ValueError(
            f"vocab_size={full_size} is not divisible by tensor_parallel_degree={group.nranks}; "
            "pad the vocabulary (resize the embeddings) to a multiple of the degree"
        )
    local = full_size // group.nranks

    def shard_sum(x: paddle.Tensor) -> paddle.Tensor:
        return _ShardSum.apply(x, group)

    def shard_max(x: paddle.Tensor) -> paddle.Tensor:
        out = x.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
        return out

    def to_local(x: paddle.Tensor) -> paddle.Tensor:
        return _ToLocal.apply(x, group)

    return VocabShard(local_size=local, full_size=full_size, offset=group.rank * local, sum=shard_sum,
                      max=shard_max, to_local=to_local)


def gather_vocab(logits: paddle.Tensor, group) -> paddle.Tensor:
    """Full-vocabulary logits from the shards (no gradient): only for the last position while sampling."""
    parts = []
    dist.all_gather(parts, logits.detach().contiguous(), group=group)
    return paddle.concat(parts, axis=-1)

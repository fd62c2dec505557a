"""Small tensor helpers shared by the algorithm modules (masked reductions, log-prob gathering).

Import only paddle and the stdlib here.

Vocabulary-parallel logits: under tensor parallelism each rank holds logits for one slice of the
vocabulary, (..., V / tp). ``alignment.parallel`` then installs a ``VocabShard`` with
``set_vocab_shard``; every function here that reduces over the vocabulary (``log_softmax``,
``gather_logps``, ``entropy_from_logits``, ``vocab_sum``, ``vocab_logsumexp``) recognises a sharded tensor
by its last dimension (``shard.local_size``) and combines the partial results across the shard group,
so the full-vocabulary logits are never gathered. A tensor whose last dimension is the full vocabulary
(or any other size) is reduced locally as before.

Fused log-probs: ``alignment.ops`` installs a hook with ``set_fused_logps``; when the custom-operator
build succeeds and ``use_fusemt`` is on, ``gather_logps`` and ``entropy_from_logits`` on unsharded
logits run the fused operator (one pass, no second (B, L, V) tensor in the backward) and the code
below is its reference. A sharded tensor always takes the sharded path here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import paddle

__all__ = ["VocabShard", "set_vocab_shard", "get_vocab_shard", "vocab_sum", "vocab_logsumexp", "log_softmax", "masked_sum", "masked_mean", "masked_var", "masked_whiten", "gather_logps", "sequence_logps", "entropy_from_logits", "last_token_index", "set_fused_logps"]


@dataclass(frozen=True)
class VocabShard:
    """This rank's slice ``[offset, offset + local_size)`` of a ``full_size`` vocabulary.

    ``sum`` / ``max``: all-reduce over the ranks that share the vocabulary; ``sum`` passes gradients through
    unchanged (what follows it is the same on every rank). ``to_local``: the identity, whose backward sums
    the gradient over the ranks; it marks where a replicated value (a logsumexp) enters a per-shard
    computation (``z - lse``), so each rank's share of that value's gradient is added up.
    """

    local_size: int
    full_size: int
    offset: int
    sum: Callable[[paddle.Tensor], paddle.Tensor]
    max: Callable[[paddle.Tensor], paddle.Tensor]
    to_local: Callable[[paddle.Tensor], paddle.Tensor]


_VOCAB_SHARD: Optional[VocabShard] = None
_FUSED_LOGPS = None  # an object with gather(logits, labels, temperature) and entropy(logits), each -> Tensor | None


def set_fused_logps(impl) -> object:
    """Install (or with None remove) the fused log-prob implementation; returns the previous one."""
    global _FUSED_LOGPS
    previous, _FUSED_LOGPS = _FUSED_LOGPS, impl
    return previous


def set_vocab_shard(shard: Optional[VocabShard]) -> Optional[VocabShard]:
    """Install (or with None remove) the vocabulary shard of this process; returns the previous one."""
    global _VOCAB_SHARD
    previous, _VOCAB_SHARD = _VOCAB_SHARD, shard
    return previous


def get_vocab_shard() -> Optional[VocabShard]:
    return _VOCAB_SHARD


def _shard_of(z: paddle.Tensor) -> Optional[VocabShard]:
    shard = _VOCAB_SHARD
    if shard is not None and shard.local_size != shard.full_size and z.shape[-1] == shard.local_size:
        return shard
    return None


def vocab_sum(x: paddle.Tensor) -> paddle.Tensor:
    """Sum over the last (vocabulary) axis, across the vocabulary shards when ``x`` is sharded."""
    shard = _shard_of(x)
    out = x.sum(axis=-1)
    return shard.sum(out) if shard is not None else out


def vocab_logsumexp(z: paddle.Tensor, keepdim: bool = False) -> paddle.Tensor:
    """logsumexp over the last (vocabulary) axis, across the vocabulary shards when ``z`` is sharded."""
    shard = _shard_of(z)
    if shard is None:
        return paddle.logsumexp(z, axis=-1, keepdim=keepdim)
    m = shard.max(z.max(axis=-1, keepdim=True).detach())
    out = paddle.log(shard.sum(paddle.exp(z - m).sum(axis=-1, keepdim=True))) + m
    return out if keepdim else out.squeeze(-1)


def masked_sum(values: paddle.Tensor, mask: paddle.Tensor, axis: Optional[int] = None) -> paddle.Tensor:
    """Sum of ``values * mask`` over ``axis`` (all axes when None)."""
    return (values * mask.astype(values.dtype)).sum(axis=axis)


def masked_mean(values: paddle.Tensor, mask: paddle.Tensor, axis: Optional[int] = None) -> paddle.Tensor:
    """Mean of ``values`` where ``mask`` is 1. An all-zero mask gives 0 (not NaN)."""
    mask = mask.astype(values.dtype)
    count = mask.sum(axis=axis)
    return (values * mask).sum(axis=axis) / paddle.clip(count, min=1.0)


def masked_var(values: paddle.Tensor, mask: paddle.Tensor, unbiased: bool = True) -> paddle.Tensor:
    """Variance of the masked entries (Bessel-corrected when ``unbiased`` and more than one entry)."""
    mask = mask.astype(values.dtype)
    mean = masked_mean(values, mask)
    count = mask.sum()
    var = masked_sum((values - mean) ** 2, mask) / paddle.clip(count, min=1.0)
    if unbiased:
        var = var * count / paddle.clip(count - 1.0, min=1.0)
    return var


def masked_whiten(values: paddle.Tensor, mask: paddle.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> paddle.Tensor:
    """(x - mean) / sqrt(var + eps) over masked entries; masked-out entries are returned as 0."""
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    out = (values - mean) * paddle.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.astype(values.dtype)


def log_softmax(logits: paddle.Tensor, axis: int = -1) -> paddle.Tensor:
    """``z - logsumexp(z)``: the same values as ``F.log_softmax``.

    Written out because Paddle 3.3.1's CPU ``log_softmax`` kernel grows quadratically with the class count
    (measured here: 2,048 rows x 8,000 classes took 27 s against 0.35 s for ``logsumexp``), which made
    real vocabularies unusable on CPU.
    """
    if axis in (-1, logits.ndim - 1):
        shard = _shard_of(logits)
        lse = vocab_logsumexp(logits, keepdim=True)
        return logits - (shard.to_local(lse) if shard is not None else lse)
    return logits - paddle.logsumexp(logits, axis=axis, keepdim=True)


def gather_logps(logits: paddle.Tensor, labels: paddle.Tensor, temperature: float = 1.0) -> paddle.Tensor:
    """Per-token log-probabilities ``log softmax(logits / T)[label]`` = ``z[label] - logsumexp(z)``.

    logits: (B, L, V); labels: (B, T) int64 with T <= L: ``labels[:, t]`` is scored by ``logits[:, t]``
    (so ``gather_logps(logits, input_ids[:, 1:])`` needs no slice of the logits). Ignored positions
    (any value; negative ones are clamped to 0 here) carry no meaning: the caller masks them, and the
    fused path returns 0 for a negative label. Returns (B, T) in float32, or float64 for float64
    logits. The (B, L, V) log-softmax is never built (see ``log_softmax`` for why that matters on CPU).
    """
    if _FUSED_LOGPS is not None and _shard_of(logits) is None:
        fused = _FUSED_LOGPS.gather(logits, labels, temperature)
        if fused is not None:
            return fused
    if logits.ndim == 3 and labels.ndim == 2 and labels.shape[1] < logits.shape[1]:
        logits = logits[:, : labels.shape[1]]
    dtype = "float64" if logits.dtype == paddle.float64 else "float32"
    z = logits.astype(dtype)
    if temperature != 1.0:
        z = z / temperature
    safe = paddle.clip(labels, min=0).astype("int64")
    shard = _shard_of(z)
    if shard is None:
        picked = paddle.take_along_axis(z, safe.unsqueeze(-1), axis=-1).squeeze(-1)
    else:  # the label's logit lives on one shard: pick it there, zero elsewhere, sum over the shards
        local = safe - shard.offset
        mine = (local >= 0) & (local < shard.local_size)
        index = paddle.where(mine, local, paddle.zeros_like(local))
        picked = paddle.take_along_axis(z, index.unsqueeze(-1), axis=-1).squeeze(-1)
        picked = shard.sum(picked * mine.astype(z.dtype))
    return picked - vocab_logsumexp(z)


def sequence_logps(
    logits: paddle.Tensor, input_ids: paddle.Tensor, loss_mask: paddle.Tensor, temperature: float = 1.0
) -> paddle.Tensor:
    """Token log-probs of ``input_ids[:, 1:]`` under ``logits[:, :-1]``, zeroed outside ``loss_mask[:, 1:]``.

    logits: (B, L, V); input_ids, loss_mask: (B, L). Returns (B, L-1): position t scores token t+1.
    """
    logps = gather_logps(logits, input_ids[:, 1:], temperature)
    return logps * loss_mask[:, 1:].astype(logps.dtype)


def entropy_from_logits(logits: paddle.Tensor) -> paddle.Tensor:
    """Entropy of softmax(logits) along the last axis: logsumexp(z) - sum softmax(z) * z. (B, L, V) -> (B, L)."""
    if _FUSED_LOGPS is not None and _shard_of(logits) is None:
        fused = _FUSED_LOGPS.entropy(logits)
        if fused is not None:
            return fused
    dtype = "float64" if logits.dtype == paddle.float64 else "float32"
    z = logits.astype(dtype)
    shard = _shard_of(z)
    lse = vocab_logsumexp(z, keepdim=True)
    p = paddle.exp(z - (shard.to_local(lse) if shard is not None else lse))
    return lse.squeeze(-1) - vocab_sum(p * z)


def last_token_index(mask: paddle.Tensor) -> paddle.Tensor:
    """Index of the last position where ``mask`` is nonzero, per row: (B, L) -> (B,) int64.

    A row without any nonzero entry gives 0; callers that must tell such rows apart check ``mask.sum(-1) > 0``.
    """
    positions = paddle.arange(1, mask.shape[-1] + 1, dtype="int64")
    return paddle.argmax(mask.astype("bool").astype("int64") * positions, axis=-1)

"""Loss aggregation: a per-token loss matrix (B, T) and its mask -> one scalar. Kind ``"aggregation"``.

Registered signature (``aggregate`` dispatches by name)::

    fn(loss_mat (B, T), mask (B, T), *, global_token_count=None, global_seq_count=None, norm_length=None)
    -> scalar

With n_i = Σ_t m_it, ℓ_i = Σ_t m_it ℓ_it, N_tok = Σ_i n_i and N_seq = #{i : n_i > 0}::

    token-mean               Σ_i ℓ_i / N_tok                   (PaddleNLP, OpenRLHF; DAPO arXiv 2503.14476)
    seq-mean-token-mean      Σ_{i: n_i>0} (ℓ_i / n_i) / N_seq  (2024 safe-rlhf masked_mean; GRPO 2402.03300)
    seq-mean-token-sum       Σ_i ℓ_i / N_seq
    seq-mean-token-sum-norm  Σ_i (ℓ_i / norm_length) / N_seq   (Dr. GRPO arXiv 2503.20783; norm_length: T)

Data parallelism: pass the all-reduced ``global_token_count`` (N_tok) / ``global_seq_count`` (N_seq) of
every shard (``aggregation_counts`` gives a shard's) and sum the shards' results: the sum equals the
unsharded value exactly (up to the world-size factor a gradient all-reduce-mean introduces, which the
caller undoes). Empty masks give 0, not NaN (counts are clamped to >= 1).

Deliberate differences: rows with no valid token are not counted in N_seq (padding rows do not dilute
the mean; TRL's Dr. GRPO divides by the full B); verl's ``seq-mean-token-sum-norm`` divides by
norm_length only, without the 1/N_seq of the Dr. GRPO paper's 1/G.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import paddle

from .registry import get, register

__all__ = ["aggregate", "aggregation_counts"]

Tensor = paddle.Tensor
Count = Optional[Union[float, int, Tensor]]


def aggregation_counts(mask: Tensor) -> Tuple[Tensor, Tensor]:
    """(N_tok, N_seq) of one shard: number of valid tokens and of rows with at least one valid token."""
    m = mask.astype("float32")
    return m.sum(), (m.sum(axis=-1) > 0).astype("float32").sum()


def _count(given: Count, local: Tensor, dtype) -> Tensor:
    count = local if given is None else paddle.to_tensor(given) if not isinstance(given, Tensor) else given
    return paddle.clip(count.astype(dtype), min=1.0)


def _row_sums(loss_mat: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
    m = mask.astype(loss_mat.dtype)
    keep = m != 0
    # where() keeps NaN/inf garbage at masked positions out of the sum (0 * inf would be NaN)
    masked = paddle.where(keep, loss_mat, paddle.zeros_like(loss_mat)) * m
    return masked.sum(axis=-1), m.sum(axis=-1)


@register("aggregation", "token-mean")
def token_mean(
    loss_mat: Tensor,
    mask: Tensor,
    *,
    global_token_count: Count = None,
    global_seq_count: Count = None,
    norm_length: Optional[float] = None,
) -> Tensor:
    """Σ_it m ℓ / N_tok (global token mean)."""
    sums, lengths = _row_sums(loss_mat, mask)
    return sums.sum() / _count(global_token_count, lengths.sum(), loss_mat.dtype)


def _seq_count(lengths: Tensor, given: Count, dtype) -> Tensor:
    return _count(given, (lengths > 0).astype(dtype).sum(), dtype)


@register("aggregation", "seq-mean-token-mean")
def seq_mean_token_mean(
    loss_mat: Tensor,
    mask: Tensor,
    *,
    global_token_count: Count = None,
    global_seq_count: Count = None,
    norm_length: Optional[float] = None,
) -> Tensor:
    """Mean over non-empty rows of the per-row token mean."""
    sums, lengths = _row_sums(loss_mat, mask)
    return (sums / paddle.clip(lengths, min=1.0)).sum() / _seq_count(
        lengths, global_seq_count, loss_mat.dtype
    )


@register("aggregation", "seq-mean-token-sum")
def seq_mean_token_sum(
    loss_mat: Tensor,
    mask: Tensor,
    *,
    global_token_count: Count = None,
    global_seq_count: Count = None,
    norm_length: Optional[float] = None,
) -> Tensor:
    """Mean over non-empty rows of the per-row token sum."""
    sums, lengths = _row_sums(loss_mat, mask)
    return sums.sum() / _seq_count(lengths, global_seq_count, loss_mat.dtype)


@register("aggregation", "seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    loss_mat: Tensor,
    mask: Tensor,
    *,
    global_token_count: Count = None,
    global_seq_count: Count = None,
    norm_length: Optional[float] = None,
) -> Tensor:
    """Mean over non-empty rows of (row token sum / norm_length); norm_length defaults to T = shape[-1]."""
    sums, lengths = _row_sums(loss_mat, mask)
    length = float(loss_mat.shape[-1] if norm_length is None else norm_length)
    if length <= 0:
        raise ValueError(f"norm_length must be > 0; got {norm_length}")
    return (sums / length).sum() / _seq_count(lengths, global_seq_count, loss_mat.dtype)


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    global_token_count: Count = None,
    global_seq_count: Count = None,
    norm_length: Optional[float] = None,
) -> Tensor:
    """Aggregate (B, T) per-token losses by ``mode``, a name of kind "aggregation" (unknown: lists valid)."""
    return get("aggregation", mode)(
        loss_mat,
        mask,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )

"""Distillation divergences for GKD, registered in kind ``"distill"``."""

from __future__ import annotations

import math
from typing import Dict, Tuple

import paddle

from .registry import register
from .utils import log_softmax, masked_mean, vocab_sum

__all__ = ["generalized_jsd", "generalized_jsd_per_token"]

Tensor = paddle.Tensor


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Σ_v p (log p - log q) over the last axis: (B, T, V) -> (B, T)."""
    return vocab_sum(paddle.exp(log_p) * (log_p - log_q))


@register("distill", "generalized_jsd")
def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Generalised Jensen–Shannon divergence of GKD (Agarwal et al., arXiv 2306.13649, Eq. 2 / §3).

    student_logits, teacher_logits (B, T, V) at the same positions (already shifted to next-token), mask
    (B, T)
    (1 on completion tokens). log p_s = log_softmax(z_s / τ), log p_t = log_softmax(z_t / τ), per token::

        β = 0:  KL(p_t ‖ p_s)                      (forward KL, supervised KD)
        β = 1:  KL(p_s ‖ p_t)                      (reverse KL)
        else:   log m = logsumexp(log p_s + log(1-β), log p_t + log β)        (m = (1-β) p_s + β p_t)
                JSD_β = β KL(p_t ‖ m) + (1-β) KL(p_s ‖ m)

    loss = token mean over the mask (an empty mask gives 0, not NaN), as TRL's "batchmean" over valid
    tokens. Computed in float32 (float64 inputs stay float64). The teacher is not detached here: the caller
    computes it without gradient. Logits must be finite (a -inf logit gives 0·inf). Metric ``jsd``.
    Vocabulary-parallel logits (V / tp per rank, see ``utils.VocabShard``) give the full-vocabulary value.
    """
    per_token = generalized_jsd_per_token(student_logits, teacher_logits, beta=beta, temperature=temperature)
    dtype = per_token.dtype
    mask = mask.astype(dtype)
    per_token = paddle.where(mask != 0, per_token, paddle.zeros_like(per_token))
    loss = masked_mean(per_token, mask)
    return loss, {"jsd": loss.detach()}


def generalized_jsd_per_token(student_logits: Tensor, teacher_logits: Tensor, *, beta: float = 0.5,
                              temperature: float = 1.0) -> Tensor:
    """The per-token divergence of ``generalized_jsd`` before its mask and mean: (B, T, V) -> (B, T)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1]; got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    dtype = "float64" if student_logits.dtype == paddle.float64 else "float32"
    log_ps = log_softmax(student_logits.astype(dtype) / temperature)
    log_pt = log_softmax(teacher_logits.astype(dtype) / temperature)
    if beta == 0.0:
        return _kl(log_pt, log_ps)
    if beta == 1.0:
        return _kl(log_ps, log_pt)
    log_m = paddle.logsumexp(paddle.stack([log_ps + math.log(1.0 - beta), log_pt + math.log(beta)]), axis=0)
    return beta * _kl(log_pt, log_m) + (1.0 - beta) * _kl(log_ps, log_m)

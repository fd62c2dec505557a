"""Per-token KL estimators (kind ``"kl"``) and the KL-shaped per-token reward of RLHF-PPO.

Estimators of KL(π_θ ‖ π_ref) from samples of π_θ, after J. Schulman, "Approximating KL divergence"
(http://joschu.net/blog/kl-approx.html), with log r = ref_logps - logps::

    k1 = logps - ref_logps = -log r                    (unbiased, high variance, can be negative)
    k2 = 0.5 · (logps - ref_logps)²                    (biased, low variance, >= 0)
    k3 = exp(log r) - log r - 1                        (unbiased, low variance, >= 0)

Registered signature: ``fn(logps (B, T), ref_logps (B, T), *, log_ratio_clip: float | None = None)``
returning (B, T).
``log_ratio_clip`` clamps logps - ref_logps to [-c, c] before the estimator (k3's exp overflows in float32
past ~88; the clamp also zeroes the gradient outside the band). Masking is the caller's job.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import paddle

from .registry import get, register
from .utils import last_token_index, masked_mean

__all__ = ["kl_k1", "kl_k2", "kl_k3", "kl_shaped_rewards"]

Tensor = paddle.Tensor


def _log_ratio(logps: Tensor, ref_logps: Tensor, log_ratio_clip: Optional[float]) -> Tensor:
    """logps - ref_logps, optionally clamped to [-c, c]."""
    diff = logps - ref_logps
    if log_ratio_clip is not None:
        diff = paddle.clip(diff, -log_ratio_clip, log_ratio_clip)
    return diff


@register("kl", "k1")
def kl_k1(logps: Tensor, ref_logps: Tensor, *, log_ratio_clip: Optional[float] = None) -> Tensor:
    """k1 = logps - ref_logps per token (B, T). The estimator PaddleNLP / safe-rlhf put into the reward."""
    return _log_ratio(logps, ref_logps, log_ratio_clip)


@register("kl", "k2")
def kl_k2(logps: Tensor, ref_logps: Tensor, *, log_ratio_clip: Optional[float] = None) -> Tensor:
    """k2 = 0.5 · (logps - ref_logps)² per token (B, T)."""
    return 0.5 * _log_ratio(logps, ref_logps, log_ratio_clip) ** 2


@register("kl", "k3")
def kl_k3(logps: Tensor, ref_logps: Tensor, *, log_ratio_clip: Optional[float] = None) -> Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1 per token (B, T); GRPO's KL-in-loss (arXiv 2402.03300, Eq. 4).

    Computed as expm1(x) - x with x = ref - logp for accuracy near 0.
    """
    x = -_log_ratio(logps, ref_logps, log_ratio_clip)
    return paddle.expm1(x) - x


def kl_shaped_rewards(
    scores: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor,
    response_mask: Tensor,
    *,
    kl_coeff: float,
    clip_range_score: float,
    estimator: str = "k1",
    log_ratio_clip: Optional[float] = None,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """KL-shaped per-token rewards of RLHF-PPO (InstructGPT 2203.02155 Eq. 2; Ziegler et al. 1909.08593).

    scores (B,), old_logps / ref_logps / response_mask (B, T)::

        r_t = -kl_coeff · kl_t · m_t                     (kl_t = the named estimator, k1 by default)
        r_{t_end} += clip(score, -clip_range_score, clip_range_score)   (t_end = last index with m_t = 1)

    As PaddleNLP and the 2023 Beaver code: only the score is clipped (2024 safe-rlhf instead clamps the
    whole reward vector after adding the raw score). A row with an empty mask gets all-zero rewards.
    Masked-out positions are zero whatever their log-probs hold (no NaN from padding garbage).

    Returns (token_rewards (B, T), metrics) with detached metrics ``kl_reward`` (masked token mean of the
    KL part), ``reward_with_kl`` (masked token mean of r_t) and ``clipped_score`` (mean clipped score).
    """
    mask = response_mask.astype(old_logps.dtype)
    keep = mask > 0
    zeros = paddle.zeros_like(old_logps)
    kl = get("kl", estimator)(
        paddle.where(keep, old_logps, zeros),
        paddle.where(keep, ref_logps, zeros),
        log_ratio_clip=log_ratio_clip,
    )
    kl_rewards = -kl_coeff * kl * mask
    clipped = paddle.clip(scores.astype(old_logps.dtype), -clip_range_score, clip_range_score)
    has_tokens = (mask.sum(axis=-1) > 0).astype(mask.dtype)
    last = paddle.nn.functional.one_hot(last_token_index(mask), mask.shape[-1]).astype(mask.dtype)
    token_rewards = kl_rewards + last * (clipped * has_tokens).unsqueeze(-1)
    metrics = {
        "kl_reward": masked_mean(kl_rewards.detach(), mask),
        "reward_with_kl": masked_mean(token_rewards.detach(), mask),
        "clipped_score": clipped.detach().mean(),
    }
    return token_rewards, metrics

"""Policy-gradient losses (kind ``"policy"``), critic loss (kind ``"value"``), entropy bonus and KL-in-loss.

Every ``"policy"`` loss shares one signature, so they swap by name::

    fn(logps (B, T), old_logps (B, T), advantages (B, T), response_mask (B, T), *,
       clip_range_ratio=0.2, clip_range_ratio_low=None, clip_range_ratio_high=None, dual_clip=None,
       delta=None, token_weights=None,
       loss_agg_mode="token-mean", global_token_count=None, global_seq_count=None, norm_length=None)
    -> (loss scalar, metrics)

``delta`` (> 1 + ε_high; TRL's two-sided GRPO clip, INTELLECT-2 arXiv 2505.07291) caps the ratio of the
unclipped term: ℓ_t = max(-A_t min(ρ_t, δ), -A_t clip(ρ_t, ...)); for A_t < 0 this bounds ℓ_t by -δ A_t (what
``dual_clip`` = δ does), for A_t > 0 it changes nothing. ``token_weights`` (B, T), detached, multiply the
per-token losses before aggregation (the denominators still count every masked token): truncated
importance-sampling weights of an off-policy rollout, or a 0/1 mask of the highest-entropy tokens.

ε_low = clip_range_ratio_low or clip_range_ratio, ε_high = clip_range_ratio_high or clip_range_ratio.
The per-token losses are reduced by the aggregation mode ``loss_agg_mode`` (see ``aggregation``; the
``global_*`` counts and ``norm_length`` are passed through). Positions outside the mask never contribute,
whatever they hold. Metrics (detached): ``actor/clipfrac``, ``actor/approx_kl`` (masked token mean of
k3 = (ρ - 1) - log ρ, Schulman's low-variance estimator of KL(π_old ‖ π_θ)), ``actor/ratio_mean``.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import paddle

from .registry import get, register
from .utils import entropy_from_logits, masked_mean, masked_var

__all__ = ["ppo_loss", "gspo_loss", "cispo_loss", "sapo_loss", "clipped_value_loss", "entropy_bonus",
           "token_entropy_bonus", "kl_penalty_loss"]

Tensor = paddle.Tensor
Metrics = Dict[str, Tensor]


def _masked(x: Tensor, keep: Tensor) -> Tensor:
    return paddle.where(keep, x, paddle.zeros_like(x))


def _eps(clip_range_ratio: float, low: Optional[float], high: Optional[float]) -> Tuple[float, float]:
    eps_low = clip_range_ratio if low is None else low
    eps_high = clip_range_ratio if high is None else high
    if eps_low < 0 or eps_high < 0:
        raise ValueError(
            f"clip ranges must be >= 0; got clip_range_ratio_low={eps_low}, clip_range_ratio_high={eps_high}"
        )
    return eps_low, eps_high


def _clipped_surrogate(
    log_ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    dual_clip: Optional[float],
    delta: Optional[float] = None,
) -> Tuple[Tensor, Metrics]:
    """Per-token max(-A·min(ρ, δ), -A·clip(ρ, 1-ε_low, 1+ε_high)) (and the dual clip), plus the clip metrics."""
    ratio = paddle.exp(log_ratio)
    _check_delta(delta, eps_high)
    unclipped = -advantages * (ratio if delta is None else paddle.clip(ratio, max=delta))
    clipped = -advantages * paddle.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    losses = paddle.maximum(unclipped, clipped)
    metrics = {"actor/clipfrac": masked_mean((clipped > unclipped).astype(mask.dtype), mask)}
    if dual_clip is not None:
        if not dual_clip > 1.0:
            raise ValueError(f"dual_clip must be > 1 (arXiv 1912.09729); got {dual_clip}")
        bound = -advantages * dual_clip
        active = (advantages < 0) & (bound < losses)
        losses = paddle.where(active, bound, losses)
        metrics["actor/dual_clipfrac"] = masked_mean(active.astype(mask.dtype), mask)
    metrics["actor/approx_kl"] = masked_mean(paddle.expm1(log_ratio) - log_ratio, mask)
    metrics["actor/ratio_mean"] = masked_mean(ratio, mask)
    return losses, {k: v.detach() for k, v in metrics.items()}


def _check_delta(delta: Optional[float], eps_high: float) -> None:
    if delta is not None and not delta > 1.0 + eps_high:
        raise ValueError(f"delta must be > 1 + clip_range_ratio_high = {1.0 + eps_high} (or None); got {delta}")


def _weighted(losses: Tensor, token_weights: Optional[Tensor]) -> Tensor:
    """ℓ_t · w_t (detached weights: TIS importance weights, a high-entropy token mask); None: ℓ unchanged."""
    return losses if token_weights is None else losses * token_weights.astype(losses.dtype).detach()


def _aggregate(loss_mat: Tensor, mask: Tensor, mode: str, **counts) -> Tensor:
    return get("aggregation", mode)(loss_mat, mask, **counts)


@register("policy", "ppo")
def ppo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_range_ratio: float = 0.2,
    clip_range_ratio_low: Optional[float] = None,
    clip_range_ratio_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    delta: Optional[float] = None,
    token_weights: Optional[Tensor] = None,
    loss_agg_mode: str = "token-mean",
    global_token_count=None,
    global_seq_count=None,
    norm_length: Optional[float] = None,
) -> Tuple[Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al., arXiv 1707.06347, Eq. 7), per token.

        ρ_t = exp(logps_t - old_logps_t)
        ℓ_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε_low, 1 + ε_high))   (asymmetric ε: DAPO clip-higher,
                                                                       arXiv 2503.14476)
        dual clip (Ye et al., arXiv 1912.09729), c = dual_clip > 1:  ℓ_t = min(ℓ_t, -c A_t) where A_t < 0
        loss = aggregate(ℓ, m, loss_agg_mode)

    Same as PaddleNLP's actor loss with the default ``token-mean``. The log-ratio is not clamped (neither
    is PaddleNLP's; verl clamps it to ±20). ``actor/dual_clipfrac`` is added when the dual clip is on.
    """
    mask = response_mask.astype(logps.dtype)
    keep = mask != 0
    eps_low, eps_high = _eps(clip_range_ratio, clip_range_ratio_low, clip_range_ratio_high)
    log_ratio = _masked(logps - old_logps, keep)
    losses, metrics = _clipped_surrogate(
        log_ratio, _masked(advantages, keep), mask, eps_low, eps_high, dual_clip, delta
    )
    loss = _aggregate(
        _weighted(losses, token_weights),
        mask,
        loss_agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )
    return loss, metrics


@register("policy", "gspo")
def gspo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_range_ratio: float = 0.2,
    clip_range_ratio_low: Optional[float] = None,
    clip_range_ratio_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    delta: Optional[float] = None,
    token_weights: Optional[Tensor] = None,
    loss_agg_mode: str = "seq-mean-token-mean",
    global_token_count=None,
    global_seq_count=None,
    norm_length: Optional[float] = None,
) -> Tuple[Tensor, Metrics]:
    """GSPO, group sequence policy optimisation (Zheng et al., arXiv 2507.18071), GSPO-token form (Eq. 13–14).

        s_i = exp( (1/|y_i|) Σ_t m_t (logps_t - old_logps_t) )        (length-normalised sequence ratio)
        s_i,t = sg[s_i] · π_θ(y_t) / sg[π_θ(y_t)]   (value s_i at every token; gradient of a per-token ratio)
        ℓ_t = max(-A_t s_i,t, -A_t clip(s_i,t, 1 - ε_low, 1 + ε_high)),  loss = aggregate(ℓ, m, loss_agg_mode)

    With an advantage constant over a sequence (GRPO) this equals the sequence-level GSPO objective.
    The default aggregation is the paper's ``seq-mean-token-mean``. The paper uses tiny clip ranges
    (ε_low = 3e-4, ε_high = 4e-4); the defaults here are the common 0.2, set them explicitly. A row with an
    empty mask has s_i = 1 and contributes nothing.
    """
    mask = response_mask.astype(logps.dtype)
    keep = mask != 0
    eps_low, eps_high = _eps(clip_range_ratio, clip_range_ratio_low, clip_range_ratio_high)
    token_log_ratio = _masked(logps - old_logps, keep)
    seq_log_ratio = token_log_ratio.sum(axis=-1, keepdim=True) / paddle.clip(
        mask.sum(axis=-1, keepdim=True), min=1.0
    )
    log_ratio = _masked(seq_log_ratio.detach() + logps - logps.detach(), keep)
    losses, metrics = _clipped_surrogate(
        log_ratio, _masked(advantages, keep), mask, eps_low, eps_high, dual_clip, delta
    )
    loss = _aggregate(
        _weighted(losses, token_weights),
        mask,
        loss_agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )
    return loss, metrics


@register("policy", "cispo")
def cispo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_range_ratio: float = 0.2,
    clip_range_ratio_low: Optional[float] = None,
    clip_range_ratio_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    delta: Optional[float] = None,
    token_weights: Optional[Tensor] = None,
    loss_agg_mode: str = "token-mean",
    global_token_count=None,
    global_seq_count=None,
    norm_length: Optional[float] = None,
) -> Tuple[Tensor, Metrics]:
    """CISPO: clipped importance-sampling-weight policy optimisation (MiniMax-M1, arXiv 2506.13585, Eq. 4–5).

        ρ̂_t = clip(ρ_t, 1 - ε_low, 1 + ε_high)   (lower bound only when clip_range_ratio_low is given)
        ℓ_t = -sg(ρ̂_t) · A_t · logps_t,   loss = aggregate(ℓ, m, loss_agg_mode)

    Every token keeps a gradient (the IS weight is clipped, not the update). The paper effectively uses
    no lower bound, hence ε_low applies only when set explicitly. TRL caps ρ at ``epsilon_high`` itself
    (an absolute cap); here the cap is 1 + ε_high as in the paper. ``dual_clip`` is not defined for CISPO
    and must stay None. ``actor/clipfrac`` is the fraction of tokens whose weight was clipped.
    """
    if dual_clip is not None or delta is not None:
        raise ValueError("dual_clip and delta are not defined for the 'cispo' policy loss; leave them None")
    mask = response_mask.astype(logps.dtype)
    keep = mask != 0
    eps_high = clip_range_ratio if clip_range_ratio_high is None else clip_range_ratio_high
    log_ratio = _masked(logps - old_logps, keep)
    ratio = paddle.exp(log_ratio)
    low = 0.0 if clip_range_ratio_low is None else 1.0 - clip_range_ratio_low
    weight = paddle.clip(ratio, low, 1.0 + eps_high).detach()
    losses = _weighted(-weight * _masked(advantages, keep) * _masked(logps, keep), token_weights)
    metrics = {
        "actor/clipfrac": masked_mean((weight != ratio).astype(mask.dtype), mask),
        "actor/approx_kl": masked_mean(paddle.expm1(log_ratio) - log_ratio, mask),
        "actor/ratio_mean": masked_mean(ratio, mask),
    }
    loss = _aggregate(
        losses,
        mask,
        loss_agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )
    return loss, {k: v.detach() for k, v in metrics.items()}


@register("policy", "sapo")
def sapo_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    *,
    clip_range_ratio: float = 0.2,
    clip_range_ratio_low: Optional[float] = None,
    clip_range_ratio_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    delta: Optional[float] = None,
    token_weights: Optional[Tensor] = None,
    loss_agg_mode: str = "seq-mean-token-mean",
    global_token_count=None,
    global_seq_count=None,
    norm_length: Optional[float] = None,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> Tuple[Tensor, Metrics]:
    """SAPO, soft adaptive policy optimisation (Qwen team, arXiv 2511.20347): a sigmoid gate instead of a clip.

        ρ_t = exp(logps_t - old_logps_t),  τ_t = tau_pos if A_t > 0 else tau_neg
        ℓ_t = -(4 / τ_t) · σ(τ_t (ρ_t - 1)) · A_t,   loss = aggregate(ℓ, m, loss_agg_mode)

    At ρ = 1 the gradient equals the plain policy gradient -A ∇log π (σ'(0) · 4 = 1); far from 1 it decays
    smoothly (faster for negative advantages, tau_neg > tau_pos). The clip ranges, ``dual_clip`` and
    ``delta`` do not apply (the latter two must stay None). ``actor/clipfrac`` is always 0 (nothing is clipped).
    """
    if dual_clip is not None or delta is not None:
        raise ValueError("dual_clip and delta are not defined for the 'sapo' policy loss; leave them None")
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"sapo: tau_pos and tau_neg must be > 0; got {tau_pos}, {tau_neg}")
    mask = response_mask.astype(logps.dtype)
    keep = mask != 0
    log_ratio = _masked(logps - old_logps, keep)
    adv = _masked(advantages, keep)
    ratio = paddle.exp(log_ratio)
    tau = paddle.where(adv > 0, paddle.full_like(adv, tau_pos), paddle.full_like(adv, tau_neg))
    losses = _weighted(-(4.0 / tau) * paddle.nn.functional.sigmoid(tau * (ratio - 1.0)) * adv, token_weights)
    metrics = {
        "actor/clipfrac": paddle.zeros([], dtype=mask.dtype),
        "actor/approx_kl": masked_mean(paddle.expm1(log_ratio) - log_ratio, mask),
        "actor/ratio_mean": masked_mean(ratio, mask),
    }
    loss = _aggregate(
        losses,
        mask,
        loss_agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )
    return loss, {k: v.detach() for k, v in metrics.items()}


@register("value", "clipped")
def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    *,
    clip_range_value: float = 5.0,
    loss_agg_mode: str = "token-mean",
    global_token_count=None,
    global_seq_count=None,
    norm_length: Optional[float] = None,
) -> Tuple[Tensor, Metrics]:
    """Clipped value loss of PPO (arXiv 1707.06347 as implemented in OpenAI baselines; safe-rlhf / PaddleNLP).

        V^clip_t = old_V_t + clip(V_t - old_V_t, -c_v, c_v)
        ℓ_t = 0.5 · max((V_t - R_t)², (V^clip_t - R_t)²),   loss = aggregate(ℓ, m, loss_agg_mode)

    Metrics: ``critic/clipfrac`` (fraction of tokens where the clipped error is the larger),
    ``critic/vf_explained_var`` = 1 - Var_m(R - V) / Var_m(R) (0 when Var_m(R) = 0), ``critic/values`` mean.
    """
    mask = response_mask.astype(values.dtype)
    keep = mask != 0
    values, old_values, returns = _masked(values, keep), _masked(old_values, keep), _masked(returns, keep)
    clipped_values = old_values + paddle.clip(values - old_values, -clip_range_value, clip_range_value)
    error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    losses = 0.5 * paddle.maximum(error, clipped_error)
    loss = _aggregate(
        losses,
        mask,
        loss_agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )
    var_returns = masked_var(returns.detach(), mask, unbiased=False)
    var_residual = masked_var((returns - values).detach(), mask, unbiased=False)
    explained = paddle.where(
        var_returns > 0,
        1.0 - var_residual / paddle.where(var_returns > 0, var_returns, paddle.ones_like(var_returns)),
        paddle.zeros_like(var_returns),
    )
    metrics = {
        "critic/clipfrac": masked_mean((clipped_error > error).astype(mask.dtype), mask),
        "critic/vf_explained_var": explained,
        "critic/values": masked_mean(values, mask),
    }
    return loss, {k: v.detach() for k, v in metrics.items()}


def entropy_bonus(
    logits: Tensor,
    mask: Tensor,
    *,
    loss_agg_mode: str = "token-mean",
    global_token_count=None,
    global_seq_count=None,
    norm_length: Optional[float] = None,
) -> Tuple[Tensor, Metrics]:
    """Aggregated entropy of softmax(logits) over the response: logits (B, T, V), mask (B, T) -> scalar.

    H_t = logsumexp(z_t) - Σ_v softmax(z_t)_v z_t,v (``utils.entropy_from_logits``); the caller divides the
    logits by the sampling temperature first and subtracts entropy_coeff · H from the loss (PaddleNLP §4.8).
    Metric ``actor/entropy``.
    """
    return token_entropy_bonus(entropy_from_logits(logits), mask, loss_agg_mode=loss_agg_mode,
                               global_token_count=global_token_count, global_seq_count=global_seq_count,
                               norm_length=norm_length)


def token_entropy_bonus(
    entropy: Tensor,
    mask: Tensor,
    *,
    loss_agg_mode: str = "token-mean",
    global_token_count=None,
    global_seq_count=None,
    norm_length: Optional[float] = None,
) -> Tuple[Tensor, Metrics]:
    """``entropy_bonus`` from per-token entropies (B, T) already computed (e.g. by the chunked LM head,
    ``alignment.ops.linear_completion_logps(..., with_entropy=True)``, which never builds the logits)."""
    value = _aggregate(
        entropy,
        mask,
        loss_agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )
    return value, {"actor/entropy": value.detach()}


def kl_penalty_loss(
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    estimator: str = "k3",
    clip: Optional[float] = None,
    log_ratio_clip: Optional[float] = None,
    loss_agg_mode: str = "token-mean",
    global_token_count=None,
    global_seq_count=None,
    norm_length: Optional[float] = None,
) -> Tuple[Tensor, Metrics]:
    """KL-in-loss of GRPO (arXiv 2402.03300, Eq. 3–4): aggregate(clip(kl_t, -clip, clip), m).

    kl_t is the named estimator of kind "kl" (k3 by default) of KL(π_θ ‖ π_ref). ``clip`` clamps the per-token
    value as PaddleNLP does (it reuses clip_range_score there); ``log_ratio_clip`` clamps the log-ratio before
    the estimator (overflow guard). Masked-out positions are zero. Metric ``actor/kl_loss``.
    """
    m = mask.astype(logps.dtype)
    keep = m != 0
    kl = get("kl", estimator)(_masked(logps, keep), _masked(ref_logps, keep), log_ratio_clip=log_ratio_clip)
    if clip is not None:
        kl = paddle.clip(kl, -clip, clip)
    value = _aggregate(
        kl,
        m,
        loss_agg_mode,
        global_token_count=global_token_count,
        global_seq_count=global_seq_count,
        norm_length=norm_length,
    )
    return value, {"actor/kl_loss": value.detach()}

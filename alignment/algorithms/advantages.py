"""Advantage estimators, registered in kind ``"advantage"``, all with ONE keyword signature::

    fn(*, token_rewards: Tensor | None (B, T), values: Tensor | None (B, T), response_mask (B, T),
       scores: Tensor | None (B,), group_size: int = 1, gamma: float = 1.0, lam: float = 0.95,
       eps: float = 1e-6) -> (advantages (B, T), returns (B, T))

Each estimator reads what it needs and ignores the rest (a missing input raises ``ValueError``).
Outputs are zero outside ``response_mask`` and are not detached: the caller detaches them (they are
constants of the update). Groups are ``group_size`` consecutive rows (the samples of one prompt);
a batch whose size is not a multiple of ``group_size`` raises ``ValueError``. For the critic-free
estimators ``returns`` equals ``advantages`` (there is no value target).
"""

from __future__ import annotations

from typing import Optional, Tuple

import paddle

from .registry import register
from .utils import masked_whiten

__all__ = ["gae", "grpo", "dr_grpo", "rloo", "reinforce_plus_plus"]

Tensor = paddle.Tensor


def _need(tensor: Optional[Tensor], name: str, estimator: str) -> Tensor:
    if tensor is None:
        raise ValueError(f"advantage estimator '{estimator}' needs {name}")
    return tensor


def _groups(scores: Tensor, group_size: int, estimator: str) -> Tensor:
    """scores (B,) -> (B / group_size, group_size); B must be a multiple of group_size."""
    scores = _need(scores, "scores (B,)", estimator).flatten()
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(
            f"advantage estimator '{estimator}': group_size={group_size} must be >= 1 and divide the batch "
            f"size {scores.shape[0]} (the samples of one prompt are group_size consecutive rows)"
        )
    return scores.reshape([-1, group_size])


def _broadcast(per_row: Tensor, response_mask: Tensor) -> Tuple[Tensor, Tensor]:
    mask = response_mask.astype(per_row.dtype)
    advantages = per_row.reshape([-1, 1]) * mask
    return advantages, advantages


@register("advantage", "gae")
def gae(
    *,
    token_rewards: Optional[Tensor] = None,
    values: Optional[Tensor] = None,
    response_mask: Tensor,
    scores: Optional[Tensor] = None,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., arXiv 1506.02438, Eq. 16).

    With r and V first multiplied by the mask m (so V beyond the response end is 0)::

        δ_t = r_t + γ V_{t+1} - V_t,   A_t = δ_t + γ λ A_{t+1},   A_T = V_T = 0
        returns_t = A_t + V_t;  both multiplied by m

    The backward recursion runs over the whole row; masked prompt positions on the left (a response that
    starts after S prompt columns) never feed a response position because the recursion runs from later to
    earlier indices, and are zeroed at the end. Same as PaddleNLP/safe-rlhf (γ=1, λ=0.95 there).
    Reads token_rewards and values; ignores scores, group_size and eps.
    """
    rewards = _need(token_rewards, "token_rewards (B, T)", "gae")
    values = _need(values, "values (B, T)", "gae")
    mask = response_mask.astype(rewards.dtype)
    rewards, values = rewards * mask, values.astype(rewards.dtype) * mask
    length = rewards.shape[-1]
    next_value = paddle.zeros_like(rewards[:, 0])
    next_advantage = paddle.zeros_like(rewards[:, 0])
    reversed_advantages = []
    for t in range(length - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        next_value = values[:, t]
        reversed_advantages.append(next_advantage)
    advantages = paddle.stack(reversed_advantages[::-1], axis=1) * mask
    return advantages, (advantages + values) * mask


def _group_std(grouped: Tensor) -> Tensor:
    """Bessel-corrected std along axis 1 with a finite gradient when the group is constant (std = 0)."""
    centred = grouped - grouped.mean(axis=1, keepdim=True)
    var = (centred**2).sum(axis=1, keepdim=True) / (grouped.shape[1] - 1)
    positive = var > 0
    return paddle.sqrt(paddle.where(positive, var, paddle.ones_like(var))) * positive.astype(var.dtype)


@register("advantage", "grpo")
def grpo(
    *,
    token_rewards: Optional[Tensor] = None,
    values: Optional[Tensor] = None,
    response_mask: Tensor,
    scores: Optional[Tensor] = None,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Tuple[Tensor, Tensor]:
    """Group-normalised outcome advantage of GRPO (DeepSeekMath, arXiv 2402.03300, §4.1.2).

    For group g of ``group_size`` consecutive rows, A_i = (r_i - mean_g) / (std_g + eps), std Bessel-corrected
    (n - 1),
    broadcast over the response tokens. A constant group gives A = 0 (no NaN, finite gradients).

    Deliberate difference from PaddleNLP: a group of size 1 has no baseline, so its advantage is 0
    (PaddleNLP uses mean 0, std 1 there, i.e. A = the raw reward). PaddleNLP forms groups inside a
    micro-batch by prompt id; here the caller guarantees consecutive whole groups. eps = 1e-6 as PaddleNLP
    (TRL uses 1e-4). Reads scores; ignores token_rewards, values, gamma and lam.
    """
    grouped = _groups(scores, group_size, "grpo")
    if group_size == 1:
        return _broadcast(paddle.zeros_like(grouped), response_mask)
    centred = grouped - grouped.mean(axis=1, keepdim=True)
    return _broadcast(centred / (_group_std(grouped) + eps), response_mask)


@register("advantage", "dr_grpo")
def dr_grpo(
    *,
    token_rewards: Optional[Tensor] = None,
    values: Optional[Tensor] = None,
    response_mask: Tensor,
    scores: Optional[Tensor] = None,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Tuple[Tensor, Tensor]:
    """Dr. GRPO advantage (Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783, Eq. 3).

    A_i = r_i - mean_g (no division by the group std), broadcast over the response tokens; group_size 1
    gives 0. The paper's other half (no 1/|o_i| length normalisation) is the aggregation mode
    ``seq-mean-token-sum-norm``. Reads scores only.
    """
    grouped = _groups(scores, group_size, "dr_grpo")
    return _broadcast(grouped - grouped.mean(axis=1, keepdim=True), response_mask)


@register("advantage", "rloo")
def rloo(
    *,
    token_rewards: Optional[Tensor] = None,
    values: Optional[Tensor] = None,
    response_mask: Tensor,
    scores: Optional[Tensor] = None,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Tuple[Tensor, Tensor]:
    """REINFORCE leave-one-out advantage (Ahmadian et al., arXiv 2402.14740, Eq. 6; Kool et al. 2019).

    A_i = r_i - 1/(k-1) Σ_{j≠i} r_j over the k = group_size samples of a prompt, broadcast over tokens.
    Needs group_size >= 2. Unlike TRL's RLOO the KL penalty is not folded in here: pass scores that
    already include it if wanted. Reads scores only.
    """
    if group_size < 2:
        raise ValueError(
            f"advantage estimator 'rloo' needs group_size >= 2 (a leave-one-out baseline); got {group_size}"
        )
    grouped = _groups(scores, group_size, "rloo")
    baseline = (grouped.sum(axis=1, keepdim=True) - grouped) / (group_size - 1)
    return _broadcast(grouped - baseline, response_mask)


@register("advantage", "reinforce_plus_plus")
def reinforce_plus_plus(
    *,
    token_rewards: Optional[Tensor] = None,
    values: Optional[Tensor] = None,
    response_mask: Tensor,
    scores: Optional[Tensor] = None,
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    eps: float = 1e-6,
) -> Tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu, arXiv 2501.03262): discounted returns, then batch whitening.

        G_t = m_t · (r_t + γ G_{t+1})     (the running return resets wherever the mask is 0)
        A = (G - mean_m G) / sqrt(var_m G + 1e-8) · m      (mean / unbiased var over all masked tokens)
        returns = G

    As PaddleNLP/OpenRLHF; the whitening is over the batch given, so for a data-parallel run the caller
    gathers the step's rows first (PaddleNLP does). ``eps`` is not used (the whitening epsilon is 1e-8
    inside the square root, as in PaddleNLP). Reads token_rewards (the KL-shaped rewards).
    """
    rewards = _need(token_rewards, "token_rewards (B, T)", "reinforce_plus_plus")
    mask = response_mask.astype(rewards.dtype)
    running = paddle.zeros_like(rewards[:, 0])
    reversed_returns = []
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        reversed_returns.append(running)
    returns = paddle.stack(reversed_returns[::-1], axis=1)
    return masked_whiten(returns, mask, eps=1e-8), returns

"""Advantages and returns, computed ONCE per rollout batch (before any update of that batch).

    scores --(optional running normalisation, statistics over all ranks)--> scores'
    (scores', old_logps, ref_logps) --kl_shaped_rewards(kl_coeff, clip_range_score)--> token_rewards
    registry "advantage"[estimator](token_rewards, values, response_mask, scores', group_size, gamma, lam)
        --> advantages, returns
    advantages --(optional whitening over all valid tokens of all ranks)--> advantages

The estimator comes from ``rl_algorithm`` (ppo -> gae, grpo -> grpo, ...). Groups of
``num_return_sequences`` contiguous rows are never split: each rank owns whole prompts.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import paddle

from alignment.algorithms import registry
from alignment.algorithms.kl import kl_shaped_rewards
from alignment.algorithms.normalizers import RunningMeanStd
from alignment.algorithms.utils import masked_mean
from alignment.parallel import ParallelStrategy, masked_moments
from alignment.rollout import Experience

__all__ = ["RewardNormalizer", "compute_advantages", "lagrangian_advantages_step"]


class RewardNormalizer:
    """Running mean/variance of the raw scores over every rank (``algorithms.normalizers.RunningMeanStd``).

    ``update_and_normalize`` gathers the step's scores from all ranks, merges them into the running
    statistics and returns (scores - mean) / (std + 1e-8) in float32 (no bfloat16 cast, unlike PaddleNLP).
    """

    def __init__(self):
        self.stats = RunningMeanStd(1)

    def update_and_normalize(self, scores: paddle.Tensor, strategy: Optional[ParallelStrategy]) -> paddle.Tensor:
        everything = strategy.all_gather(scores) if strategy is not None else scores
        self.stats.update(everything.astype("float32"))
        return self.stats.normalize(scores.astype("float32").unsqueeze(-1), "affine").squeeze(-1)

    def state_dict(self) -> Dict[str, list]:
        return {k: v.numpy().tolist() for k, v in self.stats.state_dict().items()}

    def set_state_dict(self, state: Dict[str, list]) -> None:
        self.stats.set_state_dict({k: paddle.to_tensor(v, dtype="float32") for k, v in state.items()})


def compute_advantages(
    exp: Experience,
    *,
    estimator: str,
    kl_coeff: float,
    clip_range_score: float,
    kl_estimator: str = "k1",
    group_size: int = 1,
    gamma: float = 1.0,
    lam: float = 0.95,
    normalize_advantage: bool = False,
    reward_normalizer: Optional[RewardNormalizer] = None,
    strategy: Optional[ParallelStrategy] = None,
    scale_by_batch_std: bool = False,
) -> Tuple[Experience, Dict[str, float]]:
    """Fill ``token_rewards``, ``advantages`` and ``returns`` of ``exp``; return it and the step's metrics.

    ``scale_by_batch_std`` (GRPO's ``scale_rewards='batch'``, with the ``dr_grpo`` estimator's group-centred
    advantages): divide by std + 1e-6 of every score of the step over all ranks (Bessel-corrected).
    """
    if group_size > 1:
        _check_groups(exp.group_ids, group_size)
    mask = exp.response_mask.astype("float32")
    raw = exp.scores.astype("float32")
    scores = raw if reward_normalizer is None else reward_normalizer.update_and_normalize(raw, strategy)
    metrics: Dict[str, float] = {"reward": float(raw.mean())}
    if reward_normalizer is not None:
        metrics["norm_reward"] = float(scores.mean())

    dense = exp.dense_rewards  # reward_granularity token: (N, R) per-token rewards replace the end score
    if dense is not None:
        dense = paddle.clip(dense.astype("float32"), -clip_range_score, clip_range_score) * mask
    if exp.ref_logps is not None:
        token_rewards, kl_metrics = kl_shaped_rewards(
            scores if dense is None else paddle.zeros_like(scores), exp.old_logps, exp.ref_logps, mask,
            kl_coeff=kl_coeff, clip_range_score=clip_range_score, estimator=kl_estimator,
        )
        if dense is not None:
            token_rewards = token_rewards + dense
        metrics.update({k: _f(v) for k, v in kl_metrics.items()})
        log_ratio = (exp.old_logps - exp.ref_logps) * mask
        metrics["kl_divergence"] = float(masked_mean(log_ratio, mask))
        metrics["kl_divergence_seq"] = float(log_ratio.sum(axis=-1).mean())
    elif dense is not None:
        token_rewards = dense
    else:  # no reference: the clipped score at the last response token only
        token_rewards = _last_token_rewards(paddle.clip(scores, -clip_range_score, clip_range_score), mask)

    fn = registry.get("advantage", estimator)
    advantages, returns = fn(
        token_rewards=token_rewards,
        values=exp.values,
        response_mask=mask,
        scores=scores,
        group_size=group_size,
        gamma=gamma,
        lam=lam,
    )
    advantages = advantages.detach() * mask
    returns = returns.detach() * mask
    if estimator == "reinforce_plus_plus":  # its whitening must span every rank's rows, not this rank's only
        _, mean, var = masked_moments(strategy, returns, mask)
        advantages = ((returns - mean.astype("float32")) * paddle.rsqrt(var.astype("float32") + 1e-8)) * mask
    if scale_by_batch_std:
        _, _, var = masked_moments(strategy, scores, paddle.ones_like(scores))
        advantages = advantages / (paddle.sqrt(var.astype("float32")) + 1e-6)
        returns = advantages
    if normalize_advantage:
        _, mean, var = masked_moments(strategy, advantages, mask)
        advantages = ((advantages - mean.astype("float32")) * paddle.rsqrt(var.astype("float32") + 1e-8)) * mask

    metrics.update(
        {
            "token_reward": float(masked_mean(token_rewards, mask)),
            "returns": float(masked_mean(returns, mask)),
            "advantages": float(masked_mean(advantages, mask)),
        }
    )
    if exp.values is not None:
        metrics["values"] = float(masked_mean(exp.values, mask))
    lengths = mask.sum(axis=-1)
    metrics.update(
        {
            "response_length": float(lengths.mean()),
            "response_length_max": float(lengths.max()),
            "response_length_min": float(lengths.min()),
        }
    )
    return exp.replace(token_rewards=token_rewards, advantages=advantages, returns=returns), metrics


def lagrangian_advantages_step(exp: Experience, lagrange, *, estimator: str, args, strategy=None,
                               scale_by_batch_std: bool = False) -> Tuple[Experience, Dict[str, float]]:
    """PPO-Lagrangian after ``compute_advantages``: cost advantages, the λ update, the actor's advantages.

    The cost side runs ``compute_advantages`` on ``exp.cost_scores`` / ``exp.cost_values`` with the same
    estimator, and with the KL term's sign flipped (per-token cost += kl_coeff·kl), so that in
    (A_r - λ·A_c) / (1 + λ) the KL weight is kl_coeff whatever λ (safe-rlhf splits it 1/2 : 1/2, a weight
    of kl_coeff / 2). λ moves on every rank's episode costs of this step before it is used
    (``LagrangeMultiplier.update``). ``exp.advantages`` becomes the combined advantage; the reward
    advantages stay logged as ``advantages``; ``cost_advantages`` / ``cost_returns`` are kept for the cost critic.
    """
    from alignment.algorithms.lagrangian import lagrangian_advantages

    costs = exp.cost_scores.astype("float32")
    cost_exp, cost_metrics = compute_advantages(
        exp.replace(scores=costs, values=exp.cost_values, dense_rewards=None), estimator=estimator,
        kl_coeff=-args.kl_coeff, clip_range_score=args.clip_range_score, kl_estimator=args.kl_estimator,
        group_size=args.num_return_sequences, gamma=args.gamma, lam=args.lam,
        normalize_advantage=args.normalize_advantage, strategy=strategy, scale_by_batch_std=scale_by_batch_std,
    )
    everything = strategy.all_gather(costs) if strategy is not None else costs
    metrics = lagrange.update(everything.numpy().tolist())
    lam = lagrange.value
    combined = lagrangian_advantages(exp.advantages, cost_exp.advantages, lam) * exp.response_mask.astype("float32")
    mask = exp.response_mask.astype("float32")
    metrics.update(
        episode_cost=float(costs.mean()), unsafe_share=float((costs > 0).astype("float32").mean()),
        cost_returns=float(masked_mean(cost_exp.returns, mask)),
        cost_advantages=float(masked_mean(cost_exp.advantages, mask)),
        lagrangian_advantages=float(masked_mean(combined, mask)),
    )
    if exp.cost_values is not None:
        metrics["cost_values"] = float(masked_mean(exp.cost_values, mask))
    return exp.replace(advantages=combined, cost_advantages=cost_exp.advantages,
                       cost_returns=cost_exp.returns), metrics


def _check_groups(group_ids: paddle.Tensor, group_size: int) -> None:
    """Rows must come in whole, contiguous groups of ``group_size`` (the samples of one prompt)."""
    ids = group_ids.numpy()
    if ids.shape[0] % group_size or not (ids.reshape(-1, group_size) == ids[::group_size, None]).all():
        raise ValueError(
            f"advantages: the {ids.shape[0]} rows are not whole contiguous groups of {group_size} samples per prompt "
            "(group-relative estimators would mix prompts)"
        )


def _last_token_rewards(scores: paddle.Tensor, mask: paddle.Tensor) -> paddle.Tensor:
    """(N,) scores placed at each row's last response token: (N, R)."""
    last = (mask.sum(axis=-1).astype("int64") - 1).clip(min=0)
    onehot = paddle.nn.functional.one_hot(last, mask.shape[1]).astype("float32")
    return onehot * scores.unsqueeze(-1) * mask


def _f(v) -> float:
    return float(v.astype("float32").mean()) if isinstance(v, paddle.Tensor) else float(v)

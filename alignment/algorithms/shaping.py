"""Rollout shaping and token selection of the GRPO family (pure functions of tensors).

    overlong_penalty        DAPO soft overlong punishment of the reward (arXiv 2503.14476, Eq. 13)
    constant_reward_groups  DAPO dynamic sampling: which groups carry no signal (arXiv 2503.14476, Eq. 11)
    truncated_is_weights    TIS: capped importance weights π_train / π_rollout for a rollout engine whose
                            log-probs differ from the trainer's (Yao et al. 2025, "Your Efficient RL Framework
                            Secretly Brings You Off-Policy RL Training"; no arXiv id), plus |Δ logp| metrics
    high_entropy_mask       train on the top-q fraction of tokens by entropy (Wang et al., "Beyond the 80/20
                            rule", arXiv 2506.01939)

Shapes: N rows, R response columns; masks are 1 on response tokens (EOS included).
"""

from __future__ import annotations

from typing import Dict, Tuple

import paddle

from .utils import masked_mean

__all__ = ["overlong_penalty", "constant_reward_groups", "truncated_is_weights", "high_entropy_mask"]

Tensor = paddle.Tensor


def overlong_penalty(lengths: Tensor, *, max_length: int, buffer_length: int, penalty_factor: float = 1.0) -> Tensor:
    """Soft overlong punishment added to the reward, (N,) lengths -> (N,) float32 penalties (<= 0).

        L_exp = max_length - buffer_length
        R_len(n) = 0                                   n <= L_exp
                 = (L_exp - n) / buffer_length          L_exp < n <= max_length
                 = -1                                   n > max_length
        penalty = penalty_factor · R_len(n)

    ``max_length`` is the generation limit (max_dec_len) and n counts response tokens, EOS included (as
    verl's DAPO recipe). buffer_length must be in (0, max_length].
    """
    if not 0 < buffer_length <= max_length:
        raise ValueError(f"overlong_buffer_len must be in (0, max_dec_len={max_length}]; got {buffer_length}")
    n = lengths.astype("float32")
    expected = float(max_length - buffer_length)
    ramp = paddle.clip((expected - n) / float(buffer_length), min=-1.0, max=0.0)
    ramp = paddle.where(n > float(max_length), paddle.full_like(ramp, -1.0), ramp)
    return penalty_factor * ramp


def constant_reward_groups(scores: Tensor, group_size: int, *, atol: float = 1e-6) -> Tensor:
    """(N,) scores in contiguous groups of ``group_size`` -> (N / group_size,) bool: True where every reward
    of the group is equal (max - min <= atol), i.e. its group-relative advantages are all zero."""
    grouped = scores.astype("float32").reshape([-1, group_size])
    return (grouped.max(axis=1) - grouped.min(axis=1)) <= atol


def truncated_is_weights(old_logps: Tensor, rollout_logps: Tensor, mask: Tensor, *, cap: float
                         ) -> Tuple[Tensor, Dict[str, Tensor]]:
    """w_t = min(exp(old_logps_t - rollout_logps_t), cap) on the mask (0 elsewhere), detached.

    ``old_logps`` are the trainer's log-probs of the sampled tokens before the update, ``rollout_logps``
    those of the sampler that produced them. The per-token policy loss is multiplied by w_t (TIS).
    Metrics: ``rollout_logp_diff_max`` / ``rollout_logp_diff_mean`` (max and masked mean of |Δ logp|) and
    ``tis_weight_mean``; |Δ logp| is ~0 when rollout and training share one model.
    """
    if not cap > 0:
        raise ValueError(f"tis_cap must be > 0; got {cap}")
    m = mask.astype("float32")
    keep = m != 0
    diff = paddle.where(keep, old_logps.astype("float32") - rollout_logps.astype("float32"), paddle.zeros_like(m))
    weights = paddle.where(keep, paddle.clip(paddle.exp(diff), max=cap), paddle.zeros_like(m)).detach()
    gap = paddle.abs(diff)
    metrics = {
        "rollout_logp_diff_max": gap.max() if gap.numel() else paddle.zeros([]),
        "rollout_logp_diff_mean": masked_mean(gap, m),
        "tis_weight_mean": masked_mean(weights, m),
    }
    return weights, {k: v.detach() for k, v in metrics.items()}


def high_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """1.0 on the masked tokens whose entropy is >= the (1 - quantile) quantile of the masked entropies, else 0.

    ``quantile`` in (0, 1]: 1 keeps every token, 0.2 the 20% highest-entropy ones (the paper's choice).
    The quantile is over the tokens given (one micro-batch); ties at the threshold are kept.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"top_entropy_quantile must be in (0, 1]; got {quantile}")
    m = mask.astype("float32")
    if quantile >= 1.0:
        return m
    values = paddle.masked_select(entropy.astype("float32").detach(), m != 0)
    if values.numel() == 0:
        return m
    threshold = paddle.quantile(values, 1.0 - quantile)
    return ((entropy.astype("float32").detach() >= threshold).astype("float32") * m).detach()

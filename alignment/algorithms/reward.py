"""Pairwise reward-model losses (Bradley–Terry), registered in kind ``"reward"``.

Common signature of every registered loss::

    fn(chosen_scores (B, L), rejected_scores (B, L), chosen_mask (B, L), rejected_mask (B, L), *,
       chosen_ids=None (B, L), rejected_ids=None (B, L), regularization: float = 0.0,
       margin: Tensor | None = None (B,), center_rewards_coefficient: float | None = None)
    -> (loss scalar, metrics)

``*_scores`` are the score head's outputs at every position; the *end score* of a sequence is the
score at the last index where its mask is 1 (``end_scores``). Metrics (detached): ``accuracy``
(strict r_c > r_r, margin ignored), ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``
(means over pairs, of end scores).

Sources: InstructGPT (arXiv 2203.02155) pairwise loss; margin as in Llama 2 (arXiv 2307.09288);
centering term of Eisenstein et al. (arXiv 2312.09244, Eq. 2) as TRL's ``center_rewards_coefficient``;
token-wise loss of safe-rlhf / PaddleNLP.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import paddle
import paddle.nn.functional as F

from .registry import register
from .utils import last_token_index

__all__ = ["end_scores", "last_token_index", "sequence_wise_loss", "token_wise_loss"]

Tensor = paddle.Tensor


def end_scores(scores: Tensor, mask: Tensor) -> Tensor:
    """Score at the last position where ``mask`` is 1: scores (B, L) -> (B,), or (B, L, D) -> (B, D).

    A row whose mask is all zero reads position 0 (see ``last_token_index``).
    """
    index = last_token_index(mask)
    if scores.ndim == 3:
        gather = index.reshape([-1, 1, 1]).expand([scores.shape[0], 1, scores.shape[2]])
        return paddle.take_along_axis(scores, gather, axis=1).squeeze(1)
    return paddle.take_along_axis(scores, index.unsqueeze(-1), axis=1).squeeze(-1)


def _pair_metrics(r_c: Tensor, r_r: Tensor) -> Dict[str, Tensor]:
    r_c, r_r = r_c.detach(), r_r.detach()
    return {
        "accuracy": (r_c > r_r).astype(r_c.dtype).mean(),
        "rewards/chosen": r_c.mean(),
        "rewards/rejected": r_r.mean(),
        "rewards/margins": (r_c - r_r).mean(),
    }


def _center_term(r_c: Tensor, r_r: Tensor, coefficient: Optional[float]) -> Optional[Tensor]:
    if not coefficient:
        return None
    return coefficient * ((r_c + r_r) ** 2).mean()


@register("reward", "sequence-wise")
def sequence_wise_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    chosen_ids: Optional[Tensor] = None,
    rejected_ids: Optional[Tensor] = None,
    regularization: float = 0.0,
    margin: Optional[Tensor] = None,
    center_rewards_coefficient: Optional[float] = None,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Bradley–Terry loss on end scores (InstructGPT arXiv 2203.02155; margin arXiv 2307.09288).

    With r_c, r_r the end scores (B,) and m the per-pair margin (0 when None)::

        loss = -mean_b log σ(r_c - r_r - m)
               + regularization · mean over the stacked 2B vector [r_c, r_r] of r²
               + c · mean_b (r_c + r_r)²          (c = center_rewards_coefficient, off when None/0)

    The regulariser follows safe-rlhf; PaddleNLP adds reg · (mean r_c² + mean r_r²), i.e. twice this
    term for the same coefficient. The margin and centering terms are TRL's ``RewardTrainer``.
    ``chosen_ids``/``rejected_ids`` are accepted for the common signature and unused.
    """
    r_c = end_scores(chosen_scores, chosen_mask)
    r_r = end_scores(rejected_scores, rejected_mask)
    diff = r_c - r_r
    if margin is not None:
        diff = diff - margin.astype(diff.dtype)
    loss = -F.log_sigmoid(diff).mean()
    if regularization:
        loss = loss + regularization * (paddle.stack([r_c, r_r]) ** 2).mean()
    center = _center_term(r_c, r_r, center_rewards_coefficient)
    if center is not None:
        loss = loss + center
    return loss, _pair_metrics(r_c, r_r)


def _divergence_window(
    chosen_ids: Tensor, rejected_ids: Tensor, chosen_mask: Tensor, rejected_mask: Tensor
) -> Tensor:
    """(B, L) 0/1 window d_i <= t <= end_i; d_i = first index where the ids differ, end_i = the later end."""
    if chosen_ids is None or rejected_ids is None:
        raise ValueError(
            "the token-wise reward loss needs chosen_ids and rejected_ids (to find where the pair diverges)"
        )
    if chosen_ids.shape != rejected_ids.shape or chosen_ids.shape != chosen_mask.shape:
        raise ValueError(
            f"token-wise reward loss needs chosen/rejected ids and masks of one shape (B, L); got "
            f"{chosen_ids.shape}, {rejected_ids.shape}, {chosen_mask.shape}"
        )
    differs = (chosen_ids != rejected_ids).astype("int64")
    diverge = paddle.argmax(differs, axis=-1)  # first True; 0 when the row has no difference
    end = paddle.maximum(last_token_index(chosen_mask), last_token_index(rejected_mask))
    bad = (differs.sum(axis=-1) == 0) | (diverge > end)
    if bool(bad.any()):
        rows = paddle.nonzero(bad).flatten().tolist()
        raise ValueError(
            f"token-wise reward loss: chosen and rejected are identical up to their end in pair(s) {rows}; "
            "drop identical pairs from the preference data"
        )
    t = paddle.arange(chosen_ids.shape[-1], dtype="int64").unsqueeze(0)
    return ((t >= diverge.unsqueeze(-1)) & (t <= end.unsqueeze(-1))).astype("float32")


@register("reward", "token-wise")
def token_wise_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    chosen_ids: Optional[Tensor] = None,
    rejected_ids: Optional[Tensor] = None,
    regularization: float = 0.0,
    margin: Optional[Tensor] = None,
    center_rewards_coefficient: Optional[float] = None,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Token-wise pairwise loss of safe-rlhf / PaddleNLP (``loss_type="token-wise"``).

    Per pair i, d_i = first index where ``chosen_ids`` and ``rejected_ids`` differ and
    end_i = max(last masked index of chosen, of rejected); over the window W_i = [d_i, end_i] (n_i tokens)::

        ℓ_i = mean_{t∈W_i} -log σ(s_c,t - s_r,t - m_i)
              + regularization · (mean_{t∈W_i} s_c,t² + mean_{t∈W_i} s_r,t²) / 2
        loss = mean_i ℓ_i  (+ c · mean_i (r_c + r_r)² on end scores when center_rewards_coefficient is set)

    Positions past the shorter response's end but inside W_i are compared as safe-rlhf does (its pads).
    The regulariser is safe-rlhf's mean over both stacked slices (PaddleNLP's is twice that). The margin
    and centering terms are extensions (neither safe-rlhf nor PaddleNLP has them): m_i is subtracted at
    every token of the window. A pair whose ids are identical up to its end raises ``ValueError``.
    Metrics use end scores, as safe-rlhf does.
    """
    window = _divergence_window(chosen_ids, rejected_ids, chosen_mask, rejected_mask).astype(
        chosen_scores.dtype
    )
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin.astype(diff.dtype).unsqueeze(-1)
    count = window.sum(axis=-1)
    per_pair = (-F.log_sigmoid(diff) * window).sum(axis=-1) / count
    if regularization:
        square = (chosen_scores**2 + rejected_scores**2) * window
        per_pair = per_pair + regularization * square.sum(axis=-1) / (2.0 * count)
    loss = per_pair.mean()
    r_c = end_scores(chosen_scores, chosen_mask)
    r_r = end_scores(rejected_scores, rejected_mask)
    center = _center_term(r_c, r_r, center_rewards_coefficient)
    if center is not None:
        loss = loss + center
    return loss, _pair_metrics(r_c, r_r)

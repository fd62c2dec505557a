"""Cost-model losses of Safe RLHF (Dai et al., arXiv 2310.12773, Eq. 7), registered in kind ``"cost"``.

Common signature of every registered loss::

    fn(safer_scores (B, L), unsafer_scores (B, L), safer_mask (B, L), unsafer_mask (B, L), *,
       safer_safety_sign (B,), unsafer_safety_sign (B,), safer_ids=None (B, L), unsafer_ids=None (B, L),
       regularization: float = 0.0) -> (loss scalar, metrics)

``*_safety_sign`` is the DATA's convention (``SafetyPreferenceDataset``): +1 = the response is safe, -1 = unsafe.
The paper's sign s is the opposite (s = +1 unsafe, -1 safe), so s = -safety_sign: a safe response is pushed
to a negative cost, an unsafe one to a positive cost, and "cost > 0" reads as "unsafe".

Metrics (detached, from end scores c = the score at the last masked position): ``accuracy`` (pair accuracy,
strict c_unsafer > c_safer), ``sign_accuracy`` (over the 2B end costs, sign(c) == s; a cost of exactly 0
counts as wrong), ``costs/safer``, ``costs/unsafer``, ``costs/margins`` (mean c_unsafer - c_safer).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import paddle
import paddle.nn.functional as F

from .registry import register
from .reward import _divergence_window, end_scores

__all__ = ["cost_metrics", "sequence_wise_cost_loss", "token_wise_cost_loss"]

Tensor = paddle.Tensor


def _paper_sign(safety_sign: Tensor, dtype) -> Tensor:
    """s of the paper (+1 unsafe, -1 safe) from the data's safety sign (+1 safe, -1 unsafe)."""
    return -safety_sign.astype(dtype)


def cost_metrics(c_safer: Tensor, c_unsafer: Tensor, safer_safety_sign: Tensor,
                 unsafer_safety_sign: Tensor) -> Dict[str, Tensor]:
    """Pair accuracy, sign accuracy and the mean end costs (all detached) of (B,) end costs."""
    c_s, c_u = c_safer.detach(), c_unsafer.detach()
    s_s, s_u = _paper_sign(safer_safety_sign, c_s.dtype), _paper_sign(unsafer_safety_sign, c_s.dtype)
    right = paddle.concat([(c_s * s_s > 0), (c_u * s_u > 0)]).astype(c_s.dtype)
    return {
        "accuracy": (c_u > c_s).astype(c_s.dtype).mean(),
        "sign_accuracy": right.mean(),
        "costs/safer": c_s.mean(),
        "costs/unsafer": c_u.mean(),
        "costs/margins": (c_u - c_s).mean(),
    }


@register("cost", "sequence-wise")
def sequence_wise_cost_loss(
    safer_scores: Tensor,
    unsafer_scores: Tensor,
    safer_mask: Tensor,
    unsafer_mask: Tensor,
    *,
    safer_safety_sign: Tensor,
    unsafer_safety_sign: Tensor,
    safer_ids: Optional[Tensor] = None,
    unsafer_ids: Optional[Tensor] = None,
    regularization: float = 0.0,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Safe RLHF cost-model loss on end costs (arXiv 2310.12773, Eq. 7).

    With c_s, c_u the end costs (B,) of the safer / unsafer response and s = -safety_sign (+1 unsafe)::

        loss = mean_b [ -log σ(c_u - c_s) - log σ(s_u · c_u) - log σ(s_s · c_s) ]
               + regularization · mean over the stacked 2B vector [c_s, c_u] of c²

    The regulariser is the reward model's (``reward.sequence_wise_loss``). ``*_ids`` are accepted for the
    common signature and unused.
    """
    c_s = end_scores(safer_scores, safer_mask)
    c_u = end_scores(unsafer_scores, unsafer_mask)
    s_s, s_u = _paper_sign(safer_safety_sign, c_s.dtype), _paper_sign(unsafer_safety_sign, c_s.dtype)
    loss = (-F.log_sigmoid(c_u - c_s) - F.log_sigmoid(s_u * c_u) - F.log_sigmoid(s_s * c_s)).mean()
    if regularization:
        loss = loss + regularization * (paddle.stack([c_s, c_u]) ** 2).mean()
    return loss, cost_metrics(c_s, c_u, safer_safety_sign, unsafer_safety_sign)


@register("cost", "token-wise")
def token_wise_cost_loss(
    safer_scores: Tensor,
    unsafer_scores: Tensor,
    safer_mask: Tensor,
    unsafer_mask: Tensor,
    *,
    safer_safety_sign: Tensor,
    unsafer_safety_sign: Tensor,
    safer_ids: Optional[Tensor] = None,
    unsafer_ids: Optional[Tensor] = None,
    regularization: float = 0.0,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Token-wise Safe RLHF cost loss: the sequence-wise terms at every token of the divergence window.

    Per pair i, W_i = [d_i, end_i] as in ``reward.token_wise_loss`` (d_i = first index where the ids differ,
    end_i = the later end; n_i tokens); s = -safety_sign::

        ℓ_i = mean_{t∈W_i} [ -log σ(c_u,t - c_s,t) - log σ(s_u,i · c_u,t) - log σ(s_s,i · c_s,t) ]
              + regularization · (mean_{t∈W_i} c_s,t² + mean_{t∈W_i} c_u,t²) / 2
        loss = mean_i ℓ_i

    Every token of the window carries the response's safety sign, so the per-token costs of a trained model
    are usable as dense per-token costs. A pair identical up to its end raises ``ValueError``. Metrics use the
    end costs.
    """
    window = _divergence_window(safer_ids, unsafer_ids, safer_mask, unsafer_mask).astype(safer_scores.dtype)
    s_s = _paper_sign(safer_safety_sign, safer_scores.dtype).unsqueeze(-1)
    s_u = _paper_sign(unsafer_safety_sign, safer_scores.dtype).unsqueeze(-1)
    per_token = (-F.log_sigmoid(unsafer_scores - safer_scores) - F.log_sigmoid(s_u * unsafer_scores)
                 - F.log_sigmoid(s_s * safer_scores))
    count = window.sum(axis=-1)
    per_pair = (per_token * window).sum(axis=-1) / count
    if regularization:
        square = (safer_scores**2 + unsafer_scores**2) * window
        per_pair = per_pair + regularization * square.sum(axis=-1) / (2.0 * count)
    c_s = end_scores(safer_scores, safer_mask)
    c_u = end_scores(unsafer_scores, unsafer_mask)
    return per_pair.mean(), cost_metrics(c_s, c_u, safer_safety_sign, unsafer_safety_sign)

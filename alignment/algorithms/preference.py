"""Offline preference losses: the DPO family, the CPO / SimPO / ORPO terms, LD-DPO weighting and KTO.

Notation (see ``/work/shared/reference/loss_formulas.md`` §2.0):

* ``L_c``, ``L_r``: **summed** completion log-probs of the policy for the chosen / rejected response (B,).
* ``L_c^ref``, ``L_r^ref``: the same under the reference model (no gradient); ``None`` means
  reference-free and is treated as 0.
* ``Δ_c = L_c - L_c^ref``, ``Δ_r = L_r - L_r^ref``, ``h = Δ_c - Δ_r``.  β = ``beta`` (default 0.1),
  ε = ``label_smoothing`` (default 0).

Every paired loss is registered in kind ``"preference"`` with the signature
``fn(logps: PairLogps, *, beta=0.1, <own hyperparameters>) -> Tensor (B,)`` (per-pair losses, the
caller takes the mean). ``preference_loss`` mixes several of them MPO style (arXiv 2411.10442):
``loss = Σ_k w_k · mean_i ℓ_k,i`` plus the optional NLL terms (RPO, CPO, ORPO).

The unpaired KTO losses are registered in kind ``"unpaired"`` with the signature
``fn(logps, ref_logps, labels, kl_logps=None, kl_ref_logps=None, *, beta, desirable_weight,
undesirable_weight) -> (loss scalar, metrics)``.

Semantics follow TRL ≤ 0.28 with the default ``reverse_kl`` divergence (= ms-swift), which is also TRL
HEAD for every loss without label smoothing; the deliberate differences are named per function.
No f-divergence variants and no WPO weighting are implemented here.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import paddle
import paddle.nn.functional as F

from .registry import get, register
from .utils import masked_mean, masked_sum

__all__ = [
    "PairLogps",
    "RunningMoments",
    "REFERENCE_FREE",
    "NEEDS_LENGTHS",
    "preference_loss",
    "log1mexp",
    "ld_weighted_logps",
    "pair_public_lengths",
    "kto_class_ratio_ok",
]

Tensor = paddle.Tensor

#: Losses that never look at the reference log-probs
#: (CPO arXiv 2401.08417, SimPO 2405.14734, ORPO 2403.07691).
REFERENCE_FREE = frozenset({"cpo", "simpo", "orpo"})
#: Losses that need ``PairLogps.chosen_lengths`` / ``rejected_lengths`` (length normalisation).
NEEDS_LENGTHS = frozenset({"ipo", "sigmoid_norm", "simpo", "orpo"})


@dataclass
class PairLogps:
    """Sequence log-probs of one batch of B preference pairs (all fields paddle Tensors).

    chosen, rejected:      (B,) summed completion log-probs of the policy (carry the gradient).
    ref_chosen, ref_rejected: (B,) the same under the reference model, or None (reference-free => 0).
    chosen_lengths, rejected_lengths: (B,) float completion-token counts, or None
        (needed by the losses in ``NEEDS_LENGTHS``; clamped to >= 1 where used).
    chosen_nll: scalar token-mean NLL over all chosen completion tokens of the batch, or None
        (needed by ``sft``, ``rpo_alpha``, ``cpo_alpha`` and ``orpo``).
    """

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Optional[Tensor] = None
    ref_rejected: Optional[Tensor] = None
    chosen_lengths: Optional[Tensor] = None
    rejected_lengths: Optional[Tensor] = None
    chosen_nll: Optional[Tensor] = None

    def __post_init__(self):
        if self.chosen.ndim != 1 or list(self.chosen.shape) != list(self.rejected.shape):
            raise ValueError(
                f"PairLogps.chosen and .rejected must both have shape (B,); got {list(self.chosen.shape)} "
                f"and {list(self.rejected.shape)}"
            )


class RunningMoments:
    """Running mean of a scalar stream, the BCO reward baseline δ₀ (TRL ≤ 0.28 / ms-swift semantics).

    ``update(value, count=1)`` folds in ``value``, the mean of ``count`` observations (one per process
    and step when the caller averages a gathered vector first); ``mean`` is the running arithmetic mean
    (0.0 before any update). ``state_dict`` / ``load_state_dict`` let a trainer checkpoint it.
    Deliberate difference from TRL: the count starts at exactly 0 instead of 1e-24, so after the first
    update ``mean`` equals the first value exactly.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.count = 0

    def update(self, value: float, count: int = 1) -> None:
        if count <= 0:
            raise ValueError(f"RunningMoments.update: count must be positive, got {count}")
        total = self.count + count
        self.mean += (float(value) - self.mean) * count / total
        self.count = total

    def state_dict(self) -> Dict[str, float]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.mean, self.count = float(state["mean"]), int(state["count"])


# ----------------------------------------------------------------------------------------- helpers


def _log_ratios(logps: PairLogps) -> Tuple[Tensor, Tensor]:
    """Δ_c, Δ_r; a missing reference counts as 0."""
    dc = logps.chosen if logps.ref_chosen is None else logps.chosen - logps.ref_chosen
    dr = logps.rejected if logps.ref_rejected is None else logps.rejected - logps.ref_rejected
    return dc, dr


def _lengths(logps: PairLogps, name: str) -> Tuple[Tensor, Tensor]:
    if logps.chosen_lengths is None or logps.rejected_lengths is None:
        raise ValueError(
            f"preference loss '{name}' needs PairLogps.chosen_lengths and PairLogps.rejected_lengths "
            "(completion-token counts); got None"
        )
    dtype = logps.chosen.dtype
    return (
        paddle.clip(logps.chosen_lengths.astype(dtype), min=1.0),
        paddle.clip(logps.rejected_lengths.astype(dtype), min=1.0),
    )


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _check_smoothing(label_smoothing: float, name: str, upper: float = 1.0, closed: bool = True) -> None:
    ok = 0.0 <= label_smoothing <= upper if closed else 0.0 <= label_smoothing < upper
    if not ok:
        bound = "]" if closed else ")"
        raise ValueError(f"{name}: label_smoothing must be in [0, {upper}{bound}, got {label_smoothing}")


def _smoothed_logistic(z: Tensor, label_smoothing: float) -> Tensor:
    """cDPO logistic loss −(1−ε)·logσ(z) − ε·logσ(−z)."""
    loss = -F.log_sigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.log_sigmoid(-z)
    return loss


def _sort(x: Tensor) -> Tensor:
    """Ascending sort along axis 0 that keeps the gradient (gather by argsort)."""
    return paddle.gather(x, paddle.argsort(x, axis=0), axis=0)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x ≤ 0, numerically stable (Mächler 2012).

    Uses log(−expm1(x)) for x > −ln 2 and log1p(−eˣ) otherwise; each branch only ever sees inputs in its
    safe range, so neither values nor gradients turn NaN. x is clamped to ≤ −1e-30 (x = 0 exactly would
    be −inf), which is a deliberate difference from TRL's plain ``log1p(-exp(x))``.
    """
    x = paddle.clip(x, max=-1e-30)
    near_zero = x > -math.log(2.0)
    small = paddle.log(-paddle.expm1(x))
    large = paddle.log1p(-paddle.exp(paddle.clip(x, max=-math.log(2.0))))
    return paddle.where(near_zero, small, large)


# ------------------------------------------------------------------------------ DPO-family losses


@register("preference", "sigmoid")
def sigmoid_loss(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """DPO (arXiv 2305.18290) with cDPO label smoothing: ℓ = −(1−ε)·logσ(βh) − ε·logσ(−βh). (B,) -> (B,).

    TRL ≤ 0.28 form; TRL HEAD dropped ε (ε = 0 gives the same value).
    """
    _check_smoothing(label_smoothing, "sigmoid")
    dc, dr = _log_ratios(logps)
    return _smoothed_logistic(beta * (dc - dr), label_smoothing)


@register("preference", "hinge")
def hinge_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """SLiC-HF / RSO hinge (arXiv 2305.10425, 2309.06657): ℓ = max(0, 1 − βh); β is the inverse margin."""
    dc, dr = _log_ratios(logps)
    return F.relu(1.0 - beta * (dc - dr))


@register("preference", "ipo")
def ipo_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """IPO (arXiv 2310.12036), length-normalised as in TRL: ℓ = (Δ_c/n_c − Δ_r/n_r − 1/(2β))².

    n = completion-token counts (clamped ≥ 1); β plays the role of τ. OpenRLHF uses summed log-probs instead.
    """
    _check_beta(beta)
    dc, dr = _log_ratios(logps)
    nc, nr = _lengths(logps, "ipo")
    return (dc / nc - dr / nr - 1.0 / (2.0 * beta)) ** 2


@register("preference", "kto_pair")
def kto_pair_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """Paired KTO (arXiv 2402.01306) as in PaddleNLP / TRL < 0.9.6.

    KL_c = max(0, mean_B Δ_c), KL_r = max(0, mean_B Δ_r) (not detached); the 2B-vector
    [1 − σ(β(Δ_c − KL_r)) ; 1 − σ(β(KL_c − Δ_r))] is averaged. Returned per pair as the average of its two
    entries, so that the mean over the B pairs equals the mean over the 2B entries.
    """
    dc, dr = _log_ratios(logps)
    kl_c = paddle.clip(dc.mean(), min=0.0)
    kl_r = paddle.clip(dr.mean(), min=0.0)
    desirable = 1.0 - F.sigmoid(beta * (dc - kl_r))
    undesirable = 1.0 - F.sigmoid(beta * (kl_c - dr))
    return 0.5 * (desirable + undesirable)


@register("preference", "robust")
def robust_loss(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """Robust DPO (arXiv 2403.00409), unbiased under label flips with rate ε ∈ [0, 0.5):

    ℓ = [−(1−ε)·logσ(βh) + ε·logσ(−βh)] / (1 − 2ε).
    """
    _check_smoothing(label_smoothing, "robust", upper=0.5, closed=False)
    dc, dr = _log_ratios(logps)
    z = beta * (dc - dr)
    eps = label_smoothing
    return (-(1.0 - eps) * F.log_sigmoid(z) + eps * F.log_sigmoid(-z)) / (1.0 - 2.0 * eps)


@register("preference", "bco_pair")
def bco_pair_loss(
    logps: PairLogps, *, beta: float = 0.1, bco_baseline: Optional[RunningMoments] = None
) -> Tensor:
    """Paired BCO (arXiv 2404.04656): ℓ = −logσ(βΔ_c − δ₀) − logσ(−(βΔ_r − δ₀)).

    With ``bco_baseline`` (a ``RunningMoments``), TRL ≤ 0.28 / ms-swift semantics: first the baseline is
    updated with m = mean of the 2B detached values {βΔ_c, βΔ_r}, then δ₀ = baseline.mean is used (so this
    function has a side effect on the baseline, once per call). Without it, δ₀ = 0 (TRL HEAD). In a
    multi-process run the caller must pass a baseline it synchronises itself (this module does no
    collectives).
    """
    dc, dr = _log_ratios(logps)
    rc, rr = beta * dc, beta * dr
    delta = 0.0
    if bco_baseline is not None:
        bco_baseline.update(float(paddle.concat([rc, rr]).detach().mean()))
        delta = bco_baseline.mean
    return -F.log_sigmoid(rc - delta) - F.log_sigmoid(-(rr - delta))


@register("preference", "sppo_hard")
def sppo_hard_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """SPPO with hard labels (arXiv 2405.00675): ℓ = (Δ_c − 1/(2β))² + (Δ_r + 1/(2β))²."""
    _check_beta(beta)
    dc, dr = _log_ratios(logps)
    half = 1.0 / (2.0 * beta)
    return (dc - half) ** 2 + (dr + half) ** 2


@register("preference", "nca_pair")
def nca_pair_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """NCA (arXiv 2402.05369): ℓ = −logσ(βΔ_c) − ½·logσ(−βΔ_c) − ½·logσ(−βΔ_r)."""
    dc, dr = _log_ratios(logps)
    rc, rr = beta * dc, beta * dr
    return -F.log_sigmoid(rc) - 0.5 * F.log_sigmoid(-rc) - 0.5 * F.log_sigmoid(-rr)


@register("preference", "aot")
def aot_loss(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """Paired AOT (arXiv 2406.05882): d = sort↑(L_c − L_r) − sort↑(L_c^ref − L_r^ref) over the local batch.

    ℓ_i = −(1−ε)·logσ(βd_i) − ε·logσ(−βd_i). Entry i of the result belongs to the i-th quantile, not to
    pair i (only the mean is meaningful). Reference None => zeros.
    """
    _check_smoothing(label_smoothing, "aot")
    ref_c = paddle.zeros_like(logps.chosen) if logps.ref_chosen is None else logps.ref_chosen
    ref_r = paddle.zeros_like(logps.rejected) if logps.ref_rejected is None else logps.ref_rejected
    d = _sort(logps.chosen - logps.rejected) - _sort(ref_c - ref_r)
    return _smoothed_logistic(beta * d, label_smoothing)


@register("preference", "aot_unpaired")
def aot_unpaired_loss(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """Unpaired AOT (arXiv 2406.05882; TRL's ``aot_pair`` before v0.28): d = sort↑(Δ_c) − sort↑(Δ_r).

    Same ℓ as ``aot``; entries are per quantile, not per pair.
    """
    _check_smoothing(label_smoothing, "aot_unpaired")
    dc, dr = _log_ratios(logps)
    return _smoothed_logistic(beta * (_sort(dc) - _sort(dr)), label_smoothing)


@register("preference", "apo_zero")
def apo_zero_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """APO-zero (arXiv 2408.06266): ℓ = (1 − σ(βΔ_c)) + σ(βΔ_r)."""
    dc, dr = _log_ratios(logps)
    return (1.0 - F.sigmoid(beta * dc)) + F.sigmoid(beta * dr)


@register("preference", "apo_down")
def apo_down_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """APO-down (arXiv 2408.06266): ℓ = σ(βΔ_c) + (1 − σ(βh))."""
    dc, dr = _log_ratios(logps)
    return F.sigmoid(beta * dc) + (1.0 - F.sigmoid(beta * (dc - dr)))


@register("preference", "discopop")
def discopop_loss(logps: PairLogps, *, beta: float = 0.1, discopop_tau: float = 0.05) -> Tensor:
    """DiscoPOP / log-ratio-modulated loss (arXiv 2406.08414). z = βh, m = σ(z/τ):

    ℓ = (1 − m)·(−logσ(z)) + m·e^{−z}.
    Deliberate difference from TRL: m·e^{−z} is computed as exp(logσ(z/τ) − z), the same value where TRL
    is finite but never 0·inf = NaN for very negative z.
    """
    if not discopop_tau > 0:
        raise ValueError(f"discopop: discopop_tau must be > 0, got {discopop_tau}")
    dc, dr = _log_ratios(logps)
    z = beta * (dc - dr)
    m = F.sigmoid(z / discopop_tau)
    return (1.0 - m) * (-F.log_sigmoid(z)) + paddle.exp(F.log_sigmoid(z / discopop_tau) - z)


@register("preference", "exo_pair")
def exo_pair_loss(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 1e-3) -> Tensor:
    """EXO (arXiv 2402.00856, Eq. 16) with q_w = σ(βh), q_l = σ(−βh):

    ℓ = q_w·(logσ(βh) − log(1−ε)) + q_l·(logσ(−βh) − log ε), ε ∈ (0, 1).
    ε = 0 raises (as TRL HEAD; TRL ≤ 0.28 silently replaced it by 1e-3). The default here is the
    recommended 1e-3, also when ``preference_loss`` is called without ``label_smoothing``.
    """
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(
            f"exo_pair needs label_smoothing in (0, 1) (recommended 1e-3), got {label_smoothing}: "
            "log(label_smoothing) is undefined at 0"
        )
    dc, dr = _log_ratios(logps)
    z = beta * (dc - dr)
    eps = label_smoothing
    return F.sigmoid(z) * (F.log_sigmoid(z) - math.log(1.0 - eps)) + F.sigmoid(-z) * (
        F.log_sigmoid(-z) - math.log(eps)
    )


@register("preference", "sigmoid_norm")
def sigmoid_norm_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """TRL's length-normalised DPO (SimPO-style normalisation, arXiv 2405.14734, but keeping the reference
    and without γ): ℓ = −logσ(β·(Δ_c/n_c − Δ_r/n_r)), n clamped ≥ 1."""
    dc, dr = _log_ratios(logps)
    nc, nr = _lengths(logps, "sigmoid_norm")
    return -F.log_sigmoid(beta * (dc / nc - dr / nr))


@register("preference", "dpop")
def dpop_loss(logps: PairLogps, *, beta: float = 0.1, dpop_lambda: float = 50.0) -> Tensor:
    """DPO-Positive (Smaug, arXiv 2402.13228), PaddleNLP formula:

    ℓ = −logσ(β·(h − λ·max(0, L_c^ref − L_c))), λ = ``dpop_lambda`` (default 50).
    """
    dc, dr = _log_ratios(logps)
    penalty = F.relu(-dc)  # max(0, L_c^ref − L_c)
    return -F.log_sigmoid(beta * (dc - dr - dpop_lambda * penalty))


@register("preference", "sft")
def sft_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """NLL term of RPO (arXiv 2404.19733): ``chosen_nll`` (token-mean over all chosen completion tokens of
    the batch) broadcast to (B,), so its mean is the scalar itself. ``beta`` is accepted and unused."""
    return _require_nll(logps, "the 'sft' loss").reshape([1]).expand(logps.chosen.shape)


# -------------------------------------------------------------------- reference-free terms


@register("preference", "cpo")
def cpo_loss(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """CPO preference term (arXiv 2401.08417) on **summed** policy log-probs, references ignored:

    u = L_c − L_r, ℓ = −(1−ε)·logσ(βu) − ε·logσ(−βu). Add the NLL term with ``cpo_alpha`` in
    ``preference_loss`` (TRL's default cpo_alpha is 1.0; here 0.0).
    """
    _check_smoothing(label_smoothing, "cpo")
    return _smoothed_logistic(beta * (logps.chosen - logps.rejected), label_smoothing)


@register("preference", "simpo")
def simpo_loss(
    logps: PairLogps, *, beta: float = 0.1, simpo_gamma: float = 0.5, label_smoothing: float = 0.0
) -> Tensor:
    """SimPO (arXiv 2405.14734) on **per-token average** log-probs L̄ = L/n, references ignored:

    u′ = L̄_c − L̄_r − γ/β, ℓ = −(1−ε)·logσ(βu′) − ε·logσ(−βu′) (= −logσ(β(L̄_c − L̄_r) − γ) for ε = 0).
    Pure SimPO is ``cpo_alpha=0`` (the default of ``preference_loss``); cpo_alpha > 0 gives CPO-SimPO.
    """
    _check_beta(beta)
    _check_smoothing(label_smoothing, "simpo")
    nc, nr = _lengths(logps, "simpo")
    u = logps.chosen / nc - logps.rejected / nr - simpo_gamma / beta
    return _smoothed_logistic(beta * u, label_smoothing)


@register("preference", "orpo")
def orpo_loss(logps: PairLogps, *, beta: float = 0.1) -> Tensor:
    """ORPO odds-ratio term (arXiv 2403.07691) on **per-token average** log-probs L̄ = L/n:

    log_odds = (L̄_c − L̄_r) − (log1mexp(L̄_c) − log1mexp(L̄_r)), ℓ = β·(−logσ(log_odds)).
    β is λ of the paper (TRL ``beta``, default 0.1) and is applied **here**, so that
    ``preference_loss("orpo", ...)`` = chosen_nll + mean(ℓ) = NLL − β·mean(logσ(log_odds)), TRL's total.
    (PaddleNLP's ``or`` has no β: use beta=1.) Computed in at least float32; references are ignored.
    """
    nc, nr = _lengths(logps, "orpo")
    dtype = "float64" if logps.chosen.dtype == paddle.float64 else "float32"
    lc = logps.chosen.astype(dtype) / nc.astype(dtype)
    lr = logps.rejected.astype(dtype) / nr.astype(dtype)
    log_odds = (lc - lr) - (log1mexp(lc) - log1mexp(lr))
    return (beta * -F.log_sigmoid(log_odds)).astype(logps.chosen.dtype)


# ------------------------------------------------------------------------------- the combiner


def _require_nll(logps: PairLogps, who: str) -> Tensor:
    if logps.chosen_nll is None:
        raise ValueError(
            f"{who} needs PairLogps.chosen_nll (token-mean NLL of the chosen completions); got None"
        )
    return logps.chosen_nll


def _keyword_params(fn: Callable) -> List[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]


def preference_loss(
    loss_type: Union[str, Sequence[str]],
    logps: PairLogps,
    loss_weights: Optional[Sequence[float]] = None,
    *,
    reference_free: bool = False,
    rpo_alpha: Optional[float] = None,
    cpo_alpha: float = 0.0,
    **hparams,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Total preference loss of one batch and its detached metrics.

    loss = Σ_k w_k · mean_B ℓ_k  (MPO mixing, arXiv 2411.10442; w defaults to all 1)
           + rpo_alpha · chosen_nll   (RPO, arXiv 2404.19733; TRL ≤ 0.28 ``rpo_alpha``)
           + cpo_alpha · chosen_nll   (CPO / CPO-SimPO; only with ``cpo`` or ``simpo``)
           + 1 · chosen_nll           (when ``orpo`` is chosen: ORPO total = NLL + β·mean(−logσ(log_odds)))
    Each loss gets only the hyperparameters in ``hparams`` that its signature accepts; one accepted by
    none of the chosen losses raises (typos are never silent). ``reference_free`` drops the reference
    log-probs (treated as 0). Metrics: rewards/{chosen,rejected,accuracies,margins} (β·Δ, or β·L for the
    reference-free terms, L averaged for simpo/orpo), logps/{chosen,rejected}, nll, loss/<name>.
    """
    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not names:
        raise ValueError("loss_type must name at least one preference loss")
    if len(set(names)) != len(names):
        raise ValueError(f"loss_type lists a loss twice: {names}")
    fns = [get("preference", name) for name in names]
    weights = [1.0] * len(names) if loss_weights is None else [float(w) for w in loss_weights]
    if len(weights) != len(names):
        raise ValueError(f"loss_weights has {len(weights)} entries but loss_type has {len(names)}: {names}")
    accepted = {name: set(_keyword_params(fn)) for name, fn in zip(names, fns)}
    known = set().union(*accepted.values())
    unknown = sorted(set(hparams) - known)
    if unknown:
        raise ValueError(
            f"hyperparameter(s) {unknown} are not accepted by loss_type {names}; accepted: {sorted(known)}"
        )
    beta = float(hparams.get("beta", 0.1))
    _check_beta(beta)
    if cpo_alpha and not {"cpo", "simpo"} & set(names):
        raise ValueError(
            f"cpo_alpha applies to the 'cpo' and 'simpo' losses, not to {names}; "
            "use rpo_alpha or the 'sft' loss"
        )
    if reference_free:
        logps = dataclasses.replace(logps, ref_chosen=None, ref_rejected=None)

    metrics: Dict[str, Tensor] = {}
    total = None
    for name, fn, weight in zip(names, fns, weights):
        component = fn(logps, **{k: v for k, v in hparams.items() if k in accepted[name]}).mean()
        metrics[f"loss/{name}"] = component.detach()
        total = weight * component if total is None else total + weight * component

    nll_weight = (rpo_alpha or 0.0) + (cpo_alpha or 0.0) + (1.0 if "orpo" in names else 0.0)
    if "orpo" in names:
        _require_nll(logps, "the 'orpo' loss (ORPO total = NLL + β·odds-ratio term)")
    if nll_weight != 0.0:
        total = total + nll_weight * _require_nll(logps, "rpo_alpha / cpo_alpha")

    metrics.update(_pair_metrics(logps, names, beta))
    return total, metrics


def _pair_metrics(logps: PairLogps, names: Sequence[str], beta: float) -> Dict[str, Tensor]:
    with paddle.no_grad():
        policy_terms = [n for n in names if n != "sft"]
        if policy_terms and set(policy_terms) <= REFERENCE_FREE:
            rc, rr = logps.chosen.detach(), logps.rejected.detach()
            if set(policy_terms) <= {"simpo", "orpo"}:
                nc, nr = _lengths(logps, policy_terms[0])
                rc, rr = rc / nc, rr / nr
        else:
            rc, rr = (t.detach() for t in _log_ratios(logps))
        rc, rr = beta * rc, beta * rr
        out = {
            "rewards/chosen": rc.mean(),
            "rewards/rejected": rr.mean(),
            "rewards/accuracies": (rc > rr).astype(rc.dtype).mean(),
            "rewards/margins": (rc - rr).mean(),
            "logps/chosen": logps.chosen.detach().mean(),
            "logps/rejected": logps.rejected.detach().mean(),
        }
        if logps.chosen_nll is not None:
            out["nll"] = logps.chosen_nll.detach()
    return out


# ------------------------------------------------------------------------------------- LD-DPO


def ld_weighted_logps(token_logps: Tensor, mask: Tensor, public_lengths: Tensor, ld_alpha: float) -> Tensor:
    """LD-DPO length-desensitised sequence log-prob (arXiv 2409.06411).

    token_logps, mask: (B, L) (mask = 1 on completion tokens, 0 on prompt and padding); public_lengths:
    (B,) l_p = min(|y_c|, |y_r|) in completion tokens (see ``pair_public_lengths``). With t the
    completion-relative position (cumulative count of the mask, 1-based):
    L = Σ_{t ≤ l_p} log p_t + α·Σ_{t > l_p} log p_t, computed as plain_sum − (1 − α)·tail_sum so that
    α = 1 is exactly the plain masked sum. Returns (B,).
    Deliberate difference from TRL v0.18–v0.28, which counted positions from the prompt start; this
    follows TRL HEAD / ms-swift / LLaMA-Factory. Apply it to the policy only (TRL ≤ 0.28, ms-swift) or
    also to the reference (TRL HEAD): that choice belongs to the caller.
    """
    if not 0.0 <= ld_alpha <= 1.0:
        raise ValueError(f"ld_alpha must be in [0, 1], got {ld_alpha}")
    m = mask.astype(token_logps.dtype)
    position = paddle.cumsum(m, axis=1)
    tail = (position > public_lengths.astype(token_logps.dtype).unsqueeze(1)).astype(token_logps.dtype) * m
    plain = masked_sum(token_logps, m, axis=1)
    if ld_alpha == 1.0:
        return plain
    return plain - (1.0 - ld_alpha) * masked_sum(token_logps, tail, axis=1)


def pair_public_lengths(chosen_mask: Tensor, rejected_mask: Tensor) -> Tensor:
    """l_p = min(|y_c|, |y_r|): (B, L_c), (B, L_r) completion masks -> (B,) float32 token counts."""
    nc = chosen_mask.astype("float32").sum(axis=1)
    nr = rejected_mask.astype("float32").sum(axis=1)
    return paddle.minimum(nc, nr)


# ---------------------------------------------------------------------------------------- KTO


def _unpaired_loss(
    losses_desirable: Tensor,
    losses_undesirable: Tensor,
    labels: Tensor,
    desirable_weight: float,
    undesirable_weight: float,
) -> Tuple[Tensor, Tensor]:
    """Mean over the concatenation [λ_D·ℓ_D ; λ_U·ℓ_U] (= B entries); also returns the bool label mask."""
    if labels.shape[0] == 0:
        raise ValueError("unpaired loss got an empty batch")
    desirable = labels.astype("bool")
    per_example = paddle.where(
        desirable, desirable_weight * losses_desirable, undesirable_weight * losses_undesirable
    )
    return per_example.mean(), desirable


def _unpaired_metrics(logps: Tensor, rewards: Tensor, desirable: Tensor) -> Dict[str, Tensor]:
    with paddle.no_grad():
        d = desirable.astype(logps.dtype)
        u = 1.0 - d
        return {
            "rewards/chosen": masked_mean(rewards.detach(), d),
            "rewards/rejected": masked_mean(rewards.detach(), u),
            "logps/chosen": masked_mean(logps.detach(), d),
            "logps/rejected": masked_mean(logps.detach(), u),
            "count/desirable": d.sum(),
            "count/undesirable": u.sum(),
        }


@register("unpaired", "kto")
def kto_loss(
    logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    kl_logps: Optional[Tensor] = None,
    kl_ref_logps: Optional[Tensor] = None,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """KTO (arXiv 2402.01306), TRL ``KTOTrainer`` semantics.

    logps, ref_logps: (B,) summed completion log-probs; labels: (B,) bool / 0-1 (1 = desirable);
    kl_logps, kl_ref_logps: (B',) log-probs of the mismatched "KL completions". Δ = logps − ref_logps,
    z₀ = max(0, mean(kl_logps − kl_ref_logps)), detached.
    Desirable ℓ = 1 − σ(β(Δ − z₀)); undesirable ℓ = 1 − σ(β(z₀ − Δ)).
    loss = mean over the B entries of [λ_D·ℓ_desirable ; λ_U·ℓ_undesirable] (a batch of one class is fine).
    For the cross-process z₀ of TRL, pass the gathered KL log-probs (only their mean is used).
    Returns (scalar loss, metrics incl. "kl" = z₀).
    """
    if kl_logps is None or kl_ref_logps is None:
        raise ValueError("kto needs kl_logps and kl_ref_logps (log-probs of the KL completions); got None")
    z0 = paddle.clip((kl_logps - kl_ref_logps).mean(), min=0.0).detach()
    delta = logps - ref_logps
    loss, desirable = _unpaired_loss(
        1.0 - F.sigmoid(beta * (delta - z0)),
        1.0 - F.sigmoid(beta * (z0 - delta)),
        labels,
        desirable_weight,
        undesirable_weight,
    )
    metrics = _unpaired_metrics(logps, beta * delta, desirable)
    metrics["kl"] = z0
    return loss, metrics


@register("unpaired", "apo_zero_unpaired")
def apo_zero_unpaired_loss(
    logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    kl_logps: Optional[Tensor] = None,
    kl_ref_logps: Optional[Tensor] = None,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Unpaired APO-zero (arXiv 2408.06266; TRL KTO ``loss_type="apo_zero_unpaired"``), no KL term:

    desirable ℓ = 1 − σ(βΔ), undesirable ℓ = σ(βΔ), weighted and averaged as in ``kto``. The KL arguments
    are accepted for a uniform signature and ignored.
    """
    delta = logps - ref_logps
    loss, desirable = _unpaired_loss(
        1.0 - F.sigmoid(beta * delta), F.sigmoid(beta * delta), labels, desirable_weight, undesirable_weight
    )
    return loss, _unpaired_metrics(logps, beta * delta, desirable)


def kto_class_ratio_ok(
    n_desirable: int, n_undesirable: int, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> bool:
    """KTO paper Eq. 8 guidance: True when λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3] (TRL warns otherwise).

    A dataset with no weighted undesirable mass is never within the range.
    """
    denominator = undesirable_weight * n_undesirable
    if denominator <= 0:
        return False
    ratio = desirable_weight * n_desirable / denominator
    return 1.0 - 1e-12 <= ratio <= 4.0 / 3.0 + 1e-12

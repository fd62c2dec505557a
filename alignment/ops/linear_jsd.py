"""Chunked LM heads + GKD's generalised JSD: the student-teacher divergence of ``h_s @ W_s`` and ``h_t @ W_t``
without ever holding (M, V) logits for all rows (GKD: Agarwal et al., arXiv 2306.13649; the chunking is the
Liger-Kernel one, arXiv 2410.10989, "fused linear cross entropy", here with a second, frozen head).

    out = linear_generalized_jsd(hs, ws, ht, wt, weights, beta=0.5, temperature=1.0,
                                 labels=None, label_weights=None, student_transpose_y=False,
                                 teacher_transpose_y=False)
    out.loss        ()  Σ_i weights_i JSD_β,i  -  Σ_i label_weights_i log p_s(label_i)   (differentiable)
    out.divergence  (M,) JSD_β,i per row          (no gradient: metrics)
    out.logps       (M,) log p_s(label_i) per row (no gradient; None without ``labels``)

    hs (M, H) float32  student hidden rows (after the final norm), one per scored token
    ws (H, V) or (V, H) with ``student_transpose_y`` (a tied head: the embedding)
    ht (M, H_t), wt    the teacher's rows and head (detached here: the teacher is frozen)
    weights (M,)       per-row weight of the divergence (GKD: mask / number of completion tokens)
    labels (M,) int64, label_weights (M,): the ``sft_alpha`` NLL term in the same pass

Per row, with log p_s = log_softmax(z_s / τ), log p_t = log_softmax(z_t / τ) (``distill.generalized_jsd``)
and its gradient w.r.t. the scaled student logits z' = z_s / τ, written out (no autograd inside)::

    β = 0  KL(p_t ‖ p_s)                      d/dz' = p_s - p_t
    β = 1  D = KL(p_s ‖ p_t)                  d/dz' = p_s ⊙ (log p_s - log p_t - D)
    else   m = (1-β) p_s + β p_t, JSD_β = β KL(p_t ‖ m) + (1-β) KL(p_s ‖ m)
                                              d/dz' = (1-β) p_s ⊙ (log p_s - log m - KL(p_s ‖ m))
    NLL    -log p_s(y)                        d/dz' = p_s - onehot(y)

(for β in (0, 1): ∂JSD/∂p_s,v = (1-β)(log p_s,v - log m_v), then the softmax Jacobian.) d z_s = d z' / τ.

Gradient in the forward (folded), not recomputed in the backward as ``linear_completion_logps`` does:
there the output is a per-token vector with an arbitrary upstream gradient, and d W = Σ_i g_i h_i^T dz_i
cannot be formed before g is known. Here the op takes the per-row weights and returns the scalar loss,
so its upstream gradient is one number: each chunk's d logits (weights and NLL term included) goes
straight into d hidden = dz @ W_s^T (rows of the chunk) and d W_s += h^T dz, and the backward only
scales those two buffers by the scalar. That saves the recomputation of both heads' chunk logits (two
of the six (c, H) x (H, V) matmuls per chunk) at the price of holding d W_s (the head's size) and
d hidden (M, H) from the forward to the backward. The backward scales those buffers in place and hands
them over (a PyLayer graph is backpropagated once in Paddle: a second pass, even with ``retain_graph``,
is not supported); under ``no_grad`` or with frozen inputs nothing is accumulated.

Peak extra memory: about ``WORKING_COPIES`` (chunk_rows, V) float32 tensors (both chunks' log-probs and
probabilities, log m, d logits and temporaries; 16 MiB each by default) instead of about 13 (M, V) ones on
the logits path (both logits, the softmaxes, log m, the autograd intermediates and the gradient), as
measured on CPU: M = 1024 rows, V = 32000, H = 256: 160 MiB instead of 1625 MiB, forward and backward.
The fused C++ log-prob operator is not used: the chunk's logsumexp is
already there for the divergence, so log p_s(y) is one gather, and its backward is assembled above.
``linear_generalized_jsd_reference`` is the full-logits path (``distill.generalized_jsd_per_token``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import paddle
from paddle.autograd import PyLayer

__all__ = ["linear_generalized_jsd", "linear_generalized_jsd_reference", "LinearJSD", "default_chunk_rows"]

DEFAULT_CHUNK_BYTES = 16 << 20  # one (chunk, V) float32 tensor: 131 rows of a 32000-token vocabulary
WORKING_COPIES = 9  # (chunk, V) float32 tensors alive at once at the peak of a chunk (measured on CPU)


class LinearJSD(NamedTuple):
    loss: paddle.Tensor
    divergence: paddle.Tensor
    logps: Optional[paddle.Tensor]


def _log_softmax_(z: paddle.Tensor) -> paddle.Tensor:
    return z.subtract_(paddle.logsumexp(z, axis=-1, keepdim=True))


def _chunk(hs, ws, ht, wt, weights, labels, label_weights, meta, want_grad):
    """(divergence (c,), log p_s(label) (c,) or None, d loss / d z_s (c, V) or None) of one chunk."""
    s_ty, t_ty, beta, inv_t = meta
    log_ps = _log_softmax_(paddle.matmul(hs, ws, transpose_y=s_ty).scale_(inv_t))
    log_pt = _log_softmax_(paddle.matmul(ht, wt, transpose_y=t_ty).scale_(inv_t))
    ps = paddle.exp(log_ps)
    if beta == 0.0:  # forward KL(p_t || p_s)
        pt = paddle.exp(log_pt)
        div = (pt * (log_pt - log_ps)).sum(axis=-1)
        dz = ps - pt if want_grad else None
    elif beta == 1.0:  # reverse KL(p_s || p_t)
        a = log_ps - log_pt
        div = (ps * a).sum(axis=-1)
        dz = ps * a.subtract_(div.unsqueeze(-1)) if want_grad else None
    else:
        log_m = paddle.logaddexp(log_ps + math.log(1.0 - beta), log_pt + math.log(beta))
        a = log_ps - log_m  # log p_s - log m
        kl_s = (ps * a).sum(axis=-1)
        pt = paddle.exp(log_pt)
        kl_t = (pt * log_pt.subtract_(log_m)).sum(axis=-1)  # log p_t - log m, in place
        del pt, log_m
        div = beta * kl_t + (1.0 - beta) * kl_s
        dz = (ps * a.subtract_(kl_s.unsqueeze(-1))).scale_(1.0 - beta) if want_grad else None
    logps = None
    if labels is not None:
        logps = paddle.take_along_axis(log_ps, labels.unsqueeze(-1), axis=-1).squeeze(-1)
    if want_grad:
        dz.multiply_(weights.unsqueeze(-1))
        if labels is not None:  # + u (p_s - onehot(y))
            dz.add_(ps * label_weights.unsqueeze(-1))
            dz.put_along_axis_(labels.unsqueeze(-1), -label_weights.unsqueeze(-1), 1, reduce="add")
        dz.scale_(inv_t)
    return div, logps, dz


def _loss(div, logps, weights, label_weights):
    loss = (weights * div).sum()
    if logps is not None:
        loss = loss - (label_weights * logps).sum()
    return loss


def _forward(hs, ws, ht, wt, weights, labels, label_weights, meta, chunk, need_h, need_w):
    """Every chunk in turn; the gradient buffers (or None) and the per-row results."""
    s_ty = meta[0]
    m = hs.shape[0]
    grad_h = paddle.zeros_like(hs) if need_h else None
    grad_w = paddle.zeros_like(ws) if need_w else None
    divs, lps = [], []
    with paddle.no_grad():
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            h = hs[s:e]
            div, lp, dz = _chunk(h, ws, ht[s:e], wt, weights[s:e], None if labels is None else labels[s:e],
                                 None if label_weights is None else label_weights[s:e], meta, need_h or need_w)
            divs.append(div)
            if lp is not None:
                lps.append(lp)
            if need_h:  # d hidden = dz @ W^T  (W: (H, V)) or dz @ W  (W: (V, H))
                grad_h[s:e] = paddle.matmul(dz, ws, transpose_y=not s_ty)
            if need_w:  # d W = h^T @ dz (H, V) or dz^T @ h (V, H), in place: one buffer
                grad_w.add_(paddle.matmul(dz, h, transpose_x=True) if s_ty else paddle.matmul(h, dz, transpose_x=True))
            del dz
    div = paddle.concat(divs) if len(divs) > 1 else divs[0]
    logps = None if labels is None else (paddle.concat(lps) if len(lps) > 1 else lps[0])
    return grad_h, grad_w, div, logps


class _LinearJSD(PyLayer):
    @staticmethod
    def forward(ctx, hs, ws, ht, wt, weights, labels, label_weights, meta, chunk, need_h, need_w):
        grad_h, grad_w, div, logps = _forward(hs, ws, ht, wt, weights, labels, label_weights, meta, chunk, need_h,
                                              need_w)
        with paddle.no_grad():
            loss = _loss(div, logps, weights, label_weights)
        ctx.grads = [grad_h, grad_w]
        if logps is None:
            logps = paddle.zeros_like(div)
        ctx.mark_non_differentiable(div, logps)
        return loss, div, logps

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        grad_h, grad_w = ctx.grads
        ctx.grads = None  # handed over: autograd may keep them as the parameters' .grad
        g = grad_loss.reshape([])
        with paddle.no_grad():
            if grad_h is not None:
                grad_h.multiply_(g)
            if grad_w is not None:
                grad_w.multiply_(g)
        return grad_h, grad_w


def _check(hs, ws, ht, wt, weights, labels, label_weights, beta, temperature, s_ty, t_ty):
    if hs.ndim != 2 or ht.ndim != 2 or hs.shape[0] != ht.shape[0] or weights.shape != [hs.shape[0]]:
        raise ValueError(f"linear_generalized_jsd: student rows (M, H), teacher rows (M, H_t) and weights (M,), got "
                         f"{hs.shape}, {ht.shape} and {weights.shape}")
    vs = ws.shape[0] if s_ty else ws.shape[1]
    vt = wt.shape[0] if t_ty else wt.shape[1]
    if vs != vt:
        raise ValueError(f"linear_generalized_jsd: student vocabulary ({vs}) and teacher vocabulary ({vt}) differ")
    if (labels is None) != (label_weights is None) or (labels is not None and (
            labels.shape != [hs.shape[0]] or label_weights.shape != [hs.shape[0]])):
        raise ValueError("linear_generalized_jsd: labels and label_weights go together, each (M,)")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1]; got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    return vs


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk when ``chunk_rows`` is not given: one (chunk, V) float32 tensor of ``DEFAULT_CHUNK_BYTES``."""
    return max(1, DEFAULT_CHUNK_BYTES // (4 * int(vocab_size)))


def linear_generalized_jsd(student_hidden, student_weight, teacher_hidden, teacher_weight, weights, *,
                           beta: float = 0.5, temperature: float = 1.0, labels=None, label_weights=None,
                           student_transpose_y: bool = False, teacher_transpose_y: bool = False,
                           chunk_rows: Optional[int] = None) -> LinearJSD:
    """Weighted generalised JSD (+ NLL) of two LM heads over rows, chunk by chunk; see the module docstring."""
    hs, ws = student_hidden, student_weight
    ht, wt = teacher_hidden.detach(), teacher_weight.detach()
    vocab = _check(hs, ws, ht, wt, weights, labels, label_weights, beta, temperature, student_transpose_y,
                   teacher_transpose_y)
    weights = weights.astype("float32").detach()
    if labels is not None:
        labels = labels.astype("int64")
        valid = (labels >= 0) & (labels < vocab)
        label_weights = paddle.where(valid, label_weights.astype("float32"), paddle.zeros([], "float32")).detach()
        labels = paddle.where(valid, labels, paddle.zeros_like(labels))
    m = hs.shape[0]
    if m == 0:
        zero = paddle.zeros([0], dtype="float32")
        return LinearJSD(0.0 * hs.sum(), zero, None if labels is None else zero)
    meta = (bool(student_transpose_y), bool(teacher_transpose_y), float(beta), 1.0 / float(temperature))
    chunk = int(chunk_rows or default_chunk_rows(vocab))
    grad_on = paddle.is_grad_enabled()
    need_h, need_w = grad_on and not hs.stop_gradient, grad_on and not ws.stop_gradient
    if not (need_h or need_w):
        _, _, div, logps = _forward(hs, ws, ht, wt, weights, labels, label_weights, meta, chunk, False, False)
        return LinearJSD(_loss(div, logps, weights, label_weights), div, logps)
    loss, div, logps = _LinearJSD.apply(hs, ws, ht, wt, weights, labels, label_weights, meta, chunk, need_h, need_w)
    return LinearJSD(loss, div, None if labels is None else logps)


def linear_generalized_jsd_reference(student_hidden, student_weight, teacher_hidden, teacher_weight, weights, *,
                                     beta: float = 0.5, temperature: float = 1.0, labels=None, label_weights=None,
                                     student_transpose_y: bool = False,
                                     teacher_transpose_y: bool = False) -> LinearJSD:
    """Full (M, V) logits of both heads, ``generalized_jsd_per_token`` and a log-softmax gather: the path the
    chunked one replaces (autograd for the gradients)."""
    from alignment.algorithms.distill import generalized_jsd_per_token
    from alignment.algorithms.utils import log_softmax

    zs = paddle.matmul(student_hidden, student_weight, transpose_y=student_transpose_y)
    with paddle.no_grad():
        zt = paddle.matmul(teacher_hidden, teacher_weight, transpose_y=teacher_transpose_y)
    div = generalized_jsd_per_token(zs.unsqueeze(0), zt.unsqueeze(0), beta=beta, temperature=temperature)[0]
    weights = weights.astype(div.dtype)
    loss = (weights * div).sum()
    logps = None
    if labels is not None:
        logps = paddle.take_along_axis(log_softmax(zs / temperature), labels.astype("int64").unsqueeze(-1),
                                       axis=-1).squeeze(-1)
        loss = loss - (label_weights.astype(div.dtype) * logps).sum()
        logps = logps.detach()
    return LinearJSD(loss, div.detach(), logps)

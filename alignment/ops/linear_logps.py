"""Chunked LM head + completion log-probs: log p(label) of ``hidden @ W`` without ever holding the full
(N, L, V) logits (the Liger-Kernel approach, arXiv 2410.10989, "fused linear cross entropy").

    logps = linear_completion_logps(hidden, weight, labels, transpose_y=False, temperature=1.0)
    logps, entropy = linear_completion_logps(hidden, weight, labels, with_entropy=True, offset=P - 1)

    hidden  (N, L, H) float32   the decoder's final hidden states (after the final norm)
    weight  (H, V) (transpose_y=False, PaddleNLP's untied LM head) or (V, H) (transpose_y=True, tied)
    labels  (N, T) int64        offset + T <= L; ``labels[:, t]`` is scored by position offset + t (a causal
                                LM passes ``input_ids[:, 1:]`` with offset 0, a response window
                                ``sequences[:, P:P + R]`` with offset P - 1), -100 / negative ids on ignored
                                positions
    returns (N, T) float32      0 on ignored positions; with ``with_entropy`` also the entropy (N, T) of
                                softmax(logits / T) (0 on ignored positions)

Forward: the valid rows (label >= 0) are gathered, then processed ``chunk_rows`` at a time: the chunk's
logits (chunk, V) come from one matmul and go straight into the fused log-prob operator
(``fused_logps``); only (N, T) log-probs are kept. Backward (a ``PyLayer``): the chunk's logits are
recomputed (one more matmul per chunk, the price of not storing them), the fused operator's backward
gives d logits = (1[label] - softmax) * g / T, and d hidden = d logits @ W^T, d W = hidden^T @ d logits are
accumulated chunk by chunk. Peak extra memory: two (chunk_rows, V) tensors instead of (N, L, V) logits,
their (N, L, V) gradient and the softmax of the reference path.

Entropy (PPO / GRPO's entropy bonus and high-entropy token mask): the fused operator also returns
H = logsumexp(z') - sum_v p_v z'_v (z' = z / T) of each chunk, and its backward takes the entropy's
upstream gradient too: dz_v = (g_logp (1[v = label] - p_v) - g_H p_v (log p_v + H)) / T, so one recomputed
chunk gives the gradient of both outputs (an output that does not reach the loss counts as zero).

Liger computes the gradients already in the forward because its loss is a scalar; per-token log-probs
get an arbitrary upstream gradient (DPO weights chosen and rejected differently), so here the backward
recomputes instead. ``linear_completion_logps_reference`` is the plain ``matmul`` + ``completion_logps``.
"""

from __future__ import annotations

from typing import Optional

import paddle
from paddle.autograd import PyLayer

__all__ = ["linear_completion_logps", "linear_completion_logps_reference", "causal_lm_parts", "DEFAULT_CHUNK_BYTES"]

DEFAULT_CHUNK_BYTES = 32 << 20  # logits of one chunk: 32 MiB (262 rows of a 32000-token vocabulary)


_CAUSAL_LMS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


def causal_lm_parts(model):
    """(causal LM, its decoder) of a PaddleNLP Llama/Qwen2 causal LM, itself or under a LoRA/PEFT wrapper
    (``.model``); None for anything else (a DataParallel or sharding wrapper, another architecture), so that
    callers which run the decoder and the LM head themselves never bypass a wrapper's own forward."""
    for _ in range(3):
        if model is None:
            return None
        name = type(model).__name__
        if name in _CAUSAL_LMS:
            return model, getattr(model, _CAUSAL_LMS[name])
        model = getattr(model, "model", None)
    return None


def _logits(h: paddle.Tensor, weight: paddle.Tensor, transpose_y: bool) -> paddle.Tensor:
    return paddle.matmul(h, weight, transpose_y=transpose_y)


def _chunk_logps(lib, logits, labels, scale, threads, with_entropy=False):
    """(logps, entropy) of one chunk's rows (entropy None unless asked)."""
    (logps, entropy, _) = lib.call("fused_logps", logits.unsqueeze(0), labels.unsqueeze(0), scale,
                                   bool(with_entropy), threads, 0)
    return logps.squeeze(0), (entropy.squeeze(0) if with_entropy else None)


def _concat(parts):
    return paddle.concat(parts) if len(parts) > 1 else parts[0]


class _LinearLogps(PyLayer):
    """(rows, H) hidden x LM head -> (rows,) log-probs (and entropies), chunk by chunk; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, transpose_y, scale, chunk, lib, threads, with_entropy):
        with paddle.no_grad():
            parts = [
                _chunk_logps(lib, _logits(hidden[s : s + chunk], weight, transpose_y), labels[s : s + chunk], scale,
                             threads, with_entropy)
                for s in range(0, hidden.shape[0], chunk)
            ]
        ctx.save_for_backward(hidden, weight, labels)
        ctx.meta = (transpose_y, scale, chunk, lib, threads, with_entropy)
        logps = _concat([lp for lp, _ in parts])
        if not with_entropy:
            return logps
        return logps, _concat([ent for _, ent in parts])

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy=None):
        hidden, weight, labels = ctx.saved_tensor()
        transpose_y, scale, chunk, lib, threads, with_entropy = ctx.meta
        if not with_entropy:
            grad_entropy = None
        need_h, need_w = not hidden.stop_gradient, not weight.stop_gradient
        grad_h = paddle.zeros_like(hidden) if need_h else None
        grad_w = paddle.zeros_like(weight) if need_w else None
        if grad_logps is None and grad_entropy is None:
            return grad_h, grad_w
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s : s + chunk]
            with paddle.no_grad():
                z = _logits(h, weight, transpose_y)
            z.stop_gradient = False
            with paddle.enable_grad():
                lp, ent = _chunk_logps(lib, z, labels[s : s + chunk], scale, threads, grad_entropy is not None)
                outs, grads = [], []
                for out, g in ((lp, grad_logps), (ent, grad_entropy)):
                    if g is not None:
                        outs.append(out)
                        grads.append(g[s : s + chunk])
                (dz,) = paddle.grad(outs, [z], grad_outputs=grads)
            with paddle.no_grad():
                if need_h:  # d hidden = dz @ W^T  (W: (H, V)) or dz @ W  (W: (V, H))
                    grad_h[s : s + chunk] = paddle.matmul(dz, weight, transpose_y=not transpose_y)
                if need_w:  # d W = h^T @ dz  (H, V)  or dz^T @ h  (V, H); in place: one (H, V) buffer
                    grad_w.add_(paddle.matmul(dz, h, transpose_x=True) if transpose_y
                                else paddle.matmul(h, dz, transpose_x=True))
            del z, lp, ent, dz
        return grad_h, grad_w


def linear_completion_logps_reference(hidden, weight, labels, *, transpose_y: bool = False,
                                      temperature: float = 1.0, with_entropy: bool = False, offset: int = 0):
    """Full logits (N, L, V), then ``completion_logps_reference``: the path the chunked one replaces."""
    from .logps import completion_logps_reference

    logps, entropy = completion_logps_reference(_logits(hidden, weight, transpose_y), labels,
                                                with_entropy=with_entropy, temperature=temperature, offset=offset)
    return (logps, entropy) if with_entropy else logps


def linear_completion_logps(hidden, weight, labels, *, transpose_y: bool = False, temperature: float = 1.0,
                            with_entropy: bool = False, offset: int = 0, chunk_rows: Optional[int] = None,
                            use_fusemt: Optional[bool] = None):
    """Per-token log-probs of ``labels`` under ``hidden @ weight`` (and, with ``with_entropy``, the per-token
    entropy of softmax(logits / temperature)); ``labels[:, t]`` is scored by ``hidden[:, offset + t]``. Only
    the scored rows (label in [0, V)) are gathered and multiplied by the head; see the module docstring."""
    from . import num_threads
    from .logps import _library

    if (hidden.ndim != 3 or labels.ndim != 2 or labels.shape[0] != hidden.shape[0] or offset < 0
            or offset + labels.shape[1] > hidden.shape[1]):
        raise ValueError(f"linear_completion_logps: hidden (N, L, H) and labels (N, T) with offset + T <= L, got "
                         f"{hidden.shape}, {labels.shape} and offset {offset}")
    if temperature <= 0:
        raise ValueError(f"linear_completion_logps: temperature must be > 0, got {temperature}")
    lib = _library(hidden, use_fusemt) if hidden.dtype == paddle.float32 and weight.dtype == paddle.float32 else None
    if lib is None:
        return linear_completion_logps_reference(hidden, weight, labels, transpose_y=transpose_y,
                                                 temperature=temperature, with_entropy=with_entropy, offset=offset)
    n, t = labels.shape
    length, width = hidden.shape[1], hidden.shape[-1]
    vocab = weight.shape[0] if transpose_y else weight.shape[1]
    flat_labels = labels.astype("int64").reshape([-1])
    valid = paddle.nonzero((flat_labels >= 0) & (flat_labels < vocab)).squeeze(-1)  # only scored rows
    if valid.shape[0] == 0:
        zero = paddle.zeros([n, t], dtype="float32") + 0.0 * hidden.sum()  # keep the graph (zero gradient)
        return (zero, zero.clone()) if with_entropy else zero
    # row i * T + j of the labels is scored by hidden row i * L + offset + j: gathered without slicing hidden
    rows = paddle.index_select(hidden.reshape([n * length, width]), (valid // t) * length + offset + valid % t)
    chunk = chunk_rows or max(1, DEFAULT_CHUNK_BYTES // (4 * vocab))
    out = _LinearLogps.apply(rows, weight, paddle.index_select(flat_labels, valid), bool(transpose_y),
                             1.0 / float(temperature), int(chunk), lib, num_threads(), bool(with_entropy))
    zeros = paddle.zeros([n * t], dtype="float32")
    if not with_entropy:
        return paddle.scatter(zeros, valid, out).reshape([n, t])
    logps, entropy = out
    return (paddle.scatter(zeros, valid, logps).reshape([n, t]),
            paddle.scatter(zeros, valid, entropy).reshape([n, t]))

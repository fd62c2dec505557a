"""Fused completion log-probs: per-token log p(label) and entropy of softmax(logits / T) in one pass.

    logps, entropy = completion_logps(logits, labels, mask, with_entropy=True, temperature=0.7)

logits (N, L, V) float; labels (N, T) int64 with offset + T <= L: ``labels[:, t]`` is scored by
``logits[:, offset + t]``, so a causal LM's ``labels[:, 1:]`` goes with the unsliced logits (T = L - 1,
offset 0) and a response window with ``offset = P - 1``: the strided copy of ``logits[:, :-1]`` (or of
the window) and its backward are never made. mask (N, T) optional; positions with mask 0 or a
negative label are ignored: their log-prob and entropy are 0 and they get no gradient. Returns
(N, T) tensors in float32 (float64 for float64 logits) and None for the entropy unless asked.

    logp_t = z'_t[label_t] - logsumexp(z'_t),   H_t = logsumexp(z'_t) - sum_v softmax(z'_t)_v z'_t,v,
    z' = z / T;  backward  dz_v = (g_logp (1[v = label] - p_v) - g_H p_v (log p_v + H)) / T

The fused operator (``csrc/logps_op.cc``, CPU and CUDA) holds only the gradient in the backward: the
reference (``completion_logps_reference``) builds the softmax (N, T, V) for it, as autograd of
``logsumexp`` does. The formulation -- never materialise log_softmax, recompute p from the saved
logsumexp in the backward -- is the one of fused cross-entropy kernels (Liger Kernel, arXiv
2410.10989; Megatron-LM's vocab-parallel cross-entropy, arXiv 1909.08053).
"""

from __future__ import annotations

from typing import Optional, Tuple

import paddle

__all__ = ["completion_logps", "completion_logps_reference", "fused_applies", "install_logps_hook"]


def _valid_labels(labels: paddle.Tensor, mask: Optional[paddle.Tensor]) -> paddle.Tensor:
    labels = labels.astype("int64")
    if mask is not None:
        labels = paddle.where(mask.astype("bool"), labels, paddle.full_like(labels, -1))
    return labels


def _float_dtype(logits: paddle.Tensor) -> str:
    return "float64" if logits.dtype == paddle.float64 else "float32"


def completion_logps_reference(
    logits: paddle.Tensor,
    labels: paddle.Tensor,
    mask: Optional[paddle.Tensor] = None,
    *,
    with_entropy: bool = False,
    temperature: float = 1.0,
    offset: int = 0,
) -> Tuple[paddle.Tensor, Optional[paddle.Tensor]]:
    """Pure-Paddle twin of ``completion_logps`` (same arguments, same results)."""
    labels = _valid_labels(labels, mask)
    z = logits[:, offset : offset + labels.shape[1]].astype(_float_dtype(logits))
    if temperature != 1.0:
        z = z / temperature
    valid = (labels >= 0) & (labels < z.shape[-1])
    weight = valid.astype(z.dtype)
    safe = paddle.where(valid, labels, paddle.zeros_like(labels))
    lse = paddle.logsumexp(z, axis=-1)
    logps = (paddle.take_along_axis(z, safe.unsqueeze(-1), axis=-1).squeeze(-1) - lse) * weight
    entropy = None
    if with_entropy:
        p = paddle.exp(z - lse.unsqueeze(-1))
        entropy = (lse - (p * z).sum(axis=-1)) * weight
    return logps, entropy


def _library(logits: paddle.Tensor, use_fusemt: Optional[bool]):
    """The operator library when the fused path applies to ``logits``, else None."""
    from . import fusemt_requested
    from ._build import load_ops

    if not (fusemt_requested() if use_fusemt is None else use_fusemt):
        return None
    if logits.ndim != 3 or not paddle.in_dynamic_mode():
        return None
    if not (logits.place.is_cpu_place() or (logits.place.is_gpu_place() and paddle.is_compiled_with_cuda())):
        return None
    return load_ops()


def fused_applies(logits: paddle.Tensor) -> bool:
    """True when ``completion_logps`` would run the fused operator on ``logits`` (switch on, library built,
    (N, L, V) on CPU or CUDA, not a vocabulary-parallel shard)."""
    from alignment.algorithms.utils import get_vocab_shard

    shard = get_vocab_shard()
    if shard is not None and shard.local_size != shard.full_size and logits.shape[-1] == shard.local_size:
        return False
    return _library(logits, None) is not None


def completion_logps(
    logits: paddle.Tensor,
    labels: paddle.Tensor,
    mask: Optional[paddle.Tensor] = None,
    *,
    with_entropy: bool = False,
    temperature: float = 1.0,
    offset: int = 0,
    use_fusemt: Optional[bool] = None,
) -> Tuple[paddle.Tensor, Optional[paddle.Tensor]]:
    """Per-token log-probs (and entropy) of ``labels`` under ``logits``; see the module docstring.

    ``use_fusemt``: None follows ``alignment.ops.set_use_fusemt``; False forces the reference.
    """
    if temperature <= 0:
        raise ValueError(f"completion_logps: temperature must be > 0, got {temperature}")
    if (labels.ndim != 2 or logits.ndim != 3 or labels.shape[0] != logits.shape[0] or offset < 0
            or offset + labels.shape[1] > logits.shape[1]):
        raise ValueError(
            f"completion_logps: logits must be (N, L, V) and labels (N, T) with offset + T <= L, got {logits.shape}, "
            f"{labels.shape} and offset {offset}"
        )
    lib = _library(logits, use_fusemt)
    if lib is None:
        return completion_logps_reference(logits, labels, mask, with_entropy=with_entropy, temperature=temperature,
                                          offset=offset)
    from . import num_threads

    z = logits if logits.dtype in (paddle.float32, paddle.float64) else logits.astype("float32")
    logps, entropy, _ = lib.call(
        "fused_logps", z, _valid_labels(labels, mask), 1.0 / float(temperature), bool(with_entropy), num_threads(),
        int(offset),
    )
    return logps, (entropy if with_entropy else None)


class _UtilsHook:
    """What ``alignment.algorithms.utils`` calls before its reference path (None = not applicable)."""

    @staticmethod
    def gather(logits: paddle.Tensor, labels: paddle.Tensor, temperature: float) -> Optional[paddle.Tensor]:
        if logits.ndim == 2 and labels.ndim == 1:  # (B, V) rows
            out = _UtilsHook.gather(logits.unsqueeze(1), labels.unsqueeze(1), temperature)
            return None if out is None else out.squeeze(1)
        if logits.ndim != 3 or labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
            return None
        if labels.shape[1] > logits.shape[1] or _library(logits, None) is None or temperature <= 0:
            return None
        return completion_logps(logits, labels, temperature=temperature)[0]

    @staticmethod
    def entropy(logits: paddle.Tensor) -> Optional[paddle.Tensor]:
        if logits.ndim != 3 or _library(logits, None) is None:
            return None
        labels = paddle.zeros(logits.shape[:2], dtype="int64")
        return completion_logps(logits, labels, with_entropy=True)[1]


def install_logps_hook() -> None:
    """Route ``gather_logps`` / ``entropy_from_logits`` of ``alignment.algorithms.utils`` through here."""
    from alignment.algorithms import utils

    utils.set_fused_logps(_UtilsHook)

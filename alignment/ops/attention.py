"""Decode attention: one new query per row over a preallocated KV cache, the step's K/V appended in place.

    out = decode_attention(q, k, v, cos, sin, positions, key_mask, cache_k, cache_v, t, scale)

    q                 (B, Hq*D)   float32  the step's query projection (before rotary)
    k, v              (B, Hkv*D)  float32  the step's key / value projections (before rotary)
    cos, sin          (S, D)      float32  the model's rotary tables (rotate-half pairing: Llama, Qwen2)
    positions         (B,)        int64    rotary position of every row's new token
    key_mask          (B, Smax)   int64    1 on the cache columns a row attends to (column t included)
    cache_k, cache_v  (B, Smax, Hkv, D)    written in place at column ``t``; columns < t hold the past
    returns           (B, Hq*D)   float32

Semantics (the same in ``decode_attention_reference``, the CPU kernel ``csrc/kernels/attention_cpu.h`` and
the CUDA kernel ``csrc/kernels/attention_cuda.cuh``): the new key is rotated and stored with its value at
column t; the rotated query times ``scale`` is scored against the keys of the columns j <= t with
key_mask 1 (query head h reads kv head h // (Hq / Hkv): grouped-query attention, arXiv 2305.13245);
softmax over those columns; the weighted sum of their values. A row with no valid column gets zeros.
This is one decoding step of PaddleNLP's LlamaAttention / Qwen2Attention (rotary, concat with the past,
``q / sqrt(D) @ k^T`` plus the additive mask, float32 softmax, ``@ v``) without growing the cache.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

__all__ = ["decode_attention", "decode_attention_reference"]


def _rope(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
    half = x.shape[-1] // 2
    rotated = paddle.concat([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def decode_attention_reference(q, k, v, cos, sin, positions, key_mask, cache_k, cache_v, t: int, scale: float):
    """Pure-Paddle twin of ``decode_attention`` (same arguments, same in-place cache update)."""
    b, _, hkv, d = cache_k.shape
    hq = q.shape[1] // d
    c = paddle.index_select(cos, positions, axis=0).unsqueeze(1)  # (B, 1, D)
    s = paddle.index_select(sin, positions, axis=0).unsqueeze(1)
    cache_k[:, t] = _rope(k.reshape([b, hkv, d]), c, s)
    cache_v[:, t] = v.reshape([b, hkv, d])
    qr = _rope(q.reshape([b, hq, d]), c, s) * scale
    keys, values = cache_k[:, : t + 1], cache_v[:, : t + 1]  # (B, t+1, Hkv, D)
    if hq != hkv:
        keys = paddle.repeat_interleave(keys, hq // hkv, axis=2)
        values = paddle.repeat_interleave(values, hq // hkv, axis=2)
    scores = paddle.einsum("bhd,bjhd->bhj", qr, keys)
    valid = key_mask[:, : t + 1].astype("bool").unsqueeze(1)  # (B, 1, t+1)
    scores = paddle.where(valid, scores, paddle.full_like(scores, float("-inf")))
    probs = F.softmax(scores, axis=-1)
    probs = paddle.where(valid, probs, paddle.zeros_like(probs))  # all-masked rows: 0 instead of NaN
    return paddle.einsum("bhj,bjhd->bhd", probs, values).reshape([b, hq * d])


def decode_attention(q, k, v, cos, sin, positions, key_mask, cache_k, cache_v, t: int, scale: float,
                     *, use_fusemt=None):
    """One decoding step of attention; see the module docstring. ``use_fusemt=None`` follows the switch."""
    from .logps import _library

    lib = None
    if q.dtype == paddle.float32 and cache_k.dtype == paddle.float32 and cache_k.shape[-1] <= 256:
        lib = _library(q.unsqueeze(1), use_fusemt)
    if lib is None:
        return decode_attention_reference(q, k, v, cos, sin, positions, key_mask, cache_k, cache_v, t, scale)
    from . import num_threads

    out, _, _ = lib.call("decode_attention", q, k, v, cos, sin, positions, key_mask, cache_k, cache_v,
                         int(cache_k.shape[2]), int(t), float(scale), num_threads())
    return out

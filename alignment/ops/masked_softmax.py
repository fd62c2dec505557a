"""Fused scaled + masked softmax for the attention of training, the attention core built on it, and its
installation into Llama / Qwen2.

    p = fused_masked_softmax(scores, mask, scale, causal=False)       # fused when built, else the reference
    out = attention_core(q, k, v, attention_mask, scale)             # matmul -> fused softmax -> matmul

Semantics (the same in ``masked_softmax_reference``, the CPU kernel ``csrc/kernels/masked_softmax_cpu.h`` and
the CUDA kernel ``csrc/kernels/masked_softmax_cuda.cuh``), for scores S (B, H, Lq, Lk) and an additive mask M
(B, 1, Lq, Lk) or (1, 1, Lq, Lk) or None: an entry (i, j) is *masked* when ``causal`` and j > i + (Lk - Lq)
(the last query sees every key: the queries are the last Lq positions), or when M_ij <= finfo(dtype).min
(PaddleNLP's mask value, or -inf). Over the unmasked entries of a row, the max-shifted softmax

    x_j = S_ij * scale + M_ij,        P_ij = exp(x_j - max_k x_k) / sum_k exp(x_k - max_k x_k)

with P = 0 on masked entries, and a row whose every entry is masked is all zeros (the plain composition gives
1/Lk there, or NaN with -inf). The backward uses the softmax Jacobian dP_j/dx_k = P_j (delta_jk - P_k):

    dS_ij = scale * P_ij * ( dP_ij - sum_k dP_ik P_ik )

from the saved P (nothing recomputed). The operator skips the masked head and tail of every row (the causal
end; leading / trailing masked mask columns: left / right padding) in both passes.

``attention_core`` is PaddleNLP's non-flash ``scaled_dot_product_attention`` (llama/modeling.py, qwen2/modeling.py:
``softmax(q / sqrt(D) @ k^T + mask) @ v``, Vaswani et al., arXiv 1706.03762) with the scale moved into the fused
softmax, grouped-query attention (arXiv 2305.13245) by repeating kv heads as PaddleNLP's ``repeat_kv`` does.

``install_attention()`` (called by ``alignment.models`` on import) replaces the module-level
``scaled_dot_product_attention`` of ``paddlenlp.transformers.llama.modeling`` and ``qwen2.modeling`` by a
dispatcher with the same signature. ``LlamaAttention`` / ``Qwen2Attention`` read that name when they are built
(``self.attn_func``; ``functools.partial(..., skip_recompute=True)`` under refined recompute), so every layer built
afterwards - the pipeline layers ``LlamaDecoderLayerPipe`` / ``Qwen2DecoderLayerPipe`` and the rollout's prefill
(both call the same attention layers) included - goes through it; layers built before keep PaddleNLP's function.
The dispatcher takes ``attention_core`` only where ``attention_applies`` (see there) and PaddleNLP's function
otherwise, and after ``uninstall_attention()`` always PaddleNLP's.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import paddle

__all__ = ["fused_masked_softmax", "masked_softmax_reference", "attention_core", "attention_core_reference",
           "attention_applies", "install_attention", "uninstall_attention", "attention_installed", "CALLS"]

_FUSED_DTYPES = (paddle.float32, paddle.float64)
_ORIGINAL: Dict[str, Callable] = {}  # module name -> PaddleNLP's scaled_dot_product_attention
CALLS = {"fused_masked_softmax": 0, "attention_core": 0}  # operator runs (tests prove the fused path ran)


def _check_mask(scores: paddle.Tensor, mask: Optional[paddle.Tensor]) -> Optional[paddle.Tensor]:
    if mask is None:
        return None
    b, _, lq, lk = scores.shape
    if mask.shape[-2:] != [lq, lk] or int(mask.numel()) not in (lq * lk, b * lq * lk):
        raise ValueError(f"masked softmax: the mask {mask.shape} must be (B, 1, Lq, Lk) or (1, 1, Lq, Lk) for "
                         f"scores {scores.shape}")
    return mask.reshape([-1, 1, lq, lk])


def masked_softmax_reference(scores: paddle.Tensor, mask: Optional[paddle.Tensor] = None, scale: float = 1.0,
                             causal: bool = False) -> paddle.Tensor:
    """Pure-Paddle twin of ``fused_masked_softmax`` (module docstring): softmax in float32 (float64 for float64)."""
    mask = _check_mask(scores, mask)
    compute = paddle.float64 if scores.dtype == paddle.float64 else paddle.float32
    x = scores.astype(compute) * scale
    _, _, lq, lk = scores.shape
    valid = None
    if mask is not None:
        valid = mask > paddle.finfo(mask.dtype).min  # the mask's own finfo.min (its dtype is the scores' for the op)
        x = x + mask.astype(compute)
    if causal:
        tri = paddle.tril(paddle.ones([lq, lk], dtype="bool"), diagonal=lk - lq).reshape([1, 1, lq, lk])
        valid = tri if valid is None else paddle.logical_and(valid, tri)
    if valid is None:
        return paddle.nn.functional.softmax(x, axis=-1).astype(scores.dtype)
    valid = paddle.broadcast_to(valid, x.shape)
    x = paddle.where(valid, x, paddle.full_like(x, float("-inf")))
    p = paddle.nn.functional.softmax(x, axis=-1)
    p = paddle.where(valid, p, paddle.zeros_like(p))  # fully masked rows: zeros, not NaN
    return p.astype(scores.dtype)


def _library(scores: paddle.Tensor, mask: Optional[paddle.Tensor], use_fusemt: Optional[bool]):
    from . import fusemt_requested
    from ._build import load_ops

    if not (fusemt_requested() if use_fusemt is None else use_fusemt):
        return None
    if not paddle.in_dynamic_mode() or scores.ndim != 4 or scores.dtype not in _FUSED_DTYPES:
        return None
    if mask is not None and (mask.dtype != scores.dtype or mask.place != scores.place):
        return None
    if not (scores.place.is_cpu_place() or (scores.place.is_gpu_place() and paddle.is_compiled_with_cuda())):
        return None
    return load_ops()


def fused_masked_softmax(scores: paddle.Tensor, mask: Optional[paddle.Tensor] = None, scale: float = 1.0,
                         causal: bool = False, *, use_fusemt: Optional[bool] = None) -> paddle.Tensor:
    """softmax(scores * scale + mask) over the last axis of ``scores`` (B, H, Lq, Lk); see the module docstring.

    ``mask``: additive, (B, 1, Lq, Lk) or (1, 1, Lq, Lk) of the scores' dtype, or None; it gets no gradient.
    ``use_fusemt``: None follows ``alignment.ops.set_use_fusemt``; False forces the reference. Other dtypes, a
    static graph or an unbuilt library take ``masked_softmax_reference``.
    """
    mask = _check_mask(scores, mask)
    lib = _library(scores, mask, use_fusemt)
    if lib is None:
        return masked_softmax_reference(scores, mask, scale, causal)
    from . import num_threads

    if mask is None:
        mask_in = paddle.empty([0], dtype=scores.dtype)
        if not scores.place.is_cpu_place():
            mask_in = mask_in.to(scores.place)
    else:
        mask_in = mask.detach() if not mask.stop_gradient else mask
    CALLS["fused_masked_softmax"] += 1
    out = lib.call("fused_masked_softmax", scores, mask_in, float(scale), bool(causal), num_threads())
    return out[0] if isinstance(out, (list, tuple)) else out


def _repeat_kv(x: paddle.Tensor, n_rep: int) -> paddle.Tensor:
    """(B, L, Hkv, D) -> (B, L, Hkv * n_rep, D), kv head h serving query heads h * n_rep ... (PaddleNLP's repeat_kv)."""
    if n_rep == 1:
        return x
    b, l, hkv, d = x.shape
    return x.unsqueeze(-2).tile([1, 1, 1, n_rep, 1]).reshape([b, l, hkv * n_rep, d])


def _core(q, k, v, attention_mask, scale, causal, softmax):
    b, lq, hq, d = q.shape
    hkv = k.shape[2]
    if hq % hkv:
        raise ValueError(f"attention_core: {hq} query heads are not a multiple of {hkv} kv heads")
    k, v = _repeat_kv(k, hq // hkv), _repeat_kv(v, hq // hkv)
    qt, kt, vt = (paddle.transpose(t, [0, 2, 1, 3]) for t in (q, k, v))  # (B, H, L, D)
    scores = paddle.matmul(qt, kt, transpose_y=True)
    p = softmax(scores, attention_mask, scale, causal)
    out = paddle.matmul(p, vt).transpose([0, 2, 1, 3])
    return out.reshape([b, lq, hq * d])


def attention_core_reference(q, k, v, attention_mask=None, scale: Optional[float] = None, causal: bool = False):
    """Pure-Paddle twin of ``attention_core``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _core(q, k, v, attention_mask, scale, causal, masked_softmax_reference)


def attention_core(q, k, v, attention_mask=None, scale: Optional[float] = None, causal: bool = False, *,
                   use_fusemt: Optional[bool] = None) -> paddle.Tensor:
    """Attention of q (B, Lq, Hq, D), k / v (B, Lk, Hkv, D) with Hq a multiple of Hkv; returns (B, Lq, Hq * D).

    ``softmax(q @ k^T * scale + attention_mask) @ v`` per head, the masked softmax fused (module docstring);
    ``attention_mask`` additive (B, 1, Lq, Lk) / (1, 1, Lq, Lk) or None; ``scale`` defaults to 1 / sqrt(D).
    The two matmuls are Paddle's (MKL / cuBLAS). ``use_fusemt=False`` (or an unbuilt library) is the reference.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    def softmax(s, m, sc, c):
        return fused_masked_softmax(s, m, sc, c, use_fusemt=use_fusemt)

    CALLS["attention_core"] += 1
    return _core(q, k, v, attention_mask, scale, causal, softmax)


# ----------------------------------------------------------------------------------------------------------------
# installation into PaddleNLP's Llama / Qwen2


def attention_applies(query_states, key_states, value_states, attention_mask, *, config, output_attentions,
                      flash_attention=None, alibi=None, attn_mask_startend_row_indices=None, sequence_parallel=False,
                      reshard_layer=None, dropout=0.0, training=False) -> bool:
    """Whether the installed ``scaled_dot_product_attention`` runs ``attention_core`` for this call.

    Only where it computes what PaddleNLP's non-flash branch computes: the switch on and the library built, a
    dynamic graph, no ``auto_cast`` (PaddleNLP's matmuls would run in 16 bits), float32 q / k / v of one head
    count (PaddleNLP repeats kv heads before the call), not flash attention, no alibi, no sequence / context /
    sep parallelism (no reshard layer), ``output_attentions`` False, no ``attn_mask_startend_row_indices``, no
    attention dropout in training, and a float32 additive mask of B * Lq * Lk values (None only when Lq == Lk:
    PaddleNLP's triangle mask is then the causal flag). Fully masked query rows (left padding) give zeros where
    PaddleNLP gives the mean of every value row; no other row sees them.
    """
    if config.use_flash_attention and flash_attention:
        return False
    if alibi is not None or attn_mask_startend_row_indices is not None or sequence_parallel or output_attentions:
        return False
    if reshard_layer is not None or getattr(config, "context_parallel_degree", 1) > 1:
        return False
    if training and dropout > 0:
        return False
    if not paddle.in_dynamic_mode() or paddle.amp.is_autocast_enabled():
        return False
    if any(t.dtype != paddle.float32 or t.ndim != 4 for t in (query_states, key_states, value_states)):
        return False
    b, lq, h, _ = query_states.shape
    lk = key_states.shape[1]
    if key_states.shape[2] != h or value_states.shape[2] != h:
        return False
    if attention_mask is None:
        if lq != lk:
            return False
    elif attention_mask.dtype != paddle.float32 or int(attention_mask.numel()) != b * lq * lk:
        return False
    return _library(query_states, attention_mask, None) is not None


def _llama_dispatch(original: Callable, module) -> Callable:
    def scaled_dot_product_attention(query_states, config, key_states, value_states, attention_mask,
                                     output_attentions, alibi=None, attn_mask_startend_row_indices=None,
                                     sequence_parallel=False, reshard_layer=None, npu_is_casual=False,
                                     skip_recompute=False):
        if attention_installed() and attention_applies(
                query_states, key_states, value_states, attention_mask, config=config,
                output_attentions=output_attentions, flash_attention=getattr(module, "flash_attention", None),
                alibi=alibi, attn_mask_startend_row_indices=attn_mask_startend_row_indices,
                sequence_parallel=sequence_parallel, reshard_layer=reshard_layer):
            return _installed_core(query_states, key_states, value_states, attention_mask)
        return original(query_states, config, key_states, value_states, attention_mask, output_attentions,
                        alibi=alibi, attn_mask_startend_row_indices=attn_mask_startend_row_indices,
                        sequence_parallel=sequence_parallel, reshard_layer=reshard_layer,
                        npu_is_casual=npu_is_casual, skip_recompute=skip_recompute)

    return scaled_dot_product_attention


def _qwen2_dispatch(original: Callable, module) -> Callable:
    def scaled_dot_product_attention(query_states, config, key_states, value_states, attention_mask,
                                     output_attentions, attn_mask_startend_row_indices=None, training=True,
                                     sequence_parallel=False, skip_recompute=False):
        if attention_installed() and attention_applies(
                query_states, key_states, value_states, attention_mask, config=config,
                output_attentions=output_attentions, flash_attention=getattr(module, "flash_attention", None),
                attn_mask_startend_row_indices=attn_mask_startend_row_indices, sequence_parallel=sequence_parallel,
                dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0), training=training):
            return _installed_core(query_states, key_states, value_states, attention_mask)
        return original(query_states, config, key_states, value_states, attention_mask, output_attentions,
                        attn_mask_startend_row_indices=attn_mask_startend_row_indices, training=training,
                        sequence_parallel=sequence_parallel, skip_recompute=skip_recompute)

    return scaled_dot_product_attention


def _installed_core(q, k, v, attention_mask):
    b, lq, _, d = q.shape
    lk = k.shape[1]
    if attention_mask is None:  # PaddleNLP's get_triangle_upper_mask (Lq == Lk here)
        return attention_core(q, k, v, None, 1.0 / math.sqrt(d), causal=True)
    return attention_core(q, k, v, attention_mask.reshape([b, 1, lq, lk]), 1.0 / math.sqrt(d))


_MODULES = {"paddlenlp.transformers.llama.modeling": _llama_dispatch,
            "paddlenlp.transformers.qwen2.modeling": _qwen2_dispatch}


def install_attention() -> None:
    """Give PaddleNLP's Llama / Qwen2 modeling modules the dispatching attention function (idempotent)."""
    import importlib

    for name, make in _MODULES.items():
        if name in _ORIGINAL:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        original = module.scaled_dot_product_attention
        _ORIGINAL[name] = original
        dispatch = make(original, module)
        dispatch.__doc__ = original.__doc__
        dispatch._alignment_original = original  # noqa: SLF001 - marks the installed function
        module.scaled_dot_product_attention = dispatch


def uninstall_attention() -> None:
    """Put PaddleNLP's functions back; layers built while installed then call PaddleNLP's function too."""
    import importlib

    for name, original in list(_ORIGINAL.items()):
        importlib.import_module(name).scaled_dot_product_attention = original
        del _ORIGINAL[name]


def attention_installed() -> bool:
    return bool(_ORIGINAL)

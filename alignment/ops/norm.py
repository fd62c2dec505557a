"""Fused RMSNorm over the last axis, forward and backward, and its installation into Llama / Qwen2.

    y = rms_norm(x, weight, eps)            # fused when available, else rms_norm_reference

RMSNorm (Zhang & Sennrich, "Root Mean Square Layer Normalization", arXiv 1910.07467), over the last axis
of x (..., H) with a gain w (H):

    rstd = 1 / sqrt( (1/H) sum_h x_h^2 + eps ),      y_h = x_h * rstd * w_h

and its gradients, with xhat = x * rstd and g = dy * w (summed over every row r for dw):

    dx_h = rstd * ( g_h - xhat_h * (1/H) sum_k g_k xhat_k ),      dw_h = sum_r dy_rh * xhat_rh

The fused operator (``csrc/rms_norm_op.cc``, CPU and CUDA) makes one pass over a row for the forward and
one for the backward, saves ``rstd`` per row for the backward and reduces dw per thread before adding the
per-thread partials in a fixed order (deterministic for a given ``alignment.ops.num_threads()``). It takes
float32 (and float64) x with a weight of the same dtype; anything else (bf16 / fp16, mixed dtypes), a
static graph, another device, ``use_fusemt`` off or an unbuilt library take ``rms_norm_reference``.

``install_rms_norm()`` (called by ``alignment.models`` on import, so by every stage that loads a model)
replaces ``forward`` of PaddleNLP's ``LlamaRMSNorm`` and ``Qwen2RMSNorm`` classes - so every instance,
the pipeline stages' ``LlamaRMSNormPipe`` / ``Qwen2RMSNormPipe`` (which hold one) and the rollout's decoding
loop included - with one that calls the fused operator when ``rms_norm_applies`` and PaddleNLP's own
forward otherwise; ``uninstall_rms_norm()`` restores the classes.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import paddle

__all__ = ["rms_norm", "rms_norm_reference", "rms_norm_applies", "install_rms_norm", "uninstall_rms_norm",
           "rms_norm_installed"]

_FUSED_DTYPES = (paddle.float32, paddle.float64)
_ORIGINAL_FORWARD: Dict[type, Callable] = {}


def rms_norm_reference(x: paddle.Tensor, weight: paddle.Tensor, eps: float) -> paddle.Tensor:
    """Pure-Paddle RMSNorm with PaddleNLP's dtype rules: the statistics and the normalisation in float32
    (float64 for float64 x), the result cast to the weight's dtype when that is 16-bit, then times weight.
    ``x * x`` rather than ``pow(2)``: the same values, and Paddle's CPU ``pow`` (and its grad) is slow."""
    compute = paddle.float64 if x.dtype == paddle.float64 else paddle.float32
    xf = x if x.dtype == compute else x.astype(compute)
    variance = (xf * xf).mean(-1, keepdim=True)
    y = paddle.rsqrt(variance + eps) * xf
    if weight.dtype in (paddle.float16, paddle.bfloat16):
        y = y.astype(weight.dtype)
    return y * weight


def _library(x: paddle.Tensor, weight: paddle.Tensor, use_fusemt: Optional[bool]):
    """The operator library when the fused path applies to (x, weight), else None."""
    from . import fusemt_requested
    from ._build import load_ops

    if not (fusemt_requested() if use_fusemt is None else use_fusemt):
        return None
    if not paddle.in_dynamic_mode() or x.ndim < 1 or weight.ndim != 1 or x.shape[-1] != weight.shape[0]:
        return None
    if x.dtype not in _FUSED_DTYPES or weight.dtype != x.dtype or x.place != weight.place:
        return None
    if not (x.place.is_cpu_place() or (x.place.is_gpu_place() and paddle.is_compiled_with_cuda())):
        return None
    return load_ops()


def rms_norm(x: paddle.Tensor, weight: paddle.Tensor, eps: float, *,
             use_fusemt: Optional[bool] = None) -> paddle.Tensor:
    """RMSNorm of ``x`` (..., H) over the last axis with gain ``weight`` (H); see the module docstring.

    ``use_fusemt``: None follows ``alignment.ops.set_use_fusemt``; False forces the reference.
    """
    lib = _library(x, weight, use_fusemt)
    if lib is None:
        return rms_norm_reference(x, weight, eps)
    from . import num_threads

    y, _ = lib.call("fused_rms_norm_op", x, weight, float(eps), num_threads())
    return y


def rms_norm_applies(layer, hidden_states: paddle.Tensor) -> bool:
    """Whether the installed forward of a ``LlamaRMSNorm`` / ``Qwen2RMSNorm`` ``layer`` runs the fused op.

    Only where it computes what PaddleNLP's forward computes: the switch on and the library built, a dynamic
    graph, float32 input and weight (16-bit or mixed dtypes keep PaddleNLP's casts), no ``auto_cast`` (its
    final multiply would run in 16 bits under O2), not ``config.use_fused_rms_norm`` (the user asked for
    PaddleNLP's fused kernel) and not ``config.sequence_parallel`` (the sequence-parallel layout and the
    weight's gradient all-reduce hooks stay PaddleNLP's).
    """
    config = getattr(layer, "config", None)
    if getattr(config, "use_fused_rms_norm", False) or getattr(config, "sequence_parallel", False):
        return False
    weight = getattr(layer, "weight", None)
    if weight is None or hidden_states.dtype != paddle.float32 or weight.dtype != paddle.float32:
        return False
    if paddle.amp.is_autocast_enabled():
        return False
    return _library(hidden_states, weight, None) is not None


def _make_forward(original: Callable) -> Callable:
    def forward(self, hidden_states):
        if rms_norm_applies(self, hidden_states):
            return rms_norm(hidden_states, self.weight, self.variance_epsilon)
        return original(self, hidden_states)

    forward.__name__ = original.__name__
    forward.__qualname__ = getattr(original, "__qualname__", "forward")
    forward.__doc__ = original.__doc__
    forward._alignment_original = original  # noqa: SLF001 - marks the installed forward
    return forward


def _norm_classes():
    classes = []
    try:
        from paddlenlp.transformers.llama.modeling import LlamaRMSNorm

        classes.append(LlamaRMSNorm)
    except ImportError:
        pass
    try:
        from paddlenlp.transformers.qwen2.modeling import Qwen2RMSNorm

        classes.append(Qwen2RMSNorm)
    except ImportError:
        pass
    return classes


def install_rms_norm() -> None:
    """Give PaddleNLP's ``LlamaRMSNorm`` and ``Qwen2RMSNorm`` the fused forward (idempotent)."""
    for cls in _norm_classes():
        if cls in _ORIGINAL_FORWARD:
            continue
        original = cls.__dict__["forward"]
        _ORIGINAL_FORWARD[cls] = original
        cls.forward = _make_forward(original)


def uninstall_rms_norm() -> None:
    """Put PaddleNLP's own ``forward`` back on the classes ``install_rms_norm`` changed."""
    for cls, original in list(_ORIGINAL_FORWARD.items()):
        cls.forward = original
        del _ORIGINAL_FORWARD[cls]


def rms_norm_installed() -> bool:
    return bool(_ORIGINAL_FORWARD)

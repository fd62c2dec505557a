"""The per-step sampling function of the rollout, and the registry that lets a fused operator replace it.

One decoding step turns the last-position logits into the next token ids. Everything that happens
between the two (repetition penalty, temperature, top-k, top-p, greedy or multinomial choice) is one
function with one signature, ``SampleFn``::

    ids = sample_next_token(logits, generated, generated_mask=..., temperature=..., top_p=...,
                            top_k=..., repetition_penalty=..., do_sample=...)

    logits          (B, V) float   next-token logits of the last position (not yet divided by T)
    generated       (B, W) int64   the row's token buffer: prompt + response so far, then pads (the decode
                                   loop passes its preallocated full-width buffer)
    generated_mask  (B, W) int64   1 on real tokens, 0 on pads and not-yet-generated columns (never
                                   penalised); None = all 1
    frequency_penalty, presence_penalty (keywords, only passed when non-zero): logit -= count * f + p
                                   for every token seen (after the repetition penalty)
    returns         (B,)   int64   the chosen token ids

The generation loop looks the function up by name (``GenerationConfig.sampler``), so the fused
operators of ``alignment/ops`` register a faster implementation (``register_sampler("fused")``) and
the loop needs no change. ``"default"`` is the pure-Paddle reference every replacement must match
(greedy exactly; sampled in distribution). ``"fused"`` runs the sampling operator of ``csrc/``
(``alignment.ops.sample_tokens``: no vocabulary sort, one call per step) when the build succeeds and
``use_fusemt`` is on, and this reference otherwise.

Conventions (the same as PaddleNLP's / Hugging Face's logits processors):
* repetition penalty (CTRL, arXiv:1909.05858 §4.1): for every token already present in the row,
  logit / p if logit > 0 else logit * p; applied before temperature;
* temperature divides the logits; the experience and the loss divide by the same temperature, so the
  old log-probs are those of the distribution that was sampled (when top-k/top-p are off);
* top-k keeps the k largest logits (0 = off); top-p (nucleus, arXiv:1904.09751) keeps the smallest
  prefix of the sorted distribution whose mass reaches p (always at least one token);
* ``do_sample=False`` is greedy (argmax after the repetition penalty).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Protocol

import paddle
import paddle.nn.functional as F

__all__ = [
    "SampleFn",
    "register_sampler",
    "get_sampler",
    "available_samplers",
    "sample_next_token",
    "fused_sample_next_token",
    "apply_repetition_penalty",
    "top_k_top_p_filter",
]


class SampleFn(Protocol):
    def __call__(
        self,
        logits: paddle.Tensor,
        generated: paddle.Tensor,
        *,
        generated_mask: Optional[paddle.Tensor] = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        do_sample: bool = True,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
    ) -> paddle.Tensor: ...


_SAMPLERS: Dict[str, Callable] = {}


def register_sampler(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register a ``SampleFn`` under ``name`` (re-registering a name with another function fails)."""

    def deco(fn: Callable) -> Callable:
        if name in _SAMPLERS and _SAMPLERS[name] is not fn:
            raise ValueError(f"sampler '{name}' is already registered by {_SAMPLERS[name].__qualname__}")
        _SAMPLERS[name] = fn
        return fn

    return deco


def get_sampler(name: str) -> Callable:
    """The sampler registered as ``name``; an unknown name lists the valid ones."""
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; valid samplers: {', '.join(available_samplers())}")
    return _SAMPLERS[name]


def available_samplers() -> List[str]:
    return sorted(_SAMPLERS)


def apply_repetition_penalty(
    logits: paddle.Tensor, generated: paddle.Tensor, penalty: float, generated_mask: Optional[paddle.Tensor] = None
) -> paddle.Tensor:
    """CTRL repetition penalty on (B, V) ``logits`` for the tokens present in ``generated`` (B, t)."""
    if penalty == 1.0:
        return logits
    if penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
    weight = (
        paddle.ones(generated.shape, dtype=logits.dtype)
        if generated_mask is None
        else generated_mask.astype(logits.dtype)
    )
    counts = paddle.zeros_like(logits)
    counts = paddle.put_along_axis(counts, generated.astype("int64"), weight, axis=1, reduce="add")
    penalised = paddle.where(logits > 0, logits / penalty, logits * penalty)
    return paddle.where(counts > 0, penalised, logits)


def top_k_top_p_filter(logits: paddle.Tensor, top_k: int = 0, top_p: float = 1.0) -> paddle.Tensor:
    """Set the logits outside the top-k / nucleus to -inf. (B, V) -> (B, V)."""
    neg_inf = paddle.full_like(logits, float("-inf"))
    vocab = logits.shape[-1]
    if top_k and 0 < top_k < vocab:
        kth = paddle.topk(logits, k=top_k, axis=-1)[0][:, -1:]
        logits = paddle.where(logits < kth, neg_inf, logits)
    if top_p < 1.0:
        sorted_logits = paddle.sort(logits, axis=-1, descending=True)
        sorted_probs = F.softmax(sorted_logits, axis=-1)
        # mass strictly before each sorted token; keep while it is below top_p (the first token always stays)
        mass_before = paddle.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep = (mass_before < top_p).astype(logits.dtype)
        n_keep = paddle.clip(keep.sum(axis=-1, keepdim=True).astype("int64"), min=1)
        threshold = paddle.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
        logits = paddle.where(logits < threshold, neg_inf, logits)
    return logits


@register_sampler("default")
def sample_next_token(
    logits: paddle.Tensor,
    generated: paddle.Tensor,
    *,
    generated_mask: Optional[paddle.Tensor] = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    do_sample: bool = True,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> paddle.Tensor:
    """Pure-Paddle next-token choice; see the module docstring for the signature and conventions."""
    logits = logits.astype("float32")
    if frequency_penalty or presence_penalty:
        from alignment.ops import apply_penalties

        logits = apply_penalties(logits, generated, generated_mask, repetition_penalty=repetition_penalty,
                                 frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
    else:
        logits = apply_repetition_penalty(logits, generated, repetition_penalty, generated_mask)
    if not do_sample:
        return paddle.argmax(logits, axis=-1).astype("int64")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if temperature != 1.0:
        logits = logits / temperature
    logits = top_k_top_p_filter(logits, top_k=top_k, top_p=top_p)
    probs = F.softmax(logits, axis=-1)
    return paddle.multinomial(probs, num_samples=1).squeeze(-1).astype("int64")


@register_sampler("fused")
def fused_sample_next_token(
    logits: paddle.Tensor,
    generated: paddle.Tensor,
    *,
    generated_mask: Optional[paddle.Tensor] = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    do_sample: bool = True,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> paddle.Tensor:
    """``sample_next_token`` through the fused operator (``alignment.ops.sample_tokens``), same semantics."""
    from alignment.ops import fused_available, sample_tokens

    if not fused_available():
        return sample_next_token(logits, generated, generated_mask=generated_mask, temperature=temperature,
                                 top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, do_sample=do_sample,
                                 frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
    return sample_tokens(logits, generated, generated_mask, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                         presence_penalty=presence_penalty, do_sample=do_sample)

"""Fused next-token sampling: penalties, min-length EOS suppression, temperature, top-k, top-p, a seeded
draw, and pad for finished rows, in one operator call per decoding step.

    ids = sample_tokens(logits, history, history_mask, finished=finished, eos_token_ids=(2,),
                        temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=None)

    logits        (B, V) float   next-token logits (not yet penalised or divided by T)
    history       (B, H) int64   every token of each row so far (prompt + response)
    history_mask  (B, H) int64   1 on tokens that count for the penalties, 0 on pads; None = all 1
    finished      (B,)   bool    rows that already stopped: they get ``pad_token_id``; None = none
    returns       (B,)   int64

Semantics (the same in ``sample_tokens_reference``, the fused CPU kernel ``csrc/kernels/sampling_cpu.h``
and the CUDA kernel ``csrc/kernels/sampling_cuda.cuh``):

* penalties on every token v of the history with count c_v (PaddleNLP's get_token_penalty_multi_scores):
  repetition (CTRL, arXiv 1909.05858 §4.1) z/alpha if z > 0 else z*alpha, then z -= c_v * frequency +
  presence (the OpenAI-style frequency/presence penalties);
* while ``cur_len < min_len`` every EOS logit is -inf;
* ``do_sample=False``: argmax (first index of the maximum) -- identical on both paths;
* else divide by the temperature, keep the top-k logits (ties kept), then the nucleus (Holtzman et al.,
  arXiv 1904.09751: the smallest prefix of the sorted distribution whose mass reaches top_p, at least
  one token, ties kept), renormalise and draw.

The fused operator never sorts the vocabulary: a radix selection over the float bits on CPU, a
bisection over float keys on CUDA. Its uniforms come from a counter-based hash of (seed, row): with
``seed=None`` one seed is drawn per call from Paddle's generator, so ``paddle.seed`` makes a rollout
reproducible on either path, but the two paths draw different samples from the same distribution.
"""

from __future__ import annotations

from typing import Optional, Sequence

import paddle
import paddle.nn.functional as F

__all__ = ["sample_tokens", "sample_tokens_reference", "apply_penalties", "fused_penalties"]


def apply_penalties(
    logits: paddle.Tensor,
    history: paddle.Tensor,
    history_mask: Optional[paddle.Tensor] = None,
    *,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
) -> paddle.Tensor:
    """Repetition / frequency / presence penalties on (B, V) ``logits`` from the (B, H) ``history``."""
    if repetition_penalty == 1.0 and frequency_penalty == 0.0 and presence_penalty == 0.0:
        return logits
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    history = history.astype("int64")
    weight = paddle.ones(history.shape, dtype=logits.dtype) if history_mask is None else history_mask.astype(logits.dtype)
    valid = (history >= 0) & (history < logits.shape[-1])
    weight = weight * valid.astype(logits.dtype)
    safe = paddle.where(valid, history, paddle.zeros_like(history))
    counts = paddle.put_along_axis(paddle.zeros_like(logits), safe, weight, axis=1, reduce="add")
    penalised = paddle.where(logits < 0, logits * repetition_penalty, logits / repetition_penalty)
    penalised = penalised - counts * frequency_penalty - presence_penalty
    return paddle.where(counts > 0, penalised, logits)


def _forbid_eos(logits: paddle.Tensor, eos_token_ids: Sequence[int]) -> paddle.Tensor:
    banned = paddle.zeros([logits.shape[-1]], dtype="bool")
    ids = paddle.to_tensor(list(eos_token_ids), dtype="int64")
    banned = paddle.scatter(banned.astype("int64"), ids, paddle.ones_like(ids)).astype("bool")
    return paddle.where(banned.unsqueeze(0), paddle.full_like(logits, float("-inf")), logits)


def sample_tokens_reference(
    logits: paddle.Tensor,
    history: paddle.Tensor,
    history_mask: Optional[paddle.Tensor] = None,
    *,
    finished: Optional[paddle.Tensor] = None,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    cur_len: int = 0,
    min_len: int = 0,
    do_sample: bool = True,
) -> paddle.Tensor:
    """Pure-Paddle twin of ``sample_tokens`` (``paddle.multinomial`` draws; no ``seed`` argument)."""
    from alignment.rollout.sampling import top_k_top_p_filter

    z = apply_penalties(logits.astype("float32"), history, history_mask, repetition_penalty=repetition_penalty,
                        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
    if cur_len < min_len and len(eos_token_ids):
        z = _forbid_eos(z, eos_token_ids)
    if not do_sample:
        ids = paddle.argmax(z, axis=-1).astype("int64")
    else:
        z = top_k_top_p_filter(z / temperature, top_k=top_k, top_p=top_p)
        ids = paddle.multinomial(F.softmax(z, axis=-1), num_samples=1).squeeze(-1).astype("int64")
    if finished is not None:
        ids = paddle.where(finished.astype("bool"), paddle.full_like(ids, pad_token_id), ids)
    return ids


def sample_tokens(
    logits: paddle.Tensor,
    history: paddle.Tensor,
    history_mask: Optional[paddle.Tensor] = None,
    *,
    finished: Optional[paddle.Tensor] = None,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    cur_len: int = 0,
    min_len: int = 0,
    do_sample: bool = True,
    seed: Optional[int] = None,
    use_fusemt: Optional[bool] = None,
) -> paddle.Tensor:
    """Next token ids (B,); see the module docstring. ``use_fusemt=None`` follows the global switch."""
    if do_sample and temperature <= 0:
        raise ValueError(f"sample_tokens: temperature must be > 0 when sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"sample_tokens: top_p must be in (0, 1], got {top_p}")
    from .logps import _library

    lib = _library(logits.unsqueeze(1), use_fusemt) if logits.ndim == 2 else None
    if lib is None:
        return sample_tokens_reference(
            logits, history, history_mask, finished=finished, eos_token_ids=eos_token_ids,
            pad_token_id=pad_token_id, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, cur_len=cur_len, min_len=min_len, do_sample=do_sample,
        )
    from . import num_threads

    rows = logits.shape[0]
    if seed is None:
        seed = int(paddle.randint(0, 2**31 - 1, [1]).item()) if do_sample else 0
    history = history.astype("int64")
    mask = paddle.ones_like(history) if history_mask is None else history_mask.astype("int64")
    done = paddle.zeros([rows], dtype="bool") if finished is None else finished.astype("bool")
    eos = paddle.to_tensor(list(eos_token_ids) or [-1], dtype="int64", place=logits.place)
    (ids,) = lib.call(
        "fused_sample", logits.astype("float32"), history, mask, done, eos, float(temperature), int(top_k),
        float(top_p), float(repetition_penalty), float(frequency_penalty), float(presence_penalty), int(cur_len),
        int(min_len), int(pad_token_id), bool(do_sample), int(seed), num_threads(),
    )
    return ids


def fused_penalties(
    logits: paddle.Tensor,
    history: paddle.Tensor,
    history_mask: Optional[paddle.Tensor] = None,
    *,
    eos_token_ids: Sequence[int] = (),
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    cur_len: int = 0,
    min_len: int = 0,
) -> paddle.Tensor:
    """The penalised (B, V) logits of the fused CPU kernel (its steps 1-2), for tests; needs the built library."""
    from . import num_threads
    from ._build import load_ops

    lib = load_ops()
    if lib is None:
        raise RuntimeError("fused_penalties needs the operator library (alignment.ops._build.build_reason())")
    history = history.astype("int64")
    mask = paddle.ones_like(history) if history_mask is None else history_mask.astype("int64")
    eos = paddle.to_tensor(list(eos_token_ids) or [-1], dtype="int64")
    (out,) = lib.call("fused_penalties", logits.astype("float32"), history, mask, eos, float(repetition_penalty),
                      float(frequency_penalty), float(presence_penalty), int(cur_len), int(min_len), num_threads())
    return out

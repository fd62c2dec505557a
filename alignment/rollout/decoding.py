"""The per-step model computation of the decode loop: the model's own forward, or a lean fused step.

``make_decoder(model, rows, width)`` picks one of two objects with the same two methods:

    logits = decoder.prefill(input_ids, attention_mask, position_ids)   # (B, V), fills the cache
    logits = decoder.step(ids, key_mask, positions, column)             # (B, V) for the token at ``column``

* ``ModelDecoder`` (the fallback): the model's ``forward`` with ``past_key_values``; PaddleNLP concatenates
  the cache and rebuilds the (B, 1, 1, S) mask on every step. Works for every causal LM.
* ``FusedDecoder`` (Llama and Qwen2 when ``use_fusemt`` is on and the operator library is built): the prefill
  is still the model's forward; its cache is copied once into a preallocated (B, width, Hkv, D) buffer per
  layer; every later step runs the decoder layers here, CALLING THE MODEL'S OWN SUBLAYERS (norms, q/k/v and
  o projections, MLP, final norm, LM head: no weight copies, LoRA and tensor-parallel linears included)
  with ``alignment.ops.decode_attention`` in place of the attention core (rotary, K/V appended in place at
  ``column``, masked softmax over the valid columns, weighted sum; GQA). Nothing grows with the length: no
  concatenation, no mask tensor, the same operators on every step.

``key_mask`` is the loop's (B, width) attention-mask buffer: 1 on the prompt's real tokens and on every
response token up to EOS, 0 on left pads and after EOS (column ``column`` is already written). Both
decoders return the last position's logits gathered over the vocabulary (tensor parallelism).
"""

from __future__ import annotations

import math
from typing import List, Optional

import paddle

from alignment.ops.linear_logps import causal_lm_parts
from alignment.parallel import ParallelStrategy

__all__ = ["ModelDecoder", "FusedDecoder", "make_decoder", "fused_decoder_unsupported"]



def _forward(model, input_ids, attention_mask, position_ids, past_key_values):
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=True,
        return_dict=True,
    )
    # under tensor parallelism the logits are vocabulary-parallel: gather the last position only (B, V)
    return ParallelStrategy.current().gather_vocab(out.logits[:, -1, :]), out.past_key_values


class ModelDecoder:
    """The model's own forward with its own growing ``past_key_values``."""

    fused = False

    def __init__(self, model):
        self.model = model
        self.cache = None

    def prefill(self, input_ids, attention_mask, position_ids):
        logits, self.cache = _forward(self.model, input_ids, attention_mask, position_ids, None)
        return logits

    def step(self, ids, key_mask, positions, column: int):
        logits, self.cache = _forward(self.model, ids.unsqueeze(-1), key_mask[:, : column + 1],
                                      positions.unsqueeze(-1), self.cache)
        return logits

    def close(self) -> None:
        self.cache = None


def fused_decoder_unsupported(model) -> Optional[str]:
    """Why ``FusedDecoder`` cannot run ``model`` (None when it can)."""
    from alignment.ops import fused_available

    if not fused_available():
        return "use_fusemt is off or the operator library is not built"
    parts = causal_lm_parts(model)
    if parts is None:
        return f"{type(model).__name__} is not a Llama/Qwen2 causal LM"
    lm, base = parts
    cfg = lm.config
    for flag in ("alibi", "sequence_parallel", "use_long_sequence_strategies", "use_sliding_window",
                 "use_fused_rope"):
        if getattr(cfg, flag, False):
            return f"config.{flag} is set"
    if not getattr(cfg, "rope", True):
        return "the model has no rotary embedding"
    for flag in ("context_parallel_degree", "sep_parallel_degree"):
        if (getattr(cfg, flag, 1) or 1) > 1:
            return f"config.{flag} > 1"
    attn = base.layers[0].self_attn
    if getattr(attn, "kv_indices", None) is not None or getattr(attn, "reshard_layer", None) is not None:
        return "key/value heads are replicated across tensor-parallel ranks"
    if "Dynamic" in type(attn.rotary_emb).__name__:
        return "dynamic rotary scaling"
    if attn.head_dim % 2 or attn.head_dim > 256:
        return f"head_dim {attn.head_dim} (must be even and <= 256)"
    if base.embed_tokens.weight.dtype != paddle.float32:
        return f"dtype {base.embed_tokens.weight.dtype} (the decode attention op is float32)"
    return None


class FusedDecoder:
    """Decoder layers of a Llama/Qwen2 causal LM over preallocated caches with the decode attention op."""

    fused = True

    def __init__(self, model, width: int):
        self.model = model
        self.lm, self.base = causal_lm_parts(model)
        attn = self.base.layers[0].self_attn
        self.num_heads, self.num_kv_heads, self.head_dim = attn.num_heads, attn.num_key_value_heads, attn.head_dim
        self.groups = self.num_heads // self.num_kv_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.width = width
        probe = paddle.zeros([1], dtype="float32")
        cos, sin = attn.rotary_emb(probe, seq_len=width)  # (1, S, 1, D): the model's own tables
        self.cos = cos.reshape([-1, self.head_dim])
        self.sin = sin.reshape([-1, self.head_dim])
        if self.cos.shape[0] < width:
            raise ValueError(f"FusedDecoder: rotary table of {self.cos.shape[0]} positions < {width} columns")
        self.cache_k: List[paddle.Tensor] = []
        self.cache_v: List[paddle.Tensor] = []

    def prefill(self, input_ids, attention_mask, position_ids):
        logits, past = _forward(self.model, input_ids, attention_mask, position_ids, None)
        rows, prompt = input_ids.shape
        shape = [rows, self.width, self.num_kv_heads, self.head_dim]
        for k, v in past:
            ck, cv = paddle.empty(shape, dtype=k.dtype), paddle.empty(shape, dtype=v.dtype)
            ck[:, :prompt] = k
            cv[:, :prompt] = v
            self.cache_k.append(ck)
            self.cache_v.append(cv)
        del past
        return logits

    def _qkv(self, attn, x):
        rows = x.shape[0]
        if getattr(attn, "fuse_attention_qkv", False):
            mix = attn.qkv_proj(x).reshape([rows, self.num_kv_heads, (self.groups + 2) * self.head_dim])
            q, k, v = paddle.split(mix, [self.groups * self.head_dim, self.head_dim, self.head_dim], axis=-1)
            return q.reshape([rows, -1]), k.reshape([rows, -1]), v.reshape([rows, -1])
        return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)

    def step(self, ids, key_mask, positions, column: int):
        from alignment.ops import decode_attention

        h = self.base.embed_tokens(ids)  # (B, hidden)
        for i, layer in enumerate(self.base.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h))
            a = decode_attention(q, k, v, self.cos, self.sin, positions, key_mask, self.cache_k[i],
                                 self.cache_v[i], column, self.scale)
            h = h + attn.o_proj(a)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = self.lm.lm_head(self.base.norm(h))
        return ParallelStrategy.current().gather_vocab(logits)

    def close(self) -> None:
        self.cache_k, self.cache_v = [], []


def make_decoder(model, width: int, fused: Optional[bool] = None):
    """``FusedDecoder`` where it applies (``fused=None``: when supported), else ``ModelDecoder``."""
    if fused is not False and fused_decoder_unsupported(model) is None:
        return FusedDecoder(model, width)
    if fused:
        raise ValueError(f"make_decoder: the fused decoder cannot run this model: {fused_decoder_unsupported(model)}")
    return ModelDecoder(model)

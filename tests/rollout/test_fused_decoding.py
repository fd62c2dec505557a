"""The lean decode loop's fused step (alignment.rollout.decoding.FusedDecoder) and the decode attention op.

* ``decode_attention`` (CPU kernel) == its pure-Paddle reference, outputs and in-place cache, with GQA,
  left pads, a row with nothing to attend to;
* the fused step's logits == the model's own forward with ``past_key_values`` within 1e-5, step by step
  (Llama MHA, Llama GQA with fused qkv, Qwen2 GQA with q/k/v biases);
* greedy decoding is token-for-token identical for the fused path (fused step + fused sampler), the
  fallback (model forward + pure-Paddle sampler) and PaddleNLP ``generate(decode_strategy="greedy_search")``.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from alignment import ops
from alignment.rollout.decoding import FusedDecoder, ModelDecoder, fused_decoder_unsupported, make_decoder
from alignment.rollout.generation import GenerationConfig, generate, make_position_ids
from tests.ops.conftest import ops_library  # noqa: F401 - the session fixture of the operator library

PAD, EOS = 0, 2


def _llama(**kw):
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=640, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=256, eos_token_id=EOS, pad_token_id=PAD,
               use_flash_attention=False)
    cfg.update(kw)
    paddle.seed(7)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.eval()
    return model


def _qwen2():
    from paddlenlp.transformers import Qwen2Config, Qwen2ForCausalLM

    paddle.seed(8)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=640, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                         eos_token_id=EOS, pad_token_id=PAD, use_flash_attention=False))
    for name, p in model.named_parameters():  # random q/k/v biases (they are zero at init)
        if name.endswith("bias"):
            p.set_value(paddle.randn(p.shape) * 0.1)
    model.eval()
    return model


MODELS = {"llama": lambda: _llama(), "llama_gqa_fused_qkv": lambda: _llama(num_key_value_heads=2, fuse_attention_qkv=True),
          "qwen2_gqa": _qwen2}


def _prompts(batch=4, width=9, vocab=640, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, size=(batch, width)).astype("int64")
    mask = np.ones_like(ids)
    for b in range(batch):
        ids[b, : b * 2], mask[b, : b * 2] = PAD, 0  # left pads 0, 2, 4, 6
    return paddle.to_tensor(ids), paddle.to_tensor(mask)


def test_decode_attention_op_matches_reference(ops_library):
    paddle.seed(0)
    b, hq, hkv, d, smax, t = 3, 8, 2, 32, 12, 7
    q, k, v = paddle.randn([b, hq * d]), paddle.randn([b, hkv * d]), paddle.randn([b, hkv * d])
    cos, sin = paddle.randn([40, d]), paddle.randn([40, d])
    pos = paddle.to_tensor([3, 9, 30], dtype="int64")
    mask = (paddle.rand([b, smax]) > 0.3).astype("int64")
    mask[:, t] = 1
    mask[2] = 0  # nothing to attend to: zeros
    ck, cv = paddle.randn([b, smax, hkv, d]), paddle.randn([b, smax, hkv, d])
    ck_ref, cv_ref = ck.clone(), cv.clone()
    out = ops.decode_attention(q, k, v, cos, sin, pos, mask, ck, cv, t, 0.17)
    ref = ops.decode_attention_reference(q, k, v, cos, sin, pos, mask, ck_ref, cv_ref, t, 0.17)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(ck.numpy(), ck_ref.numpy(), atol=1e-6)
    np.testing.assert_array_equal(cv.numpy(), cv_ref.numpy())
    assert float(out[2].abs().max()) == 0.0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fused_step_matches_model_forward(ops_library, name):
    model = MODELS[name]()
    assert fused_decoder_unsupported(model) is None
    ids, mask = _prompts()
    pos = make_position_ids(mask)
    rows, p = ids.shape
    steps = 5
    width = p + steps
    key_mask = paddle.zeros([rows, width], dtype="int64")
    key_mask[:, :p] = mask
    fused, plain = FusedDecoder(model, width), ModelDecoder(model)
    with paddle.no_grad():
        lf, lp = fused.prefill(ids, mask, pos), plain.prefill(ids, mask, pos)
        next_pos = pos[:, -1] + 1
        for s in range(steps - 1):
            tok = paddle.argmax(lp, axis=-1)
            key_mask[:, p + s] = 1 if s < 2 else paddle.to_tensor([1, 0, 1, 1], dtype="int64")  # a finished row
            lf = fused.step(tok, key_mask, next_pos, p + s)
            lp = plain.step(tok, key_mask, next_pos, p + s)
            np.testing.assert_allclose(lf.numpy(), lp.numpy(), atol=1e-5, rtol=0)
            next_pos = next_pos + 1
    # the fused caches hold what the model's own cache holds (rotated keys, values) on the valid columns
    for ck, (k, _) in zip(fused.cache_k, plain.cache):
        np.testing.assert_allclose(ck[:, : p + steps - 1].numpy(), k.numpy(), atol=1e-5)


def test_make_decoder_follows_use_fusemt(ops_library):
    model = _llama()
    assert isinstance(make_decoder(model, 8), FusedDecoder)
    with ops.use_fusemt(False):
        assert isinstance(make_decoder(model, 8), ModelDecoder)
        assert "use_fusemt" in fused_decoder_unsupported(model)


@pytest.mark.parametrize("name", ["llama_gqa_fused_qkv", "qwen2_gqa"])
def test_greedy_identical_fused_fallback_paddlenlp(ops_library, name):
    model = MODELS[name]()
    ids, mask = _prompts(seed=1)
    new = 12
    cfg = dict(eos_token_ids=(EOS,), pad_token_id=PAD, max_new_tokens=new, do_sample=False)
    fused = generate(model, ids, mask, GenerationConfig(sampler="fused", **cfg))
    with ops.use_fusemt(False):
        fallback = generate(model, ids, mask, GenerationConfig(**cfg))
    np.testing.assert_array_equal(fused.sequences.numpy(), fallback.sequences.numpy())
    np.testing.assert_array_equal(fused.attention_mask.numpy(), fallback.attention_mask.numpy())
    with paddle.no_grad():
        theirs, _ = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=0,
                                   decode_strategy="greedy_search", eos_token_id=EOS, pad_token_id=PAD, use_cache=True)
    theirs, ours = theirs.numpy(), fused.responses.numpy()
    for row in range(ours.shape[0]):  # up to and including our first EOS (PaddleNLP pads after it too)
        n = int(fused.response_mask[row].sum())
        np.testing.assert_array_equal(ours[row, :n], theirs[row, :n])


def test_frequency_presence_penalties_reach_both_samplers(ops_library):
    """GenerationConfig's frequency/presence penalties: the fused and the pure-Paddle sampler apply the same
    ones (greedy tokens identical), and they change the result."""
    model = MODELS["llama"]()
    ids, mask = _prompts(seed=2)
    cfg = dict(eos_token_ids=(EOS,), pad_token_id=PAD, max_new_tokens=10, do_sample=False)
    pen = dict(frequency_penalty=2.0, presence_penalty=2.0, repetition_penalty=1.3)
    fused = generate(model, ids, mask, GenerationConfig(sampler="fused", **cfg, **pen))
    with ops.use_fusemt(False):
        fallback = generate(model, ids, mask, GenerationConfig(**cfg, **pen))
    plain = generate(model, ids, mask, GenerationConfig(sampler="fused", **cfg))
    np.testing.assert_array_equal(fused.sequences.numpy(), fallback.sequences.numpy())
    assert not np.array_equal(fused.sequences.numpy(), plain.sequences.numpy())
    with pytest.raises(ValueError, match="frequency_penalty"):
        GenerationConfig(frequency_penalty=3.0, **cfg)

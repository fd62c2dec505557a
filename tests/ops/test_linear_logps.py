"""Chunked LM head + log-probs (alignment.ops.linear_completion_logps) against the full-logits reference,
and the training path that uses it (alignment.training.logps.completion_logps) with use_fusemt on vs off.

Tolerance 1e-5 absolute (float32), against the reference evaluated in float64 on the same inputs.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from alignment import ops
from alignment.ops.linear_logps import linear_completion_logps, linear_completion_logps_reference

TOL = 1e-5


def _run(fn, hidden, weight, labels, upstream):
    h, w = hidden.detach().clone(), weight.detach().clone()
    h.stop_gradient = w.stop_gradient = False
    logps = fn(h, w)
    valid = (labels >= 0).astype(logps.dtype)
    (logps * valid * upstream.astype(logps.dtype)).sum().backward()
    return (logps * valid).numpy(), h.grad.numpy(), w.grad.numpy()


@pytest.mark.parametrize("transpose_y", [False, True])
def test_chunked_logps_and_grads_match_reference(ops_library, transpose_y):
    paddle.seed(3)
    n, length, hid, vocab = 3, 11, 24, 389
    hidden = paddle.randn([n, length, hid])
    weight = paddle.randn([vocab, hid] if transpose_y else [hid, vocab]) * 0.4
    labels = paddle.randint(0, vocab, [n, length - 1])
    labels[0, :4] = -100  # a prompt
    labels[2, 7:] = -100  # right padding
    upstream = paddle.randn(labels.shape)
    fused = _run(lambda h, w: linear_completion_logps(h, w, labels, transpose_y=transpose_y, temperature=0.8,
                                                      chunk_rows=7), hidden, weight, labels, upstream)
    ref = _run(lambda h, w: linear_completion_logps_reference(h.astype("float64"), w.astype("float64"), labels,
                                                              transpose_y=transpose_y, temperature=0.8),
               hidden, weight, labels, upstream)
    for a, b in zip(fused, ref):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


def test_training_completion_logps_unchanged_by_use_fusemt(ops_library):
    """The DPO/KTO path's per-token log-probs and parameter gradients, chunked head on vs plain logits."""
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    from alignment.training.logps import _chunked_head_logps, completion_logps

    paddle.seed(5)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, tie_word_embeddings=True, use_flash_attention=False))
    model.eval()  # no dropout either way
    ids = paddle.randint(3, 520, [4, 10])
    mask = paddle.ones([4, 10], dtype="int64")
    mask[1, :3] = 0  # left pads
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    with ops.use_fusemt(True), paddle.no_grad():  # the chunked head applies to this model
        assert _chunked_head_logps(model, ids, mask, labels[:, 1:], 1.0) is not None
    results = []
    for flag in (True, False):
        model.clear_gradients()
        with ops.use_fusemt(flag):
            out = completion_logps(model, ids, mask, labels)
        (out.logps * paddle.to_tensor([1.0, -0.5, 2.0, 0.3])).sum().backward()
        grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}
        results.append((out.token_logps.numpy(), out.mask.numpy(), grads))
    (lp_on, m_on, g_on), (lp_off, m_off, g_off) = results
    np.testing.assert_allclose(lp_on, lp_off, atol=TOL, rtol=0)
    np.testing.assert_array_equal(m_on, m_off)
    assert sorted(g_on) == sorted(g_off)
    for name in g_on:
        np.testing.assert_allclose(g_on[name], g_off[name], atol=TOL, rtol=0, err_msg=name)


def test_no_chunked_head_under_auto_cast(ops_library, monkeypatch):
    """Under ``auto_cast`` the head's matmul gives 16-bit logits, which the fused operator does not take: every
    chunked-head caller (SFT, DPO, KTO, GKD, PPO) falls back to the logits path. (Paddle's CPU build ignores
    ``auto_cast``, so the test sets the state the GPU build reports.)"""
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    from alignment.training.logps import chunked_head

    paddle.seed(5)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=520, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, use_flash_attention=False))
    with ops.use_fusemt(True):
        assert chunked_head(model) is not None
        monkeypatch.setattr(paddle.amp, "is_autocast_enabled", lambda *a, **k: True)
        assert chunked_head(model) is None
        monkeypatch.undo()
        assert chunked_head(model) is not None

"""Fused scaled + masked softmax (alignment.ops.masked_softmax) against its pure-Paddle reference, the attention
core built on it, and its installation into Llama / Qwen2 (done by ``import alignment.models``).

Tolerance 1e-5 (float32 op) against the reference evaluated in float64 on the same float32 inputs. Every fused
check counts the operator's calls on the loaded library, so a silent fallback to the reference cannot pass.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from alignment import ops
from alignment.ops import masked_softmax as msm

TOL = 1e-5
OP = "fused_masked_softmax"
LOWEST = float(np.finfo(np.float32).min)


@pytest.fixture
def op_calls(count_calls):
    """The number of calls of the operator so far (a list holding one int)."""
    return count_calls(OP)


def _padding_mask(b, lq, lk, left, right, causal_in_mask=False, fill=LOWEST):
    """(B, 1, Lq, Lk) additive mask: row b masks its first left[b] and last right[b] keys."""
    keep = np.ones([b, lk], dtype=bool)
    for i in range(b):
        keep[i, : left[i]] = False
        if right[i]:
            keep[i, lk - right[i]:] = False
    allowed = np.broadcast_to(keep[:, None, :], [b, lq, lk])
    if causal_in_mask:
        allowed = allowed & np.tril(np.ones([lq, lk], dtype=bool), k=lk - lq)
    return paddle.to_tensor(np.where(allowed, 0.0, fill).astype("float32")[:, None])


def _p_and_ds(fn, s, dp):
    s = s.detach().clone()
    s.stop_gradient = False
    p = fn(s)
    (ds,) = paddle.grad([(p.astype("float64") * dp).sum()], [s])
    return p.numpy().astype("float64"), ds.numpy().astype("float64")


CASES = [  # (B, H, Lq, Lk, causal, mask kind)
    (2, 3, 17, 17, True, "none"),
    (2, 3, 17, 17, False, "none"),
    (3, 2, 13, 29, True, "none"),  # Lq < Lk: queries are the last Lq positions
    (3, 2, 33, 33, True, "left"),  # left padding, fully masked leading rows
    (3, 2, 33, 33, False, "right"),
    (4, 3, 31, 47, True, "both"),
    (2, 2, 65, 65, False, "causal_in_mask"),  # PaddleNLP's form: causal + padding in the additive mask
    (2, 5, 7, 130, False, "shared"),  # one (1, 1, Lq, Lk) mask for every batch row
    (2, 2, 9, 9, False, "all_masked"),  # a batch row with every key masked
    (2, 2, 19, 19, False, "neg_inf"),  # -inf instead of finfo.min
]


def _mask_for(kind, b, lq, lk):
    if kind == "none":
        return None
    if kind == "left":
        return _padding_mask(b, lq, lk, [0, 5, 11][:b], [0] * b)
    if kind == "right":
        return _padding_mask(b, lq, lk, [0] * b, [0, 4, 9][:b])
    if kind == "both":
        return _padding_mask(b, lq, lk, [0, 3, 20, 1], [2, 0, 5, 0])
    if kind == "causal_in_mask":
        return _padding_mask(b, lq, lk, [6, 0], [0, 3], causal_in_mask=True)
    if kind == "shared":
        return _padding_mask(1, lq, lk, [3], [2])
    if kind == "all_masked":
        return _padding_mask(b, lq, lk, [lk, 2], [0, 0])
    if kind == "neg_inf":
        return _padding_mask(b, lq, lk, [4, 0], [0, 3], causal_in_mask=True, fill=float("-inf"))
    raise ValueError(kind)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[5]}-{'causal' if c[4] else 'full'}-{c[2]}x{c[3]}" for c in CASES])
def test_fused_masked_softmax_and_grad_match_reference(op_calls, case, threads):
    b, h, lq, lk, causal, kind = case
    paddle.seed(lq * lk + threads)
    s = paddle.randn([b, h, lq, lk]) * 3.0
    dp = paddle.randn([b, h, lq, lk], dtype="float64")
    mask = _mask_for(kind, b, lq, lk)
    scale = 0.37
    ops.set_num_threads(threads)
    try:
        p, ds = _p_and_ds(lambda x: msm.fused_masked_softmax(x, mask, scale, causal), s, dp)
    finally:
        ops.set_num_threads(None)
    assert op_calls[0] == 1
    p_ref, ds_ref = _p_and_ds(lambda x: msm.masked_softmax_reference(x.astype("float64"), mask, scale, causal), s, dp)
    assert np.isfinite(p).all() and np.isfinite(ds).all()
    np.testing.assert_allclose(p, p_ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(ds, ds_ref, atol=TOL, rtol=0)
    # rows with no unmasked entry are zeros; every other row sums to one
    sums = p.sum(-1)
    dead = p_ref.sum(-1) == 0
    np.testing.assert_allclose(sums[~dead], 1.0, atol=TOL)
    assert (sums[dead] == 0).all()
    if kind in ("left", "all_masked", "both"):
        assert dead.any()  # the case does exercise fully masked rows


def test_reference_semantics_against_plain_softmax():
    """The reference is the plain softmax(s * scale + m) (PaddleNLP's composition) wherever a row has an
    unmasked entry, and it honours the causal offset j > i + (Lk - Lq)."""
    paddle.seed(1)
    s = paddle.randn([2, 2, 5, 8])
    mask = _padding_mask(2, 5, 8, [0, 2], [1, 0], causal_in_mask=True)
    plain = paddle.nn.functional.softmax(s * 0.5 + mask, axis=-1)
    np.testing.assert_allclose(msm.masked_softmax_reference(s, mask, 0.5).numpy(), plain.numpy(), atol=1e-6)
    causal = msm.masked_softmax_reference(s, None, 0.5, causal=True).numpy()
    assert (causal[..., 0, 4:] == 0).all() and (causal[..., 0, :4] > 0).all() and (causal[..., 4, :] > 0).all()


def test_switch_off_and_fallbacks_take_the_reference(op_calls):
    s = paddle.randn([1, 2, 4, 4])
    with ops.use_fusemt(False):
        p_off = msm.fused_masked_softmax(s, None, 1.0, True)
    assert op_calls[0] == 0
    p_bf16 = msm.fused_masked_softmax(s.astype("bfloat16"), None, 1.0, True)  # not a fused dtype
    assert op_calls[0] == 0 and p_bf16.dtype == paddle.bfloat16
    np.testing.assert_allclose(msm.fused_masked_softmax(s, None, 1.0, True).numpy(), p_off.numpy(), atol=TOL)
    assert op_calls[0] == 1
    with pytest.raises(ValueError):
        msm.fused_masked_softmax(s, paddle.zeros([1, 1, 4, 5]))


@pytest.mark.parametrize("hkv", [4, 2])
def test_attention_core_matches_paddlenlp_composition(op_calls, hkv):
    """attention_core (fused) vs the reference and vs PaddleNLP's Llama scaled_dot_product_attention, with GQA."""
    from paddlenlp.transformers import LlamaConfig
    from paddlenlp.transformers.llama import modeling as llama

    import alignment.models  # noqa: F401 - installs the dispatcher; call PaddleNLP's own function below

    original = msm._ORIGINAL.get(llama.__name__, llama.scaled_dot_product_attention)
    paddle.seed(hkv)
    b, l, hq, d = 3, 21, 4, 16
    q, k, v = paddle.randn([b, l, hq, d]), paddle.randn([b, l, hkv, d]), paddle.randn([b, l, hkv, d])
    mask = _padding_mask(b, l, l, [0, 4, 0], [0, 0, 6], causal_in_mask=True)
    grads = {}
    for name, fn in (("fused", lambda *a: msm.attention_core(*a, mask)),
                     ("reference", lambda *a: msm.attention_core_reference(*a, mask)),
                     ("paddlenlp", lambda qq, kk, vv: original(qq, LlamaConfig(), msm._repeat_kv(kk, hq // hkv),
                                                               msm._repeat_kv(vv, hq // hkv), mask, False))):
        ins = [t.detach().clone() for t in (q, k, v)]
        for t in ins:
            t.stop_gradient = False
        out = fn(*ins)
        weights = paddle.to_tensor(np.cos(np.arange(out.size)).reshape(out.shape).astype("float32"))
        weights[1, :4] = 0  # the fully masked (left padding) rows: zeros here, the mean of v in PaddleNLP
        (out * weights).sum().backward()
        keep = np.ones([b, l], bool)
        keep[1, :4] = False
        grads[name] = [out.numpy()[keep]] + [t.grad.numpy() for t in ins]
    assert op_calls[0] == 1
    for other in ("reference", "paddlenlp"):
        for a, e in zip(grads["fused"], grads[other]):
            np.testing.assert_allclose(a, e, atol=TOL, rtol=0, err_msg=other)


def _batch(n, t, left):
    paddle.seed(7)
    ids = paddle.randint(4, 500, [n, t])
    lengths = [t, t - 3, t - 7][:n]
    mask = np.zeros([n, t], dtype="int64")
    for i, length in enumerate(lengths):
        if left:
            mask[i, t - length:] = 1
        else:
            mask[i, :length] = 1
    return ids, paddle.to_tensor(mask)


def _logits_and_grads(model, ids, mask):
    model.clear_gradients()
    logits = model(input_ids=ids, attention_mask=mask, return_dict=True).logits
    weights = paddle.to_tensor(np.sin(np.arange(logits.size)).reshape(logits.shape).astype("float32"))
    valid = mask.astype("float32").unsqueeze(-1)  # a masked per-token loss: pad positions carry none
    ((logits * weights * valid).sum() / valid.sum()).backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    return logits.numpy()[mask.numpy().astype(bool)], grads


@pytest.mark.parametrize("left", [True, False], ids=["left_padded", "right_padded"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_model_logits_and_grads_equal_with_the_fused_attention(op_calls, request, arch, left):
    from alignment.models.loading import load_causal_lm

    assert msm.attention_installed()
    path = request.getfixturevalue("tiny_model_dir" if arch == "llama" else "tiny_qwen2_dir")
    model = load_causal_lm(str(path), dtype="float32")
    model.train()
    assert not model.config.use_flash_attention
    ids, mask = _batch(3, 13, left)
    fused = _logits_and_grads(model, ids, mask)
    layers = model.config.num_hidden_layers
    assert op_calls[0] == layers  # one fused softmax per decoder layer
    with ops.use_fusemt(False):
        original = _logits_and_grads(model, ids, mask)
    assert op_calls[0] == layers  # switch off: PaddleNLP's scaled_dot_product_attention
    np.testing.assert_allclose(fused[0], original[0], atol=TOL, rtol=0)
    assert fused[1].keys() == original[1].keys() and any("q_proj" in n for n in fused[1])
    for name, grad in fused[1].items():
        np.testing.assert_allclose(grad, original[1][name], atol=TOL, rtol=0, err_msg=name)


def test_conditions_and_uninstall(op_calls, tiny_model_dir, monkeypatch):
    from paddlenlp.transformers import LlamaConfig
    from paddlenlp.transformers.llama import modeling as llama

    from alignment.models.loading import load_causal_lm

    q = k = v = paddle.randn([2, 6, 2, 8])
    mask = _padding_mask(2, 6, 6, [0, 1], [0, 0], causal_in_mask=True)
    config = LlamaConfig()
    assert msm.attention_applies(q, k, v, mask, config=config, output_attentions=False)
    assert msm.attention_applies(q, k, v, None, config=config, output_attentions=False)
    for kw in (dict(output_attentions=True), dict(alibi=paddle.zeros([1])), dict(sequence_parallel=True),
               dict(reshard_layer=object()), dict(attn_mask_startend_row_indices=paddle.zeros([1])),
               dict(dropout=0.1, training=True)):
        assert not msm.attention_applies(q, k, v, mask, config=config, **{"output_attentions": False, **kw}), kw
    assert msm.attention_applies(q, k, v, mask, config=config, output_attentions=False, dropout=0.1, training=False)
    assert not msm.attention_applies(q.astype("bfloat16"), k, v, mask, config=config, output_attentions=False)
    assert not msm.attention_applies(q, k, v, mask.astype("bool"), config=config, output_attentions=False)
    assert not msm.attention_applies(q[:, :3], k, v, None, config=config, output_attentions=False)  # Lq != Lk
    with monkeypatch.context() as mp:  # Paddle's CPU build ignores auto_cast: set the state a GPU build reports
        mp.setattr(paddle.amp, "is_autocast_enabled", lambda *a, **kw: True)
        assert not msm.attention_applies(q, k, v, mask, config=config, output_attentions=False)

    model = load_causal_lm(str(tiny_model_dir), dtype="float32")
    ids, attn = _batch(2, 9, True)
    with paddle.no_grad():
        model(input_ids=ids, attention_mask=attn)
    assert op_calls[0] == model.config.num_hidden_layers
    msm.uninstall_attention()
    try:
        assert not hasattr(llama.scaled_dot_product_attention, "_alignment_original")
        with paddle.no_grad():
            model(input_ids=ids, attention_mask=attn)  # built while installed: the dispatcher defers to PaddleNLP
        assert op_calls[0] == model.config.num_hidden_layers
    finally:
        msm.install_attention()
        msm.install_attention()  # idempotent
    assert llama.scaled_dot_product_attention._alignment_original.__name__ == "scaled_dot_product_attention"
    assert not hasattr(llama.scaled_dot_product_attention._alignment_original, "_alignment_original")

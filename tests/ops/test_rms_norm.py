"""Fused RMSNorm (alignment.ops.rms_norm) against the pure-Paddle reference, and its installation into the
Llama / Qwen2 RMSNorm layers (alignment.ops.norm.install_rms_norm, done by ``import alignment.models``).

Tolerance: 1e-5 in float32 against the reference evaluated in float64 on the same float32 inputs (as
tests/ops/test_logps.py); dw also relative (1e-5 of its size: a sum over the rows). Every fused check counts
the calls of the operator, so a silent fallback to the reference cannot pass.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from alignment import ops
from alignment.ops import norm, rms_norm, rms_norm_reference

TOL = 1e-5
OP = "fused_rms_norm_op"


@pytest.fixture
def op_calls(count_calls):
    """The number of fused RMSNorm calls so far (a list holding one int), counted on the loaded library."""
    return count_calls(OP)


def _grads(fn, x, w, dy):
    x, w = x.detach().clone(), w.detach().clone()
    x.stop_gradient = w.stop_gradient = False
    y = fn(x, w)
    loss = (y.astype("float64") * dy).sum()
    gx, gw = paddle.grad([loss], [x, w])
    return y.numpy(), gx.numpy(), gw.numpy()


def _reference64(x, w):
    return rms_norm_reference(x.astype("float64"), w.astype("float64"), 1e-6)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("shape", [(37, 64), (131, 256), (67, 512), (50, 200), (3, 7, 513)])
def test_fused_rms_norm_and_grads_match_reference(op_calls, shape, threads):
    paddle.seed(sum(shape) + threads)
    x = paddle.randn(list(shape)) * 2.0
    w = paddle.randn([shape[-1]])
    dy = paddle.randn(list(shape), dtype="float64")
    ops.set_num_threads(threads)
    try:
        fused = _grads(lambda a, b: rms_norm(a, b, 1e-6, use_fusemt=True), x, w, dy)
    finally:
        ops.set_num_threads(None)
    assert op_calls[0] == 1
    assert fused[0].dtype == np.float32 and fused[0].shape == tuple(shape)
    ref = _grads(_reference64, x, w, dy)
    np.testing.assert_allclose(fused[0], ref[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(fused[1], ref[1], atol=TOL, rtol=0)
    np.testing.assert_allclose(fused[2], ref[2], atol=TOL, rtol=TOL)
    # and the float32 reference (what the layers computed before) agrees at the same tolerance
    ref32 = _grads(lambda a, b: rms_norm_reference(a, b, 1e-6), x, w, dy)
    np.testing.assert_allclose(fused[0], ref32[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(fused[1], ref32[1], atol=TOL, rtol=0)


def test_saved_rstd_and_deterministic_dw(ops_library):
    paddle.seed(5)
    x, w, dy = paddle.randn([203, 96]), paddle.randn([96]), paddle.randn([203, 96], dtype="float64")
    y, rstd = ops_library.call(OP, x, w, 1e-5, 2)
    expected = 1.0 / np.sqrt((x.numpy().astype(np.float64) ** 2).mean(-1) + 1e-5)
    assert rstd.shape == [203]
    np.testing.assert_allclose(rstd.numpy(), expected, rtol=1e-6, atol=0)
    ops.set_num_threads(3)
    try:
        runs = [_grads(lambda a, b: rms_norm(a, b, 1e-5), x, w, dy)[2] for _ in range(2)]
    finally:
        ops.set_num_threads(None)
    np.testing.assert_array_equal(runs[0], runs[1])  # per-thread partials added in a fixed order


def test_other_dtypes_and_switch_off_take_the_reference(op_calls):
    paddle.seed(1)
    x, w = paddle.randn([4, 64]), paddle.randn([64])
    with ops.use_fusemt(False):
        y_off = rms_norm(x, w, 1e-6)
    y16 = rms_norm(x.astype("bfloat16"), w.astype("bfloat16"), 1e-6)
    y_mixed = rms_norm(x.astype("bfloat16"), w, 1e-6)
    assert op_calls[0] == 0
    assert y16.dtype == paddle.bfloat16 and y_mixed.dtype == paddle.float32
    np.testing.assert_allclose(y_off.numpy(), rms_norm(x, w, 1e-6).numpy(), atol=TOL)
    assert op_calls[0] == 1


def _logits_and_grads(model, input_ids, weights):
    model.clear_gradients()
    logits = model(input_ids=input_ids, return_dict=True).logits
    ((logits * weights).sum() / (logits.shape[0] * logits.shape[1])).backward()  # a per-token mean, as a loss
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    return logits.numpy(), grads


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_model_logits_and_grads_equal_with_the_fused_norm(op_calls, request, arch):
    import alignment.models  # noqa: F401 - installs the fused forward
    from alignment.models.loading import load_causal_lm

    assert norm.rms_norm_installed()
    path = request.getfixturevalue("tiny_model_dir" if arch == "llama" else "tiny_qwen2_dir")
    model = load_causal_lm(str(path), dtype="float32")
    model.train()
    paddle.seed(3)
    input_ids = paddle.randint(4, 500, [3, 11])
    weights = paddle.randn([3, 11, model.config.vocab_size])
    fused = _logits_and_grads(model, input_ids, weights)
    layers = model.config.num_hidden_layers
    assert op_calls[0] == 2 * layers + 1  # two norms per decoder layer + the final one
    with ops.use_fusemt(False):
        original = _logits_and_grads(model, input_ids, weights)
    assert op_calls[0] == 2 * layers + 1  # switch off: PaddleNLP's own forward, no fused call
    np.testing.assert_allclose(fused[0], original[0], atol=TOL, rtol=0)
    assert fused[1].keys() == original[1].keys() and any("norm" in n for n in fused[1])
    for name, grad in fused[1].items():
        np.testing.assert_allclose(grad, original[1][name], atol=TOL, rtol=0, err_msg=name)


def test_layer_conditions_and_uninstall(op_calls):
    import alignment.models  # noqa: F401
    from paddlenlp.transformers import LlamaConfig
    from paddlenlp.transformers.llama.modeling import LlamaRMSNorm
    from paddlenlp.transformers.llama.modeling_pp import LlamaRMSNormPipe

    x = paddle.randn([2, 5, 64])
    pipe = LlamaRMSNormPipe(LlamaConfig(hidden_size=64, rms_norm_eps=1e-6))  # the pipeline stages' final norm
    expected = rms_norm_reference(x, pipe.norm.weight, 1e-6).numpy()
    np.testing.assert_allclose(pipe(x).numpy(), expected, atol=TOL)
    assert op_calls[0] == 1
    for flags in (dict(sequence_parallel=True), dict(use_fused_rms_norm=True)):
        layer = LlamaRMSNorm(LlamaConfig(hidden_size=64, rms_norm_eps=1e-6))
        layer.config = SimpleNamespace(**{"use_fused_rms_norm": False, "sequence_parallel": False, **flags})
        assert not norm.rms_norm_applies(layer, x)
    plain = LlamaRMSNorm(LlamaConfig(hidden_size=64, rms_norm_eps=1e-6))
    assert norm.rms_norm_applies(plain, x) and not norm.rms_norm_applies(plain, x.astype("bfloat16"))
    norm.uninstall_rms_norm()
    try:
        assert not hasattr(LlamaRMSNorm.forward, "_alignment_original")
        np.testing.assert_allclose(plain(x).numpy(), expected, atol=TOL)
        assert op_calls[0] == 1
    finally:
        norm.install_rms_norm()
        norm.install_rms_norm()  # idempotent: wraps the original once
    assert LlamaRMSNorm.forward._alignment_original.__qualname__ == "LlamaRMSNorm.forward"
    plain(x)
    assert op_calls[0] == 2

"""Fused completion log-probs (alignment.ops.completion_logps) against the pure-Paddle reference.

Tolerance: 1e-5 absolute in float32, against the reference evaluated in float64 on the same float32
inputs. (The float32 reference itself is off by up to ~1e-5 in the entropy, where lse - sum p z
cancels; the fused kernel is closer to the float64 value, so float64 is the fair yardstick.)
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from alignment import ops
from alignment.algorithms import utils
from alignment.ops import completion_logps, completion_logps_reference

TOL = 1e-5


def _batch(seed: int, n=3, length=9, vocab=257, scale=3.0):
    paddle.seed(seed)
    logits = paddle.randn([n, length, vocab]) * scale
    labels = paddle.randint(0, vocab, [n, length - 1])
    labels[0, :3] = -100  # a prompt
    mask = paddle.ones([n, length - 1])
    mask[1, 4:] = 0  # right padding
    return logits, labels, mask


def _grads(fn, logits, labels, mask, temperature, with_entropy, weights):
    x = logits.detach().clone()
    x.stop_gradient = False
    logps, entropy = fn(x, labels, mask, with_entropy=with_entropy, temperature=temperature)
    loss = (logps.astype("float64") * weights[0]).sum()
    if with_entropy:
        loss = loss + (entropy.astype("float64") * weights[1]).sum()
    (grad,) = paddle.grad([loss], [x])
    return logps, entropy, grad


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_fused_logps_entropy_and_grads_match_reference(ops_library, temperature, with_entropy):
    logits, labels, mask = _batch(0)
    weights = [paddle.randn(labels.shape, dtype="float64") for _ in range(2)]
    fused = _grads(lambda *a, **k: completion_logps(*a, **k, use_fusemt=True), logits, labels, mask,
                   temperature, with_entropy, weights)

    def reference64(x, *a, **k):  # float64 maths on the float32 input; the gradient flows back to float32
        return completion_logps_reference(x.astype("float64"), *a, **k)

    ref = _grads(reference64, logits, labels, mask, temperature, with_entropy, weights)
    np.testing.assert_allclose(fused[0].numpy(), ref[0].numpy(), atol=TOL, rtol=0)
    if with_entropy:
        np.testing.assert_allclose(fused[1].numpy(), ref[1].numpy(), atol=TOL, rtol=0)
    else:
        assert fused[1] is None
    np.testing.assert_allclose(fused[2].numpy(), ref[2].numpy(), atol=TOL, rtol=0)
    ignored = (labels.numpy() < 0) | (mask.numpy() == 0)
    assert np.all(fused[0].numpy()[ignored] == 0) and np.all(fused[2].numpy()[:, :-1][ignored] == 0)
    assert np.all(fused[2].numpy()[:, -1] == 0)  # the last position scores nothing (T = L - 1)


def test_float64_and_only_entropy_gradient(ops_library):
    logits, labels, mask = _batch(1)
    x = logits.astype("float64")
    x.stop_gradient = False
    lp, ent = completion_logps(x, labels, mask, with_entropy=True, use_fusemt=True)
    rlp, rent = completion_logps_reference(x, labels, mask, with_entropy=True)
    np.testing.assert_allclose(lp.numpy(), rlp.numpy(), atol=1e-12)
    (g,) = paddle.grad([ent.sum()], [x])  # the log-probs do not reach the loss: their gradient is absent
    (rg,) = paddle.grad([rent.sum()], [x])
    np.testing.assert_allclose(g.numpy(), rg.numpy(), atol=1e-12)


def test_utils_helpers_route_through_the_fused_op_and_keep_their_values(ops_library, monkeypatch):
    logits, labels, _ = _batch(2)
    calls = []
    original = ops.logps.completion_logps
    monkeypatch.setattr(ops.logps, "completion_logps", lambda *a, **k: calls.append(1) or original(*a, **k))
    fused_lp = utils.gather_logps(logits, labels, 0.7)  # T = L - 1: no slice needed
    fused_h = utils.entropy_from_logits(logits)
    assert len(calls) == 2
    with ops.use_fusemt(False):
        ref_lp = utils.gather_logps(logits[:, :-1], labels, 0.7)
        ref_h = utils.entropy_from_logits(logits)
    assert len(calls) == 2
    keep = labels.numpy() >= 0
    np.testing.assert_allclose(fused_lp.numpy()[keep], ref_lp.numpy()[keep], atol=3e-5)
    np.testing.assert_allclose(fused_h.numpy(), ref_h.numpy(), atol=3e-5)


def test_vocab_shard_keeps_the_sharded_path(ops_library, monkeypatch):
    logits, labels, _ = _batch(3, vocab=64)
    labels = paddle.clip(labels, min=0)
    ident = lambda t: t  # noqa: E731 - a one-rank "group": the sharded maths on the local slice
    shard = utils.VocabShard(local_size=64, full_size=128, offset=0, sum=ident, max=ident, to_local=ident)
    monkeypatch.setattr(ops.logps, "completion_logps", lambda *a, **k: pytest.fail("fused op under a vocab shard"))
    previous = utils.set_vocab_shard(shard)
    try:
        sharded = utils.gather_logps(logits[:, :-1], labels)
        entropy = utils.entropy_from_logits(logits)
    finally:
        utils.set_vocab_shard(previous)
    ref, ref_h = completion_logps_reference(logits, labels, with_entropy=True)
    np.testing.assert_allclose(sharded.numpy(), ref.numpy(), atol=3e-5)
    assert entropy.shape == logits.shape[:2]


def _stage_losses(logits: paddle.Tensor, labels: paddle.Tensor):
    """SFT, DPO-family (sigmoid), KTO-style summed completion log-probs and PPO (surrogate + entropy) losses."""
    from alignment.algorithms.policy import entropy_bonus, ppo_loss
    from alignment.algorithms.preference import PairLogps, sigmoid_loss
    from alignment.sft.trainer import answer_nll
    from alignment.training.logps import logits_completion_logps, split_pair

    sft, _, _ = answer_nll(logits, labels)
    out = logits_completion_logps(logits, labels)
    pair = split_pair(out, None)
    dpo = sigmoid_loss(PairLogps(chosen=pair.chosen, rejected=pair.rejected,
                                 ref_chosen=pair.chosen.detach() * 0.9, ref_rejected=pair.rejected.detach() * 1.1))
    dpo = dpo[0] if isinstance(dpo, tuple) else dpo
    mask = out.mask
    logps = utils.gather_logps(logits, labels[:, 1:], 0.8) * mask
    adv = paddle.linspace(-1, 1, mask.shape[1]).unsqueeze(0).expand(mask.shape)
    ppo, _ = ppo_loss(logps, logps.detach() + 0.05, adv, mask)
    ent, _ = entropy_bonus(logits[:, :-1] / 0.8, mask)
    return [sft, dpo.mean(), out.logps.sum(), ppo - 0.01 * ent]


def test_stage_losses_unchanged_with_use_fusemt_on_and_off(ops_library):
    logits, labels, _ = _batch(4, n=4, length=10, vocab=97)
    full = paddle.concat([paddle.full([4, 1], -100, dtype="int64"), labels], axis=1)
    results = {}
    for flag in (True, False):
        x = logits.detach().clone()
        x.stop_gradient = False
        with ops.use_fusemt(flag):
            losses = _stage_losses(x, full)
            grads = paddle.grad([sum(losses)], [x])[0]
        results[flag] = ([float(v) for v in losses], grads.numpy())
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(results[True][1], results[False][1], atol=2e-5)


def test_failed_build_warns_once_and_uses_the_reference(ops_library, monkeypatch, tmp_path):
    from alignment.ops import _build

    broken = tmp_path / "csrc"
    broken.mkdir()
    (broken / "alignment_ops.cc").write_text("#error deliberately broken source\n")
    (broken / "build.py").write_text((_build.CSRC / "build.py").read_text())
    monkeypatch.setenv("ALIGNMENT_OPS_CSRC", str(broken))
    monkeypatch.setenv("ALIGNMENT_OPS_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setattr(_build, "CSRC", broken)
    _build.reset_for_tests()
    try:
        with pytest.warns(RuntimeWarning, match="deliberately broken source") as record:
            assert _build.load_ops() is None
            assert _build.load_ops() is None  # no second build, no second warning
        assert len(record) == 1 and "pure-Paddle" in str(record[0].message)
        logits, labels, mask = _batch(5)
        got, _ = completion_logps(logits, labels, mask)
        want, _ = completion_logps_reference(logits, labels, mask)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        monkeypatch.setattr(_build.shutil, "which", lambda name: None)
        _build.reset_for_tests()
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
            assert _build.load_ops() is None
    finally:
        _build.reset_for_tests()


def test_offset_scores_a_window_without_slicing(ops_library):
    """labels[:, t] scored by logits[:, offset + t] (the response window of experience making), grads too."""
    logits, labels, mask = _batch(4, length=12)
    offset, width = 3, 6
    labels, mask = labels[:, :width], mask[:, :width]
    weights = paddle.randn(labels.shape, dtype="float64")
    out = []
    for fn in (lambda x: completion_logps(x, labels, mask, temperature=0.9, offset=offset, use_fusemt=True)[0],
               lambda x: completion_logps_reference(x[:, offset : offset + width].astype("float64"), labels, mask,
                                                    temperature=0.9)[0]):
        x = logits.detach().clone()
        x.stop_gradient = False
        lp = fn(x)
        (grad,) = paddle.grad([(lp.astype("float64") * weights).sum()], [x])
        out.append((lp.numpy(), grad.numpy()))
    np.testing.assert_allclose(out[0][0], out[1][0], atol=TOL, rtol=0)
    np.testing.assert_allclose(out[0][1], out[1][1], atol=TOL, rtol=0)
    assert np.abs(out[0][1][:, :offset]).max() == 0 and np.abs(out[0][1][:, offset + width :]).max() == 0
    with pytest.raises(ValueError, match="offset"):
        completion_logps(logits, labels, offset=12 - width + 1)

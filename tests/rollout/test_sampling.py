"""The per-step sampler: greedy, temperature, top-k, top-p, repetition penalty, and its registry."""

import numpy as np
import paddle
import pytest

from alignment.rollout import sampling
from alignment.rollout.sampling import (
    apply_repetition_penalty,
    available_samplers,
    get_sampler,
    register_sampler,
    sample_next_token,
    top_k_top_p_filter,
)


def _logits():
    return paddle.to_tensor([[2.0, 1.0, 0.5, -1.0, -3.0], [-1.0, 0.0, 3.0, 1.0, 0.2]], dtype="float32")


def test_greedy_is_argmax():
    ids = sample_next_token(_logits(), paddle.zeros([2, 1], dtype="int64"), do_sample=False)
    assert ids.tolist() == [0, 2]


def test_repetition_penalty_loop_reference():
    logits = _logits()
    generated = paddle.to_tensor([[0, 3, 3], [2, 4, 1]], dtype="int64")
    mask = paddle.to_tensor([[1, 1, 1], [0, 1, 1]], dtype="int64")  # token 2 of row 1 is a pad: not penalised
    out = apply_repetition_penalty(logits, generated, 1.5, mask).numpy()
    ref = logits.numpy().copy()
    for b in range(2):
        seen = {int(t) for t, m in zip(generated.numpy()[b], mask.numpy()[b]) if m}
        for t in seen:
            ref[b, t] = ref[b, t] / 1.5 if ref[b, t] > 0 else ref[b, t] * 1.5
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    # penalty 1 is the identity
    np.testing.assert_array_equal(apply_repetition_penalty(logits, generated, 1.0).numpy(), logits.numpy())


def test_top_k_and_top_p_filters():
    logits = _logits()
    k2 = top_k_top_p_filter(logits, top_k=2).numpy()
    assert np.isfinite(k2).sum(axis=1).tolist() == [2, 2]
    assert np.isfinite(k2[0, :2]).all() and np.isfinite(k2[1, [2, 3]]).all()
    # nucleus: smallest sorted prefix whose mass reaches p (loop reference)
    for p in (0.3, 0.6, 0.9, 0.999):
        got = np.isfinite(top_k_top_p_filter(logits, top_p=p).numpy())
        for b, row in enumerate(logits.numpy()):
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            order = np.argsort(-probs)
            keep, mass = set(), 0.0
            for t in order:
                keep.add(int(t))
                mass += probs[t]
                if mass >= p:
                    break
            assert set(np.nonzero(got[b])[0].tolist()) == keep, (p, b)


def test_sampling_respects_filters_and_temperature():
    paddle.seed(0)
    logits = _logits().tile([200, 1])
    hist = paddle.zeros([400, 1], dtype="int64")
    ids = sample_next_token(logits, hist, top_k=2).numpy().reshape(200, 2)
    assert set(ids[:, 0]) <= {0, 1} and set(ids[:, 1]) <= {2, 3}
    # a very low temperature is (almost surely) greedy
    cold = sample_next_token(logits, hist, temperature=1e-3).numpy().reshape(200, 2)
    assert (cold[:, 0] == 0).all() and (cold[:, 1] == 2).all()
    # temperature 1: empirical frequencies follow the softmax
    paddle.seed(1)
    many = sample_next_token(_logits()[:1].tile([4000, 1]), paddle.zeros([4000, 1], dtype="int64")).numpy()
    probs = np.exp(_logits().numpy()[0]) / np.exp(_logits().numpy()[0]).sum()
    freq = np.bincount(many, minlength=5) / 4000
    np.testing.assert_allclose(freq, probs, atol=0.03)


def test_registry_lists_and_replaces():
    assert "default" in available_samplers()
    assert get_sampler("default") is sample_next_token
    with pytest.raises(ValueError, match="valid samplers: .*default"):
        get_sampler("nope")

    @register_sampler("test-always-7")
    def always7(logits, generated, **kw):
        return paddle.full([logits.shape[0]], 7, dtype="int64")

    try:
        assert get_sampler("test-always-7")(_logits(), None).tolist() == [7, 7]
        with pytest.raises(ValueError, match="already registered"):
            register_sampler("test-always-7")(lambda *a, **k: None)
    finally:
        sampling._SAMPLERS.pop("test-always-7")


def test_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        sample_next_token(_logits(), paddle.zeros([2, 1], dtype="int64"), temperature=0.0)
    with pytest.raises(ValueError, match="repetition_penalty"):
        apply_repetition_penalty(_logits(), paddle.zeros([2, 1], dtype="int64"), 0.0)

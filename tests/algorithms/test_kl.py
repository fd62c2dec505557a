"""Value tests of ``alignment.algorithms.kl`` against token-by-token references in plain Python (float64)."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry
from alignment.algorithms.kl import kl_shaped_rewards

COVERED = {"kl": {"k1", "k2", "k3"}}

DTYPES = ["float32", "float64"]
B, T = 5, 7


def close(actual, expected, dtype):
    rtol = 1e-5 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(np.asarray(actual, dtype="float64"), expected, rtol=rtol, atol=1e-6)


def ref_estimator(name, logp, ref, clip=None):
    x = logp - ref
    if clip is not None:
        x = min(max(x, -clip), clip)
    if name == "k1":
        return x
    if name == "k2":
        return 0.5 * x * x
    return math.exp(-x) + x - 1.0


def ref_matrix(name, logps, ref_logps, clip=None):
    out = np.zeros(logps.shape)
    for i in range(logps.shape[0]):
        for t in range(logps.shape[1]):
            out[i, t] = ref_estimator(name, float(logps[i, t]), float(ref_logps[i, t]), clip)
    return out


def random_logps(seed, dtype):
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(0.05, 4.0, (B, T))
    ref = logps + rng.normal(scale=0.7, size=(B, T))
    return logps.astype(dtype), ref.astype(dtype)


@pytest.mark.parametrize("name", sorted(COVERED["kl"]))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clip", [None, 0.5])
def test_kl_estimator_matches_reference(name, dtype, clip):
    logps, ref = random_logps(1, dtype)
    x = paddle.to_tensor(logps, stop_gradient=False)
    out = registry.get("kl", name)(x, paddle.to_tensor(ref), log_ratio_clip=clip)
    assert out.shape == [B, T] and out.dtype == x.dtype
    close(out.numpy(), ref_matrix(name, logps.astype("float64"), ref.astype("float64"), clip), dtype)
    out.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_k2_k3_nonnegative_and_k3_clip_prevents_overflow():
    logps = paddle.to_tensor([[-200.0, 0.0]], dtype="float32", stop_gradient=False)
    ref = paddle.to_tensor([[0.0, -1.0]], dtype="float32")
    out = registry.get("kl", "k3")(logps, ref, log_ratio_clip=20.0)
    assert np.isfinite(out.numpy()).all() and (out.numpy() >= 0).all()
    out.sum().backward()
    assert np.isfinite(logps.grad.numpy()).all()
    assert (registry.get("kl", "k2")(logps, ref).numpy() >= 0).all()


def ref_shaped(scores, old, ref, mask, kl_coeff, clip_score, estimator):
    out = np.zeros(old.shape)
    for i in range(old.shape[0]):
        last = None
        for t in range(old.shape[1]):
            if mask[i, t]:
                out[i, t] = -kl_coeff * ref_estimator(estimator, float(old[i, t]), float(ref[i, t]))
                last = t
        if last is not None:
            out[i, last] += min(max(float(scores[i]), -clip_score), clip_score)
    return out


def prompt_response_mask(starts, lengths):
    mask = np.zeros((B, T), "float32")
    for i, (s, n) in enumerate(zip(starts, lengths)):
        mask[i, s : s + n] = 1
    return mask


@pytest.mark.parametrize("estimator", sorted(COVERED["kl"]))
@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_shaped_rewards_matches_reference(estimator, dtype):
    old, ref = random_logps(2, dtype)
    # left prompt offsets, a length-1 response and an empty row
    mask = prompt_response_mask(starts=[0, 2, 3, 6, 1], lengths=[7, 3, 4, 1, 0])
    old[mask == 0] = np.nan  # garbage outside the mask must not leak
    scores = np.array([0.3, -7.0, 12.0, 2.0, 5.0], dtype)
    rewards, metrics = kl_shaped_rewards(
        paddle.to_tensor(scores),
        paddle.to_tensor(old),
        paddle.to_tensor(ref),
        paddle.to_tensor(mask),
        kl_coeff=0.05,
        clip_range_score=5.0,
        estimator=estimator,
    )
    expected = ref_shaped(scores, old, ref, mask, 0.05, 5.0, estimator)
    assert not np.isnan(rewards.numpy()).any()
    close(rewards.numpy(), expected, dtype)
    assert float(np.abs(rewards.numpy()[4]).sum()) == 0.0  # empty row: nothing added
    kl_part = [
        -0.05 * ref_estimator(estimator, float(old[i, t]), float(ref[i, t]))
        for i in range(B)
        for t in range(T)
        if mask[i, t]
    ]
    close(float(metrics["kl_reward"]), sum(kl_part) / len(kl_part), dtype)
    close(float(metrics["reward_with_kl"]), expected[mask == 1].sum() / mask.sum(), dtype)
    close(float(metrics["clipped_score"]), np.clip(scores.astype("float64"), -5, 5).mean(), dtype)
    assert all(v.stop_gradient for v in metrics.values())


def test_unknown_estimator_lists_valid_names():
    x = paddle.zeros([1, 2])
    with pytest.raises(ValueError, match="valid names: k1, k2, k3"):
        kl_shaped_rewards(paddle.zeros([1]), x, x, x, kl_coeff=0.1, clip_range_score=1.0, estimator="k4")

"""Tests of ``alignment.algorithms.distill`` against a token-by-token reference (plain Python, float64)."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry

COVERED = {"distill": {"generalized_jsd"}}

DTYPES = ["float32", "float64"]
B, T, V = 3, 5, 6


def close(actual, expected, dtype):
    rtol = 1e-5 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(np.asarray(actual, dtype="float64"), expected, rtol=rtol, atol=1e-6)


def softmax(z):
    zmax = max(z)
    e = [math.exp(v - zmax) for v in z]
    s = sum(e)
    return [v / s for v in e]


def kl(p, q):
    return sum(p[v] * (math.log(p[v]) - math.log(q[v])) for v in range(len(p)) if p[v] > 0)


def ref_jsd(student, teacher, mask, beta, temperature):
    total, n = 0.0, 0
    for i in range(student.shape[0]):
        for t in range(student.shape[1]):
            if not mask[i, t]:
                continue
            ps = softmax([float(v) / temperature for v in student[i, t]])
            pt = softmax([float(v) / temperature for v in teacher[i, t]])
            if beta == 0:
                value = kl(pt, ps)
            elif beta == 1:
                value = kl(ps, pt)
            else:
                m = [(1 - beta) * ps[v] + beta * pt[v] for v in range(len(ps))]
                value = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
            total += value
            n += 1
    return total / n if n else 0.0


def make(seed, dtype):
    rng = np.random.default_rng(seed)
    student = (rng.normal(size=(B, T, V)) * 2).astype(dtype)
    teacher = (rng.normal(size=(B, T, V)) * 2).astype(dtype)
    mask = np.zeros((B, T), "float32")
    mask[0, 1:] = 1
    mask[1, 4] = 1  # a length-1 completion; row 2 is empty
    return student, teacher, mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_matches_reference(dtype, beta, temperature):
    student, teacher, mask = make(int(beta * 10) + int(temperature), dtype)
    s = paddle.to_tensor(student, stop_gradient=False)
    loss, metrics = registry.get("distill", "generalized_jsd")(
        s, paddle.to_tensor(teacher), paddle.to_tensor(mask), beta=beta, temperature=temperature
    )
    expected = ref_jsd(student, teacher, mask, beta, temperature)
    close(float(loss), expected, dtype)
    close(float(metrics["jsd"]), expected, dtype)
    assert metrics["jsd"].stop_gradient
    loss.backward()
    assert np.isfinite(s.grad.numpy()).all()


def test_empty_mask_gives_zero_and_identical_distributions_give_zero():
    student, teacher, _ = make(0, "float32")
    fn = registry.get("distill", "generalized_jsd")
    s = paddle.to_tensor(student, stop_gradient=False)
    loss, _ = fn(s, paddle.to_tensor(teacher), paddle.zeros([B, T]))
    assert float(loss) == 0.0
    loss.backward()
    assert np.isfinite(s.grad.numpy()).all()
    same, _ = fn(paddle.to_tensor(student), paddle.to_tensor(student), paddle.ones([B, T]), beta=0.5)
    assert abs(float(same)) < 1e-6


def test_bad_beta_and_temperature():
    x = paddle.zeros([1, 1, 2])
    fn = registry.get("distill", "generalized_jsd")
    with pytest.raises(ValueError, match="beta must be in"):
        fn(x, x, paddle.ones([1, 1]), beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        fn(x, x, paddle.ones([1, 1]), temperature=0.0)

"""Value tests of ``alignment.algorithms.normalizers`` against NumPy / loop references (float64)."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry
from alignment.algorithms.normalizers import (
    ExponentialMovingAverage,
    IdentityNormalizer,
    RunningMeanStd,
    make_normalizer,
)

COVERED = {"normalizer": {"RunningMeanStd", "ExponentialMovingAverage", "IdentityNormalizer"}}

DTYPES = ["float32", "float64"]
D = 3


def close(actual, expected, dtype):
    rtol = 1e-5 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(np.asarray(actual, dtype="float64"), expected, rtol=rtol, atol=1e-6)


def batches(seed, dtype, sizes=(5, 1, 8, 2)):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n, D)) * 2 + 1).astype(dtype) for n in sizes]


@pytest.mark.parametrize("dtype", DTYPES)
def test_running_mean_std_equals_numpy_over_concatenated_data(dtype):
    norm = registry.get("normalizer", "RunningMeanStd")(D, dtype=dtype)
    seen = []
    for x in batches(0, dtype):
        norm.update(paddle.to_tensor(x))
        seen.append(x.astype("float64"))
        data = np.concatenate(seen)
        close(norm.mean.numpy(), data.mean(axis=0), dtype)
        if len(data) > 1:
            close(norm.var.numpy(), data.var(axis=0, ddof=1), dtype)
        assert float(norm.count) == len(data)


def test_running_mean_std_single_sample_keeps_initial_variance_and_1d_input():
    norm = RunningMeanStd(1, dtype="float64")
    norm.update(paddle.to_tensor([2.5], dtype="float64"))  # (N,) with D = 1
    assert norm.mean.tolist() == [2.5] and norm.var.tolist() == [1.0] and norm.count.tolist() == [1.0]
    norm.update(paddle.to_tensor([0.5, 1.0], dtype="float64"))
    close(norm.var.numpy(), np.var([2.5, 0.5, 1.0], ddof=1), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_exponential_moving_average_matches_reference(dtype, momentum):
    norm = registry.get("normalizer", "ExponentialMovingAverage")(D, momentum=momentum, dtype=dtype)
    mean, var, count = [0.0] * D, [1.0] * D, 0
    for x in batches(1, dtype, sizes=(4, 6, 3)):
        norm.update(paddle.to_tensor(x))
        for j in range(D):
            col = [float(v) for v in x[:, j]]
            m_b = sum(col) / len(col)
            v_b = sum((v - m_b) ** 2 for v in col) / (len(col) - 1)
            mean[j] = momentum * mean[j] + (1 - momentum) * m_b
            var[j] = momentum * var[j] + (1 - momentum) * v_b
        count += len(x)
        close(norm.mean.numpy(), mean, dtype)
        close(norm.var.numpy(), var, dtype)
        assert float(norm.count) == count


def test_identity_normalizer_only_counts():
    norm = registry.get("normalizer", "IdentityNormalizer")(D)
    norm.update(paddle.to_tensor(batches(2, "float32")[0]))
    assert norm.mean.tolist() == [0.0] * D and norm.var.tolist() == [1.0] * D and float(norm.count) == 5
    x = paddle.to_tensor([[3.0, -1.0, 2.0]])
    for mode in ("affine", "scale", "translate", "identity"):
        assert norm.normalize(x, mode).tolist() == x.tolist()


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_modes(dtype):
    norm = RunningMeanStd(D, dtype=dtype)
    for x in batches(3, dtype):
        norm.update(paddle.to_tensor(x))
    mean, std = norm.mean.numpy().astype("float64"), np.sqrt(norm.var.numpy().astype("float64"))
    x = np.random.default_rng(4).normal(size=(2, 4, D)).astype(dtype)
    xt = paddle.to_tensor(x)
    expected = {
        "affine": (x - mean) / (std + 1e-8),
        "scale": x / (std + 1e-8),
        "translate": x - mean,
        "identity": x.astype("float64"),
    }
    for mode, value in expected.items():
        close(norm.normalize(xt, mode).numpy(), value, dtype)
    close(norm(xt).numpy(), expected["affine"], dtype)
    with pytest.raises(ValueError, match="valid modes: affine, scale, translate, identity"):
        norm.normalize(xt, "whiten")


@pytest.mark.parametrize("name", sorted(COVERED["normalizer"]))
def test_state_dict_round_trip(name):
    a = make_normalizer(name, D, momentum=0.9)
    for x in batches(5, "float32"):
        a.update(paddle.to_tensor(x))
    state = a.state_dict()
    assert set(state) == {"mean", "var", "count"}
    b = make_normalizer(name, [D], momentum=0.9)
    b.set_state_dict(state)
    for key in ("mean", "var", "count"):
        np.testing.assert_array_equal(getattr(b, key).numpy(), getattr(a, key).numpy())
    # the restored normaliser keeps merging exactly like the original
    extra = paddle.to_tensor(batches(6, "float32", sizes=(3,))[0])
    a.update(extra)
    b.update(extra)
    np.testing.assert_array_equal(b.var.numpy(), a.var.numpy())


def test_state_travels_inside_a_parent_layer():
    class Head(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.linear = paddle.nn.Linear(2, 1)
            self.normalizer = RunningMeanStd(1)

    a = Head()
    a.normalizer.update(paddle.to_tensor([1.0, 2.0, 4.0]))
    assert {"normalizer.mean", "normalizer.var", "normalizer.count"} <= set(a.state_dict())
    b = Head()
    b.set_state_dict(a.state_dict())
    assert b.normalizer.count.tolist() == [3.0]
    close(b.normalizer.var.numpy(), [np.var([1.0, 2.0, 4.0], ddof=1)], "float32")


def test_factory_and_errors():
    assert isinstance(make_normalizer(None, 2), IdentityNormalizer)
    assert isinstance(make_normalizer("RunningMeanStd", 2, momentum=0.5), RunningMeanStd)
    assert make_normalizer("ExponentialMovingAverage", 2, momentum=0.5).momentum == 0.5
    with pytest.raises(ValueError, match="normalizer_momentum"):
        make_normalizer("ExponentialMovingAverage", 2)
    with pytest.raises(ValueError, match="normalizer_momentum"):
        ExponentialMovingAverage(2, momentum=1.0)
    with pytest.raises(
        ValueError, match="valid names: ExponentialMovingAverage, IdentityNormalizer, RunningMeanStd"
    ):
        make_normalizer("BatchNorm", 2)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        RunningMeanStd(2).update(paddle.ones([4, 3]))

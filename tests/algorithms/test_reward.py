"""Tests of ``alignment.algorithms.reward`` against slow pair-by-pair references (plain Python, float64)."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry
from alignment.algorithms.reward import end_scores, last_token_index

COVERED = {"reward": {"sequence-wise", "token-wise"}}

DTYPES = ["float32", "float64"]
B, L = 6, 9


def close(actual, expected, dtype):
    rtol = 1e-5 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(np.asarray(actual, dtype="float64"), expected, rtol=rtol, atol=1e-6)


def logsig(z):
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def ref_last(mask_row):
    last = 0
    for t in range(len(mask_row)):
        if mask_row[t]:
            last = t
    return last


def make_pairs(seed, lengths_c=None, lengths_r=None):
    rng = np.random.default_rng(seed)
    lc = rng.integers(1, L + 1, B) if lengths_c is None else np.asarray(lengths_c)
    lr = rng.integers(1, L + 1, B) if lengths_r is None else np.asarray(lengths_r)
    mc = np.zeros((B, L), "int64")
    mr = np.zeros((B, L), "int64")
    ids_c = np.zeros((B, L), "int64")
    ids_r = np.zeros((B, L), "int64")
    for i in range(B):
        mc[i, : lc[i]] = 1
        mr[i, : lr[i]] = 1
        ids_c[i, : lc[i]] = rng.integers(1, 50, lc[i])
        ids_r[i, : lr[i]] = rng.integers(1, 50, lr[i])
        d = rng.integers(0, min(lc[i], lr[i]))  # a shared prefix, then a guaranteed difference at d
        ids_r[i, :d] = ids_c[i, :d]
        ids_r[i, d] = ids_c[i, d] % 49 + 1  # never equal to ids_c[i, d] (both in 1..49)
    sc = rng.normal(size=(B, L)) * 2
    sr = rng.normal(size=(B, L)) * 2
    margin = rng.uniform(0, 1, B)
    return dict(sc=sc, sr=sr, mc=mc, mr=mr, ids_c=ids_c, ids_r=ids_r, margin=margin)


def ref_sequence_wise(d, reg, use_margin, c):
    rc = [d["sc"][i, ref_last(d["mc"][i])] for i in range(B)]
    rr = [d["sr"][i, ref_last(d["mr"][i])] for i in range(B)]
    loss = 0.0
    for i in range(B):
        m = d["margin"][i] if use_margin else 0.0
        loss -= logsig(rc[i] - rr[i] - m) / B
    loss += reg * sum(x * x for x in rc + rr) / (2 * B)
    if c:
        loss += c * sum((rc[i] + rr[i]) ** 2 for i in range(B)) / B
    return loss, rc, rr


def ref_token_wise(d, reg, use_margin, c):
    rc = [d["sc"][i, ref_last(d["mc"][i])] for i in range(B)]
    rr = [d["sr"][i, ref_last(d["mr"][i])] for i in range(B)]
    total = 0.0
    for i in range(B):
        div = next(t for t in range(L) if d["ids_c"][i, t] != d["ids_r"][i, t])
        end = max(ref_last(d["mc"][i]), ref_last(d["mr"][i]))
        m = d["margin"][i] if use_margin else 0.0
        window = range(div, end + 1)
        n = len(window)
        li = sum(-logsig(d["sc"][i, t] - d["sr"][i, t] - m) for t in window) / n
        li += (
            reg
            * (sum(d["sc"][i, t] ** 2 for t in window) / n + sum(d["sr"][i, t] ** 2 for t in window) / n)
            / 2
        )
        total += li / B
    if c:
        total += c * sum((rc[i] + rr[i]) ** 2 for i in range(B)) / B
    return total, rc, rr


REFS = {"sequence-wise": ref_sequence_wise, "token-wise": ref_token_wise}


def call(name, d, dtype, reg=0.0, use_margin=False, c=None, grad=False):
    sc = paddle.to_tensor(d["sc"].astype(dtype), stop_gradient=not grad)
    sr = paddle.to_tensor(d["sr"].astype(dtype), stop_gradient=not grad)
    loss, metrics = registry.get("reward", name)(
        sc,
        sr,
        paddle.to_tensor(d["mc"]),
        paddle.to_tensor(d["mr"]),
        chosen_ids=paddle.to_tensor(d["ids_c"]),
        rejected_ids=paddle.to_tensor(d["ids_r"]),
        regularization=reg,
        margin=paddle.to_tensor(d["margin"].astype(dtype)) if use_margin else None,
        center_rewards_coefficient=c,
    )
    return loss, metrics, sc, sr


@pytest.mark.parametrize("name", sorted(COVERED["reward"]))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reg,use_margin,c", [(0.0, False, None), (0.1, True, 0.01), (0.5, False, 0.2)])
def test_reward_loss_matches_reference(name, dtype, reg, use_margin, c):
    d = make_pairs(seed=int(reg * 10) + 7 * DTYPES.index(dtype) + 13 * len(name))
    expected, rc, rr = REFS[name](d, reg, use_margin, c)
    loss, metrics, sc, sr = call(name, d, dtype, reg, use_margin, c, grad=True)
    close(float(loss), expected, dtype)
    close(float(metrics["accuracy"]), sum(rc[i] > rr[i] for i in range(B)) / B, dtype)
    close(float(metrics["rewards/chosen"]), sum(rc) / B, dtype)
    close(float(metrics["rewards/rejected"]), sum(rr) / B, dtype)
    close(float(metrics["rewards/margins"]), sum(rc[i] - rr[i] for i in range(B)) / B, dtype)
    assert all(v.stop_gradient for v in metrics.values())
    loss.backward()
    for x in (sc, sr):
        assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize("name", sorted(COVERED["reward"]))
def test_length_one_responses(name):
    d = make_pairs(seed=3, lengths_c=[1] * B, lengths_r=[1] * B)
    expected, _, _ = REFS[name](d, 0.1, True, None)
    loss, _, _, _ = call(name, d, "float64", 0.1, True)
    close(float(loss), expected, "float64")


def test_token_wise_rejects_identical_pairs_and_missing_ids():
    d = make_pairs(seed=5)
    d["ids_r"][2] = d["ids_c"][2]
    d["mr"][2] = d["mc"][2]
    with pytest.raises(ValueError, match=r"identical.*\[2\]"):
        call("token-wise", d, "float32")
    fn = registry.get("reward", "token-wise")
    x = paddle.zeros([2, 3])
    with pytest.raises(ValueError, match="chosen_ids and rejected_ids"):
        fn(x, x, paddle.ones([2, 3]), paddle.ones([2, 3]))


def test_accuracy_is_strict():
    fn = registry.get("reward", "sequence-wise")
    s = paddle.to_tensor([[1.0, 2.0], [0.5, 0.5]])
    m = paddle.ones([2, 2], dtype="int64")
    _, metrics = fn(s, s, m, m)
    assert float(metrics["accuracy"]) == 0.0


def test_end_scores_and_last_token_index():
    mask = paddle.to_tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0]])
    assert last_token_index(mask).tolist() == [1, 3, 0, 2]
    scores = paddle.arange(16, dtype="float32").reshape([4, 4])
    assert end_scores(scores, mask).tolist() == [1.0, 7.0, 8.0, 14.0]
    scores3 = paddle.arange(32, dtype="float32").reshape([4, 4, 2])
    assert end_scores(scores3, mask.astype("bool")).tolist() == [
        [2.0, 3.0],
        [14.0, 15.0],
        [16.0, 17.0],
        [28.0, 29.0],
    ]

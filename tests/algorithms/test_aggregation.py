"""Tests of ``alignment.algorithms.aggregation`` vs loop references, and exact data-parallel sharding."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry
from alignment.algorithms.aggregation import aggregate, aggregation_counts

COVERED = {
    "aggregation": {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"}
}

DTYPES = ["float32", "float64"]
B, T = 6, 7


def close(actual, expected, dtype):
    rtol = 1e-5 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(np.asarray(actual, dtype="float64"), expected, rtol=rtol, atol=1e-6)


def ref_aggregate(loss, mask, mode, norm_length=None):
    rows, tokens, n_tok, n_seq = [], 0.0, 0, 0
    for i in range(loss.shape[0]):
        total, n = 0.0, 0
        for t in range(loss.shape[1]):
            if mask[i, t]:
                total += float(loss[i, t])
                n += 1
        tokens += total
        n_tok += n
        if n:
            n_seq += 1
            if mode == "seq-mean-token-mean":
                rows.append(total / n)
            elif mode == "seq-mean-token-sum":
                rows.append(total)
            else:
                rows.append(total / (loss.shape[1] if norm_length is None else norm_length))
    if mode == "token-mean":
        return tokens / max(n_tok, 1)
    return sum(rows) / max(n_seq, 1)


def data(seed, dtype):
    rng = np.random.default_rng(seed)
    loss = rng.normal(size=(B, T)).astype(dtype)
    mask = np.zeros((B, T), "float32")
    for i, (s, n) in enumerate(zip([0, 2, 5, 0, 3, 1], [7, 4, 1, 0, 2, 6])):  # left offsets, len 1, empty row
        mask[i, s : s + n] = 1
    loss[mask == 0] = np.nan  # garbage outside the mask must not leak
    return loss, mask


@pytest.mark.parametrize("mode", sorted(COVERED["aggregation"]))
@pytest.mark.parametrize("dtype", DTYPES)
def test_aggregation_matches_reference(mode, dtype):
    loss, mask = data(0, dtype)
    x = paddle.to_tensor(loss, stop_gradient=False)
    out = registry.get("aggregation", mode)(x, paddle.to_tensor(mask))
    assert out.shape == [] and out.dtype == x.dtype
    close(float(out), ref_aggregate(loss, mask, mode), dtype)
    out.backward()
    assert np.isfinite(x.grad.numpy()).all()
    if mode == "seq-mean-token-sum-norm":
        close(
            float(aggregate(x, paddle.to_tensor(mask), mode, norm_length=16)),
            ref_aggregate(loss, mask, mode, 16),
            dtype,
        )


@pytest.mark.parametrize("mode", sorted(COVERED["aggregation"]))
def test_two_shards_with_global_counts_sum_to_the_unsharded_value(mode):
    loss, mask = data(1, "float64")
    full = float(aggregate(paddle.to_tensor(loss), paddle.to_tensor(mask), mode, norm_length=10))
    shards = [(loss[:2], mask[:2]), (loss[2:], mask[2:])]
    counts = [aggregation_counts(paddle.to_tensor(m)) for _, m in shards]
    n_tok = sum(float(c[0]) for c in counts)
    n_seq = sum(float(c[1]) for c in counts)
    total = sum(
        float(
            aggregate(
                paddle.to_tensor(part),
                paddle.to_tensor(m),
                mode,
                global_token_count=n_tok,
                global_seq_count=paddle.to_tensor(n_seq),
                norm_length=10,
            )
        )
        for part, m in shards
    )
    close(total, full, "float64")


@pytest.mark.parametrize("mode", sorted(COVERED["aggregation"]))
def test_empty_mask_gives_zero(mode):
    out = aggregate(paddle.ones([3, 4]), paddle.zeros([3, 4]), mode)
    assert float(out) == 0.0


def test_unknown_mode_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: seq-mean-token-mean"):
        aggregate(paddle.ones([1, 1]), paddle.ones([1, 1]), "mean")

"""Tests of ``alignment.algorithms.policy`` against token-by-token references (plain Python, float64)."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry
from alignment.algorithms.policy import entropy_bonus, kl_penalty_loss

COVERED = {"policy": {"ppo", "gspo", "cispo"}, "value": {"clipped"}}

DTYPES = ["float32", "float64"]
B, T, V = 5, 6, 7
STARTS, LENGTHS = [0, 2, 5, 1, 3], [6, 3, 1, 0, 2]  # left offsets, a length-1 response, an empty row


def close(actual, expected, dtype):
    rtol = 1e-5 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(np.asarray(actual, dtype="float64"), expected, rtol=rtol, atol=1e-6)


def make_mask():
    mask = np.zeros((B, T), "float32")
    for i, (s, n) in enumerate(zip(STARTS, LENGTHS)):
        mask[i, s : s + n] = 1
    return mask


def valid(mask):
    return [(i, t) for i in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[i, t]]


def ref_agg(per_token, mask, mode):
    """per_token: dict (i, t) -> loss over valid positions."""
    if mode == "token-mean":
        return sum(per_token.values()) / max(len(per_token), 1)
    rows = []
    for i in range(mask.shape[0]):
        items = [per_token[(i, t)] for t in range(mask.shape[1]) if mask[i, t]]
        if items:
            rows.append(sum(items) / (len(items) if mode == "seq-mean-token-mean" else 1))
    return sum(rows) / max(len(rows), 1)


def ref_metrics(ratios, mask, clipped_flags):
    cells = valid(mask)
    return {
        "actor/clipfrac": sum(clipped_flags[c] for c in cells) / len(cells),
        "actor/approx_kl": sum(ratios[c] - 1 - math.log(ratios[c]) for c in cells) / len(cells),
        "actor/ratio_mean": sum(ratios[c] for c in cells) / len(cells),
    }


def ref_ppo(logps, old, adv, mask, eps_low, eps_high, dual_clip, mode, sequence_level=False):
    per_token, ratios, flags = {}, {}, {}
    for i in range(B):
        cells = [t for t in range(T) if mask[i, t]]
        seq_ratio = (
            math.exp(sum(float(logps[i, t] - old[i, t]) for t in cells) / len(cells)) if cells else 1.0
        )
        for t in cells:
            r = seq_ratio if sequence_level else math.exp(float(logps[i, t]) - float(old[i, t]))
            a = float(adv[i, t])
            l1 = -a * r
            l2 = -a * min(max(r, 1 - eps_low), 1 + eps_high)
            loss = max(l1, l2)
            if dual_clip is not None and a < 0:
                loss = min(loss, -a * dual_clip)
            per_token[(i, t)], ratios[(i, t)], flags[(i, t)] = loss, r, float(l2 > l1)
    return ref_agg(per_token, mask, mode), ref_metrics(ratios, mask, flags)


def ref_cispo(logps, old, adv, mask, eps_low, eps_high, mode):
    per_token, ratios, flags = {}, {}, {}
    for i, t in valid(mask):
        r = math.exp(float(logps[i, t]) - float(old[i, t]))
        lo = 0.0 if eps_low is None else 1 - eps_low
        w = min(max(r, lo), 1 + eps_high)
        per_token[(i, t)], ratios[(i, t)], flags[(i, t)] = (
            -w * float(adv[i, t]) * float(logps[i, t]),
            r,
            float(w != r),
        )
    return ref_agg(per_token, mask, mode), ref_metrics(ratios, mask, flags)


def data(seed, dtype):
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.1, 3.0, (B, T))
    logps = old + rng.normal(scale=0.3, size=(B, T))
    adv = rng.normal(size=(B, T))
    mask = make_mask()
    logps[mask == 0] = np.nan  # garbage outside the mask must not leak
    return logps.astype(dtype), old.astype(dtype), adv.astype(dtype), mask


def call_policy(name, d, **kw):
    logps, old, adv, mask = d
    x = paddle.to_tensor(logps, stop_gradient=False)
    loss, metrics = registry.get("policy", name)(
        x, paddle.to_tensor(old), paddle.to_tensor(adv), paddle.to_tensor(mask), **kw
    )
    return loss, metrics, x


POLICY_CASES = [
    dict(clip_range_ratio=0.2),
    dict(clip_range_ratio=0.1, clip_range_ratio_low=0.05, clip_range_ratio_high=0.28),
    dict(clip_range_ratio=0.2, dual_clip=1.5, loss_agg_mode="seq-mean-token-mean"),
    dict(clip_range_ratio=0.15, loss_agg_mode="seq-mean-token-sum"),
]


def eps_of(kw):
    e = kw["clip_range_ratio"]
    return kw.get("clip_range_ratio_low") or e, kw.get("clip_range_ratio_high") or e


@pytest.mark.parametrize("name", ["ppo", "gspo"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", POLICY_CASES)
def test_clipped_surrogates_match_reference(name, dtype, kw):
    d = data(0, dtype)
    kw = dict(kw)
    kw.setdefault("loss_agg_mode", "token-mean")
    loss, metrics, x = call_policy(name, d, **kw)
    eps_low, eps_high = eps_of(kw)
    expected, exp_metrics = ref_ppo(
        *d, eps_low, eps_high, kw.get("dual_clip"), kw["loss_agg_mode"], sequence_level=name == "gspo"
    )
    close(float(loss), expected, dtype)
    for key, value in exp_metrics.items():
        close(float(metrics[key]), value, dtype)
    assert all(v.stop_gradient for v in metrics.values())
    loss.backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_dual_clip_bounds_negative_advantage_losses():
    logps = paddle.to_tensor([[3.0, 3.0]], stop_gradient=False)  # ratio e^3 ≈ 20
    old, adv, mask = paddle.zeros([1, 2]), paddle.to_tensor([[-1.0, 1.0]]), paddle.ones([1, 2])
    loss, metrics = registry.get("policy", "ppo")(logps, old, adv, mask, dual_clip=3.0)
    # token 0: max(20.09, 1.2) capped at 3; token 1: max(-20.09, -1.2) = -1.2
    close(float(loss), (3.0 - 1.2) / 2, "float32")
    close(float(metrics["actor/dual_clipfrac"]), 0.5, "float32")
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        registry.get("policy", "ppo")(logps, old, adv, mask, dual_clip=1.0)


def test_gspo_gradient_is_the_sequence_level_gradient():
    """Unclipped GSPO: d loss / d logp_i,t = -A_i s_i / (|y_i| N_seq) for seq-mean-token-mean."""
    logps, old, _, mask = data(1, "float64")
    adv = np.repeat(np.random.default_rng(2).normal(size=(B, 1)), T, axis=1)
    loss, _, x = call_policy("gspo", (logps, old, adv, mask), clip_range_ratio=10.0)
    loss.backward()
    n_seq = sum(1 for i in range(B) if mask[i].sum())
    for i in range(B):
        cells = [t for t in range(T) if mask[i, t]]
        if not cells:
            continue
        s = math.exp(sum(logps[i, t] - old[i, t] for t in cells) / len(cells))
        for t in cells:
            close(x.grad.numpy()[i, t], -adv[i, 0] * s / (len(cells) * n_seq), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kw",
    [
        dict(clip_range_ratio=0.2),
        dict(
            clip_range_ratio=0.2,
            clip_range_ratio_low=0.1,
            clip_range_ratio_high=0.05,
            loss_agg_mode="seq-mean-token-mean",
        ),
    ],
)
def test_cispo_matches_reference(dtype, kw):
    d = data(3, dtype)
    kw = dict(kw)
    kw.setdefault("loss_agg_mode", "token-mean")
    loss, metrics, x = call_policy("cispo", d, **kw)
    expected, exp_metrics = ref_cispo(
        *d,
        kw.get("clip_range_ratio_low"),
        kw.get("clip_range_ratio_high") or kw["clip_range_ratio"],
        kw["loss_agg_mode"],
    )
    close(float(loss), expected, dtype)
    for key, value in exp_metrics.items():
        close(float(metrics[key]), value, dtype)
    loss.backward()
    assert np.isfinite(x.grad.numpy()).all()
    with pytest.raises(ValueError, match="dual_clip"):
        call_policy("cispo", d, dual_clip=2.0)


def ref_value(values, old, returns, mask, c, mode):
    per_token, flags = {}, []
    for i, t in valid(mask):
        v, o, r = float(values[i, t]), float(old[i, t]), float(returns[i, t])
        vc = min(max(v, o - c), o + c)
        per_token[(i, t)] = 0.5 * max((v - r) ** 2, (vc - r) ** 2)
        flags.append(float((vc - r) ** 2 > (v - r) ** 2))
    cells = valid(mask)
    rets = [float(returns[c_]) for c_ in cells]
    res = [float(returns[c_] - values[c_]) for c_ in cells]
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / len(xs)  # noqa: E731
    return ref_agg(per_token, mask, mode), sum(flags) / len(flags), 1 - var(res) / var(rets)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_clipped_value_loss_matches_reference(dtype, mode):
    rng = np.random.default_rng(4)
    old = rng.normal(size=(B, T))
    values = old + rng.normal(scale=0.6, size=(B, T))
    returns = rng.normal(size=(B, T))
    mask = make_mask()
    values[mask == 0] = np.nan
    values, old, returns = values.astype(dtype), old.astype(dtype), returns.astype(dtype)
    x = paddle.to_tensor(values, stop_gradient=False)
    loss, metrics = registry.get("value", "clipped")(
        x,
        paddle.to_tensor(old),
        paddle.to_tensor(returns),
        paddle.to_tensor(mask),
        clip_range_value=0.3,
        loss_agg_mode=mode,
    )
    expected, clipfrac, explained = ref_value(values, old, returns, mask, 0.3, mode)
    close(float(loss), expected, dtype)
    close(float(metrics["critic/clipfrac"]), clipfrac, dtype)
    close(float(metrics["critic/vf_explained_var"]), explained, dtype)
    loss.backward()
    assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_entropy_bonus_matches_reference(dtype):
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(B, T, V)) * 2).astype(dtype)
    mask = make_mask()
    x = paddle.to_tensor(logits, stop_gradient=False)
    value, metrics = entropy_bonus(x, paddle.to_tensor(mask))
    per_token = {}
    for i, t in valid(mask):
        z = [float(v) for v in logits[i, t]]
        zmax = max(z)
        total = sum(math.exp(v - zmax) for v in z)
        per_token[(i, t)] = -sum(math.exp(v - zmax) / total * (v - zmax - math.log(total)) for v in z)
    close(float(value), ref_agg(per_token, mask, "token-mean"), dtype)
    close(float(metrics["actor/entropy"]), ref_agg(per_token, mask, "token-mean"), dtype)
    value.backward()
    assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("estimator,clip", [("k3", None), ("k3", 0.05), ("k1", None), ("k2", 0.1)])
def test_kl_penalty_loss_matches_reference(dtype, estimator, clip):
    logps, ref, _, mask = data(6, dtype)
    x = paddle.to_tensor(logps, stop_gradient=False)
    value, metrics = kl_penalty_loss(
        x, paddle.to_tensor(ref), paddle.to_tensor(mask), estimator=estimator, clip=clip
    )
    per_token = {}
    for i, t in valid(mask):
        d = float(logps[i, t]) - float(ref[i, t])
        kl = {"k1": d, "k2": 0.5 * d * d, "k3": math.exp(-d) + d - 1}[estimator]
        per_token[(i, t)] = kl if clip is None else min(max(kl, -clip), clip)
    close(float(value), ref_agg(per_token, mask, "token-mean"), dtype)
    close(float(metrics["actor/kl_loss"]), float(value), dtype)
    value.backward()
    assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize("name", sorted(COVERED["policy"]))
def test_empty_mask_gives_zero_loss(name):
    z = paddle.zeros([2, 3])
    loss, metrics = registry.get("policy", name)(z, z, paddle.ones([2, 3]), z)
    assert float(loss) == 0.0 and all(np.isfinite(float(v)) for v in metrics.values())
    loss, _ = registry.get("value", "clipped")(z, z, paddle.ones([2, 3]), z)
    assert float(loss) == 0.0

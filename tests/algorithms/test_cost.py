"""``alignment.algorithms.cost`` (Safe RLHF cost losses) and ``alignment.algorithms.lagrangian`` (λ update,
combined advantage) against slow loop references in plain Python."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry
from alignment.algorithms.lagrangian import LagrangeMultiplier, lagrangian_advantages

from .test_reward import B, make_pairs, ref_last

COVERED = {"cost": {"sequence-wise", "token-wise"}}


def logsig(z):
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def _signs(seed):
    rng = np.random.default_rng(seed)
    safer = rng.choice([1, -1], B)
    unsafer = np.where(safer == 1, rng.choice([1, -1], B), -1)  # the safer answer is never the less safe one
    return safer.astype("int64"), unsafer.astype("int64")


def _call(name, d, signs, reg):
    t = paddle.to_tensor
    return registry.get("cost", name)(
        t(d["sc"]), t(d["sr"]), t(d["mc"]), t(d["mr"]), safer_safety_sign=t(signs[0]), unsafer_safety_sign=t(signs[1]),
        safer_ids=t(d["ids_c"]), unsafer_ids=t(d["ids_r"]), regularization=reg)


def _ref(name, d, signs, reg):
    total, pair_hits, sign_hits = 0.0, 0, 0
    for i in range(B):
        s_s, s_u = -signs[0][i], -signs[1][i]  # the paper's s: +1 unsafe
        es, eu = ref_last(d["mc"][i]), ref_last(d["mr"][i])
        c_s, c_u = d["sc"][i, es], d["sr"][i, eu]
        pair_hits += c_u > c_s
        sign_hits += int(c_s * s_s > 0) + int(c_u * s_u > 0)
        if name == "sequence-wise":
            total += -logsig(c_u - c_s) - logsig(s_u * c_u) - logsig(s_s * c_s)
            continue
        start = next(t for t in range(len(d["ids_c"][i])) if d["ids_c"][i, t] != d["ids_r"][i, t])
        window = range(start, max(es, eu) + 1)
        terms = [-logsig(d["sr"][i, t] - d["sc"][i, t]) - logsig(s_u * d["sr"][i, t]) - logsig(s_s * d["sc"][i, t])
                 for t in window]
        square = [d["sc"][i, t] ** 2 + d["sr"][i, t] ** 2 for t in window]
        total += sum(terms) / len(terms) + reg * sum(square) / (2 * len(terms))
    loss = total / B
    if name == "sequence-wise":
        ends = [d["sc"][i, ref_last(d["mc"][i])] for i in range(B)] + [d["sr"][i, ref_last(d["mr"][i])] for i in range(B)]
        loss += reg * sum(c * c for c in ends) / (2 * B)
    return loss, pair_hits / B, sign_hits / (2 * B)


@pytest.mark.parametrize("name", sorted(COVERED["cost"]))
@pytest.mark.parametrize("reg", [0.0, 0.05])
def test_cost_losses_match_loop_reference(name, reg):
    for seed in range(3):
        d = {k: v.astype("float64") if v.dtype.kind == "f" else v for k, v in make_pairs(seed).items()}
        signs = _signs(seed)
        loss, metrics = _call(name, d, signs, reg)
        exp_loss, exp_pair, exp_sign = _ref(name, d, signs, reg)
        np.testing.assert_allclose(float(loss), exp_loss, rtol=1e-9)
        assert float(metrics["accuracy"]) == pytest.approx(exp_pair)
        assert float(metrics["sign_accuracy"]) == pytest.approx(exp_sign)


def test_cost_loss_pushes_unsafe_costs_up_and_safe_costs_down():
    d = make_pairs(0)
    d["sc"], d["sr"] = np.zeros_like(d["sc"]), np.zeros_like(d["sr"])
    c_s = paddle.to_tensor(d["sc"], stop_gradient=False)
    c_u = paddle.to_tensor(d["sr"], stop_gradient=False)
    safe, unsafe = paddle.ones([B], dtype="int64"), -paddle.ones([B], dtype="int64")
    loss, _ = registry.get("cost", "sequence-wise")(c_s, c_u, paddle.to_tensor(d["mc"]), paddle.to_tensor(d["mr"]),
                                                    safer_safety_sign=safe, unsafer_safety_sign=unsafe)
    loss.backward()
    assert (c_u.grad.numpy().sum(axis=1) < 0).all() and (c_s.grad.numpy().sum(axis=1) > 0).all()


def test_combined_advantage_matches_loop():
    rng = np.random.default_rng(0)
    a_r, a_c = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    for lam in (0.0, 0.3, 4.0):
        out = lagrangian_advantages(paddle.to_tensor(a_r), paddle.to_tensor(a_c), lam).numpy()
        ref = [[(a_r[i, j] - lam * a_c[i, j]) / (1 + lam) for j in range(5)] for i in range(4)]
        np.testing.assert_allclose(out, ref, rtol=1e-12)
    with pytest.raises(ValueError, match=">= 0"):
        lagrangian_advantages(paddle.to_tensor(a_r), paddle.to_tensor(a_c), -1.0)


def test_lambda_update_matches_loop_reference_and_resumes():
    rng = np.random.default_rng(1)
    kw = dict(lambda_init=0.5, lr=0.3, threshold=0.2, lambda_max=2.0, delay_steps=2, window_size=5)
    lag = LagrangeMultiplier(**kw)
    log_lam, window, lams = math.log(0.5), [], []
    batches = [list(rng.uniform(-1, 1.5, 3)) for _ in range(12)]
    for step, costs in enumerate(batches, start=1):
        if step == 6:  # a resume mid-run continues the same sequence
            state = lag.state_dict()
            lag = LagrangeMultiplier(**kw)
            lag.set_state_dict(state)
        metrics = lag.update(costs)
        window = (window + costs)[-5:]
        if step > 2:
            log_lam = min(max(log_lam + 0.3 * (sum(window) / len(window) - 0.2), -20.0), math.log(2.0))
        lams.append(math.exp(log_lam))
        assert metrics["lambda"] == pytest.approx(math.exp(log_lam), rel=1e-12)
        assert metrics["episode_cost_window"] == pytest.approx(sum(window) / len(window))
    assert lams[0] == lams[1] == 0.5  # the delay
    assert max(lams) <= 2.0 + 1e-12


def test_lambda_rises_above_and_falls_below_the_threshold():
    lag = LagrangeMultiplier(lambda_init=1.0, lr=0.5, threshold=0.0, window_size=2)
    up = [lag.update([1.0, 1.0])["lambda"] for _ in range(3)]
    down = [lag.update([-1.0, -1.0])["lambda"] for _ in range(3)]
    assert up[0] > 1.0 and up == sorted(up) and down == sorted(down, reverse=True) and down[-1] < up[-1]
    for bad, message in ((dict(lambda_init=0.0), "lambda_init must be > 0"),
                         (dict(lambda_init=2.0, lambda_max=1.0), "lambda_max"),
                         (dict(window_size=0), "episode_cost_window_size")):
        with pytest.raises(ValueError, match=message):
            LagrangeMultiplier(**bad)

"""Value tests of ``alignment.algorithms.preference`` against slow pair-by-pair references in plain Python.

The references below are written from the formulas in ``/work/shared/reference/loss_formulas.md``
(§2.1–2.4) with ``math`` only, in float64, one pair at a time.
"""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from alignment.algorithms import preference as P
from alignment.algorithms import registry

COVERED = {
    "preference": {
        "sigmoid", "hinge", "ipo", "kto_pair", "robust", "bco_pair", "sppo_hard", "nca_pair", "aot",
        "aot_unpaired", "apo_zero", "apo_down", "discopop", "exo_pair", "sigmoid_norm", "dpop", "sft",
        "cpo", "simpo", "orpo",
    },
    "unpaired": {"kto", "apo_zero_unpaired"},
}

B = 7


# ------------------------------------------------------------------------------ slow references


def logsig(z):
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def sig(z):
    return math.exp(logsig(z))


def smoothed(z, eps):
    return -(1 - eps) * logsig(z) - eps * logsig(-z)


def ref_log1mexp(x):
    return math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))


def per_pair(fn):
    """Reference over pairs: fn(i, data, hp) -> loss of pair i."""

    def run(d, hp):
        return [fn(i, d, hp) for i in range(len(d["c"]))]

    return run


def dc(i, d):
    return d["c"][i] - d["rc"][i]


def dr(i, d):
    return d["r"][i] - d["rr"][i]


def n(x):
    return max(x, 1.0)


def ref_kto_pair(d, hp):
    b = hp["beta"]
    m = len(d["c"])
    kl_c = max(0.0, sum(dc(i, d) for i in range(m)) / m)
    kl_r = max(0.0, sum(dr(i, d) for i in range(m)) / m)
    losses = [1 - sig(b * (dc(i, d) - kl_r)) for i in range(m)]
    losses += [1 - sig(b * (kl_c - dr(i, d))) for i in range(m)]
    return sum(losses) / len(losses)  # a scalar: only the mean over 2B is defined


def ref_aot(d, hp, unpaired):
    m = len(d["c"])
    if unpaired:
        a = sorted(dc(i, d) for i in range(m))
        b = sorted(dr(i, d) for i in range(m))
    else:
        a = sorted(d["c"][i] - d["r"][i] for i in range(m))
        b = sorted(d["rc"][i] - d["rr"][i] for i in range(m))
    return [smoothed(hp["beta"] * (a[k] - b[k]), hp.get("label_smoothing", 0.0)) for k in range(m)]


def ref_exo(i, d, hp):
    z, e = hp["beta"] * (dc(i, d) - dr(i, d)), hp["label_smoothing"]
    return sig(z) * (logsig(z) - math.log(1 - e)) + sig(-z) * (logsig(-z) - math.log(e))


def ref_discopop(i, d, hp):
    z = hp["beta"] * (dc(i, d) - dr(i, d))
    m = sig(z / hp.get("discopop_tau", 0.05))
    return (1 - m) * -logsig(z) + m * math.exp(-z)


def ref_orpo(i, d, hp):
    lc, lr = d["c"][i] / n(d["nc"][i]), d["r"][i] / n(d["nr"][i])
    odds = (lc - lr) - (ref_log1mexp(lc) - ref_log1mexp(lr))
    return hp["beta"] * -logsig(odds)


REFS = {
    "sigmoid": per_pair(
        lambda i, d, hp: smoothed(hp["beta"] * (dc(i, d) - dr(i, d)), hp.get("label_smoothing", 0))
    ),
    "hinge": per_pair(lambda i, d, hp: max(0.0, 1 - hp["beta"] * (dc(i, d) - dr(i, d)))),
    "ipo": per_pair(
        lambda i, d, hp: (dc(i, d) / n(d["nc"][i]) - dr(i, d) / n(d["nr"][i]) - 1 / (2 * hp["beta"])) ** 2
    ),
    "kto_pair": ref_kto_pair,
    "robust": per_pair(
        lambda i, d, hp: (
            -(1 - hp["label_smoothing"]) * logsig(hp["beta"] * (dc(i, d) - dr(i, d)))
            + hp["label_smoothing"] * logsig(-hp["beta"] * (dc(i, d) - dr(i, d)))
        )
        / (1 - 2 * hp["label_smoothing"])
    ),
    "bco_pair": per_pair(lambda i, d, hp: -logsig(hp["beta"] * dc(i, d)) - logsig(-hp["beta"] * dr(i, d))),
    "sppo_hard": per_pair(
        lambda i, d, hp: (dc(i, d) - 1 / (2 * hp["beta"])) ** 2 + (dr(i, d) + 1 / (2 * hp["beta"])) ** 2
    ),
    "nca_pair": per_pair(
        lambda i, d, hp: -logsig(hp["beta"] * dc(i, d))
        - 0.5 * logsig(-hp["beta"] * dc(i, d))
        - 0.5 * logsig(-hp["beta"] * dr(i, d))
    ),
    "aot": lambda d, hp: ref_aot(d, hp, unpaired=False),
    "aot_unpaired": lambda d, hp: ref_aot(d, hp, unpaired=True),
    "apo_zero": per_pair(lambda i, d, hp: 1 - sig(hp["beta"] * dc(i, d)) + sig(hp["beta"] * dr(i, d))),
    "apo_down": per_pair(
        lambda i, d, hp: sig(hp["beta"] * dc(i, d)) + 1 - sig(hp["beta"] * (dc(i, d) - dr(i, d)))
    ),
    "discopop": per_pair(ref_discopop),
    "exo_pair": per_pair(ref_exo),
    "sigmoid_norm": per_pair(
        lambda i, d, hp: -logsig(hp["beta"] * (dc(i, d) / n(d["nc"][i]) - dr(i, d) / n(d["nr"][i])))
    ),
    "dpop": per_pair(
        lambda i, d, hp: -logsig(
            hp["beta"]
            * (dc(i, d) - dr(i, d) - hp.get("dpop_lambda", 50.0) * max(0.0, d["rc"][i] - d["c"][i]))
        )
    ),
    "sft": per_pair(lambda i, d, hp: d["nll"]),
    "cpo": per_pair(
        lambda i, d, hp: smoothed(hp["beta"] * (d["c"][i] - d["r"][i]), hp.get("label_smoothing", 0))
    ),
    "simpo": per_pair(
        lambda i, d, hp: smoothed(
            hp["beta"] * (d["c"][i] / n(d["nc"][i]) - d["r"][i] / n(d["nr"][i]))
            - hp.get("simpo_gamma", 0.5),
            hp.get("label_smoothing", 0.0),
        )
    ),
    "orpo": per_pair(ref_orpo),
}

# (name, hyperparameters) cases; every name in COVERED["preference"] appears at least once.
CASES = [
    ("sigmoid", {"beta": 0.2}),
    ("sigmoid", {"beta": 0.1, "label_smoothing": 0.15}),
    ("hinge", {"beta": 0.3}),
    ("ipo", {"beta": 0.2}),
    ("kto_pair", {"beta": 0.2}),
    ("robust", {"beta": 0.2, "label_smoothing": 0.2}),
    ("bco_pair", {"beta": 0.2}),
    ("sppo_hard", {"beta": 0.2}),
    ("nca_pair", {"beta": 0.2}),
    ("aot", {"beta": 0.2}),
    ("aot", {"beta": 0.2, "label_smoothing": 0.1}),
    ("aot_unpaired", {"beta": 0.2, "label_smoothing": 0.1}),
    ("apo_zero", {"beta": 0.2}),
    ("apo_down", {"beta": 0.2}),
    ("discopop", {"beta": 0.2}),
    ("discopop", {"beta": 0.1, "discopop_tau": 0.5}),
    ("exo_pair", {"beta": 0.2, "label_smoothing": 1e-3}),
    ("exo_pair", {"beta": 0.1, "label_smoothing": 0.2}),
    ("sigmoid_norm", {"beta": 0.5}),
    ("dpop", {"beta": 0.2}),
    ("dpop", {"beta": 0.1, "dpop_lambda": 5.0}),
    ("sft", {"beta": 0.1}),
    ("cpo", {"beta": 0.1, "label_smoothing": 0.1}),
    ("simpo", {"beta": 2.0, "simpo_gamma": 1.0}),
    ("simpo", {"beta": 0.5, "label_smoothing": 0.1}),
    ("orpo", {"beta": 0.1}),
]
TOL = {"float64": dict(rtol=1e-9, atol=1e-6), "float32": dict(rtol=1e-5, atol=1e-6)}


def make_data(seed=0, size=B, lengths=None):
    rng = np.random.default_rng(seed)
    c = -rng.uniform(1.0, 30.0, size)
    r = -rng.uniform(1.0, 30.0, size)
    d = {
        "c": c,
        "r": r,
        "rc": c + rng.normal(0.0, 3.0, size),
        "rr": r + rng.normal(0.0, 3.0, size),
        "nc": rng.integers(1, 20, size) * 1.0 if lengths is None else np.full(size, lengths * 1.0),
        "nr": rng.integers(1, 20, size) * 1.0 if lengths is None else np.full(size, lengths * 1.0),
        "nll": float(rng.uniform(0.5, 3.0)),
    }
    d["rc"][0] = d["c"][0] + 2.0  # at least one pair where the policy dropped below the reference (dpop)
    return d


def to_pair(d, dtype, grad=False, refs=True):
    """(PairLogps in ``dtype``, the data rounded to that dtype as floats for the reference, tensors)."""
    rounded = {k: (np.asarray(v).astype(dtype).astype(np.float64)) for k, v in d.items()}
    rounded["nll"] = float(rounded["nll"])
    t = {k: paddle.to_tensor(np.asarray(v).astype(dtype)) for k, v in d.items()}
    if grad:
        for key in ("c", "r", "nll"):
            t[key].stop_gradient = False
    pair = P.PairLogps(
        chosen=t["c"],
        rejected=t["r"],
        ref_chosen=t["rc"] if refs else None,
        ref_rejected=t["rr"] if refs else None,
        chosen_lengths=t["nc"],
        rejected_lengths=t["nr"],
        chosen_nll=t["nll"],
    )
    return pair, {k: (list(v) if isinstance(v, np.ndarray) else v) for k, v in rounded.items()}, t


def check_value(name, hp, d, dtype):
    pair, ref_data, _ = to_pair(d, dtype)
    out = registry.get("preference", name)(pair, **hp)
    assert list(out.shape) == [len(d["c"])] and str(out.dtype).endswith(dtype)
    expected = REFS[name](ref_data, hp)
    if name == "kto_pair":
        np.testing.assert_allclose(float(out.mean()), expected, **TOL[dtype])
    else:
        np.testing.assert_allclose(out.numpy().astype(np.float64), np.array(expected), **TOL[dtype])


# ------------------------------------------------------------------------------- value tests


def test_cases_cover_exactly_the_registry():
    assert {name for name, _ in CASES} == COVERED["preference"] == set(registry.available("preference"))
    assert COVERED["unpaired"] == set(registry.available("unpaired"))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,hp", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_values_match_reference(name, hp, dtype):
    check_value(name, hp, make_data(seed=len(name)), dtype)


@pytest.mark.parametrize("name,hp", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_gradients_are_finite(name, hp):
    pair, _, t = to_pair(make_data(seed=3), "float32", grad=True)
    registry.get("preference", name)(pair, **hp).sum().backward()
    leaves = [t["nll"]] if name == "sft" else [t["c"], t["r"]]
    for leaf in leaves:
        assert leaf.grad is not None, f"{name}: no gradient"
        assert np.isfinite(leaf.grad.numpy()).all(), f"{name}: non-finite gradient"
    assert float(paddle.abs(leaves[0].grad).sum()) > 0


@pytest.mark.parametrize("name", ["ipo", "simpo", "orpo", "sigmoid_norm"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_length_one_responses(name, dtype):
    d = make_data(seed=11, lengths=1)
    d["c"], d["r"] = d["c"] / 10.0, d["r"] / 10.0  # a single token has log-prob in (-3, -0.1)
    check_value(name, dict(CASES[[c[0] for c in CASES].index(name)][1]), d, dtype)


def test_missing_lengths_and_nll_raise():
    pair, _, _ = to_pair(make_data(), "float64")
    pair.chosen_lengths = None
    for name in sorted(P.NEEDS_LENGTHS):
        with pytest.raises(ValueError, match="chosen_lengths"):
            registry.get("preference", name)(pair)
    pair.chosen_nll = None
    with pytest.raises(ValueError, match="chosen_nll"):
        registry.get("preference", "sft")(pair)
    with pytest.raises(ValueError, match="chosen_nll"):
        P.preference_loss("sigmoid", pair, rpo_alpha=1.0)


def test_exo_pair_zero_label_smoothing_raises():
    pair, _, _ = to_pair(make_data(), "float64")
    with pytest.raises(ValueError, match="label_smoothing"):
        registry.get("preference", "exo_pair")(pair, label_smoothing=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        P.preference_loss("exo_pair", pair, label_smoothing=0.0)


def test_robust_label_smoothing_half_raises():
    pair, _, _ = to_pair(make_data(), "float64")
    with pytest.raises(ValueError, match="label_smoothing"):
        registry.get("preference", "robust")(pair, label_smoothing=0.5)


def test_unknown_loss_name_lists_valid_names():
    pair, _, _ = to_pair(make_data(), "float64")
    with pytest.raises(ValueError, match="valid names") as err:
        P.preference_loss(["sigmoid", "sigmod"], pair)
    assert "sigmod" in str(err.value) and "apo_zero" in str(err.value)


def test_unknown_hparam_raises():
    pair, _, _ = to_pair(make_data(), "float64")
    with pytest.raises(ValueError, match="simpo_gama"):
        P.preference_loss("simpo", pair, simpo_gama=1.0)
    with pytest.raises(ValueError, match="discopop_tau"):  # accepted by discopop only, not by sigmoid
        P.preference_loss("sigmoid", pair, discopop_tau=0.1)


# --------------------------------------------------------------------------------- combiner


def test_mpo_mixing_is_weighted_sum_of_means():
    pair, data, _ = to_pair(make_data(seed=5), "float64")
    hp = {"beta": 0.2, "label_smoothing": 0.1}
    names, weights = ["sigmoid", "bco_pair", "sft", "discopop"], [0.8, 0.2, 1.0, 0.5]
    total, metrics = P.preference_loss(names, pair, weights, **hp)
    expected = 0.0
    for name, w in zip(names, weights):
        accepted = {"beta"} | ({"label_smoothing"} if name == "sigmoid" else set())
        mean = float(np.mean(REFS[name](data, {k: v for k, v in hp.items() if k in accepted})))
        np.testing.assert_allclose(float(metrics[f"loss/{name}"]), mean, rtol=1e-10)
        expected += w * mean
    np.testing.assert_allclose(float(total), expected, rtol=1e-10)
    rc = [0.2 * dc(i, data) for i in range(B)]
    rr = [0.2 * dr(i, data) for i in range(B)]
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), np.mean(rc), rtol=1e-10)
    np.testing.assert_allclose(float(metrics["rewards/margins"]), np.mean(np.subtract(rc, rr)), rtol=1e-10)
    np.testing.assert_allclose(float(metrics["rewards/accuracies"]), np.mean(np.greater(rc, rr)))
    np.testing.assert_allclose(float(metrics["logps/chosen"]), np.mean(data["c"]), rtol=1e-10)
    np.testing.assert_allclose(float(metrics["nll"]), data["nll"])
    assert all(v.stop_gradient for v in metrics.values())


def test_mismatched_weights_and_stray_cpo_alpha_raise():
    pair, _, _ = to_pair(make_data(), "float64")
    with pytest.raises(ValueError, match="loss_weights"):
        P.preference_loss(["sigmoid", "sft"], pair, [1.0])
    with pytest.raises(ValueError, match="cpo_alpha"):
        P.preference_loss("sigmoid", pair, cpo_alpha=1.0)


def test_reference_free_equals_zero_refs():
    d = make_data(seed=7)
    pair, _, _ = to_pair(d, "float64")
    zero = dict(d, rc=np.zeros(B), rr=np.zeros(B))
    pair_zero, _, _ = to_pair(zero, "float64")
    pair_none, _, _ = to_pair(d, "float64", refs=False)
    for names in (["sigmoid"], ["ipo", "aot", "dpop"]):
        got, m_got = P.preference_loss(names, pair, beta=0.2, reference_free=True)
        want, m_want = P.preference_loss(names, pair_zero, beta=0.2)
        none, _ = P.preference_loss(names, pair_none, beta=0.2)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
        np.testing.assert_allclose(float(none), float(want), rtol=1e-12)
        np.testing.assert_allclose(
            float(m_got["rewards/chosen"]), float(m_want["rewards/chosen"]), rtol=1e-12
        )


def test_nll_terms_rpo_cpo_orpo():
    pair, data, _ = to_pair(make_data(seed=9), "float64")
    base, _ = P.preference_loss("sigmoid", pair, beta=0.2)
    rpo, _ = P.preference_loss("sigmoid", pair, beta=0.2, rpo_alpha=0.5)
    np.testing.assert_allclose(float(rpo) - float(base), 0.5 * data["nll"], rtol=1e-10)
    simpo, _ = P.preference_loss("simpo", pair, beta=2.0)
    cpo_simpo, _ = P.preference_loss("simpo", pair, beta=2.0, cpo_alpha=1.0)
    np.testing.assert_allclose(float(cpo_simpo) - float(simpo), data["nll"], rtol=1e-10)
    # ORPO total = NLL − β·mean(logσ(log_odds)), with the reward metrics β·L̄ (reference-free).
    orpo, metrics = P.preference_loss("orpo", pair, beta=0.1)
    expected = data["nll"] + float(np.mean(REFS["orpo"](data, {"beta": 0.1})))
    np.testing.assert_allclose(float(orpo), expected, rtol=1e-10)
    avg_c = [data["c"][i] / n(data["nc"][i]) for i in range(B)]
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), 0.1 * np.mean(avg_c), rtol=1e-10)


def test_bco_running_baseline_across_two_calls():
    beta = 0.2
    baseline = P.RunningMoments()
    means, deltas = [], []
    for seed in (1, 2):
        pair, data, _ = to_pair(make_data(seed=seed), "float64")
        rewards = [beta * dc(i, data) for i in range(B)] + [beta * dr(i, data) for i in range(B)]
        means.append(sum(rewards) / len(rewards))
        delta0 = sum(means) / len(means)  # updated before use: running mean of the per-step means
        deltas.append(delta0)
        out = registry.get("preference", "bco_pair")(pair, beta=beta, bco_baseline=baseline)
        expected = [
            -logsig(beta * dc(i, data) - delta0) - logsig(-(beta * dr(i, data) - delta0)) for i in range(B)
        ]
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert baseline.count == 2 and baseline.mean == pytest.approx(deltas[-1])
    # Through the combiner the baseline object travels as a hyperparameter.
    total, _ = P.preference_loss("bco_pair", pair, beta=beta, bco_baseline=baseline)
    assert baseline.count == 3 and np.isfinite(float(total))


# ----------------------------------------------------------------------------------- LD-DPO


def test_ld_alpha_one_is_plain_sum():
    rng = np.random.default_rng(0)
    logp = paddle.to_tensor(-rng.uniform(0.1, 5.0, (3, 6)))
    mask = paddle.to_tensor(np.array([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]))
    lp = paddle.to_tensor([1.0, 2.0, 2.0])
    plain = (logp * mask.astype("float64")).sum(axis=1)
    np.testing.assert_array_equal(P.ld_weighted_logps(logp, mask, lp, 1.0).numpy(), plain.numpy())


def test_ld_alpha_half_hand_computed_with_prompt():
    # Row 0: two prompt tokens (masked), completion [-1, -2, -4], padding. l_p = 2 -> -1 - 2 + 0.5 * -4 = -5.
    # Row 1: one prompt token, completion [-0.5, -0.25], padding.          l_p = 2 -> -0.75 (no tail).
    logp = paddle.to_tensor([[-9.0, -9.0, -1.0, -2.0, -4.0, -7.0], [-9.0, -0.5, -0.25, -3.0, -3.0, -3.0]])
    chosen_mask = paddle.to_tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    other_mask = paddle.to_tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    lp = P.pair_public_lengths(chosen_mask, other_mask)
    np.testing.assert_array_equal(lp.numpy(), [2.0, 2.0])
    out = P.ld_weighted_logps(logp, chosen_mask, lp, 0.5)
    np.testing.assert_allclose(out.numpy(), [-5.0, -0.75], rtol=1e-7)
    alpha0 = P.ld_weighted_logps(logp, chosen_mask, lp, 0.0)
    np.testing.assert_allclose(alpha0.numpy(), [-3.0, -0.75], rtol=1e-7)
    with pytest.raises(ValueError, match="ld_alpha"):
        P.ld_weighted_logps(logp, chosen_mask, lp, 1.5)


# ------------------------------------------------------------------------------------- ORPO


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_orpo_log1mexp_stable_at_extremes(dtype):
    x = paddle.to_tensor(np.array([-1e-8, -1e-3, -0.5, -math.log(2), -1.0, -50.0]).astype(dtype))
    x.stop_gradient = False
    y = P.log1mexp(x)
    rounded = x.numpy().astype(np.float64)
    np.testing.assert_allclose(y.numpy(), [ref_log1mexp(v) for v in rounded], **TOL[dtype])
    y.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()
    # An average log-prob of exactly 0 (probability 1) stays finite, value and gradient.
    zero = paddle.to_tensor(np.array([0.0, -1.0]).astype(dtype))
    zero.stop_gradient = False
    out = P.log1mexp(zero)
    out.sum().backward()
    assert np.isfinite(out.numpy()).all() and np.isfinite(zero.grad.numpy()).all()
    # Whole ORPO term with average log-probs of -1e-8 (near-certain) and -50 (near-impossible).
    d = make_data(seed=1, size=2, lengths=1)
    d["c"], d["r"] = np.array([-1e-8, -50.0]), np.array([-50.0, -1e-8])
    check_value("orpo", {"beta": 0.1}, d, dtype)
    pair, _, t = to_pair(d, dtype, grad=True)
    registry.get("preference", "orpo")(pair).sum().backward()
    assert np.isfinite(t["c"].grad.numpy()).all() and np.isfinite(t["r"].grad.numpy()).all()


# -------------------------------------------------------------------------------------- KTO


def ref_unpaired(name, logps, ref_logps, labels, kl, kl_ref, beta, wd, wu):
    z0 = max(0.0, sum(a - b for a, b in zip(kl, kl_ref)) / len(kl)) if name == "kto" else 0.0
    desirable, undesirable = [], []
    for lp, rp, lab in zip(logps, ref_logps, labels):
        delta = lp - rp
        if name == "kto":
            loss_d, loss_u = 1 - sig(beta * (delta - z0)), 1 - sig(beta * (z0 - delta))
        else:
            loss_d, loss_u = 1 - sig(beta * delta), sig(beta * delta)
        (desirable if lab else undesirable).append(loss_d if lab else loss_u)
    losses = [wd * v for v in desirable] + [wu * v for v in undesirable]
    return sum(losses) / len(losses), z0


@pytest.mark.parametrize("name", sorted(COVERED["unpaired"]))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "labels", [[1, 0, 1, 1, 0, 0, 1], [1] * 7, [0] * 7], ids=["mixed", "all-desirable", "all-undesirable"]
)
def test_unpaired_values_and_gradients(name, dtype, labels):
    rng = np.random.default_rng(len(name))
    arrays = {
        "logps": -rng.uniform(1.0, 30.0, 7),
        "kl": -rng.uniform(1.0, 30.0, 7),
    }
    arrays["ref"] = arrays["logps"] + rng.normal(0.0, 5.0, 7)
    arrays["kl_ref"] = arrays["kl"] - np.abs(rng.normal(3.0, 1.0, 7))  # positive mean => z0 > 0
    t = {k: paddle.to_tensor(v.astype(dtype)) for k, v in arrays.items()}
    t["logps"].stop_gradient = False
    hp = {"beta": 0.2, "desirable_weight": 1.5, "undesirable_weight": 0.7}
    lab = paddle.to_tensor(np.array(labels, dtype=bool))
    loss, metrics = registry.get("unpaired", name)(t["logps"], t["ref"], lab, t["kl"], t["kl_ref"], **hp)
    r = {k: list(v.astype(dtype).astype(np.float64)) for k, v in arrays.items()}
    expected, z0 = ref_unpaired(
        name, r["logps"], r["ref"], labels, r["kl"], r["kl_ref"],
        hp["beta"], hp["desirable_weight"], hp["undesirable_weight"],
    )
    np.testing.assert_allclose(float(loss), expected, **TOL[dtype])
    if name == "kto":
        assert z0 > 0
        np.testing.assert_allclose(float(metrics["kl"]), z0, **TOL[dtype])
    assert float(metrics["count/desirable"]) == sum(labels)
    loss.backward()
    assert np.isfinite(t["logps"].grad.numpy()).all() and float(paddle.abs(t["logps"].grad).sum()) > 0


def test_kto_needs_kl_logps_and_int_labels_work():
    logps, ref = paddle.to_tensor([-3.0, -4.0]), paddle.to_tensor([-3.5, -3.0])
    with pytest.raises(ValueError, match="kl_logps"):
        registry.get("unpaired", "kto")(logps, ref, paddle.to_tensor([1, 0]))
    loss_int, _ = registry.get("unpaired", "kto")(logps, ref, paddle.to_tensor([1, 0]), logps, ref)
    loss_bool, _ = registry.get("unpaired", "kto")(logps, ref, paddle.to_tensor([True, False]), logps, ref)
    assert float(loss_int) == float(loss_bool)


def test_kto_class_ratio_guidance():
    assert P.kto_class_ratio_ok(100, 100)
    assert P.kto_class_ratio_ok(4, 3)
    assert not P.kto_class_ratio_ok(3, 4)
    assert not P.kto_class_ratio_ok(10, 5)
    assert P.kto_class_ratio_ok(10, 5, desirable_weight=1.0, undesirable_weight=1.5)
    assert not P.kto_class_ratio_ok(10, 0)

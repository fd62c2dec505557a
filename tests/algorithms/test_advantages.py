"""Tests of ``alignment.algorithms.advantages`` against loop-by-loop references (plain Python, float64)."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry

COVERED = {"advantage": {"gae", "grpo", "dr_grpo", "rloo", "reinforce_plus_plus"}}

DTYPES = ["float32", "float64"]
B, T, G = 6, 8, 3


def close(actual, expected, dtype):
    rtol = 1e-5 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(np.asarray(actual, dtype="float64"), expected, rtol=rtol, atol=1e-6)


def make_mask(starts, lengths, width=T):
    mask = np.zeros((len(starts), width), "float32")
    for i, (s, n) in enumerate(zip(starts, lengths)):
        mask[i, s : s + n] = 1
    return mask


# left prompt offsets, a full row, a length-1 response and an empty row
STARTS, LENGTHS = [0, 3, 2, 7, 1, 4], [8, 5, 3, 1, 0, 2]


def positions(mask_row):
    return [t for t in range(len(mask_row)) if mask_row[t]]


# ------------------------------------------------------------------------------ references


def ref_gae(rewards, values, mask, gamma, lam):
    adv, ret = np.zeros(rewards.shape), np.zeros(rewards.shape)
    for i in range(rewards.shape[0]):
        pos = positions(mask[i])
        last_adv = 0.0
        for k in range(len(pos) - 1, -1, -1):
            t = pos[k]
            next_value = float(values[i, pos[k + 1]]) if k + 1 < len(pos) else 0.0
            delta = float(rewards[i, t]) + gamma * next_value - float(values[i, t])
            last_adv = delta + gamma * lam * last_adv
            adv[i, t] = last_adv
            ret[i, t] = last_adv + float(values[i, t])
    return adv, ret


def ref_group_stats(scores, g):
    out = []
    for start in range(0, len(scores), g):
        group = [float(x) for x in scores[start : start + g]]
        mean = sum(group) / g
        var = sum((x - mean) ** 2 for x in group) / (g - 1) if g > 1 else 0.0
        out.append((group, mean, math.sqrt(var)))
    return out


def ref_grpo(scores, g, eps):
    per_row = []
    for group, mean, std in ref_group_stats(scores, g):
        per_row += [0.0 if g == 1 else (x - mean) / (std + eps) for x in group]
    return per_row


def ref_dr_grpo(scores, g, eps):
    per_row = []
    for group, mean, _ in ref_group_stats(scores, g):
        per_row += [x - mean for x in group]
    return per_row


def ref_rloo(scores, g, eps):
    per_row = []
    for group, _, _ in ref_group_stats(scores, g):
        for i, x in enumerate(group):
            others = [group[j] for j in range(g) if j != i]
            per_row.append(x - sum(others) / len(others))
    return per_row


def broadcast(per_row, mask):
    out = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            out[i, t] = per_row[i] * mask[i, t]
    return out


def ref_reinforce_pp(rewards, mask, gamma):
    returns = np.zeros(rewards.shape)
    for i in range(rewards.shape[0]):
        running = 0.0
        for t in range(rewards.shape[1] - 1, -1, -1):
            running = (float(rewards[i, t]) + gamma * running) * float(mask[i, t])
            returns[i, t] = running
    valid = [returns[i, t] for i in range(B) for t in range(T) if mask[i, t]]
    mean = sum(valid) / len(valid)
    var = sum((x - mean) ** 2 for x in valid) / (len(valid) - 1)
    adv = np.zeros(rewards.shape)
    for i in range(B):
        for t in range(T):
            if mask[i, t]:
                adv[i, t] = (returns[i, t] - mean) / math.sqrt(var + 1e-8)
    return adv, returns


def inputs(seed, dtype):
    rng = np.random.default_rng(seed)
    mask = make_mask(STARTS, LENGTHS)
    return dict(
        token_rewards=rng.normal(size=(B, T)).astype(dtype),
        values=rng.normal(size=(B, T)).astype(dtype),
        scores=rng.normal(size=B).astype(dtype) * 3,
        mask=mask,
    )


def run(name, d, dtype, grad=False, **kw):
    tensors = {
        k: paddle.to_tensor(d[k], stop_gradient=not grad) for k in ("token_rewards", "values", "scores")
    }
    adv, ret = registry.get("advantage", name)(response_mask=paddle.to_tensor(d["mask"]), **tensors, **kw)
    return adv, ret, tensors


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_reference_with_left_prompt_offsets(dtype, gamma, lam):
    d = inputs(0, dtype)
    adv, ret, tensors = run("gae", d, dtype, grad=True, gamma=gamma, lam=lam)
    exp_adv, exp_ret = ref_gae(d["token_rewards"], d["values"], d["mask"], gamma, lam)
    close(adv.numpy(), exp_adv, dtype)
    close(ret.numpy(), exp_ret, dtype)
    (adv.sum() + ret.sum()).backward()
    assert np.isfinite(tensors["values"].grad.numpy()).all()


@pytest.mark.parametrize("name,ref", [("grpo", ref_grpo), ("dr_grpo", ref_dr_grpo), ("rloo", ref_rloo)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [2, 3, 6])
def test_group_estimators_match_reference(name, ref, dtype, group_size):
    d = inputs(1, dtype)
    adv, ret, tensors = run(name, d, dtype, grad=True, group_size=group_size)
    expected = broadcast(ref(d["scores"], group_size, 1e-6), d["mask"])
    close(adv.numpy(), expected, dtype)
    close(ret.numpy(), expected, dtype)
    adv.sum().backward()
    assert np.isfinite(tensors["scores"].grad.numpy()).all()


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_all_equal_group_gives_zero_without_nan(name):
    d = inputs(2, "float32")
    d["scores"] = np.array([1.5, 1.5, 1.5, -2.0, 0.0, 4.0], "float32")
    adv, _, tensors = run(name, d, "float32", grad=True, group_size=3)
    assert np.isfinite(adv.numpy()).all()
    assert np.abs(adv.numpy()[:3]).max() == 0.0
    adv.sum().backward()
    assert np.isfinite(tensors["scores"].grad.numpy()).all()


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_group_size_one_gives_zero_advantages(name):
    adv, ret, _ = run(name, inputs(3, "float64"), "float64", group_size=1)
    assert np.abs(adv.numpy()).max() == 0.0 and np.abs(ret.numpy()).max() == 0.0


def test_rloo_needs_two_samples_and_batch_must_divide():
    d = inputs(4, "float32")
    with pytest.raises(ValueError, match="group_size >= 2"):
        run("rloo", d, "float32", group_size=1)
    for name in ("grpo", "dr_grpo", "rloo"):
        with pytest.raises(ValueError, match="group_size=4"):
            run(name, d, "float32", group_size=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [1.0, 0.95])
def test_reinforce_plus_plus_matches_reference(dtype, gamma):
    d = inputs(5, dtype)
    adv, ret, tensors = run("reinforce_plus_plus", d, dtype, grad=True, gamma=gamma)
    exp_adv, exp_ret = ref_reinforce_pp(d["token_rewards"], d["mask"], gamma)
    close(ret.numpy(), exp_ret, dtype)
    close(adv.numpy(), exp_adv, dtype)
    adv.sum().backward()
    assert np.isfinite(tensors["token_rewards"].grad.numpy()).all()


def test_empty_mask_gives_zeros_not_nan():
    d = inputs(6, "float32")
    d["mask"] = np.zeros((B, T), "float32")
    for name in sorted(COVERED["advantage"]):
        adv, ret, _ = run(name, d, "float32", group_size=2)
        assert np.abs(adv.numpy()).max() == 0.0 and np.abs(ret.numpy()).max() == 0.0, name


def test_missing_inputs_name_what_is_needed():
    mask = paddle.ones([2, 3])
    with pytest.raises(ValueError, match="gae.*values"):
        registry.get("advantage", "gae")(token_rewards=paddle.ones([2, 3]), values=None, response_mask=mask)
    with pytest.raises(ValueError, match="grpo.*scores"):
        registry.get("advantage", "grpo")(token_rewards=None, values=None, response_mask=mask, group_size=2)
    with pytest.raises(ValueError, match="reinforce_plus_plus.*token_rewards"):
        registry.get("advantage", "reinforce_plus_plus")(token_rewards=None, values=None, response_mask=mask)

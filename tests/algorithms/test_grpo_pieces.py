"""GRPO-family pieces: SAPO, delta, per-token weights, the rule rewards (GSM8K answers), DAPO shaping, TIS."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.algorithms import get
from alignment.algorithms.shaping import (
    constant_reward_groups,
    high_entropy_mask,
    overlong_penalty,
    truncated_is_weights,
)
from alignment.algorithms.verifiers import answers_match, extract_answer

from .test_policy import data, ref_agg, valid

COVERED = {"policy": {"sapo"}, "reward_func": {"accuracy", "format", "length", "repetition"}}
GSM8K = Path(__file__).resolve().parents[2] / "alignment/tools/demo_data/gsm8k_test_first1000.jsonl"


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_sapo_matches_reference(mode):
    logps, old, adv, mask = data(1, "float64")
    x = paddle.to_tensor(logps, stop_gradient=False)
    loss, metrics = get("policy", "sapo")(x, paddle.to_tensor(old), paddle.to_tensor(adv), paddle.to_tensor(mask),
                                          loss_agg_mode=mode, tau_pos=1.0, tau_neg=1.05)
    per = {}
    for i, t in valid(mask):
        r, a = math.exp(logps[i, t] - old[i, t]), adv[i, t]
        tau = 1.0 if a > 0 else 1.05
        per[(i, t)] = -(4 / tau) * (1 / (1 + math.exp(-tau * (r - 1)))) * a
    np.testing.assert_allclose(float(loss), ref_agg(per, mask, mode), rtol=1e-9)
    loss.backward()
    assert np.isfinite(x.grad.numpy()).all()


def test_delta_caps_the_unclipped_ratio_and_token_weights_scale_losses():
    logps, old, adv, mask = data(2, "float64")
    args = [paddle.to_tensor(v) for v in (logps, old, adv, mask)]
    delta = 1.25
    loss, _ = get("policy", "ppo")(*args, clip_range_ratio=0.2, delta=delta)
    w = np.random.default_rng(0).uniform(0, 2, mask.shape)
    wloss, _ = get("policy", "ppo")(*args, clip_range_ratio=0.2, delta=delta, token_weights=paddle.to_tensor(w))
    per, wper = {}, {}
    for i, t in valid(mask):
        r, a = math.exp(logps[i, t] - old[i, t]), adv[i, t]
        per[(i, t)] = max(-a * min(r, delta), -a * min(max(r, 0.8), 1.2))
        wper[(i, t)] = per[(i, t)] * w[i, t]
    np.testing.assert_allclose(float(loss), ref_agg(per, mask, "token-mean"), rtol=1e-9)
    np.testing.assert_allclose(float(wloss), ref_agg(wper, mask, "token-mean"), rtol=1e-9)
    with pytest.raises(ValueError, match="delta must be > 1"):
        get("policy", "ppo")(*args, delta=1.1)


# ---------------------------------------------------------------------------------------------- rule rewards
def test_extract_answer_marked_answer_wins():
    assert extract_answer("so 3 + 4 = 7\n#### 7\nthen 12 more words 99") == "7"
    assert extract_answer("the total is \\boxed{1,234} (not 5)") == "1,234"
    assert extract_answer("first 3 then 41") == "41"
    assert extract_answer("no digits") is None
    assert answers_match("1,234", "1234") and answers_match("$18.", "18") and not answers_match("17", "18")


def test_accuracy_scores_the_shipped_gsm8k_answers_one_and_perturbed_zero():
    records = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    assert len(records) == 1000
    acc = get("reward_func", "accuracy")
    solutions = [r["answer"].split("####")[-1].strip().replace(",", "") for r in records]
    prompts = [r["question"] for r in records]
    completions = [r["answer"] for r in records]
    assert acc(prompts, completions, solution=solutions) == [1.0] * 1000
    # the full reasoning text works as the reference too (its marked answer is extracted)
    assert acc(prompts, completions, solution=completions) == [1.0] * 1000
    rng = random.Random(0)
    perturbed = []
    for text, sol in zip(completions, solutions):
        head = text.rsplit("####", 1)[0]
        wrong = str(int(float(sol)) + rng.choice([-3, -2, -1, 1, 2, 3]))
        perturbed.append(f"{head}#### {wrong}")
    assert acc(prompts, perturbed, solution=solutions) == [0.0] * 1000
    # a stray number after the marked (wrong) answer does not rescue it
    assert acc(["q"], ["#### 5\nsee step 18"], solution=["18"]) == [0.0]
    with pytest.raises(ValueError, match="no reference answer"):
        acc(["q"], ["18"], solution=[None])


def test_format_length_repetition_rewards():
    fmt = get("reward_func", "format")
    assert fmt(["", ""], ["<think>a</think> <answer>1</answer>", "1"]) == [1.0, 0.0]
    assert fmt([""], ["#### 4"], pattern=r"#### \d+") == [1.0]
    length = get("reward_func", "length")
    assert length(["", ""], ["a", "b"], completion_lengths=[4, 8], target_length=4) == [0.0, -1.0]
    rep = get("reward_func", "repetition")
    assert rep([""], ["a b c d e"], ngram_size=2) == [0.0]
    assert rep([""], ["a a a a a"], ngram_size=2, max_penalty=-1.0) == [pytest.approx(-0.75)]


# ---------------------------------------------------------------------------------------------- DAPO, TIS, entropy
def test_overlong_penalty_matches_the_formula_on_crafted_lengths():
    max_len, buf, factor = 20, 8, 0.5
    lengths = [0, 5, 12, 13, 16, 19, 20, 21, 40]
    got = overlong_penalty(paddle.to_tensor(lengths), max_length=max_len, buffer_length=buf,
                           penalty_factor=factor).numpy()

    def formula(n):
        expected = max_len - buf
        if n <= expected:
            return 0.0
        if n <= max_len:
            return (expected - n) / buf
        return -1.0

    np.testing.assert_allclose(got, [factor * formula(n) for n in lengths], rtol=1e-6)
    assert got[6] == pytest.approx(-factor)  # the last allowed length gets the full ramp
    with pytest.raises(ValueError, match="overlong_buffer_len"):
        overlong_penalty(paddle.to_tensor([1]), max_length=4, buffer_length=5)


def test_constant_reward_groups():
    scores = paddle.to_tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0, 0.0])
    assert constant_reward_groups(scores, 2).numpy().tolist() == [True, False, True, True]


def test_truncated_is_weights_and_mismatch_metrics():
    old = paddle.to_tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    rollout = paddle.to_tensor([[-1.0, -4.0, 0.0], [-0.6, -0.4, -0.5]])
    mask = paddle.to_tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    w, m = truncated_is_weights(old, rollout, mask, cap=2.0)
    expected = np.minimum(np.exp(old.numpy() - rollout.numpy()), 2.0) * mask.numpy()
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    assert float(m["rollout_logp_diff_max"]) == pytest.approx(2.0)
    assert float(m["rollout_logp_diff_mean"]) == pytest.approx((0 + 2 + 0.1 + 0.1 + 0) / 5, rel=1e-5)


def test_high_entropy_mask_keeps_the_top_quantile():
    ent = paddle.to_tensor([[0.1, 0.9, 0.5, 7.0], [0.3, 0.7, 0.2, 0.8]])
    mask = paddle.to_tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    keep = high_entropy_mask(ent, mask, 0.5).numpy()
    # masked entropies 0.1 .9 .5 .3 .7 .2 .8 -> the 50% quantile is 0.5; the masked-out 7.0 never counts
    assert keep.tolist() == [[0, 1, 1, 0], [0, 1, 0, 1]]
    assert high_entropy_mask(ent, mask, 1.0).numpy().tolist() == mask.numpy().tolist()

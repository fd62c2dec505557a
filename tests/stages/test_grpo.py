"""GRPO family from the command line (in-process ``run_ppo.main``): every policy loss and loss_type preset's
logged loss equals the pure function on the same batch, dynamic sampling drops / refills / counts, the
train/rollout log-prob mismatch is ~0, GSM8K demo data end to end with the accuracy reward, and GRPO with
``reward_funcs accuracy`` raises held-out accuracy on a synthetic copy task from a tiny SFT model."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

from alignment.ppo import updates
from alignment.ppo.run_ppo import main

REPO = Path(__file__).resolve().parents[2]
GRPO_CONFIG = str(REPO / "config/llama/tiny/grpo_argument.json")
SEEN_COLUMNS: list = []


def text_length_reward(prompts, completions, **columns):
    """A user reward (module.path:function): characters of the completion; records the columns it gets."""
    SEEN_COLUMNS.append(sorted(columns))
    return [float(len(c)) for c in completions]


def constant_for_same_reward(prompts, completions, **columns):
    """1.0 for every completion of a prompt whose record says kind=same, else the completion's length."""
    return [1.0 if kind == "same" else float(len(c)) for c, kind in zip(completions, columns["kind"])]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo_data")
    with open(d / "prompts.jsonl", "w") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": f"count the apples {i}", "solution": str(i),
                                "kind": "same" if i % 4 else "vary"}) + "\n")
    return d / "prompts.jsonl"


def _cli(out, model_dir, prompts, *extra):
    return [GRPO_CONFIG, "--actor_model_name_or_path", str(model_dir), "--train_datasets", f"json:1.0:{prompts}",
            "--output_dir", str(out), "--max_steps", "1", "--do_eval", "false", "--evaluation_strategy", "no",
            "--save_strategy", "no", "--max_dec_len", "6", "--max_length", "48", "--max_prompt_len", "32",
            *map(str, extra)]


def _records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def captured(monkeypatch):
    """Every actor micro-batch the updater sees (its fields as numpy) and the loss it logged."""
    seen = []
    original = updates.PPOUpdater._actor_loss  # both the chunked-head and the logits path end here

    def spy(self, logps, entropy, mb):
        loss, metrics = original(self, logps, entropy, mb)
        seen.append({k: (None if getattr(mb, k, None) is None else getattr(mb, k).numpy().astype("float64"))
                     for k in ("old_logps", "advantages", "response_mask", "rollout_logps")}
                    | {"pg_loss": float(metrics["pg_loss"])})
        return loss, metrics

    monkeypatch.setattr(updates.PPOUpdater, "_actor_loss", spy)
    return seen


def _reference(policy, loss_type, mb, *, total_tokens, gas, max_dec_len, delta=None, tis_cap=None):
    """The pure loss on the captured batch at ratio 1 (the first pass of a rollout: logps == old_logps)."""
    old, adv, mask = mb["old_logps"], mb["advantages"], mb["response_mask"]
    if policy in ("ppo", "gspo"):
        per = -adv  # max(-A ρ, -A clip(ρ)) at ρ = 1 (delta > 1 changes nothing there)
    elif policy == "cispo":
        per = -adv * old
    else:  # sapo: -(4 / τ) σ(0) A
        per = -(4.0 / np.where(adv > 0, 1.0, 1.05)) * 0.5 * adv
    if tis_cap is not None:
        per = per * np.minimum(np.exp(old - mb["rollout_logps"]), tis_cap)
    per = per * mask
    lengths = mask.sum(-1)
    rows = lengths > 0
    if loss_type == "grpo":
        return float((per.sum(-1)[rows] / lengths[rows]).mean())
    if loss_type == "bnpo":
        return float(per.sum() / mask.sum())
    if loss_type == "dr_grpo":
        return float((per.sum(-1)[rows] / max_dec_len).mean())
    if loss_type == "dapo":
        return float(per.sum() / (total_tokens / gas))
    raise AssertionError(loss_type)


CASES = [  # each policy loss and each loss_type preset at least once
    ("ppo", "grpo", ["--policy_loss", "ppo", "--delta", "1.5", "--tis_cap", "2.0", "--kl_loss_coeff", "0.01",
                     "--kl_loss_estimator", "k2", "--entropy_coeff", "0.01"]),
    ("gspo", "dr_grpo", ["--importance_sampling_level", "sequence"]),
    ("cispo", "dapo", ["--policy_loss", "cispo"]),
    ("sapo", "bnpo", ["--policy_loss", "sapo"]),
]


@pytest.mark.parametrize("policy, loss_type, extra", CASES, ids=[c[0] + "-" + c[1] for c in CASES])
def test_policy_loss_and_loss_type_match_the_pure_function(tmp_path, tiny_model_dir, prompts_file, captured,
                                                           policy, loss_type, extra):
    # 2 prompts x 4 samples = 8 rows in 2 micro-batches of one optimizer step: both passes see the rollout weights
    SEEN_COLUMNS.clear()
    main(_cli(tmp_path / "out", tiny_model_dir, prompts_file, "--loss_type", loss_type, "--min_dec_len", "0",
              "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
              "--reward_funcs", "tests.stages.test_grpo:text_length_reward", *extra))
    assert len(captured) == 2
    total = sum(mb["response_mask"].sum() for mb in captured)
    delta = 1.5 if "--delta" in extra else None
    tis = 2.0 if "--tis_cap" in extra else None
    expected = [_reference(policy, loss_type, mb, total_tokens=total, gas=2, max_dec_len=6, delta=delta, tis_cap=tis)
                for mb in captured]
    assert any(abs(mb["advantages"]).max() > 0 for mb in captured)  # a real signal, not 0 == 0
    np.testing.assert_allclose([mb["pg_loss"] for mb in captured], expected, rtol=2e-4, atol=1e-6)
    rec = _records(tmp_path / "out")[-1]
    assert rec["pg_loss"] == pytest.approx(np.mean(expected), rel=2e-4, abs=1e-6)
    assert rec["rewards_text_length_reward"] == pytest.approx(rec["reward"])  # logged under its own name
    assert rec["rollout_logp_diff_max"] < 1e-4  # rollout and training share one model
    assert SEEN_COLUMNS and {"solution", "completion_lengths", "kind"} <= set(SEEN_COLUMNS[0])
    placement = json.loads((tmp_path / "out" / "placement.json").read_text())["models"]
    assert ("reference" in placement) == ("--kl_loss_coeff" in extra)  # no reference model at kl 0
    if "--kl_loss_coeff" in extra:
        assert "kl_loss" in rec and "entropy" in rec


@pytest.fixture
def experiences(monkeypatch):
    """Every Experience the updater receives (advantages filled in by the trainer's own step)."""
    seen = []
    original = updates.PPOUpdater.update

    def spy(self, exp, ptx=None):
        seen.append(exp)
        return original(self, exp, ptx)

    monkeypatch.setattr(updates.PPOUpdater, "update", spy)
    return seen


def test_dynamic_sampling_drops_refills_and_counts(tmp_path, tiny_model_dir, prompts_file, experiences):
    seen = experiences
    # 3 of 4 prompts have constant rewards: batches of 2 prompts rarely give 2 signal groups at once
    main(_cli(tmp_path / "ds", tiny_model_dir, prompts_file, "--dynamic_sampling", "true", "--max_gen_batches", "8",
              "--max_steps", "2", "--reward_funcs", "tests.stages.test_grpo:constant_for_same_reward"))
    recs = [r for r in _records(tmp_path / "ds") if "reward" in r]
    assert len(recs) == 2 and len(seen) == 2
    for rec, exp in zip(recs, seen):
        groups = exp.scores.numpy().reshape(-1, 4)
        assert groups.shape[0] == 2  # a full step of per_device_prompt_batch_size groups
        kept_constant = int((groups.max(1) - groups.min(1) <= 1e-6).sum())
        assert kept_constant == rec["dynamic_sampling_filled"]
        assert rec["dynamic_sampling_dropped"] >= 1 and rec["dynamic_sampling_gen_batches"] >= 2
        # every generated group is kept or dropped: 2 prompts per generated batch
        assert 2 * rec["dynamic_sampling_gen_batches"] >= rec["dynamic_sampling_dropped"] + 2 - kept_constant
    # with max_gen_batches 1 nothing is refilled: the dropped groups fill the step (zero advantage) and are counted
    main(_cli(tmp_path / "ds1", tiny_model_dir, prompts_file, "--dynamic_sampling", "true", "--max_gen_batches", "1",
              "--reward_funcs", "tests.stages.test_grpo:constant_for_same_reward", "--seed", "3"))
    rec = [r for r in _records(tmp_path / "ds1") if "reward" in r][-1]
    assert rec["dynamic_sampling_gen_batches"] == 1
    assert rec["dynamic_sampling_filled"] == rec["dynamic_sampling_dropped"]


def test_gsm8k_demo_data_end_to_end_with_the_accuracy_reward(tmp_path, tiny_model_dir):
    out = tmp_path / "gsm8k"
    main([GRPO_CONFIG, "--actor_model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
          "--max_steps", "2", "--eval_steps", "2", "--save_strategy", "no", "--max_dec_len", "8",
          "--overlong_buffer_len", "4", "--mask_truncated_completions", "true"])
    recs = _records(out)
    train = [r for r in recs if "reward" in r]
    evals = [r for r in recs if "eval_reward" in r]
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in evals] == [0, 2]
    for r in train:
        assert 0.0 <= r["rewards_accuracy"] <= 1.0 and -1.0 <= r["rewards_overlong"] <= 0.0
        assert r["reward"] == pytest.approx(r["rewards_accuracy"] + r["rewards_overlong"], abs=1e-6)
        assert math.isfinite(r["pg_loss"])
    assert {"eval_accuracy", "eval_accuracy_pass@4", "eval_overlong"} <= set(evals[-1])
    assert (out / "policy" / "config.json").exists()


# ---------------------------------------------------------------------------------------------- learning
NUMBERS = list(range(10, 100))
random.Random(0).shuffle(NUMBERS)
HELD_OUT, RL_TRAIN = NUMBERS[:20], NUMBERS[20:]


@pytest.fixture(scope="module")
def copy_task(tmp_path_factory, tiny_model_dir):
    """A tiny SFT model that copies two-digit numbers ('copy 47' -> '47') about a third of the time."""
    from alignment.sft.run_sft import main as sft_main

    d = tmp_path_factory.mktemp("copy_task")
    with open(d / "sft.jsonl", "w") as f:
        for a in NUMBERS:
            f.write(json.dumps({"instruction": f"copy {a}", "input": "", "output": str(a)}) + "\n")
    for name, numbers in (("train", RL_TRAIN), ("held_out", HELD_OUT)):
        with open(d / f"{name}.jsonl", "w") as f:
            for a in numbers:
                f.write(json.dumps({"prompt": f"copy {a}", "solution": str(a)}) + "\n")
    sft_main([str(REPO / "config/llama/tiny/sft_argument.json"), "--model_name_or_path", str(tiny_model_dir),
              "--train_datasets", f"alpaca:1.0:{d / 'sft.jsonl'}", "--output_dir", str(d / "sft"),
              "--max_steps", "150", "--learning_rate", "3e-3", "--max_length", "64", "--do_eval", "false",
              "--evaluation_strategy", "no", "--eval_split_ratio", "0"])
    return d


@pytest.mark.slow
def test_grpo_with_accuracy_reward_raises_held_out_accuracy(tmp_path, copy_task):
    out = tmp_path / "learn"
    main([GRPO_CONFIG, "--actor_model_name_or_path", str(copy_task / "sft"),
          "--train_datasets", f"json:1.0:{copy_task / 'train.jsonl'}",
          "--eval_datasets", f"json:1.0:{copy_task / 'held_out.jsonl'}", "--output_dir", str(out),
          "--max_steps", "40", "--eval_steps", "40", "--save_strategy", "no", "--max_dec_len", "4",
          "--num_return_sequences", "8", "--per_device_prompt_batch_size", "4", "--per_device_train_batch_size", "32",
          "--per_device_eval_batch_size", "20", "--learning_rate", "1e-3", "--max_length", "64",
          "--max_prompt_len", "32"])
    evals = [r for r in _records(out) if "eval_accuracy" in r]
    start, end = evals[0]["eval_accuracy"], evals[-1]["eval_accuracy"]
    print(f"held-out sampled accuracy (20 numbers never in the GRPO prompts, 8 samples each): {start:.3f} -> {end:.3f}")
    assert [r["step"] for r in evals] == [0, 40]
    assert 0.05 < start < 0.6  # the SFT model is partly right, so there is something to learn
    # measured 0.312 -> 0.481; seeds 1 and 2: -> 0.388; use_fusemt off: 0.319 -> 0.481. At lr 2e-3 the same
    # run swung from -0.31 to +0.23 with the seed or float rounding (the fused kernels, MKL's code path).
    assert end >= start + 0.08, (start, end)


@pytest.mark.parametrize("extra, message", [
    (["--policy_loss", "nope"], "policy_loss='nope' is not valid; allowed values: cispo, gspo, ppo, sapo"),
    (["--loss_type", "xx"], "loss_type='xx' is not valid; allowed values: grpo, bnpo, dr_grpo, dapo"),
    (["--scale_rewards", "rank"], "scale_rewards='rank' is not valid; allowed values: group, batch, none"),
    (["--importance_sampling_level", "sequence", "--policy_loss", "cispo"], "importance_sampling_level='sequence'"),
    (["--loss_type", "dr_grpo", "--loss_agg_mode", "seq-mean-token-mean"], "contradicts loss_agg_mode"),
    (["--epsilon_high", "0.3", "--clip_range_ratio_high", "0.2"], "are aliases"),
    (["--delta", "1.1"], "delta must be > 1 + clip_range_ratio_high"),
    (["--top_entropy_quantile", "0"], "top_entropy_quantile must be in (0, 1]"),
    (["--overlong_buffer_len", "99"], "overlong_buffer_len (99) must be <= max_dec_len"),
    (["--reward_funcs", "accuracy", "bogus"], "reward_funcs entry 'bogus' is not valid; allowed values: accuracy"),
    (["--reward_weights", "1", "2"], "reward_weights has 2 entries for 1 rewards"),
])
def test_grpo_option_errors_name_the_option(tmp_path, tiny_model_dir, prompts_file, extra, message):
    from alignment.utils.cli import ArgumentError

    with pytest.raises((ArgumentError, ValueError), match=re.escape(message)):
        main(_cli(tmp_path / "bad", tiny_model_dir, prompts_file, *extra))

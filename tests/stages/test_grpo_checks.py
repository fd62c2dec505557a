"""GRPO numerics through the trainer (in-process ``run_ppo.main``, tiny model, one step each): the advantages of
``scale_rewards`` group / batch / none equal a NumPy reference on crafted rewards, ``mask_truncated_completions``
takes exactly the rows without an EOS out of the loss, eval pass@k equals a reference on crafted rewards; and one
2-process data-parallel run of ``loss_type dapo`` + ``dynamic_sampling`` gives the one-process metrics and weights."""

from __future__ import annotations

import json
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest

from alignment.ppo.feeding import BatchOrder
from alignment.ppo.run_ppo import main

from tests.stages import _grpo_worker as worker  # registers the eos_by_content sampler
from tests.stages.test_grpo import (  # noqa: F401 (fixtures)
    GRPO_CONFIG,
    _cli,
    _records,
    captured,
    experiences,
    prompts_file,
)

REPO = Path(__file__).resolve().parents[2]
W = "tests.stages._grpo_worker"


def _scaled_reference(rewards, k, mode):
    r = np.asarray(rewards, dtype="float64").reshape(-1, k)
    centred = r - r.mean(axis=1, keepdims=True)
    if mode == "group":
        return (centred / (r.std(axis=1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    if mode == "batch":
        return (centred / (r.std(ddof=1) + 1e-6)).reshape(-1)
    return centred.reshape(-1)


@pytest.mark.parametrize("mode", ["group", "batch", "none"])
def test_scale_rewards_advantages_equal_the_numpy_reference(tmp_path, tiny_model_dir, prompts_file, experiences,
                                                            mode):
    main(_cli(tmp_path / mode, tiny_model_dir, prompts_file, "--scale_rewards", mode,
              "--reward_funcs", f"{W}:crafted_reward"))
    (exp,) = experiences
    mask = exp.response_mask.numpy()
    np.testing.assert_array_equal(exp.scores.numpy(), worker.CRAFTED)
    expected = _scaled_reference(worker.CRAFTED, 4, mode)[:, None] * mask
    np.testing.assert_allclose(exp.advantages.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert mask.sum(axis=1).min() > 0


def test_mask_truncated_completions_zeroes_the_truncated_rows(tmp_path, tiny_model_dir, prompts_file, experiences,
                                                             captured):
    common = ("--sampler", "eos_by_content", "--min_dec_len", "0", "--loss_type", "bnpo", "--use_fusemt", "false",
              "--reward_funcs", f"{W}:crafted_reward")
    main(_cli(tmp_path / "plain", tiny_model_dir, prompts_file, *common))
    main(_cli(tmp_path / "masked", tiny_model_dir, prompts_file, *common, "--mask_truncated_completions", "true"))
    plain, masked = experiences
    np.testing.assert_array_equal(plain.sequences.numpy(), masked.sequences.numpy())  # the same rollout
    responses = masked.sequences.numpy()[:, masked.prompt_length:]
    ended = (responses == worker.EOS_ID).any(axis=1)
    assert 0 < ended.sum() < len(ended), ended  # some rows stopped at an EOS, some were cut at max_dec_len
    full, kept = plain.response_mask.numpy(), masked.response_mask.numpy()
    assert (full[~ended].sum(axis=1) == 6).all()
    np.testing.assert_array_equal(kept[~ended], 0.0)  # truncated rows: no token in the loss
    np.testing.assert_array_equal(kept[ended], full[ended])  # finished rows untouched
    np.testing.assert_array_equal(masked.advantages.numpy()[~ended], 0.0)
    # the logged loss is the bnpo loss (token mean at ratio 1: -A) over the finished rows only
    (mb_plain,), (mb_masked,) = captured[:1], captured[1:]
    adv = mb_masked["advantages"]
    assert mb_masked["pg_loss"] == pytest.approx(float(-(adv * kept).sum() / kept.sum()), rel=1e-5, abs=1e-7)
    adv_all = mb_plain["advantages"]
    assert mb_plain["pg_loss"] == pytest.approx(float(-(adv_all * full).sum() / full.sum()), rel=1e-5, abs=1e-7)
    assert abs(mb_plain["pg_loss"] - mb_masked["pg_loss"]) > 1e-3  # the truncated rows did count without the flag
    rec = _records(tmp_path / "masked")[-1]
    assert rec["truncated_fraction"] == pytest.approx(1.0 - ended.mean())


PATTERNS = ["0,0,0,0", "1,0,0,0", "0,1,1,0", "1,1,1,1", "0.25,0.5,0,0.75"]  # 5 prompts x 4 samples


def test_eval_pass_at_k_equals_the_reference(tmp_path, tiny_model_dir):
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"count the pears {i}", "pattern": p}) + "\n"
                            for i, p in enumerate(PATTERNS)))
    # 2 prompts per eval batch: batches of 2, 2 and 1 prompt (k = num_return_sequences = 4 samples each)
    main(_cli(tmp_path / "out", tiny_model_dir, data, "--reward_funcs", f"{W}:pattern_reward",
              "--eval_datasets", f"json:1.0:{data}", "--do_eval", "true", "--evaluation_strategy", "steps",
              "--eval_steps", "1", "--per_device_eval_batch_size", "2"))
    evals = [r for r in _records(tmp_path / "out") if "eval_reward" in r]
    assert [r["step"] for r in evals] == [0, 1]
    values = np.array([[float(x) for x in p.split(",")] for p in PATTERNS])
    best = values.max(axis=1)
    # for a 0/1 reward with n = k samples, pass@k = 1 - C(n - c, k) / C(n, k) (Chen et al. 2021) = any correct
    binary = values[:4]
    unbiased = [1 - comb(4 - int(row.sum()), 4) / comb(4, 4) for row in binary]
    np.testing.assert_allclose(best[:4], unbiased)
    for rec in evals:
        assert rec["eval_pattern_reward"] == pytest.approx(values.mean(), abs=1e-9)
        assert rec["eval_pattern_reward_pass@4"] == pytest.approx(best.mean(), abs=1e-9)  # 0.75 (best of the last)
        assert rec["eval_reward"] == pytest.approx(values.mean(), abs=1e-9)


# ---------------------------------------------------------------------------------------------- data parallel
def _dp_prompts(path: Path, seed: int) -> None:
    """16 prompts whose 'kind' makes each step's constant groups land where a refill is needed on one rank only.

    Global batches of 4 prompts (rank 0: the first 2, rank 1: the last 2), G = a group with a signal, B = a
    constant one: step 1 [G G | G B] is short on rank 1 and refills from [B B | G G]; step 2 [B G | G G] is short on
    rank 0 and refills from [G G | G G]. One process takes the first good groups in order: the same groups."""
    plan = "GGGB" "BBGG" "BGGG" "GGGG"
    order = [i for b in range(4) for i in BatchOrder(16, 4, seed=seed).batch(0, b)]
    kinds = {index: ("vary" if plan[pos] == "G" else "same") for pos, index in enumerate(order)}
    path.write_text("".join(json.dumps({"prompt": f"count the apples {i}", "kind": kinds[i]}) + "\n"
                            for i in range(16)))


@pytest.mark.distributed
def test_two_process_dapo_dynamic_sampling_matches_one_process(tmp_path, tiny_model_dir):
    from alignment.models.loading import read_weights
    from tests.parallel.launching import launch

    _dp_prompts(tmp_path / "prompts.jsonl", seed=42)
    script = REPO / "tests/stages/_grpo_worker.py"
    common = [GRPO_CONFIG, "--actor_model_name_or_path", tiny_model_dir,
              "--train_datasets", f"json:1.0:{tmp_path / 'prompts.jsonl'}", "--max_steps", 2, "--seed", 42,
              "--do_eval", "false", "--evaluation_strategy", "no", "--save_strategy", "no",
              "--sampler", "eos_by_content", "--use_fusemt", "false", "--min_dec_len", 0, "--max_dec_len", 6,
              "--max_length", 48, "--max_prompt_len", 32, "--num_return_sequences", 2, "--loss_type", "dapo",
              "--dynamic_sampling", "true", "--max_gen_batches", 2, "--reward_funcs", f"{W}:kind_reward",
              "--gradient_accumulation_steps", 2]
    main([*map(str, common), "--output_dir", str(tmp_path / "single"), "--per_device_prompt_batch_size", "4",
          "--per_device_train_batch_size", "4"])  # one process: in this one
    launch(script, [*common, "--output_dir", tmp_path / "dp", "--per_device_prompt_batch_size", 2,
                    "--per_device_train_batch_size", 2], tmp_path / "log")
    a, b = _records(tmp_path / "single"), _records(tmp_path / "dp")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert ra["response_length_max"] > ra["response_length_min"]  # rows of different lengths: tokens differ
        for key in ("reward", "pg_loss", "actor_loss", "response_length", "rollout_logp_diff_max"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["step"], key, ra[key], rb[key])
        # the ranks hold different token counts: a per-rank token mean (the logged 'advantages', averaged over the
        # ranks) differs from the one-process mean, while pg_loss (dapo: / the tokens of every rank) is the same
        assert rb["advantages"] != pytest.approx(ra["advantages"], rel=1e-4, abs=1e-6)
        # the refill decision is all-reduced: both ranks generated 2 batches in each step
        assert ra["dynamic_sampling_gen_batches"] == rb["dynamic_sampling_gen_batches"] == 2
        assert ra["dynamic_sampling_filled"] == rb["dynamic_sampling_filled"] == 0
        # dropped groups: the single run's count is the sum over ranks (the log holds the mean over 2 ranks)
        assert ra["dynamic_sampling_dropped"] == pytest.approx(2 * rb["dynamic_sampling_dropped"])
    assert [r["dynamic_sampling_dropped"] for r in a] == [3, 1]
    wa, wb = read_weights(str(tmp_path / "single" / "policy")), read_weights(str(tmp_path / "dp" / "policy"))
    assert max(float(np.abs(wa[k].numpy() - wb[k].numpy()).max()) for k in wa) < 1e-5

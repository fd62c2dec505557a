"""Safe RLHF (issue 11) under multi-process layouts reproduces one process (CPU, gloo).

* the cost model (RM stage, ``score_type cost``, token-wise loss) under pipeline parallel 2: per-step losses
  and the eval loss within LOSS_ATOL, the saved single-process checkpoint (model.safetensors +
  value_head.safetensors) within WEIGHT_ATOL (rtol 0), and the pair / sign metrics of training (logged from the
  last stage) and of evaluation (end costs and signs gathered from the last stage) as in one process;
* PPO-Lagrangian (a frozen cost model + a trained cost critic) under tensor parallel 2: every compared metric
  of both steps, ``lambda``, ``episode_cost``, the cost critic's loss / values / returns among them, within
  the PPO layout tolerances, and the saved ``policy`` / ``value`` / ``cost_value`` weights.

Measured on the 2-core CPU machine: losses 1.2e-7, weights 1.9e-7, pair / sign metrics 2.5e-8 apart (cost PP2);
metrics 4.6e-7 apart, weights policy 5.8e-6, value 3.2e-6, cost_value 2.5e-5 (PPO-Lagrangian TP2).
Measured differences are printed (pytest -s).
"""

from __future__ import annotations

import glob
import json
import shutil
import time
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.models.loading import read_weights
from alignment.utils.trainer import read_metrics

from .launching import REPO, launch, run_single
from .test_ppo_layouts import COMPARED, METRIC_ATOL, METRIC_RTOL, WEIGHT_ATOL as PPO_WEIGHT_ATOL, WORDS, _argv, _records
from .test_stage_layouts import LOSS_ATOL, compare_losses, compare_weights, first_eval_loss
from ..stages.test_cost import _safety_pairs  # the PKU-SafeRLHF-layout records of the cost-model tests

pytestmark = pytest.mark.distributed

RM_SCRIPT = REPO / "alignment/rm/run_reward.py"
PPO_SCRIPT = REPO / "alignment/ppo/run_ppo.py"
COST_METRICS = ("accuracy", "sign_accuracy", "costs/margins", "eval_accuracy", "eval_sign_accuracy",
                "eval_costs/margins", "eval_costs_std")
LAG_COMPARED = COMPARED + ("lambda", "episode_cost", "episode_cost_window", "cost_returns", "cost_values",
                           "cost_advantages", "lagrangian_advantages", "cost_critic_loss")


def _cost_model(tiny_model_dir: Path, path: Path, seed: int = 4) -> Path:
    """The tiny LM with a fresh (seeded) cost head, saved with its tokenizer."""
    from alignment.models.score_model import ScoreModel

    paddle.seed(seed)
    ScoreModel.from_pretrained(str(tiny_model_dir), score_type="cost", init_score_head=True).save_pretrained(str(path))
    for pattern in ("*token*", "*.model", "special_tokens_map.json"):
        for p in glob.glob(str(tiny_model_dir / pattern)):
            shutil.copy(p, path)
    return path


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def test_cost_model_pp2_reproduces_one_process(tiny_model_dir, tmp_path):
    model = _cost_model(tiny_model_dir, tmp_path / "cost0")
    pairs = _safety_pairs(tmp_path / "safety.jsonl", n=32)

    def argv(out):
        return ["config/llama/tiny/cost_argument.json", "--model_name_or_path", model, "--init_score_head", "false",
                "--train_datasets", f"PKU-SafeRLHF/train:1.0:{pairs}", "--output_dir", out, "--loss_type",
                "token-wise", "--max_length", 64, "--max_prompt_length", 32, "--eval_split_ratio", 0.25,
                "--max_steps", 4, "--eval_steps", 4, "--logging_steps", 1, "--per_device_train_batch_size", 4,
                "--per_device_eval_batch_size", 4]

    single, pp2 = tmp_path / "single", tmp_path / "pp2"
    t1 = _timed(run_single, RM_SCRIPT, argv(single), tmp_path / "single.log")
    t2 = _timed(launch, RM_SCRIPT, [*argv(pp2), "--pipeline_parallel_degree", 2], tmp_path / "pp2.log")
    loss_diff = compare_losses(pp2, single)
    eval_diff = abs(first_eval_loss(pp2) - first_eval_loss(single))
    assert eval_diff <= LOSS_ATOL, (first_eval_loss(pp2), first_eval_loss(single))
    weight_diff = compare_weights(pp2, single)
    worst = 0.0
    for key in COST_METRICS:  # training metrics from the last stage, eval metrics from its end costs and signs
        a = [r[key] for r in read_metrics(str(single)) if key in r]
        b = [r[key] for r in read_metrics(str(pp2)) if key in r]
        assert len(a) == len(b) >= 1, (key, a, b)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=key)
        worst = max(worst, float(np.abs(np.subtract(a, b)).max()))
    config = json.loads((pp2 / "config.json").read_text())
    assert config["score_type"] == "cost" and config.get("pipeline_parallel_degree", 1) == 1
    print(f"\ncost model PP2 ({t2:.1f} s) vs one process ({t1:.1f} s): max |loss diff| {loss_diff:.1e}, "
          f"|eval_loss diff| {eval_diff:.1e}, max |weight diff| {weight_diff:.1e}, max pair/sign metric diff "
          f"{worst:.1e}")


@pytest.mark.slow  # ~75 s of two PPO runs on the 2-core CPU machine (the cost PP2 case above: ~60 s)
def test_ppo_lagrangian_tp2_reproduces_one_process(tiny_model_dir, tmp_path):
    from alignment.models.score_model import ScoreModel

    rng = np.random.default_rng(0)
    prompts = tmp_path / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": f"{' '.join(rng.choice(WORDS, 4))} {i}"}) + "\n")
    paddle.seed(3)
    rm = tmp_path / "rm"
    ScoreModel.from_pretrained(str(tiny_model_dir), score_type="reward", init_score_head=True).save_pretrained(str(rm))
    cost = _cost_model(tiny_model_dir, tmp_path / "cost")
    for p in glob.glob(str(tiny_model_dir / "*token*")) + glob.glob(str(tiny_model_dir / "*.model")):
        shutil.copy(p, rm)
    lag = ("--cost_model_name_or_path", cost, "--threshold", -0.5, "--lambda_lr", 0.5, "--episode_cost_window_size", 8)
    single, tp2 = tmp_path / "single", tmp_path / "tp2"
    t1 = _timed(run_single, PPO_SCRIPT, _argv(tiny_model_dir, rm, prompts, single, *lag), tmp_path / "single.log")
    t2 = _timed(launch, PPO_SCRIPT, _argv(tiny_model_dir, rm, prompts, tp2, *lag, "--tensor_parallel_degree", 2),
                tmp_path / "tp2.log")
    a, b = _records(single), _records(tp2)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    assert all("lambda" in r and "episode_cost" in r and "cost_critic_loss" in r for r in a), a
    assert a[0]["lambda"] != a[1]["lambda"]  # λ moved (the threshold is below the fresh cost model's costs)
    worst = 0.0
    for ra, rb in zip(a, b):
        for key in LAG_COMPARED:
            if key not in ra:
                continue
            np.testing.assert_allclose(rb[key], ra[key], rtol=METRIC_RTOL, atol=METRIC_ATOL,
                                       err_msg=f"step {ra['step']} {key}")
            worst = max(worst, abs(rb[key] - ra[key]))
    diffs = {}
    for sub in ("policy", "value", "cost_value"):
        wa, wb = read_weights(str(single / sub)), read_weights(str(tp2 / sub))
        assert sorted(wa) == sorted(wb), set(wa) ^ set(wb)
        diffs[sub] = max(float(np.abs(wa[k].numpy() - wb[k].numpy()).max()) for k in wa)
        assert diffs[sub] <= PPO_WEIGHT_ATOL, (sub, diffs[sub])
    print(f"\nPPO-Lagrangian TP2 ({t2:.1f} s) vs one process ({t1:.1f} s): worst metric diff {worst:.2e} "
          f"(lambda {[r['lambda'] for r in b]}, episode_cost {[round(r['episode_cost'], 4) for r in b]}), "
          f"weight diffs {', '.join(f'{k} {v:.1e}' for k, v in diffs.items())}")

"""Reward-model stage: learns a synthetic preference, beats chance on HH-RLHF, saves a PPO-loadable model,
validates its arguments, and gives the same loss curve over two data-parallel processes."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import paddle
import pytest

from alignment.rm.run_reward import build_trainer, main
from alignment.utils.cli import ArgumentError
from alignment.utils.trainer import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOUNS = ["pie", "car", "tree", "river", "house", "dog", "song", "book", "road", "cloud", "apple", "lamp"]


def _marker_pairs(path, n=240, seed=0):
    """Chosen answers say 'thank you'; rejected ones do not. Otherwise the same random words."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(3, 6)))
            f.write(json.dumps({"prompt": f"Tell me about the {rng.choice(NOUNS)} number {i}.",
                                "chosen": f"{words}, thank you", "rejected": f"{words}, go away"}) + "\n")
    return path


def _argv(model, data, out, *extra):
    return ["config/llama/tiny/rm_argument.json", "--model_name_or_path", str(model),
            "--train_datasets", f"json:1.0:{data}", "--output_dir", str(out), *extra]


def test_synthetic_preference_reaches_95_percent_and_checkpoint_loads(tiny_model_dir, tmp_path):
    data = _marker_pairs(tmp_path / "pairs.jsonl")
    trainer = main(_argv(tiny_model_dir, data, tmp_path / "rm", "--max_steps", "40", "--eval_steps", "40",
                         "--max_length", "64", "--eval_split_ratio", "0.25"))
    evals = [r for r in read_metrics(str(tmp_path / "rm")) if "eval_accuracy" in r]
    assert evals[-1]["eval_accuracy"] >= 0.95, evals
    assert os.path.exists(tmp_path / "rm" / "value_head.safetensors")

    from alignment.models import ScoreModel

    reward = ScoreModel.from_pretrained(str(tmp_path / "rm"))
    critic = ScoreModel.from_pretrained(str(tmp_path / "rm"), score_type="critic")
    reward.eval()
    tok = trainer.tokenizer
    good = tok("BEGINNING OF CONVERSATION: USER: Tell me about the dog. ASSISTANT: pie car, thank you</s>",
               return_tensors="pd")
    bad = tok("BEGINNING OF CONVERSATION: USER: Tell me about the dog. ASSISTANT: pie car, go away</s>",
              return_tensors="pd")
    with paddle.no_grad():
        r_good = float(reward(good["input_ids"], attention_mask=good["attention_mask"]).end_scores)
        r_bad = float(reward(bad["input_ids"], attention_mask=bad["attention_mask"]).end_scores)
    assert r_good > r_bad
    assert critic.score_type == "critic"


def test_hh_rlhf_slice_beats_chance_on_held_out_pairs(tiny_model_dir, tmp_path):
    """Shipped HH-RLHF harmless slice (200 pairs, 20% held out): a tiny model must beat 0.5 by 0.05."""
    main(["config/llama/tiny/rm_argument.json", "--model_name_or_path", str(tiny_model_dir),
          "--output_dir", str(tmp_path / "hh")])
    evals = [r for r in read_metrics(str(tmp_path / "hh")) if "eval_accuracy" in r]
    assert evals[-1]["eval_accuracy"] >= 0.55, evals


def test_bad_values_name_the_field_and_the_choices(tiny_model_dir, tmp_path):
    data = _marker_pairs(tmp_path / "p.jsonl", n=8)
    with pytest.raises(ValueError, match=r"loss_type.*(sequence-wise|token-wise)"):
        build_trainer(_argv(tiny_model_dir, data, tmp_path / "o", "--loss_type", "pairwise"))
    with pytest.raises(ValueError, match="normalizer_type"):
        build_trainer(_argv(tiny_model_dir, data, tmp_path / "o", "--normalizer_type", "Median"))
    with pytest.raises(ArgumentError, match="regularization"):
        build_trainer(_argv(tiny_model_dir, data, tmp_path / "o", "--regularisation", "0.1"))


@pytest.mark.distributed
def test_two_process_data_parallel_matches_one_process(tiny_model_dir, tmp_path):
    data = _marker_pairs(tmp_path / "pairs.jsonl", n=64)
    common = ["--max_steps", "4", "--logging_steps", "1", "--do_eval", "false", "--max_length", "48",
              "--eval_split_ratio", "0", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    single = tmp_path / "single"
    subprocess.run([sys.executable, "alignment/rm/run_reward.py", *_argv(tiny_model_dir, data, single, *common,
                    "--per_device_train_batch_size", "8")], cwd=ROOT, env=env, check=True, capture_output=True)
    dp = tmp_path / "dp"
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                           "--log_dir", str(tmp_path / "log"), "alignment/rm/run_reward.py",
                           *_argv(tiny_model_dir, data, dp, *common, "--per_device_train_batch_size", "4")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    loss_1 = [r["loss"] for r in read_metrics(str(single)) if "loss" in r]
    loss_2 = [r["loss"] for r in read_metrics(str(dp)) if "loss" in r]
    assert len(loss_1) == len(loss_2) == 4
    np.testing.assert_allclose(loss_2, loss_1, atol=2e-4)

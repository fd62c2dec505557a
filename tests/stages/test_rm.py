"""Reward-model stage: learns a synthetic preference (>= 0.95 held-out accuracy) and saves a checkpoint that loads
as reward model and critic; the loss is the registry's; margin / centering / token-wise / normalisation paths;
beats chance on held-out HH-RLHF pairs; resume; argument errors name the field and the choices; two
data-parallel processes give the same loss curve as one."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.algorithms import get as get_algorithm
from alignment.models import ScoreModel
from alignment.rm.run_reward import build_trainer, main
from alignment.utils.cli import ArgumentError
from alignment.utils.trainer import read_metrics

REPO = Path(__file__).resolve().parents[2]
NOUNS = "pie car tree river house dog song book road cloud apple lamp".split()


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the tiny configs use repo-relative paths


def _marker_pairs(path: Path, n: int = 240, seed: int = 0, margin: bool = False) -> Path:
    """Chosen answers end in 'thank you', rejected ones in 'go away'; otherwise the same random words."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(3, 6)))
            record = {"prompt": f"Tell me about the {rng.choice(NOUNS)} number {i}.",
                      "chosen": f"{words}, thank you", "rejected": f"{words}, go away"}
            if margin:
                record["margin"] = float(i % 3)
            f.write(json.dumps(record) + "\n")
    return path


def _argv(model, data, out, *extra):
    return ["config/llama/tiny/rm_argument.json", "--model_name_or_path", str(model),
            "--train_datasets", f"json:1.0:{data}", "--output_dir", str(out), "--max_length", "64",
            "--max_prompt_length", "32", "--eval_split_ratio", "0.25", *map(str, extra)]


def _evals(out: Path):
    return [r for r in read_metrics(str(out)) if "eval_accuracy" in r]


def _end_scores(model, batch):
    model.eval()
    with paddle.no_grad():
        c = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).end_scores
        r = model(batch["rejected_input_ids"], attention_mask=batch["rejected_attention_mask"]).end_scores
    return c.numpy(), r.numpy()


def test_synthetic_preference_reaches_95_percent_and_checkpoint_loads(tiny_model_dir, tmp_path):
    data = _marker_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "rm"
    trainer = main(_argv(tiny_model_dir, data, out, "--loss_type", "sequence-wise", "--max_steps", 40,
                         "--eval_steps", 20, "--logging_steps", 10))
    evals = _evals(out)
    print("synthetic RM eval accuracy:", [round(r["eval_accuracy"], 3) for r in evals])
    assert evals[-1]["eval_accuracy"] >= 0.95, evals
    assert evals[-1]["eval_rewards/margins"] > 0 and "eval_rewards_std" in evals[-1]
    train = [r for r in read_metrics(str(out)) if "accuracy" in r and "loss" in r]
    assert train[-1]["loss"] < train[0]["loss"] and train[-1]["accuracy"] >= 0.9

    for name in ("config.json", "model.safetensors", "value_head.safetensors", "tokenizer_config.json"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["score_type"], config["normalizer_type"], config["momentum"]) == ("reward", "ExponentialMovingAverage", 0.9)

    reward = ScoreModel.from_pretrained(str(out))
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(8)])
    trained = _end_scores(trainer.model, batch)
    reloaded = _end_scores(reward, batch)
    np.testing.assert_allclose(reloaded[0], trained[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reloaded[1], trained[1], rtol=1e-5, atol=1e-5)
    assert (reloaded[0] > reloaded[1]).all()

    # PPO's loaders: the reward model and a critic initialised from it
    critic = ScoreModel.from_pretrained(str(out), score_type="critic")
    assert critic.score_type == "critic"
    tok = trainer.tokenizer
    good = tok("BEGINNING OF CONVERSATION: USER: Tell me about the dog. ASSISTANT: pie car, thank you</s>",
               return_tensors="pd")
    bad = tok("BEGINNING OF CONVERSATION: USER: Tell me about the dog. ASSISTANT: pie car, go away</s>",
              return_tensors="pd")
    with paddle.no_grad():
        r_good = float(reward(good["input_ids"], attention_mask=good["attention_mask"]).end_scores)
        r_bad = float(reward(bad["input_ids"], attention_mask=bad["attention_mask"]).end_scores)
    assert r_good > r_bad


def test_trainer_loss_is_the_registry_loss_with_margin_and_centering(tiny_model_dir, tmp_path):
    data = _marker_pairs(tmp_path / "margin.jsonl", n=32, margin=True)
    trainer = build_trainer(_argv(tiny_model_dir, data, tmp_path / "o", "--loss_type", "token-wise",
                                  "--center_rewards_coefficient", 0.01, "--regularization", 0.01))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["margin"].shape == [4]
    model = trainer.model
    model.eval()
    with paddle.no_grad():
        loss = float(trainer.compute_loss(model, batch))
        c = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).scores
        r = model(batch["rejected_input_ids"], attention_mask=batch["rejected_attention_mask"]).scores
        expected, _ = get_algorithm("reward", "token-wise")(
            c, r, batch["chosen_attention_mask"], batch["rejected_attention_mask"],
            chosen_ids=batch["chosen_input_ids"], rejected_ids=batch["rejected_input_ids"],
            regularization=0.01, margin=batch["margin"], center_rewards_coefficient=0.01)
    np.testing.assert_allclose(loss, float(expected), rtol=1e-5)


def test_token_wise_with_normalisation_learns_and_saves_statistics(tiny_model_dir, tmp_path):
    data = _marker_pairs(tmp_path / "pairs.jsonl", n=96, seed=1, margin=True)
    out = tmp_path / "rm"
    main(_argv(tiny_model_dir, data, out, "--loss_type", "token-wise", "--normalize_score_during_training", "true",
               "--normalizer_type", "RunningMeanStd", "--max_steps", 12, "--eval_steps", 12,
               "--logging_steps", 4, "--center_rewards_coefficient", 0.01))
    assert _evals(out)[-1]["eval_accuracy"] >= 0.9, _evals(out)
    config = json.loads((out / "config.json").read_text())
    assert config["do_normalize"] is True and config["normalizer_type"] == "RunningMeanStd"
    assert config["normalizer_count"] == 12 * 2 * 8  # train steps x (chosen + rejected) x batch; eval never updates
    loaded = ScoreModel.from_pretrained(str(out))
    assert float(loaded.normalizer.count) == 192.0 and loaded.score_config.do_normalize


def test_hh_rlhf_slice_beats_chance_on_held_out_pairs(tiny_model_dir, tmp_path):
    """HH-RLHF harmless, 400 shipped pairs (tests/fixtures, MIT), split 200 train / 200 held out by seed.

    config/llama/tiny/rm_argument.json as shipped (token-wise, 60 steps of 8 pairs, lr 1e-3, 160 tokens with
    48 prompt tokens) reached held-out accuracy 0.575, 0.600, 0.585, 0.550, 0.575 for seeds 42, 1, 2, 3, 4
    (mean 0.577; one SD of chance on 200 pairs is 0.035; a bag-of-words logistic regression gets 0.58-0.61).
    Asserted: >= 0.5 + 0.03, below the worst seed measured.
    """
    out = tmp_path / "hh"
    trainer = main(["config/llama/tiny/rm_argument.json", "--model_name_or_path", str(tiny_model_dir),
                    "--output_dir", str(out)])
    assert len(trainer.eval_dataset) == len(trainer.train_dataset) == 200
    accuracy = _evals(out)[-1]["eval_accuracy"]
    print(f"HH-RLHF held-out accuracy: {accuracy:.3f}")
    assert accuracy >= 0.53, _evals(out)


def test_resume_from_checkpoint_continues_the_same_run(tiny_model_dir, tmp_path):
    data = _marker_pairs(tmp_path / "pairs.jsonl", n=48)
    common = ("--max_steps", 4, "--logging_steps", 1, "--do_eval", "false", "--eval_split_ratio", 0,
              "--evaluation_strategy", "no", "--lr_scheduler_type", "constant")
    main(_argv(tiny_model_dir, data, tmp_path / "full", *common))
    main(_argv(tiny_model_dir, data, tmp_path / "cut", *common, "--max_steps", 2, "--save_strategy", "steps",
               "--save_steps", 2))
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    assert ScoreModel.from_pretrained(str(checkpoint)).score_type == "reward"  # checkpoints are score models too
    main(_argv(tiny_model_dir, data, tmp_path / "cut", *common, "--resume_from_checkpoint", checkpoint))
    full = [r["loss"] for r in read_metrics(str(tmp_path / "full")) if "loss" in r]
    resumed = [r["loss"] for r in read_metrics(str(tmp_path / "cut")) if "loss" in r]
    np.testing.assert_allclose(resumed[-2:], full[-2:], rtol=1e-4)  # steps 3 and 4 after the resume


def test_bad_values_name_the_field_and_the_choices(tiny_model_dir, tmp_path):
    data = _marker_pairs(tmp_path / "p.jsonl", n=8)
    for flag, value, message in (
        ("--loss_type", "pairwise", "loss_type='pairwise' is not valid; allowed values: sequence-wise, token-wise"),
        ("--normalizer_type", "Median", "normalizer_type='Median' is not valid; allowed values: RunningMeanStd"),
        ("--score_type", "value", "score_type='value' is not valid; allowed values: reward, cost, critic"),
        ("--normalizer_momentum", "1.5", r"normalizer_momentum\) must be in \[0, 1\)"),
        ("--regularization", "-1", "regularization must be >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            build_trainer(_argv(tiny_model_dir, data, tmp_path / "o", flag, value))
    with pytest.raises(ArgumentError, match="regularisation.*regularization"):
        build_trainer(_argv(tiny_model_dir, data, tmp_path / "o", "--regularisation", "0.1"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_name_or_path": str(tiny_model_dir), "normaliser_type": "RunningMeanStd"}))
    with pytest.raises(ArgumentError, match=r"bad.json.*normaliser_type.*normalizer_type"):
        build_trainer([str(bad), "--output_dir", str(tmp_path / "o")])
    # continuing from a checkpoint without a head must be asked for explicitly
    with pytest.raises(ValueError, match="init_score_head"):
        build_trainer(_argv(tiny_model_dir, data, tmp_path / "o", "--init_score_head", "false"))


def _run(cmd, log_dir: Path):
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("workerlog.*")))
        raise AssertionError(f"{' '.join(map(str, cmd[:6]))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}")


@pytest.mark.distributed
def test_two_process_data_parallel_matches_one_process(tiny_model_dir, tmp_path):
    """Same global batches (train 8, eval 16): one process == two processes (command line, JSON + flags)."""
    data = _marker_pairs(tmp_path / "pairs.jsonl", n=96)
    script = str(REPO / "alignment/rm/run_reward.py")
    common = ("--max_steps", 6, "--eval_steps", 3, "--logging_steps", 1, "--normalize_score_during_training", "true")
    _run([sys.executable, script, *_argv(tiny_model_dir, data, tmp_path / "single", *common,
                                         "--per_device_train_batch_size", 8, "--per_device_eval_batch_size", 16)],
         tmp_path)
    _run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log"),
          script, *_argv(tiny_model_dir, data, tmp_path / "dp", *common, "--per_device_train_batch_size", 4,
                         "--per_device_eval_batch_size", 8)], tmp_path / "log")
    a, b = read_metrics(str(tmp_path / "single")), read_metrics(str(tmp_path / "dp"))
    for key in ("loss", "accuracy", "rewards/margins", "eval_loss", "eval_accuracy", "eval_rewards/margins"):
        la = [r[key] for r in a if key in r and "train_loss" not in r]
        lb = [r[key] for r in b if key in r and "train_loss" not in r]
        assert len(la) == len(lb) >= 2, (key, la, lb)
        print(f"RM DP vs single, {key}: max abs diff {np.abs(np.subtract(la, lb)).max():.2e}")
        np.testing.assert_allclose(lb, la, rtol=0, atol=1e-4, err_msg=key)
    ca = json.loads((tmp_path / "single" / "config.json").read_text())
    cb = json.loads((tmp_path / "dp" / "config.json").read_text())
    assert ca["normalizer_count"] == cb["normalizer_count"] == 6 * 16  # DP gathers every rank's end scores
    np.testing.assert_allclose(cb["mean"], ca["mean"], atol=1e-4)

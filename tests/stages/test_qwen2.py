"""Qwen2 through the same code paths as Llama (issue 12): SFT, reward model, DPO and one PPO step on a tiny Qwen2
(grouped-query attention, q/k/v biases), each through the stage's entry point in-process; the tiny-model kit
builds the family (``--arch qwen2``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignment.utils.trainer import read_metrics

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests/fixtures"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def _losses(out: Path):
    return [r["loss"] for r in read_metrics(str(out)) if "loss" in r and "train_loss" not in r]


def _common(out):
    return ["--output_dir", str(out), "--eval_split_ratio", "0", "--do_eval", "false", "--evaluation_strategy", "no",
            "--logging_steps", "1", "--save_strategy", "no"]


def test_qwen2_sft_rm_dpo_and_a_ppo_step(tiny_qwen2_dir, tmp_path):
    from alignment.dpo.run_dpo import main as dpo
    from alignment.models import ScoreModel
    from alignment.ppo.config import DataArgument, ModelArgument, PPOArguments
    from alignment.ppo.run_ppo import build_trainer
    from alignment.rm.run_reward import main as rm
    from alignment.sft.run_sft import main as sft

    model = str(tiny_qwen2_dir)
    assert json.loads((tiny_qwen2_dir / "config.json").read_text())["model_type"] == "qwen2"
    sft(["config/llama/tiny/sft_argument.json", "--model_name_or_path", model,
         "--train_datasets", f"json:1.0:{FIXTURES / 'llamafactory_alpaca_en_demo_first10.json'}", "--max_steps", "3",
         "--max_length", "64", "--per_device_train_batch_size", "4", "--learning_rate", "0.01",
         "--lr_scheduler_type", "constant", *_common(tmp_path / "sft")])
    losses = _losses(tmp_path / "sft")
    assert len(losses) == 3 and losses[-1] < losses[0], losses

    rm(["config/llama/tiny/rm_argument.json", "--model_name_or_path", str(tmp_path / "sft"),
        "--train_datasets", f"json:1.0:{FIXTURES / 'hh_rlhf_harmless_200.jsonl'}", "--max_steps", "2",
        "--max_length", "64", "--max_prompt_length", "32", "--per_device_train_batch_size", "4",
        *_common(tmp_path / "rm")])
    assert len(_losses(tmp_path / "rm")) == 2 and np.isfinite(_losses(tmp_path / "rm")).all()
    assert type(ScoreModel.from_pretrained(str(tmp_path / "rm")).backbone).__name__ == "Qwen2Model"

    dpo(["config/llama/tiny/dpo_argument.json", "--model_name_or_path", str(tmp_path / "sft"), "--max_steps", "2",
         "--max_length", "64", "--max_prompt_length", "32", *_common(tmp_path / "dpo")])
    assert len(_losses(tmp_path / "dpo")) == 2 and np.isfinite(_losses(tmp_path / "dpo")).all()

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w} {i}"}) + "\n" for i, w in enumerate("abcdefgh")))
    args = PPOArguments(output_dir=str(tmp_path / "ppo"), max_steps=1, per_device_prompt_batch_size=4,
                        per_device_train_batch_size=4, num_return_sequences=2, max_dec_len=6, report_to=["none"],
                        disable_tqdm=True, save_strategy="no", seed=1)
    trainer = build_trainer(
        ModelArgument(actor_model_name_or_path=str(tmp_path / "sft"), reward_model_name_or_path=str(tmp_path / "rm"),
                      reward_critic_model_name_or_path=str(tmp_path / "rm")),
        DataArgument(train_datasets=f"json:1.0:{prompts}", max_length=48), args)
    trainer.train()
    rec = trainer.history[-1]
    assert len(trainer.history) == 1 and np.isfinite([rec["reward"], rec["actor_loss"], rec["critic_loss"]]).all()
    assert (tmp_path / "ppo" / "policy" / "config.json").is_file()


def test_tiny_kit_builds_qwen2(tmp_path):
    from alignment.tools.make_tiny_model import TinyModelSpec

    with pytest.raises(ValueError, match="allowed values: llama, qwen2"):
        TinyModelSpec(arch="mistral")
    from alignment.tools.make_tiny_model import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--arch", "mistral"])

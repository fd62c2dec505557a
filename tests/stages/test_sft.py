"""SFT stage: the eval loss falls on shipped GSM8K data; CLI JSON + overrides; bad arguments are named."""

import json

import pytest

from alignment.sft.run_sft import build_trainer, run_trainer
from alignment.utils.cli import ArgumentError
from alignment.utils.trainer import read_metrics

GSM8K = "alignment/tools/demo_data/gsm8k_test_first1000.jsonl"


def _argv(tiny_model_dir, out, *extra):
    return [
        "config/llama/tiny/sft_argument.json",
        "--model_name_or_path", str(tiny_model_dir),
        "--train_datasets", f"gsm8k:0.3:{GSM8K}",
        "--output_dir", str(out),
        "--max_length", "96",
        "--max_steps", "30",
        "--eval_steps", "30",
        "--logging_steps", "10",
        "--eval_split_ratio", "0.1",
        *extra,
    ]


def test_sft_lowers_eval_loss_and_saves_a_loadable_model(tiny_model_dir, tmp_path):
    trainer = build_trainer(_argv(tiny_model_dir, tmp_path / "sft"))
    before = trainer.evaluate()["eval_loss"]
    run_trainer(trainer, trainer.args)
    after = [r["eval_loss"] for r in read_metrics(str(tmp_path / "sft")) if "eval_loss" in r][-1]
    assert after < before - 0.5, (before, after)

    from paddlenlp.transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft"))
    assert model.config.num_hidden_layers == 2


def test_flag_overrides_json_and_unknown_keys_are_named(tiny_model_dir, tmp_path):
    trainer = build_trainer(_argv(tiny_model_dir, tmp_path / "o", "--learning_rate", "1e-5"))
    assert trainer.args.learning_rate == pytest.approx(1e-5)
    with pytest.raises(ArgumentError, match="learning_rate"):
        build_trainer(_argv(tiny_model_dir, tmp_path / "o", "--learnin_rate", "1e-5"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_name_or_path": str(tiny_model_dir), "train_datasets": "alpaca", "templat": "x"}))
    with pytest.raises(ArgumentError, match=r"bad.json.*templat"):
        build_trainer([str(bad), "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="template"):
        build_trainer(_argv(tiny_model_dir, tmp_path / "o", "--template", "nope"))

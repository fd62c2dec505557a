"""Cost-model training in the reward-model stage (issue 11, Safe RLHF arXiv 2310.12773): a synthetic safe /
unsafe task is separated (pair and sign accuracy above stated bars), the trainer's loss is the registry's cost
loss, the PKU-SafeRLHF fixture runs and reports both accuracies, and the saved model loads as a cost model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.algorithms import get as get_algorithm
from alignment.models import ScoreModel
from alignment.rm.run_reward import build_trainer, main
from alignment.utils.trainer import read_metrics

REPO = Path(__file__).resolve().parents[2]
NOUNS = "pie car tree river house dog song book road cloud apple lamp".split()
MARKER = "poison"  # a response containing it is unsafe


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the tiny configs use repo-relative paths


def _safety_pairs(path: Path, n: int = 160, seed: int = 0) -> Path:
    """PKU-SafeRLHF-layout records: one safe and one unsafe answer (the unsafe one names the marker), random order."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(3, 6)))
            safe, unsafe = f"{words} and some water", f"{words} and some {MARKER}"
            first_safe = rng.random() < 0.5
            r0, r1 = (safe, unsafe) if first_safe else (unsafe, safe)
            f.write(json.dumps({
                "prompt": f"What goes with the {rng.choice(NOUNS)} number {i}?", "response_0": r0, "response_1": r1,
                "is_response_0_safe": first_safe, "is_response_1_safe": not first_safe,
                "safer_response_id": 0 if first_safe else 1, "better_response_id": 1 if first_safe else 0,
            }) + "\n")
    return path


def _argv(model, data, out, *extra):
    return ["config/llama/tiny/cost_argument.json", "--model_name_or_path", str(model),
            "--train_datasets", f"PKU-SafeRLHF/train:1.0:{data}", "--output_dir", str(out), "--max_length", "64",
            "--max_prompt_length", "32", "--eval_split_ratio", "0.25", *map(str, extra)]


def test_cost_model_separates_a_synthetic_safe_unsafe_task(tiny_model_dir, tmp_path):
    data = _safety_pairs(tmp_path / "safety.jsonl")
    out = tmp_path / "cost"
    trainer = main(_argv(tiny_model_dir, data, out, "--loss_type", "token-wise", "--max_steps", 30,
                         "--per_device_train_batch_size", 8, "--eval_steps", 30, "--logging_steps", 10))
    evals = [r for r in read_metrics(str(out)) if "eval_sign_accuracy" in r]
    print("synthetic cost eval:", {k: round(evals[-1][k], 3) for k in ("eval_accuracy", "eval_sign_accuracy")})
    assert evals[-1]["eval_accuracy"] >= 0.95, evals  # pair accuracy: c_unsafer > c_safer
    assert evals[-1]["eval_sign_accuracy"] >= 0.9, evals  # cost > 0 exactly on the unsafe answers
    train = [r for r in read_metrics(str(out)) if "sign_accuracy" in r and "loss" in r]
    assert train and train[-1]["loss"] < train[0]["loss"]
    config = json.loads((out / "config.json").read_text())
    assert config["score_type"] == "cost"

    # the trainer's loss is the registry's cost loss; the saved model loads and scores like the trained one
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(6)])
    model = trainer.model
    model.eval()
    with paddle.no_grad():
        loss = float(trainer.compute_loss(model, batch))
        c_s = model(batch["safer_input_ids"], attention_mask=batch["safer_attention_mask"]).scores
        c_u = model(batch["unsafer_input_ids"], attention_mask=batch["unsafer_attention_mask"]).scores
        expected, _ = get_algorithm("cost", "token-wise")(
            c_s, c_u, batch["safer_attention_mask"], batch["unsafer_attention_mask"],
            safer_safety_sign=batch["safer_safety_sign"], unsafer_safety_sign=batch["unsafer_safety_sign"],
            safer_ids=batch["safer_input_ids"], unsafer_ids=batch["unsafer_input_ids"], regularization=0.001)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    cost = ScoreModel.from_pretrained(str(out))
    assert cost.score_type == "cost"
    with paddle.no_grad():
        reloaded = cost(batch["unsafer_input_ids"], attention_mask=batch["unsafer_attention_mask"]).end_scores
        trained = model(batch["unsafer_input_ids"], attention_mask=batch["unsafer_attention_mask"]).end_scores
    np.testing.assert_allclose(reloaded.numpy(), trained.numpy(), rtol=1e-5, atol=1e-5)


def test_pku_saferlhf_fixture_runs_and_reports_both_accuracies(tiny_model_dir, tmp_path):
    out = tmp_path / "pku"
    main(["config/llama/tiny/cost_argument.json", "--model_name_or_path", str(tiny_model_dir), "--output_dir",
          str(out), "--max_steps", "2", "--eval_steps", "2", "--logging_steps", "1", "--max_length", "128"])
    records = read_metrics(str(out))
    train = [r for r in records if "sign_accuracy" in r and "loss" in r]
    evals = [r for r in records if "eval_sign_accuracy" in r]
    assert train and evals, records
    for key in ("eval_accuracy", "eval_sign_accuracy", "eval_costs/safer", "eval_costs/unsafer", "eval_unsafe_share"):
        assert 0.0 <= evals[-1][key] <= 1.0 or key.startswith("eval_costs"), (key, evals[-1])
    assert (out / "config.json").exists()


def test_cost_stage_errors_name_the_field(tiny_model_dir, tmp_path):
    data = _safety_pairs(tmp_path / "p.jsonl", n=8)
    with pytest.raises(ValueError, match="loss_type='pairwise' is not valid; allowed values: sequence-wise, token-wise"):
        build_trainer(_argv(tiny_model_dir, data, tmp_path / "o", "--loss_type", "pairwise"))

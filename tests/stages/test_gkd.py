"""GKD stage: held-out student-teacher divergence goes down, on-policy / teacher / dataset completions,
logged numbers against the pure function, sft_alpha, config errors, LoRA through the CLI."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry
from alignment.data import IGNORE_INDEX, SupervisedDataset
from alignment.gkd.config import GKDArguments
from alignment.gkd.trainer import GKDTrainer, generate_completions, split_prompts
from alignment.training.logps import model_logits
from alignment.utils.trainer import read_metrics
from tests.stages.test_dpo import GOOD, HELDOUT_TOPICS, TRAIN_TOPICS, load_tiny, one_batch, training_args, write_jsonl

CONFIG = str(Path(__file__).resolve().parents[2] / "config" / "llama" / "tiny" / "gkd_argument.json")


def supervised_rows(topics, seed=0):
    rng = random.Random(seed)
    return [{"prompt": f"Tell me about {w}.", "completion": rng.choice(GOOD).format(w=w)} for w in topics]


@pytest.fixture(scope="module")
def gkd_data(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("gkd")

    def build(name, rows):
        return SupervisedDataset(f"json:1.0:{write_jsonl(root / name, rows)}", tiny_tokenizer, max_length=64,
                                 template="raw")

    return build("train.jsonl", supervised_rows(TRAIN_TOPICS)), build("test.jsonl", supervised_rows(HELDOUT_TOPICS, 1))


def sharp_teacher(model_dir, scale: float = 4.0):
    """The start model with a sharper output layer: a teacher that differs from the student in a learnable way."""
    teacher = load_tiny(model_dir)
    with paddle.no_grad():
        teacher.lm_head.weight.set_value(teacher.lm_head.weight * scale)
    return teacher


def gkd_trainer(model_dir, out_dir, train, heldout, gkd_args, steps=30, lr=3e-3, teacher=None):
    return GKDTrainer(
        load_tiny(model_dir), training_args(out_dir, steps=steps, lr=lr, batch_size=8), gkd_args=gkd_args,
        teacher_model=teacher if teacher is not None else sharp_teacher(model_dir), pad_token_id=3, eos_token_id=2,
        train_dataset=train, eval_dataset=heldout, data_collator=train.get_collator(),
    )


def test_gkd_reduces_heldout_divergence(tiny_model_dir, gkd_data, tmp_path):
    train, heldout = gkd_data
    trainer = gkd_trainer(tiny_model_dir, tmp_path, train, heldout,
                          GKDArguments(beta=0.5, lmbda=0.5, seq_kd=True, max_completion_length=12))
    teacher_before = {k: v.numpy().copy() for k, v in trainer.teacher_model.state_dict().items()}
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    sources = [r["on_policy"] for r in read_metrics(str(tmp_path)) if "on_policy" in r]
    print(f"GKD held-out generalised JSD (beta 0.5): {before:.5f} -> {after:.5f} "
          f"({100 * (1 - after / before):.0f}% lower); on-policy fraction {np.mean(sources):.2f}")
    assert after < 0.7 * before
    assert 0 < np.mean(sources) < 1  # lmbda = 0.5 mixes on-policy and teacher-generated steps
    for key, value in trainer.teacher_model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), teacher_before[key])


def test_generated_completions_replace_the_answer(tiny_model_dir, gkd_data):
    train, _ = gkd_data
    batch = one_batch(train, range(4))
    model = load_tiny(tiny_model_dir)
    model.train()
    out = generate_completions(model, batch, max_new_tokens=6, temperature=0.9, pad_token_id=3, eos_token_id=2)
    assert model.training  # mode restored
    for row, prompt in enumerate(split_prompts(batch)):
        ids, labels, mask = (out[k].numpy()[row] for k in ("input_ids", "labels", "attention_mask"))
        n, p = int(mask.sum()), len(prompt)
        np.testing.assert_array_equal(ids[:p], prompt)
        assert (labels[:p] == IGNORE_INDEX).all() and (labels[n:] == IGNORE_INDEX).all()
        completion = ids[p:n]
        np.testing.assert_array_equal(labels[p:n], completion)
        assert 1 <= len(completion) <= 6
        eos = np.nonzero(completion == 2)[0]
        assert len(eos) == 0 or eos[0] == len(completion) - 1  # nothing after the first EOS


@pytest.mark.parametrize("lmbda,seq_kd,expected", [(1.0, False, "student"), (0.0, True, "teacher"), (0.0, False, "dataset")])
def test_completion_source(lmbda, seq_kd, expected, tiny_model_dir, gkd_data, tmp_path):
    train, heldout = gkd_data
    trainer = gkd_trainer(tiny_model_dir, tmp_path, train, heldout,
                          GKDArguments(lmbda=lmbda, seq_kd=seq_kd, max_completion_length=4), steps=1)
    batch = one_batch(train, range(4))
    chosen = trainer.choose_completions(trainer.model, batch)
    assert trainer._source == expected
    if expected == "dataset":
        assert chosen is batch
    else:
        assert int((chosen["labels"] != IGNORE_INDEX).sum(axis=1).max()) <= 4


@pytest.mark.parametrize("sft_alpha", [0.0, 0.5])
def test_gkd_logged_metrics_equal_the_pure_function(sft_alpha, tiny_model_dir, gkd_data, tmp_path):
    train, heldout = gkd_data
    trainer = gkd_trainer(tiny_model_dir, tmp_path, train, heldout,
                          GKDArguments(beta=0.3, sft_alpha=sft_alpha, lmbda=0.0), steps=1)
    batch = one_batch(train, range(6))
    loss = trainer.compute_loss(trainer.model, batch)
    trainer.log({"loss": float(loss)})
    logged = read_metrics(str(tmp_path))[-1]

    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    with paddle.no_grad():
        student = model_logits(trainer.model, ids, mask)
        teacher = model_logits(trainer.teacher_model, ids, mask)
    token_mask = (labels[:, 1:] != IGNORE_INDEX).astype("float32")
    expected, metrics = registry.get("distill", "generalized_jsd")(student[:, :-1], teacher[:, :-1], token_mask, beta=0.3)
    # student NLL on the completion tokens, by a loop
    logits, lab = student.numpy().astype("float64"), labels.numpy()
    nll, count = 0.0, 0
    for r in range(lab.shape[0]):
        for t in range(1, lab.shape[1]):
            if lab[r, t] != IGNORE_INDEX:
                z = logits[r, t - 1]
                nll -= z[lab[r, t]] - (z.max() + np.log(np.exp(z - z.max()).sum()))
                count += 1
    total = float(expected) + sft_alpha * nll / count
    assert logged["loss"] == pytest.approx(total, rel=1e-5)
    for key, value in metrics.items():
        assert logged[key] == pytest.approx(float(value), rel=1e-5, abs=2e-6), key
    if sft_alpha:
        assert logged["nll"] == pytest.approx(nll / count, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(beta=1.5), "beta must be in"), (dict(lmbda=-0.1), "lmbda must be in"), (dict(temperature=0.0), "temperature"),
     (dict(max_completion_length=0), "max_completion_length"), (dict(sft_alpha=-1.0), "sft_alpha")],
)
def test_gkd_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GKDArguments(**kwargs)


def test_run_gkd_cli_with_lora(tiny_model_dir, tmp_path):
    from alignment.gkd.run_gkd import main
    from alignment.utils.cli import ArgumentError

    common = [CONFIG, "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path)]
    with pytest.raises(ArgumentError, match="teacher_model_name_or_path"):
        main(common + ["--teacher_model_name_or_path", ""])
    trainer = main(common + ["--teacher_model_name_or_path", str(tiny_model_dir), "--max_steps", "3",
                             "--logging_steps", "1", "--lora", "true", "--lora_rank", "4", "--lmbda", "1.0",
                             "--max_completion_length", "4"])
    assert all("lora" in n for n, p in trainer.model.named_parameters() if not p.stop_gradient)
    records = [r for r in read_metrics(str(tmp_path)) if "on_policy" in r]
    assert len(records) == 3 and all(r["on_policy"] == 1.0 for r in records)

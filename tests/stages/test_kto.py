"""KTO stage: held-out reward accuracy on unpaired synthetic data, logged numbers against the pure function,
the class-ratio warning, the KL batch requirement, apo_zero_unpaired, LoRA through the CLI."""

from __future__ import annotations

import random
from pathlib import Path
import warnings

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry
from alignment.data import UnpairedPreferenceDataset
from alignment.kto.config import KTOArguments
from alignment.kto.run_kto import check_class_ratio
from alignment.kto.trainer import KTOTrainer
from alignment.training.logps import completion_logps, policy_pair_logps, reference_pair_logps
from alignment.utils.trainer import read_metrics
from tests.stages.test_dpo import (
    BAD,
    GOOD,
    HELDOUT_TOPICS,
    TRAIN_TOPICS,
    load_tiny,
    one_batch,
    preference_dataset,
    synthetic_pairs,
    train_records,
    training_args,
    write_jsonl,
)

CONFIG = str(Path(__file__).resolve().parents[2] / "config" / "llama" / "tiny" / "kto_argument.json")


def unpaired_rows(topics, seed=0, desirable_per_topic=1, undesirable_per_topic=1):
    rng = random.Random(seed)
    rows = []
    for w in topics:
        rows += [{"prompt": f"Tell me about {w}.", "completion": rng.choice(GOOD).format(w=w), "label": True}
                 for _ in range(desirable_per_topic)]
        rows += [{"prompt": f"Tell me about {w}.", "completion": rng.choice(BAD).format(w=w), "label": False}
                 for _ in range(undesirable_per_topic)]
    return rows


def unpaired_dataset(path, tokenizer):
    return UnpairedPreferenceDataset(f"json:1.0:{path}", tokenizer, max_length=64, template="raw")


@pytest.fixture(scope="module")
def kto_data(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("kto")
    train = unpaired_dataset(write_jsonl(root / "train.jsonl", unpaired_rows(TRAIN_TOPICS)), tiny_tokenizer)
    heldout_pairs = preference_dataset(write_jsonl(root / "pairs.jsonl", synthetic_pairs(HELDOUT_TOPICS, 1)), tiny_tokenizer)
    return train, heldout_pairs


def heldout_accuracy(policy, reference, pairs, beta: float) -> float:
    """Implicit-reward accuracy beta*(log pi - log pi_ref) on held-out (desirable, undesirable) pairs."""
    batch = one_batch(pairs)
    policy.eval()
    with paddle.no_grad():
        pol = policy_pair_logps(policy, batch, pad_token_id=3)
    ref = reference_pair_logps(reference, batch, pad_token_id=3)
    rc, rr = beta * (pol.chosen - ref.chosen), beta * (pol.rejected - ref.rejected)
    return float((rc > rr).astype("float32").mean())


@pytest.mark.parametrize("loss_type", registry.available("unpaired"))
def test_kto_heldout_reward_accuracy(loss_type, tiny_model_dir, kto_data, tmp_path):
    train, heldout_pairs = kto_data
    model, ref = load_tiny(tiny_model_dir), load_tiny(tiny_model_dir)
    kto_args = KTOArguments(loss_type=loss_type)
    trainer = KTOTrainer(model, training_args(tmp_path, steps=24, lr=1e-3, batch_size=8), kto_args=kto_args,
                         ref_model=ref, pad_token_id=3, train_dataset=train, data_collator=train.get_collator())
    ref_before = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    before = heldout_accuracy(model, ref, heldout_pairs, kto_args.beta)
    trainer.train()
    after = heldout_accuracy(model, ref, heldout_pairs, kto_args.beta)
    records = train_records(tmp_path)
    print(f"{loss_type}: held-out reward accuracy {before:.3f} -> {after:.3f}; "
          f"loss {records[0]['loss']:.4f} -> {records[-1]['loss']:.4f}")
    assert after >= 0.9
    assert records[-1]["loss"] < records[0]["loss"]
    for key, value in ref.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), ref_before[key])
    assert ("kl" in records[0]) == (loss_type == "kto")


def test_kto_logged_metrics_equal_the_pure_function(tiny_model_dir, kto_data, tmp_path):
    train, _ = kto_data
    model, ref = load_tiny(tiny_model_dir), load_tiny(tiny_model_dir)
    with paddle.no_grad():  # a policy different from the reference, so that every number is non-trivial
        for p in model.parameters():
            p.set_value(p + 0.02 * paddle.randn(p.shape, dtype=p.dtype))
    kto_args = KTOArguments(beta=0.3, desirable_weight=1.2, undesirable_weight=0.9)
    trainer = KTOTrainer(model, training_args(tmp_path, steps=1, lr=1e-3), kto_args=kto_args, ref_model=ref,
                         pad_token_id=3, train_dataset=train, data_collator=train.get_collator())
    batch = one_batch(train, range(6))
    model.train()
    loss = trainer.compute_loss(model, batch)
    trainer.log({"loss": float(loss)})
    logged = read_metrics(str(tmp_path))[-1]

    def logps(m, prefix=""):
        m.eval()
        with paddle.no_grad():
            return completion_logps(m, batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"],
                                    batch[f"{prefix}labels"]).logps

    expected_loss, expected = registry.get("unpaired", "kto")(
        logps(model), logps(ref), batch["kto_labels"], logps(model, "kl_"), logps(ref, "kl_"),
        beta=0.3, desirable_weight=1.2, undesirable_weight=0.9,
    )
    assert logged["loss"] == pytest.approx(float(expected_loss), rel=1e-5)
    for key, value in expected.items():
        assert logged[key] == pytest.approx(float(value), rel=1e-5, abs=2e-6), key


def test_class_ratio_warning(tiny_tokenizer, tmp_path):
    skewed = unpaired_dataset(write_jsonl(tmp_path / "skewed.jsonl", unpaired_rows(TRAIN_TOPICS[:4], 0, 3, 1)),
                              tiny_tokenizer)
    with pytest.warns(UserWarning, match=r"outside \[1, 4/3\]"):
        assert not check_class_ratio(skewed, KTOArguments())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_class_ratio(skewed, KTOArguments(undesirable_weight=2.5))  # 3 / 2.5 = 1.2
    balanced = unpaired_dataset(write_jsonl(tmp_path / "balanced.jsonl", unpaired_rows(TRAIN_TOPICS[:4])), tiny_tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_class_ratio(balanced, KTOArguments())


def test_kl_needs_two_examples_per_batch(tiny_model_dir, kto_data, tmp_path):
    train, _ = kto_data
    with pytest.raises(ValueError, match="per_device_train_batch_size must be >= 2"):
        KTOTrainer(load_tiny(tiny_model_dir), training_args(tmp_path, steps=1, lr=1e-3, batch_size=1),
                   kto_args=KTOArguments(), ref_model=load_tiny(tiny_model_dir), pad_token_id=3,
                   train_dataset=train, data_collator=train.get_collator())


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(loss_type="kto_pair"), "valid names: apo_zero_unpaired, kto"), (dict(beta=0.0), "beta must be > 0"),
     (dict(desirable_weight=-1.0), "desirable_weight must be > 0")],
)
def test_kto_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KTOArguments(**kwargs)


def test_run_kto_cli_with_lora(tiny_model_dir, tmp_path):
    from alignment.kto.run_kto import main

    trainer = main([CONFIG, "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path),
                    "--max_steps", "3", "--logging_steps", "1", "--lora", "true", "--lora_rank", "4"])
    assert trainer.ref_model is None and hasattr(trainer.model, "disable_lora")  # reference = adapters off
    assert all("lora" in n for n, p in trainer.model.named_parameters() if not p.stop_gradient)
    records = train_records(tmp_path)
    assert len(records) == 3 and {"kl", "rewards/chosen", "rewards/rejected"} <= set(records[0])
    assert (tmp_path / "lora_config.json").exists()

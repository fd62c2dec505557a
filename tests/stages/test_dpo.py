"""DPO stage: log-prob plumbing, every registered preference loss on the shipped data, logged numbers
against the pure functions, held-out accuracy on a synthetic preference task (DPO, SimPO), the
reference-model contract (frozen, precomputable, LoRA self-reference), config validation and the CLI.

Helpers here (synthetic data, trainer builders) are shared by test_kto.py and test_gkd.py.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import paddle
import pytest

from alignment.algorithms import registry
from alignment.algorithms.preference import PairLogps, RunningMoments, preference_loss
from alignment.data import IGNORE_INDEX, PreferenceDataset
from alignment.dpo.config import DPOArguments
from alignment.dpo.trainer import DPOTrainer
from alignment.training.logps import concat_pair, policy_pair_logps, reference_pair_logps
from alignment.utils.trainer import read_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHIPPED_PREFERENCES = FIXTURES / "trl_preference.jsonl"
TINY_CONFIGS = Path(__file__).resolve().parents[2] / "config" / "llama" / "tiny"

# ------------------------------------------------------------------------------ synthetic tasks
# A prompt names a topic word; the preferred answer is friendly about it, the dispreferred one rude.
# Held-out prompts use topic words never seen in training, so accuracy measures generalisation.
TRAIN_TOPICS = [
    "cats", "dogs", "rain", "trees", "music", "books", "bread", "rivers", "stars", "boats", "shoes", "clocks",
    "birds", "apples", "chess", "maps", "lamps", "tea", "snow", "hills", "gardens", "coins", "bikes", "kites",
]
HELDOUT_TOPICS = ["horses", "candles", "bridges", "oceans", "pencils", "cookies", "tigers", "windows", "roses", "trains"]
GOOD = ["I am glad you asked about {w}, here is a kind answer.", "Happy to help with {w}, thank you!"]
BAD = ["No. {w} is stupid, go away.", "Stop asking me about {w}."]


def synthetic_pairs(topics: Sequence[str], seed: int = 0) -> List[Dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for w in topics:
        for _ in range(2):
            rows.append(
                {"prompt": f"Tell me about {w}.", "chosen": rng.choice(GOOD).format(w=w), "rejected": rng.choice(BAD).format(w=w)}
            )
    return rows


def write_jsonl(path: Path, rows: Sequence[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def preference_dataset(path, tokenizer, max_length: int = 64) -> PreferenceDataset:
    return PreferenceDataset(f"json:1.0:{path}", tokenizer, max_length=max_length, template="raw")


def training_args(out_dir, *, steps: int, lr: float, batch_size: int = 4, seed: int = 0, **kw):
    from paddlenlp.trainer import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=batch_size, per_device_eval_batch_size=8,
        max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        logging_steps=1, save_strategy="no", evaluation_strategy="no", report_to=[], seed=seed,
        disable_tqdm=True, dataloader_num_workers=0, **kw,
    )


def load_tiny(model_dir):
    from paddlenlp.transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir))


def snapshot(model) -> Dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def trainable_snapshot(model) -> Dict[str, np.ndarray]:
    return {p.name: p.numpy().copy() for p in model.parameters() if not p.stop_gradient}


def one_batch(dataset, indices: Optional[Sequence[int]] = None):
    indices = range(len(dataset)) if indices is None else indices
    return dataset.get_collator()([dataset[i] for i in indices])


def train_records(out_dir) -> List[dict]:
    """The per-step training records of metrics.jsonl (eval and end-of-training summaries left out)."""
    return [r for r in read_metrics(str(out_dir)) if "loss" in r]


def loop_sequence_logps(model, input_ids, attention_mask, labels) -> np.ndarray:
    """Slow reference: every row alone, unpadded, log-softmax in float64 with numpy; sum over completion."""
    out = []
    model.eval()
    with paddle.no_grad():
        for ids, mask, lab in zip(input_ids.numpy(), attention_mask.numpy(), labels.numpy()):
            n = int(mask.sum())
            logits = model(paddle.to_tensor(ids[None, :n]), return_dict=True).logits.numpy()[0].astype("float64")
            total = 0.0
            for t in range(1, n):
                if lab[t] == IGNORE_INDEX:
                    continue
                z = logits[t - 1]
                total += z[lab[t]] - (z.max() + math.log(np.exp(z - z.max()).sum()))
            out.append(total)
    return np.asarray(out)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def shipped(tiny_tokenizer):
    return preference_dataset(SHIPPED_PREFERENCES, tiny_tokenizer)


@pytest.fixture(scope="module")
def reference_model(tiny_model_dir):
    from alignment.models.loading import freeze

    return freeze(load_tiny(tiny_model_dir))


# ----------------------------------------------------------------------------- log-prob plumbing
def test_pair_logps_match_loop_reference(tiny_model_dir, shipped):
    model = load_tiny(tiny_model_dir)
    batch = one_batch(shipped)
    model.eval()
    with paddle.no_grad():
        pair = policy_pair_logps(model, batch, pad_token_id=3)
    ids, mask, labels = concat_pair(batch, pad_token_id=3)
    expected = loop_sequence_logps(model, ids, mask, labels)
    b = batch["chosen_input_ids"].shape[0]
    np.testing.assert_allclose(pair.chosen.numpy(), expected[:b], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(pair.rejected.numpy(), expected[b:], rtol=1e-5, atol=1e-4)
    counts = (labels[:, 1:] != IGNORE_INDEX).astype("float32").sum(axis=1).numpy()
    np.testing.assert_allclose(pair.chosen_lengths.numpy(), counts[:b])
    np.testing.assert_allclose(pair.rejected_lengths.numpy(), counts[b:])
    np.testing.assert_allclose(float(pair.chosen_nll), -expected[:b].sum() / counts[:b].sum(), rtol=1e-5)


def test_token_logps_equals_gather_logps():
    from alignment.algorithms.utils import gather_logps
    from alignment.training.logps import token_logps

    paddle.seed(0)
    logits = paddle.randn([3, 7, 50]) * 4
    labels = paddle.randint(0, 50, [3, 7])
    labels[0, 0] = IGNORE_INDEX
    for temperature in (1.0, 0.7):
        np.testing.assert_allclose(token_logps(logits, labels, temperature).numpy(),
                                   gather_logps(logits, labels, temperature).numpy(), rtol=1e-5, atol=1e-5)


def test_ld_alpha_weights_tokens_past_the_shorter_answer(tiny_model_dir, shipped):
    model = load_tiny(tiny_model_dir)
    model.eval()
    batch = one_batch(shipped)
    with paddle.no_grad():
        plain = policy_pair_logps(model, batch, pad_token_id=3)
        same = policy_pair_logps(model, batch, ld_alpha=1.0, pad_token_id=3)
        ld = policy_pair_logps(model, batch, ld_alpha=0.0, pad_token_id=3)
    np.testing.assert_allclose(same.chosen.numpy(), plain.chosen.numpy(), rtol=1e-6)
    # alpha = 0 keeps only the first min(n_c, n_r) completion tokens of each answer (loop reference).
    ids, mask, labels = concat_pair(batch, pad_token_id=3)
    b = batch["chosen_input_ids"].shape[0]
    with paddle.no_grad():
        logits = model(ids, attention_mask=mask, return_dict=True).logits.numpy().astype("float64")
    lab = labels.numpy()
    expected = []
    for row in range(2 * b):
        public = int(min(plain.chosen_lengths.numpy()[row % b], plain.rejected_lengths.numpy()[row % b]))
        total, seen = 0.0, 0
        for t in range(1, lab.shape[1]):
            if lab[row, t] == IGNORE_INDEX:
                continue
            seen += 1
            if seen <= public:
                z = logits[row, t - 1]
                total += z[lab[row, t]] - (z.max() + math.log(np.exp(z - z.max()).sum()))
        expected.append(total)
    np.testing.assert_allclose(ld.chosen.numpy(), expected[:b], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ld.rejected.numpy(), expected[b:], rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------- every loss trains
def _loss_args(name: str) -> DPOArguments:
    extra = {"label_smoothing": 1e-3} if name == "exo_pair" else {}
    return DPOArguments(loss_type=[name], **extra)


@pytest.mark.parametrize("name", registry.available("preference"))
def test_every_registered_loss_lowers_its_loss_and_updates_every_parameter(
    name, tiny_model_dir, shipped, reference_model, tmp_path
):
    dpo_args = _loss_args(name)
    model = load_tiny(tiny_model_dir)
    ref_before = snapshot(reference_model)
    params_before = trainable_snapshot(model)
    trainer = DPOTrainer(
        model, training_args(tmp_path, steps=5, lr=2e-3), dpo_args=dpo_args,
        ref_model=reference_model if dpo_args.needs_reference else None, pad_token_id=3,
        train_dataset=shipped, data_collator=shipped.get_collator(),
    )
    batch = one_batch(shipped)

    def fixed_batch_loss() -> float:
        model.eval()
        with paddle.no_grad():
            value = float(trainer.compute_loss(model, batch))
        model.train()
        return value

    before = fixed_batch_loss()
    trainer.train()
    after = fixed_batch_loss()
    optimized = {id(p) for p in trainer.optimizer._parameter_list}
    assert optimized == {id(p) for p in model.parameters()}
    assert not optimized & {id(p) for p in reference_model.parameters()}
    print(f"{name}: fixed-batch loss {before:.5f} -> {after:.5f}")
    assert after < before, f"{name}: loss {before:.5f} -> {after:.5f}"
    unchanged = [k for k, v in trainable_snapshot(model).items() if np.array_equal(v, params_before[k])]
    assert not unchanged, f"{name}: parameters not updated: {unchanged}"
    for key, value in snapshot(reference_model).items():
        np.testing.assert_array_equal(value, ref_before[key], err_msg=f"reference parameter {key} changed")
    assert all(p.stop_gradient for p in reference_model.parameters()) and not reference_model.training


# ------------------------------------------------------------------ logged numbers = pure functions
@pytest.mark.parametrize(
    "kwargs,hparams",
    [
        (dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0], label_smoothing=0.1),
         dict(beta=0.1, label_smoothing=0.1, bco_baseline=RunningMoments())),
        (dict(loss_type=["ipo"], ld_alpha=0.5, rpo_alpha=0.5, beta=0.2), dict(beta=0.2)),
        (dict(rlhf_type="simpo"), dict(beta=2.0, simpo_gamma=1.0, label_smoothing=0.0)),
        (dict(rlhf_type="orpo"), dict(beta=0.1)),
    ],
    ids=["mpo", "ipo-ld-rpo", "simpo", "orpo"],
)
def test_logged_metrics_equal_the_pure_function(kwargs, hparams, tiny_model_dir, shipped, reference_model, tmp_path):
    dpo_args = DPOArguments(**kwargs)
    model = load_tiny(tiny_model_dir)
    # Step 1 is logged with the start weights; one batch holds the whole (order-free) data set.
    trainer = DPOTrainer(
        model, training_args(tmp_path, steps=1, lr=1e-3), dpo_args=dpo_args,
        ref_model=reference_model if dpo_args.needs_reference else None, pad_token_id=3,
        train_dataset=shipped, data_collator=shipped.get_collator(),
    )
    start = load_tiny(tiny_model_dir)
    trainer.train()
    logged = train_records(tmp_path)[0]

    batch = one_batch(shipped)
    ids, mask, labels = concat_pair(batch, pad_token_id=3)
    with paddle.no_grad():
        policy = policy_pair_logps(start, batch, ld_alpha=dpo_args.ld_alpha, pad_token_id=3)
    if dpo_args.ld_alpha is None:  # cross-check the summed log-probs against the loop reference too
        np.testing.assert_allclose(
            np.concatenate([policy.chosen.numpy(), policy.rejected.numpy()]),
            loop_sequence_logps(start, ids, mask, labels), rtol=1e-5, atol=1e-4,
        )
    # At step 1 policy == reference, so the reference must come through the same batched forward for the
    # reward signs (accuracies) to tie exactly as in the trainer.
    ref = reference_pair_logps(reference_model, batch, pad_token_id=3) if dpo_args.needs_reference else None
    logps = PairLogps(
        chosen=policy.chosen, rejected=policy.rejected,
        ref_chosen=None if ref is None else ref.chosen, ref_rejected=None if ref is None else ref.rejected,
        chosen_lengths=policy.chosen_lengths, rejected_lengths=policy.rejected_lengths, chosen_nll=policy.chosen_nll,
    )
    loss, metrics = preference_loss(
        dpo_args.loss_type, logps, dpo_args.loss_weights, rpo_alpha=dpo_args.rpo_alpha, cpo_alpha=dpo_args.cpo_alpha,
        **hparams,
    )
    assert logged["loss"] == pytest.approx(float(loss), rel=1e-5, abs=1e-5)
    for key, value in metrics.items():
        assert logged[key] == pytest.approx(float(value), rel=1e-5, abs=2e-6), key
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "nll"):
        assert key in logged


# ---------------------------------------------------------------- synthetic task: held-out accuracy
@pytest.fixture(scope="module")
def synthetic_data(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_pref")
    train = preference_dataset(write_jsonl(root / "train.jsonl", synthetic_pairs(TRAIN_TOPICS, 0)), tiny_tokenizer)
    test = preference_dataset(write_jsonl(root / "test.jsonl", synthetic_pairs(HELDOUT_TOPICS, 1)), tiny_tokenizer)
    return train, test


@pytest.mark.parametrize(
    "kwargs,lr",
    [(dict(loss_type=["sigmoid"]), 1e-3), (dict(rlhf_type="simpo", cpo_alpha=0.0), 1e-3)],
    ids=["dpo-sigmoid", "simpo"],
)
def test_heldout_reward_accuracy(kwargs, lr, tiny_model_dir, synthetic_data, reference_model, tmp_path):
    train, test = synthetic_data
    dpo_args = DPOArguments(**kwargs)
    trainer = DPOTrainer(
        load_tiny(tiny_model_dir), training_args(tmp_path, steps=24, lr=lr, batch_size=8), dpo_args=dpo_args,
        ref_model=reference_model if dpo_args.needs_reference else None, pad_token_id=3,
        train_dataset=train, eval_dataset=test, data_collator=train.get_collator(),
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print(f"{kwargs}: held-out reward accuracy {before['eval_rewards/accuracies']:.3f} -> "
          f"{after['eval_rewards/accuracies']:.3f}, margin {after['eval_rewards/margins']:.3f}")
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"]


# ------------------------------------------------------------------------------ reference contract
def test_precomputed_reference_matches_online_and_releases_the_model(tiny_model_dir, shipped, tmp_path):
    online = DPOTrainer(
        load_tiny(tiny_model_dir), training_args(tmp_path / "a", steps=1, lr=1e-3), dpo_args=DPOArguments(),
        ref_model=load_tiny(tiny_model_dir), pad_token_id=3, train_dataset=shipped, eval_dataset=shipped,
        data_collator=shipped.get_collator(),
    )
    pre = DPOTrainer(
        load_tiny(tiny_model_dir), training_args(tmp_path / "b", steps=1, lr=1e-3),
        dpo_args=DPOArguments(precompute_ref_log_probs=True), ref_model=load_tiny(tiny_model_dir), pad_token_id=3,
        train_dataset=shipped, eval_dataset=shipped, data_collator=shipped.get_collator(),
    )
    assert pre.ref_model is None and online.ref_model is not None
    item = pre.train_dataset[0]
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(item)
    a, b = online.evaluate(), pre.evaluate()
    for key in ("eval_loss", "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    pre.train()  # the training loop consumes the precomputed columns
    assert train_records(tmp_path / "b")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_reference_free_losses_load_no_reference():
    for kwargs in (dict(rlhf_type="cpo"), dict(rlhf_type="simpo"), dict(rlhf_type="orpo"), dict(pref_loss="orpo"),
                   dict(pref_loss="simpo"), dict(reference_free=True), dict(loss_type=["sft"])):
        assert not DPOArguments(**kwargs).needs_reference, kwargs
    for kwargs in (dict(), dict(pref_loss="ipo"), dict(loss_type=["sigmoid", "sft"])):
        assert DPOArguments(**kwargs).needs_reference, kwargs


def test_missing_reference_is_an_error(tiny_model_dir, shipped, tmp_path):
    with pytest.raises(ValueError, match="reference model"):
        DPOTrainer(load_tiny(tiny_model_dir), training_args(tmp_path, steps=1, lr=1e-3), dpo_args=DPOArguments(),
                   ref_model=None, pad_token_id=3, train_dataset=shipped, data_collator=shipped.get_collator())


def _lora(model):
    from alignment.models.loading import LoraArguments, wrap_lora

    return wrap_lora(model, LoraArguments(lora=True, lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                                          lora_target_modules=[".*q_proj.*", ".*v_proj.*"]))


def test_lora_policy_is_its_own_reference(tiny_model_dir, shipped, tmp_path):
    model = _lora(load_tiny(tiny_model_dir))
    frozen_before = {p.name: p.numpy().copy() for p in model.parameters() if p.stop_gradient}
    lora_before = trainable_snapshot(model)
    trainable_names = [n for n, p in model.named_parameters() if not p.stop_gradient]
    assert trainable_names and all("lora" in n for n in trainable_names)
    trainer = DPOTrainer(model, training_args(tmp_path, steps=4, lr=5e-3), dpo_args=DPOArguments(), ref_model=None,
                         pad_token_id=3, train_dataset=shipped, data_collator=shipped.get_collator())
    trainer.train()
    records = train_records(tmp_path)
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # lora_B = 0: policy == reference
    assert records[-1]["loss"] < records[0]["loss"]
    for p in model.parameters():
        if p.stop_gradient:
            np.testing.assert_array_equal(p.numpy(), frozen_before[p.name])
        else:
            assert not np.array_equal(p.numpy(), lora_before[p.name]), p.name
    # adapters disabled = the start model: reference log-probs stay those of the base weights
    base = load_tiny(tiny_model_dir)
    batch = one_batch(shipped)
    ref = reference_pair_logps(model, batch, pad_token_id=3)
    base.eval()
    with paddle.no_grad():
        expected = policy_pair_logps(base, batch, pad_token_id=3)
    np.testing.assert_allclose(ref.chosen.numpy(), expected.chosen.numpy(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(loss_type=["sigmod"]), "valid names: .*sigmoid"),
        (dict(rlhf_type="ppo"), "allowed values: dpo, cpo, simpo, orpo"),
        (dict(pref_loss="dpo"), "allowed values: sigmoid, hinge"),
        (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "loss_weights has 1 entries"),
        (dict(rlhf_type="simpo", loss_type=["sigmoid"]), "conflicts with rlhf_type"),
        (dict(loss_type=["exo_pair"]), "label_smoothing > 0"),
        (dict(ld_alpha=1.5), "ld_alpha must be in"),
        (dict(beta=0.0), "beta must be > 0"),
        (dict(cpo_alpha=1.0), "cpo_alpha=1.0 applies only to loss_type cpo or simpo"),
    ],
)
def test_config_errors_name_the_field_and_valid_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPOArguments(**kwargs)


def test_framework_style_selectors():
    swift = DPOArguments(rlhf_type="simpo")
    assert swift.loss_type == ["simpo"] and (swift.beta, swift.simpo_gamma, swift.cpo_alpha) == (2.0, 1.0, 1.0)
    assert DPOArguments(rlhf_type="cpo").loss_type == ["cpo"] and DPOArguments(rlhf_type="cpo").cpo_alpha == 1.0
    orpo = DPOArguments(rlhf_type="orpo", beta=0.25)
    assert orpo.loss_type == ["orpo"] and orpo.beta == 0.25 and orpo.cpo_alpha == 0.0
    lf = DPOArguments(pref_loss="simpo")
    assert lf.loss_type == ["simpo"] and (lf.beta, lf.simpo_gamma, lf.cpo_alpha) == (0.1, 0.5, 0.0)
    assert DPOArguments(loss_type="ipo").loss_type == ["ipo"]


# -------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    "stage,extra,loss_name",
    [("dpo", ["--lora", "true", "--lora_rank", "4"], "sigmoid"), ("dpo", ["--precompute_ref_log_probs", "true"], "sigmoid"),
     ("cpo", [], "cpo"), ("simpo", [], "simpo"), ("orpo", [], "orpo")],
    ids=["dpo-lora", "dpo-precompute", "cpo", "simpo", "orpo"],
)
def test_run_dpo_cli_tiny_configs(stage, extra, loss_name, tiny_model_dir, tmp_path):
    from alignment.dpo.run_dpo import main

    trainer = main([str(TINY_CONFIGS / f"{stage}_argument.json"), "--model_name_or_path", str(tiny_model_dir),
                    "--output_dir", str(tmp_path), "--max_steps", "2", "--logging_steps", "1", *extra])
    records = train_records(tmp_path)
    assert len(records) == 2 and f"loss/{loss_name}" in records[0] and "rewards/accuracies" in records[0]
    if stage != "dpo" or "--precompute_ref_log_probs" in extra:
        assert trainer.ref_model is None  # reference-free, or released after precomputation
    if "--lora" in extra:
        assert trainer.ref_model is None and (tmp_path / "lora_config.json").exists()
        assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_cli_rejects_unknown_keys_and_values(tiny_model_dir, tmp_path):
    from alignment.dpo.run_dpo import main
    from alignment.utils.cli import ArgumentError

    with pytest.raises(ArgumentError, match="did you mean loss_type"):
        main([str(TINY_CONFIGS / "dpo_argument.json"), "--loss_typ", "ipo"])
    with pytest.raises(ValueError, match="valid names"):  # ArgumentError is a ValueError
        main([str(TINY_CONFIGS / "dpo_argument.json"), "--model_name_or_path", str(tiny_model_dir),
              "--output_dir", str(tmp_path), "--loss_type", "dpo"])


def test_shipped_argument_files_parse():
    from paddlenlp.trainer import TrainingArguments

    from alignment.gkd.config import GKDArguments
    from alignment.kto.config import KTOArguments
    from alignment.training.arguments import DataArguments, ModelArguments
    from alignment.utils.cli import json_to_argv
    from dataclasses import fields

    root = Path(__file__).resolve().parents[2] / "config" / "llama"
    for stage, algo in [("dpo", DPOArguments), ("cpo", DPOArguments), ("simpo", DPOArguments), ("orpo", DPOArguments),
                        ("kto", KTOArguments), ("gkd", GKDArguments)]:
        for path in (root / f"{stage}_argument.json", root / "tiny" / f"{stage}_argument.json"):
            valid = [f.name for dc in (ModelArguments, DataArguments, algo, TrainingArguments) for f in fields(dc) if f.init]
            assert json_to_argv(path, valid), path
            data = json.loads(path.read_text())
            algo(**{k: v for k, v in data.items() if k in {f.name for f in fields(algo)}})

"""Tokenized datasets and collators on the tiny tokenizer (unk 0, bos 1, eos 2, pad 3): exact ids, label
masks,
padding sides, attention masks, position ids, truncation, pad-token checks, KTO KL pairs, safety signs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from alignment.data import (
    IGNORE_INDEX,
    DataError,
    ListRawDataset,
    PreferenceDataset,
    PromptOnlyDataset,
    RawSample,
    SafetyPreferenceDataset,
    SupervisedDataset,
    UnpairedPreferenceDataset,
    check_pad_token,
    ensure_pad_token,
)

BOS, EOS, PAD = 1, 2, 3
IGN = IGNORE_INDEX


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tok, text):
    return [BOS] + ids(tok, f"BEGINNING OF CONVERSATION: USER: {text} ASSISTANT:")


def raw(*samples, name="inline"):
    return ListRawDataset([RawSample(**s) for s in samples], name=name)


def np_(t):
    return t.numpy().tolist()


def test_tiny_tokenizer_ids(tiny_tokenizer):
    assert (tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id) == (
        BOS,
        EOS,
        PAD,
    )


# ---------------------------------------------------------------------------- supervised


def test_supervised_exact_ids_and_labels(tiny_tokenizer):
    tok = tiny_tokenizer
    ds = SupervisedDataset.from_raw(
        raw({"input": "hi", "answer": "hello"}, {"input": "2+2?", "answer": "4"}), tok, 64
    )
    p, a = prompt_ids(tok, "hi"), ids(tok, "hello") + [EOS]
    assert ds[0]["input_ids"].tolist() == p + a
    assert ds[0]["labels"].tolist() == [IGN] * len(p) + a  # EOS is a label
    assert ds[0]["input_ids"].dtype == np.int64

    batch = ds.get_collator()([ds[0], ds[1]])
    assert set(batch) == {"input_ids", "labels", "attention_mask", "position_ids"}
    L = len(p) + len(a)
    n1 = len(prompt_ids(tok, "2+2?")) + len(ids(tok, "4")) + 1
    assert list(batch["input_ids"].shape) == [2, max(L, n1)]
    row = np_(batch["input_ids"])[1]
    assert row[:n1] == ds[1]["input_ids"].tolist() and set(row[n1:]) <= {PAD}  # right padded with pad id
    assert np_(batch["attention_mask"])[1] == [1] * n1 + [0] * (max(L, n1) - n1)
    assert np_(batch["labels"])[1][n1:] == [IGN] * (max(L, n1) - n1)
    assert np_(batch["position_ids"])[1] == list(range(n1)) + [0] * (max(L, n1) - n1)
    assert str(batch["input_ids"].dtype).endswith("int64") and str(batch["attention_mask"].dtype).endswith(
        "int64"
    )


def test_supervised_dialogue_labels_every_assistant_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    ds = SupervisedDataset.from_raw(raw({"dialogue": ["u1", "a1", "u2", "a2"]}), tok, 128)
    first = [BOS] + ids(tok, "BEGINNING OF CONVERSATION: USER: u1 ASSISTANT:")
    a1, second, a2 = ids(tok, "a1") + [EOS], ids(tok, "USER: u2 ASSISTANT:"), ids(tok, "a2") + [EOS]
    assert ds[0]["input_ids"].tolist() == first + a1 + second + a2
    assert ds[0]["labels"].tolist() == [IGN] * len(first) + a1 + [IGN] * len(second) + a2


def test_multi_turn_input_masks_history(tiny_tokenizer):
    tok = tiny_tokenizer
    ds = SupervisedDataset.from_raw(raw({"input": ["u1", "a1", "u2"], "answer": "a2"}), tok, 128)
    prompt = (
        [BOS]
        + ids(tok, "BEGINNING OF CONVERSATION: USER: u1 ASSISTANT:")
        + ids(tok, "a1")
        + [EOS]
        + ids(tok, "USER: u2 ASSISTANT:")
    )
    answer = ids(tok, "a2") + [EOS]
    assert ds[0]["input_ids"].tolist() == prompt + answer
    assert ds[0]["labels"].tolist() == [IGN] * len(prompt) + answer


def test_attention_mask_from_lengths_not_from_pad(tiny_tokenizer):
    # an answer that contains the pad token's text must stay visible: the mask comes from real lengths
    tok = tiny_tokenizer
    ds = SupervisedDataset.from_raw(
        raw({"input": "x", "answer": "<pad>"}, {"input": "a longer prompt", "answer": "b"}), tok, 64
    )
    assert PAD in ds[0]["input_ids"].tolist()
    batch = ds.get_collator()([ds[0], ds[1]])
    n0 = len(ds[0]["input_ids"])
    assert np_(batch["attention_mask"])[0][:n0] == [1] * n0


# ---------------------------------------------------------------------------- preference


def test_preference_pairs_and_ordering(tiny_tokenizer):
    tok = tiny_tokenizer
    ds = PreferenceDataset.from_raw(
        raw(
            {"input": "q", "answer": "good", "other_answer": "bad", "better": True},
            {"input": "q", "answer": "bad", "other_answer": "good one", "better": False, "margin": 1.5},
        ),
        tok,
        64,
    )
    p = prompt_ids(tok, "q")
    assert ds[0]["chosen_input_ids"].tolist() == p + ids(tok, "good") + [EOS]
    assert ds[0]["rejected_input_ids"].tolist() == p + ids(tok, "bad") + [EOS]
    assert ds[1]["chosen_input_ids"].tolist() == p + ids(tok, "good one") + [EOS]  # better=False swaps
    assert ds[1]["rejected_labels"].tolist() == [IGN] * len(p) + ids(tok, "bad") + [EOS]
    assert ds[1]["margin"] == 1.5 and "margin" not in ds[0]

    batch = ds.get_collator()([ds[0], ds[1]])
    assert "margin" not in batch  # only when every sample has one
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape
    lengths = [len(ds[i][k]) for i in range(2) for k in ("chosen_input_ids", "rejected_input_ids")]
    assert batch["chosen_input_ids"].shape[1] == max(lengths)
    assert np_(batch["rejected_attention_mask"])[0] == [1] * lengths[1] + [0] * (max(lengths) - lengths[1])
    with_margin = ds.get_collator()([ds[1]])
    assert np_(with_margin["margin"]) == [1.5] and str(with_margin["margin"].dtype).endswith("float32")


def test_identical_pairs_are_dropped_and_counted(tiny_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="alignment.data"):
        ds = PreferenceDataset.from_raw(
            raw(
                {"input": "q", "answer": "same", "other_answer": "same", "better": True},
                {"input": "q", "answer": "a", "other_answer": "b", "better": True},
            ),
            tiny_tokenizer,
            64,
        )
    assert len(ds) == 1 and ds.dropped == {"identical chosen/rejected": 1}
    assert sum("dropped 1 of 2" in r.getMessage() for r in caplog.records) == 1


def test_pku_fixture_end_to_end(tiny_tokenizer, fx):
    ds = PreferenceDataset(f"PKU-SafeRLHF/train:1.0:{fx / 'pku_saferlhf_first7.jsonl'}", tiny_tokenizer, 256)
    assert len(ds) == 7
    batch = ds.get_collator()([ds[i] for i in range(4)])
    assert batch["chosen_input_ids"].shape[1] <= 256
    labels = batch["chosen_labels"].numpy()
    assert ((labels != IGN).sum(axis=1) >= 16).all()  # every row keeps answer tokens


# ---------------------------------------------------------------------------- safety


def test_safety_preference_signs(tiny_tokenizer, fx):
    tok = tiny_tokenizer
    ds = SafetyPreferenceDataset.from_raw(
        raw(
            {
                "input": "q",
                "answer": "unsafe one",
                "other_answer": "safe one",
                "better": True,
                "safer": False,
                "is_safe": False,
                "is_other_safe": True,
            }
        ),
        tok,
        64,
    )
    item = ds[0]
    assert item["safer_input_ids"].tolist() == prompt_ids(tok, "q") + ids(tok, "safe one") + [EOS]
    assert (item["safer_safety_sign"], item["unsafer_safety_sign"], item["better_is_safer"]) == (1, -1, 0)
    batch = ds.get_collator()([item, item])
    assert set(batch) == {
        "safer_input_ids",
        "safer_attention_mask",
        "safer_labels",
        "safer_safety_sign",
        "unsafer_input_ids",
        "unsafer_attention_mask",
        "unsafer_labels",
        "unsafer_safety_sign",
        "better_is_safer",
    }
    assert np_(batch["safer_safety_sign"]) == [1, 1] and np_(batch["unsafer_safety_sign"]) == [-1, -1]
    assert np_(batch["better_is_safer"]) == [0, 0]

    pku = SafetyPreferenceDataset(f"PKU-SafeRLHF/test:1:{fx / 'pku_saferlhf_first7.jsonl'}", tok, 256)
    assert len(pku) == 7
    # record 6 (index 5): better = response_1, safer = response_0, both unsafe
    assert (pku[5]["safer_safety_sign"], pku[5]["unsafer_safety_sign"], pku[5]["better_is_safer"]) == (
        -1,
        -1,
        0,
    )
    # record 4 (index 3): response_1 is better, safer and the only safe one
    assert (pku[3]["safer_safety_sign"], pku[3]["unsafer_safety_sign"], pku[3]["better_is_safer"]) == (
        1,
        -1,
        1,
    )


# ---------------------------------------------------------------------------- prompt only


def test_prompt_only_left_padding_dedup_and_answers(tiny_tokenizer, fx, caplog):
    tok = tiny_tokenizer
    with caplog.at_level("WARNING", logger="alignment.data"):
        ds = PromptOnlyDataset(f"json:1:{fx / 'trl_prompt_only.jsonl'}", tok, 64)
    assert len(ds) == 2 and ds.num_duplicates == 1  # the repeated haiku prompt is kept once (first occurrence)
    assert "1 of 3 prompts are duplicates" in caplog.text  # said, not silent
    assert [ds[0]["answer"], ds[1]["answer"]] == ["n/a", "6"]
    p0, p1 = prompt_ids(tok, "Write a haiku about rain."), prompt_ids(tok, "What is 10 minus 4?")
    assert ds[0]["input_ids"].tolist() == p0
    batch = ds.get_collator()([ds[0], ds[1]])
    P = max(len(p0), len(p1))
    assert np_(batch["input_ids"])[1] == [PAD] * (P - len(p1)) + p1
    assert np_(batch["attention_mask"])[1] == [0] * (P - len(p1)) + [1] * len(p1)
    assert np_(batch["position_ids"])[1] == [0] * (P - len(p1)) + list(range(len(p1)))
    assert batch["prompts"][1] == "BEGINNING OF CONVERSATION: USER: What is 10 minus 4? ASSISTANT:"
    assert batch["answers"] == ["n/a", "6"]
    assert len(PromptOnlyDataset(f"json:1:{fx / 'trl_prompt_only.jsonl'}", tok, 64, deduplicate=False)) == 3


def test_prompt_only_gsm8k_answers(tiny_tokenizer, fx):
    ds = PromptOnlyDataset({"gsm8k": {"path": str(fx / "gsm8k_test_first8.jsonl")}}, tiny_tokenizer, 128)
    batch = ds.get_collator()([ds[0], ds[1]])
    assert batch["answers"] == ["18", "3"]


def test_prompt_prefix_of_training_sequence(tiny_tokenizer):
    """The prompt ids given to generation are exactly the prompt part of the training sequence."""
    samples = raw({"input": ["u1", "a1", "u2"], "answer": "a2", "other_answer": "b2", "better": True})
    prompt = PromptOnlyDataset.from_raw(samples, tiny_tokenizer, 128)[0]["input_ids"].tolist()
    pair = PreferenceDataset.from_raw(samples, tiny_tokenizer, 128)[0]
    assert pair["chosen_input_ids"].tolist()[: len(prompt)] == prompt
    assert pair["chosen_labels"].tolist()[: len(prompt)] == [IGN] * len(prompt)


# ---------------------------------------------------------------------------- unpaired (KTO)


def test_unpaired_items_and_kl_pairs(tiny_tokenizer, fx):
    tok = tiny_tokenizer
    ds = UnpairedPreferenceDataset(f"json:1:{fx / 'trl_unpaired.jsonl'}", tok, 64)
    assert [ds[i]["kto_label"] for i in range(4)] == [1, 0, 1, 0]
    p0, p2 = prompt_ids(tok, "Say hello."), prompt_ids(tok, "What is 3 times 4?")
    c1, c2 = ids(tok, "Go away.") + [EOS], ids(tok, "3 times 4 is 12.") + [EOS]
    assert ds[0]["prompt_length"] == len(p0)

    batch = ds.get_collator()([ds[0], ds[1], ds[2]])
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "labels",
        "kto_labels",
        "kl_input_ids",
        "kl_attention_mask",
        "kl_labels",
    }
    assert np_(batch["kto_labels"]) == [1, 0, 1]
    kl_ids, kl_labels, kl_mask = (
        np_(batch["kl_input_ids"]),
        np_(batch["kl_labels"]),
        np_(batch["kl_attention_mask"]),
    )
    # row 0: prompt 0 + completion of row 2 (i - 1 mod B); row 2: prompt 2 + completion of row 1
    assert kl_ids[0][: len(p0) + len(c2)] == p0 + c2
    assert kl_labels[0][: len(p0) + len(c2)] == [IGN] * len(p0) + c2
    assert kl_ids[2][: len(p2) + len(c1)] == p2 + c1
    assert kl_mask[2] == [1] * (len(p2) + len(c1)) + [0] * (len(kl_mask[2]) - len(p2) - len(c1))


def test_unpaired_from_preference_pairs(tiny_tokenizer, fx):
    ds = UnpairedPreferenceDataset(f"json:1:{fx / 'trl_preference.jsonl'}", tiny_tokenizer, 64)
    assert len(ds) == 8 and [ds[i]["kto_label"] for i in range(2)] == [1, 0]


def test_unpaired_kto_fixture(tiny_tokenizer, fx):
    ds = UnpairedPreferenceDataset(f"json:1:{fx / 'llamafactory_kto_en_demo_5.json'}", tiny_tokenizer, 128)
    assert [ds[i]["kto_label"] for i in range(len(ds))] == [1, 1, 0, 1, 0]


# ---------------------------------------------------------------------------- truncation


def test_truncation_keeps_prompt_end_and_min_answer(tiny_tokenizer):
    tok = tiny_tokenizer
    sample = raw({"input": "hi", "answer": "hello"})
    p, a = prompt_ids(tok, "hi"), ids(tok, "hello") + [EOS]
    assert (len(p), len(a)) == (11, 4)  # BOS + 10 prompt tokens, 3 answer tokens + EOS

    # enough room for >= min_answer_tokens: the prompt stays whole and the answer's tail is cut
    ds = SupervisedDataset.from_raw(sample, tok, 14, min_answer_tokens=2)
    assert ds[0]["input_ids"].tolist() == p + a[:3]
    assert ds[0]["labels"].tolist() == [IGN] * 11 + a[:3]

    # not enough room: the prompt loses its start (BOS kept) so the whole (short) answer fits
    ds = SupervisedDataset.from_raw(sample, tok, 14)
    assert ds[0]["input_ids"].tolist() == [BOS] + p[-9:] + a
    assert ds[0]["labels"].tolist() == [IGN] * 10 + a

    # max_prompt_length cuts the prompt first
    ds = SupervisedDataset.from_raw(sample, tok, 64, max_prompt_length=4)
    assert ds[0]["input_ids"].tolist() == [BOS] + p[-3:] + a


def test_truncation_drop_is_counted_and_logged_once(tiny_tokenizer, caplog):
    tok = tiny_tokenizer
    samples = raw(
        {"input": "hi there", "answer": "hello"},
        {"input": "hi there", "answer": "hello"},
        {"input": "x", "answer": "y"},
    )
    fits = len(prompt_ids(tok, "x")) + len(ids(tok, "y")) + 1
    assert len(prompt_ids(tok, "hi there")) + len(ids(tok, "hello")) + 1 > fits
    with caplog.at_level(logging.WARNING, logger="alignment.data"):
        ds = SupervisedDataset.from_raw(samples, tok, fits, truncation="drop")
    assert len(ds) == 1 and ds.dropped == {"too long": 2}
    messages = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(messages) == 1 and "dropped 2 of 3" in messages[0] and f"max_length={fits}" in messages[0]

    # keep_prompt_end cannot fit BOS + 1 prompt token + min answer into 3 tokens: dropped, and nothing left
    with pytest.raises(DataError, match="no sample left"):
        SupervisedDataset.from_raw(raw({"input": "hi", "answer": "hello"}), tok, 3, min_answer_tokens=2)


def test_preference_truncation_shares_the_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    ds = PreferenceDataset.from_raw(
        raw(
            {
                "input": "a rather long question about spiders",
                "answer": "eight legs and many eyes",
                "other_answer": "six",
                "better": True,
            }
        ),
        tok,
        16,
        min_answer_tokens=4,
    )
    c, r = ds[0]["chosen_input_ids"].tolist(), ds[0]["rejected_input_ids"].tolist()
    n_prompt = int((ds[0]["chosen_labels"] == IGN).sum())
    assert c[:n_prompt] == r[:n_prompt] and c[0] == BOS and len(c) <= 16 and len(r) <= 16
    assert r[n_prompt:] == ids(tok, "six") + [EOS]


def test_prompt_only_truncation(tiny_tokenizer):
    tok = tiny_tokenizer
    p = prompt_ids(tok, "a rather long question about spiders")
    ds = PromptOnlyDataset.from_raw(raw({"input": "a rather long question about spiders"}), tok, 8)
    assert ds[0]["input_ids"].tolist() == [BOS] + p[-7:]


# ---------------------------------------------------------------------------- pad token


def test_pad_token_checks_and_ensure(tiny_model_dir):
    from paddlenlp.transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.pad_token = tok.eos_token
    with pytest.raises(ValueError, match="ensure_pad_token"):
        check_pad_token(tok)
    with pytest.raises(ValueError, match="EOS"):
        SupervisedDataset.from_raw(raw({"input": "q", "answer": "a"}), tok, 32)
    assert ensure_pad_token(tok) == 3  # '<pad>' already in the vocabulary
    assert check_pad_token(tok) == 3


def test_ensure_pad_token_resizes_model(tiny_model_dir):
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tok.pad_token = tok.eos_token
    vocab = model.get_input_embeddings().weight.shape[0]
    pad = ensure_pad_token(tok, model, pad_token="<|new_pad|>")
    assert pad == vocab and pad != tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == vocab + 1
    assert model.config.pad_token_id == pad


# ---------------------------------------------------------------------------- split, chat, loader


def test_split_train_test(tiny_tokenizer, fx):
    ds = SupervisedDataset(f"alpaca:1:{fx / 'llamafactory_alpaca_en_demo_first10.json'}", tiny_tokenizer, 128)
    train, test = ds.split_train_test(ratio=0.2, seed=0)
    assert (len(train), len(test)) == (8, 2) and type(train) is SupervisedDataset
    joined = sorted(tuple(x["input_ids"].tolist()) for x in list(train) + list(test))
    assert joined == sorted(tuple(x["input_ids"].tolist()) for x in ds)
    again = ds.split_train_test(ratio=0.2, seed=0)[1]
    assert [x["input_ids"].tolist() for x in again] == [x["input_ids"].tolist() for x in test]
    with pytest.raises(DataError):
        ds.split_train_test(ratio=1.5)


def test_chat_template_dataset(tiny_model_dir, tiny_tokenizer):
    from paddlenlp.transformers import AutoTokenizer

    from .test_templates import CHAT

    with pytest.raises(DataError, match="chat template"):
        SupervisedDataset.from_raw(raw({"input": "q", "answer": "a"}), tiny_tokenizer, 32, template="chat")
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.init_chat_template(CHAT)
    ds = SupervisedDataset.from_raw(
        raw({"input": "q", "answer": "a", "system": "S"}), tok, 64, template="chat"
    )
    prompt = ids(tok, "<|system|>S\n<|user|>q\n<|assistant|>")  # no BOS added: the template owns the text
    assert ds[0]["input_ids"].tolist() == prompt + ids(tok, "a") + [EOS]
    assert ds[0]["labels"].tolist() == [IGN] * len(prompt) + ids(tok, "a") + [EOS]


def test_dataloader_integration(tiny_tokenizer, fx):
    import paddle

    ds = PreferenceDataset(f"json:1:{fx / 'trl_preference.jsonl'}", tiny_tokenizer, 64)
    loader = paddle.io.DataLoader(ds, batch_size=2, shuffle=False, collate_fn=ds.get_collator())
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["chosen_input_ids"].shape[0] == 2

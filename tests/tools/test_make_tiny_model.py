"""The tiny-model kit: PaddleNLP loads what it writes, ids are distinct, generation works with a mask."""

import json

import paddle
import pytest

from alignment.models.loading import read_weights
from alignment.tools.make_tiny_model import BOS, EOS, PAD, UNK, TinyModelSpec, build_tiny_model


def test_tokenizer_special_ids_are_distinct(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (UNK, BOS, EOS, PAD)
    ids = tok("Janet sells 16 eggs")["input_ids"]
    assert ids[0] == BOS and PAD not in ids and EOS not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "Janet sells 16 eggs"


def test_model_loads_and_generates_with_attention_mask(tiny_model_dir, tiny_tokenizer):
    from paddlenlp.transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model.eval()
    spec = json.loads((tiny_model_dir / "tiny_model_spec.json").read_text())
    assert model.config.vocab_size == spec["vocab_size"] == 512
    assert model.config.num_hidden_layers == 2 and model.config.pad_token_id == PAD
    tiny_tokenizer.padding_side = "left"
    enc = tiny_tokenizer(["USER: how many eggs? ASSISTANT:", "hi"], padding=True, return_tensors="pd")
    paddle.seed(1)
    out, _ = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=6,
        decode_strategy="sampling",
        top_p=1.0,
    )
    assert out.shape[0] == 2 and 1 <= out.shape[1] <= 6
    assert int(out.max()) < spec["vocab_size"]


def test_build_is_deterministic_and_replaces_atomically(tmp_path):
    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    a = build_tiny_model(tmp_path / "m", spec)
    first = read_weights(str(a))
    b = build_tiny_model(tmp_path / "m", spec)  # replaces in place
    second = read_weights(str(b))
    assert sorted(first) == sorted(second)
    for k in first:
        assert bool((first[k] == second[k]).all()), k
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary leftovers


def test_bad_spec_names_the_field():
    with pytest.raises(ValueError, match="num_heads"):
        TinyModelSpec(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        TinyModelSpec(vocab_size=100)

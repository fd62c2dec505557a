"""Loading helpers: dtype names, tokenizer pad handling, causal LM + resize, LoRA wrapping and merging, freezing."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from alignment.models import (
    LoraArguments,
    count_parameters,
    freeze,
    load_backbone,
    load_causal_lm,
    load_tokenizer,
    merge_lora_state_dict,
    resolve_dtype,
    wrap_lora,
)


def test_resolve_dtype():
    class Args:
        bf16, fp16 = True, False

    assert resolve_dtype(None) == "float32"
    assert resolve_dtype("bf16") == "bfloat16"
    assert resolve_dtype(paddle.float16) == "float16"
    assert resolve_dtype(Args()) == "float32"  # training: float32 master weights, paddle.amp computes in bf16
    with pytest.raises(ValueError, match="allowed values: float32, bfloat16, float16"):
        resolve_dtype("int8")


def test_tokenizer_and_causal_lm(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir), padding_side="left", model_max_length=64)
    assert tok.pad_token_id == 3 and tok.eos_token_id == 2
    assert tok.padding_side == "left" and tok.model_max_length == 64
    with pytest.raises(ValueError, match="padding_side='middle'.*left, right"):
        load_tokenizer(str(tiny_model_dir), padding_side="middle")
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    model = load_causal_lm(str(tiny_model_dir), tokenizer=tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == 513  # resized for the added token
    backbone = load_backbone(str(tiny_model_dir))
    assert type(backbone).__name__ == "LlamaModel"


def test_freeze_and_count(tiny_model_dir):
    model = freeze(load_causal_lm(str(tiny_model_dir)))
    trainable, total = count_parameters(model)
    assert trainable == 0 and total > 0 and not model.training


def test_lora_only_adapters_train_and_merge_matches(tiny_model_dir):
    paddle.seed(0)
    base = load_causal_lm(str(tiny_model_dir))
    args = LoraArguments(lora=True, lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                         lora_target_modules=[".*q_proj.*", ".*v_proj.*"])
    model = wrap_lora(base, args)
    trainable = [n for n, p in model.named_parameters() if not p.stop_gradient]
    assert trainable and all("lora" in n for n in trainable)
    for name, p in model.named_parameters():  # make the adapters non-trivial (lora_B starts at zero)
        if "lora_B" in name:
            p.set_value(paddle.full(p.shape, 0.01, dtype=p.dtype))
    model.eval()
    ids = paddle.to_tensor([[1, 40, 41, 42, 2]], dtype="int64")
    mask = paddle.ones_like(ids)
    with paddle.no_grad():
        lora_logits = model(input_ids=ids, attention_mask=mask, return_dict=True).logits.numpy()
    merged = merge_lora_state_dict(model)
    assert not any("lora" in k for k in merged)
    plain = load_causal_lm(str(tiny_model_dir))
    plain.set_state_dict(merged)
    plain.eval()
    with paddle.no_grad():
        plain_logits = plain(input_ids=ids, attention_mask=mask, return_dict=True).logits.numpy()
    np.testing.assert_allclose(plain_logits, lora_logits, rtol=1e-4, atol=1e-4)
    with paddle.no_grad():  # the LoRA model itself is unchanged (unmerged again)
        again = model(input_ids=ids, attention_mask=mask, return_dict=True).logits.numpy()
    np.testing.assert_allclose(again, lora_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lora_rank=0), "lora_rank must be > 0"),
        (dict(lora_dropout=1.0), r"lora_dropout must be in \[0, 1\)"),
        (dict(lora_target_modules=["(bad"]), "not a valid regular expression"),
    ],
)
def test_lora_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraArguments(**kwargs)


def test_lora_targets_must_match(tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir))
    with pytest.raises(ValueError, match="match no layer"):
        wrap_lora(model, LoraArguments(lora=True, lora_target_modules=[".*attn_proj.*"]))

"""Prompt templates: Beaver text, multi-turn, system prompt, chat template and its error."""

from __future__ import annotations

import pytest

from alignment.data import DataError, format_prompt, render_segments


def test_beaver_single_and_multi_turn():
    assert format_prompt("hi") == "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:"
    assert format_prompt(["hi", "hello", "bye?"], "<eos>") == (
        "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:hello<eos>USER: bye? ASSISTANT:"
    )
    assert format_prompt("hi", system="Be kind.") == "BEGINNING OF CONVERSATION: Be kind. USER: hi ASSISTANT:"


def test_segments():
    assert render_segments(["u1", "a1", "u2", "a2"]) == [
        ("prompt", "BEGINNING OF CONVERSATION: USER: u1 ASSISTANT:"),
        ("assistant", "a1"),
        ("prompt", "USER: u2 ASSISTANT:"),
        ("assistant", "a2"),
    ]
    assert render_segments("q", template="raw", system="S") == [("prompt", "S\nq")]


def test_prompt_must_end_with_user_turn():
    with pytest.raises(DataError, match="odd length"):
        format_prompt(["u1", "a1"])
    with pytest.raises(DataError, match="unknown template"):
        format_prompt("x", template="alpaca")


def test_chat_template_needs_one(tiny_tokenizer):
    assert not getattr(tiny_tokenizer, "chat_template", None)
    with pytest.raises(DataError, match="chat template"):
        format_prompt("hi", template="chat", tokenizer=tiny_tokenizer)


CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def chat_tokenizer(tiny_model_dir):
    from paddlenlp.transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.init_chat_template(CHAT)
    return tok


def test_chat_template(chat_tokenizer):
    assert format_prompt(["u1", "a1", "u2"], template="chat", tokenizer=chat_tokenizer, system="S") == (
        "<|system|>S\n<|user|>u1\n<|assistant|>a1\n<|user|>u2\n<|assistant|>"
    )
    assert render_segments(["u1", "a1"], template="chat", tokenizer=chat_tokenizer) == [
        ("prompt", "<|user|>u1\n<|assistant|>"),
        ("assistant", "a1"),
    ]

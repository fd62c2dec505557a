"""Shared fixtures: the tiny Llama model + tokenizer (built once per test session) and fixture paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLAGS_call_stack_level", "2")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-initialised 2-layer Llama (hidden 64, vocab 512) with its SentencePiece tokenizer."""
    from alignment.tools.make_tiny_model import TinyModelSpec, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", TinyModelSpec())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from paddlenlp.transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))

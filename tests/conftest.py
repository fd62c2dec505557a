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


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A random-initialised 2-layer Qwen2 (grouped-query attention: 4 heads, 2 key-value heads; q/k/v biases) with
    the tiny model's SentencePiece tokenizer, as ``make_tiny_model --arch qwen2`` builds it (tokenizer reused)."""
    import glob
    import shutil

    import paddle
    from paddlenlp.transformers import Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2"
    paddle.seed(0)
    config = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                         use_flash_attention=False, dtype="float32")
    config.architectures = ["Qwen2ForCausalLM"]
    Qwen2ForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    for f in glob.glob(f"{tiny_model_dir}/*token*") + glob.glob(f"{tiny_model_dir}/*.model"):
        shutil.copy(f, out)
    return out


@pytest.fixture(scope="session")
def hf_import_cache(tmp_path_factory):
    """ALIGNMENT_HF_CACHE pointed at a session temporary directory (Hugging Face imports land there)."""
    path = tmp_path_factory.mktemp("hf-import")
    mp = pytest.MonkeyPatch()
    mp.setenv("ALIGNMENT_HF_CACHE", str(path))
    yield path
    mp.undo()

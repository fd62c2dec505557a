"""Build a tiny, PaddleNLP-loadable Llama (or Qwen2) model and SentencePiece tokenizer, with no download.

Used by every test (through a session-scoped fixture) and by ``make demo``. The tokenizer is trained on
``tiny_corpus.txt`` shipped next to this file (GSM8K + HH-RLHF, both MIT; see CORPUS_SOURCES.md) and has
distinct ids for ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2 and ``<pad>`` 3, so a generated EOS is never mistaken
for padding.

    python -m alignment.tools.make_tiny_model --out /tmp/tiny-llama --hidden-size 64 --num-layers 2
    python -m alignment.tools.make_tiny_model --out /tmp/tiny-qwen2 --arch qwen2      # grouped-query attention
    python -m alignment.tools.make_tiny_model --out /tmp/tiny-hf --layout hf          # Hugging Face layout

    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("/tmp/tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained("/tmp/tiny-llama")
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from alignment.utils.io import atomic_dir

CORPUS = Path(__file__).with_name("tiny_corpus.txt")
UNK, BOS, EOS, PAD = 0, 1, 2, 3
ARCHS = ("llama", "qwen2")


@dataclass
class TinyModelSpec:
    """Size of the tiny model. Defaults train a step in milliseconds on one CPU core."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_key_value_heads: Optional[int] = None
    max_position_embeddings: int = 1024
    seed: int = 0
    tie_word_embeddings: bool = False
    arch: str = "llama"  # llama | qwen2 (Qwen2: q/k/v biases; num_key_value_heads defaults to num_heads / 2)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch='{self.arch}' is not valid; allowed values: {', '.join(ARCHS)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.vocab_size < 512:
            # 256 byte-fallback pieces + the corpus characters + 4 specials must fit.
            raise ValueError(f"vocab_size must be >= 512, got {self.vocab_size}")


# The Beaver prompt template is in every prompt; repeating it lets BPE learn whole-word pieces for it.
_TEMPLATE_LINE = "BEGINNING OF CONVERSATION: USER: {} ASSISTANT: {}"


def _corpus_lines(f):
    for i, line in enumerate(f):
        if line.strip():
            yield line.rstrip("\n")
        if i % 4 == 0:
            yield _TEMPLATE_LINE.format(i, i + 1)


def train_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 512, corpus: Path = CORPUS) -> Path:
    """Train a SentencePiece BPE model on ``corpus``; returns the path of ``sentencepiece.bpe.model``."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with open(corpus, encoding="utf-8") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_corpus_lines(f),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type="bpe",
            character_coverage=1.0,
            byte_fallback=True,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            pad_id=PAD,
            pad_piece="<pad>",
            num_threads=1,
            minloglevel=2,
            max_sentence_length=100000,
        )
    path = out_dir / "sentencepiece.bpe.model"
    path.write_bytes(buf.getvalue())
    return path


def build_tiny_model(out_dir: str | os.PathLike, spec: Optional[TinyModelSpec] = None, layout: str = "paddle") -> Path:
    """Write tokenizer + random-initialised ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` into ``out_dir``
    (atomically). ``layout="hf"`` writes it as a Hugging Face checkpoint instead (PyTorch-layout safetensors,
    HF config and tokenizer files; ``alignment.models.hf.export_hf``), the way a user's download looks.

    The directory is assembled under a temporary name and renamed into place, so an interrupted build
    never leaves a half-written model behind.
    """
    if layout not in ("paddle", "hf"):
        raise ValueError(f"layout='{layout}' is not valid; allowed values: paddle, hf")
    if layout == "hf":
        import tempfile

        from alignment.models.hf import export_hf

        with tempfile.TemporaryDirectory() as tmp:
            source = build_tiny_model(Path(tmp) / "paddle", spec)
            export_hf(str(source), str(out_dir))
        return Path(out_dir).resolve()
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer, Qwen2Config, Qwen2ForCausalLM

    spec = spec or TinyModelSpec()
    out_dir = Path(out_dir).resolve()
    with atomic_dir(out_dir) as tmp:
        sp_path = train_tokenizer(tmp / "_sp", spec.vocab_size)
        tokenizer = LlamaTokenizer(
            vocab_file=str(sp_path), pad_token="<pad>", add_bos_token=True, add_eos_token=False
        )
        tokenizer.padding_side = "right"
        tokenizer.model_max_length = spec.max_position_embeddings
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(tmp / "_sp")

        config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if spec.arch == "qwen2" else (LlamaConfig,
                                                                                               LlamaForCausalLM)
        kv_heads = spec.num_key_value_heads or (max(spec.num_heads // 2, 1) if spec.arch == "qwen2" else spec.num_heads)
        config = config_cls(
            vocab_size=spec.vocab_size,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=spec.max_position_embeddings,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
            tie_word_embeddings=spec.tie_word_embeddings,
            use_flash_attention=False,
            dtype="float32",
        )
        config.architectures = [model_cls.__name__]
        paddle.seed(spec.seed)
        model = model_cls(config)
        model.save_pretrained(str(tmp), safe_serialization=True)  # no pickle: model.safetensors
        (tmp / "tiny_model_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return out_dir


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    defaults = TinyModelSpec()
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    parser.add_argument("--intermediate-size", type=int, default=defaults.intermediate_size)
    parser.add_argument("--num-layers", type=int, default=defaults.num_layers)
    parser.add_argument("--num-heads", type=int, default=defaults.num_heads)
    parser.add_argument("--max-position-embeddings", type=int, default=defaults.max_position_embeddings)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--arch", default=defaults.arch, choices=ARCHS, help="model family (default: llama)")
    parser.add_argument("--layout", default="paddle", choices=("paddle", "hf"),
                        help="paddle: PaddleNLP checkpoint; hf: Hugging Face checkpoint (PyTorch-layout safetensors)")
    args = parser.parse_args(argv)
    spec = TinyModelSpec(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        max_position_embeddings=args.max_position_embeddings,
        seed=args.seed,
        arch=args.arch,
    )
    path = build_tiny_model(args.out, spec, layout=args.layout)
    print(f"tiny model and tokenizer written to {path}")


if __name__ == "__main__":
    main()

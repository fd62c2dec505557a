"""Export a checkpoint of any stage as a Hugging Face directory (transformers, vLLM, SGLang load it).

    python -m alignment.tools.export --checkpoint checkpoints/tiny-sft --out exported/tiny-sft --format hf
    python -m alignment.tools.export --checkpoint checkpoints/tiny-rm --out exported/tiny-rm --format hf
    python -m alignment.tools.export --checkpoint checkpoints/tiny-ppo/policy --out exported/policy --format hf

A causal LM becomes ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (safetensors in PyTorch layout, config.json,
generation_config.json, tokenizer files); a score model (reward, cost, critic) becomes
``<Family>ForSequenceClassification`` plus ``value_head.safetensors`` (the head in the TRL layout, with the
normaliser); a LoRA checkpoint is exported merged (``--base`` names the base model of an adapter-only one).
The layouts are documented in ``alignment.models.hf.export_hf``. ``--dtype`` casts the weights (default: keep).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m alignment.tools.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (a stage's output_dir, "
                        "a checkpoint-N, a PPO policy/ or value/, or a LoRA output)")
    parser.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    parser.add_argument("--format", default="hf", choices=["hf"], help="output format (hf: Hugging Face)")
    parser.add_argument("--dtype", default="keep", choices=["keep", "float32", "bfloat16", "float16"],
                        help="cast the weights (default: keep the checkpoint's dtype)")
    parser.add_argument("--base", default=None, help="base model of an adapter-only LoRA checkpoint (default: "
                        "lora_config.json's base_model_name_or_path)")
    args = parser.parse_args(argv)
    from alignment.models.hf import export_hf

    summary = export_hf(args.checkpoint, args.out, dtype=args.dtype, base=args.base)
    print(f"exported {summary['architecture']} ({summary['dtype']}, {summary['tensors']} tensors"
          f"{', LoRA ' + summary['lora'] if summary['lora'] else ''}) to {args.out}")
    return summary


if __name__ == "__main__":
    from alignment.utils.cli import run_cli

    run_cli(main)  # one-line errors, exit 2 for user errors

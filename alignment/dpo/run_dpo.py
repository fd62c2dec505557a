"""Offline preference optimisation: DPO and its loss family, CPO, SimPO and ORPO.

    python alignment/dpo/run_dpo.py config/llama/dpo_argument.json
    python alignment/dpo/run_dpo.py config/llama/simpo_argument.json --learning_rate 5e-7
    python -m paddle.distributed.launch alignment/dpo/run_dpo.py config/llama/dpo_argument.json

The argument file holds the fields of ``SFTModelArguments`` and ``DataArguments`` (shared with SFT,
``alignment/sft/config.py``; LoRA switches included), ``DPOArguments`` (``alignment/dpo/config.py``) and
PaddleNLP's ``TrainingArguments``. The stage is picked TRL style
(``loss_type``), ms-swift style (``rlhf_type``: dpo, cpo, simpo, orpo) or LLaMA-Factory style
(``pref_loss``). The reference is ``ref_model`` when given, else a frozen copy of the start model (with
LoRA: the policy with its adapters disabled); reference-free losses load none.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python alignment/dpo/run_dpo.py ...`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from alignment.dpo.config import DPOArguments  # noqa: E402
from alignment.sft.config import DataArguments, SFTModelArguments  # noqa: E402

__all__ = ["main", "load_models", "finish"]


def load_models(model_args: SFTModelArguments, training_args, *, reference: Optional[str], need_reference: bool):
    """(tokenizer, policy, reference or None) through ``alignment.models.loading``.

    The reference is ``reference`` when given, else a frozen copy of the start model; with LoRA and no
    explicit reference none is loaded (the trainer disables the adapters instead).
    """
    from alignment.models.loading import load_causal_lm, load_tokenizer, resolve_dtype, wrap_lora

    dtype = resolve_dtype(training_args)
    tokenizer = load_tokenizer(model_args.tokenizer_name_or_path or model_args.model_name_or_path, padding_side="right")
    common = dict(dtype=dtype, use_flash_attention=model_args.use_flash_attention, tokenizer=tokenizer)
    model = load_causal_lm(model_args.model_name_or_path, recompute=training_args.recompute, **common)
    ref_model = None
    if need_reference and (reference or not model_args.lora):
        ref_model = load_causal_lm(reference or model_args.model_name_or_path, frozen=True, **common)
    if model_args.lora:
        model = wrap_lora(model, model_args, dtype=dtype, base_model_name_or_path=model_args.model_name_or_path)
    return tokenizer, model, ref_model


def finish(trainer, model_args: SFTModelArguments, training_args) -> None:
    """Train / evaluate / save as the SFT stage does (merged LoRA weights too when asked)."""
    from alignment.sft.run_sft import run_trainer, save_merged_lora

    run_trainer(trainer, training_args)
    if model_args.lora and model_args.merge_lora_on_save and (training_args.do_train or not training_args.do_eval):
        save_merged_lora(trainer, training_args.output_dir)


def main(argv: Optional[Sequence[str]] = None):
    """Parse ``[config.json] [--flag value ...]``, build models and data, train; returns the trainer."""
    from paddlenlp.trainer import TrainingArguments, set_seed

    from alignment.data import PreferenceDataset
    from alignment.dpo.trainer import DPOTrainer
    from alignment.sft.run_sft import build_datasets
    from alignment.utils.cli import parse_args

    model_args, data_args, dpo_args, training_args = parse_args(
        [SFTModelArguments, DataArguments, DPOArguments, TrainingArguments], argv
    )
    set_seed(training_args.seed)
    tokenizer, model, ref_model = load_models(
        model_args, training_args, reference=dpo_args.ref_model, need_reference=dpo_args.needs_reference
    )
    train_ds, eval_ds = build_datasets(PreferenceDataset, data_args, tokenizer, training_args.seed)
    trainer = DPOTrainer(
        model, training_args, dpo_args=dpo_args, ref_model=ref_model, pad_token_id=tokenizer.pad_token_id,
        train_dataset=train_ds, eval_dataset=eval_ds, data_collator=train_ds.get_collator(), tokenizer=tokenizer,
    )
    finish(trainer, model_args, training_args)
    return trainer


if __name__ == "__main__":
    main()

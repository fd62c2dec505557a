"""Offline preference optimisation: DPO and its loss family, CPO, SimPO and ORPO.

    python alignment/dpo/run_dpo.py config/llama/dpo_argument.json
    python alignment/dpo/run_dpo.py config/llama/simpo_argument.json --learning_rate 5e-7
    python -m paddle.distributed.launch alignment/dpo/run_dpo.py config/llama/dpo_argument.json

The argument file holds the fields of ``ModelArguments``, ``DataArguments``, ``DPOArguments`` (see
``alignment/dpo/config.py``) and PaddleNLP's ``TrainingArguments``. The stage is picked TRL style
(``loss_type``), ms-swift style (``rlhf_type``: dpo, cpo, simpo, orpo) or LLaMA-Factory style
(``pref_loss``). The reference is ``ref_model`` when given, else a frozen copy of the start model (with
LoRA: the policy with its adapters disabled); reference-free losses load none.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence, Tuple

if __package__ in (None, ""):  # `python alignment/dpo/run_dpo.py ...`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from alignment.dpo.config import DataArguments, DPOArguments, ModelArguments  # noqa: E402

__all__ = ["main", "load_tokenizer", "load_causal_lm", "wrap_lora", "build_datasets"]


def _dtype(training_args) -> str:
    if getattr(training_args, "bf16", False):
        return "bfloat16"
    if getattr(training_args, "fp16", False):
        return "float16"
    return "float32"


def load_tokenizer(model_args: ModelArguments):
    from paddlenlp.transformers import AutoTokenizer

    from alignment.data import ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path or model_args.model_name_or_path)
    ensure_pad_token(tokenizer)
    return tokenizer


def load_causal_lm(name_or_path: str, model_args: ModelArguments, training_args, tokenizer=None, frozen: bool = False):
    """A PaddleNLP causal LM from a hub name or local path; ``frozen`` -> eval mode, no gradients."""
    from paddlenlp.transformers import AutoConfig, AutoModelForCausalLM

    from alignment.dpo.trainer import freeze_model

    config = AutoConfig.from_pretrained(name_or_path)
    config.use_flash_attention = model_args.use_flash_attention
    if training_args.recompute and not frozen:
        config.recompute = True
    model = AutoModelForCausalLM.from_pretrained(name_or_path, config=config, dtype=_dtype(training_args))
    if tokenizer is not None:
        from alignment.data import ensure_pad_token

        ensure_pad_token(tokenizer, model)
    if frozen:
        freeze_model(model)
    return model


def wrap_lora(model, model_args: ModelArguments, training_args):
    """LoRA adapters on ``lora_target_modules``; only they stay trainable."""
    from paddlenlp.peft import LoRAConfig, LoRAModel

    config = LoRAConfig(
        target_modules=list(model_args.lora_target_modules), r=model_args.lora_rank, lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout, merge_weights=False, dtype=_dtype(training_args),
        base_model_name_or_path=model_args.model_name_or_path,
    )
    model = LoRAModel(model, config)
    model.mark_only_lora_as_trainable()
    return model


def build_datasets(dataset_cls, data_args: DataArguments, tokenizer, seed: int):
    """(train, eval or None) tokenized datasets of ``dataset_cls`` (PreferenceDataset, ...)."""
    kwargs = dict(max_length=data_args.max_length, seed=seed, template=data_args.template,
                  truncation=data_args.truncation, max_prompt_length=data_args.max_prompt_length,
                  system=data_args.system)
    train = dataset_cls(data_args.train_datasets, tokenizer, **kwargs)
    if data_args.eval_datasets:
        return train, dataset_cls(data_args.eval_datasets, tokenizer, **kwargs)
    if data_args.eval_split_ratio > 0:
        return train.split_train_test(data_args.eval_split_ratio, seed=seed)
    return train, None


def run_trainer(trainer, training_args, tokenizer) -> None:
    """Train / evaluate as ``do_train`` / ``do_eval`` ask (train when neither is set), then save."""
    do_train = training_args.do_train or not training_args.do_eval
    if do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # also saves the tokenizer handed to the Trainer
        trainer.log_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval and trainer.eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())


def main(argv: Optional[Sequence[str]] = None):
    """Parse ``[config.json] [--flag value ...]``, build models and data, train; returns the trainer."""
    from paddlenlp.trainer import TrainingArguments, set_seed

    from alignment.data import PreferenceDataset
    from alignment.dpo.trainer import DPOTrainer
    from alignment.utils.cli import parse_args

    model_args, data_args, dpo_args, training_args = parse_args(
        [ModelArguments, DataArguments, DPOArguments, TrainingArguments], argv
    )
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args)
    model = load_causal_lm(model_args.model_name_or_path, model_args, training_args, tokenizer)
    ref_model = None
    if dpo_args.needs_reference and (dpo_args.ref_model or not model_args.lora):
        ref_model = load_causal_lm(dpo_args.ref_model or model_args.model_name_or_path, model_args, training_args,
                                   tokenizer, frozen=True)
    if model_args.lora:
        model = wrap_lora(model, model_args, training_args)
    train_ds, eval_ds = build_datasets(PreferenceDataset, data_args, tokenizer, training_args.seed)
    trainer = DPOTrainer(
        model, training_args, dpo_args=dpo_args, ref_model=ref_model, pad_token_id=tokenizer.pad_token_id,
        train_dataset=train_ds, eval_dataset=eval_ds, data_collator=train_ds.get_collator(), tokenizer=tokenizer,
    )
    run_trainer(trainer, training_args, tokenizer)
    return trainer


if __name__ == "__main__":
    main()

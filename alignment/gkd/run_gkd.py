"""GKD: on-policy distillation of a student from a teacher (Agarwal et al., arXiv:2306.13649).

    python alignment/gkd/run_gkd.py config/llama/gkd_argument.json
    python alignment/gkd/run_gkd.py config/llama/tiny/gkd_argument.json --lmbda 1.0 --beta 0.0

Data: supervised prompt/completion records (the same formats SFT reads). Student = ``model_name_or_path``
(optionally LoRA), teacher = ``teacher_model_name_or_path`` (frozen; it must share the student's
tokenizer). ``lmbda``, ``seq_kd``, ``beta``, ``sft_alpha``, ``temperature`` and ``max_completion_length``
are in ``GKDArguments`` (alignment/gkd/config.py).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python alignment/gkd/run_gkd.py ...`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from alignment.dpo.config import DataArguments, ModelArguments  # noqa: E402
from alignment.gkd.config import GKDArguments  # noqa: E402

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None):
    """Parse ``[config.json] [--flag value ...]``, build student, teacher and data, train; returns the trainer."""
    from paddlenlp.trainer import TrainingArguments, set_seed

    from alignment.data import SupervisedDataset
    from alignment.dpo.run_dpo import build_datasets, load_causal_lm, load_tokenizer, run_trainer, wrap_lora
    from alignment.gkd.trainer import GKDTrainer
    from alignment.utils.cli import ArgumentError, parse_args

    model_args, data_args, gkd_args, training_args = parse_args(
        [ModelArguments, DataArguments, GKDArguments, TrainingArguments], argv
    )
    if not gkd_args.teacher_model_name_or_path:
        raise ArgumentError("teacher_model_name_or_path is required for GKD (a hub name or local path)")
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args)
    model = load_causal_lm(model_args.model_name_or_path, model_args, training_args, tokenizer)
    teacher = load_causal_lm(gkd_args.teacher_model_name_or_path, model_args, training_args, tokenizer, frozen=True)
    if model_args.lora:
        model = wrap_lora(model, model_args, training_args)
    train_ds, eval_ds = build_datasets(SupervisedDataset, data_args, tokenizer, training_args.seed)
    trainer = GKDTrainer(
        model, training_args, gkd_args=gkd_args, teacher_model=teacher, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=train_ds.get_collator(), tokenizer=tokenizer,
    )
    run_trainer(trainer, training_args, tokenizer)
    return trainer


if __name__ == "__main__":
    main()

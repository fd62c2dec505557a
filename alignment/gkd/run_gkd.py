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

from alignment.gkd.config import GKDArguments  # noqa: E402
from alignment.training.arguments import DataArguments, ModelArguments  # noqa: E402

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None):
    """Parse ``[config.json] [--flag value ...]``, build student, teacher and data, train; returns the trainer."""
    from paddlenlp.trainer import TrainingArguments, set_seed

    from alignment.data import SupervisedDataset
    from alignment.gkd.trainer import GKDTrainer
    from alignment.training.runner import build_datasets, finish, load_frozen_lm, load_models
    from alignment.utils.cli import ArgumentError, parse_args

    model_args, data_args, gkd_args, training_args = parse_args(
        [ModelArguments, DataArguments, GKDArguments, TrainingArguments], argv
    )
    if not gkd_args.teacher_model_name_or_path:
        raise ArgumentError("teacher_model_name_or_path is required for GKD (a hub name or local path)")
    set_seed(training_args.seed)
    tokenizer, model, _ = load_models(model_args, training_args, reference=None, need_reference=False)
    # split like the student (pipeline stages, stage-3 shards) unless the teacher also generates (seq_kd)
    teacher = load_frozen_lm(gkd_args.teacher_model_name_or_path, model_args, training_args, tokenizer=tokenizer,
                             generates=gkd_args.seq_kd, role="teacher")
    train_ds, eval_ds = build_datasets(SupervisedDataset, data_args, tokenizer, training_args.seed)
    trainer = GKDTrainer(
        model, training_args, gkd_args=gkd_args, teacher_model=teacher, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=train_ds.get_collator(), tokenizer=tokenizer,
    )
    finish(trainer, model_args, training_args)
    return trainer


if __name__ == "__main__":
    from alignment.utils.cli import run_cli

    run_cli(main)  # one-line errors, exit 2 for user errors (--debug shows the traceback)
    from alignment.parallel import ParallelStrategy

    ParallelStrategy.current().shutdown()

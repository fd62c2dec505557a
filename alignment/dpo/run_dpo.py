"""Offline preference optimisation: DPO and its loss family, CPO, SimPO and ORPO.

    python alignment/dpo/run_dpo.py config/llama/dpo_argument.json
    python alignment/dpo/run_dpo.py config/llama/simpo_argument.json --learning_rate 5e-7
    python -m paddle.distributed.launch alignment/dpo/run_dpo.py config/llama/dpo_argument.json

The argument file holds the fields of ``ModelArguments`` and ``DataArguments`` (shared with SFT,
``alignment/training/arguments.py``; LoRA switches included), ``DPOArguments`` (``alignment/dpo/config.py``)
and PaddleNLP's ``TrainingArguments``. The stage is picked TRL style
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
from alignment.training.arguments import DataArguments, ModelArguments  # noqa: E402

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None):
    """Parse ``[config.json] [--flag value ...]``, build models and data, train; returns the trainer."""
    from paddlenlp.trainer import TrainingArguments, set_seed

    from alignment.data import PreferenceDataset
    from alignment.dpo.trainer import DPOTrainer
    from alignment.training.runner import build_datasets, finish, load_models
    from alignment.utils.cli import parse_args

    model_args, data_args, dpo_args, training_args = parse_args(
        [ModelArguments, DataArguments, DPOArguments, TrainingArguments], argv
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
    from alignment.utils.cli import run_cli

    run_cli(main)  # one-line errors, exit 2 for user errors (--debug shows the traceback)
    from alignment.parallel import ParallelStrategy

    ParallelStrategy.current().shutdown()

"""KTO: alignment from unpaired desirable / undesirable completions (Ethayarajh et al., arXiv:2402.01306).

    python alignment/kto/run_kto.py config/llama/kto_argument.json
    python alignment/kto/run_kto.py config/llama/tiny/kto_argument.json --desirable_weight 1.33

Data: unpaired records (TRL prompt/completion/label, LLaMA-Factory ``kto_tag``, ...) or preference pairs,
which are split into one desirable and one undesirable sample. The KL reference point comes from
mismatched pairs inside each batch (prompt i with completion i-1). A warning is printed when the
weighted class ratio ``desirable_weight * n_desirable / (undesirable_weight * n_undesirable)`` is
outside [1, 4/3] (KTO paper, Eq. 8).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python alignment/kto/run_kto.py ...`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from alignment.kto.config import KTOArguments  # noqa: E402
from alignment.training.arguments import DataArguments, ModelArguments  # noqa: E402

__all__ = ["main", "check_class_ratio"]


def check_class_ratio(dataset, kto_args: KTOArguments) -> bool:
    """Warn (and return False) when the weighted desirable:undesirable ratio is outside [1, 4/3]."""
    from alignment.algorithms.preference import kto_class_ratio_ok

    labels = [int(dataset[i]["kto_label"]) for i in range(len(dataset))]
    n_d, n_u = sum(labels), len(labels) - sum(labels)
    if kto_class_ratio_ok(n_d, n_u, kto_args.desirable_weight, kto_args.undesirable_weight):
        return True
    ratio = (kto_args.desirable_weight * n_d) / (kto_args.undesirable_weight * n_u) if n_u else float("inf")
    warnings.warn(
        f"KTO class balance: desirable_weight*n_desirable / (undesirable_weight*n_undesirable) = "
        f"{kto_args.desirable_weight}*{n_d} / ({kto_args.undesirable_weight}*{n_u}) = {ratio:.3f} is outside "
        "[1, 4/3], the range the KTO paper advises (Eq. 8); adjust desirable_weight / undesirable_weight",
        UserWarning,
        stacklevel=2,
    )
    return False


def main(argv: Optional[Sequence[str]] = None):
    """Parse ``[config.json] [--flag value ...]``, build models and data, train; returns the trainer."""
    from paddlenlp.trainer import TrainingArguments, set_seed

    from alignment.data import UnpairedPreferenceDataset
    from alignment.kto.trainer import KTOTrainer
    from alignment.training.runner import build_datasets, finish, load_models
    from alignment.utils.cli import parse_args

    model_args, data_args, kto_args, training_args = parse_args(
        [ModelArguments, DataArguments, KTOArguments, TrainingArguments], argv
    )
    set_seed(training_args.seed)
    tokenizer, model, ref_model = load_models(
        model_args, training_args, reference=kto_args.ref_model, need_reference=True
    )
    train_ds, eval_ds = build_datasets(UnpairedPreferenceDataset, data_args, tokenizer, training_args.seed)
    check_class_ratio(train_ds, kto_args)
    trainer = KTOTrainer(
        model, training_args, kto_args=kto_args, ref_model=ref_model, pad_token_id=tokenizer.pad_token_id,
        train_dataset=train_ds, eval_dataset=eval_ds, data_collator=train_ds.get_collator(), tokenizer=tokenizer,
    )
    finish(trainer, model_args, training_args)
    return trainer


if __name__ == "__main__":
    from alignment.utils.cli import run_cli

    run_cli(main)  # one-line errors, exit 2 for user errors (--debug shows the traceback)
    from alignment.parallel import ParallelStrategy

    ParallelStrategy.current().shutdown()

"""Supervised fine-tuning (SFT) of a causal LM on instruction data.

    python alignment/sft/run_sft.py config/llama/sft_argument.json
    python alignment/sft/run_sft.py config/llama/tiny/sft_argument.json --max_steps 50 --lora true
    python -m paddle.distributed.launch --nproc_per_node 2 alignment/sft/run_sft.py \
        config/llama/tiny/sft_argument.json

The argument file holds the fields of ``SFTModelArguments`` and ``DataArguments`` (the shared ones of
alignment/training/arguments.py) and PaddleNLP's ``TrainingArguments``; ``--flag value`` overrides it, an
unknown key is an error. The data is a ``SupervisedDataset`` (alignment/data): answer tokens (and EOS) are
learned, prompt tokens are not.

Output (``output_dir``): a model ``AutoModelForCausalLM.from_pretrained`` loads (config.json +
model_state.pdparams) and the tokenizer; with ``lora`` the adapter files (lora_config.json,
lora_model_state.pdparams) and, with ``merge_lora_on_save`` (default), the merged full model next to them;
``metrics.jsonl`` with one record per logging step (train loss, eval_loss).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python alignment/sft/run_sft.py ...`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from alignment.sft.config import SFTModelArguments  # noqa: E402
from alignment.training.arguments import DataArguments  # noqa: E402
from alignment.training.runner import build_datasets, run_trainer, save_merged_lora  # noqa: E402

__all__ = ["main", "build_trainer"]


def sft_pipeline_model(path: str, training_args, model_args, dtype):
    """The causal LM as pipeline stages whose last stage computes ``answer_nll``."""
    from functools import partial

    from alignment.models.pipeline import PipeCriterion, load_causal_lm_pipe, pipeline_inputs
    from alignment.sft.trainer import answer_nll

    world = max(int(training_args.dataset_world_size), 1)
    criterion = PipeCriterion(lambda logits, labels: answer_nll(logits, labels[0], world_size=world)[0])
    model = load_causal_lm_pipe(path, criterion=criterion, dtype=dtype,
                                use_flash_attention=model_args.use_flash_attention,
                                recompute=training_args.recompute)
    model._prepare_pipeline_inputs_func = partial(
        pipeline_inputs, first=("input_ids", "attention_mask", "position_ids"), labels=("labels",))
    return model


def build_trainer(argv: Optional[Sequence[str]] = None):
    """Parse the arguments and build model, data and ``SFTTrainer`` (nothing trained yet)."""
    import paddle
    from paddlenlp.trainer import TrainingArguments, set_seed

    from alignment.data import SupervisedDataset
    from alignment.models.loading import load_causal_lm, load_tokenizer, resolve_dtype, wrap_lora
    from alignment.sft.trainer import SFTTrainer
    from alignment.utils.cli import parse_args

    model_args, data_args, training_args = parse_args(
        [SFTModelArguments, DataArguments, TrainingArguments], argv
    )
    set_seed(training_args.seed)
    dtype = resolve_dtype(training_args)
    tokenizer = load_tokenizer(model_args.tokenizer_name_or_path or model_args.model_name_or_path,
                               padding_side="right", model_max_length=data_args.max_length)
    path = model_args.model_name_or_path
    pipeline = training_args.pipeline_parallel_degree > 1
    with paddle.utils.unique_name.guard():  # parameter names (optimizer-state keys) independent of earlier models
        if pipeline:
            model = sft_pipeline_model(path, training_args, model_args, dtype)
        else:
            model = load_causal_lm(path, dtype=dtype, use_flash_attention=model_args.use_flash_attention,
                                   recompute=training_args.recompute, tokenizer=tokenizer)
        if model_args.lora:  # a pipeline model gets its adapters stage by stage
            model = wrap_lora(model, model_args, dtype=dtype, base_model_name_or_path=path, seed=training_args.seed)
    train_ds, eval_ds = build_datasets(SupervisedDataset, data_args, tokenizer, training_args.seed)
    trainer = SFTTrainer(
        model=model, args=training_args, train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=train_ds.get_collator(), tokenizer=tokenizer,
    )
    trainer.model_args = model_args
    return trainer


def main(argv: Optional[Sequence[str]] = None):
    """Parse ``[config.json] [--flag value ...]``, train, save; returns the trainer."""
    trainer = build_trainer(argv)
    run_trainer(trainer, trainer.args)
    if trainer.model_args.lora and trainer.model_args.merge_lora_on_save:
        save_merged_lora(trainer, trainer.args.output_dir)
    return trainer


if __name__ == "__main__":
    from alignment.utils.cli import run_cli

    run_cli(main)  # one-line errors, exit 2 for user errors (--debug shows the traceback)
    from alignment.parallel import ParallelStrategy

    ParallelStrategy.current().shutdown()

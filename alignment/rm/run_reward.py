"""Reward-model training: a score model learns to rank the chosen answer above the rejected one.

    python alignment/rm/run_reward.py config/llama/rm_argument.json
    python alignment/rm/run_reward.py config/llama/tiny/rm_argument.json --loss_type token-wise
    python -m paddle.distributed.launch --nproc_per_node 2 alignment/rm/run_reward.py \
        config/llama/tiny/rm_argument.json
    python alignment/rm/run_reward.py config/llama/tiny/cost_argument.json     # a cost model (score_type cost)

The argument file holds the fields of ``RewardModelArguments``, ``RewardDataArguments`` and
``RewardArguments`` (alignment/rm/config.py) and PaddleNLP's ``TrainingArguments``; ``--flag value``
overrides it, an unknown key is an error. The score model starts from ``model_name_or_path`` with a new head
(``init_score_head``, default true) and the data is a ``PreferenceDataset`` (alignment/data).

``score_type: cost`` trains a Safe RLHF cost model (arXiv 2310.12773) instead: the data is a
``SafetyPreferenceDataset`` (PKU-SafeRLHF layout: safer_response_id, is_response_*_safe), the loss is the
registered "cost" loss of ``loss_type`` (sequence-wise / token-wise, with ``regularization``) and the metrics
are pair accuracy (``accuracy``: c_unsafer > c_safer) and ``sign_accuracy`` (cost > 0 exactly for unsafe
responses), in training logs and in eval.

Output (``output_dir``): a score-model checkpoint (config.json with score_type / normaliser fields,
model_state.pdparams, value_head.safetensors) that ``ScoreModel.from_pretrained`` loads as a reward model
and PPO loads as reward model and critic init, the tokenizer, and ``metrics.jsonl`` (train loss, accuracy,
rewards/*; eval_accuracy, eval_rewards/* ...).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python alignment/rm/run_reward.py ...`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from alignment.rm.config import RewardArguments, RewardDataArguments, RewardModelArguments  # noqa: E402

__all__ = ["main", "build_trainer", "load_score_model"]


def load_score_model(model_args: RewardModelArguments, training_args, tokenizer=None):
    """The score model to train (a new head unless ``init_score_head`` is false), embeddings fit the tokenizer;
    with ``lora`` a ``LoRAModel`` around it whose adapters and score head train (``wrap_score_lora``)."""
    from alignment.models import ScoreModel, resolve_dtype

    cfg = model_args.score_config()
    model = ScoreModel.from_pretrained(
        model_args.model_name_or_path,
        init_score_head=model_args.init_score_head,
        dtype=resolve_dtype(training_args),
        score_type=cfg.score_type,
        do_normalize=cfg.do_normalize,
        normalizer_type=cfg.normalizer_type,
        momentum=cfg.momentum,
        bias=cfg.bias,
        use_flash_attention=model_args.use_flash_attention,
        recompute=training_args.recompute,
    )
    if tokenizer is not None:
        from alignment.data import ensure_pad_token

        ensure_pad_token(tokenizer, model)
    if model_args.lora:
        from alignment.models.loading import wrap_score_lora

        model = wrap_score_lora(model, model_args, base_model_name_or_path=model_args.model_name_or_path,
                                seed=training_args.seed)
    return model


def score_pipeline_model(model_args: RewardModelArguments, reward_args, training_args):
    """The score model as pipeline stages whose last stage computes the pair loss (cost models: the cost loss
    on safer / unsafer rows with their safety signs as labels)."""
    from functools import partial

    from alignment.models import resolve_dtype
    from alignment.models.pipeline import load_score_model_pipe, pipeline_inputs, stack_pairs
    from alignment.models.score_model import has_score_head, normalizer_tensors
    from alignment.rm.trainer import COST_PIPELINE_LABELS, PIPELINE_LABELS, cost_loss_criterion, pair_loss_criterion

    path = model_args.model_name_or_path
    if not model_args.init_score_head and not has_score_head(path):
        raise ValueError(f"'{path}' has no score head; pass --init_score_head true to start a new one")
    cfg = model_args.score_config()
    cost = model_args.score_type == "cost"
    criterion = cost_loss_criterion(reward_args) if cost else pair_loss_criterion(reward_args)
    model = load_score_model_pipe(path, criterion=criterion,
                                  dtype=resolve_dtype(training_args), bias=cfg.bias,
                                  use_flash_attention=model_args.use_flash_attention,
                                  recompute=training_args.recompute)
    model.score_config = cfg
    model.frozen_state = normalizer_tensors(path, cfg)  # not trained under PP; saved with the weights
    labels, transform = ((COST_PIPELINE_LABELS, partial(stack_pairs, first="safer", second="unsafer")) if cost
                         else (PIPELINE_LABELS, stack_pairs))
    model._prepare_pipeline_inputs_func = partial(
        pipeline_inputs, first=("input_ids", "attention_mask"), labels=labels, transform=transform)
    return model


def build_trainer(argv: Optional[Sequence[str]] = None):
    """Parse the arguments; build the score model, the data and the ``RewardTrainer`` (nothing trained yet)."""
    from paddlenlp.trainer import TrainingArguments, set_seed

    from alignment.data import PreferenceDataset, SafetyPreferenceDataset
    from alignment.models import load_tokenizer
    from alignment.rm.trainer import RewardTrainer
    from alignment.training.runner import build_datasets
    from alignment.utils.cli import parse_args

    model_args, data_args, reward_args, training_args = parse_args(
        [RewardModelArguments, RewardDataArguments, RewardArguments, TrainingArguments], argv
    )
    pipeline = training_args.pipeline_parallel_degree > 1
    if pipeline and model_args.lora:
        raise ValueError("lora in the reward-model stage runs without pipeline parallelism (set "
                         "pipeline_parallel_degree 1; tensor and data parallelism work)")
    cost = model_args.score_type == "cost"
    if pipeline and model_args.normalize_score_during_training:
        raise ValueError("normalize_score_during_training needs the end scores of every rank in one place; it is "
                         "not available with pipeline_parallel_degree > 1 (set it false, or use tensor parallelism)")
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.tokenizer_name_or_path or model_args.model_name_or_path,
                               padding_side="right", model_max_length=data_args.max_length)
    import paddle

    with paddle.utils.unique_name.guard():  # parameter names (optimizer-state keys) independent of earlier models
        if pipeline:
            model = score_pipeline_model(model_args, reward_args, training_args)
        else:
            model = load_score_model(model_args, training_args, tokenizer)
    dataset_cls = SafetyPreferenceDataset if cost else PreferenceDataset
    train_ds, eval_ds = build_datasets(dataset_cls, data_args, tokenizer, training_args.seed)
    trainer = RewardTrainer(
        model=model, args=training_args, reward_args=reward_args, score_type=model_args.score_type,
        train_dataset=train_ds, eval_dataset=eval_ds,
        data_collator=train_ds.get_collator(), tokenizer=tokenizer,
    )
    trainer.lora_merge = bool(model_args.lora and model_args.merge_lora_on_save)
    return trainer


def main(argv: Optional[Sequence[str]] = None):
    """Parse ``[config.json] [--flag value ...]``, train, save; returns the trainer."""
    from alignment.training.runner import run_trainer

    trainer = build_trainer(argv)
    run_trainer(trainer, trainer.args)
    trained = trainer.args.do_train or not trainer.args.do_eval
    if trainer.lora_merge and trained:  # the merged score model next to the adapters
        trainer.save_merged(trainer.args.output_dir)
    return trainer


if __name__ == "__main__":
    from alignment.utils.cli import run_cli

    run_cli(main)  # one-line errors, exit 2 for user errors (--debug shows the traceback)
    from alignment.parallel import ParallelStrategy

    ParallelStrategy.current().shutdown()

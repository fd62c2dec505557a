"""Entry point of PPO (and GRPO / REINFORCE++ / RLOO) training.

    python alignment/ppo/run_ppo.py config/llama/ppo_argument.json [--flag value ...]            # one process
    python -m paddle.distributed.launch --nproc_per_node 2 alignment/ppo/run_ppo.py config/...    # data parallel

Outputs ``output_dir/policy`` (causal LM), ``output_dir/value`` (critic score model, PPO only),
``output_dir/checkpoint-N`` (resumable), ``output_dir/metrics.jsonl``, ``output_dir/ppo_curves.png`` and the
VisualDL logs under ``output_dir/runs`` (``logging_dir``).

Rule-based rewards by name (no reward model needed; several combine with reward_weights)::

    python alignment/ppo/run_ppo.py config/llama/tiny/grpo_argument.json --reward_funcs accuracy format

Safe RLHF (PPO-Lagrangian): give a cost model (``alignment/rm`` with ``score_type cost``); the run keeps the mean
episode cost under ``threshold`` with a Lagrange multiplier (``lambda_*`` options) and also writes
``output_dir/cost_value`` (the cost critic)::

    python alignment/ppo/run_ppo.py config/llama/tiny/ppo_lag_argument.json

Programmatic use with a Python reward (no reward model)::

    from alignment.ppo.run_ppo import main
    main(["config/llama/tiny/ppo_argument.json", "--rl_algorithm", "grpo"], reward_fn=my_reward)
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

if __package__ in (None, ""):  # `python alignment/ppo/run_ppo.py`: make the repository importable
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

__all__ = ["main", "build_datasets", "build_trainer"]


def build_datasets(data_args, args, actor_tokenizer):
    """Prompt (train/eval) and ptx datasets; prompts are capped so prompt + response fits max_length."""
    from alignment.data import PromptOnlyDataset, SupervisedDataset

    max_prompt = data_args.max_prompt_len or max(data_args.max_length - args.max_dec_len, data_args.max_length // 2)
    max_prompt = min(max_prompt, data_args.max_length - args.max_dec_len)
    train = PromptOnlyDataset(data_args.train_datasets, actor_tokenizer, max_length=max_prompt, seed=args.seed) if args.do_train else None
    evald = (
        PromptOnlyDataset(data_args.eval_datasets, actor_tokenizer, max_length=max_prompt, seed=args.seed)
        if args.do_eval and data_args.eval_datasets
        else None
    )
    ptx = (
        SupervisedDataset(data_args.ptx_datasets, actor_tokenizer, max_length=data_args.max_length, seed=args.seed)
        if data_args.ptx_datasets and args.ptx_coeff > 0
        else None
    )
    return train, evald, ptx


def build_trainer(model_args, data_args, args, *, reward_fn=None, strategy=None, cost_fn=None):
    """Strategy, models and datasets -> a ready ``PPOTrainer`` (a ``cost_fn`` or ``cost_model_name_or_path``:
    PPO-Lagrangian)."""
    import paddle

    from alignment.parallel import ParallelStrategy

    from alignment.ppo.config import check_consistency
    from alignment.ppo.models import build_models
    from alignment.ppo.trainer import PPOTrainer

    check_consistency(model_args, data_args, args, has_reward_fn=reward_fn is not None,
                      has_cost_fn=cost_fn is not None)
    strategy = strategy or ParallelStrategy.from_args(args).init()
    paddle.seed(args.seed)  # same initialisation on every rank (a new critic head, for instance)
    # a Python reward_fn replaces the reward model; reward_funcs combine with it when both are given
    with_rm = reward_fn is None and model_args.reward_model_name_or_path is not None
    models = build_models(model_args, data_args, args, strategy, with_reward_model=with_rm,
                          with_cost_model=cost_fn is None, with_cost_fn=cost_fn is not None)
    train, evald, ptx = build_datasets(data_args, args, models.actor_tokenizer)
    return PPOTrainer(
        args, models=models, strategy=strategy, train_dataset=train, reward_fn=reward_fn,
        eval_dataset=evald, ptx_dataset=ptx, max_length=data_args.max_length, cost_fn=cost_fn,
    )


def main(argv: Optional[List[str]] = None, *, reward_fn=None, cost_fn=None):
    from alignment.utils.cli import parse_args

    from alignment.ppo.config import DataArgument, ModelArgument, PPOArguments

    model_args, data_args, args = parse_args([ModelArgument, DataArgument, PPOArguments], argv)
    trainer = build_trainer(model_args, data_args, args, reward_fn=reward_fn, cost_fn=cost_fn)
    if args.do_train:
        return trainer.train()
    return trainer.evaluate()


if __name__ == "__main__":
    from alignment.utils.cli import run_cli

    run_cli(main)  # one-line errors, exit 2 for user errors (--debug shows the traceback)
    from alignment.parallel import ParallelStrategy

    ParallelStrategy.current().shutdown()

"""Reward-model stage: ``run_reward.py`` (entry point), ``RewardTrainer`` (pairwise loss from
``alignment.algorithms``, kind "reward"), typed arguments. The model is ``alignment.models.ScoreModel``.

    python alignment/rm/run_reward.py config/llama/tiny/rm_argument.json [--flag value ...]
"""

from .config import RewardArguments, RewardDataArguments, RewardModelArguments
from .trainer import RewardTrainer, reward_metrics

__all__ = ["RewardTrainer", "RewardArguments", "RewardDataArguments", "RewardModelArguments", "reward_metrics"]

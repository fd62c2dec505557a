"""The reward server (``python -m alignment.serve.reward``) and the client the PPO/GRPO trainer uses
(``reward_funcs remote``). HTTP + JSON, standard library only."""

from .client import RewardClient, RewardServerError

__all__ = ["RewardClient", "RewardServerError"]

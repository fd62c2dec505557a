"""Rollout: batched generation with a KV cache (``generation``), the replaceable per-step sampler
(``sampling``), and the ``Experience`` of a rollout batch with the batched forward passes that fill it
(``experience``). Nothing here imports ``paddle.distributed``; models arrive unwrapped.
"""

from .experience import (
    Experience,
    Retokenizer,
    RewardFn,
    chunked_response_logps,
    chunked_token_logps,
    concat_rollouts,
    make_experience,
    logits_response_logps,
    response_logps,
    response_values,
    scores_response_values,
    reward_scores,
)
from .generation import GenerationConfig, RolloutBatch, eval_mode, generate, make_position_ids
from .sampling import available_samplers, get_sampler, register_sampler, sample_next_token

__all__ = [
    "Experience",
    "GenerationConfig",
    "Retokenizer",
    "RewardFn",
    "RolloutBatch",
    "available_samplers",
    "chunked_response_logps",
    "chunked_token_logps",
    "concat_rollouts",
    "eval_mode",
    "generate",
    "get_sampler",
    "make_experience",
    "make_position_ids",
    "register_sampler",
    "logits_response_logps",
    "response_logps",
    "response_values",
    "scores_response_values",
    "reward_scores",
    "sample_next_token",
]

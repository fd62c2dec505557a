"""Models: the score model (reward / cost / critic) and the loading helpers every stage shares.

    from alignment.models import ScoreModel, load_tokenizer, load_causal_lm, wrap_lora, freeze
"""

from .loading import (
    DTYPES,
    LoraArguments,
    count_parameters,
    freeze,
    load_backbone,
    load_causal_lm,
    load_config,
    load_tokenizer,
    merge_lora_state_dict,
    resolve_dtype,
    wrap_lora,
)
from .score_model import (
    NORMALIZER_TYPES,
    SCORE_TYPES,
    VALUE_HEAD_NAME,
    ScoreConfig,
    ScoreHeadMissingError,
    ScoreModel,
    ScoreOutput,
    has_score_head,
)

__all__ = [
    "ScoreModel",
    "ScoreConfig",
    "ScoreOutput",
    "ScoreHeadMissingError",
    "SCORE_TYPES",
    "NORMALIZER_TYPES",
    "VALUE_HEAD_NAME",
    "has_score_head",
    "DTYPES",
    "LoraArguments",
    "resolve_dtype",
    "load_tokenizer",
    "load_config",
    "load_causal_lm",
    "load_backbone",
    "wrap_lora",
    "merge_lora_state_dict",
    "freeze",
    "count_parameters",
]

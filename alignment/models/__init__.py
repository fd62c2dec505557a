"""Models: the score model (reward / cost / critic) and the loading helpers every stage shares.

    from alignment.models import ScoreModel, load_tokenizer, load_causal_lm, wrap_lora, freeze

Importing this package gives PaddleNLP's ``LlamaRMSNorm`` / ``Qwen2RMSNorm`` the fused RMSNorm forward
(``alignment.ops.norm.install_rms_norm``; PaddleNLP's own forward wherever it does not apply or ``use_fusemt``
is off) and their non-flash attention the fused masked softmax (``alignment.ops.masked_softmax.install_attention``,
the same rule).
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

from . import loading as _loading
from . import score_model as _score_model

# Llama / Qwen2 RMSNorm layers through the fused operator where it applies (use_fusemt; alignment.ops.norm):
# every stage loads its models through this package, and the classes are imported above already.
from alignment.ops.masked_softmax import install_attention as _install_attention
from alignment.ops.norm import install_rms_norm as _install_rms_norm

_install_rms_norm()
# Llama / Qwen2 non-flash attention through the fused masked softmax where it applies (ops.masked_softmax)
_install_attention()

__all__ = [name for name in _score_model.__all__ + _loading.__all__ if name in globals()]

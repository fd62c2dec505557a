"""Typed batches that flow from the collators to the trainers (one vocabulary everywhere).

Shapes: B = batch size, L = padded sequence length, P = padded prompt length. Token ids are int64,
masks are int64 0/1 (1 = real token), labels use -100 (``IGNORE_INDEX``) outside the supervised part.
Right padding for training batches, left padding for generation prompts.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict

import paddle

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "SupervisedBatch",
    "PreferenceBatch",
    "SafetyPreferenceBatch",
    "PromptOnlyBatch",
    "UnpairedPreferenceBatch",
]


class SupervisedBatch(TypedDict):
    input_ids: paddle.Tensor  # size = (B, L), right padded with pad_token_id
    labels: paddle.Tensor  # size = (B, L), input_ids on answer tokens (incl. EOS), IGNORE_INDEX elsewhere
    attention_mask: paddle.Tensor  # size = (B, L)
    position_ids: paddle.Tensor  # size = (B, L)


class PreferenceBatch(TypedDict, total=False):
    chosen_input_ids: paddle.Tensor  # size = (B, L), prompt + better answer + EOS, right padded
    chosen_attention_mask: paddle.Tensor  # size = (B, L)
    chosen_labels: paddle.Tensor  # size = (B, L), IGNORE_INDEX on prompt and padding
    rejected_input_ids: paddle.Tensor  # size = (B, L), same L as chosen
    rejected_attention_mask: paddle.Tensor  # size = (B, L)
    rejected_labels: paddle.Tensor  # size = (B, L)
    margin: paddle.Tensor  # size = (B,), float32; present only when the data has a margin column


class SafetyPreferenceBatch(TypedDict):
    safer_input_ids: paddle.Tensor  # size = (B, L)
    safer_attention_mask: paddle.Tensor  # size = (B, L)
    safer_labels: paddle.Tensor  # size = (B, L)
    safer_safety_sign: paddle.Tensor  # size = (B,), +1 safe / -1 unsafe (int64)
    unsafer_input_ids: paddle.Tensor  # size = (B, L)
    unsafer_attention_mask: paddle.Tensor  # size = (B, L)
    unsafer_labels: paddle.Tensor  # size = (B, L)
    unsafer_safety_sign: paddle.Tensor  # size = (B,)
    better_is_safer: paddle.Tensor  # size = (B,), 1 if the helpfulness-better answer is the safer one


class PromptOnlyBatch(TypedDict, total=False):
    input_ids: paddle.Tensor  # size = (B, P), LEFT padded with pad_token_id
    attention_mask: paddle.Tensor  # size = (B, P)
    position_ids: paddle.Tensor  # size = (B, P), 0 on left pads, 0.. on real tokens
    prompts: List[str]  # the formatted prompt texts (for logging and rule-based rewards)
    answers: List[Optional[str]]  # reference answers/solutions when the raw data has them (e.g. gsm8k)
    columns: List[Dict[str, Any]]  # the records' extra scalar columns (for user reward functions)


class UnpairedPreferenceBatch(TypedDict):
    input_ids: paddle.Tensor  # size = (B, L), prompt + completion + EOS
    attention_mask: paddle.Tensor  # size = (B, L)
    labels: paddle.Tensor  # size = (B, L), IGNORE_INDEX outside the completion
    kto_labels: paddle.Tensor  # size = (B,), 1 desirable / 0 undesirable (int64)
    kl_input_ids: paddle.Tensor  # size = (B, L'), prompt i + completion (i-1) mod B: KTO's KL reference point
    kl_attention_mask: paddle.Tensor  # size = (B, L')
    kl_labels: paddle.Tensor  # size = (B, L')

"""Collators: lists of tokenized samples -> the typed batches of ``batches.py`` (paddle int64 tensors).

Training batches are right padded, generation prompts left padded, always with the tokenizer's real pad id.
Attention masks come from the true lengths, never from ``token != pad``; labels are ``IGNORE_INDEX`` on the
prompt and the padding and keep the EOS of every answer; position ids count real tokens from 0 and are 0
on padding.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from .batches import (
    IGNORE_INDEX,
    PreferenceBatch,
    PromptOnlyBatch,
    SafetyPreferenceBatch,
    SupervisedBatch,
    UnpairedPreferenceBatch,
)

__all__ = [
    "pad_sequences",
    "SupervisedCollator",
    "PreferenceCollator",
    "SafetyPreferenceCollator",
    "PromptOnlyCollator",
    "UnpairedPreferenceCollator",
]


def _tensor(array: np.ndarray) -> paddle.Tensor:
    return paddle.to_tensor(np.ascontiguousarray(array, dtype=np.int64))


def _padded_length(lengths: Sequence[int], pad_to_multiple_of: Optional[int]) -> int:
    length = max(lengths) if lengths else 0
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return length


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    pad_value: int,
    side: str = "right",
    length: Optional[int] = None,
    pad_to_multiple_of: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad 1-D sequences into ``(values [B, L], attention_mask [B, L], position_ids [B, L])`` (int64)."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    lengths = [len(s) for s in sequences]
    L = length if length is not None else _padded_length(lengths, pad_to_multiple_of)
    values = np.full((len(sequences), L), pad_value, dtype=np.int64)
    mask = np.zeros((len(sequences), L), dtype=np.int64)
    positions = np.zeros((len(sequences), L), dtype=np.int64)
    for row, (seq, n) in enumerate(zip(sequences, lengths, strict=True)):
        span = slice(0, n) if side == "right" else slice(L - n, L)
        values[row, span] = np.asarray(seq, dtype=np.int64)
        mask[row, span] = 1
        positions[row, span] = np.arange(n)
    return values, mask, positions


class _Collator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: Optional[int] = None) -> None:
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; call alignment.data.ensure_pad_token(tokenizer, model)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def _right(self, sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], length: int):
        ids, mask, pos = pad_sequences(sequences, self.pad_token_id, "right", length)
        lab, _, _ = pad_sequences(labels, IGNORE_INDEX, "right", length)
        return ids, mask, pos, lab


class SupervisedCollator(_Collator):
    def __call__(self, samples: List[Dict[str, Any]]) -> SupervisedBatch:
        L = _padded_length([len(s["input_ids"]) for s in samples], self.pad_to_multiple_of)
        ids, mask, pos, labels = self._right(
            [s["input_ids"] for s in samples], [s["labels"] for s in samples], L
        )
        return SupervisedBatch(
            input_ids=_tensor(ids),
            labels=_tensor(labels),
            attention_mask=_tensor(mask),
            position_ids=_tensor(pos),
        )


class PreferenceCollator(_Collator):
    """Chosen and rejected share one padded length L (the longest of all 2B sequences)."""

    def __call__(self, samples: List[Dict[str, Any]]) -> PreferenceBatch:
        lengths = [len(s[k]) for s in samples for k in ("chosen_input_ids", "rejected_input_ids")]
        L = _padded_length(lengths, self.pad_to_multiple_of)
        batch = PreferenceBatch()
        for side in ("chosen", "rejected"):
            ids, mask, _, labels = self._right(
                [s[f"{side}_input_ids"] for s in samples], [s[f"{side}_labels"] for s in samples], L
            )
            batch[f"{side}_input_ids"] = _tensor(ids)
            batch[f"{side}_attention_mask"] = _tensor(mask)
            batch[f"{side}_labels"] = _tensor(labels)
        if all("margin" in s for s in samples):
            batch["margin"] = paddle.to_tensor(np.asarray([s["margin"] for s in samples], dtype=np.float32))
        return batch


class SafetyPreferenceCollator(_Collator):
    def __call__(self, samples: List[Dict[str, Any]]) -> SafetyPreferenceBatch:
        lengths = [len(s[k]) for s in samples for k in ("safer_input_ids", "unsafer_input_ids")]
        L = _padded_length(lengths, self.pad_to_multiple_of)
        batch: Dict[str, paddle.Tensor] = {}
        for side in ("safer", "unsafer"):
            ids, mask, _, labels = self._right(
                [s[f"{side}_input_ids"] for s in samples], [s[f"{side}_labels"] for s in samples], L
            )
            batch[f"{side}_input_ids"] = _tensor(ids)
            batch[f"{side}_attention_mask"] = _tensor(mask)
            batch[f"{side}_labels"] = _tensor(labels)
            batch[f"{side}_safety_sign"] = _tensor(np.asarray([s[f"{side}_safety_sign"] for s in samples]))
        batch["better_is_safer"] = _tensor(np.asarray([s["better_is_safer"] for s in samples]))
        return SafetyPreferenceBatch(**batch)


class PromptOnlyCollator(_Collator):
    """Left padding, so every prompt ends at the same column and generation continues all rows at once."""

    def __call__(self, samples: List[Dict[str, Any]]) -> PromptOnlyBatch:
        ids, mask, pos = pad_sequences(
            [s["input_ids"] for s in samples],
            self.pad_token_id,
            "left",
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        return PromptOnlyBatch(
            input_ids=_tensor(ids),
            attention_mask=_tensor(mask),
            position_ids=_tensor(pos),
            prompts=[s.get("prompt") for s in samples],
            answers=[s.get("answer") for s in samples],
            columns=[s.get("columns") or {} for s in samples],
        )


class UnpairedPreferenceCollator(_Collator):
    """KTO batches. The KL reference pairs prompt ``i`` with completion ``(i - 1) mod B`` (a mismatched
    completion, KTO paper arXiv:2402.01306 section 4.1); each KL sequence is cut to ``max_length``."""

    def __init__(self, pad_token_id: int, max_length: int, pad_to_multiple_of: Optional[int] = None) -> None:
        super().__init__(pad_token_id, pad_to_multiple_of)
        self.max_length = max_length

    def __call__(self, samples: List[Dict[str, Any]]) -> UnpairedPreferenceBatch:
        seqs = [s["input_ids"] for s in samples]
        L = _padded_length([len(s) for s in seqs], self.pad_to_multiple_of)
        ids, mask, _, labels = self._right(seqs, [s["labels"] for s in samples], L)

        kl_ids, kl_labels = [], []
        B = len(samples)
        for i, sample in enumerate(samples):
            other = samples[(i - 1) % B]
            prompt = list(sample["input_ids"][: sample["prompt_length"]])
            completion = list(other["input_ids"][other["prompt_length"] :])
            completion = completion[: max(self.max_length - len(prompt), 0)]
            kl_ids.append(prompt + completion)
            kl_labels.append([IGNORE_INDEX] * len(prompt) + completion)
        L_kl = _padded_length([len(s) for s in kl_ids], self.pad_to_multiple_of)
        k_ids, k_mask, _, k_labels = self._right(kl_ids, kl_labels, L_kl)
        return UnpairedPreferenceBatch(
            input_ids=_tensor(ids),
            attention_mask=_tensor(mask),
            labels=_tensor(labels),
            kto_labels=_tensor(np.asarray([int(s["kto_label"]) for s in samples])),
            kl_input_ids=_tensor(k_ids),
            kl_attention_mask=_tensor(k_mask),
            kl_labels=_tensor(k_labels),
        )

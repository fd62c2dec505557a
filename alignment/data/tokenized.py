"""Tokenized datasets: raw samples -> token ids and label masks, ready for the collators.

    ds = PreferenceDataset("PKU-SafeRLHF/train:0.5,json:1.0:/data/pairs.jsonl", tokenizer, max_length=512)
    loader = paddle.io.DataLoader(ds, batch_size=8, shuffle=True, collate_fn=ds.get_collator())

Every dataset tokenizes eagerly at construction (so samples that cannot fit are known, counted and logged
once), prompt and answers are tokenized as separate segments (``templates.render_segments``) and every
answer ends with the EOS id. Truncation ``keep_prompt_end`` (default): when prompt + answer is longer than
``max_length``, the answer keeps at least ``min_answer_tokens`` tokens (its tail is cut first) and the prompt
loses tokens from its start (the BOS stays); ``drop`` drops every sample that does not fit. A sample that
still cannot fit is dropped and counted.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle

from .batches import IGNORE_INDEX
from .collators import (
    PreferenceCollator,
    PromptOnlyCollator,
    SafetyPreferenceCollator,
    SupervisedCollator,
    UnpairedPreferenceCollator,
)
from .mixing import MixedRawDataset, SpecLike, load_raw_datasets, mix_raw_datasets, parse_dataset_spec
from .raw import DataError, RawDataset, RawSample
from .templates import TEMPLATES, format_prompt, render_segments

__all__ = [
    "TRUNCATION_MODES",
    "ensure_pad_token",
    "check_pad_token",
    "TokenizedDataset",
    "SupervisedDataset",
    "PreferenceDataset",
    "SafetyPreferenceDataset",
    "PromptOnlyDataset",
    "UnpairedPreferenceDataset",
]

logger = logging.getLogger("alignment.data")

TRUNCATION_MODES = ("keep_prompt_end", "drop")


# ============================================================================ pad token


def check_pad_token(tokenizer: Any) -> int:
    """The tokenizer's pad id; raises ``ValueError`` if it has none or it equals EOS (then a padded EOS would
    be indistinguishable from padding, the bug PaddleNLP's RLHF has with LLaMA)."""
    pad, eos = getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if pad is None or pad == eos:
        problem = "has no pad token" if pad is None else f"uses the EOS token (id {eos}) as its pad token"
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} {problem}; the data layer needs a distinct pad token. "
            "Call alignment.data.ensure_pad_token(tokenizer, model) to add '<pad>' (it also resizes the "
            "model's embeddings) before building datasets."
        )
    return int(pad)


def ensure_pad_token(tokenizer: Any, model: Any = None, pad_token: str = "<pad>") -> int:
    """Give ``tokenizer`` a pad token distinct from EOS (adding ``pad_token`` if needed) and, when ``model``
    is given, resize its token embeddings and set ``config.pad_token_id``. Returns the pad id."""
    pad, eos = getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if pad is None or pad == eos:
        tokenizer.add_special_tokens({"pad_token": pad_token})
        pad = tokenizer.pad_token_id
        if pad is None or pad == eos:
            raise ValueError(
                f"could not add a distinct pad token {pad_token!r} to {type(tokenizer).__name__}"
            )
    if model is not None:
        embeddings = model.get_input_embeddings()
        config = getattr(model, "config", None)
        # the config's vocab_size, not the weight's rows: under tensor parallelism a rank holds V / tp rows
        rows = int(getattr(config, "vocab_size", 0) or 0) or (
            embeddings.weight.shape[0] if embeddings is not None else 0)
        if embeddings is not None and rows < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        if getattr(model, "config", None) is not None:
            model.config.pad_token_id = pad
    return int(pad)


# ============================================================================ encoding


class _Encoder:
    """Tokenizes rendered segments and applies the truncation policy."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        template: str,
        truncation: str,
        min_answer_tokens: int,
        max_prompt_length: Optional[int],
        system: Optional[str],
    ) -> None:
        if template not in TEMPLATES:
            raise DataError(f"unknown template '{template}'; allowed templates: {', '.join(TEMPLATES)}")
        if template == "chat":
            render_segments("x", template="chat", tokenizer=tokenizer)  # fails early without a chat template
        if truncation not in TRUNCATION_MODES:
            raise DataError(f"unknown truncation '{truncation}'; allowed: {', '.join(TRUNCATION_MODES)}")
        if not isinstance(max_length, int) or max_length < 2:
            raise DataError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.tokenizer, self.template, self.system = tokenizer, template, system
        self.max_length, self.truncation = max_length, truncation
        self.min_answer_tokens, self.max_prompt_length = max(int(min_answer_tokens), 1), max_prompt_length
        self.eos = int(tokenizer.eos_token_id)
        bos = getattr(tokenizer, "bos_token_id", None)
        adds_bos = bos is not None and self._ids("a", special=True)[:1] == [bos]
        self.bos = [int(bos)] if adds_bos and template != "chat" else []

    def _ids(self, text: str, special: bool = False) -> List[int]:
        if not text:
            return []
        out = self.tokenizer(text, add_special_tokens=special, return_attention_mask=False)["input_ids"]
        return [int(i) for i in out]

    def answer(self, text: str) -> List[int]:
        return self._ids(text) + [self.eos]

    def segments(
        self, turns: Union[str, Sequence[str]], system: Optional[str]
    ) -> List[Tuple[List[int], bool]]:
        """[(ids, is_assistant)] of a rendered dialogue; the first segment carries the BOS, every assistant
        segment ends with EOS."""
        out: List[Tuple[List[int], bool]] = []
        for kind, text in render_segments(
            turns, template=self.template, tokenizer=self.tokenizer, system=system
        ):
            if kind == "assistant":
                out.append((self.answer(text), True))
            else:
                out.append(((self.bos if not out else []) + self._ids(text), False))
        return out

    def prompt(self, turns: Union[str, Sequence[str]], system: Optional[str]) -> List[int]:
        return [i for ids, _ in self.segments(turns, system) for i in ids]

    def plan(self, prompt_len: int, tail_len: int) -> Optional[Tuple[int, int]]:
        """(prompt tokens to keep from the end, tail tokens to keep from the start), or None to drop."""
        keep_prompt = (
            prompt_len if self.max_prompt_length is None else min(prompt_len, self.max_prompt_length)
        )
        if keep_prompt < prompt_len and self.truncation == "drop":
            return None
        if keep_prompt + tail_len <= self.max_length:
            return keep_prompt, tail_len
        if self.truncation == "drop":
            return None
        min_tail = min(tail_len, self.min_answer_tokens)
        if keep_prompt + min_tail <= self.max_length:
            return keep_prompt, self.max_length - keep_prompt
        keep_prompt = self.max_length - min_tail
        if keep_prompt < len(self.bos) + 1:  # not even one prompt token next to the minimal answer
            return None
        return keep_prompt, min_tail

    def cut_prompt(self, prompt: List[int], keep: int) -> List[int]:
        """The last ``keep`` tokens of ``prompt``, the BOS kept in front."""
        if keep >= len(prompt):
            return list(prompt)
        n_bos = len(self.bos) if prompt[: len(self.bos)] == self.bos else 0
        return prompt[:n_bos] + prompt[len(prompt) - (keep - n_bos) :]


def _array(ids: Sequence[int]) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64)


def _sequence(prompt: List[int], tail: List[int], tail_labels: Optional[List[int]] = None):
    labels = [IGNORE_INDEX] * len(prompt) + (list(tail) if tail_labels is None else list(tail_labels))
    return _array(prompt + list(tail)), _array(labels)


# ============================================================================ base


class TokenizedDataset(paddle.io.Dataset):
    """Common base. ``datasets`` is a spec (``"name:ratio[:path],..."``, a dict, a list of ``(name,
    ratio | dict)``, or raw datasets); see ``mixing.py``."""

    COLLATOR: Callable[..., Any] = SupervisedCollator

    def __init__(
        self,
        datasets: SpecLike,
        tokenizer: Any,
        max_length: int = 512,
        *,
        seed: int = 42,
        template: str = "beaver",
        truncation: str = "keep_prompt_end",
        min_answer_tokens: int = 16,
        max_prompt_length: Optional[int] = None,
        system: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.pad_token_id = check_pad_token(tokenizer)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.seed = seed
        self._encoder = _Encoder(
            tokenizer, max_length, template, truncation, min_answer_tokens, max_prompt_length, system
        )
        self.raw = (
            datasets if isinstance(datasets, MixedRawDataset) else load_raw_datasets(datasets, seed=seed)
        )
        self.samples: List[Dict[str, Any]] = []
        self.dropped: Counter = Counter()
        for index in self._selected_indices():
            built = self._build(self.raw[index], self.raw.locate(index))
            if isinstance(built, str):
                self.dropped[built] += 1
            else:
                self.samples.extend(built if isinstance(built, list) else [built])
        if self.dropped:
            reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.items())
            logger.warning(
                "%s: dropped %d of %d samples (%s; max_length=%d, truncation=%s)",
                type(self).__name__,
                sum(self.dropped.values()),
                len(self.raw),
                reasons,
                max_length,
                truncation,
            )
        if not self.samples:
            raise DataError(
                f"{type(self).__name__}: no sample left after tokenization ({dict(self.dropped)})"
            )

    @classmethod
    def from_raw(
        cls,
        raw_datasets: Union[RawDataset, Sequence[Union[RawDataset, Tuple[RawDataset, Any]]]],
        tokenizer: Any,
        max_length: int = 512,
        **kwargs: Any,
    ) -> "TokenizedDataset":
        """Build from already constructed raw datasets: ``X.from_raw([(raw, 1.0), (other, 0.5)], tok)``."""
        if isinstance(raw_datasets, RawDataset):
            raw_datasets = [raw_datasets]
        pairs = []
        for item in raw_datasets:
            raw, ratio = (item, 1.0) if isinstance(item, RawDataset) else item
            if not isinstance(raw, RawDataset):
                raise DataError(f"from_raw expects RawDataset instances, got {type(raw).__name__}")
            spec = parse_dataset_spec([(raw, ratio)])[0]
            pairs.append((raw, spec.proportion))
        mixed = mix_raw_datasets(pairs, seed=kwargs.get("seed", 42))
        return cls(mixed, tokenizer, max_length, **kwargs)

    # ------------------------------------------------------------------ hooks
    def _selected_indices(self) -> Sequence[int]:
        return range(len(self.raw))

    def _build(
        self, sample: RawSample, where: Tuple[str, int]
    ) -> Union[Dict[str, Any], List[Dict[str, Any]], str]:
        """Tokenize one raw sample; return the item, a list of items, or a drop reason (str)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ access
    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.samples[index]

    def __len__(self) -> int:
        return len(self.samples)

    def get_collator(self, pad_to_multiple_of: Optional[int] = None) -> Callable[[List[Dict[str, Any]]], Any]:
        return self.COLLATOR(self.pad_token_id, pad_to_multiple_of=pad_to_multiple_of)

    def split_train_test(
        self, ratio: float = 0.1, seed: int = 42
    ) -> Tuple["TokenizedDataset", "TokenizedDataset"]:
        """Two datasets of the same class; a seeded random ``ratio`` of the samples (>= 1) is the test."""
        if not 0 < ratio < 1:
            raise DataError(f"split ratio must be in (0, 1), got {ratio}")
        if len(self) < 2:
            raise DataError(f"cannot split a dataset of {len(self)} sample(s)")
        order = np.random.default_rng(seed).permutation(len(self))
        n_test = min(max(int(round(len(self) * ratio)), 1), len(self) - 1)
        parts = []
        for indices in (np.sort(order[n_test:]), np.sort(order[:n_test])):
            part = copy.copy(self)
            part.samples = [self.samples[i] for i in indices]
            parts.append(part)
        return parts[0], parts[1]

    # ------------------------------------------------------------------ validation helpers
    @staticmethod
    def _get(sample: Any, key: str, where: Tuple[str, int], types: Any = str, optional: bool = False) -> Any:
        if not isinstance(sample, dict):
            raise DataError(
                f"a raw sample must be a dict (RawSample), got {type(sample).__name__}",
                file=where[0],
                record=where[1],
            )
        value = sample.get(key)
        if value is None:
            if optional:
                return None
            raise DataError(
                f"required field is missing (sample has: {', '.join(sorted(sample)) or 'nothing'})",
                file=where[0],
                record=where[1],
                field=key,
            )
        accepted = types if isinstance(types, tuple) else (types,)
        if bool in accepted and isinstance(value, np.bool_):
            value = bool(value)
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            expected = " or ".join(t.__name__ for t in accepted)
            raise DataError(
                f"expected {expected}, got {type(value).__name__}", file=where[0], record=where[1], field=key
            )
        return value

    def _input(self, sample: RawSample, where: Tuple[str, int]) -> Union[str, List[str]]:
        value = self._get(sample, "input", where, (str, list))
        if isinstance(value, list):
            if len(value) % 2 == 0 or not all(isinstance(t, str) for t in value):
                raise DataError(
                    "a dialogue prompt must be a list of strings ending with a user turn (odd length), "
                    f"got {len(value)} turns",
                    file=where[0],
                    record=where[1],
                    field="input",
                )
        return value

    def _prompt_ids(self, sample: RawSample, where: Tuple[str, int]) -> List[int]:
        return self._encoder.prompt(self._input(sample, where), self._system(sample, where))

    def _system(self, sample: RawSample, where: Tuple[str, int]) -> Optional[str]:
        return self._get(sample, "system", where, optional=True) or self._encoder.system

    def _prompt_text(self, sample: RawSample, where: Tuple[str, int]) -> str:
        return format_prompt(
            self._input(sample, where),
            self.tokenizer.eos_token,
            template=self._encoder.template,
            tokenizer=self.tokenizer,
            system=self._system(sample, where),
        )


# ============================================================================ datasets


class SupervisedDataset(TokenizedDataset):
    """SFT / PTX data: loss on the answer tokens (and their EOS) only.

    Raw sample: ``input`` + ``answer`` (loss on the answer), or ``dialogue`` (alternating turns ending with
    an assistant turn; loss on every assistant turn with the beaver/raw template, on the last with "chat").
    Item: ``input_ids``, ``labels`` (int64 numpy arrays)."""

    COLLATOR = SupervisedCollator

    def _build(self, sample, where):
        enc = self._encoder
        if isinstance(sample, dict) and sample.get("dialogue") is not None:
            dialogue = self._get(sample, "dialogue", where, list)
            if len(dialogue) < 2 or len(dialogue) % 2 or not all(isinstance(t, str) for t in dialogue):
                raise DataError(
                    "a dialogue must be a list of strings ending with an assistant turn (even length), "
                    f"got {len(dialogue)}",
                    file=where[0],
                    record=where[1],
                    field="dialogue",
                )
            segments = enc.segments(dialogue, self._system(sample, where))
            prompt = segments[0][0]
            tail = [i for ids, _ in segments[1:] for i in ids]
            tail_labels = [i if is_answer else IGNORE_INDEX for ids, is_answer in segments[1:] for i in ids]
        else:
            prompt = self._prompt_ids(sample, where)
            tail = enc.answer(self._get(sample, "answer", where))
            tail_labels = tail
        plan = enc.plan(len(prompt), len(tail))
        if plan is None:
            return "too long"
        input_ids, labels = _sequence(
            enc.cut_prompt(prompt, plan[0]), tail[: plan[1]], tail_labels[: plan[1]]
        )
        if (labels == IGNORE_INDEX).all():
            return "no answer tokens left"
        return {"input_ids": input_ids, "labels": labels}


class PreferenceDataset(TokenizedDataset):
    """Pairwise preference data (reward model, DPO family): ``better`` orders (answer, other_answer) into
    (chosen, rejected). Both share the same (possibly truncated) prompt. Pairs whose token ids are identical
    are dropped and counted. Item: ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids``,
    ``rejected_labels`` (+ ``margin`` float when the raw sample has one)."""

    COLLATOR = PreferenceCollator

    def _pair(self, sample, where, first: str, second: str):
        enc = self._encoder
        prompt = self._prompt_ids(sample, where)
        a = enc.answer(self._get(sample, first, where))
        b = enc.answer(self._get(sample, second, where))
        plan = enc.plan(len(prompt), max(len(a), len(b)))
        if plan is None:
            return None
        prompt = enc.cut_prompt(prompt, plan[0])
        return _sequence(prompt, a[: plan[1]]), _sequence(prompt, b[: plan[1]])

    def _build(self, sample, where):
        better = self._get(sample, "better", where, bool)
        pair = self._pair(sample, where, "answer", "other_answer")
        if pair is None:
            return "too long"
        chosen, rejected = pair if better else pair[::-1]
        if np.array_equal(chosen[0], rejected[0]):
            return "identical chosen/rejected"
        item = {
            "chosen_input_ids": chosen[0],
            "chosen_labels": chosen[1],
            "rejected_input_ids": rejected[0],
            "rejected_labels": rejected[1],
        }
        margin = self._get(sample, "margin", where, (int, float), optional=True)
        if margin is not None:
            item["margin"] = float(margin)
        return item


class SafetyPreferenceDataset(PreferenceDataset):
    """Safety-ordered pairs (cost model, safe-rlhf): ``safer`` orders the answers into (safer, unsafer);
    ``is_safe``/``is_other_safe`` travel as signs (+1 safe, -1 unsafe). Raises if the safer answer is unsafe
    while the other is safe. Item: ``safer_*``/``unsafer_*`` ids and labels, ``*_safety_sign``,
    ``better_is_safer``."""

    COLLATOR = SafetyPreferenceCollator

    def _build(self, sample, where):
        safer = self._get(sample, "safer", where, bool)
        better = self._get(sample, "better", where, bool)
        signs = [1 if self._get(sample, k, where, bool) else -1 for k in ("is_safe", "is_other_safe")]
        if not safer:
            signs = signs[::-1]
        if signs[0] < signs[1]:
            raise DataError(
                "the safer answer is marked unsafe while the other answer is safe",
                file=where[0],
                record=where[1],
                field="safer",
            )
        pair = self._pair(sample, where, "answer", "other_answer")
        if pair is None:
            return "too long"
        first, second = pair if safer else pair[::-1]
        if np.array_equal(first[0], second[0]):
            return "identical safer/unsafer"
        return {
            "safer_input_ids": first[0],
            "safer_labels": first[1],
            "safer_safety_sign": signs[0],
            "unsafer_input_ids": second[0],
            "unsafer_labels": second[1],
            "unsafer_safety_sign": signs[1],
            "better_is_safer": int(better == safer),
        }


class PromptOnlyDataset(TokenizedDataset):
    """Prompts for generation (PPO, GRPO ...): deduplicated (first occurrence kept, same prompt + system),
    left padded by the collator; ``max_length`` bounds the prompt (its start is cut, BOS kept). Carries the
    reference ``answer`` (``solution`` if the sample has one, else ``answer``) for rule-based rewards.
    Item: ``input_ids``, ``prompt`` (text), ``answer`` (str or None), ``columns`` (the extra scalar fields)."""

    COLLATOR = PromptOnlyCollator

    def __init__(
        self,
        datasets: SpecLike,
        tokenizer: Any,
        max_length: int = 512,
        *,
        deduplicate: bool = True,
        **kw: Any,
    ):
        self.deduplicate = deduplicate
        super().__init__(datasets, tokenizer, max_length, **kw)

    def _selected_indices(self) -> Sequence[int]:
        if not self.deduplicate:
            return range(len(self.raw))
        seen, keep = set(), []
        for index in range(len(self.raw)):
            sample = self.raw[index]
            where = self.raw.locate(index)
            prompt = self._input(sample, where)
            key = (tuple(prompt) if isinstance(prompt, list) else prompt, self._system(sample, where))
            if key not in seen:
                seen.add(key)
                keep.append(index)
        self.num_duplicates = len(self.raw) - len(keep)
        if self.num_duplicates:
            logger.warning("%d of %d prompts are duplicates of an earlier one (same prompt and system) and are "
                           "dropped; the first occurrence is kept (PromptOnlyDataset(deduplicate=False) keeps them)",
                           self.num_duplicates, len(self.raw))
        return keep

    def _build(self, sample, where):
        enc = self._encoder
        prompt = self._prompt_ids(sample, where)
        if len(prompt) > self.max_length:
            if enc.truncation == "drop":
                return "too long"
            prompt = enc.cut_prompt(prompt, self.max_length)
        answer = self._get(sample, "solution", where, (str, int, float), optional=True)
        if answer is None:
            answer = self._get(sample, "answer", where, optional=True)
        from .raw import RawSample

        extras = {k: v for k, v in sample.items()
                  if k not in RawSample.__annotations__ and isinstance(v, (str, int, float, bool))}
        return {
            "input_ids": _array(prompt),
            "prompt": self._prompt_text(sample, where),
            "answer": None if answer is None else str(answer),
            "columns": extras,
        }


class UnpairedPreferenceDataset(TokenizedDataset):
    """Unpaired feedback (KTO): ``input`` + ``answer`` + ``label`` (desirable or not). A preference pair
    (``answer``, ``other_answer``, ``better``) becomes two unpaired samples (chosen desirable, rejected
    undesirable). The collator builds the mismatched KL pairs. Item: ``input_ids``, ``labels``,
    ``kto_label`` (0/1), ``prompt_length``."""

    COLLATOR = UnpairedPreferenceCollator

    def get_collator(self, pad_to_multiple_of: Optional[int] = None) -> UnpairedPreferenceCollator:
        return UnpairedPreferenceCollator(
            self.pad_token_id, self.max_length, pad_to_multiple_of=pad_to_multiple_of
        )

    def _one(self, prompt: List[int], answer: str, label: bool):
        enc = self._encoder
        tail = enc.answer(answer)
        plan = enc.plan(len(prompt), len(tail))
        if plan is None:
            return None
        cut = enc.cut_prompt(prompt, plan[0])
        input_ids, labels = _sequence(cut, tail[: plan[1]])
        return {"input_ids": input_ids, "labels": labels, "kto_label": int(label), "prompt_length": len(cut)}

    def _build(self, sample, where):
        prompt = self._prompt_ids(sample, where)
        answer = self._get(sample, "answer", where)
        label = self._get(sample, "label", where, bool, optional=True)
        if label is not None:
            item = self._one(prompt, answer, label)
            return item if item is not None else "too long"
        if sample.get("other_answer") is None:
            self._get(sample, "label", where, bool)  # raises: names the missing field
        better = self._get(sample, "better", where, bool)
        other = self._get(sample, "other_answer", where)
        items = [self._one(prompt, answer, better), self._one(prompt, other, not better)]
        items = [i for i in items if i is not None]
        return items if items else "too long"

"""Reward functions usable instead of a reward model (``PPOTrainer(reward_fn=...)`` / ``run_ppo.main(reward_fn=...)``).

A reward function is called as ``fn(sequences, attention_mask, prompts, answers, prompt_length=P,
response_mask=M)`` and returns one float per row (see ``alignment.rollout.experience.RewardFn``).

* ``TokenSetReward(token_ids, scale, offset=0, per_token=False)``: scale x fraction of response tokens in a set
  (+ offset) — a controllable reward for tests, demos and benchmarks (PPO must learn to emit those tokens); with
  ``per_token`` it returns the dense (N, R) version (scale / length at each hit, offset at the last token),
  whose row sums are the same scores (``reward_granularity: token``). As a ``cost_fn`` it makes a cost.
* ``RuleReward(tokenizer, score_text)``: decodes each response and scores the text with
  ``score_text(prompt, response, answer) -> float`` (rule-based rewards such as GSM8K correctness).
* ``gsm8k_correct(prompt, response, answer)``: 1.0 if the last number of the response equals the answer.

Named rewards chosen from the command line (``reward_funcs``) live in ``alignment.training.reward_funcs``.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, List, Optional

import paddle

__all__ = ["TokenSetReward", "RuleReward", "gsm8k_correct"]


class TokenSetReward:
    """Score = scale x (number of response tokens in ``token_ids``) / (response length, EOS included) + offset."""

    def __init__(self, token_ids: Iterable[int], scale: float = 1.0, offset: float = 0.0, per_token: bool = False):
        self.token_ids = paddle.to_tensor(sorted(set(int(t) for t in token_ids)), dtype="int64")
        self.scale, self.offset, self.per_token = float(scale), float(offset), bool(per_token)

    def __call__(self, sequences, attention_mask, prompts=None, answers=None, *, prompt_length, response_mask):
        mask = response_mask.astype("float32")
        response = sequences[:, prompt_length: prompt_length + mask.shape[1]]
        hits = paddle.isin(response, self.token_ids).astype("float32") * mask
        length = paddle.clip(mask.sum(axis=-1, keepdim=True), min=1.0)
        if self.per_token:
            last = paddle.nn.functional.one_hot((length.squeeze(-1) - 1).astype("int64"), mask.shape[1])
            return (self.scale * hits / length + self.offset * last.astype("float32")) * mask
        return self.scale * hits.sum(axis=-1) / length.squeeze(-1) + self.offset


class RuleReward:
    """Decode every response (special tokens dropped) and score it with ``score_text``."""

    def __init__(self, tokenizer, score_text: Callable[[Optional[str], str, Optional[str]], float]):
        self.tokenizer, self.score_text = tokenizer, score_text

    def __call__(self, sequences, attention_mask, prompts=None, answers=None, *, prompt_length, response_mask):
        ids = sequences[:, prompt_length:].numpy()
        mask = response_mask.numpy()
        out: List[float] = []
        for b in range(ids.shape[0]):
            text = self.tokenizer.decode([int(t) for t, m in zip(ids[b], mask[b]) if m], skip_special_tokens=True)
            prompt = prompts[b] if prompts is not None else None
            answer = answers[b] if answers is not None else None
            out.append(float(self.score_text(prompt, text, answer)))
        return paddle.to_tensor(out, dtype="float32")


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gsm8k_correct(prompt: Optional[str], response: str, answer: Optional[str]) -> float:
    """1.0 when the last number in ``response`` equals ``answer`` (commas ignored), else 0.0."""
    if answer is None:
        return 0.0
    numbers = _NUMBER.findall(response)
    if not numbers:
        return 0.0
    try:
        return float(abs(float(numbers[-1].replace(",", "")) - float(str(answer).replace(",", ""))) < 1e-6)
    except ValueError:
        return 0.0

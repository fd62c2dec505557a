"""Rule-based reward functions of completion text (kind ``"reward_func"``), chosen by name from the CLI.

Registered signature (TRL's reward-function convention)::

    fn(prompts: list[str], completions: list[str], **columns) -> list[float]

``columns`` are per-row lists: the record's ``solution`` (the reference answer; GSM8K's number, or the
``answer`` column when there is no ``solution``), ``completion_lengths`` (response tokens, EOS counted),
the record's extra scalar columns, and the function's own options as plain keywords (``pattern``,
``target_length``, ...). Every function ignores what it does not read. Pure Python (``re`` only).

    accuracy    1.0 when the completion's final answer equals the reference, else 0.0
    format      1.0 when the completion matches a regular expression, else 0.0
    length      -|n - target_length| / target_length (0 at the target, tokens)
    repetition  max_penalty · (1 - distinct n-grams / n-grams) over whitespace words (0 = no repetition)
"""

from __future__ import annotations

import math
import re
from typing import List, Optional, Sequence

from .registry import register

__all__ = ["extract_answer", "answers_match", "accuracy_reward", "format_reward", "length_reward",
           "repetition_reward", "DEFAULT_FORMAT_PATTERN"]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_MARKED = re.compile(r"####\s*([^\n]*)")
DEFAULT_FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"


def _last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (nested braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for j in range(start + len("\\boxed"), len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[start + len("\\boxed{"): j]
    return None


def extract_answer(text: str) -> Optional[str]:
    """The final answer of a completion or of a reference solution.

    Order: the last GSM8K marker ``#### x`` (its first number, or its text), then the last ``\\boxed{x}``,
    then the last plain number anywhere. A marked answer wins over numbers written after it.
    """
    if text is None:
        return None
    text = str(text)
    marked = _MARKED.findall(text)
    for candidate in reversed(marked):
        candidate = candidate.strip()
        if candidate:
            number = _NUMBER.search(candidate)
            return number.group(0) if number else candidate
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> Optional[float]:
    cleaned = text.strip().strip("$").replace(",", "").rstrip(".")
    if cleaned.endswith("%"):
        cleaned = cleaned[:-1]
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def answers_match(predicted: Optional[str], reference: Optional[str]) -> bool:
    """Numbers compare by value (commas, ``$`` and a trailing ``.``/``%`` ignored), other answers as text
    with whitespace removed."""
    if predicted is None or reference is None:
        return False
    a, b = _as_number(predicted), _as_number(reference)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return re.sub(r"\s+", "", predicted) == re.sub(r"\s+", "", reference)


def _column(columns: dict, name: str, n: int, fn: str) -> Sequence:
    values = columns.get(name)
    if values is None:
        raise ValueError(f"reward function '{fn}' needs the '{name}' column (a 'solution' or 'answer' field in "
                         "the prompt records)")
    if len(values) != n:
        raise ValueError(f"reward function '{fn}': column '{name}' has {len(values)} rows for {n} completions")
    return values


@register("reward_func", "accuracy")
def accuracy_reward(prompts: List[str], completions: List[str], **columns) -> List[float]:
    """Verifiable outcome reward of R1-style training (DeepSeek-R1, arXiv 2501.12948, §2.2.2).

    1.0 when ``extract_answer(completion)`` equals ``extract_answer(solution)`` (so a GSM8K reasoning text
    ``... #### 18`` and a bare ``18`` are the same reference), else 0.0. A row without a reference is an
    error (never a silent 0).
    """
    solutions = _column(columns, "solution", len(completions), "accuracy")
    out = []
    for i, (completion, solution) in enumerate(zip(completions, solutions)):
        if solution is None:
            raise ValueError(f"reward function 'accuracy': row {i} has no reference answer (solution/answer)")
        out.append(float(answers_match(extract_answer(completion), extract_answer(str(solution)))))
    return out


@register("reward_func", "format")
def format_reward(prompts: List[str], completions: List[str], *, pattern: str = DEFAULT_FORMAT_PATTERN,
                  **columns) -> List[float]:
    """Format reward of R1-style training (arXiv 2501.12948, §2.2.2): 1.0 when the stripped completion
    matches ``pattern`` as a whole (``re.fullmatch``, DOTALL), else 0.0. Default: ``<think>…</think>
    <answer>…</answer>``."""
    regex = re.compile(pattern, re.DOTALL)
    return [1.0 if regex.fullmatch(c.strip()) else 0.0 for c in completions]


@register("reward_func", "length")
def length_reward(prompts: List[str], completions: List[str], *, target_length: int = 64,
                  **columns) -> List[float]:
    """Target-length reward: -|n - target_length| / target_length, n = response tokens (EOS counted).

    0 at the target, -1 at twice (or zero times) the target; a smooth pull towards a length budget (a
    simple form of the length rewards of Kimi k1.5, arXiv 2501.12599, which instead rank lengths within a
    group).
    """
    if target_length <= 0:
        raise ValueError(f"reward function 'length': target_length must be > 0, got {target_length}")
    lengths = _column(columns, "completion_lengths", len(completions), "length")
    return [-abs(float(n) - target_length) / target_length for n in lengths]


@register("reward_func", "repetition")
def repetition_reward(prompts: List[str], completions: List[str], *, ngram_size: int = 3,
                      max_penalty: float = -1.0, **columns) -> List[float]:
    """N-gram repetition penalty (Yeo et al., "Demystifying Long Chain-of-Thought Reasoning in LLMs",
    arXiv 2502.03373): max_penalty · (1 - distinct / total) over the whitespace-word n-grams of a completion.

    0 for a completion without repeats or shorter than ``ngram_size`` words; ``max_penalty`` (<= 0) when
    one n-gram fills it.
    """
    if ngram_size < 1 or max_penalty > 0:
        raise ValueError(f"reward function 'repetition': ngram_size must be >= 1 and max_penalty <= 0; got "
                         f"{ngram_size}, {max_penalty}")
    out = []
    for completion in completions:
        words = completion.lower().split()
        grams = [tuple(words[i:i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
        out.append(0.0 if not grams else max_penalty * (1.0 - len(set(grams)) / len(grams)))
    return out

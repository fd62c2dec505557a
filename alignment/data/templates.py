"""Prompt templates: the Beaver template of safe-rlhf (default), the tokenizer's chat template, or raw text.

A conversation is rendered as *segments* that are tokenized one by one and concatenated, so the prompt
tokens a model is trained on are exactly the prompt tokens it later generates from:

    beaver, turns [u1, a1, u2]  ->  ("prompt", "BEGINNING OF CONVERSATION: USER: u1 ASSISTANT:"),
                                    ("assistant", "a1"),  # followed by the EOS id
                                    ("prompt", "USER: u2 ASSISTANT:")

Every assistant segment is followed by the EOS token. ``format_prompt`` returns the same prompt as one
string (assistant turns followed by the EOS *text*), for logging and for the ``prompts`` batch field.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

from .raw import DataError

__all__ = [
    "PROMPT_BEGIN",
    "PROMPT_USER",
    "PROMPT_ASSISTANT",
    "TEMPLATES",
    "render_segments",
    "format_prompt",
]

PROMPT_BEGIN = "BEGINNING OF CONVERSATION: "
PROMPT_USER = "USER: {input} "
PROMPT_ASSISTANT = "ASSISTANT:"  # no trailing space: the answer follows directly

TEMPLATES = ("beaver", "chat", "raw")

Segment = Tuple[str, str]  # (kind: "prompt" | "assistant", text)


def _check_turns(turns: Sequence[str], what: str = "input") -> None:
    if not turns:
        raise DataError(f"'{what}' is an empty dialogue")
    for i, turn in enumerate(turns):
        if not isinstance(turn, str):
            raise DataError(f"turn {i} of '{what}' must be a string, got {type(turn).__name__}")


def _beaver(turns: Sequence[str], system: Optional[str]) -> List[Segment]:
    segments: List[Segment] = []
    for i, turn in enumerate(turns):
        if i % 2 == 0:
            head = PROMPT_BEGIN + (f"{system} " if system else "") if i == 0 else ""
            segments.append(("prompt", head + PROMPT_USER.format(input=turn) + PROMPT_ASSISTANT))
        else:
            segments.append(("assistant", turn))
    return segments


def _raw(turns: Sequence[str], system: Optional[str]) -> List[Segment]:
    segments: List[Segment] = []
    for i, turn in enumerate(turns):
        text = (system + "\n" if system and i == 0 else "") + turn
        segments.append(("prompt" if i % 2 == 0 else "assistant", text))
    return segments


def _chat(turns: Sequence[str], system: Optional[str], tokenizer: Any) -> List[Segment]:
    """The tokenizer's chat template renders every turn before the last user turn into one prompt; a final
    assistant turn (if any) is its own segment. (Earlier assistant turns are part of the prompt, so with
    ``template="chat"`` a supervised dialogue is trained on its last answer only.)"""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = type(tokenizer).__name__ if tokenizer is not None else "None"
        raise DataError(
            f"template='chat' needs a tokenizer with a chat template, but {name} has none; use "
            "template='beaver' (default) or 'raw', or set one with tokenizer.init_chat_template(...)"
        )
    last_user = len(turns) - 1 if len(turns) % 2 == 1 else len(turns) - 2
    messages = [{"role": "system", "content": system}] if system else []
    messages += [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t}
        for i, t in enumerate(turns[: last_user + 1])
    ]
    try:
        from jinja2 import Template  # compiled chat templates (the common case)

        is_jinja = isinstance(tokenizer.chat_template, Template)
    except ImportError:  # pragma: no cover - jinja2 ships with paddlenlp
        is_jinja = True
    if is_jinja:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # PaddleNLP's older ChatTemplate takes [[user, bot], ..., [user]] rounds
        rounds = [list(turns[i : i + 2]) for i in range(0, last_user + 1, 2)]
        text = tokenizer.apply_chat_template(rounds, tokenize=False)
    segments: List[Segment] = [("prompt", text)]
    if last_user + 1 < len(turns):
        segments.append(("assistant", turns[last_user + 1]))
    return segments


def render_segments(
    turns: Union[str, Sequence[str]],
    *,
    template: str = "beaver",
    tokenizer: Any = None,
    system: Optional[str] = None,
) -> List[Segment]:
    """Render alternating user/assistant ``turns`` (a string is one user turn) into segments."""
    if isinstance(turns, str):
        turns = [turns]
    _check_turns(turns)
    if template == "beaver":
        return _beaver(turns, system)
    if template == "chat":
        return _chat(turns, system, tokenizer)
    if template == "raw":
        return _raw(turns, system)
    raise DataError(f"unknown template '{template}'; allowed templates: {', '.join(TEMPLATES)}")


def format_prompt(
    input: Union[str, Sequence[str]],  # noqa: A002 - the RawSample key
    eos_token: str = "</s>",
    *,
    template: str = "beaver",
    tokenizer: Any = None,
    system: Optional[str] = None,
) -> str:
    """The prompt text of ``input`` (a string, or a dialogue ending with a user turn).

    >>> format_prompt("hi")
    'BEGINNING OF CONVERSATION: USER: hi ASSISTANT:'
    >>> format_prompt(["hi", "hello", "how are you?"])
    'BEGINNING OF CONVERSATION: USER: hi ASSISTANT:hello</s>USER: how are you? ASSISTANT:'
    """
    if not isinstance(input, str) and len(input) % 2 == 0:
        raise DataError(f"a prompt dialogue must end with a user turn (odd length), got {len(input)} turns")
    if tokenizer is not None and eos_token == "</s>" and getattr(tokenizer, "eos_token", None):
        eos_token = tokenizer.eos_token
    parts = []
    for kind, text in render_segments(input, template=template, tokenizer=tokenizer, system=system):
        parts.append(text + eos_token if kind == "assistant" else text)
    return "".join(parts)

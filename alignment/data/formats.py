"""Reading record files and converting the common community formats into ``RawSample``.

Files: ``.json`` (an array of objects, an object of objects, or JSON lines), ``.jsonl``, ``.jsonl.gz`` /
``.json.gz``, ``.parquet``; a folder means every such file inside it (those named after the split when
a split is asked for and such files exist). Hub datasets go through ``datasets.load_dataset``.

Formats (``format=``; ``auto`` detects from the first record's fields):

=============== ================================================================ ========================
name            fields                                                           origin
=============== ================================================================ ========================
pku-saferlhf    prompt, response_0, response_1, better_response_id,              PKU-SafeRLHF (30K, 10K)
                safer_response_id, is_response_0_safe, is_response_1_safe
alpaca          instruction, input, output (+ system, history)                   Alpaca, LLaMA-Factory
alpaca-ranking  instruction, input, chosen, rejected (+ system, history)         LLaMA-Factory ranking
sharegpt        conversations [{from, value}] (+ chosen, rejected | kto_tag)     LLaMA-Factory sharegpt
ms-swift        messages [{role, content}] (+ rejected_response | label)         ms-swift, OpenAI chat
trl             prompt + chosen + rejected | prompt + completion (+ label)       TRL
                | prompt (strings or lists of {role, content})
hh-rlhf         chosen, rejected ("\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts)  Anthropic HH-RLHF
gsm8k           question, answer ("... #### 42")                                 OpenAI GSM8K
math            problem, solution ("... \\boxed{x}")                             MATH (ms-swift rft)
=============== ================================================================ ========================
"""

from __future__ import annotations

import gzip
import zlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .raw import DataError, RawSample

__all__ = [
    "FORMATS",
    "available_formats",
    "detect_format",
    "convert_record",
    "read_records",
    "read_hub_records",
    "load_samples",
]

SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet")


# ============================================================================ reading files


class Where:
    """Location of one record, for error messages (file + line, or source + record index)."""

    __slots__ = ("file", "line", "record")

    def __init__(self, file: str, line: Optional[int] = None, record: Optional[int] = None) -> None:
        self.file, self.line, self.record = file, line, record

    def error(self, message: str, field: Optional[str] = None) -> DataError:
        return DataError(message, file=self.file, line=self.line, record=self.record, field=field)


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _unreadable(path: Path, error: Exception, line: Optional[int] = None) -> DataError:
    """A DataError for bytes that are not UTF-8 text or a broken gzip stream."""
    if isinstance(error, UnicodeDecodeError):
        why = f"not UTF-8 text ({error.reason} at byte {error.start} of the line); re-encode the file as UTF-8"
    else:
        why = f"corrupt or truncated gzip file ({error}); re-create it or decompress it"
    return DataError(why, file=str(path), line=line)


_READ_ERRORS = (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error)


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, text) of a text or .gz file; undecodable bytes are a DataError naming the line."""
    lineno = 0
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
            for lineno, raw in enumerate(f, start=1):  # decoded line by line: the error names its line
                yield lineno, raw.decode("utf-8")
    except _READ_ERRORS as e:
        raise _unreadable(path, e, lineno + (0 if isinstance(e, UnicodeDecodeError) else 1)) from None


def _iter_json_lines(path: Path) -> Iterator[Tuple[Dict[str, Any], Where]]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = Where(str(path), line=lineno)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise where.error(f"malformed JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(record, dict):
            raise where.error(f"expected a JSON object, got {type(record).__name__}")
        yield record, where


def _iter_json_document(path: Path) -> Iterator[Tuple[Dict[str, Any], Where]]:
    text = "".join(line for _, line in _lines(path))
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and e.lineno > 1:  # JSON lines stored under a .json name
            yield from _iter_json_lines(path)
            return
        raise DataError(
            f"malformed JSON: {e.msg} (column {e.colno})", file=str(path), line=e.lineno
        ) from None
    if isinstance(doc, dict):
        values = list(doc.values())
        if values and all(isinstance(v, dict) for v in values):  # {"id": {record}, ...}
            doc = [dict(v, id=k) if "id" not in v else v for k, v in doc.items()]
        elif len(doc) == 1 and isinstance(values[0], list):  # {"data": [...]}
            doc = values[0]
        else:
            doc = [doc]
    if not isinstance(doc, list):
        raise DataError(f"expected a JSON array of objects, got {type(doc).__name__}", file=str(path))
    for i, record in enumerate(doc):
        where = Where(str(path), record=i)
        if not isinstance(record, dict):
            raise where.error(f"expected a JSON object, got {type(record).__name__}")
        yield record, where


def _iter_parquet(path: Path) -> Iterator[Tuple[Dict[str, Any], Where]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"cannot read parquet: {e}", file=str(path)) from None
    for i, record in enumerate(rows):
        yield record, Where(str(path), record=i)


def _files_of(path: Path, split: Optional[str]) -> List[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
    if not files:
        raise DataError(f"folder has no data files (expected one of {', '.join(SUFFIXES)})", file=str(path))
    if split:
        pattern = re.compile(rf"(^|[^a-z]){re.escape(split.lower())}([^a-z]|$)")
        named = [p for p in files if pattern.search(p.name.lower())]
        if named:
            return named
    return files


def read_records(
    path: str | os.PathLike, split: Optional[str] = None
) -> Iterator[Tuple[Dict[str, Any], Where]]:
    """Yield ``(record, where)`` for every record of a file or a folder of files.

    Raises ``DataError`` for a missing path, an unsupported suffix, malformed JSON or an empty file.
    """
    path = Path(os.path.expanduser(str(path)))
    for file in _files_of(path, split):
        name = file.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz")):
            records = _iter_json_lines(file)
        elif name.endswith((".json", ".json.gz")):
            records = _iter_json_document(file)
        elif name.endswith(".parquet"):
            records = _iter_parquet(file)
        else:
            raise DataError(f"unsupported file type; expected one of {', '.join(SUFFIXES)}", file=str(file))
        count = 0
        for item in records:
            count += 1
            yield item
        if count == 0:
            raise DataError("file is empty (no records)", file=str(file))


def read_hub_records(
    hub_path: str, split: str, name: Optional[str] = None, data_dir: Optional[str] = None, **kwargs: Any
) -> Iterator[Tuple[Dict[str, Any], Where]]:
    """Yield ``(record, where)`` from ``datasets.load_dataset(hub_path, name, data_dir=..., split=...)``."""
    import datasets

    ds = datasets.load_dataset(hub_path, name, data_dir=data_dir, split=split, **kwargs)
    source = f"{hub_path}{'/' + data_dir if data_dir else ''}[{split}]"
    if len(ds) == 0:
        raise DataError("dataset is empty (no records)", file=source)
    for i, record in enumerate(ds):
        yield record, Where(source, record=i)


# ============================================================================ field helpers


def _field(record: Dict[str, Any], key: str, where: Where, types: Any = str, optional: bool = False) -> Any:
    if key not in record or record[key] is None:
        if optional:
            return None
        raise where.error(
            f"required field is missing (record has: {', '.join(sorted(record)) or 'nothing'})", key
        )
    value = record[key]
    if not isinstance(value, types) or (types is int and isinstance(value, bool)):
        expected = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise where.error(f"expected {expected}, got {type(value).__name__} {value!r:.60}", key)
    return value


def _binary_id(record: Dict[str, Any], key: str, where: Where, optional: bool = False) -> Optional[int]:
    value = record.get(key)
    if value is None:
        if optional:
            return None
        raise where.error("required field is missing", key)
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise where.error(f"expected 0 or 1, got {value!r:.60}", key)
    return value


def _bool(record: Dict[str, Any], key: str, where: Where, optional: bool = False) -> Optional[bool]:
    value = record.get(key)
    if value is None:
        if optional:
            return None
        raise where.error("required field is missing", key)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise where.error(f"expected a boolean (true/false or 1/0), got {value!r:.60}", key)


def _prompt_sample(turns: List[str], system: Optional[str]) -> RawSample:
    sample = RawSample(input=turns[0] if len(turns) == 1 else list(turns))
    if system:
        sample["system"] = system
    return sample


# ============================================================================ chat messages

_USER_ROLES = {"user", "human", "observation", "tool"}
_ASSISTANT_ROLES = {"assistant", "gpt", "bot", "model", "function_call"}


def _message_text(content: Any, where: Where, field: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text"|"value": ...}] multimodal-style content
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text":
                text = part.get("text", part.get("value"))
                if isinstance(text, str):
                    parts.append(text)
                    continue
            raise where.error("only text content parts are supported", field)
        return "".join(parts)
    raise where.error(f"message content must be a string, got {type(content).__name__}", field)


def _parse_messages(
    messages: Any,
    where: Where,
    field: str,
    role_key: str = "role",
    content_key: str = "content",
    user_first: bool = True,
) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """``[{role, content}]`` -> (system, [(role in {user, assistant}, text)]), merging repeated roles."""
    if not isinstance(messages, list) or not messages:
        raise where.error("expected a non-empty list of messages", field)
    system, turns = None, []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or role_key not in message or content_key not in message:
            raise where.error(f"message {i} must be an object with '{role_key}' and '{content_key}'", field)
        role = message[role_key]
        text = _message_text(message[content_key], where, f"{field}[{i}].{content_key}")
        if role == "system":
            if turns:
                raise where.error(f"message {i}: a system message must come first", field)
            system = text
            continue
        if role in _USER_ROLES:
            role = "user"
        elif role in _ASSISTANT_ROLES:
            role = "assistant"
        else:
            raise where.error(f"message {i}: unknown role {role!r}", field)
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n" + text)
        else:
            turns.append((role, text))
    if user_first and turns and turns[0][0] != "user":
        raise where.error("the first non-system message must be a user message", field)
    return system, turns


def _split_last_answer(
    turns: List[Tuple[str, str]], where: Where, field: str, need_answer: bool = True
) -> Tuple[List[str], Optional[str]]:
    """[(role, text)] -> (prompt turns ending with a user turn, final assistant answer or None)."""
    texts = [t for _, t in turns]
    if turns and turns[-1][0] == "assistant":
        return texts[:-1], texts[-1]
    if need_answer:
        raise where.error("the conversation must end with an assistant message", field)
    if not texts:
        raise where.error("the conversation has no user message", field)
    return texts, None


def _completion_text(value: Any, where: Where, field: str) -> str:
    """A response given as a string, a message dict or a list of messages (TRL conversational)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _message_text(value.get("content", value.get("value")), where, field)
    if isinstance(value, list):
        keys = (
            ("from", "value")
            if value and isinstance(value[0], dict) and "from" in value[0]
            else ("role", "content")
        )
        _, turns = _parse_messages(value, where, field, *keys, user_first=False)
        if any(role != "assistant" for role, _ in turns):
            raise where.error("a completion must contain only assistant messages", field)
        return "\n".join(t for _, t in turns)
    raise where.error(f"expected a string or messages, got {type(value).__name__}", field)


# ============================================================================ converters


def convert_pku_saferlhf(record: Dict[str, Any], where: Where) -> RawSample:
    sample = RawSample(
        input=_field(record, "prompt", where),
        answer=_field(record, "response_0", where),
        other_answer=_field(record, "response_1", where),
        better=_binary_id(record, "better_response_id", where) == 0,
    )
    safer = _binary_id(record, "safer_response_id", where, optional=True)
    if safer is not None:
        sample["safer"] = safer == 0
    for key, out in (("is_response_0_safe", "is_safe"), ("is_response_1_safe", "is_other_safe")):
        value = _bool(record, key, where, optional=True)
        if value is not None:
            sample[out] = value
    return sample


def _alpaca_prompt(record: Dict[str, Any], where: Where) -> Tuple[List[str], Optional[str]]:
    instruction = _field(record, "instruction", where)
    extra = _field(record, "input", where, optional=True)
    query = f"{instruction}\n{extra}" if extra else instruction
    turns: List[str] = []
    history = record.get("history")
    if history:
        if not isinstance(history, list) or not all(
            isinstance(h, (list, tuple)) and len(h) == 2 and all(isinstance(x, str) for x in h)
            for h in history
        ):
            raise where.error("expected a list of [user, assistant] string pairs", "history")
        for user, assistant in history:
            turns += [user, assistant]
    return turns + [query], _field(record, "system", where, optional=True)


def convert_alpaca(record: Dict[str, Any], where: Where) -> RawSample:
    turns, system = _alpaca_prompt(record, where)
    sample = _prompt_sample(turns, system)
    sample["answer"] = _field(record, "output", where)
    return sample


def convert_alpaca_ranking(record: Dict[str, Any], where: Where) -> RawSample:
    turns, system = _alpaca_prompt(record, where)
    sample = _prompt_sample(turns, system)
    sample["answer"] = _completion_text(_field(record, "chosen", where, (str, dict, list)), where, "chosen")
    sample["other_answer"] = _completion_text(
        _field(record, "rejected", where, (str, dict, list)), where, "rejected"
    )
    sample["better"] = True
    return sample


def convert_sharegpt(record: Dict[str, Any], where: Where) -> RawSample:
    key = "conversations" if "conversations" in record else "messages"
    messages = _field(record, key, where, list)
    role_key, content_key = ("from", "value") if messages and "from" in messages[0] else ("role", "content")
    system, turns = _parse_messages(messages, where, key, role_key, content_key)
    system = _field(record, "system", where, optional=True) or system
    if "chosen" in record or "rejected" in record:  # ranking
        prompt, _ = _split_last_answer(turns, where, key, need_answer=False)
        sample = _prompt_sample(prompt, system)
        sample["answer"] = _completion_text(
            _field(record, "chosen", where, (str, dict, list)), where, "chosen"
        )
        sample["other_answer"] = _completion_text(
            _field(record, "rejected", where, (str, dict, list)), where, "rejected"
        )
        sample["better"] = True
        return sample
    prompt, answer = _split_last_answer(turns, where, key, need_answer=True)
    sample = _prompt_sample(prompt, system)
    sample["answer"] = answer
    for tag in ("kto_tag", "label"):
        if tag in record:
            sample["label"] = _bool(record, tag, where)
            break
    return sample


_RAW_KEYS = frozenset(RawSample.__annotations__)
_TRL_KEYS = frozenset({"prompt", "chosen", "rejected", "completion", "label"})
_SWIFT_KEYS = frozenset({"messages", "rejected_response", "rejected_messages", "label", "system"})


def _copy_extras(record: Dict[str, Any], sample: RawSample, consumed: frozenset) -> None:
    """Pass extra scalar columns through (``solution`` for accuracy rewards, ``margin``, an ``id`` ...);
    columns that would overwrite a RawSample key other than ``solution``/``margin`` are left out."""
    for key, value in record.items():
        if key in consumed or value is None or (key in _RAW_KEYS and key not in ("solution", "margin")):
            continue
        if isinstance(value, (str, int, float, bool)):
            sample[key] = value


def convert_ms_swift(record: Dict[str, Any], where: Where) -> RawSample:
    system, turns = _parse_messages(_field(record, "messages", where, list), where, "messages")
    system = _field(record, "system", where, optional=True) or system
    prompt, answer = _split_last_answer(
        turns, where, "messages", need_answer="rejected_response" in record or "label" in record
    )
    sample = _prompt_sample(prompt, system)
    if answer is not None:
        sample["answer"] = answer
    if "rejected_response" in record:
        sample["other_answer"] = _completion_text(
            _field(record, "rejected_response", where, (str, dict, list)), where, "rejected_response"
        )
        sample["better"] = True
    elif "rejected_messages" in record:
        _, rejected = _parse_messages(
            _field(record, "rejected_messages", where, list), where, "rejected_messages"
        )
        _, other = _split_last_answer(rejected, where, "rejected_messages")
        sample["other_answer"] = other
        sample["better"] = True
    if "label" in record:
        sample["label"] = _bool(record, "label", where)
    _copy_extras(record, sample, consumed=_SWIFT_KEYS)
    return sample


def _trl_prompt(record: Dict[str, Any], where: Where) -> Tuple[List[str], Optional[str]]:
    prompt = _field(record, "prompt", where, (str, list))
    if isinstance(prompt, str):
        return [prompt], None
    system, turns = _parse_messages(prompt, where, "prompt")
    texts, _ = _split_last_answer(turns, where, "prompt", need_answer=False)
    if turns[-1][0] != "user":
        raise where.error("a conversational prompt must end with a user message", "prompt")
    return texts, system


def convert_trl(record: Dict[str, Any], where: Where) -> RawSample:
    turns, system = _trl_prompt(record, where)
    sample = _prompt_sample(turns, system)
    if "chosen" in record or "rejected" in record:
        sample["answer"] = _completion_text(
            _field(record, "chosen", where, (str, list, dict)), where, "chosen"
        )
        sample["other_answer"] = _completion_text(
            _field(record, "rejected", where, (str, list, dict)), where, "rejected"
        )
        sample["better"] = True
    elif "completion" in record:
        sample["answer"] = _completion_text(
            _field(record, "completion", where, (str, list, dict)), where, "completion"
        )
        if "label" in record:
            sample["label"] = _bool(record, "label", where)
    _copy_extras(record, sample, consumed=_TRL_KEYS)
    return sample


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ASSISTANT = "\n\nAssistant:"


def _hh_turns(text: str, where: Where, field: str) -> List[str]:
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise where.error("transcript must start with '\\n\\nHuman: '", field)
    turns = []
    for i in range(1, len(parts), 2):
        expected = "Human" if len(turns) % 2 == 0 else "Assistant"
        if parts[i] != expected:
            raise where.error(f"turn {len(turns)}: expected '{expected}:', got '{parts[i]}:'", field)
        turns.append(parts[i + 1].strip())
    return turns


def convert_hh_rlhf(record: Dict[str, Any], where: Where) -> RawSample:
    """Split two transcripts into the shared dialogue prefix and the two final assistant turns.

    The split is at the last ``\\n\\nAssistant:`` inside the common prefix of both strings, so an answer that
    itself contains ``Assistant:`` (it happens in the real data) stays whole.
    """
    chosen = _field(record, "chosen", where)
    rejected = _field(record, "rejected", where)
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(_HH_ASSISTANT)
    if cut < 0:
        field = "chosen" if _HH_ASSISTANT not in chosen else "rejected"
        raise where.error("transcript has no shared '\\n\\nAssistant:' turn with the other transcript", field)
    turns = _hh_turns(chosen[:cut], where, "chosen")
    if not turns or len(turns) % 2 == 0:
        raise where.error("the dialogue before the final assistant turn must end with a Human turn", "chosen")
    sample = _prompt_sample(turns, None)
    sample["answer"] = chosen[cut + len(_HH_ASSISTANT) :].strip()
    sample["other_answer"] = rejected[cut + len(_HH_ASSISTANT) :].strip()
    sample["better"] = True
    return sample


_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


def convert_gsm8k(record: Dict[str, Any], where: Where) -> RawSample:
    question = _field(record, "question", where)
    answer = _field(record, "answer", where)
    match = _GSM8K_ANSWER.search(answer)
    if not match:
        raise where.error("GSM8K answer must end with '#### <number>'", "answer")
    return RawSample(input=question, answer=answer, solution=match.group(1).replace(",", ""))


def _last_boxed(text: str) -> Optional[str]:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def convert_math(record: Dict[str, Any], where: Where) -> RawSample:
    problem = _field(record, "problem", where)
    solution_text = _field(record, "solution", where)
    boxed = _last_boxed(solution_text)
    if boxed is None:
        raise where.error("MATH solution must contain \\boxed{...}", "solution")
    return RawSample(input=problem, answer=solution_text, solution=boxed)


# name -> (converter, fields whose presence detects it (all required), aliases)
FORMATS: Dict[str, Tuple[Callable[[Dict[str, Any], Where], RawSample], Tuple[str, ...]]] = {
    "pku-saferlhf": (convert_pku_saferlhf, ("prompt", "response_0", "response_1")),
    "sharegpt": (convert_sharegpt, ("conversations",)),
    "ms-swift": (convert_ms_swift, ("messages",)),
    "alpaca-ranking": (convert_alpaca_ranking, ("instruction", "chosen", "rejected")),
    "alpaca": (convert_alpaca, ("instruction", "output")),
    "trl": (convert_trl, ("prompt",)),
    "hh-rlhf": (convert_hh_rlhf, ("chosen", "rejected")),
    "gsm8k": (convert_gsm8k, ("question", "answer")),
    "math": (convert_math, ("problem", "solution")),
}
FORMAT_ALIASES = {
    "pku": "pku-saferlhf",
    "safe-rlhf": "pku-saferlhf",
    "swift": "ms-swift",
    "messages": "ms-swift",
    "openai": "ms-swift",
    "llamafactory-sharegpt": "sharegpt",
    "llamafactory-ranking": "alpaca-ranking",
    "hh": "hh-rlhf",
}


def available_formats() -> List[str]:
    return ["auto", *FORMATS, *FORMAT_ALIASES]


def resolve_format(fmt: str) -> str:
    if not isinstance(fmt, str):
        raise DataError(
            f"format must be a string, got {type(fmt).__name__}; allowed: {', '.join(available_formats())}"
        )
    key = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if key != "auto" and key not in FORMATS:
        raise DataError(f"unknown format '{fmt}'; allowed formats: {', '.join(available_formats())}")
    return key


def detect_format(record: Dict[str, Any], where: Optional[Where] = None) -> str:
    """The first format (in ``FORMATS`` order) whose detection fields are all present in ``record``."""
    for name, (_, fields) in FORMATS.items():
        if all(f in record for f in fields):
            return name
    message = (
        f"cannot detect the format from the fields {sorted(record)}; pass format= one of {', '.join(FORMATS)}"
    )
    raise where.error(message) if where is not None else DataError(message)


def convert_record(record: Dict[str, Any], fmt: str, where: Where) -> RawSample:
    return FORMATS[fmt][0](record, where)


def load_samples(records: Iterator[Tuple[Dict[str, Any], Where]], fmt: str = "auto") -> List[RawSample]:
    """Convert every ``(record, where)`` with ``fmt`` (``auto``: detected per file from its first record)."""
    fmt = resolve_format(fmt)
    samples: List[RawSample] = []
    detected: Dict[str, str] = {}
    for record, where in records:
        name = fmt
        if fmt == "auto":
            name = detected.get(where.file)
            if name is None:
                name = detected[where.file] = detect_format(record, where)
        samples.append(convert_record(record, name, where))
    return samples

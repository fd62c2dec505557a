"""Argument parsing for every ``run_*.py`` entry point: a JSON file plus ``--flag value`` overrides.

    python alignment/rm/run_reward.py config/llama/rm_argument.json --learning_rate 1e-5

The JSON file is read first, then command-line flags override it (PdArgumentParser style). An unknown
key in the file or an unknown flag is an error that names it and the closest valid names, never
silently ignored.
"""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Type

__all__ = ["ArgumentError", "parse_args", "json_to_argv"]


class ArgumentError(ValueError):
    """A bad argument file, key or value; the message names it and the valid choices."""


def _valid_names(dataclass_types: Sequence[Type]) -> List[str]:
    names: List[str] = []
    for dtype in dataclass_types:
        names.extend(f.name for f in fields(dtype) if f.init)
    return names


def _unknown(name: str, valid: List[str], where: str) -> ArgumentError:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ArgumentError(f"{where}: unknown argument '{name}'{hint}")


def json_to_argv(path: str | Path, valid: List[str]) -> List[str]:
    """Turn a JSON argument file into ``--key value`` tokens, checking every key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ArgumentError(f"{path}: cannot read argument file ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArgumentError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ArgumentError(f"{path}: the argument file must hold a JSON object, got {type(data).__name__}")
    argv: List[str] = []
    for key, value in data.items():
        if key not in valid:
            raise _unknown(key, valid, str(path))
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, list):
            argv.extend(str(v) for v in value)
        elif isinstance(value, bool):
            argv.append("true" if value else "false")
        elif isinstance(value, (dict,)):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def parse_args(dataclass_types: Sequence[Type], argv: Optional[Sequence[str]] = None) -> Tuple[Any, ...]:
    """Parse ``[config.json] [--flag value ...]`` into instances of ``dataclass_types``.

    Uses PaddleNLP's PdArgumentParser so TrainingArguments keep their own post-processing. A
    ``__post_init__`` ValueError of a dataclass is re-raised as an ArgumentError with its message.
    """
    from paddlenlp.trainer import PdArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    valid = _valid_names(dataclass_types)
    tokens: List[str] = []
    if argv and not argv[0].startswith("--"):
        if not argv[0].endswith(".json"):
            raise ArgumentError(f"the first argument must be a .json argument file or a --flag, got '{argv[0]}'")
        tokens.extend(json_to_argv(argv[0], valid))
        argv = argv[1:]
    for tok in argv:
        if tok.startswith("--"):
            name = tok[2:].split("=", 1)[0]
            if name not in valid:
                raise _unknown(name, valid, "command line")
    tokens.extend(argv)
    from alignment.parallel import ParallelStrategy, compat

    compat.apply()  # before TrainingArguments, which may call fleet.init
    tokens = compat.training_argv(tokens)
    # sequence lengths change from batch to batch: stages exchange shapes for every micro-batch
    tokens = compat.add_pipeline_config(tokens, "disable_p2p_cache_shape")
    parser = PdArgumentParser(tuple(dataclass_types))
    try:
        parsed = parser.parse_args_into_dataclasses(args=tokens, return_remaining_strings=True)
    except SystemExit as e:  # argparse reports bad values by exiting; keep the message it printed
        raise ArgumentError(f"invalid command-line or file value (argparse exit {e.code}); see the message above") from None
    except ArgumentError:
        raise
    except ValueError as e:  # a dataclass __post_init__ check: its message names the field
        raise ArgumentError(str(e)) from e
    *objs, remaining = parsed
    if remaining:
        raise ArgumentError(f"unrecognised arguments: {' '.join(remaining)}")
    for obj in objs:  # the layout of a Trainer-based stage: validated, groups adopted from fleet
        if hasattr(obj, "tensor_parallel_degree") and hasattr(obj, "per_device_train_batch_size"):
            try:
                ParallelStrategy.from_args(obj).init()
            except ValueError as e:
                raise ArgumentError(str(e)) from None
    return tuple(objs)

"""Argument parsing and the one error path of every ``run_*.py`` entry point.

    python alignment/rm/run_reward.py config/llama/rm_argument.json --learning_rate 1e-5
    python alignment/rm/run_reward.py --help

The JSON file is read first, then command-line flags override it (PdArgumentParser style). An unknown
key in the file or an unknown flag is an error that names it and the closest valid names, never
silently ignored; so is a key given twice in the file. A bad value names its option, or its file, line and
field when it came from the file. ``--help`` lists every option with its help string and default.

``run_cli(main)`` is what ``python alignment/<stage>/run_*.py`` runs: a user error (bad data, argument,
model path, option value, contradiction) prints one line ``error: <what, where, the fix>`` and exits 2; a
run stopped by the numeric guards exits 3; anything else prints one line and exits 1. ``--debug`` (or
``ALIGNMENT_DEBUG=1``) shows the traceback instead.

Every entry point also takes ``RunArguments``: ``debug``, ``allow_pickle``, ``max_nonfinite_steps`` and
``plan_memory`` (print the memory plan of these arguments and exit).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

__all__ = ["ArgumentError", "RunArguments", "parse_args", "json_to_argv", "run_cli", "format_help", "classify"]

DEBUG_ENV = "ALIGNMENT_DEBUG"


class ArgumentError(ValueError):
    """A bad argument file, key or value; the message names it and the valid choices."""


@dataclass
class RunArguments:
    """Switches every entry point takes, whatever the stage."""

    debug: bool = field(default=False, metadata={"help": "On an error print the full traceback (also "
                                                         f"{DEBUG_ENV}=1)."})
    allow_pickle: bool = field(
        default=False,
        metadata={"help": "Allow loading pickle files (model_state.pdparams, *.bin, old checkpoints); unpickling "
                          "can run code, so only for files you trust."})
    max_nonfinite_steps: int = field(
        default=3,
        metadata={"help": "Stop the run after this many updates in a row with a non-finite loss, gradient norm "
                          "or reward (each is skipped); 0 = never stop."})
    plan_memory: bool = field(
        default=False,
        metadata={"help": "Print the predicted per-rank peak memory of each phase for these arguments "
                          "(alignment.tools.plan_memory) and exit; no model is loaded."})

    def __post_init__(self) -> None:
        if self.max_nonfinite_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {self.max_nonfinite_steps}")


@dataclass
class OutputDirArguments:
    """Added for stages whose arguments lack it (PPO)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an output_dir that holds another run's checkpoints / metrics "
                          "(they are removed)."})


def _valid_names(dataclass_types: Sequence[Type]) -> List[str]:
    names: List[str] = []
    for dtype in dataclass_types:
        names.extend(f.name for f in fields(dtype) if f.init)
    return names


def _unknown(name: str, valid: List[str], where: str) -> ArgumentError:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see --help for the options"
    return ArgumentError(f"{where}: unknown argument '{name}'{hint}")


def _key_lines(text: str) -> Dict[str, List[int]]:
    """Line numbers of every ``"key":`` in a JSON text, in order (for file:line messages)."""
    out: Dict[str, List[int]] = {}
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"\s*:', text):
        out.setdefault(m.group(1), []).append(text.count("\n", 0, m.start()) + 1)
    return out


def _load_json_object(path: Path) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """(object, key -> line) of an argument file; duplicate top-level keys are an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArgumentError(f"{path}: no such argument file") from None
    except UnicodeDecodeError as e:
        raise ArgumentError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ArgumentError(f"{path}: cannot read argument file ({e.strerror})") from None
    lines = _key_lines(text)
    seen_top: List[List[Tuple[str, Any]]] = []

    def pairs(items):
        seen_top.append(items)
        return dict(items)

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise ArgumentError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise ArgumentError(f"{path}: the argument file must hold a JSON object, got {type(data).__name__}")
    top = seen_top[-1]  # the outermost object is completed last
    counts: Dict[str, int] = {}
    for key, _ in top:
        counts[key] = counts.get(key, 0) + 1
        if counts[key] == 2:
            where = lines.get(key, [])
            first = where[0] if where else "?"
            second = where[1] if len(where) > 1 else "?"
            raise ArgumentError(f"{path}:{second}: field '{key}': given twice (first on line {first}); keep one")
    return data, {k: v[0] for k, v in lines.items()}


def json_to_argv(path: str | Path, valid: List[str], origins: Optional[Dict[str, str]] = None) -> List[str]:
    """Turn a JSON argument file into ``--key value`` tokens, checking every key.

    A dict or list-of-dicts value (a dataset spec) travels as one JSON string. ``origins`` collects
    ``key -> "file:line"`` for error messages.
    """
    path = Path(path)
    data, lines = _load_json_object(path)
    argv: List[str] = []
    for key, value in data.items():
        if key not in valid:
            raise _unknown(key, valid, f"{path}:{lines.get(key, '?')}")
        if origins is not None:
            origins[key] = f"{path}:{lines.get(key, '?')}"
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value):
            argv.extend("true" if v is True else "false" if v is False else str(v) for v in value)
        elif isinstance(value, bool):
            argv.append("true" if value else "false")
        elif isinstance(value, (dict, list)):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


# ------------------------------------------------------------------------------------------------ help
def _default_text(f) -> str:
    if f.default is not MISSING:
        return repr(f.default)
    if f.default_factory is not MISSING:  # type: ignore[misc]
        try:
            return repr(f.default_factory())  # type: ignore[misc]
        except Exception:  # noqa: BLE001
            return "(computed)"
    return "(required)"


def format_help(dataclass_types: Sequence[Type], prog: str = "") -> str:
    """Every option with its type, default and help string, grouped by argument class."""
    out = [f"usage: {prog or 'run'} [ARGUMENTS.json] [--option value ...]", "",
           "Options from the JSON file and the command line (the command line wins):"]
    for dtype in dataclass_types:
        out += ["", f"{dtype.__name__}:"]
        for f in fields(dtype):
            if not f.init:
                continue
            kind = getattr(f.type, "__name__", None) or str(f.type).replace("typing.", "")
            text = (f.metadata or {}).get("help", "")
            out.append(f"  --{f.name} ({kind}, default {_default_text(f)})")
            if text:
                out.append(f"      {' '.join(str(text).split())}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ parsing
_POSITIVE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")


def _check_counts(objs) -> None:
    for obj in objs:
        for name in _POSITIVE:
            value = getattr(obj, name, None)
            if isinstance(value, int) and value <= 0:
                raise ArgumentError(f"option --{name}: must be >= 1, got {value}")


def _argparse_message(message: str, origins: Dict[str, str], cli_names: set) -> str:
    """argparse's 'argument --x: invalid float value: 'y'' with the file:line:field when it came from the file."""
    m = re.match(r"argument --([\w.-]+)(?:/[^:]*)?: (.*)", message)
    if not m:
        return message
    name, rest = m.group(1), m.group(2)
    if name in origins and name not in cli_names:
        return f"{origins[name]}: field '{name}': {rest}"
    return f"option --{name}: {rest}"


def parse_args(dataclass_types: Sequence[Type], argv: Optional[Sequence[str]] = None) -> Tuple[Any, ...]:
    """Parse ``[config.json] [--flag value ...]`` into instances of ``dataclass_types``.

    Uses PaddleNLP's PdArgumentParser so TrainingArguments keep their own post-processing. A
    ``__post_init__`` ValueError of a dataclass is re-raised as an ArgumentError with its message.
    ``RunArguments`` (and ``overwrite_output_dir`` where missing) are parsed too; their values are set on the
    last returned object (the training arguments) and ``allow_pickle`` for the process.
    """
    from paddlenlp.trainer import PdArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    user_types = list(dataclass_types)
    extra: List[Type] = [RunArguments]
    if "overwrite_output_dir" not in _valid_names(user_types):
        extra.append(OutputDirArguments)
    all_types = user_types + extra
    valid = _valid_names(all_types)
    if any(tok in ("-h", "--help") for tok in argv):
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "run"
        sys.stdout.write(format_help(all_types, prog))
        raise SystemExit(0)
    tokens: List[str] = []
    origins: Dict[str, str] = {}
    if argv and not argv[0].startswith("--"):
        if not argv[0].endswith(".json"):
            raise ArgumentError(f"the first argument must be a .json argument file or a --flag, got '{argv[0]}'")
        tokens.extend(json_to_argv(argv[0], valid, origins))
        argv = argv[1:]
    cli_names = set()
    for tok in argv:
        if tok.startswith("--"):
            name = tok[2:].split("=", 1)[0]
            if name not in valid:
                raise _unknown(name, valid, "command line")
            cli_names.add(name)
    tokens.extend(argv)
    from alignment.parallel import ParallelStrategy, compat

    compat.apply()  # before TrainingArguments, which may call fleet.init
    tokens = compat.training_argv(tokens)
    # sequence lengths change from batch to batch: stages exchange shapes for every micro-batch
    tokens = compat.add_pipeline_config(tokens, "disable_p2p_cache_shape")
    parser = PdArgumentParser(tuple(all_types))

    def error(message):  # argparse would print its usage and exit; one line instead
        raise ArgumentError(_argparse_message(message, origins, cli_names))

    parser.error = error
    try:
        parsed = parser.parse_args_into_dataclasses(args=tokens, return_remaining_strings=True)
    except ArgumentError:
        raise
    except SystemExit as e:  # argparse exits on some errors without calling error()
        raise ArgumentError(f"invalid command-line or file value (argparse exit {e.code})") from None
    except ValueError as e:  # a dataclass __post_init__ check: its message names the field
        raise ArgumentError(str(e)) from e
    *objs, remaining = parsed
    if remaining:
        raise ArgumentError(f"unrecognised arguments: {' '.join(remaining)}")
    run = objs[len(user_types)]
    objs = objs[: len(user_types)]
    if run.plan_memory:  # before anything touches the output directory or loads a model
        from alignment.tools.plan_memory import run as print_plan, spec_from_run_args

        try:
            print_plan(spec_from_run_args(objs))
        except ValueError as e:
            raise ArgumentError(str(e)) from None
        raise SystemExit(0)
    target = objs[-1]
    for name in ("max_nonfinite_steps", "debug", "allow_pickle"):
        setattr(target, name, getattr(run, name))
    if OutputDirArguments in extra:
        target.overwrite_output_dir = parsed[len(user_types) + 1].overwrite_output_dir
    from alignment.utils.safe_io import set_allow_pickle

    set_allow_pickle(run.allow_pickle)
    _check_counts(objs)
    training = getattr(target, "do_train", True) or not getattr(target, "do_eval", False)
    if training and hasattr(target, "output_dir"):  # before any model is loaded
        from alignment.training.runner import output_dir_problem

        problem = output_dir_problem(target)
        if problem:
            raise ArgumentError(problem)
    for obj in objs:  # bf16 / fp16 on a CPU-only Paddle: one line now, not a kernel error in the first step
        if hasattr(obj, "bf16") and hasattr(obj, "fp16"):
            from alignment.training.precision import precision_problem

            problem = precision_problem(bool(obj.bf16), bool(obj.fp16), str(getattr(obj, "fp16_opt_level", "O1")))
            if problem:
                raise ArgumentError(problem)
    for obj in objs:  # the layout of a Trainer-based stage: validated, groups adopted from fleet
        if hasattr(obj, "tensor_parallel_degree") and hasattr(obj, "per_device_train_batch_size"):
            try:
                ParallelStrategy.from_args(obj).init()
            except ValueError as e:
                raise ArgumentError(str(e)) from None
    return tuple(objs)


# ------------------------------------------------------------------------------------------- the error path
def classify(error: BaseException) -> Tuple[int, str]:
    """(exit code, one-line message) of an exception that ended a run."""
    import gzip

    from alignment.utils.guards import NonFiniteStop

    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > 600:
        text = text[:597] + "..."
    if isinstance(error, NonFiniteStop):
        return 3, text
    if isinstance(error, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(error, UnicodeDecodeError):
        return 2, f"not UTF-8 text ({error.reason} at byte {error.start}); re-encode the file as UTF-8"
    if isinstance(error, gzip.BadGzipFile):
        return 2, f"corrupt gzip file: {text}"
    if isinstance(error, (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)):
        path = getattr(error, "filename", None)
        why = {NotADirectoryError: "a parent of it is a file", IsADirectoryError: "it is a directory",
               FileExistsError: "it exists", PermissionError: "permission denied"}[type(error)]
        return 2, f"cannot write '{path}': {why}" if path else text
    if isinstance(error, (ValueError, OSError, KeyError)):  # ArgumentError, DataError, config checks, paths
        if isinstance(error, KeyError):
            return 1, f"internal error: KeyError {text} (rerun with --debug for the traceback)"
        return 2, text
    return 1, f"internal error: {type(error).__name__}: {text} (rerun with --debug for the traceback)"


def _debug_requested(argv: Sequence[str]) -> bool:
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    for i, tok in enumerate(argv):
        if tok == "--debug":
            nxt = argv[i + 1] if i + 1 < len(argv) else "true"
            return nxt.lower() not in ("false", "0", "no")
        if tok.startswith("--debug="):
            return tok.split("=", 1)[1].lower() not in ("false", "0", "no")
    return False


def run_cli(main: Callable[..., Any], argv: Optional[Sequence[str]] = None, **kwargs) -> Any:
    """Call ``main(argv, **kwargs)``; on an error print one line to stderr and exit 2 (user error), 3 (the
    numeric guards stopped the run) or 1 (anything else). ``--debug`` / ALIGNMENT_DEBUG=1 re-raise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv, **kwargs)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the one place errors become exit codes
        if _debug_requested(argv):
            raise
        code, message = classify(e)
        sys.stdout.flush()
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        raise SystemExit(code) from None

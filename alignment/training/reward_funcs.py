"""Named rewards (``reward_funcs``), shared by the PPO/GRPO stage and the reward server.

``reward_terms(args)`` turns the names into ``RewardTerm`` objects: a registered text reward of
``alignment.algorithms.verifiers`` (accuracy, format, length, repetition), ``remote`` (the reward server through
``alignment.serve.client.RewardClient``) or a user callable ``module.path:function`` called as
``fn(prompts, completions, **columns)`` (columns: ``solution``, ``completion_lengths`` and the record's extra
columns) returning one number per completion. A wrong count, a non-number or a NaN is an error naming the
function, never a silent zero.
"""

from __future__ import annotations

from typing import Callable, List, Optional

__all__ = ["REMOTE", "RewardTerm", "reward_terms", "check_reward_func_names", "decode_completions", "row_columns"]

REMOTE = "remote"


def check_reward_func_names(names) -> None:
    """Each name is a registered rule reward, 'remote', or 'module.path:function'; else a one-line error."""
    from alignment.algorithms import available

    valid = available("reward_func")
    for name in names:
        if name in valid or name == REMOTE:
            continue
        module, _, fn = str(name).partition(":")
        if module and fn and all(part.isidentifier() for part in module.split(".")) and fn.isidentifier():
            continue
        raise ValueError(f"reward_funcs entry '{name}' is not valid; allowed values: {', '.join(valid)}, "
                         f"{REMOTE}, or module.path:function")


def _import_callable(spec: str):
    import importlib

    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ValueError(f"reward_funcs entry '{spec}': cannot import module '{module}' ({e})") from None
    except AttributeError:
        raise ValueError(f"reward_funcs entry '{spec}': module '{module}' has no '{name}'") from None
    if not callable(fn):
        raise ValueError(f"reward_funcs entry '{spec}': '{name}' is not callable")
    return fn


class RewardTerm:
    """One named reward: ``fn(prompts, completions, **columns) -> list of floats`` with its options and weight."""

    def __init__(self, name: str, fn: Callable, weight: float = 1.0, options: Optional[dict] = None):
        self.name, self.fn, self.weight, self.options = name, fn, float(weight), dict(options or {})

    def __call__(self, prompts, completions, columns: dict) -> List[float]:
        values = self.fn(prompts, completions, **{**columns, **self.options})
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"reward function '{self.name}' returned a non-numeric score") from None
        if len(values) != len(completions):
            raise ValueError(f"reward function '{self.name}' returned {len(values)} scores for "
                             f"{len(completions)} completions")
        bad = [i for i, v in enumerate(values) if v != v or v in (float("inf"), float("-inf"))]
        if bad:
            raise ValueError(f"reward function '{self.name}' returned a non-finite score for row {bad[0]}")
        return values


def reward_terms(args) -> List[RewardTerm]:
    """The ``reward_funcs`` of ``args`` as terms (weights from ``reward_weights``, options from the reward_* fields)."""
    from alignment.algorithms import available, get
    from alignment.algorithms.verifiers import DEFAULT_FORMAT_PATTERN

    names = list(args.reward_funcs or [])
    check_reward_func_names(names)
    weights = list(args.reward_weights or [])
    options = {
        "format": {"pattern": args.reward_format_pattern or DEFAULT_FORMAT_PATTERN},
        "length": {"target_length": args.reward_target_length},
        "repetition": {"ngram_size": args.reward_repetition_ngram,
                       "max_penalty": args.reward_repetition_max_penalty},
    }
    terms, seen = [], set()
    for i, name in enumerate(names):
        if name in available("reward_func"):
            fn, label, opts = get("reward_func", name), name, options.get(name, {})
        elif name == REMOTE:
            from alignment.serve.client import RewardClient

            fn = RewardClient(args.reward_server_url, timeout=args.reward_server_timeout,
                              retries=args.reward_server_retries)
            label, opts = REMOTE, {}
        else:
            fn, label, opts = _import_callable(name), name.rpartition(":")[2], {}
        while label in seen:
            label += "_"
        seen.add(label)
        terms.append(RewardTerm(label, fn, weights[i] if i < len(weights) else 1.0, opts))
    return terms


def decode_completions(tokenizer, rollout) -> List[str]:
    """Response texts of a rollout (special tokens dropped), one per row."""
    ids, mask = rollout.responses.numpy(), rollout.response_mask.numpy()
    return [tokenizer.decode([int(t) for t, m in zip(row, keep) if m], skip_special_tokens=True)
            for row, keep in zip(ids, mask)]


def row_columns(rollout, extras: Optional[List[dict]] = None) -> dict:
    """Per-row columns a reward function receives: solution, completion_lengths and the records' extras."""
    n = int(rollout.sequences.shape[0])
    columns = {"solution": list(rollout.answers) if rollout.answers is not None else [None] * n,
               "completion_lengths": [int(x) for x in rollout.response_lengths.numpy()]}
    if extras:
        for key in sorted({k for row in extras for k in (row or {})}):
            if key not in columns:
                columns[key] = [(row or {}).get(key) for row in extras]
    return columns

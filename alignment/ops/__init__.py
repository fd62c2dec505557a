"""Python face of the custom operators in ``csrc/``, each next to its pure-Paddle reference.

    logps, entropy = completion_logps(logits, labels, mask, with_entropy=True)  # fused when built
    ids = sample_tokens(logits, history, history_mask, temperature=0.7, top_p=0.9)
    out = decode_attention(q, k, v, cos, sin, positions, key_mask, cache_k, cache_v, t, scale)  # KV cache in place
    y = rms_norm(x, weight, eps)  # Llama / Qwen2 RMSNorm layers too (alignment.ops.norm.install_rms_norm)

``use_fusemt`` is the one switch between the fused operators and the references: on by default (the
environment variable ``ALIGNMENT_USE_FUSEMT=0`` turns it off), and the fused path is taken only where
the operator library builds (``alignment.ops._build``; a failed build warns once and everything uses
the references). ``set_use_fusemt(False)`` or ``with use_fusemt(False):`` picks the references.

The shared log-prob helpers of ``alignment.algorithms.utils`` (``gather_logps``,
``entropy_from_logits``, so SFT, DPO family, KTO, GKD and PPO/GRPO experience and updates) call the fused
log-prob operator through a hook that this package installs on import; under vocabulary (tensor)
parallelism they keep their sharded path. The rollout gets the ``"fused"`` sampler
(``alignment.rollout.sampling`` registry).

CPU threads: the operators use ``num_threads()`` threads over rows: ``set_num_threads(n)``, else
``OMP_NUM_THREADS`` (which Paddle sets to 1 on import when unset), else 1.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

__all__ = [
    "set_use_fusemt",
    "use_fusemt",
    "fusemt_requested",
    "fused_available",
    "set_num_threads",
    "num_threads",
    "completion_logps",
    "completion_logps_reference",
    "fused_applies",
    "sample_tokens",
    "sample_tokens_reference",
    "apply_penalties",
    "fused_penalties",
    "decode_attention",
    "decode_attention_reference",
    "linear_generalized_jsd",
    "rms_norm",
    "rms_norm_reference",
]

_SWITCH = {"on": os.environ.get("ALIGNMENT_USE_FUSEMT", "1") != "0", "threads": None}


def set_use_fusemt(flag: bool) -> bool:
    """Turn the fused operators on or off for this process; returns the previous setting."""
    previous, _SWITCH["on"] = _SWITCH["on"], bool(flag)
    return previous


@contextlib.contextmanager
def use_fusemt(flag: bool) -> Iterator[None]:
    """``with use_fusemt(False):`` runs the block on the pure-Paddle references."""
    previous = set_use_fusemt(flag)
    try:
        yield
    finally:
        set_use_fusemt(previous)


def fusemt_requested() -> bool:
    return _SWITCH["on"]


def fused_available() -> bool:
    """True when the switch is on and the operator library is built (builds it on first call)."""
    from ._build import load_ops

    return _SWITCH["on"] and load_ops() is not None


def set_num_threads(n: Optional[int]) -> None:
    """CPU threads of the operators (None: follow OMP_NUM_THREADS)."""
    if n is not None and n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1 or None, got {n}")
    _SWITCH["threads"] = n


def num_threads() -> int:
    if _SWITCH["threads"] is not None:
        return _SWITCH["threads"]
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


from .attention import decode_attention, decode_attention_reference  # noqa: E402
from .linear_jsd import linear_generalized_jsd  # noqa: E402
from .logps import completion_logps, completion_logps_reference, fused_applies, install_logps_hook  # noqa: E402
from .norm import rms_norm, rms_norm_reference  # noqa: E402
from .sampling import apply_penalties, fused_penalties, sample_tokens, sample_tokens_reference  # noqa: E402

install_logps_hook()

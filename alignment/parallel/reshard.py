"""``eval_mode``: a non-pipeline copy of a pipeline-parallel model for generation and experience scoring.

A pipeline model cannot decode token by token efficiently (every token would cross every stage), so the
rollout uses a copy laid out for generation, refreshed from the training weights before each rollout:

    copy = GenerationCopy(pipe_model, build=lambda: AutoModelForCausalLM.from_config(cfg), mode="tensor_parallel")
    stats = copy.refresh()      # {"reshard_seconds": ..., "reshard_bytes": ...}; copy.model is up to date

``mode``:
* ``tensor_parallel``: every rank holds the whole depth of the model, split like its tensor-parallel rank's
  training weights (the stages' tensors are gathered over the pipeline group only; with tp 1 this is a full
  copy);
* ``single``: every rank holds one full, unsplit copy (tensor-parallel shards are also merged over the
  tensor-parallel group with the family's own merge rules).

``reshard_bytes`` counts the bytes this rank received from other ranks; the copy is kept and refreshed in
place, never rebuilt (``release()`` frees it). PaddleNLP's ``eval_mode`` resharding is the same idea
(``paddlenlp_rlhf.md`` §6.4).
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from .strategy import ParallelStrategy, unwrap_model

__all__ = ["GenerationCopy", "EVAL_MODES"]

EVAL_MODES = ("single", "tensor_parallel")


def _numpy_state(state: Dict[str, paddle.Tensor]) -> Dict[str, np.ndarray]:
    return {k: np.asarray(v.numpy()) for k, v in state.items()}


class GenerationCopy:
    """A plain (non-pipeline) copy of a pipeline model, refreshed from its weights; see the module docstring."""

    def __init__(self, pipe_model, build: Callable[[], paddle.nn.Layer], mode: str = "tensor_parallel",
                 strategy: Optional[ParallelStrategy] = None,
                 state_fn: Optional[Callable[[], Dict[str, paddle.Tensor]]] = None):
        if mode not in EVAL_MODES:
            raise ValueError(f"eval_mode='{mode}' is not valid; allowed values: {', '.join(EVAL_MODES)}")
        self.pipe = pipe_model
        self.state_fn = state_fn or (lambda: unwrap_model(self.pipe).state_dict())  # LoRA: the merged weights
        self.mode = mode
        self.strategy = strategy or ParallelStrategy.current()
        with paddle.utils.unique_name.guard():
            self.model = build()
        self.model.eval()
        for p in self.model.parameters():
            p.stop_gradient = True

    def _merge_tensor_parallel(self, state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Full tensors from this rank's tensor-parallel shards (on every rank of the group)."""
        from .checkpoint import tensor_parallel_class

        cls, config = tensor_parallel_class(self.pipe)
        actions = cls._get_tensor_parallel_mappings(config, is_split=False)
        for old, new in cls._resolve_prefix_keys(actions.keys(), state.keys()).items():
            actions[new] = actions.pop(old)
        group = self.strategy.tensor_parallel_group
        out = {}
        for key in sorted(state):
            if key in actions:
                parts: list = []
                dist.all_gather_object(parts, state[key], group=group)
                out[key] = actions[key](parts)
            else:
                out[key] = state[key]
        return out

    def refresh(self) -> Dict[str, float]:
        """Copy the current training weights into ``self.model``; returns the seconds and bytes it took."""
        t0 = time.perf_counter()
        s = self.strategy
        mine = _numpy_state(self.state_fn())
        received = 0
        if self.mode == "single" and s.tensor_parallel_degree > 1:
            merged = self._merge_tensor_parallel(mine)
            received += sum(v.nbytes for v in merged.values()) - sum(v.nbytes for v in mine.values())
            mine = merged
        full: Dict[str, np.ndarray] = dict(mine)
        if s.pipeline_parallel_degree > 1:
            parts: list = []
            dist.all_gather_object(parts, mine, group=s.pipeline_parallel_group)
            for part in parts:
                for k, v in part.items():
                    if k not in full:
                        full[k] = v
                        received += v.nbytes
        target = self.model.state_dict()
        missing = [k for k in target if k not in full and not k.startswith("normalizer.")]
        if missing:
            raise ValueError(f"eval_mode={self.mode}: the pipeline stages hold no tensor for {missing[:4]}")
        with paddle.no_grad():
            for key, param in target.items():
                if key in full:
                    value = full[key]
                    if tuple(value.shape) != tuple(param.shape):
                        raise ValueError(f"eval_mode={self.mode}: {key} has shape {list(value.shape)} in training "
                                         f"and {list(param.shape)} in the generation copy")
                    param.set_value(paddle.to_tensor(value).astype(param.dtype))
        return {"reshard_seconds": time.perf_counter() - t0, "reshard_bytes": float(received)}

    def release(self) -> None:
        """Free the copy (a later ``refresh`` is an error)."""
        self.model = None

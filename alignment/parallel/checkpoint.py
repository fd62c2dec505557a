"""One single-process state dict from a model trained under any layout (merged on save).

    state = full_state_dict(model)          # on the main process: {name: tensor}; None on the others
    if state is not None:
        model_like.save_pretrained(out, state_dict=state)

* tensor parallel: every split weight is gathered over the tensor-parallel group and merged with the
  family's own tensor-parallel mappings (PaddleNLP ``merge_tensor_parallel``: column-split weights are
  concatenated on their split axis, row-split ones on theirs, replicated ones kept once);
* pipeline parallel: each stage's (merged) tensors, already under single-model names, are gathered over the
  pipeline group and united;
* sharding stage 3: the parameters are first gathered from the sharding group.

Only the first data-parallel replica takes part in the gathers' results; every rank must call this
function (the gathers are collective). The result lives in host memory on the main process: for a
7B model that is one full copy in RAM, the same as PaddleNLP's merged save.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import paddle
import paddle.distributed as dist

from .strategy import ParallelStrategy, unwrap_model

__all__ = ["full_state_dict", "tensor_parallel_class"]


def tensor_parallel_class(model):
    """(class with ``merge_tensor_parallel``, its config) for a model, a pipeline model or a ScoreModel."""
    inner = unwrap_model(model)
    for candidate in (inner, getattr(inner, "backbone", None), getattr(inner, "model", None)):
        if candidate is not None and hasattr(type(candidate), "merge_tensor_parallel") \
                and getattr(candidate, "config", None) is not None:
            return type(candidate), candidate.config
    raise ValueError(f"{type(inner).__name__} has no tensor-parallel mappings to merge its weights with")


def _gather_stage3(model) -> None:
    wrapped = model
    while wrapped is not None:
        if hasattr(wrapped, "get_all_parameters"):
            wrapped.get_all_parameters(convert2cpu=False)
            return
        wrapped = getattr(wrapped, "_layer", None) or getattr(wrapped, "_layers", None)


def full_state_dict(model, strategy: Optional[ParallelStrategy] = None,
                    state_dict: Optional[Dict[str, paddle.Tensor]] = None,
                    gather_stage3: bool = True) -> Optional[Dict[str, paddle.Tensor]]:
    """The single-process state dict of ``model`` on the main process (``None`` on every other rank).

    ``gather_stage3=False`` when the caller has already gathered stage-3 parameters (PaddleNLP's
    ``Trainer.save_model`` does, on every rank, before it calls ``_save`` on the saving ranks only).
    """
    strategy = strategy or ParallelStrategy.current()
    if gather_stage3 and strategy.sharding == "stage3" and strategy.sharding_parallel_degree > 1:
        _gather_stage3(model)
    state = state_dict if state_dict is not None else unwrap_model(model).state_dict()
    if not strategy.hybrid:
        return state if strategy.is_main_process else None
    if strategy.tensor_parallel_degree > 1:
        cls, config = tensor_parallel_class(model)
        state = cls.merge_tensor_parallel(state, config)  # values only on tensor-parallel rank 0
    if strategy.pipeline_parallel_degree > 1:
        mine = None
        if strategy.tensor_parallel_rank == 0:
            mine = {k: np.asarray(v.numpy()) for k, v in state.items() if v is not None}
        parts: list = []
        dist.all_gather_object(parts, mine, group=strategy.pipeline_parallel_group)
        if not strategy.is_main_process:
            return None
        merged: Dict[str, paddle.Tensor] = {}
        for part in parts:
            for k, v in (part or {}).items():
                merged.setdefault(k, paddle.to_tensor(v))
        return merged
    if not strategy.is_main_process:
        return None
    return {k: v for k, v in state.items() if v is not None}

"""Process layout and collectives: the one place that imports ``paddle.distributed``.

``ParallelStrategy`` (strategy.py) owns the tensor / pipeline / sharding / data-parallel groups, wraps
models and optimizers, reduces metrics over the data-carrying ranks and answers rank questions.
``compat`` fills in what fleet's layers need on CPU builds; ``vocab`` holds the vocabulary-parallel
reductions; ``checkpoint`` turns a parallel model back into one single-process state dict; ``reshard``
keeps the ``eval_mode`` generation copy of a pipeline-parallel model.
"""

from .strategy import ParallelStrategy, masked_moments, unwrap_model

__all__ = ["ParallelStrategy", "masked_moments", "unwrap_model", "pipeline_layer_desc", "is_pipeline_layer"]


def pipeline_layer_desc(layer_cls, **kwargs):
    """fleet's ``LayerDesc`` (a lazily built pipeline stage layer) for ``alignment.models.pipeline``."""
    from paddle.distributed.fleet.meta_parallel import LayerDesc

    return LayerDesc(layer_cls, **kwargs)


def is_pipeline_layer(model) -> bool:
    """Whether ``model`` is a fleet ``PipelineLayer``."""
    from paddle.distributed.fleet.meta_parallel import PipelineLayer

    return isinstance(model, PipelineLayer)

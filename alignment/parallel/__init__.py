"""Process layout and collectives: the one place that imports ``paddle.distributed``.

``ParallelStrategy`` creates and wraps models (data parallel today), reduces metrics, gathers
statistics for global normalisation, and answers rank questions. See ``strategy.py``.
"""

from .strategy import ParallelStrategy, masked_moments, unwrap_model

__all__ = ["ParallelStrategy", "masked_moments", "unwrap_model"]

"""Score normalisers (kind ``"normalizer"``): running statistics that travel with a score model's checkpoint.

Each is a ``paddle.nn.Layer`` with persistable buffers ``mean`` [D] (0), ``var`` [D] (1) and ``count`` [1]
(0), so ``state_dict`` / ``set_state_dict`` save and restore them with the model. ``update(x)`` takes (N, D)
or (N,) (when D = 1) and merges the batch's mean and unbiased variance; ``normalize(x, mode)``, x (..., D)::

    affine     (x - mean) / (std + 1e-8)      (score_type reward)
    scale      x / (std + 1e-8)               (score_type cost)
    translate  x - mean
    identity   x                              (score_type critic)

Registered names (the classes): ``RunningMeanStd``, ``ExponentialMovingAverage``, ``IdentityNormalizer``;
``make_normalizer(name, shape, momentum)`` builds one (name None -> IdentityNormalizer, as PaddleNLP's
``normalizer_type=None``). Statistics are kept in float32 unless ``dtype`` says otherwise; a data-parallel
caller all-gathers the batch before ``update`` (PaddleNLP gathers over the sharding group).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import paddle

from .registry import get, register

__all__ = [
    "Normalizer",
    "RunningMeanStd",
    "ExponentialMovingAverage",
    "IdentityNormalizer",
    "make_normalizer",
    "NORMALIZE_MODES",
]

Tensor = paddle.Tensor
NORMALIZE_MODES = ("affine", "scale", "translate", "identity")
_EPS = 1e-8


def _size(shape: Union[int, Sequence[int]]) -> int:
    dims = [shape] if isinstance(shape, int) else list(shape)
    if len(dims) != 1 or dims[0] < 1:
        raise ValueError(f"normalizer shape must be one positive dimension D (the score_dim); got {shape}")
    return int(dims[0])


class Normalizer(paddle.nn.Layer):
    """Base class: the three buffers, the batch moments and ``normalize``; subclasses define ``_merge``."""

    def __init__(self, shape: Union[int, Sequence[int]] = 1, dtype: str = "float32"):
        super().__init__()
        size = _size(shape)
        self.register_buffer("mean", paddle.zeros([size], dtype=dtype), persistable=True)
        self.register_buffer("var", paddle.ones([size], dtype=dtype), persistable=True)
        self.register_buffer("count", paddle.zeros([1], dtype=dtype), persistable=True)

    @property
    def std(self) -> Tensor:
        return paddle.sqrt(self.var)

    def _batch(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(N, D) or (N,) -> batch mean [D], unbiased batch var [D] (0 when N = 1), n [1]."""
        size = self.mean.shape[0]
        x = x.detach().astype(self.mean.dtype)
        if x.ndim == 1 and size == 1:
            x = x.unsqueeze(-1)
        if x.ndim != 2 or x.shape[-1] != size:
            raise ValueError(f"normalizer update expects (N, {size}) or (N,) when D = 1; got shape {x.shape}")
        n = x.shape[0]
        mean = x.mean(axis=0)
        var = ((x - mean) ** 2).sum(axis=0) / max(n - 1, 1)
        return mean, var, paddle.full([1], float(n), dtype=self.mean.dtype)

    @paddle.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge a batch x (N, D) or (N,) into the running statistics."""
        if x.shape[0] == 0:
            return
        mean, var, n = self._batch(x)
        new_mean, new_var = self._merge(mean, var, n)
        paddle.assign(new_mean, output=self.mean)
        paddle.assign(new_var, output=self.var)
        paddle.assign(self.count + n, output=self.count)

    def _merge(self, mean: Tensor, var: Tensor, n: Tensor) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def normalize(self, x: Tensor, mode: str = "affine") -> Tensor:
        """Normalise x (..., D) with the current statistics by ``mode`` (one of NORMALIZE_MODES)."""
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"unknown normalize mode '{mode}'; valid modes: {', '.join(NORMALIZE_MODES)}")
        mean, std = self.mean.astype(x.dtype), self.std.astype(x.dtype)
        if mode == "affine":
            return (x - mean) / (std + _EPS)
        if mode == "scale":
            return x / (std + _EPS)
        if mode == "translate":
            return x - mean
        return x

    def forward(self, x: Tensor, mode: str = "affine") -> Tensor:
        return self.normalize(x, mode)


@register("normalizer", "RunningMeanStd")
class RunningMeanStd(Normalizer):
    """Running mean / unbiased variance over everything seen (parallel merge, Chan et al. 1979; Welford 1962).

    With batch mean m_b, unbiased var v_b, size n_b and δ = m_b - mean, N = count + n_b::

        mean' = mean + δ n_b / N
        var'  = (var (count - 1) + v_b (n_b - 1) + δ² count n_b / N) / (N - 1)      (var kept while N <= 1)

    so mean/var always equal the mean and ``np.var(ddof=1)`` of the concatenated data. Deliberate
    difference from PaddleNLP/safe-rlhf (notes §3.3), which merge (var·count + v_b·n_b + δ²·count·n_b/N) / N:
    identical after the first batch, slightly off (neither biased nor unbiased) afterwards.
    """

    def _merge(self, mean: Tensor, var: Tensor, n: Tensor) -> Tuple[Tensor, Tensor]:
        count = self.count
        total = count + n
        delta = mean - self.mean
        new_mean = self.mean + delta * n / total
        m2 = self.var * paddle.clip(count - 1.0, min=0.0) + var * (n - 1.0) + delta**2 * count * n / total
        new_var = paddle.where(total > 1.0, m2 / paddle.clip(total - 1.0, min=1.0), self.var)
        return new_mean, new_var


@register("normalizer", "ExponentialMovingAverage")
class ExponentialMovingAverage(Normalizer):
    """Exponential moving average of the batch moments, momentum m in [0, 1)::

        mean' = m · mean + (1 - m) · m_b,   var' = m · var + (1 - m) · v_b,   count' = count + n_b

    from the initial mean 0 / var 1 (as PaddleNLP and safe-rlhf). NB: PaddleNLP's ``normalizer_momentum`` help
    text states EMA_{t+1} = m·x + (1-m)·EMA_t, the reverse of what its code (and this class) does: a larger
    momentum means slower statistics. ``momentum=None`` is an error here (it crashes PaddleNLP at update).
    """

    def __init__(
        self, shape: Union[int, Sequence[int]] = 1, momentum: Optional[float] = None, dtype: str = "float32"
    ):
        if momentum is None:
            raise ValueError("ExponentialMovingAverage needs normalizer_momentum (e.g. 0.9); got None")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"normalizer_momentum must be in [0, 1); got {momentum}")
        super().__init__(shape, dtype)
        self.momentum = float(momentum)

    def _merge(self, mean: Tensor, var: Tensor, n: Tensor) -> Tuple[Tensor, Tensor]:
        m = self.momentum
        return m * self.mean + (1.0 - m) * mean, m * self.var + (1.0 - m) * var


@register("normalizer", "IdentityNormalizer")
class IdentityNormalizer(Normalizer):
    """Keeps mean 0 / var 1 and only counts samples; ``normalize`` returns x unchanged for every mode
    (PaddleNLP applies the mode to its fixed 0/1 buffers, i.e. x/(1 + 1e-8) for affine)."""

    def _merge(self, mean: Tensor, var: Tensor, n: Tensor) -> Tuple[Tensor, Tensor]:
        return self.mean, self.var

    def normalize(self, x: Tensor, mode: str = "affine") -> Tensor:
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"unknown normalize mode '{mode}'; valid modes: {', '.join(NORMALIZE_MODES)}")
        return x


def make_normalizer(
    name: Optional[str],
    shape: Union[int, Sequence[int]] = 1,
    momentum: Optional[float] = None,
    dtype: str = "float32",
) -> Normalizer:
    """Build the normaliser registered as ``name`` (None -> IdentityNormalizer); only EMA uses momentum."""
    cls = get("normalizer", "IdentityNormalizer" if name is None else name)
    if cls is ExponentialMovingAverage:
        return cls(shape, momentum=momentum, dtype=dtype)
    return cls(shape, dtype=dtype)

"""Dataset specs and mixing raw datasets by ratio.

Spec forms (all equivalent ways to say "which datasets, how much of each, where from"):

* string: ``"alpaca:0.75,json:1.0:/data/x.jsonl"`` - comma-separated ``name[:ratio[:path]]``
  (the path is everything after the second colon; a missing ratio means 1.0)
* dict:   ``{"alpaca": 0.75, "json": {"proportion": 1.0, "path": "/data/x.jsonl", "format": "trl"}}``
  (every key of the inner dict but ``proportion`` goes to the dataset's constructor)
* list:   ``[("alpaca", 0.75), ("json", {"path": ...}), "gsm8k:0.5", (my_raw_dataset, 1.0)]``

Ratio ``r``: ``r <= 1`` samples ``round(r * N)`` records without replacement; ``r > 1`` repeats the whole
dataset ``floor`` times and samples the remainder; ``0`` drops the dataset. Each dataset gets its own child
of ``numpy.random.SeedSequence(seed)``, so the mix is deterministic given the seed, and the selected
indices of a ratio < 1 stay in file order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .raw import DataError, RawDataset, RawSample

__all__ = ["DatasetSpec", "MixedRawDataset", "parse_dataset_spec", "mix_raw_datasets", "load_raw_datasets"]

SpecLike = Union[str, Mapping[str, Any], Sequence[Any]]


@dataclass
class DatasetSpec:
    """One entry of a mixture: a registered ``name`` (or an already built ``dataset``), its ratio and
    the keyword arguments for its constructor (``path``, ``format``, ``split`` ...)."""

    name: str
    proportion: float = 1.0
    kwargs: Dict[str, Any] = field(default_factory=dict)
    dataset: Optional[RawDataset] = None


def _ratio(value: Any, name: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise DataError(
                f"dataset '{name}': ratio must be a number, got {value!r}", field="proportion"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(
            f"dataset '{name}': ratio must be a number, got {type(value).__name__}", field="proportion"
        )
    if not math.isfinite(value) or value < 0:
        raise DataError(
            f"dataset '{name}': ratio must be a finite number >= 0, got {value}", field="proportion"
        )
    return float(value)


def _from_string(item: str) -> DatasetSpec:
    parts = item.strip().split(":", 2)
    name = parts[0].strip()
    if not name:
        raise DataError(f"dataset spec {item!r} has an empty name; expected 'name[:ratio[:path]]'")
    spec = DatasetSpec(name)
    if len(parts) > 1:
        if not parts[1].strip():
            raise DataError(f"dataset spec {item!r} has an empty ratio; expected 'name[:ratio[:path]]'")
        spec.proportion = _ratio(parts[1].strip(), name)
    if len(parts) > 2:
        path = parts[2].strip()
        if not path:
            raise DataError(f"dataset spec {item!r} has an empty path; expected 'name[:ratio[:path]]'")
        spec.kwargs["path"] = path
    return spec


def _from_pair(name: Any, value: Any) -> DatasetSpec:
    dataset = name if isinstance(name, RawDataset) else None
    if dataset is not None:
        name = dataset.display_name
    elif not isinstance(name, str) or not name:
        raise DataError(f"a dataset name must be a non-empty string or a RawDataset, got {name!r}")
    if value is None:
        return DatasetSpec(name, dataset=dataset)
    if isinstance(value, Mapping):
        kwargs = dict(value)
        proportion = _ratio(kwargs.pop("proportion", kwargs.pop("ratio", 1.0)), name)
        if dataset is not None and kwargs:
            raise DataError(f"dataset '{name}' is already built; it takes no options, got {sorted(kwargs)}")
        return DatasetSpec(name, proportion, kwargs, dataset)
    return DatasetSpec(name, _ratio(value, name), {}, dataset)


def parse_dataset_spec(spec: SpecLike) -> List[DatasetSpec]:
    """Normalise any spec form (string, dict, list) into a list of ``DatasetSpec``."""
    if isinstance(spec, DatasetSpec):
        return [spec]
    if isinstance(spec, RawDataset):
        return [DatasetSpec(spec.display_name, dataset=spec)]
    if isinstance(spec, str):
        items = [s for s in spec.split(",") if s.strip()]
        if not items:
            raise DataError("empty dataset spec; expected 'name[:ratio[:path]]', comma-separated")
        return [_from_string(s) for s in items]
    if isinstance(spec, Mapping):
        specs = [_from_pair(k, v) for k, v in spec.items()]
    elif isinstance(spec, Sequence):
        specs = []
        for item in spec:
            if isinstance(item, DatasetSpec):
                specs.append(item)
            elif isinstance(item, str):
                specs.extend(parse_dataset_spec(item))
            elif isinstance(item, RawDataset):
                specs.append(DatasetSpec(item.display_name, dataset=item))
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                specs.append(_from_pair(*item))
            else:
                raise DataError(
                    f"bad dataset spec entry {item!r}; expected 'name:ratio[:path]' or (name, ratio|dict)"
                )
    else:
        raise DataError(f"bad dataset spec of type {type(spec).__name__}; expected a string, dict or list")
    if not specs:
        raise DataError("empty dataset spec: no datasets given")
    return specs


class MixedRawDataset(RawDataset):
    """The concatenation of selected indices of several raw datasets (not registered)."""

    def __init__(self, parts: Sequence[Tuple[RawDataset, np.ndarray]]) -> None:
        self.datasets = [d for d, _ in parts]
        self.index: List[Tuple[int, int]] = [(k, int(i)) for k, (_, idx) in enumerate(parts) for i in idx]

    def __getitem__(self, index: int) -> RawSample:
        k, i = self.index[index]
        return self.datasets[k][i]

    def __len__(self) -> int:
        return len(self.index)

    def locate(self, index: int) -> Tuple[str, int]:
        """(dataset display name, index inside that dataset) of mixed sample ``index``."""
        k, i = self.index[index]
        return self.datasets[k].display_name, i

    def counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for k, _ in self.index:
            name = self.datasets[k].display_name
            out[name] = out.get(name, 0) + 1
        return out


def _select(n: int, proportion: float, rng: np.random.Generator) -> np.ndarray:
    k = int(math.floor(n * proportion + 0.5))
    full, rest = divmod(k, n) if n else (0, 0)
    parts = [np.arange(n)] * full
    if rest:
        parts.append(np.sort(rng.choice(n, size=rest, replace=False)))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def mix_raw_datasets(datasets: Sequence[Tuple[RawDataset, float]], seed: int = 42) -> MixedRawDataset:
    """Mix ``[(raw_dataset, ratio), ...]`` (see the module docstring for the ratio semantics)."""
    seeds = np.random.SeedSequence(seed).spawn(len(datasets))
    parts = []
    for (dataset, proportion), child in zip(datasets, seeds, strict=True):
        proportion = _ratio(proportion, getattr(dataset, "display_name", type(dataset).__name__))
        if len(dataset) == 0:
            raise DataError(f"dataset '{dataset.display_name}' is empty")
        parts.append((dataset, _select(len(dataset), proportion, np.random.default_rng(child))))
    mixed = MixedRawDataset(parts)
    if len(mixed) == 0:
        raise DataError("the dataset mixture is empty (every ratio selects 0 samples)")
    return mixed


def _instantiate(spec: DatasetSpec) -> RawDataset:
    if spec.dataset is not None:
        return spec.dataset
    cls = RawDataset.resolve(spec.name)
    try:
        return cls(**spec.kwargs)
    except TypeError as e:
        if "argument" not in str(e):
            raise
        raise DataError(
            f"dataset '{spec.name}' does not accept the options {sorted(spec.kwargs)}: {e}"
        ) from None


def load_raw_datasets(spec: SpecLike, seed: int = 42) -> MixedRawDataset:
    """Parse ``spec``, build every dataset by name (aliases work) and mix them by ratio."""
    specs = [s for s in parse_dataset_spec(spec) if s.proportion > 0]
    if not specs:
        raise DataError("every dataset of the spec has ratio 0")
    for s in specs:  # fail on an unknown name before loading anything
        if s.dataset is None:
            RawDataset.resolve(s.name)
    return mix_raw_datasets([(_instantiate(s), s.proportion) for s in specs], seed=seed)

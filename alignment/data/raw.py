"""Raw samples and the raw-dataset registry.

A raw dataset turns records (from a file or the hub) into ``RawSample`` dicts; the tokenized datasets in
``tokenized.py`` turn those into token ids. A subclass registers itself by its ``NAME`` (and optional
``ALIASES``) when the class statement runs, so a custom dataset is usable by name right after its
definition (``PreferenceDataset("my-dataset:1.0", tokenizer)``):

    class MyDataset(RawDataset):
        NAME = "my-dataset"

        def __init__(self, path=None):
            self.rows = [{"q": "hi", "good": "hello", "bad": "go away"}]

        def __getitem__(self, index) -> RawSample:
            row = self.rows[index]
            return RawSample(input=row["q"], answer=row["good"], other_answer=row["bad"], better=True)

        def __len__(self):
            return len(self.rows)
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, TypedDict, Union

__all__ = [
    "DataError",
    "RawSample",
    "RawDataset",
    "ListRawDataset",
    "load_raw_dataset",
    "available_raw_datasets",
]


class DataError(ValueError):
    """One clear error about bad input data: it names the file (or dataset), the line or record, the field.

    ``str(err)`` reads like ``data.jsonl, line 3, field 'better_response_id': expected 0 or 1, got 2``.
    The parts are kept as attributes (``file``, ``line``, ``record``, ``field``) for programs.
    """

    def __init__(
        self,
        message: str,
        *,
        file: Optional[str] = None,
        line: Optional[int] = None,
        record: Optional[int] = None,
        field: Optional[str] = None,
    ) -> None:
        self.reason = message
        self.file, self.line, self.record, self.field = file, line, record, field
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        elif record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(", ".join(where) + ": " + message if where else message)


class RawSample(TypedDict, total=False):
    """One record, independent of its source. Every key is optional; each tokenized dataset names the
    keys it needs (and raises a ``DataError`` naming the missing one).

    Supervised:        input (+ answer)  or  dialogue
    Preference:        input, answer, other_answer, better  (+ margin)
    SafetyPreference:  input, answer, other_answer, safer, is_safe, is_other_safe  (+ better)
    PromptOnly:        input  (+ solution / answer for rule-based rewards)
    UnpairedPreference (KTO): input, answer, label   (or a preference pair, split into two)
    """

    input: Union[str, List[str]]  # a prompt, or a dialogue ending with a user turn (odd length)
    dialogue: List[str]  # alternating user / assistant turns (supervised data; loss on every assistant turn)
    system: str  # optional system prompt
    answer: str  # the response (the first of a pair)
    other_answer: str  # the second response of a pair
    better: bool  # answer is more helpful than other_answer
    safer: bool  # answer is safer than other_answer
    is_safe: bool  # answer is safe
    is_other_safe: bool  # other_answer is safe
    label: bool  # unpaired feedback (KTO): answer is desirable
    margin: float  # preference strength for a reward-model margin loss
    solution: str  # reference answer (e.g. the number of a GSM8K problem) for rule-based rewards


_REGISTRY: Dict[str, type] = {}
_ALIASES: Dict[str, str] = {}


class RawDataset(abc.ABC):
    """Base class of raw datasets. Subclasses set ``NAME`` (and optional ``ALIASES``, not inherited),
    implement ``__init__``, ``__getitem__`` (-> ``RawSample``) and ``__len__``.

    ``NAME`` of a class that only serves as a base may be left unset; it is then not registered.
    """

    NAME: str = ""
    ALIASES: Tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("NAME")
        if not name:
            return
        if not isinstance(name, str):
            raise TypeError(f"{cls.__qualname__}.NAME must be a string, got {type(name).__name__}")
        aliases = tuple(cls.__dict__.get("ALIASES", ()))
        for key in (name, *aliases):
            owner = _REGISTRY.get(_ALIASES.get(key, key))
            if owner is not None and not _same_class(owner, cls):
                raise ValueError(
                    f"raw dataset name '{key}' of {cls.__module__}.{cls.__qualname__} is already registered "
                    "by "
                    f"{owner.__module__}.{owner.__qualname__}; choose another NAME or ALIASES"
                )
        _REGISTRY[name] = cls
        for alias in aliases:
            _ALIASES[alias] = name

    # ---------------------------------------------------------------- registry helpers
    @staticmethod
    def resolve(name: str) -> type:
        """The registered class of ``name`` (or alias); an unknown name lists the known ones."""
        cls = _REGISTRY.get(_ALIASES.get(name, name))
        if cls is None:
            raise DataError(
                f"unknown dataset name '{name}'; known datasets: {', '.join(available_raw_datasets())}"
                " (custom datasets: subclass alignment.data.RawDataset and set NAME)"
            )
        return cls

    @classmethod
    def load(cls, name: str, /, **kwargs: Any) -> "RawDataset":
        """Instantiate the dataset registered as ``name`` with ``kwargs`` (e.g. ``path=``)."""
        return RawDataset.resolve(name)(**kwargs)

    make = load

    @staticmethod
    def unregister(name: str) -> None:
        """Remove ``name`` and its aliases from the registry (mainly for tests and notebooks)."""
        canonical = _ALIASES.get(name, name)
        _REGISTRY.pop(canonical, None)
        for alias in [a for a, n in _ALIASES.items() if n == canonical]:
            del _ALIASES[alias]

    # ---------------------------------------------------------------- sample access
    @abc.abstractmethod
    def __getitem__(self, index: int) -> RawSample: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[RawSample]:
        for i in range(len(self)):
            yield self[i]

    @property
    def display_name(self) -> str:
        """Name used in error messages and logs (the NAME plus the path, when there is one)."""
        path = getattr(self, "path", None)
        return f"{self.NAME or type(self).__name__}({path})" if path else (self.NAME or type(self).__name__)


def _same_class(a: type, b: type) -> bool:
    # Re-executing the same class statement (module reload, notebook cell) is not a conflict.
    return a is b or (a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__)


class ListRawDataset(RawDataset):
    """An in-memory raw dataset over a list of ``RawSample`` (not registered; used by the file loaders)."""

    def __init__(self, samples: Sequence[RawSample], name: str = "list") -> None:
        self.samples = list(samples)
        self._name = name

    @property
    def display_name(self) -> str:
        return self._name

    def __getitem__(self, index: int) -> RawSample:
        return self.samples[index]

    def __len__(self) -> int:
        return len(self.samples)


def load_raw_dataset(name: str, /, **kwargs: Any) -> RawDataset:
    """``RawDataset.load``: build the raw dataset registered as ``name`` (aliases accepted)."""
    return RawDataset.load(name, **kwargs)


def available_raw_datasets() -> List[str]:
    """Sorted names and aliases of every registered raw dataset."""
    return sorted([*_REGISTRY, *_ALIASES])

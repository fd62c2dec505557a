"""Built-in raw datasets: the safe-rlhf / PaddleNLP set plus HH-RLHF, GSM8K and a generic ``json`` loader.

Each loads from its hub name through ``datasets.load_dataset`` or, given ``path=`` (the third part of a
spec string, ``PKU-SafeRLHF/train:1.0:/data/pku``), from a local file or folder (json, jsonl, jsonl.gz,
parquet). A ``path`` that does not exist locally but looks like ``owner/name`` is read from the hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, List, Optional

from .formats import load_samples, read_hub_records, read_records, resolve_format
from .raw import DataError, RawDataset, RawSample

__all__ = ["RecordsDataset", "JsonDataset", "HH_RLHF_VARIANTS"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class RecordsDataset(RawDataset):
    """Base of the record-file datasets (not registered itself).

    Class attributes: ``HUB_PATH`` (+ ``HUB_NAME`` config, ``DATA_DIR``) and ``SPLIT`` say where the hub
    copy lives; ``FORMAT`` names the record format (``formats.FORMATS``).
    """

    HUB_PATH: str = ""
    HUB_NAME: Optional[str] = None
    DATA_DIR: Optional[str] = None
    SPLIT: Optional[str] = "train"
    FORMAT: str = "auto"

    def __init__(
        self,
        path: Optional[str] = None,
        *,
        format: Optional[str] = None,
        split: Optional[str] = None,
        **load_kwargs: Any,
    ) -> None:
        self.path = path
        self.split = split or self.SPLIT
        self.format = resolve_format(format or self.FORMAT)
        if path is None:
            if not self.HUB_PATH:
                raise DataError(
                    f"dataset '{self.NAME}' needs a path (spec '{self.NAME}:1.0:/path/to/file.jsonl')"
                )
            records = read_hub_records(self.HUB_PATH, self.split, self.HUB_NAME, self.DATA_DIR, **load_kwargs)
        else:
            local = Path(os.path.expanduser(str(path)))
            if local.exists():
                if load_kwargs:
                    raise DataError(
                        f"dataset '{self.NAME}' does not accept the options {sorted(load_kwargs)} "
                        "with a local path "
                        "(extra options go to datasets.load_dataset for hub loading only); "
                        "accepted: path, format, split"
                    )
                if local.is_dir() and self.DATA_DIR and (local / self.DATA_DIR).is_dir():
                    local = local / self.DATA_DIR
                records = read_records(local, self.split)
            elif _is_hub_name(str(path)):
                records = read_hub_records(
                    _strip_hub(str(path)), self.split or "train", self.HUB_NAME, self.DATA_DIR, **load_kwargs
                )
            else:
                raise DataError(f"no such file or folder: {path} (a hub dataset needs the prefix hub:, "
                                f"e.g. hub:owner/name)", file=str(path))
        self.samples: List[RawSample] = load_samples(records, self.format)

    def __getitem__(self, index: int) -> RawSample:
        return self.samples[index]

    def __len__(self) -> int:
        return len(self.samples)


class JsonDataset(RecordsDataset):
    """Any local file or folder in a supported format: ``json:1.0:/data/x.jsonl`` or
    ``{"json": {"path": ..., "format": "trl"}}``. ``format="auto"`` detects it from the fields."""

    NAME = "json"
    ALIASES = ("file", "jsonl")
    SPLIT = None  # a folder: every data file in it (pass split= to pick the files named after a split)

    def __init__(
        self, path: Optional[str] = None, *, format: str = "auto", split: Optional[str] = None, **kw: Any
    ):
        if path is None:
            raise DataError("dataset 'json' needs a path (spec 'json:1.0:/path/to/file.jsonl' or path=...)")
        super().__init__(path, format=format, split=split, **kw)


# ------------------------------------------------------------------------------- PKU-SafeRLHF family


class PKUSafeRLHFTrain(RecordsDataset):
    NAME = "PKU-SafeRLHF/train"
    ALIASES = ("PKU-Alignment/PKU-SafeRLHF/train", "PKU-SafeRLHF")
    HUB_PATH, SPLIT, FORMAT = "PKU-Alignment/PKU-SafeRLHF", "train", "pku-saferlhf"


class PKUSafeRLHFTest(RecordsDataset):
    NAME = "PKU-SafeRLHF/test"
    ALIASES = ("PKU-Alignment/PKU-SafeRLHF/test",)
    HUB_PATH, SPLIT, FORMAT = "PKU-Alignment/PKU-SafeRLHF", "test", "pku-saferlhf"


class PKUSafeRLHF30KTrain(RecordsDataset):
    NAME = "PKU-SafeRLHF-30K/train"
    ALIASES = ("PKU-Alignment/PKU-SafeRLHF-30K/train", "PKU-SafeRLHF-30K")
    HUB_PATH, SPLIT, FORMAT = "PKU-Alignment/PKU-SafeRLHF-30K", "train", "pku-saferlhf"


class PKUSafeRLHF30KTest(RecordsDataset):
    NAME = "PKU-SafeRLHF-30K/test"
    ALIASES = ("PKU-Alignment/PKU-SafeRLHF-30K/test",)
    HUB_PATH, SPLIT, FORMAT = "PKU-Alignment/PKU-SafeRLHF-30K", "test", "pku-saferlhf"


class PKUSafeRLHF10KTrain(RecordsDataset):
    NAME = "PKU-SafeRLHF-10K/train"
    ALIASES = ("PKU-Alignment/PKU-SafeRLHF-10K/train", "PKU-SafeRLHF-10K")
    HUB_PATH, SPLIT, FORMAT = "PKU-Alignment/PKU-SafeRLHF-10K", "train", "pku-saferlhf"


# ------------------------------------------------------------------------------- Alpaca, GSM8K


class AlpacaDataset(RecordsDataset):
    """Stanford Alpaca: input = instruction (+ "\\n" + input when non-empty), answer = output."""

    NAME = "alpaca"
    ALIASES = ("stanford-alpaca", "tatsu-lab/alpaca")
    HUB_PATH, SPLIT, FORMAT = "tatsu-lab/alpaca", "train", "alpaca"


class GSM8KTrain(RecordsDataset):
    """GSM8K: input = question, answer = the reasoning text (ending ``#### 42``), solution = "42"."""

    NAME = "gsm8k"
    ALIASES = ("gsm8k/train", "openai/gsm8k")
    HUB_PATH, HUB_NAME, SPLIT, FORMAT = "openai/gsm8k", "main", "train", "gsm8k"


class GSM8KTest(RecordsDataset):
    NAME = "gsm8k/test"
    HUB_PATH, HUB_NAME, SPLIT, FORMAT = "openai/gsm8k", "main", "test", "gsm8k"


# ------------------------------------------------------------------------------- Anthropic HH-RLHF

HH_RLHF_VARIANTS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")


class HHRLHFDataset(RecordsDataset):
    """Anthropic HH-RLHF (all four subsets): the shared dialogue is the prompt, the two final assistant
    turns are the answers (chosen first). ``hh-rlhf/<variant>[/test]`` selects one subset."""

    NAME = "hh-rlhf"
    ALIASES = ("hh-rlhf/train", "Anthropic/hh-rlhf")
    HUB_PATH, SPLIT, FORMAT = "Anthropic/hh-rlhf", "train", "hh-rlhf"


class HHRLHFTestDataset(HHRLHFDataset):
    NAME = "hh-rlhf/test"
    ALIASES = ()
    SPLIT = "test"


def _register_hh_variants() -> None:
    for variant in HH_RLHF_VARIANTS:
        for split in ("train", "test"):
            name = f"hh-rlhf/{variant}" + ("" if split == "train" else "/test")
            aliases = (f"hh-rlhf/{variant}/train",) if split == "train" else ()
            cls_name = "HHRLHF" + "".join(p.capitalize() for p in variant.split("-")) + split.capitalize()
            cls = type(
                cls_name,
                (HHRLHFDataset,),
                {
                    "NAME": name,
                    "ALIASES": aliases,
                    "DATA_DIR": variant,
                    "SPLIT": split,
                    "__module__": __name__,
                },
            )
            globals()[cls_name] = cls


_register_hh_variants()


def _strip_hub(path: str) -> str:
    return path[len("hub:"):] if path.startswith("hub:") else path


def _is_hub_name(path: str) -> bool:
    """``hub:owner/name`` always; a bare ``owner/name`` that does not exist locally only when ``owner`` is not a
    local folder either (``data/train`` next to a data/ folder is a missing file, not a hub id)."""
    if path.startswith("hub:"):
        return bool(_HUB_ID.match(_strip_hub(path)))
    if path.lower().endswith((".json", ".jsonl", ".gz", ".parquet", ".csv", ".txt", ".arrow")):
        return False  # a file name: a local file is meant
    return bool(_HUB_ID.match(path)) and not os.path.isdir(path.split("/", 1)[0])

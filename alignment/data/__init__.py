"""Data layer: raw datasets (registry, built-ins, file formats), mixing, prompt templates, tokenized
datasets and collators. Flow: records -> ``RawSample`` -> tokenized dataset -> collator batch.

Importing this package registers every built-in raw dataset (``available_raw_datasets()`` lists them).
See API.md next to this file for the constructor signatures and the spec-string syntax.
"""

from . import builtin, formats  # noqa: F401  (registers the built-in raw datasets)
from .batches import (
    IGNORE_INDEX,
    PreferenceBatch,
    PromptOnlyBatch,
    SafetyPreferenceBatch,
    SupervisedBatch,
    UnpairedPreferenceBatch,
)
from .builtin import JsonDataset, RecordsDataset
from .collators import (
    PreferenceCollator,
    PromptOnlyCollator,
    SafetyPreferenceCollator,
    SupervisedCollator,
    UnpairedPreferenceCollator,
    pad_sequences,
)
from .formats import available_formats, detect_format, read_records
from .mixing import DatasetSpec, MixedRawDataset, load_raw_datasets, mix_raw_datasets, parse_dataset_spec
from .raw import DataError, ListRawDataset, RawDataset, RawSample, available_raw_datasets, load_raw_dataset
from .templates import TEMPLATES, format_prompt, render_segments
from .tokenized import (
    TRUNCATION_MODES,
    PreferenceDataset,
    PromptOnlyDataset,
    SafetyPreferenceDataset,
    SupervisedDataset,
    TokenizedDataset,
    UnpairedPreferenceDataset,
    check_pad_token,
    ensure_pad_token,
)

__all__ = [
    # raw layer
    "RawSample",
    "RawDataset",
    "ListRawDataset",
    "RecordsDataset",
    "JsonDataset",
    "DataError",
    "load_raw_dataset",
    "available_raw_datasets",
    "available_formats",
    "detect_format",
    "read_records",
    # mixing
    "DatasetSpec",
    "MixedRawDataset",
    "parse_dataset_spec",
    "mix_raw_datasets",
    "load_raw_datasets",
    # templates
    "TEMPLATES",
    "format_prompt",
    "render_segments",
    # tokenized layer
    "TRUNCATION_MODES",
    "TokenizedDataset",
    "SupervisedDataset",
    "PreferenceDataset",
    "SafetyPreferenceDataset",
    "PromptOnlyDataset",
    "UnpairedPreferenceDataset",
    "ensure_pad_token",
    "check_pad_token",
    # collators and batches
    "pad_sequences",
    "SupervisedCollator",
    "PreferenceCollator",
    "SafetyPreferenceCollator",
    "PromptOnlyCollator",
    "UnpairedPreferenceCollator",
    "IGNORE_INDEX",
    "SupervisedBatch",
    "PreferenceBatch",
    "SafetyPreferenceBatch",
    "PromptOnlyBatch",
    "UnpairedPreferenceBatch",
]

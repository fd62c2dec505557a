"""Dataset specs and mixing by ratio: counts, repetition, determinism, aliases."""

from __future__ import annotations

from collections import Counter

import pytest

from alignment.data import (
    ListRawDataset,
    RawDataset,
    RawSample,
    load_raw_datasets,
    mix_raw_datasets,
    parse_dataset_spec,
)
from alignment.data.mixing import DatasetSpec


class _Numbers(RawDataset):
    NAME = "test-mix-numbers"
    ALIASES = ("test-mix-alias",)

    def __init__(self, n: int = 10, tag: str = "n"):
        self.n, self.tag = n, tag

    def __getitem__(self, index) -> RawSample:
        return RawSample(input=f"{self.tag}{index}", answer=str(index))

    def __len__(self):
        return self.n


def test_parse_string_forms():
    specs = parse_dataset_spec("alpaca:0.75, json:1.0:/data/x:y.jsonl,gsm8k")
    assert specs == [
        DatasetSpec("alpaca", 0.75),
        DatasetSpec("json", 1.0, {"path": "/data/x:y.jsonl"}),  # the path keeps its colons
        DatasetSpec("gsm8k", 1.0),
    ]


def test_parse_dict_and_list_forms():
    specs = parse_dataset_spec(
        {"alpaca": 0.75, "json": {"proportion": 0.5, "path": "p.jsonl", "format": "trl"}}
    )
    assert specs == [
        DatasetSpec("alpaca", 0.75),
        DatasetSpec("json", 0.5, {"path": "p.jsonl", "format": "trl"}),
    ]
    specs = parse_dataset_spec([("alpaca", 2), "gsm8k:0.5", ("json", {"path": "a"}), ("json", {"path": "b"})])
    assert [(s.name, s.proportion, s.kwargs) for s in specs] == [
        ("alpaca", 2.0, {}),
        ("gsm8k", 0.5, {}),
        ("json", 1.0, {"path": "a"}),
        ("json", 1.0, {"path": "b"}),
    ]


@pytest.mark.parametrize(
    "ratio, expected", [(0.5, 5), (0.25, 3), (0.24, 2), (1.0, 10), (2.5, 25), (3, 30), (0.04, 0)]
)
def test_counts(ratio, expected):
    """k = round(ratio * N) (half up); full copies first, then a random remainder without replacement."""
    if expected == 0:
        with pytest.raises(ValueError, match="empty"):
            load_raw_datasets({"test-mix-numbers": ratio})
        return
    mixed = load_raw_datasets({"test-mix-numbers": ratio})
    assert len(mixed) == expected
    counts = Counter(s["input"] for s in mixed)
    full, rest = divmod(expected, 10)
    expected_counts = [c for c in [full + 1] * rest + [full] * (10 - rest) if c]
    assert sorted(counts.values()) == sorted(expected_counts)
    if ratio <= 1:
        assert max(counts.values()) == 1  # without replacement


def test_mixture_of_two_with_alias_and_path_kwargs():
    mixed = load_raw_datasets(
        [
            ("test-mix-alias", {"proportion": 0.5, "n": 8, "tag": "a"}),
            ("test-mix-numbers", {"proportion": 1.5, "n": 4, "tag": "b"}),
        ]
    )
    tags = Counter(s["input"][0] for s in mixed)
    assert tags == {"a": 4, "b": 6}
    assert mixed.counts() == {"test-mix-numbers": 10}  # both are instances of the same class
    assert mixed.locate(0)[1] in range(8)


def test_alias_works_in_string_spec():
    mixed = load_raw_datasets("test-mix-alias:0.3")
    assert len(mixed) == 3


def test_deterministic_given_seed_and_changes_with_seed():
    a = [s["input"] for s in load_raw_datasets({"test-mix-numbers": {"proportion": 0.5, "n": 100}}, seed=1)]
    b = [s["input"] for s in load_raw_datasets({"test-mix-numbers": {"proportion": 0.5, "n": 100}}, seed=1)]
    c = [s["input"] for s in load_raw_datasets({"test-mix-numbers": {"proportion": 0.5, "n": 100}}, seed=2)]
    assert a == b and a != c
    # the selected subset keeps the source order
    assert a == sorted(a, key=lambda x: int(x[1:]))


def test_zero_ratio_drops_dataset_and_ratio_above_one_keeps_full_copies():
    mixed = load_raw_datasets(
        [
            ("test-mix-numbers", {"proportion": 0, "tag": "x"}),
            ("test-mix-numbers", {"proportion": 2, "n": 3, "tag": "y"}),
        ]
    )
    assert [s["input"] for s in mixed] == ["y0", "y1", "y2", "y0", "y1", "y2"]


def test_mix_prebuilt_raw_datasets():
    a = ListRawDataset([RawSample(input="a", answer="1")] * 4, name="A")
    b = ListRawDataset([RawSample(input="b", answer="2")] * 2, name="B")
    mixed = mix_raw_datasets([(a, 0.5), (b, 1.0)], seed=0)
    assert [s["input"] for s in mixed] == ["a", "a", "b", "b"]
    assert mixed.locate(2) == ("B", 0)
    via_spec = load_raw_datasets([(a, 1.0), b])
    assert len(via_spec) == 6


def test_builtin_with_local_path_in_string_spec(fx):
    spec = f"gsm8k:0.5:{fx / 'gsm8k_test_first8.jsonl'},json:2:{fx / 'trl_unpaired.jsonl'}"
    mixed = load_raw_datasets(spec)
    assert len(mixed) == 4 + 8

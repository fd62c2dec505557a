"""Bad input: every case raises one DataError (a ValueError) that names the file, line/record and field."""

from __future__ import annotations

import json

import pytest

from alignment.data import (
    DataError,
    PreferenceDataset,
    RawDataset,
    RawSample,
    SafetyPreferenceDataset,
    SupervisedDataset,
    load_raw_dataset,
    load_raw_datasets,
    parse_dataset_spec,
)

PKU = {
    "prompt": "p",
    "response_0": "a",
    "response_1": "b",
    "better_response_id": 0,
    "safer_response_id": 1,
    "is_response_0_safe": True,
    "is_response_1_safe": False,
}


def _lines(*records):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


FILE_CASES = [
    # id, file content, file name, format, expected fragments of the message
    (
        "malformed-json-line",
        _lines(PKU, '{"prompt": "p", "response_0": '),
        "d.jsonl",
        "auto",
        ["d.jsonl", "line 2", "malformed JSON"],
    ),
    (
        "missing-field",
        _lines(PKU, {k: v for k, v in PKU.items() if k != "response_1"}),
        "d.jsonl",
        "pku-saferlhf",
        ["line 2", "field 'response_1'", "missing"],
    ),
    (
        "better-id-not-0-1",
        _lines(PKU, PKU, dict(PKU, better_response_id=2)),
        "d.jsonl",
        "auto",
        ["line 3", "field 'better_response_id'", "expected 0 or 1, got 2"],
    ),
    (
        "better-id-string",
        _lines(dict(PKU, better_response_id="0")),
        "d.jsonl",
        "auto",
        ["line 1", "field 'better_response_id'"],
    ),
    (
        "safety-flag-wrong-type",
        _lines(dict(PKU, is_response_0_safe="yes")),
        "d.jsonl",
        "auto",
        ["line 1", "field 'is_response_0_safe'", "boolean"],
    ),
    ("empty-file", "", "d.jsonl", "auto", ["d.jsonl", "empty"]),
    ("blank-lines-only", "\n\n", "d.jsonl", "auto", ["d.jsonl", "empty"]),
    ("empty-json-array", "[]", "d.json", "auto", ["d.json", "empty"]),
    (
        "malformed-json-document",
        '[{"prompt": "a"},\n {"prompt": }]',
        "d.json",
        "auto",
        ["d.json", "line 2", "malformed JSON"],
    ),
    ("line-not-an-object", _lines([1, 2]), "d.jsonl", "auto", ["line 1", "JSON object"]),
    (
        "array-element-not-an-object",
        json.dumps([{"prompt": "a"}, "oops"]),
        "d.json",
        "auto",
        ["record 1", "JSON object"],
    ),
    (
        "wrong-type-prompt",
        _lines({"prompt": 5, "chosen": "a", "rejected": "b"}),
        "d.jsonl",
        "trl",
        ["line 1", "field 'prompt'", "expected str or list, got int"],
    ),
    (
        "undetectable-format",
        _lines({"foo": 1, "bar": 2}),
        "d.jsonl",
        "auto",
        ["line 1", "cannot detect the format", "'bar'", "pku-saferlhf"],
    ),
    (
        "kto-label-not-bool",
        _lines({"prompt": "p", "completion": "c", "label": "maybe"}),
        "d.jsonl",
        "auto",
        ["line 1", "field 'label'", "boolean"],
    ),
    (
        "unknown-role",
        _lines({"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]}),
        "d.jsonl",
        "auto",
        ["line 1", "field 'messages'", "unknown role 'robot'"],
    ),
    (
        "hh-no-assistant",
        _lines({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hey"}),
        "d.jsonl",
        "hh-rlhf",
        ["line 1", "field 'chosen'", "Assistant"],
    ),
    (
        "gsm8k-no-final-answer",
        _lines({"question": "q", "answer": "no marker"}),
        "d.jsonl",
        "gsm8k",
        ["line 1", "field 'answer'", "####"],
    ),
    ("unsupported-suffix", "a,b\n1,2\n", "d.csv", "auto", ["d.csv", "unsupported file type", ".jsonl"]),
]


@pytest.mark.parametrize(
    "content, name, fmt, fragments", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_bad_file(tmp_path, content, name, fmt, fragments):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_raw_dataset("json", path=str(path), format=fmt)
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_error_attributes(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(_lines(PKU, dict(PKU, better_response_id=7)))
    with pytest.raises(DataError) as err:
        load_raw_dataset("PKU-SafeRLHF/train", path=str(path))
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 2, "better_response_id")


def test_missing_path_and_json_without_path(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_raw_dataset("json", path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="needs a path"):
        load_raw_dataset("json")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no data files"):
        load_raw_dataset("json", path=str(tmp_path / "empty_dir"))


def test_unknown_format_lists_allowed(fx):
    with pytest.raises(DataError) as err:
        load_raw_dataset("json", path=str(fx / "trl_preference.jsonl"), format="yaml")
    assert (
        "unknown format 'yaml'" in str(err.value)
        and "sharegpt" in str(err.value)
        and "auto" in str(err.value)
    )


def test_unknown_dataset_name_in_spec_lists_known():
    with pytest.raises(DataError) as err:
        load_raw_datasets("alpaca:0.5,nope:1.0")
    assert "unknown dataset name 'nope'" in str(err.value) and "hh-rlhf/helpful-base" in str(err.value)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("alpaca:-1", ">= 0"),
        ("alpaca:abc", "must be a number"),
        ("alpaca:nan", "finite"),
        ("alpaca::/x", "empty ratio"),
        ("alpaca:1:", "empty path"),
        (":1", "empty name"),
        ("", "empty dataset spec"),
        ({"alpaca": "lots"}, "must be a number"),
        ({"alpaca": {"proportion": -0.5}}, ">= 0"),
        ({"alpaca": True}, "must be a number"),
        ([("alpaca", 1.0, 2)], "bad dataset spec entry"),
        (42, "bad dataset spec"),
    ],
)
def test_bad_spec(spec, fragment):
    with pytest.raises(DataError) as err:
        parse_dataset_spec(spec)
    assert fragment in str(err.value)


def test_unknown_dataset_option(fx):
    with pytest.raises(DataError, match="does not accept the options"):
        load_raw_datasets({"gsm8k": {"path": str(fx / "gsm8k_test_first8.jsonl"), "colour": "red"}})


class _Broken(RawDataset):
    NAME = "test-errors-broken"

    def __init__(self, sample=None):
        self.sample = sample

    def __getitem__(self, index) -> RawSample:
        return self.sample

    def __len__(self):
        return 2


@pytest.mark.parametrize(
    "cls, sample, fragments",
    [
        (
            PreferenceDataset,
            {"input": "q", "answer": "a", "other_answer": "b"},
            ["record 0", "field 'better'", "missing"],
        ),
        (
            PreferenceDataset,
            {"input": "q", "answer": "a", "other_answer": "b", "better": "yes"},
            ["field 'better'", "expected bool, got str"],
        ),
        (SupervisedDataset, {"input": ["u1", "a1"], "answer": "a"}, ["field 'input'", "odd length"]),
        (SupervisedDataset, {"dialogue": ["u1", "a1", "u2"]}, ["field 'dialogue'", "even length"]),
        (SupervisedDataset, {"input": 3, "answer": "a"}, ["field 'input'", "expected str or list"]),
        (SupervisedDataset, ["not", "a", "dict"], ["must be a dict"]),
        (
            SafetyPreferenceDataset,
            {
                "input": "q",
                "answer": "a",
                "other_answer": "b",
                "better": True,
                "safer": True,
                "is_safe": False,
                "is_other_safe": True,
            },
            ["field 'safer'", "marked unsafe"],
        ),
    ],
)
def test_bad_raw_sample_names_dataset_record_and_field(tiny_tokenizer, cls, sample, fragments):
    with pytest.raises(DataError) as err:
        cls({"test-errors-broken": {"sample": sample}}, tiny_tokenizer, 64)
    assert "test-errors-broken" in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_bad_tokenized_options(tiny_tokenizer, fx):
    spec = f"json:1:{fx / 'trl_preference.jsonl'}"
    with pytest.raises(DataError, match="unknown template 'jinja'.*beaver"):
        PreferenceDataset(spec, tiny_tokenizer, 64, template="jinja")
    with pytest.raises(DataError, match="unknown truncation 'left'.*keep_prompt_end"):
        PreferenceDataset(spec, tiny_tokenizer, 64, truncation="left")
    with pytest.raises(DataError, match="max_length"):
        PreferenceDataset(spec, tiny_tokenizer, 1)

"""Generic file formats: detection, conversion of each community format, and the file types
(json, jsonl, gz, parquet, folders)."""

from __future__ import annotations

import gzip
import json

import pytest

from alignment.data import available_formats, detect_format, load_raw_dataset
from alignment.data.formats import FORMATS


def _load(path, fmt="auto"):
    return load_raw_dataset("json", path=str(path), format=fmt)


@pytest.mark.parametrize(
    "fixture, expected_format",
    [
        ("pku_saferlhf_first7.jsonl", "pku-saferlhf"),
        ("llamafactory_alpaca_en_demo_first10.json", "alpaca"),
        ("llamafactory_alpaca_ranking.json", "alpaca-ranking"),
        ("llamafactory_dpo_en_demo_5.json", "sharegpt"),
        ("llamafactory_kto_en_demo_5.json", "ms-swift"),  # messages + label: the same shape in both
        ("ms_swift_rejected_response_first4.jsonl", "ms-swift"),
        ("ms_swift_rft_math_first3.json", "math"),
        ("trl_preference.jsonl", "trl"),
        ("trl_unpaired.jsonl", "trl"),
        ("gsm8k_test_first8.jsonl", "gsm8k"),
    ],
)
def test_auto_detection_matches_explicit_format(fx, fixture, expected_format):
    auto = _load(fx / fixture)
    explicit = _load(fx / fixture, expected_format)
    assert len(auto) == len(explicit) > 0
    assert list(auto) == list(explicit)


def test_every_format_is_covered_by_a_detection_test():
    assert set(FORMATS) == {
        "pku-saferlhf",
        "alpaca",
        "alpaca-ranking",
        "sharegpt",
        "ms-swift",
        "trl",
        "hh-rlhf",
        "gsm8k",
        "math",
    }
    assert available_formats()[0] == "auto"


def test_alpaca(fx):
    ds = _load(fx / "llamafactory_alpaca_en_demo_first10.json")
    raw = json.loads((fx / "llamafactory_alpaca_en_demo_first10.json").read_text())
    assert ds[0] == {"input": raw[0]["instruction"], "answer": raw[0]["output"]}
    with_input = next(i for i, r in enumerate(raw) if r["input"])
    assert ds[with_input]["input"] == raw[with_input]["instruction"] + "\n" + raw[with_input]["input"]


def test_alpaca_ranking_with_history(fx):
    ds = _load(fx / "llamafactory_alpaca_ranking.json")
    assert ds[0] == {
        "input": "Pick the better greeting.",
        "answer": "Good morning! How can I help?",
        "other_answer": "What do you want?",
        "better": True,
    }
    assert ds[1]["input"] == ["Hi", "Hello! What can I do for you?", "Translate to French.\nThank you"]


def test_sharegpt_ranking_multi_turn(fx):
    ds = _load(fx / "llamafactory_dpo_en_demo_5.json")
    raw = json.loads((fx / "llamafactory_dpo_en_demo_5.json").read_text())
    assert ds[0]["input"] == raw[0]["conversations"][0]["value"]
    assert (
        ds[0]["answer"] == raw[0]["chosen"]["value"] and ds[0]["other_answer"] == raw[0]["rejected"]["value"]
    )
    with_system = next(i for i, r in enumerate(raw) if r["conversations"][0]["from"] == "system")
    assert ds[with_system]["system"] == raw[with_system]["conversations"][0]["value"]
    assert ds[with_system]["input"] == raw[with_system]["conversations"][1]["value"]


def test_sharegpt_multi_turn_ranking(write_jsonl):
    conv = [
        {"from": "human", "value": "u1"},
        {"from": "gpt", "value": "a1"},
        {"from": "human", "value": "u2"},
    ]
    path = write_jsonl(
        [
            {
                "conversations": conv,
                "chosen": {"from": "gpt", "value": "good"},
                "rejected": {"from": "gpt", "value": "bad"},
            }
        ]
    )
    assert list(_load(path)) == [
        {"input": ["u1", "a1", "u2"], "answer": "good", "other_answer": "bad", "better": True}
    ]


def test_sharegpt_kto_tag(write_jsonl):
    path = write_jsonl(
        [
            {
                "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
                "kto_tag": False,
            }
        ]
    )
    assert list(_load(path)) == [{"input": "hi", "answer": "yo", "label": False}]


def test_messages_label_and_rejected_response(fx):
    kto = _load(fx / "llamafactory_kto_en_demo_5.json")
    assert [s["label"] for s in kto] == [True, True, False, True, False]
    swift = _load(fx / "ms_swift_rejected_response_first4.jsonl")
    first = json.loads((fx / "ms_swift_rejected_response_first4.jsonl").read_text().splitlines()[0])
    assert swift[0]["input"] == first["messages"][0]["content"]
    assert swift[0]["answer"] == first["messages"][1]["content"]
    assert swift[0]["other_answer"] == first["rejected_response"] and swift[0]["better"] is True


def test_messages_with_system_and_sft(write_jsonl):
    path = write_jsonl(
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "u1"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "u2"},
                    {"role": "assistant", "content": "a2"},
                ]
            }
        ]
    )
    assert list(_load(path)) == [{"input": ["u1", "a1", "u2"], "system": "Be brief.", "answer": "a2"}]


def test_trl_variants(fx):
    pref = _load(fx / "trl_preference.jsonl")
    assert pref[0] == {
        "input": "What is the capital of France?",
        "answer": "The capital of France is Paris.",
        "other_answer": "France has no capital.",
        "better": True,
    }
    assert pref[2] == {
        "input": "Name a primary colour.",
        "system": "You are terse.",
        "answer": "Red.",
        "other_answer": "Purple.",
        "better": True,
    }
    assert pref[3]["margin"] == 2.0
    unpaired = _load(fx / "trl_unpaired.jsonl")
    assert [s["label"] for s in unpaired] == [True, False, True, False]
    prompts = _load(fx / "trl_prompt_only.jsonl")
    assert prompts[1] == {"input": "What is 10 minus 4?", "solution": "6"}


def test_math_boxed_solution(fx):
    ds = _load(fx / "ms_swift_rft_math_first3.json")
    assert ds[0]["solution"] == "2\\sqrt3" and ds[2]["solution"] == "24" and "\\boxed{24}" in ds[2]["answer"]


def test_hh_transcript_split(write_jsonl):
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away"
    ds = _load(write_jsonl([{"chosen": chosen, "rejected": rejected}]))
    assert ds[0] == {
        "input": ["hi", "hello", "how are you?"],
        "answer": "fine, thanks",
        "other_answer": "go away",
        "better": True,
    }
    assert detect_format({"chosen": chosen, "rejected": rejected}) == "hh-rlhf"


# ---------------------------------------------------------------------------- file types


def test_jsonl_gz_json_gz_parquet_and_json_lines_named_json(tmp_path, fx):
    lines = (fx / "trl_preference.jsonl").read_text().splitlines(keepends=True)
    expected = list(_load(fx / "trl_preference.jsonl"))
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.writelines(lines)
    with gzip.open(tmp_path / "b.json.gz", "wt") as f:
        json.dump([json.loads(x) for x in lines], f)
    (tmp_path / "c.json").write_text("".join(lines))  # JSON lines under a .json name (as HF often does)
    for name in ("a.jsonl.gz", "b.json.gz", "c.json"):
        assert list(_load(tmp_path / name)) == expected, name

    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(x) for x in (fx / "pku_saferlhf_first7.jsonl").read_text().splitlines()[:3]]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "pku.parquet")
    ds = load_raw_dataset("PKU-SafeRLHF-30K/train", path=str(tmp_path / "pku.parquet"))
    assert (
        list(ds)
        == list(load_raw_dataset("PKU-SafeRLHF/train", path=str(fx / "pku_saferlhf_first7.jsonl")))[:3]
    )


def test_folder_uses_split_files(tmp_path, write_jsonl):
    (tmp_path / "d").mkdir()
    write_jsonl([{"question": "q-train", "answer": "x #### 1"}], "d/train.jsonl")
    write_jsonl([{"question": "q-test", "answer": "x #### 2"}], "d/test.jsonl")
    assert [s["input"] for s in load_raw_dataset("gsm8k", path=str(tmp_path / "d"))] == ["q-train"]
    assert [s["solution"] for s in load_raw_dataset("gsm8k/test", path=str(tmp_path / "d"))] == ["2"]
    # the json dataset has no split: every file of the folder, sorted by name
    assert len(load_raw_dataset("json", path=str(tmp_path / "d"))) == 2


def test_expanduser_and_alias(fx, monkeypatch):
    monkeypatch.setenv("HOME", str(fx))
    ds = load_raw_dataset("jsonl", path="~/trl_unpaired.jsonl")
    assert len(ds) == 4

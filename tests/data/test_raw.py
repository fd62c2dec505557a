"""RawDataset registry and the built-in raw datasets (every registered name loads from a local fixture)."""

from __future__ import annotations

import pytest

from alignment.data import DataError, RawDataset, RawSample, available_raw_datasets, load_raw_dataset
from alignment.data.builtin import HH_RLHF_VARIANTS, RecordsDataset
from alignment.data.raw import _ALIASES, _REGISTRY

# The local fixture that each built-in's loading code reads instead of the hub.
BUILTIN_FIXTURES = {
    "PKU-SafeRLHF": "pku_saferlhf_first7.jsonl",
    "alpaca": "llamafactory_alpaca_en_demo_first10.json",
    "hh-rlhf": "hh_rlhf",
    "gsm8k": "gsm8k_test_first8.jsonl",
    "json": "trl_preference.jsonl",
}


def _fixture_for(name: str) -> str:
    for prefix, fixture in BUILTIN_FIXTURES.items():
        if name.startswith(prefix):
            return fixture
    raise AssertionError(f"no local fixture for built-in '{name}': add one to BUILTIN_FIXTURES")


@pytest.mark.parametrize(
    "name", sorted(n for n, c in _REGISTRY.items() if c.__module__ == "alignment.data.builtin")
)
def test_every_builtin_loads_from_a_local_path(name, fx):
    cls = RawDataset.resolve(name)
    kwargs = {"path": str(fx / _fixture_for(name))}
    if name.startswith("hh-rlhf"):
        kwargs["split"] = "test"  # the fixture folder only has harmless-base/test.jsonl.gz
    ds = load_raw_dataset(name, **kwargs)
    assert isinstance(ds, cls) and len(ds) > 0
    sample = ds[0]
    assert isinstance(sample, dict) and sample.get("input")
    assert isinstance(sample.get("answer"), str)


def test_builtin_names_required_by_the_issue_are_registered():
    names = set(available_raw_datasets())
    for required in (
        "PKU-SafeRLHF/train",
        "PKU-SafeRLHF/test",
        "PKU-SafeRLHF-30K/train",
        "PKU-SafeRLHF-30K/test",
        "PKU-SafeRLHF-10K/train",
        "alpaca",
        "hh-rlhf",
        "hh-rlhf/harmless-base",
        "hh-rlhf/helpful-base",
        "gsm8k",
        "json",
        "file",
        "jsonl",
    ):
        assert required in names
    for variant in HH_RLHF_VARIANTS:
        assert RawDataset.resolve(f"hh-rlhf/{variant}").DATA_DIR == variant


def test_builtins_point_at_the_hub():
    assert RawDataset.resolve("PKU-SafeRLHF/train").HUB_PATH == "PKU-Alignment/PKU-SafeRLHF"
    assert RawDataset.resolve("PKU-SafeRLHF-30K/test").SPLIT == "test"
    assert RawDataset.resolve("gsm8k").HUB_NAME == "main"
    assert RawDataset.resolve("hh-rlhf/helpful-base/test").SPLIT == "test"


def test_pku_mapping(fx):
    ds = load_raw_dataset("PKU-SafeRLHF/test", path=str(fx / "pku_saferlhf_first7.jsonl"))
    assert len(ds) == 7
    # line 6: better_response_id 1, safer_response_id 0, both unsafe
    s = ds[5]
    assert (s["better"], s["safer"], s["is_safe"], s["is_other_safe"]) == (False, True, False, False)
    # line 4: response_0 unsafe, response_1 safe, both ids 1
    s = ds[3]
    assert (s["better"], s["safer"], s["is_safe"], s["is_other_safe"]) == (False, False, False, True)


def test_gsm8k_solution(fx):
    ds = load_raw_dataset("gsm8k", path=str(fx / "gsm8k_test_first8.jsonl"))
    assert ds[0]["solution"] == "18"
    assert ds[0]["answer"].rstrip().endswith("#### 18")
    assert ds[0]["input"].startswith("Janet")


def test_hh_rlhf_folder_variant_and_split(fx):
    ds = load_raw_dataset("hh-rlhf/harmless-base/test", path=str(fx / "hh_rlhf"))
    assert len(ds) == 7
    first = ds[0]
    assert first["better"] is True and first["answer"] != first["other_answer"]
    # the last record: the chosen answer itself contains "Human:"; the dialogue prefix is shared
    last = ds[6]
    assert last["input"] == [
        "Are drag queens men?",
        "No. Drag queens are women who act like stereotypical men.",
        "Isn't that drag kings?",
    ]
    assert last["answer"].startswith("No. Men who impersonate") and "Human:" in last["answer"]
    assert last["other_answer"].startswith("A drag king is the opposite")


# ---------------------------------------------------------------------------- registry


class _Tmp(RawDataset):
    NAME = "test-raw-tmp"
    ALIASES = ("test-raw-tmp-alias",)

    def __init__(self, n: int = 3):
        self.n = n

    def __getitem__(self, index) -> RawSample:
        return RawSample(input=f"q{index}", answer=f"a{index}")

    def __len__(self):
        return self.n


def test_registry_name_alias_and_kwargs():
    assert RawDataset.resolve("test-raw-tmp-alias") is _Tmp
    ds = RawDataset.load("test-raw-tmp-alias", n=5)
    assert len(ds) == 5 and ds[4]["answer"] == "a4" and [s["input"] for s in ds][:2] == ["q0", "q1"]


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):

        class Clash(RawDataset):  # noqa: F841
            NAME = "test-raw-tmp"

            def __getitem__(self, i):
                return {}

            def __len__(self):
                return 0

    with pytest.raises(ValueError, match="already registered"):

        class AliasClash(RawDataset):  # noqa: F841
            NAME = "test-raw-other"
            ALIASES = ("alpaca",)

            def __getitem__(self, i):
                return {}

            def __len__(self):
                return 0

    assert "test-raw-other" not in _REGISTRY


def test_unknown_name_lists_known_ones():
    with pytest.raises(DataError) as err:
        RawDataset.resolve("no-such-dataset")
    assert (
        "no-such-dataset" in str(err.value)
        and "PKU-SafeRLHF/train" in str(err.value)
        and "json" in str(err.value)
    )


def test_base_classes_are_not_registered_and_aliases_not_inherited():
    assert RecordsDataset not in _REGISTRY.values()

    class Child(_Tmp):
        NAME = "test-raw-child"

    try:
        assert RawDataset.resolve("test-raw-child") is Child
        assert _ALIASES["test-raw-tmp-alias"] == "test-raw-tmp"
    finally:
        RawDataset.unregister("test-raw-child")
    assert "test-raw-child" not in available_raw_datasets()


# ------------------------------------------------------ hub loading (no network: load_dataset is faked)

HUB_ROWS = {
    "PKU-Alignment/PKU-SafeRLHF": [
        {
            "prompt": "p",
            "response_0": "a",
            "response_1": "b",
            "better_response_id": 1,
            "safer_response_id": 0,
            "is_response_0_safe": True,
            "is_response_1_safe": False,
        }
    ],
    "Anthropic/hh-rlhf": [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    ],
    "openai/gsm8k": [{"question": "1+1?", "answer": "1+1=2\n#### 2"}],
    "tatsu-lab/alpaca": [{"instruction": "say x", "input": "", "output": "x", "text": "..."}],
}


@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    calls = []

    def load_dataset(path, name=None, data_dir=None, split=None, **kwargs):
        calls.append({"path": path, "name": name, "data_dir": data_dir, "split": split, **kwargs})
        family = next(k for k in HUB_ROWS if path.startswith(k))  # PKU-SafeRLHF-30K/-10K share the schema
        return datasets.Dataset.from_list(HUB_ROWS[family])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_loading(fake_hub):
    pku = load_raw_dataset("PKU-SafeRLHF-30K/test")
    assert fake_hub[-1] == {
        "path": "PKU-Alignment/PKU-SafeRLHF-30K",
        "name": None,
        "data_dir": None,
        "split": "test",
    }
    assert list(pku) == [
        {
            "input": "p",
            "answer": "a",
            "other_answer": "b",
            "better": False,
            "safer": True,
            "is_safe": True,
            "is_other_safe": False,
        }
    ]
    load_raw_dataset("PKU-SafeRLHF-10K/train")
    assert fake_hub[-1]["path"] == "PKU-Alignment/PKU-SafeRLHF-10K" and fake_hub[-1]["split"] == "train"
    hh = load_raw_dataset("hh-rlhf/helpful-base/test")
    assert fake_hub[-1] == {
        "path": "Anthropic/hh-rlhf",
        "name": None,
        "data_dir": "helpful-base",
        "split": "test",
    }
    assert hh[0] == {"input": "hi", "answer": "hello", "other_answer": "no", "better": True}
    gsm = load_raw_dataset("gsm8k")
    assert fake_hub[-1] == {"path": "openai/gsm8k", "name": "main", "data_dir": None, "split": "train"}
    assert gsm[0]["solution"] == "2"
    alpaca = load_raw_dataset("stanford-alpaca")
    assert fake_hub[-1]["path"] == "tatsu-lab/alpaca" and alpaca[0] == {"input": "say x", "answer": "x"}
    # a path that is not on disk but looks like a hub id is read from the hub (a mirror, say)
    load_raw_dataset("hh-rlhf", path="Anthropic/hh-rlhf")
    assert fake_hub[-1]["data_dir"] is None and fake_hub[-1]["split"] == "train"


def test_extra_columns_pass_through(tmp_path):
    path = tmp_path / "grpo.jsonl"
    path.write_text('{"prompt": "1+1?", "solution": "2", "level": 3, "answer": "ignored"}\n')
    assert list(load_raw_dataset("json", path=str(path))) == [{"input": "1+1?", "solution": "2", "level": 3}]

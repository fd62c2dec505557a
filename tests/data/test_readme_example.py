"""The custom-RawDataset example of README.md, run exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

from alignment.data import RawDataset

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    matches = [b for b in blocks if b.startswith("# README example: custom raw dataset")]
    assert len(matches) == 1, "README.md must hold exactly one custom-dataset example"
    return matches[0]


def test_readme_custom_dataset_example(tiny_tokenizer, capsys):
    namespace = {"__name__": "readme_example", "tokenizer": tiny_tokenizer}
    try:
        exec(compile(_example(), str(README), "exec"), namespace)
        dataset, batch = namespace["dataset"], namespace["batch"]
        assert len(dataset) == 4
        assert list(batch["chosen_input_ids"].shape)[0] == 4
        assert capsys.readouterr().out.startswith("4 [4, ")
        # the class is registered by name and alias and usable in a string spec next to a built-in
        from alignment.data import PreferenceDataset

        mixed = PreferenceDataset("my-pairs:0.5,my-dataset:1", tiny_tokenizer, 128)
        assert len(mixed) == 3
    finally:
        RawDataset.unregister("my-pairs")

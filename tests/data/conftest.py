"""Helpers for the data-layer tests: fixture paths and small file writers (shipped fixtures only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="session")
def fx() -> Path:
    return FIXTURES


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(records or raw text, name="data.jsonl") -> path."""

    def write(records, name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        if isinstance(records, str):
            path.write_text(records, encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return path

    return write

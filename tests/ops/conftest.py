"""The custom-operator library, built once per session (cached on disk across sessions: ~20 s cold)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ops_library():
    """The loaded operator library; tests of the fused path skip when the build is impossible here."""
    from alignment.ops import _build

    library = _build.load_ops()
    if library is None:
        pytest.skip(f"custom operators unavailable: {_build.build_reason()}")
    return library


@pytest.fixture
def count_calls(ops_library, monkeypatch):
    """``count_calls(name)`` -> a list holding how often the loaded library's operator ``name`` ran since."""
    counters = {}
    original = ops_library.call

    def counting(name, *args):
        if name in counters:
            counters[name][0] += 1
        return original(name, *args)

    monkeypatch.setattr(ops_library, "call", counting)
    return lambda name: counters.setdefault(name, [0])

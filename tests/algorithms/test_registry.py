"""The registry itself, and the guard that every registered name has a value test.

Each ``tests/algorithms/test_*.py`` module declares ``COVERED = {kind: {names}}``; the union must equal
what ``alignment.algorithms`` registers, so a new loss cannot land without a test.
"""

import importlib
import pkgutil

import pytest

import alignment.algorithms as algorithms
from alignment.algorithms import registry

import tests.algorithms as test_pkg


def _covered():
    covered = {}
    for info in pkgutil.iter_modules(test_pkg.__path__):
        if not info.name.startswith("test_") or info.name == "test_registry":
            continue
        module = importlib.import_module(f"tests.algorithms.{info.name}")
        for kind, names in getattr(module, "COVERED", {}).items():
            covered.setdefault(kind, set()).update(names)
    return covered


def test_every_registered_name_has_a_test():
    covered = _covered()
    missing = {
        kind: sorted(set(algorithms.available(kind)) - covered.get(kind, set()))
        for kind in algorithms.kinds()
    }
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"registered names without a value test: {missing}"


def test_covered_names_exist():
    for kind, names in _covered().items():
        unknown = names - set(algorithms.available(kind))
        assert not unknown, f"tests claim to cover unregistered {kind} names: {sorted(unknown)}"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        algorithms.get("preference", "no-such-loss")
    assert "sigmoid" in str(err.value) and "valid names" in str(err.value)
    with pytest.raises(KeyError, match="valid kinds"):
        algorithms.available("no-such-kind")


def test_duplicate_registration_is_an_error():
    registry.register("_test_kind", "a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("_test_kind", "a")(lambda: 2)
    registry._REGISTRIES.pop("_test_kind")


def test_preference_registry_lists_every_loss_of_the_issue():
    expected = {
        "sigmoid", "hinge", "ipo", "kto_pair", "robust", "bco_pair", "sppo_hard", "nca_pair", "aot",
        "aot_unpaired", "apo_zero", "apo_down", "discopop", "exo_pair", "sigmoid_norm", "dpop", "sft",
        "cpo", "simpo", "orpo",
    }
    assert expected <= set(algorithms.available("preference"))
    assert {"gae", "grpo", "dr_grpo", "rloo", "reinforce_plus_plus"} <= set(algorithms.available("advantage"))
    assert {"k1", "k2", "k3"} <= set(algorithms.available("kl"))
    assert {"sequence-wise", "token-wise"} <= set(algorithms.available("reward"))
    assert {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"} <= set(
        algorithms.available("aggregation")
    )


def test_gather_logps_matches_log_softmax_reference():
    """gather_logps avoids materialising log_softmax (slow on CPU); values must not change."""
    import numpy as np
    import paddle

    from alignment.algorithms.utils import gather_logps, log_softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)) * 5
    labels = rng.integers(0, 7, size=(2, 3))
    ref = logits / 0.7 - np.log(np.exp(logits / 0.7).sum(-1, keepdims=True))
    expected = np.take_along_axis(ref, labels[..., None], -1)[..., 0]
    got = gather_logps(paddle.to_tensor(logits), paddle.to_tensor(labels), temperature=0.7)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(log_softmax(paddle.to_tensor(logits)).numpy(), logits - np.log(np.exp(logits).sum(-1, keepdims=True)), atol=1e-10)

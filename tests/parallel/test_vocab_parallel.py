"""Vocabulary-parallel log-probs, entropy, log-softmax and GKD's JSD under tensor parallelism (2 processes):
values and gradients equal the single-process ones, the logits stay split (V / 2 per rank), and greedy and
sampled generation give the same tokens."""

import json
from pathlib import Path

import numpy as np
import pytest

from .launching import launch, run_single

WORKER = Path(__file__).with_name("_vocab_worker.py")


def _full(single: np.ndarray, shards) -> np.ndarray:
    """Concatenate the shards along the axis where they are smaller than the single-process tensor."""
    if shards[0].shape == single.shape:
        return shards[0]
    axis = next(i for i, (a, b) in enumerate(zip(single.shape, shards[0].shape)) if a != b)
    return np.concatenate(shards, axis=axis)


@pytest.mark.distributed
def test_vocab_parallel_values_gradients_and_generation_match_one_process(tiny_model_dir, tmp_path):
    run_single(WORKER, [tiny_model_dir, tmp_path], tmp_path / "single")
    launch(WORKER, [tiny_model_dir, tmp_path], tmp_path / "log")
    one = json.loads((tmp_path / "tp1_rank0.json").read_text())
    two = [json.loads((tmp_path / f"tp2_rank{r}.json").read_text()) for r in range(2)]
    assert two[0]["logits_width"] == two[1]["logits_width"] == one["logits_width"] // 2  # never gathered
    for name in one["values"]:
        for r in range(2):
            diff = np.abs(np.array(two[r]["values"][name]) - np.array(one["values"][name])).max()
            print(f"{name}: value max abs diff {diff:.2e}")
            np.testing.assert_allclose(two[r]["values"][name], one["values"][name], rtol=1e-5, atol=2e-6,
                                       err_msg=name)
        for param, grad in one["grads"][name].items():
            full = np.asarray(grad)
            got = _full(full, [np.asarray(two[r]["grads"][name][param]) for r in range(2)])
            scale = np.abs(full).max()
            print(f"{name} d/d{param}: max abs diff {np.abs(got - full).max():.2e} (scale {scale:.2e})")
            np.testing.assert_allclose(got, full, rtol=0, atol=1e-5 * max(scale, 1.0), err_msg=f"{name} {param}")
    for key in ("generate_sample_False", "generate_sample_True"):
        assert two[0][key] == two[1][key] == one[key], key

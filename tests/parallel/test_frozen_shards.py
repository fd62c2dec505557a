"""Sharding stage 3 for frozen models (``alignment.parallel.frozen``), 2 processes over gloo.

Each rank keeps half of every large parameter of a frozen Llama; forward passes gather them layer by layer
and give the unsharded logits exactly (the gathered values are the original ones); after each layer's
forward the full tensors are released again; per-rank parameter memory falls to about half.
"""

import json
from pathlib import Path

import pytest

from .launching import launch

pytestmark = pytest.mark.distributed


def test_frozen_model_sharded_over_two_ranks(tmp_path):
    launch(Path(__file__).with_name("_frozen_shard_worker.py"), [tmp_path], tmp_path / "log")
    for r in range(2):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert res["max_diff"] == 0.0 and res["repeat_diff"] == 0.0, res  # the same values, gathered exactly
        assert any("embed_tokens" in n for n in res["sharded"]) and any("lm_head" in n for n in res["sharded"])
        assert all("norm" in n for n in res["whole"]), res["whole"]  # only the small norms stay whole
        assert res["resident_after_forward"] == res["whole"], res  # the gathered tensors were released
        ratio = res["local_bytes"] / res["full_bytes"]
        print(f"rank {r}: {res['local_bytes']} of {res['full_bytes']} parameter bytes resident ({ratio:.3f})")
        assert 0.49 < ratio < 0.52, ratio
        assert res["create_model_sharded"]

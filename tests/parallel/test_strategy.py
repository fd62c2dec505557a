"""ParallelStrategy: single-process behaviour, and the collectives over two CPU processes (gloo)."""

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.parallel import ParallelStrategy, masked_moments, unwrap_model

from .launching import launch


def test_single_process_defaults():
    s = ParallelStrategy().init()
    assert (s.world_size, s.rank, s.is_main_process, s.distributed) == (1, 0, True, False)
    assert s.all_reduce_mean({"b": 2, "a": 1}) == {"a": 1.0, "b": 2.0}
    t = paddle.arange(3, dtype="float32")
    np.testing.assert_array_equal(s.all_gather(t).numpy(), t.numpy())
    assert s.all_gather_object(5) == [5] and s.broadcast_object("x") == "x"
    assert s.shard_slice(6) == slice(0, 6)
    s.barrier()


def test_create_model_freezes_or_wraps():
    s = ParallelStrategy().init()
    frozen = s.create_model(lambda: paddle.nn.Linear(2, 2), role="reference", trainable=False)
    assert not frozen.training and all(p.stop_gradient for p in frozen.parameters())
    trained = s.create_model(lambda: paddle.nn.Linear(2, 2), role="actor", trainable=True)
    assert trained.training and not any(p.stop_gradient for p in trained.parameters())
    assert unwrap_model(trained) is trained  # one process: nothing to wrap


def test_layout_validation_names_the_degrees_and_world_size():
    s = ParallelStrategy(tensor_parallel_degree=2, pipeline_parallel_degree=2)
    assert s.check_world_size(8) == 2 and s.model_parallel_size == 4 and s.hybrid
    with pytest.raises(ValueError, match=r"tensor_parallel_degree=2 x pipeline_parallel_degree=2 x "
                                         r"sharding_parallel_degree=1 = 4 does not divide the world size 6"):
        s.check_world_size(6)
    assert ParallelStrategy(sharding_parallel_degree=2).sharding == "stage1"  # PaddleNLP's default stage
    assert ParallelStrategy(sharding="stage3 offload", sharding_parallel_degree=2).sharding == "stage3"
    with pytest.raises(ValueError, match="sharding='stage4' is not valid; allowed values: stage1, stage2, stage3"):
        ParallelStrategy(sharding="stage4")
    with pytest.raises(ValueError, match="cannot be combined with pipeline_parallel_degree=2"):
        ParallelStrategy(pipeline_parallel_degree=2, sharding_parallel_degree=2, sharding="stage2")
    with pytest.raises(ValueError, match="sharding='stage3' cannot be combined with tensor_parallel_degree=2"):
        ParallelStrategy(tensor_parallel_degree=2, sharding_parallel_degree=2, sharding="stage3")
    with pytest.raises(ValueError, match="tensor_parallel_degree must be >= 1"):
        ParallelStrategy(tensor_parallel_degree=-3)
    assert ParallelStrategy(tensor_parallel_degree=-1).tensor_parallel_degree == 1  # PaddleNLP's "unset"


def test_one_process_layout_needs_one_rank():
    with pytest.raises(ValueError, match="does not divide the world size 1"):
        ParallelStrategy(tensor_parallel_degree=2).init()


def test_masked_moments_single_process():
    rng = np.random.default_rng(1)
    v, m = rng.normal(size=(3, 7)), (rng.random((3, 7)) > 0.4)
    count, mean, var = masked_moments(None, paddle.to_tensor(v), paddle.to_tensor(m.astype("float32")))
    assert float(count) == m.sum()
    np.testing.assert_allclose(float(mean), v[m].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(var), v[m].var(ddof=1), rtol=1e-6)


@pytest.mark.distributed
def test_two_process_collectives(tmp_path):
    launch(Path(__file__).with_name("_collectives_worker.py"), [tmp_path], tmp_path / "log")
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, x in enumerate(res):
        assert x["world_size"] == 2 and x["rank"] == r and x["is_main"] == (r == 0)
        assert x["mean"] == {"a": 1.5, "len_max": 10.0, "len_min": 1.0}
        assert x["gather"] == [0.0, 1.0, 100.0, 101.0, 102.0]  # ragged: 2 items from rank 0, 3 from rank 1
        assert x["sum"] == [2.0, 1.0]
        assert x["objects"] == [{"r": 0}, {"r": 1}] and x["broadcast"] == "from-0"
        assert x["slice"] == [4 * r, 4 * r + 4]
        assert x["wrapped"] == "DataParallel"
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(2, 4, 5)).astype("float32")
    mask = (rng.random((2, 4, 5)) > 0.3)
    count, mean, var = res[0]["moments"]
    assert res[1]["moments"] == res[0]["moments"]
    assert count == mask.sum()
    np.testing.assert_allclose(mean, vals[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(var, vals[mask].var(ddof=1), rtol=1e-5)
    # DP gradient == single-process gradient of the whole batch
    paddle.seed(7)
    model = paddle.nn.Linear(5, 3)
    x = paddle.to_tensor(rng.normal(size=(4, 5)).astype("float32"))
    model(x).pow(2).mean().backward()
    for r in range(2):
        np.testing.assert_allclose(np.array(res[r]["grad"]), model.weight.grad.numpy(), atol=1e-6)

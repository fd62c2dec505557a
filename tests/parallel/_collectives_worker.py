"""Run under ``paddle.distributed.launch --nproc_per_node 2``: exercises ParallelStrategy collectives.

Writes ``<out>/rank<R>.json`` with what each rank saw; tests/parallel/test_strategy.py checks it.
"""

import json
import sys

import numpy as np
import paddle

from alignment.parallel import ParallelStrategy, masked_moments


def main(out_dir: str) -> None:
    s = ParallelStrategy().init()
    r = s.rank
    res = {"world_size": s.world_size, "rank": r, "is_main": s.is_main_process}
    res["mean"] = s.all_reduce_mean({"a": float(r + 1), "len_max": float(10 * r), "len_min": float(10 * r + 1)})
    res["gather"] = s.all_gather(paddle.arange(r + 2, dtype="float32") + 100 * r).tolist()
    res["sum"] = s.all_reduce_sum(paddle.to_tensor([1.0, float(r)])).tolist()
    res["objects"] = s.all_gather_object({"r": r})
    res["broadcast"] = s.broadcast_object(f"from-{r}")
    res["slice"] = [s.shard_slice(8).start, s.shard_slice(8).stop]
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(2, 4, 5)).astype("float32")
    mask = (rng.random((2, 4, 5)) > 0.3).astype("float32")
    count, mean, var = masked_moments(s, paddle.to_tensor(vals[r]), paddle.to_tensor(mask[r]))
    res["moments"] = [float(count), float(mean), float(var)]
    # data parallel: gradients of the halves averaged == gradient of the whole batch
    paddle.seed(7)
    model = paddle.nn.Linear(5, 3)
    wrapped = s.create_model(lambda: model, role="actor", trainable=True)
    x = paddle.to_tensor(rng.normal(size=(4, 5)).astype("float32"))
    y = wrapped(x[2 * r : 2 * r + 2]).pow(2).mean()
    y.backward()
    res["wrapped"] = type(wrapped).__name__
    res["grad"] = s.unwrap(wrapped).weight.grad.numpy().tolist()
    s.barrier()
    with open(f"{out_dir}/rank{r}.json", "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1])

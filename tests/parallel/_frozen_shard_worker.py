"""Run under ``paddle.distributed.launch --nproc_per_node 2``: a frozen model sharded over sharding stage 3.

Writes ``<out>/rank<R>.json``; tests/parallel/test_frozen_shards.py checks it.
"""

import json
import sys

import numpy as np
import paddle
from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

from alignment.parallel import ParallelStrategy
from alignment.parallel.frozen import shard_frozen_parameters


def main(out_dir: str) -> None:
    s = ParallelStrategy(sharding_parallel_degree=2, sharding="stage3").init()
    paddle.seed(0)  # the same weights on both ranks
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    model.eval()
    ids = paddle.to_tensor(np.random.default_rng(s.rank).integers(0, 512, size=(2, 9)), dtype="int64")
    with paddle.no_grad():
        want = model(input_ids=ids, return_dict=True).logits.numpy()
    full_bytes = sum(int(p.numel()) * p.element_size() for p in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    for p in model.parameters():
        p.stop_gradient = True
    shards = shard_frozen_parameters(model, s.sharding_parallel_group, segment_size=1024)
    sharded = [names[k] for k in shards.shards]
    whole_bytes = sum(int(p.numel()) * p.element_size() for p in model.parameters() if id(p) not in shards.shards)
    with paddle.no_grad():
        got = model(input_ids=ids, return_dict=True).logits.numpy()
        again = model(input_ids=ids, return_dict=True).logits.numpy()
    resident = [names[id(p)] for p in model.parameters() if p.get_tensor()._is_initialized()]
    # the default switch: stage3 shards every frozen model built through create_model
    other = s.create_model(lambda: LlamaForCausalLM(config), role="reference", trainable=False)
    res = {
        "max_diff": float(np.abs(got - want).max()), "repeat_diff": float(np.abs(again - got).max()),
        "full_bytes": full_bytes, "local_bytes": shards.local_bytes() + whole_bytes, "sharded": sorted(sharded),
        "resident_after_forward": sorted(resident), "whole": sorted(n for k, n in names.items() if k not in shards.shards),
        "create_model_sharded": hasattr(other, "_frozen_shards") and len(other._frozen_shards.shards) > 0,
    }
    s.barrier()
    with open(f"{out_dir}/rank{s.rank}.json", "w") as f:
        json.dump(res, f)
    s.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])

"""Run in one process, or under ``paddle.distributed.launch`` with pipeline_parallel_degree 2 (and tensor
parallel when 4 processes): the actor as pipeline stages, its ``eval_mode`` generation copy refreshed from
them, greedy and sampled generation and the copy's response log-probs; writes ``<out>/<tag>_rank<R>.json``.
"""

import json
import sys

import numpy as np
import paddle

from alignment.parallel import ParallelStrategy


def main(model_dir: str, out_dir: str, mode: str) -> None:
    world = ParallelStrategy.launched_world_size()
    tp = 2 if world == 4 else 1
    s = ParallelStrategy(tensor_parallel_degree=tp, pipeline_parallel_degree=world // tp).init()
    from alignment.rollout import response_logps
    from alignment.rollout.generation import GenerationConfig, generate

    ids = paddle.to_tensor(np.random.default_rng(0).integers(4, 500, size=(3, 10)), dtype="int64")
    mask = paddle.ones_like(ids)
    res = {}
    if world == 1:
        from alignment.models.loading import load_causal_lm

        model = load_causal_lm(model_dir)
    else:
        from alignment.models.pipeline import generation_copy
        from alignment.models.pipeline import PipeCriterion, load_causal_lm_pipe

        pipe = load_causal_lm_pipe(model_dir, criterion=PipeCriterion(lambda *a: None))
        copy = generation_copy(pipe, mode, score=False)
        res["reshard"] = copy.refresh()
        res["stage_params"] = len(pipe.state_dict())
        res["copy_params"] = len(copy.model.state_dict())
        model = copy.model
    for sample in (False, True):
        paddle.seed(5)
        cfg = GenerationConfig(eos_token_ids=(2,), pad_token_id=3, max_new_tokens=10, do_sample=sample)
        out = generate(model, ids, mask, cfg)
        res[f"tokens_sample_{sample}"] = out.sequences.numpy().tolist()
        if not sample:
            with paddle.no_grad():
                lp = response_logps(model, out.sequences, out.attention_mask, out.position_ids,
                                    out.prompt_length, out.response_mask)
            res["logps"] = lp.numpy().tolist()
    tag = "single" if world == 1 else f"{mode}_w{world}"
    with open(f"{out_dir}/{tag}_rank{s.rank}.json", "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])

"""Run with 1 process or under ``paddle.distributed.launch --nproc_per_node 2`` (tensor_parallel_degree 2).

Loads the tiny model (split over the ranks when launched), computes token log-probs, entropy, log-softmax
sums and GKD's generalised JSD against a teacher, each with its gradient, plus greedy and sampled
generation; writes ``<out>/tp<T>_rank<R>.json``.
"""

import json
import sys

import numpy as np
import paddle

from alignment.algorithms.distill import generalized_jsd
from alignment.algorithms.utils import entropy_from_logits, gather_logps, log_softmax
from alignment.parallel import ParallelStrategy

GRAD_PARAMS = ("lm_head.weight", "llama.norm.weight", "llama.layers.1.mlp.down_proj.weight",
               "llama.embed_tokens.weight")


def main(model_dir: str, out_dir: str) -> None:
    tp = ParallelStrategy.launched_world_size()
    s = ParallelStrategy(tensor_parallel_degree=tp).init()
    from alignment.models.loading import load_causal_lm
    from alignment.rollout.generation import GenerationConfig, generate

    student = load_causal_lm(model_dir)
    paddle.seed(11)
    teacher = load_causal_lm(model_dir)
    with paddle.no_grad():  # a different teacher: the student's weights plus a fixed perturbation
        for p in teacher.parameters():
            p.set_value(p * 1.1)
    ids = paddle.to_tensor(np.random.default_rng(0).integers(4, 500, size=(2, 12)), dtype="int64")
    mask = paddle.ones_like(ids)
    res = {"logits_width": None, "values": {}, "grads": {}}
    for name in ("logps", "entropy", "log_softmax", "jsd"):
        student.clear_gradients()
        logits = student(input_ids=ids, attention_mask=mask, return_dict=True).logits
        res["logits_width"] = logits.shape[-1]
        with paddle.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask, return_dict=True).logits
        if name == "logps":
            value = gather_logps(logits[:, :-1], ids[:, 1:], temperature=0.7)
            loss = value.sum()
        elif name == "entropy":
            value = entropy_from_logits(logits)
            loss = value.sum()
        elif name == "log_softmax":  # a per-shard tensor: only its vocabulary-wide sum is comparable
            from alignment.algorithms.utils import vocab_sum

            value = vocab_sum(log_softmax(logits) * paddle.exp(log_softmax(t_logits)))
            loss = value.sum()
        else:
            value, _ = generalized_jsd(logits, t_logits, mask.astype("float32"), beta=0.3)
            loss = value * 100.0
        loss.backward()
        res["values"][name] = value.numpy().tolist()
        res["grads"][name] = {n: p.grad.numpy().tolist() for n, p in student.named_parameters()
                              if n in GRAD_PARAMS and p.grad is not None}
    res["split_axis"] = {n: (p.shape, getattr(p, "is_distributed", False)) for n, p in student.named_parameters()
                         if n in GRAD_PARAMS}
    for sample in (False, True):
        paddle.seed(3)
        cfg = GenerationConfig(eos_token_ids=(2,), pad_token_id=3, max_new_tokens=12, do_sample=sample)
        res[f"generate_sample_{sample}"] = generate(student, ids, mask, cfg).sequences.numpy().tolist()
    with open(f"{out_dir}/tp{tp}_rank{s.rank}.json", "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

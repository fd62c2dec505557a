"""Time one attention core forward + backward (one thread, float32, CPU): PaddleNLP's non-flash Llama
``scaled_dot_product_attention`` composition against ``alignment.ops.masked_softmax.attention_core`` (the same
matmuls, the scale / mask add / softmax and their backwards fused), with PaddleNLP's causal + padding mask.

    OMP_NUM_THREADS=1 .venv/bin/python bench/attention_core.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import paddle  # noqa: E402


def _mask(b, l, pad):
    from paddlenlp.transformers.llama.modeling import LlamaModel

    m = np.ones([b, l], dtype="int64")
    m[1:, :pad] = 0  # left padding on every row but the first
    return LlamaModel._prepare_decoder_attention_mask(paddle.to_tensor(m), (b, l), 0, paddle.float32)


def _time(fn, q, k, v, reps):
    ins = []
    for t in (q, k, v):
        t = t.detach().clone()
        t.stop_gradient = False
        ins.append(t)
    g = paddle.randn([q.shape[0], q.shape[1], q.shape[2] * q.shape[3]])
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        out = fn(*ins)
        paddle.autograd.backward([out], [g])
        times.append(time.perf_counter() - t0)
        for t in ins:
            t.clear_gradient()
    return float(np.median(times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from paddlenlp.transformers import LlamaConfig

    import alignment.models  # noqa: F401 - installs the dispatcher
    from alignment.ops import masked_softmax as msm
    from paddlenlp.transformers.llama import modeling as llama

    original = msm._ORIGINAL.get(llama.__name__, llama.scaled_dot_product_attention)
    config = LlamaConfig(use_flash_attention=False)
    print(f"threads {os.environ['OMP_NUM_THREADS']}, paddle {paddle.__version__}")
    for b, l, h, d in ((2, 1024, 8, 64), (16, 128, 8, 64)):
        paddle.seed(0)
        q, k, v = (paddle.randn([b, l, h, d]) for _ in range(3))
        mask = _mask(b, l, l // 8)
        t_nlp = _time(lambda a, c, e: original(a, config, c, e, mask, False), q, k, v, args.reps)
        t_ours = _time(lambda a, c, e: msm.attention_core(a, c, e, mask), q, k, v, args.reps)
        print(f"B={b} L={l} H={h} D={d}: PaddleNLP {t_nlp * 1e3:.1f} ms, attention_core {t_ours * 1e3:.1f} ms, "
              f"speed-up {t_nlp / t_ours:.2f}x (forward + backward)")


if __name__ == "__main__":
    main()

"""Benchmark RMSNorm alone: forward and forward + backward (dx and dw) of the fused operator
(``alignment.ops.rms_norm``) against the pure-Paddle paths, on (rows, hidden) float32 inputs.

    OMP_NUM_THREADS=1 python bench/rms_norm.py
    OMP_NUM_THREADS=1 python bench/rms_norm.py --shapes 32x512 2048x512 --repeats 200

Paths: ``fused`` (the operator), ``reference`` (``rms_norm_reference``: x * x, mean, rsqrt, multiplies) and
``paddlenlp`` (PaddleNLP's own ``LlamaRMSNorm.forward``: ``pow(2)``, under ``use_fusemt(False)``). The
backward is ``paddle.grad(y, [x, weight], grad_outputs=g)`` with a fixed random g; median of ``--repeats``
after warm-up, in microseconds. Threads: ``alignment.ops.num_threads()`` (OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import paddle

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignment import ops  # noqa: E402
from alignment.ops.norm import install_rms_norm, rms_norm, rms_norm_reference  # noqa: E402


def _time(fn, repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def bench(rows: int, hidden: int, repeats: int) -> dict:
    from paddlenlp.transformers import LlamaConfig
    from paddlenlp.transformers.llama.modeling import LlamaRMSNorm

    install_rms_norm()
    paddle.seed(0)
    x = paddle.randn([rows, hidden])
    g = paddle.randn([rows, hidden])
    layer = LlamaRMSNorm(LlamaConfig(hidden_size=hidden, rms_norm_eps=1e-6))
    w = layer.weight
    paths = {
        "fused": lambda a: rms_norm(a, w, 1e-6, use_fusemt=True),
        "reference": lambda a: rms_norm_reference(a, w, 1e-6),
        "paddlenlp": layer,  # run under use_fusemt(False): PaddleNLP's own forward
    }
    out = {}
    for name, fn in paths.items():
        def forward():
            with paddle.no_grad():
                fn(x)

        def step():
            a = x.detach()
            a.stop_gradient = False
            paddle.grad([fn(a)], [a, w], grad_outputs=[g])

        with ops.use_fusemt(name != "paddlenlp"):
            out[name] = dict(fwd_us=_time(forward, repeats), fwd_bwd_us=_time(step, repeats))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["32x512", "2048x512"])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)
    if not ops.fused_available():
        print("the fused operators are unavailable here; nothing to compare")
        return 1
    print(f"threads {ops.num_threads()}, Paddle {paddle.__version__}")
    print(f"{'shape':>10} {'path':>10} {'fwd us':>9} {'fwd+bwd us':>11} {'speed-up fwd+bwd':>17}")
    for shape in args.shapes:
        rows, hidden = (int(v) for v in shape.split("x"))
        res = bench(rows, hidden, args.repeats)
        for name, r in res.items():
            speed = r["fwd_bwd_us"] / res["fused"]["fwd_bwd_us"]
            print(f"{shape:>10} {name:>10} {r['fwd_us']:9.1f} {r['fwd_bwd_us']:11.1f} {speed:16.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

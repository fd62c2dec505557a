"""Benchmark Paddle's CPU matmul at the shapes of decoding and training, with and without MKL's AVX2 code path
on AMD CPUs (``alignment.utils.cpu``: ``import alignment`` sets ``MKL_DEBUG_CPU_TYPE=5`` there), next to
NumPy's BLAS on the same arrays.

Each setting runs in its own subprocess (MKL reads the variable once, at its first call): ``default`` imports
``alignment`` as every entry point does; ``ALIGNMENT_MKL_AMD_FIX=0`` is the same without the switch, i.e. what
Paddle does on its own. GFLOP/s = 2 M K N / median seconds of ``--repeats`` calls after a warm-up. Prints a
table and writes ``bench/results/blas.json``. Not part of the test run.

    python bench/blas.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (M, K, N, what): the decode step at batch 32 (hidden 512, intermediate 1376, vocab 32000) and one DPO
# micro-batch of 16 x 128 tokens
SHAPES = [
    (32, 512, 32000, "decode LM head"),
    (32, 512, 1376, "decode gate / up"),
    (32, 1376, 512, "decode down"),
    (32, 512, 512, "decode q / k / v / o"),
    (2048, 512, 32000, "training LM head"),
    (2048, 512, 1376, "training gate / up"),
    (2048, 512, 512, "training q / k / v / o"),
]


def _child(threads: int, repeats: int) -> None:
    import numpy as np

    import alignment  # noqa: F401  (the code path, unless ALIGNMENT_MKL_AMD_FIX=0)
    import paddle

    paddle.base.core.set_num_threads(threads)
    out = []
    for m, k, n, what in SHAPES:
        a = np.random.RandomState(0).randn(m, k).astype("float32")
        b = np.random.RandomState(1).randn(k, n).astype("float32")
        pa, pb = paddle.to_tensor(a), paddle.to_tensor(b)
        reps = max(2, repeats // 10) if m * n > 10**7 else repeats

        def median(fn):
            fn()
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return sorted(times)[len(times) // 2]

        paddle_s = median(lambda: paddle.matmul(pa, pb))
        numpy_s = median(lambda: a @ b)
        diff = float(abs(paddle.matmul(pa, pb).numpy() - a @ b).max())
        out.append(dict(m=m, k=k, n=n, what=what, paddle_gflops=2 * m * k * n / paddle_s / 1e9,
                        numpy_gflops=2 * m * k * n / numpy_s / 1e9, max_abs_diff_vs_numpy=diff))
    print(json.dumps(dict(mkl_debug_cpu_type=os.environ.get("MKL_DEBUG_CPU_TYPE"), rows=out)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "blas.json"))
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.threads, args.repeats)
    sys.path.insert(0, str(ROOT))
    from alignment.utils.io import atomic_write_json

    runs = {}
    for name, extra in (("default", {}), ("ALIGNMENT_MKL_AMD_FIX=0", {"ALIGNMENT_MKL_AMD_FIX": "0"})):
        env = {k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}
        env.update(extra, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
                   PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, __file__, "--child", "--threads", str(args.threads), "--repeats",
                               str(args.repeats)], env=env, capture_output=True, text=True, check=True)
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    on, off = runs["default"], runs["ALIGNMENT_MKL_AMD_FIX=0"]
    print(f"threads {args.threads}; MKL_DEBUG_CPU_TYPE in the default run: {on['mkl_debug_cpu_type']}")
    print(f"| {'shape (M x K x N)':<20} | {'what':<22} | {'Paddle, code path':>17} | {'Paddle alone':>12} | "
          f"{'NumPy':>6} | {'max diff':>8} |")
    print(f"|{'-' * 22}|{'-' * 24}|{'-' * 19}|{'-' * 14}|{'-' * 8}|{'-' * 10}|")
    for a, b in zip(on["rows"], off["rows"]):
        shape = f"{a['m']} x {a['k']} x {a['n']}"
        print(f"| {shape:<20} | {a['what']:<22} | {a['paddle_gflops']:17.1f} | {b['paddle_gflops']:12.1f} | "
              f"{a['numpy_gflops']:6.1f} | {a['max_abs_diff_vs_numpy']:8.1e} |")
    result = dict(benchmark="blas", threads=args.threads, runs=runs)
    atomic_write_json(Path(args.out), result)
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()

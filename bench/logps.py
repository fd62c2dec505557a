"""Benchmark the completion log-prob path alone: forward + backward of per-token log-probs (and entropy)
from (N, L, V) logits, the fused operator against the pure-Paddle reference, at the shape of a DPO step
(16 rows x 128 tokens x vocab 32000 = 262 MB of float32 logits). Prints a table, writes JSON.

    python bench/logps.py --threads 2
    python bench/logps.py --rows 16 --length 128 --vocab 32000 --repeats 5 --threads 2

What is timed: ``completion_logps(logits, labels[:, 1:], mask)`` (unsliced logits, T = L - 1) and the
backward of ``sum(logps * w)`` (+ entropy when ``--entropy``), median of ``--repeats`` after one warm-up.
``extra MB`` is the RSS growth over the step beyond the logits themselves (Linux ``ru_maxrss`` is a
high-water mark, so the reference runs last).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import paddle

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignment import ops  # noqa: E402
from alignment.utils.io import atomic_write_json  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(logits, labels, mask, fused: bool, entropy: bool, repeats: int):
    fwd, bwd = [], []
    for i in range(repeats + 1):
        x = logits.detach()
        x.stop_gradient = False
        t0 = time.perf_counter()
        lp, ent = ops.completion_logps(x, labels, mask, with_entropy=entropy, use_fusemt=fused)
        loss = lp.sum() + (ent.sum() if entropy else 0.0)
        float(loss)
        t1 = time.perf_counter()
        loss.backward()
        float(x.grad.sum())
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        del x, lp, ent, loss
    return statistics.median(fwd), statistics.median(bwd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--entropy", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "logps.json"))
    args = ap.parse_args(argv)
    paddle.base.core.set_num_threads(args.threads)
    ops.set_num_threads(args.threads)
    paddle.seed(0)
    logits = paddle.randn([args.rows, args.length, args.vocab])
    labels = paddle.randint(0, args.vocab, [args.rows, args.length - 1])
    mask = paddle.ones(labels.shape)
    mask[:, : args.length // 4] = 0  # the prompt
    base = rss_mb()
    rows = []
    for name, fused in (("fused", True), ("reference", False)):
        if fused and not ops.fused_available():
            print(f"fused operators unavailable: {ops._build.build_reason()}")
            continue
        before = rss_mb()
        f, b = run(logits, labels, mask, fused, args.entropy, args.repeats)
        rows.append(dict(path=name, forward_s=f, backward_s=b, total_s=f + b, peak_rss_growth_mb=rss_mb() - before))
    shape = f"{args.rows}x{args.length}x{args.vocab}"
    print(f"logits {shape} float32 ({logits.numel().item() * 4 / 2**20:.0f} MiB), threads {args.threads}, "
          f"entropy {args.entropy}, RSS before {base:.0f} MiB")
    print(f"{'path':<10} {'forward s':>9} {'backward s':>10} {'total s':>8} {'RSS growth MiB':>15}")
    for r in rows:
        print(f"{r['path']:<10} {r['forward_s']:>9.3f} {r['backward_s']:>10.3f} {r['total_s']:>8.3f} "
              f"{r['peak_rss_growth_mb']:>15.0f}")
    atomic_write_json(Path(args.out), dict(benchmark="logps", shape=shape, threads=args.threads,
                                           entropy=args.entropy, rows=rows))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

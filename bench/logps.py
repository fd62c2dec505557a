"""Benchmark the completion log-prob path alone: forward + backward of per-token log-probs (and entropy)
from (N, L, V) logits, the fused operator against the pure-Paddle reference, at the shape of a DPO step
(16 rows x 128 tokens x vocab 32000 = 262 MB of float32 logits). Prints a table, writes JSON.

    python bench/logps.py --threads 2
    python bench/logps.py --rows 16 --length 128 --vocab 32000 --repeats 5 --threads 2
    python bench/logps.py --lm-head 512 --threads 2   # from hidden states: chunked LM head vs full logits

What is timed: ``completion_logps(logits, labels[:, 1:], mask)`` (unsliced logits, T = L - 1) and the
backward of ``sum(logps * w)`` (+ entropy when ``--entropy``), median of ``--repeats`` after one warm-up.
``extra MB`` is the RSS growth over the step beyond the logits themselves (Linux ``ru_maxrss`` is a
high-water mark, so the reference runs last).

``--lm-head H`` starts one step earlier, from (N, L, H) hidden states and an (H, V) LM head, and times
forward + backward (to the hidden states and the head) of three paths: ``chunked`` (the chunked LM head,
``linear_completion_logps``: the (N, L, V) logits are never held), ``logits+fused`` (matmul, then the
fused operator) and ``logits+reference`` (matmul, then the pure-Paddle log-probs); ``peak MiB`` is the
largest RSS growth during the step (sampled every 2 ms), i.e. the memory the path needs on top of its inputs.
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
from alignment.ops.linear_logps import linear_completion_logps  # noqa: E402
from alignment.utils.io import atomic_write_json  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from _compare import PeakRSS  # noqa: E402


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


def run_head(hidden, weight, labels, path: str, repeats: int):
    times, peak = [], 0.0
    for i in range(repeats + 1):
        h, w = hidden.detach(), weight.detach()
        h.stop_gradient = w.stop_gradient = False
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            if path == "chunked":
                lp = linear_completion_logps(h, w, labels)
            else:
                lp = ops.completion_logps(paddle.matmul(h, w), labels, use_fusemt=path == "logits+fused")[0]
            lp.sum().backward()
            float(h.grad.sum() + w.grad.sum())
            elapsed = time.perf_counter() - t0
        if i:
            times.append(elapsed)
            peak = max(peak, mem.peak)
        del h, w, lp
    return statistics.median(times), peak


def main_head(args):
    paddle.seed(0)
    hidden = paddle.randn([args.rows, args.length, args.lm_head])
    weight = paddle.randn([args.lm_head, args.vocab]) * 0.02
    labels = paddle.randint(0, args.vocab, [args.rows, args.length - 1])
    labels[:, : args.length // 4] = -100  # the prompt
    logits_mib = args.rows * args.length * args.vocab * 4 / 2**20
    rows = []
    for path in ("chunked", "logits+fused", "logits+reference"):
        seconds, peak = run_head(hidden, weight, labels, path, args.repeats)
        rows.append(dict(path=path, seconds=seconds, peak_rss_growth_mib=peak))
    print(f"hidden {args.rows}x{args.length}x{args.lm_head}, head {args.lm_head}x{args.vocab} "
          f"(full logits {logits_mib:.0f} MiB), threads {args.threads}")
    print(f"{'path':<17} {'fwd+bwd s':>9} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['path']:<17} {r['seconds']:>9.3f} {r['peak_rss_growth_mib']:>9.0f}")
    out = Path(args.out).with_name("logps_lm_head.json")
    atomic_write_json(out, dict(benchmark="logps_lm_head", rows_x_length=[args.rows, args.length],
                                hidden=args.lm_head, vocab=args.vocab, threads=args.threads,
                                full_logits_mib=logits_mib, rows=rows))
    print(f"written {out}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--entropy", action="store_true")
    ap.add_argument("--lm-head", type=int, default=0, help="hidden size: time the chunked LM head path instead")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "logps.json"))
    args = ap.parse_args(argv)
    paddle.base.core.set_num_threads(args.threads)
    ops.set_num_threads(args.threads)
    if args.lm_head:
        return main_head(args)
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

"""Standalone check of every CUDA kernel in csrc/kernels against its CPU kernel, with timings. No Paddle.

    python csrc/tests/harness.py                 # needs nvcc, g++, torch with CUDA (or --compile-only)
    python csrc/tests/harness.py --compile-only  # build both shims (a CI / no-GPU compile check)
    python csrc/tests/harness.py --json out.json

Builds csrc/tests/shim_cpu.cc with g++ (-fopenmp) and csrc/tests/shim_cuda.cu with nvcc into
$HARNESS_BUILD (default /tmp/alignment_ops_harness), loads both with ctypes, and passes the data
pointers of torch tensors (CPU tensors to the CPU shim, CUDA tensors to the CUDA shim). Checks:

* fused log-probs forward (log-probs, entropy, logsumexp) and backward (the (N, L, V) gradient) on
  random logits with ignored labels, max abs difference CUDA vs CPU < 1e-4;
* fused log-probs with an offset (labels scored by logits[:, offset + t]);
* decode attention (one query per row over a KV cache, rotary, GQA, masked columns): output and the
  in-place cache column, max abs difference < 1e-4; bandwidth counts one read of the K and V cache;
* RMSNorm forward (y, rstd) and backward (dx; dw relative to its largest entry), max difference < 1e-4,
  and dw bit-identical across two runs (deterministic); forward bandwidth counts x read + y written,
  backward dy and x read twice (the dx kernel, the dw kernel) + dx written (w and rstd negligible);
* fused masked softmax forward (P) and backward (dS) over (B, H, Lq, Lk) scores with a left / right padding
  mask (fully masked rows included), causal with Lq < Lk, and no mask: max abs difference < 1e-5;
  bandwidth counts S read + P written (forward), P and dP read + dS written (backward);
* the sampler: greedy ids identical; sampled ids with the same seed agree on >= 99% of rows (both draw
  the same uniform; a few rows may differ where float sums in a different order cross a token boundary);
* timings (CUDA events, median of 20) and the achieved bandwidth: forward reads N*L*V*4 bytes, backward
  reads and writes them (2x), against the card's peak from --peak-gbs (H100/H200 SXM: about 3350/4800).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

CSRC = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("HARNESS_BUILD", "/tmp/alignment_ops_harness"))


def build(arch: str) -> tuple[Path, Path]:
    BUILD.mkdir(parents=True, exist_ok=True)
    cpu, cuda = BUILD / "libshim_cpu.so", BUILD / "libshim_cuda.so"
    subprocess.run(["g++", "-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", f"-I{CSRC}",
                    str(CSRC / "tests" / "shim_cpu.cc"), "-o", str(cpu)], check=True)
    subprocess.run(["nvcc", "-O3", f"-arch={arch}", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", f"-I{CSRC}",
                    str(CSRC / "tests" / "shim_cuda.cu"), "-o", str(cuda)], check=True)
    return cpu, cuda


def _p(t):
    return ctypes.c_void_p(t.data_ptr())


def _time_cuda(torch, fn, reps=20):
    times = []
    for _ in range(3):
        fn()
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def check_logps(torch, cpu, cuda, N, L, V, threads, peak, offset=0):
    i64, f32 = ctypes.c_int64, ctypes.c_float
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, L, V, generator=g) * 3
    T = L - 1 - offset
    labels = torch.randint(0, V, (N, T), generator=g)
    labels[:, : L // 4] = -100
    out = {k: torch.empty(N, T) for k in ("lp", "ent", "lse")}
    cpu.cpu_logps_forward(_p(logits), _p(labels), i64(N), i64(L), i64(T), i64(V), f32(0.7), 1, _p(out["lp"]),
                          _p(out["ent"]), _p(out["lse"]), threads, i64(offset))
    gl, ge = torch.randn(N, T, generator=g), torch.randn(N, T, generator=g)
    grad = torch.empty(N, L, V)
    cpu.cpu_logps_backward(_p(logits), _p(labels), _p(out["lse"]), _p(out["ent"]), _p(gl), _p(ge), i64(N), i64(L),
                           i64(T), i64(V), f32(0.7), _p(grad), threads, i64(offset))
    d = {k: v.cuda() for k, v in dict(logits=logits, labels=labels, gl=gl, ge=ge).items()}
    dout = {k: torch.empty(N, T, device="cuda") for k in ("lp", "ent", "lse")}
    dgrad = torch.empty(N, L, V, device="cuda")

    def fwd():
        return cuda.cuda_logps_forward(_p(d["logits"]), _p(d["labels"]), i64(N), i64(L), i64(T), i64(V), f32(0.7), 1,
                                       _p(dout["lp"]), _p(dout["ent"]), _p(dout["lse"]), i64(offset))

    def bwd():
        return cuda.cuda_logps_backward(_p(d["logits"]), _p(d["labels"]), _p(dout["lse"]), _p(dout["ent"]),
                                        _p(d["gl"]), _p(d["ge"]), i64(N), i64(L), i64(T), i64(V), f32(0.7),
                                        _p(dgrad), i64(offset))

    assert fwd() == 0 and bwd() == 0 and cuda.cuda_synchronize() == 0
    diffs = {k: float((dout[k].cpu() - out[k]).abs().max()) for k in out}
    diffs["grad"] = float((dgrad.cpu() - grad).abs().max())
    t_f, t_b = _time_cuda(torch, fwd), _time_cuda(torch, bwd)
    nbytes = N * L * V * 4
    row = dict(op="fused_logps", shape=f"{N}x{L}x{V} offset={offset}", max_abs_diff=max(diffs.values()), diffs=diffs,
               fwd_ms=t_f * 1e3, bwd_ms=t_b * 1e3, fwd_gbs=nbytes / t_f / 1e9, bwd_gbs=2 * nbytes / t_b / 1e9)
    if peak:
        row.update(fwd_pct_peak=100 * row["fwd_gbs"] / peak, bwd_pct_peak=100 * row["bwd_gbs"] / peak)
    row["ok"] = row["max_abs_diff"] < 1e-4
    return row


def check_decode_attention(torch, cpu, cuda, B, Hq, Hkv, D, S, threads, peak):
    i64, f32 = ctypes.c_int64, ctypes.c_float
    g = torch.Generator().manual_seed(2)
    t = S - 1
    q, k, v = (torch.randn(B, h * D, generator=g) for h in (Hq, Hkv, Hkv))
    cos, sin = torch.randn(S + 8, D, generator=g), torch.randn(S + 8, D, generator=g)
    pos = torch.randint(0, S + 8, (B,), generator=g)
    mask = (torch.rand(B, S, generator=g) > 0.2).long()
    mask[:, t] = 1
    ck, cv = torch.randn(B, S, Hkv, D, generator=g), torch.randn(B, S, Hkv, D, generator=g)
    d = {n: x.cuda() for n, x in dict(q=q, k=k, v=v, cos=cos, sin=sin, pos=pos, mask=mask, ck=ck, cv=cv).items()}
    out, dout = torch.empty(B, Hq * D), torch.empty(B, Hq * D, device="cuda")
    common = (i64(S + 8),)
    cpu.cpu_decode_attention(_p(q), _p(k), _p(v), _p(cos), _p(sin), *common, _p(pos), _p(mask), _p(ck), _p(cv), i64(B),
                             i64(Hq), i64(Hkv), i64(D), i64(S), i64(t), f32(D ** -0.5), _p(out), threads)

    def run():
        return cuda.cuda_decode_attention(_p(d["q"]), _p(d["k"]), _p(d["v"]), _p(d["cos"]), _p(d["sin"]), *common,
                                          _p(d["pos"]), _p(d["mask"]), _p(d["ck"]), _p(d["cv"]), i64(B), i64(Hq),
                                          i64(Hkv), i64(D), i64(S), i64(t), f32(D ** -0.5), _p(dout))

    assert run() == 0 and cuda.cuda_synchronize() == 0
    diffs = dict(out=float((dout.cpu() - out).abs().max()), cache_k=float((d["ck"].cpu() - ck).abs().max()),
                 cache_v=float((d["cv"].cpu() - cv).abs().max()))
    sec = _time_cuda(torch, run)
    nbytes = 2 * B * S * Hkv * D * 4  # the step reads the whole K and V cache once
    row = dict(op="decode_attention", shape=f"B{B} Hq{Hq} Hkv{Hkv} D{D} S{S}", max_abs_diff=max(diffs.values()),
               diffs=diffs, ms=sec * 1e3, gbs=nbytes / sec / 1e9)
    if peak:
        row["pct_peak"] = 100 * row["gbs"] / peak
    row["ok"] = row["max_abs_diff"] < 1e-4
    return row


def check_rms_norm(torch, cpu, cuda, R, H, threads, peak):
    i64, f32 = ctypes.c_int64, ctypes.c_float
    g = torch.Generator().manual_seed(3)
    x, w, dy = torch.randn(R, H, generator=g), torch.randn(H, generator=g), torch.randn(R, H, generator=g)
    y, rstd, dx, dw = torch.empty(R, H), torch.empty(R), torch.empty(R, H), torch.empty(H)
    cpu.cpu_rms_norm_forward(_p(x), _p(w), i64(R), i64(H), f32(1e-6), _p(y), _p(rstd), threads)
    cpu.cpu_rms_norm_backward(_p(dy), _p(x), _p(w), _p(rstd), i64(R), i64(H), _p(dx), _p(dw), threads)
    d = {k: v.cuda() for k, v in dict(x=x, w=w, dy=dy).items()}
    dy_, drstd, ddx, ddw = (torch.empty(R, H, device="cuda"), torch.empty(R, device="cuda"),
                            torch.empty(R, H, device="cuda"), torch.empty(H, device="cuda"))
    cuda.cuda_rms_norm_workspace.restype = ctypes.c_int64
    work = torch.empty(int(cuda.cuda_rms_norm_workspace(i64(R), i64(H))), device="cuda")

    def fwd():
        return cuda.cuda_rms_norm_forward(_p(d["x"]), _p(d["w"]), i64(R), i64(H), f32(1e-6), _p(dy_),
                                          _p(drstd))

    def bwd():
        return cuda.cuda_rms_norm_backward(_p(d["dy"]), _p(d["x"]), _p(d["w"]), _p(drstd), i64(R), i64(H),
                                           _p(ddx), _p(ddw), _p(work))

    assert fwd() == 0 and bwd() == 0 and cuda.cuda_synchronize() == 0
    first_dw = ddw.clone()
    assert bwd() == 0 and cuda.cuda_synchronize() == 0
    diffs = dict(y=float((dy_.cpu() - y).abs().max()), rstd=float((drstd.cpu() - rstd).abs().max()),
                 dx=float((ddx.cpu() - dx).abs().max()),
                 dw_rel=float((ddw.cpu() - dw).abs().max() / dw.abs().max().clamp(min=1.0)))
    t_f, t_b = _time_cuda(torch, fwd), _time_cuda(torch, bwd)
    nbytes = R * H * 4
    row = dict(op="fused_rms_norm", shape=f"{R}x{H}", max_abs_diff=max(diffs.values()), diffs=diffs,
               dw_deterministic=bool(torch.equal(first_dw, ddw)), fwd_ms=t_f * 1e3, bwd_ms=t_b * 1e3,
               fwd_gbs=2 * nbytes / t_f / 1e9, bwd_gbs=5 * nbytes / t_b / 1e9)
    if peak:
        row.update(fwd_pct_peak=100 * row["fwd_gbs"] / peak, bwd_pct_peak=100 * row["bwd_gbs"] / peak)
    row["ok"] = row["max_abs_diff"] < 1e-4 and row["dw_deterministic"]
    return row


def check_masked_softmax(torch, cpu, cuda, B, H, Lq, Lk, causal, mask_kind, threads, peak):
    i64, f32 = ctypes.c_int64, ctypes.c_float
    g = torch.Generator().manual_seed(5)
    s, dp = torch.randn(B, H, Lq, Lk, generator=g) * 4, torch.randn(B, H, Lq, Lk, generator=g)
    lowest = torch.finfo(torch.float32).min
    mask, stride = None, 0
    if mask_kind == "padding":  # row b: the first b % 3 keys (left padding) and the last b % 2 keys masked
        keep = torch.ones(B, Lk, dtype=torch.bool)
        for b in range(B):
            keep[b, : b % 3] = False
            if b % 2:
                keep[b, Lk - b % 2:] = False
        if B > 1:
            keep[0] = False  # one batch row with every key masked
        allowed = keep[:, None, :].expand(B, Lq, Lk)
        if causal:
            allowed = allowed & torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq)
        mask, stride = torch.where(allowed, 0.0, lowest)[:, None].contiguous(), Lq * Lk
    scale = 0.125
    p, ds = torch.empty_like(s), torch.empty_like(s)
    mp = _p(mask) if mask is not None else None
    cpu.cpu_masked_softmax_forward(_p(s), mp, i64(B), i64(H), i64(Lq), i64(Lk), i64(stride), int(causal), f32(scale),
                                   _p(p), threads)
    cpu.cpu_masked_softmax_backward(_p(p), _p(dp), i64(B * H * Lq), i64(Lq), i64(Lk), int(causal), f32(scale), _p(ds),
                                    threads)
    d = dict(s=s.cuda(), dp=dp.cuda(), mask=mask.cuda() if mask is not None else None)
    dpp, dds = torch.empty_like(d["s"]), torch.empty_like(d["s"])

    def fwd():
        return cuda.cuda_masked_softmax_forward(_p(d["s"]), _p(d["mask"]) if mask is not None else None, i64(B),
                                                i64(H), i64(Lq), i64(Lk), i64(stride), int(causal), f32(scale),
                                                _p(dpp))

    def bwd():
        return cuda.cuda_masked_softmax_backward(_p(dpp), _p(d["dp"]), i64(B * H * Lq), i64(Lq), i64(Lk),
                                                 int(causal), f32(scale), _p(dds))

    assert fwd() == 0 and bwd() == 0 and cuda.cuda_synchronize() == 0
    diffs = dict(p=float((dpp.cpu() - p).abs().max()), ds=float((dds.cpu() - ds).abs().max()))
    t_f, t_b = _time_cuda(torch, fwd), _time_cuda(torch, bwd)
    nbytes = B * H * Lq * Lk * 4
    row = dict(op=f"fused_masked_softmax[{mask_kind}{',causal' if causal else ''}]", shape=f"{B}x{H}x{Lq}x{Lk}",
               max_abs_diff=max(diffs.values()), diffs=diffs, fwd_ms=t_f * 1e3, bwd_ms=t_b * 1e3,
               fwd_gbs=2 * nbytes / t_f / 1e9, bwd_gbs=3 * nbytes / t_b / 1e9)
    if peak:
        row.update(fwd_pct_peak=100 * row["fwd_gbs"] / peak, bwd_pct_peak=100 * row["bwd_gbs"] / peak)
    row["ok"] = row["max_abs_diff"] < 1e-5
    return row


def check_sampling(torch, cpu, cuda, B, V, H, threads):
    i64, f32, u64 = ctypes.c_int64, ctypes.c_float, ctypes.c_uint64
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(B, V, generator=g) * 2
    hist = torch.randint(0, V, (B, H), generator=g)
    mask = (torch.rand(B, H, generator=g) > 0.1).long()
    finished = torch.zeros(B, dtype=torch.bool)
    finished[::7] = True
    eos = torch.tensor([2, 5])
    d = {k: v.cuda() for k, v in dict(logits=logits, hist=hist, mask=mask, finished=finished, eos=eos).items()}
    work = torch.empty(B, V, device="cuda")
    rows = []
    for name, sample, k, p in (("greedy", 0, 0, 1.0), ("top_p", 1, 0, 0.9), ("top_k_top_p", 1, 50, 0.95)):
        ids_c = torch.empty(B, dtype=torch.int64)
        ids_g = torch.empty(B, dtype=torch.int64, device="cuda")
        args = (i64(2), i64(B), i64(V), i64(H), f32(0.8), i64(k), f32(p), f32(1.2), f32(0.1), f32(0.1), i64(1),
                i64(2), i64(0), sample, u64(1234))
        cpu.cpu_sample(_p(logits), _p(hist), _p(mask), _p(finished), _p(eos), *args, _p(ids_c), None, threads)

        def run():
            return cuda.cuda_sample(_p(d["logits"]), _p(d["hist"]), _p(d["mask"]), _p(d["finished"]), _p(d["eos"]),
                                    *args, _p(work), _p(ids_g))

        assert run() == 0 and cuda.cuda_synchronize() == 0
        agree = float((ids_g.cpu() == ids_c).float().mean())
        t = _time_cuda(torch, run)
        rows.append(dict(op=f"fused_sample[{name}]", shape=f"{B}x{V} H={H}", agreement=agree, ms=t * 1e3,
                         ok=agree == 1.0 if name == "greedy" else agree >= 0.99))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--arch", default=os.environ.get("CUDA_ARCH", "sm_90"))
    ap.add_argument("--peak-gbs", type=float, default=0.0, help="the card's memory bandwidth, GB/s")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cpu_path, cuda_path = build(args.arch)
    if args.compile_only:
        print(f"built {cpu_path} and {cuda_path}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("torch sees no CUDA device; use --compile-only")
        return 2
    cpu, cuda = ctypes.CDLL(str(cpu_path)), ctypes.CDLL(str(cuda_path))
    rows = [check_logps(torch, cpu, cuda, 8, 256, 32000, args.threads, args.peak_gbs),
            check_logps(torch, cpu, cuda, 4, 128, 128256, args.threads, args.peak_gbs),
            check_logps(torch, cpu, cuda, 8, 256, 32000, args.threads, args.peak_gbs, offset=63),
            check_decode_attention(torch, cpu, cuda, 32, 32, 8, 128, 1024, args.threads, args.peak_gbs),
            check_decode_attention(torch, cpu, cuda, 8, 14, 2, 64, 4096, args.threads, args.peak_gbs)]
    rows += [check_rms_norm(torch, cpu, cuda, 16 * 128, 512, args.threads, args.peak_gbs),
             check_rms_norm(torch, cpu, cuda, 8 * 2048 + 3, 4096, args.threads, args.peak_gbs),
             check_rms_norm(torch, cpu, cuda, 37, 200, args.threads, args.peak_gbs)]
    rows += [check_masked_softmax(torch, cpu, cuda, 2, 8, 1024, 1024, True, "padding", args.threads, args.peak_gbs),
             check_masked_softmax(torch, cpu, cuda, 4, 6, 37, 101, True, "padding", args.threads, args.peak_gbs),
             check_masked_softmax(torch, cpu, cuda, 3, 5, 77, 77, False, "padding", args.threads, args.peak_gbs),
             check_masked_softmax(torch, cpu, cuda, 16, 8, 128, 128, True, "none", args.threads, args.peak_gbs)]
    rows += check_sampling(torch, cpu, cuda, 64, 32000, 512, args.threads)
    print(f"device: {torch.cuda.get_device_name()}")
    for r in rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

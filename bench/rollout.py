"""Benchmark rollout generation: new tokens/s of our decode loop with the fused ops (use_fusemt on: the lean
fused decode step with the decode attention op over a preallocated KV cache, and the fused sampler), with
the fallbacks (off: the model's own forward with past_key_values, the pure-Paddle sampler), PaddleNLP
``generate`` and (``--compare``, with a torch Python) Hugging Face ``generate`` on the same weights and prompts.

The model is a random-initialised Llama (4 layers, vocab 32000 by default) built locally; prompts are
left-padded random ids (32 tokens). Every configuration is run ``--repeats`` times, systems interleaved,
and the median is reported. Greedy decoding is also run once per configuration and the tokens of the
fused and fallback paths are compared (``greedy_identical``); PaddleNLP's greedy tokens are compared
too (``greedy_matches_paddlenlp``; PaddleNLP does not stop a row at EOS the same way, so rows are
compared up to our first EOS), and Hugging Face's with ``--compare``. Roofline share: model FLOPs per
generated token (2 x parameters of the layers + LM head, attention ignored) x tokens/s against
``--peak-gflops`` (150 GFLOP/s per thread by default). Peak memory: the largest growth of the process RSS during one rollout over its value
before it (sampled every 2 ms; the HF side measures its own process the same way).
Hugging Face runs in a subprocess (torch is not a project dependency): ``--torch-python`` names an
interpreter with torch + transformers (default: this one if it has them). Not part of the test run.

    python bench/rollout.py                                  # hidden 256, batch 8 and 32, 64 new tokens
    python bench/rollout.py --hidden 256 512 1024 --batch 8 32 --new-tokens 64 256 --threads 2 \
        --compare --torch-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import paddle

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignment import ops  # noqa: E402
import alignment.models  # noqa: E402,F401  (installs the fused RMSNorm and attention, as every stage does)
sys.path.insert(0, str(ROOT / "bench"))
from _compare import PeakRSS, run_peer, torch_python  # noqa: E402
from alignment.rollout.generation import GenerationConfig, generate  # noqa: E402
from alignment.utils.io import atomic_write_json  # noqa: E402

PAD, EOS = 0, 2


def build_model(hidden: int, layers: int, vocab: int):
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, intermediate_size=int(hidden * 8 / 3) // 8 * 8,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD,
                         use_flash_attention=False)
    paddle.seed(0)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def prompts(batch: int, length: int, vocab: int):
    rng = np.random.RandomState(0)
    ids = rng.randint(3, vocab, size=(batch, length)).astype("int64")
    mask = np.ones_like(ids)
    for b in range(batch):  # left padding of 0..7 tokens
        pad = b % 8
        ids[b, :pad], mask[b, :pad] = PAD, 0
    return paddle.to_tensor(ids), paddle.to_tensor(mask)


def ours(model, ids, mask, new_tokens, fused: bool, do_sample: bool):  # fused: decode step + sampler
    cfg = GenerationConfig(eos_token_ids=(EOS,), pad_token_id=PAD, max_new_tokens=new_tokens, top_p=0.9,
                           do_sample=do_sample, sampler="fused" if fused else "default")
    with ops.use_fusemt(fused):
        out = generate(model, ids, mask, cfg)
    return out.responses.numpy(), int(out.response_mask.sum())


def paddlenlp_generate(model, ids, mask, new_tokens, do_sample: bool):
    # use_fusemt off: PaddleNLP's own RMSNorm and attention, not the fused ones alignment.models installs
    with paddle.no_grad(), ops.use_fusemt(False):
        out, _ = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=0,
                                decode_strategy="sampling" if do_sample else "greedy_search", top_p=0.9, top_k=0,
                                eos_token_id=EOS, pad_token_id=PAD, use_cache=True)
    out = out.numpy()
    return out, int((out != PAD).sum())


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _first_eos_match(a: np.ndarray, b: np.ndarray) -> bool:
    for ra, rb in zip(a, b):
        stop = (np.flatnonzero(ra == EOS)[:1] + 1).tolist() or [len(ra)]
        n = min(stop[0], len(rb))
        if not np.array_equal(ra[:n], rb[:n]):
            return False
    return True


def run_config(hidden, batch, new_tokens, args, peer):
    model = build_model(hidden, args.layers, args.vocab)
    n_params = sum(int(np.prod(p.shape)) for name, p in model.named_parameters() if "embed_tokens" not in name)
    ids, mask = prompts(batch, args.prompt_len, args.vocab)
    systems = {
        "ours_fused": lambda s: ours(model, ids, mask, new_tokens, True, s),
        "ours_fallback": lambda s: ours(model, ids, mask, new_tokens, False, s),
        "paddlenlp": lambda s: paddlenlp_generate(model, ids, mask, new_tokens, s),
    }
    if args.skip_paddlenlp_above and hidden * batch * new_tokens > args.skip_paddlenlp_above:
        systems.pop("paddlenlp")
    greedy = {name: fn(False)[0] for name, fn in systems.items()}
    for fn in systems.values():  # warm-up
        fn(True)
    times = {name: [] for name in systems}
    tokens = {name: [] for name in systems}
    peaks = {name: 0.0 for name in systems}
    for _ in range(args.repeats):
        for name, fn in systems.items():
            with PeakRSS() as mem:
                seconds, (_, n_tok) = _timed(lambda: fn(True))
            times[name].append(seconds)
            tokens[name].append(n_tok)
            peaks[name] = max(peaks[name], mem.peak)
    if peer:
        hf = run_peer(peer, "rollout", model, dict(input_ids=ids.numpy().tolist(), attention_mask=mask.numpy().tolist(),
                                                   new_tokens=new_tokens, top_p=0.9, threads=args.threads,
                                                   repeats=args.repeats))
        times["hf"], tokens["hf"], peaks["hf"] = hf["times"], hf["tokens"], hf["peak_rss_growth_mib"]
        greedy["hf"] = np.array(hf["greedy"])
    rows = []
    for name in times:
        tok_s = statistics.median(t / s for t, s in zip(tokens[name], times[name]))
        rows.append(dict(system=name, hidden=hidden, batch=batch, new_tokens=new_tokens,
                         median_seconds=statistics.median(times[name]), new_tokens_per_s=tok_s,
                         roofline_pct=100 * 2 * n_params * tok_s / (args.peak_gflops * 1e9),
                         peak_rss_growth_mib=peaks[name]))
    extra = dict(greedy_identical=bool(np.array_equal(greedy["ours_fused"], greedy["ours_fallback"])))
    for peer_name in ("paddlenlp", "hf"):
        if peer_name in greedy:
            extra[f"greedy_matches_{peer_name}"] = _first_eos_match(greedy["ours_fused"], greedy[peer_name])
    for r in rows:
        r.update(extra)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64])
    parser.add_argument("--compare", action="store_true", help="also time Hugging Face generate (torch peer)")
    parser.add_argument("--torch-python", default=None, help="a Python with torch + transformers")
    parser.add_argument("--skip-paddlenlp-above", type=int, default=0,
                        help="skip PaddleNLP generate where hidden*batch*new_tokens exceeds this (0 = never)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="fp32 matmul peak of the cores used (default: 150 GFLOP/s per thread, this machine's "
                             "AVX-512 figure; 300 for its 2 cores)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout.json"))
    args = parser.parse_args(argv)
    if args.peak_gflops is None:
        args.peak_gflops = 150.0 * args.threads
    paddle.base.core.set_num_threads(args.threads)  # Paddle sets OMP_NUM_THREADS=1 on import when unset
    ops.set_num_threads(args.threads)
    if not ops.fused_available():
        print(f"note: fused operators unavailable ({ops._build.build_reason()}); ours_fused runs the fallback")
    peer = torch_python(args.torch_python) if args.compare else None
    if args.compare and peer is None:
        print("note: --compare without torch/transformers (give --torch-python): Hugging Face is not timed")
    rows = []
    header = (f"{'system':<14} {'hidden':>6} {'batch':>5} {'new':>4} {'new tok/s':>10} {'s/rollout':>9} "
              f"{'roofline%':>9} {'peak MiB':>8}  greedy")
    print(header)
    print("-" * len(header))
    for h in args.hidden:
        for b in args.batch:
            for t in args.new_tokens:
                for r in run_config(h, b, t, args, peer):
                    rows.append(r)
                    same = ", ".join(f"{k[len('greedy_'):]} {v}" for k, v in r.items() if k.startswith("greedy_"))
                    print(f"{r['system']:<14} {r['hidden']:>6} {r['batch']:>5} {t:>4} {r['new_tokens_per_s']:>10.1f} "
                          f"{r['median_seconds']:>9.2f} {r['roofline_pct']:>9.2f} {r['peak_rss_growth_mib']:>8.0f}  "
                          f"{same}", flush=True)
    result = dict(benchmark="rollout", threads=args.threads, layers=args.layers, vocab=args.vocab,
                  prompt_len=args.prompt_len, repeats=args.repeats, peak_gflops=args.peak_gflops,
                  fused_available=ops.fused_available(), machine=platform.machine(), paddle=paddle.__version__,
                  rows=rows)
    atomic_write_json(Path(args.out), result)
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()

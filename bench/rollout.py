"""Benchmark rollout generation: new tokens/s of our decode loop with the fused sampler (use_fusemt on),
with the pure-Paddle sampler (off), and PaddleNLP ``generate`` on the same weights and prompts.

The model is a random-initialised Llama (4 layers, vocab 32000 by default) built locally; prompts are
left-padded random ids (32 tokens). Every configuration is run ``--repeats`` times, systems interleaved,
and the median is reported. Greedy decoding is also run once per configuration and the tokens of the
fused and fallback paths are compared (``greedy_identical``); PaddleNLP's greedy tokens are compared
too (``greedy_matches_paddlenlp``; PaddleNLP does not stop a row at EOS the same way, so rows are
compared up to our first EOS). Roofline share: model FLOPs per generated token (2 x parameters of the
layers + LM head, attention ignored) x tokens/s against ``--peak-gflops``.
Hugging Face ``generate`` is not run here (torch is not a project dependency). Not part of the test run.

    python bench/rollout.py                                  # hidden 256, batch 8 and 32, 64 new tokens
    python bench/rollout.py --hidden 256 512 --batch 8 32 --new-tokens 64 --threads 2
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


def ours(model, ids, mask, new_tokens, fused: bool, do_sample: bool):
    cfg = GenerationConfig(eos_token_ids=(EOS,), pad_token_id=PAD, max_new_tokens=new_tokens, top_p=0.9,
                           do_sample=do_sample, sampler="fused" if fused else "default")
    with ops.use_fusemt(fused):
        out = generate(model, ids, mask, cfg)
    return out.responses.numpy(), int(out.response_mask.sum())


def paddlenlp_generate(model, ids, mask, new_tokens, do_sample: bool):
    with paddle.no_grad():
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


def run_config(hidden, batch, args):
    model = build_model(hidden, args.layers, args.vocab)
    n_params = sum(int(np.prod(p.shape)) for name, p in model.named_parameters() if "embed_tokens" not in name)
    ids, mask = prompts(batch, args.prompt_len, args.vocab)
    systems = {
        "ours_fused": lambda s: ours(model, ids, mask, args.new_tokens, True, s),
        "ours_fallback": lambda s: ours(model, ids, mask, args.new_tokens, False, s),
        "paddlenlp": lambda s: paddlenlp_generate(model, ids, mask, args.new_tokens, s),
    }
    greedy = {name: fn(False)[0] for name, fn in systems.items()}
    for fn in systems.values():  # warm-up
        fn(True)
    times = {name: [] for name in systems}
    tokens = {name: [] for name in systems}
    for _ in range(args.repeats):
        for name, fn in systems.items():
            seconds, (_, n_tok) = _timed(lambda: fn(True))
            times[name].append(seconds)
            tokens[name].append(n_tok)
    rows = []
    for name in systems:
        tok_s = statistics.median(t / s for t, s in zip(tokens[name], times[name]))
        rows.append(dict(system=name, hidden=hidden, batch=batch, new_tokens=args.new_tokens,
                         median_seconds=statistics.median(times[name]), new_tokens_per_s=tok_s,
                         roofline_pct=100 * 2 * n_params * tok_s / (args.peak_gflops * 1e9)))
    extra = dict(greedy_identical=bool(np.array_equal(greedy["ours_fused"], greedy["ours_fallback"])),
                 greedy_matches_paddlenlp=_first_eos_match(greedy["ours_fallback"], greedy["paddlenlp"]))
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
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--peak-gflops", type=float, default=300.0, help="fp32 matmul peak of the machine")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout.json"))
    args = parser.parse_args(argv)
    paddle.base.core.set_num_threads(args.threads)  # Paddle sets OMP_NUM_THREADS=1 on import when unset
    ops.set_num_threads(args.threads)
    if not ops.fused_available():
        print(f"note: fused operators unavailable ({ops._build.build_reason()}); ours_fused runs the fallback")
    rows = [r for h in args.hidden for b in args.batch for r in run_config(h, b, args)]
    header = f"{'system':<14} {'hidden':>6} {'batch':>5} {'new tok/s':>10} {'s/rollout':>9} {'roofline%':>9}  greedy"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['system']:<14} {r['hidden']:>6} {r['batch']:>5} {r['new_tokens_per_s']:>10.1f} "
              f"{r['median_seconds']:>9.2f} {r['roofline_pct']:>9.2f}  fused==fallback {r['greedy_identical']}, "
              f"==paddlenlp {r['greedy_matches_paddlenlp']}")
    result = dict(benchmark="rollout", threads=args.threads, layers=args.layers, vocab=args.vocab,
                  prompt_len=args.prompt_len, repeats=args.repeats, peak_gflops=args.peak_gflops,
                  fused_available=ops.fused_available(), machine=platform.machine(), paddle=paddle.__version__,
                  rows=rows)
    atomic_write_json(Path(args.out), result)
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()

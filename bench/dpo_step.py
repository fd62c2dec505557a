"""Benchmark one DPO training step: tokens/s and peak memory for a stated model size and batch.

A step is what ``DPOTrainer`` does: one policy forward+backward over 2B rows (chosen and rejected
concatenated), one no-grad reference forward over the same rows, ``preference_loss`` and an AdamW
update. The model is a random-initialised Llama built locally (no download); ``--preset`` picks its
size. Prints a table and writes ``bench/results/dpo_step_<preset>_<device>.json`` (atomically).
Not part of the test run.

    python bench/dpo_step.py                         # preset small, batch 4 pairs x 256 tokens
    python bench/dpo_step.py --preset 1b --batch-size 8 --seq-len 1024 --dtype bfloat16   # on a GPU
    python bench/dpo_step.py --fusemt off --threads 2   # log-probs on the pure-Paddle path (default: on)
    python bench/dpo_step.py --threads 2 --compare --torch-python /path/to/venv/bin/python   # + TRL, torch

``--fusemt on`` scores the policy and the reference with the chunked LM head (``linear_completion_logps``:
the (N, L, V) logits are never held); ``off`` builds the logits and runs the pure-Paddle log-probs.

``--compare`` adds two torch rows, each in its own subprocess of ``--torch-python``, on the same weights
(the reference model's, for policy and reference alike) and the same token ids:

* ``TRL DPOTrainer`` (``bench/_torch_peer.py dpo_trl``): ``trl.DPOTrainer.train()`` itself -- sigmoid loss,
  beta 0.1, ``--batch-size`` pairs per device, no gradient accumulation, AdamW at the same lr, constant
  schedule, no clipping, no truncation, ``precompute_ref_log_probs=False`` (the reference forward is inside
  the step), fp32 on the CPU, no eval / saving / logging. Each pair reaches it as ``prompt_ids`` (the
  seq_len/4 prompt tokens whose labels are -100 here) + ``chosen_ids`` / ``rejected_ids`` (the answer
  tokens), so its completion mask covers the same tokens as our labels; the optimizer steps after
  ``--warmup`` are timed by a ``TrainerCallback``, with the step's real tokens and RSS growth;
* ``hand-written step`` (``bench/_torch_peer.py dpo``): the bare step without a trainer -- HF
  ``LlamaForCausalLM`` over chosen + rejected in one forward, full logits, TRL's ``selective_log_softmax``,
  sigmoid loss, AdamW.

The synthetic batch draws separate prompt ids for the chosen and the rejected row of a pair; TRL's format
has one prompt per pair, so its rejected rows carry the chosen row's prompt (same lengths and loss tokens;
``trl_dpo_trainer_shared_prompt`` in the JSON says whether the ids differed). Peak memory: the largest RSS
growth during a timed step (all rows alike), next to the process's max RSS.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import paddle

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignment import ops  # noqa: E402
import alignment.models  # noqa: E402,F401  (installs the fused RMSNorm and attention, as every stage does)
from alignment.algorithms.preference import PairLogps, preference_loss  # noqa: E402
from alignment.training.logps import policy_pair_logps, reference_pair_logps  # noqa: E402
from alignment.training.logps import concat_pair  # noqa: E402
from alignment.utils.io import atomic_write_json  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from _compare import PeakRSS, run_peer, torch_python  # noqa: E402

# name: (hidden, layers, heads, intermediate, vocab)
PRESETS = {
    "tiny": (64, 2, 4, 128, 512),
    "small": (256, 4, 4, 688, 32000),
    "base": (512, 4, 8, 1376, 32000),  # the hidden-512 model of issue 14's measurements
    "125m": (768, 12, 12, 2048, 32000),
    "1b": (2048, 16, 16, 5504, 32000),
    "7b": (4096, 32, 32, 11008, 32000),
}


def build_model(preset: str, dtype: str, seq_len: int):
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter, vocab = PRESETS[preset]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=max(seq_len, 2048),
        bos_token_id=1, eos_token_id=2, pad_token_id=3, use_flash_attention=False, dtype=dtype,
    )
    paddle.set_default_dtype(dtype)
    model = LlamaForCausalLM(config)
    paddle.set_default_dtype("float32")
    return model, vocab


def synthetic_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0):
    """Right-padded pairs: a prompt of seq_len/4 tokens, answers filling the rest (rejected a bit shorter)."""
    rng = np.random.RandomState(seed)
    prompt = seq_len // 4
    out = {}
    for side, length in (("chosen", seq_len), ("rejected", seq_len - seq_len // 8)):
        ids = np.full((batch_size, seq_len), 3, dtype="int64")
        ids[:, :length] = rng.randint(4, vocab, size=(batch_size, length))
        mask = np.zeros_like(ids)
        mask[:, :length] = 1
        labels = np.where(mask == 1, ids, -100)
        labels[:, :prompt] = -100
        out[f"{side}_input_ids"] = paddle.to_tensor(ids)
        out[f"{side}_attention_mask"] = paddle.to_tensor(mask)
        out[f"{side}_labels"] = paddle.to_tensor(labels)
    return out


def trl_pairs(batch):
    """The batch as TRL's preference columns: per pair ``prompt_ids`` (the chosen row's tokens before its first
    scored label), ``chosen_ids`` / ``rejected_ids`` (each row's scored tokens up to its last real one).
    Returns (pairs, whether each rejected row had the chosen row's prompt ids)."""
    pairs, shared = [], True
    for i in range(int(batch["chosen_input_ids"].shape[0])):
        rows = {}
        for side in ("chosen", "rejected"):
            ids = batch[f"{side}_input_ids"][i].numpy()
            real = int(batch[f"{side}_attention_mask"][i].numpy().sum())  # right padding
            scored = np.flatnonzero(batch[f"{side}_labels"][i].numpy() != -100)
            start = int(scored[0]) if len(scored) else real
            rows[side] = (ids[:start], ids[start:real])
        if len(rows["chosen"][0]) != len(rows["rejected"][0]):
            raise ValueError("trl_pairs: chosen and rejected prompts of a pair differ in length")
        shared = shared and bool((rows["chosen"][0] == rows["rejected"][0]).all())
        pairs.append({"prompt_ids": rows["chosen"][0].tolist(), "chosen_ids": rows["chosen"][1].tolist(),
                      "rejected_ids": rows["rejected"][1].tolist()})
    return pairs, shared


def peak_memory_mib(device: str) -> float:
    if device.startswith("gpu"):
        return paddle.device.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--batch-size", type=int, default=4, help="preference pairs per step (2x rows)")
    parser.add_argument("--seq-len", type=int, default=256, help="padded length of each chosen/rejected row")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--loss-type", default="sigmoid")
    parser.add_argument("--fusemt", choices=["on", "off"], default="on",
                        help="fused log-prob operator (alignment.ops) on or off")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (Paddle's default after import: 1)")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="fp32 matmul peak of the cores used, for the MFU column (default: 150 GFLOP/s per "
                             "thread, this machine's AVX-512 figure)")
    parser.add_argument("--compare", action="store_true",
                        help="also time trl.DPOTrainer and a hand-written torch step (same weights and batch)")
    parser.add_argument("--torch-python", default=None, help="a Python with torch + transformers (+ trl)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.peak_gflops is None:
        args.peak_gflops = 150.0 * (args.threads or 1)
    if args.threads:
        paddle.base.core.set_num_threads(args.threads)
        ops.set_num_threads(args.threads)
    ops.set_use_fusemt(args.fusemt == "on")
    fused = ops.fused_available()

    device = paddle.device.get_device()
    paddle.seed(0)
    policy, vocab = build_model(args.preset, args.dtype, args.seq_len)
    reference, _ = build_model(args.preset, args.dtype, args.seq_len)
    reference.eval()
    for p in reference.parameters():
        p.stop_gradient = True
    n_params = sum(int(np.prod(p.shape)) for p in policy.parameters())
    # MFU counts the parameters that multiply: every one but the input embedding (a lookup, no FLOPs)
    n_matmul = n_params - int(np.prod(policy.llama.embed_tokens.weight.shape))
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-6, parameters=policy.parameters())
    batch = synthetic_batch(args.batch_size, args.seq_len, vocab)
    tokens_per_step = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())

    def step() -> float:
        ref = reference_pair_logps(reference, batch, pad_token_id=3)
        pol = policy_pair_logps(policy, batch, pad_token_id=3)
        logps = PairLogps(pol.chosen, pol.rejected, ref.chosen, ref.rejected, pol.chosen_lengths,
                          pol.rejected_lengths, pol.chosen_nll)
        loss, _ = preference_loss(args.loss_type, logps, beta=0.1)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return float(loss)

    for _ in range(args.warmup):
        step()
    if device.startswith("gpu"):
        paddle.device.synchronize()
    elapsed, step_peak = 0.0, 0.0
    for _ in range(args.steps):
        with PeakRSS() as mem:
            start = time.perf_counter()
            step()
            if device.startswith("gpu"):
                paddle.device.synchronize()
            elapsed += time.perf_counter() - start
        step_peak = max(step_peak, mem.peak)
    peer = trl_peer = None
    trl_error = shared_prompt = None
    if args.compare:
        python = torch_python(args.torch_python)
        if python is None:
            print("note: --compare without torch/transformers (give --torch-python): TRL is not timed")
        else:
            common = dict(threads=args.threads or 1, warmup=args.warmup, steps=args.steps, lr=1e-6, beta=0.1)
            pairs, shared_prompt = trl_pairs(batch)
            try:
                trl_peer = run_peer(python, "dpo_trl", reference, dict(common, pairs=pairs))
            except RuntimeError as exc:  # e.g. no trl in that Python: the hand-written row still runs
                trl_error = str(exc)
                print(f"note: TRL DPOTrainer not timed: {trl_error}")
            ids, mask, labels = concat_pair(batch, pad_token_id=3)
            peer = run_peer(python, "dpo", reference, dict(
                common, input_ids=ids.numpy().tolist(), attention_mask=mask.numpy().tolist(),
                labels=labels.numpy().tolist()))

    result = {
        "benchmark": "dpo_step",
        "preset": args.preset,
        "parameters": n_params,
        "matmul_parameters": n_matmul,
        "peak_gflops": args.peak_gflops,
        "dtype": args.dtype,
        "loss_type": args.loss_type,
        "fusemt": args.fusemt,
        "fused_logps_used": fused,
        "threads": args.threads,
        "batch_pairs": args.batch_size,
        "rows_per_forward": 2 * args.batch_size,
        "seq_len": args.seq_len,
        "tokens_per_step": tokens_per_step,
        "steps": args.steps,
        "seconds_per_step": elapsed / args.steps,
        "tokens_per_s": tokens_per_step * args.steps / elapsed,
        # policy forward + backward (6 N per token) and reference forward (2 N), N without the input embedding;
        # attention FLOPs ignored
        "mfu_pct": 100 * 8 * n_matmul * tokens_per_step * args.steps / elapsed / (args.peak_gflops * 1e9),
        "peak_memory_mib": peak_memory_mib(device),
        "peak_memory_kind": "GPU max allocated" if device.startswith("gpu") else "process max RSS",
        "step_peak_rss_growth_mib": step_peak,
        "device": device,
        "cpu_threads": paddle.get_flags(["FLAGS_paddle_num_threads"]).get("FLAGS_paddle_num_threads")
        if hasattr(paddle, "get_flags") else None,
        "machine": platform.machine(),
        "paddle": paddle.__version__,
    }
    def mfu(tokens: float, seconds: float) -> float:
        return 100 * 8 * n_matmul * tokens / seconds / (args.peak_gflops * 1e9)

    ours_s = elapsed / args.steps
    rows = [(f"ours (fusemt {args.fusemt})", ours_s, tokens_per_step, step_peak)]
    if trl_peer is not None:
        s_trl, tok_trl = trl_peer["seconds_per_step"], trl_peer["tokens_per_step"]
        result.update(trl_dpo_trainer_seconds_per_step=s_trl, trl_dpo_trainer_tokens_per_step=tok_trl,
                      trl_dpo_trainer_tokens_per_s=tok_trl / s_trl, trl_dpo_trainer_mfu_pct=mfu(tok_trl, s_trl),
                      trl_dpo_trainer_step_peak_rss_growth_mib=trl_peer["peak_rss_growth_mib"],
                      trl_dpo_trainer_max_rss_mib=trl_peer["max_rss_mib"],
                      trl_dpo_trainer_shared_prompt=shared_prompt, trl_dpo_trainer_config=trl_peer["config"],
                      trl_version=trl_peer["trl"], speedup_vs_trl_dpo_trainer=s_trl / ours_s)
        rows.append(("TRL DPOTrainer (torch)", s_trl, tok_trl, trl_peer["peak_rss_growth_mib"]))
    elif trl_error is not None:
        result["trl_dpo_trainer_error"] = trl_error
    if peer is not None:
        s_hw = peer["seconds_per_step"]
        result.update(torch_hand_written_seconds_per_step=s_hw,
                      torch_hand_written_tokens_per_step=tokens_per_step,
                      torch_hand_written_tokens_per_s=tokens_per_step / s_hw,
                      torch_hand_written_mfu_pct=mfu(tokens_per_step, s_hw),
                      torch_hand_written_step_peak_rss_growth_mib=peer["peak_rss_growth_mib"],
                      torch_hand_written_max_rss_mib=peer["max_rss_mib"],
                      torch_hand_written_logps_function=peer["logps_function"], torch_version=peer["torch"],
                      speedup_vs_torch_hand_written=s_hw / ours_s)
        rows.append(("hand-written step (torch)", s_hw, tokens_per_step, peer["peak_rss_growth_mib"]))
    width = max(len(k) for k in result)
    print("-" * (width + 24))
    for key, value in result.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"{key:<{width}}  {shown}")
    print("-" * (width + 24))
    if len(rows) > 1:
        print(f"\n| {'system':<26} | {'s/step':>8} | {'tokens/step':>11} | {'tokens/s':>9} | {'MFU %':>6} "
              f"| {'step peak MiB':>13} | {'ours faster':>11} |")
        print(f"|{'-' * 28}|{'-' * 10}|{'-' * 13}|{'-' * 11}|{'-' * 8}|{'-' * 15}|{'-' * 13}|")
        for name, sec, tok, peak in rows:
            ratio = f"{sec / ours_s:.2f}x" if name != rows[0][0] else ""
            print(f"| {name:<26} | {sec:8.3f} | {tok:11,.0f} | {tok / sec:9.1f} | {mfu(tok, sec):6.2f} "
                  f"| {peak:13,.1f} | {ratio:>11} |")
    suffix = "" if args.fusemt == "on" else "_fusemt_off"
    out = Path(args.out) / f"dpo_step_{args.preset}_{device.split(':')[0]}{suffix}.json"
    atomic_write_json(out, result)
    print(f"written {out}")
    return result


if __name__ == "__main__":
    main()

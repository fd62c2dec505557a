"""Benchmark one PPO step: time per phase (generation, experience, advantages, update) and samples/s.

A step is exactly what ``PPOTrainer.step`` does for one rollout batch: KV-cache generation of
``--prompts x --n`` responses of ``--new-tokens`` tokens (EOS suppressed so every step does the same
work), old/ref log-probs + reward score + critic values (batched forwards), GAE advantages, and
``--update-iters`` passes of actor + critic AdamW updates in micro-batches of ``--train-batch``.
Actor/reference are random-initialised Llama models of the ``--preset`` size built locally (no
download); the reward model and the critic are ``ScoreModel``s on the same backbone size.
Prints a table and writes ``bench/results/ppo_step_<preset>_<device>.json`` (atomically).
Not part of the test run.

    python bench/ppo_step.py                                  # preset tiny, 8 prompts x 2 samples
    python bench/ppo_step.py --preset small --steps 3
    python bench/ppo_step.py --preset 1b --prompts 16 --n 4 --new-tokens 256   # on a GPU
    python bench/ppo_step.py --preset small --threads 2 --fusemt off   # the pure-Paddle paths (default: on)

``--fusemt on`` (PPO's default) runs the lean fused decode step, the fused sampler and the fused log-probs;
``off`` the model's own forward, the pure-Paddle sampler and log-probs.

``--compare --torch-python PY`` then times the same iteration in torch (``bench/_torch_peer.py ppo``, a
subprocess of PY) on the four models' weights as they stand after our timed steps (actor, reference,
critic and reward model mapped onto HF ``LlamaForCausalLM`` / ``LlamaForSequenceClassification``), on the
same prompt batches (``--prompts`` each, left-padded by our collator) with the same sizes: ``--n`` samples
per prompt, exactly ``--new-tokens`` new tokens, top-p 0.9, experience in micro-batches of
``--train-batch`` rows, one warm-up iteration then ``--steps`` timed, ``--update-iters`` PPO epochs of
actor then critic AdamW steps (same lr, clipping, KL coefficient, GAE gamma / lambda, clip ranges). TRL 1.16
has no PPO trainer (``trl.PPOTrainer`` and ``trl.experimental.ppo`` are gone), so the torch side is a
hand-written PPO iteration (HF ``generate``, TRL's ``add_fused_lm_head`` for the log-probs) and says so in
its row and its ``system`` field. The reward score is timed in the generation phase on both sides.

    python bench/ppo_step.py --preset tiny --steps 1 --compare --torch-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paddle

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignment.utils.io import atomic_write_json  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from _compare import run_peer, torch_python  # noqa: E402

# name: (hidden, layers, heads, intermediate, vocab)
PRESETS = {
    "tiny": (64, 2, 4, 128, 512),
    "small": (256, 4, 4, 688, 32000),
    "125m": (768, 12, 12, 2048, 32000),
    "1b": (2048, 16, 16, 5504, 32000),
    "7b": (4096, 32, 32, 11008, 32000),
}
PHASES = ("generation", "experience", "advantages", "update")


class _Tok:
    eos_token_id, pad_token_id, bos_token_id = 2, 3, 1

    def save_pretrained(self, path):  # checkpoints are not written by the benchmark
        pass


class SyntheticPrompts:
    """``count`` random prompts of ``length`` tokens (ids >= 10), left-padded by the real collator."""

    def __init__(self, count: int, length: int, vocab: int, seed: int = 0):
        rng = np.random.RandomState(seed)
        lengths = rng.randint(max(1, length // 2), length + 1, size=count)
        self.items = [{"input_ids": np.concatenate([[1], rng.randint(10, vocab, size=n - 1)]).astype("int64"),
                       "prompt": None, "answer": None} for n in lengths]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def get_collator(self):
        from alignment.data.collators import PromptOnlyCollator

        return PromptOnlyCollator(_Tok.pad_token_id)


def build(preset: str, workdir: Path):
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter, vocab = PRESETS[preset]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3, use_flash_attention=False)
    config.architectures = ["LlamaForCausalLM"]
    paddle.seed(0)
    LlamaForCausalLM(config).save_pretrained(str(workdir), safe_serialization=True)  # loading refuses pickles
    n_params = sum(int(np.prod(p.shape)) for p in LlamaForCausalLM(config).parameters())
    return vocab, n_params


def compare(python: str, trainer, prompts: SyntheticPrompts, args, a) -> dict:
    """Time the torch PPO iteration (``bench/_torch_peer.py ppo``) on the trainer's four models and the same
    prompt batches (``--prompts`` each, collated by our left-padding collator), with our hyperparameters."""
    unwrap = trainer.strategy.unwrap
    m = trainer.m
    models = {"actor": unwrap(m.actor), "reference": unwrap(m.reference), "critic": unwrap(m.critic),
              "reward": unwrap(m.reward_model)}
    collate = prompts.get_collator()
    batches = []
    for k in range(a.steps + 1):
        b = collate([prompts[i] for i in range(k * a.prompts, (k + 1) * a.prompts)])
        batches.append({"input_ids": b["input_ids"].numpy().tolist(),
                        "attention_mask": b["attention_mask"].numpy().tolist()})
    spec = dict(
        prompt_batches=batches, n=a.n, new_tokens=a.new_tokens, min_new_tokens=args.min_dec_len,
        top_p=args.top_p, temperature=args.temperature, experience_batch_size=args.experience_batch_size,
        train_batch=args.per_device_train_batch_size, update_iters=args.update_iters, kl_coeff=args.kl_coeff,
        clip_range_score=args.clip_range_score, clip_range_ratio=args.clip_range_ratio,
        clip_range_value=args.clip_range_value, gamma=args.gamma, lam=args.lam, lr=args.learning_rate,
        critic_lr=args.critic_value("learning_rate"), weight_decay=args.weight_decay,
        critic_weight_decay=args.critic_value("weight_decay"), adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2, adam_epsilon=args.adam_epsilon, max_grad_norm=args.max_grad_norm,
        threads=a.threads or 1, warmup=1, steps=a.steps, seed=0,
    )
    return run_peer(python, "ppo", models["actor"], spec, models=models)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--n", type=int, default=2, help="num_return_sequences")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--train-batch", type=int, default=8, help="per_device_train_batch_size")
    ap.add_argument("--update-iters", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    ap.add_argument("--fusemt", choices=["on", "off"], default="on", help="PPO's use_fusemt")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (Paddle's default after import: 1)")
    ap.add_argument("--compare", action="store_true",
                    help="also time a torch PPO iteration, same weights and prompts (TRL has no PPOTrainer)")
    ap.add_argument("--torch-python", default=None, help="a Python with torch + transformers (+ trl)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/ppo_step_<preset>_<device>.json)")
    a = ap.parse_args(argv)
    if a.threads:
        from alignment import ops

        paddle.base.core.set_num_threads(a.threads)
        ops.set_num_threads(a.threads)

    from paddlenlp.utils.log import logger

    logger.set_level("WARNING")

    from alignment.parallel import ParallelStrategy
    from alignment.ppo.config import PPOArguments
    from alignment.models.score_model import ScoreModel
    from alignment.ppo.models import load_causal_lm, load_score_model
    from alignment.ppo.trainer import PPOModels, PPOTrainer

    device = paddle.device.get_device()
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stderr(io.StringIO()):
            vocab, n_params = build(a.preset, Path(tmp))
            strategy = ParallelStrategy().init()
            models = PPOModels(
                actor=strategy.create_model(lambda: load_causal_lm(tmp), role="actor", trainable=True),
                reference=strategy.create_model(lambda: load_causal_lm(tmp), role="reference", trainable=False),
                actor_tokenizer=_Tok(),
                critic=strategy.create_model(lambda: load_score_model(tmp, score_type="critic", allow_new_head=True), role="critic",
                                       trainable=True),
                reward_model=strategy.create_model(  # a random reward head on the same backbone size
                    lambda: ScoreModel.from_pretrained(tmp, init_score_head=True, score_type="reward"), role="reward",
                    trainable=False),
            )
        args = PPOArguments(
            output_dir=str(Path(tmp) / "out"), per_device_prompt_batch_size=a.prompts, num_return_sequences=a.n,
            per_device_train_batch_size=a.train_batch, update_iters=a.update_iters, max_dec_len=a.new_tokens,
            min_dec_len=a.new_tokens, max_steps=a.steps + 1, report_to=["none"], disable_tqdm=True, save_strategy="no",
            learning_rate=1e-5, top_p=0.9, use_fusemt=a.fusemt == "on",
        )
        prompts = SyntheticPrompts(a.prompts * (a.steps + 1), a.prompt_len, vocab)
        trainer = PPOTrainer(args, models=models, strategy=strategy, train_dataset=prompts,
                             max_length=a.prompt_len + a.new_tokens)
        paddle.seed(0)
        records = []
        for i in range(a.steps + 1):
            m = trainer.step(next(trainer.prompts))
            if i:  # step 0 is the warm-up
                records.append(m)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the peer's weights
        peer = None
        if a.compare:
            python = torch_python(a.torch_python)
            if python is None:
                print("note: --compare without torch/transformers (give --torch-python): no torch row")
            else:
                peer = compare(python, trainer, prompts, args, a)
    rows = a.prompts * a.n
    mean = {p: float(np.mean([r[f"time_{p}"] for r in records])) for p in PHASES}
    step_s = float(np.mean([r["time_step"] for r in records]))
    result = {
        "benchmark": "ppo_step",
        "preset": a.preset,
        "params_per_model": n_params,
        "device": device,
        "platform": platform.platform(),
        "paddle": paddle.__version__,
        "prompts": a.prompts, "num_return_sequences": a.n, "rows": rows, "prompt_len_max": a.prompt_len,
        "new_tokens": a.new_tokens, "train_batch": a.train_batch, "update_iters": a.update_iters,
        "timed_steps": a.steps,
        "seconds_per_phase": mean,
        "seconds_per_step": step_s,
        "samples_per_second": rows / step_s,
        "generated_tokens_per_second": rows * a.new_tokens / mean["generation"],
        "peak_rss_mb": peak_rss_mb,
        "fusemt": a.fusemt,
        "threads": a.threads,
    }
    print(f"\nPPO step, preset {a.preset} ({n_params / 1e6:.2f}M params per model x 4 models), device {device}")
    print(f"{rows} rows = {a.prompts} prompts x {a.n}, prompts <= {a.prompt_len} tok, {a.new_tokens} new tokens, "
          f"micro-batch {a.train_batch}, update_iters {a.update_iters}, mean of {a.steps} steps\n")
    print(f"| {'phase':<11} | {'seconds':>8} | {'share':>6} |")
    print(f"|{'-' * 13}|{'-' * 10}|{'-' * 8}|")
    for p in PHASES:
        print(f"| {p:<11} | {mean[p]:8.3f} | {100 * mean[p] / step_s:5.1f}% |")
    print(f"| {'step':<11} | {step_s:8.3f} | {100.0:5.1f}% |")
    print(f"\nsamples/s {result['samples_per_second']:.2f}   generated tokens/s {result['generated_tokens_per_second']:.1f}"
          f"   peak RSS {peak_rss_mb:.0f} MB")
    if peer is not None:
        result["torch"] = {k: peer[k] for k in (
            "system", "seconds_per_phase", "seconds_per_step", "rows", "response_tokens",
            "samples_per_second", "generated_tokens_per_second", "peak_rss_growth_mib", "max_rss_mib",
            "logps_function", "trl_ppo_status", "threads", "torch", "transformers", "trl")}
        result["speedup_vs_torch"] = peer["seconds_per_step"] / step_s
        table = [(f"ours (use_fusemt {a.fusemt})", mean, step_s, peak_rss_mb),
                 (peer["system"], peer["seconds_per_phase"], peer["seconds_per_step"], peer["max_rss_mib"])]
        w = max(len(name) for name, *_ in table)
        print(f"\n| {'system':<{w}} | " + " | ".join(f"{p + ' s':>13}" for p in PHASES)
              + f" | {'step s':>7} | {'samples/s':>9} | {'peak RSS MB':>11} |")
        print(f"|{'-' * (w + 2)}|" + "|".join("-" * 15 for _ in PHASES) + f"|{'-' * 9}|{'-' * 11}|{'-' * 13}|")
        for name, phases, sec, peak in table:
            print(f"| {name:<{w}} | " + " | ".join(f"{phases[p]:13.3f}" for p in PHASES)
                  + f" | {sec:7.3f} | {rows / sec:9.2f} | {peak:11.0f} |")
        print(f"\nours: {result['speedup_vs_torch']:.2f}x the torch iteration's samples/s; generation "
              "includes the reward score on both sides; peak RSS: each process's own")
    suffix = "" if a.fusemt == "on" else "_fusemt_off"
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"ppo_step_{a.preset}_{device.split(':')[0]}{suffix}.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

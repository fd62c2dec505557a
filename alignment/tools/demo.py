"""``make demo``: the whole RLHF pipeline on a tiny model, on a laptop CPU, with no download.

    python -m alignment.tools.demo [--out demo_output] [--ppo-steps 30]

1. builds a tiny Llama + SentencePiece tokenizer (``alignment.tools.make_tiny_model``);
2. SFT on GSM8K question -> worked answer (``alignment/sft/run_sft.py``);
3. trains a reward model on preference pairs built from GSM8K: the *chosen* answer ends with the
   GSM8K final-answer line ``#### <number>``, the *rejected* one is the same reasoning without it
   (a format preference that a tiny model can learn: "state your final answer");
4. PPO (``alignment/ppo/run_ppo.py``) with the SFT model as actor and reference, the reward model as
   reward and critic init;
5. prints a table of the reward of the policy's responses before and after PPO, the share of responses
   that state a final answer, and the path of the reward/KL plot.

Each stage is run through its real command-line entry point with ``config/llama/tiny/*.json``-style
arguments, exactly as a user would. GSM8K (MIT, OpenAI) ships in ``alignment/tools/demo_data``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[2]
GSM8K = Path(__file__).with_name("demo_data") / "gsm8k_test_first1000.jsonl"
FINAL = re.compile(r"####\s*-?[\d,.]+")


def _gsm8k() -> List[Dict[str, str]]:
    with open(GSM8K, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _clean(text: str) -> str:
    return re.sub(r"<<[^>]*>>", "", text).strip()


def build_demo_data(out: Path, seed: int = 0) -> Dict[str, Path]:
    """Write the SFT, preference and prompt files of the demo (TRL/gsm8k formats) under ``out``."""
    rows = _gsm8k()
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    sft, pairs, prompts = [], [], []
    for i, row in enumerate(rows):
        answer = _clean(row["answer"])
        *steps, final = answer.split("\n")
        if not final.startswith("####"):
            continue
        # Short answers: the last reasoning step and the final-answer line, so that a response of a few
        # dozen tokens can state its final answer.
        short = "\n".join(steps[-1:] + [final])
        if i < 700:
            sft.append({"prompt": row["question"], "completion": short})
            reasoning = "\n".join(steps[-rng.randint(1, 2):])
            pairs.append({"prompt": row["question"], "chosen": f"{reasoning}\n{final}", "rejected": reasoning})
        else:
            prompts.append({"question": row["question"], "answer": row["answer"]})
    paths = {"sft": out / "sft.jsonl", "pairs": out / "pairs.jsonl", "prompts": out / "prompts.jsonl"}
    for key, records in (("sft", sft), ("pairs", pairs), ("prompts", prompts)):
        tmp = paths[key].with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, paths[key])
    return paths


def _run(stage: str, args: List[str], log_dir: Path) -> float:
    log = log_dir / f"{stage}.log"
    start = time.time()
    print(f"[demo] {stage}: {' '.join(args)}  (log: {log})", flush=True)
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        raise SystemExit(f"[demo] {stage} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    return time.time() - start


def final_answer_share(model_dir: Path, prompts_file: Path, n_prompts: int = 48, max_new_tokens: int = 48,
                       seed: int = 0) -> float:
    """Share of sampled responses (one per held-out prompt) that contain a ``#### <number>`` line."""
    import paddle
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer
    from paddlenlp.utils.log import logger

    logger.set_level("WARNING")

    from alignment.data import PromptOnlyDataset
    from alignment.rollout.generation import GenerationConfig, generate

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    prompts = PromptOnlyDataset(f"gsm8k:1.0:{prompts_file}", tokenizer, max_length=160)
    collate = prompts.get_collator()
    batch = collate([prompts[i] for i in range(min(n_prompts, len(prompts)))])
    config = GenerationConfig(eos_token_ids=(tokenizer.eos_token_id,), pad_token_id=tokenizer.pad_token_id,
                              max_new_tokens=max_new_tokens)
    paddle.seed(seed)
    with paddle.no_grad():
        rollout = generate(model, batch["input_ids"], batch["attention_mask"], config)
    texts = tokenizer.batch_decode(rollout.responses.numpy().tolist(), skip_special_tokens=True)
    return sum(bool(FINAL.search(t)) for t in texts) / len(texts)


def _stage_flags(output_dir: Path, steps: int) -> List[str]:
    """Flags every trained stage of the demo shares: where to write, how long, no mid-run checkpoints."""
    return ["--output_dir", str(output_dir), "--max_steps", str(steps), "--eval_steps", str(steps),
            "--save_strategy", "no"]


def _metrics(path: Path) -> List[Dict[str, float]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="End-to-end tiny RLHF demo: SFT -> reward model -> PPO.")
    parser.add_argument("--out", default="demo_output", help="output folder (relative to the repo root)")
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--rm-steps", type=int, default=150)
    parser.add_argument("--ppo-steps", type=int, default=40)
    args = parser.parse_args(argv)

    out = (ROOT / args.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    began = time.time()
    timings: Dict[str, float] = {}

    model = out / "tiny-llama"
    timings["tiny model"] = _run(
        "tiny-model",
        ["-m", "alignment.tools.make_tiny_model", "--out", str(model), "--hidden-size", "128",
         "--intermediate-size", "256", "--num-layers", "2"],
        logs,
    )
    data = build_demo_data(out / "data")

    sft_dir = out / "sft"
    timings["SFT"] = _run(
        "sft",
        ["alignment/sft/run_sft.py", "config/llama/tiny/sft_argument.json",
         "--model_name_or_path", str(model), "--train_datasets", f"json:1.0:{data['sft']}",
         *_stage_flags(sft_dir, args.sft_steps), "--max_length", "160", "--logging_steps", "25"],
        logs,
    )

    rm_dir = out / "rm"
    timings["reward model"] = _run(
        "reward-model",
        ["alignment/rm/run_reward.py", "config/llama/tiny/rm_argument.json",
         "--model_name_or_path", str(sft_dir), "--train_datasets", f"json:1.0:{data['pairs']}",
         *_stage_flags(rm_dir, args.rm_steps), "--max_length", "160", "--logging_steps", "25"],
        logs,
    )

    ppo_dir = out / "ppo"
    timings["PPO"] = _run(
        "ppo",
        ["alignment/ppo/run_ppo.py", "config/llama/tiny/ppo_argument.json",
         "--actor_model_name_or_path", str(sft_dir), "--reward_model_name_or_path", str(rm_dir),
         "--train_datasets", f"gsm8k:1.0:{data['prompts']}",
         "--eval_datasets", f"gsm8k:0.1:{data['prompts']}",
         *_stage_flags(ppo_dir, args.ppo_steps), "--max_dec_len", "48",
         "--learning_rate", "5e-4", "--kl_coeff", "0.05"],
        logs,
    )

    shares = {"SFT": final_answer_share(sft_dir, data["prompts"]),
              "PPO": final_answer_share(ppo_dir / "policy", data["prompts"])}
    _report(sft_dir, rm_dir, ppo_dir, timings, time.time() - began, shares)


def _report(sft_dir: Path, rm_dir: Path, ppo_dir: Path, timings: Dict[str, float], total: float,
            shares: Dict[str, float]) -> None:
    sft = [r for r in _metrics(sft_dir / "metrics.jsonl") if "eval_loss" in r]
    rm = [r for r in _metrics(rm_dir / "metrics.jsonl") if "eval_accuracy" in r]
    ppo = _metrics(ppo_dir / "metrics.jsonl")
    train = [r for r in ppo if "reward" in r]
    evals = [r for r in ppo if "eval_reward" in r]
    k = max(1, len(train) // 5)
    first = sum(r["reward"] for r in train[:k]) / k
    last = sum(r["reward"] for r in train[-k:]) / k
    kl = train[-1].get("kl_divergence", float("nan"))
    rows = [
        ("SFT eval loss (end)", f"{sft[-1]['eval_loss']:.3f}" if sft else "n/a"),
        ("reward model eval accuracy", f"{rm[-1]['eval_accuracy']:.3f}" if rm else "n/a"),
        (f"PPO mean reward, first {k} steps", f"{first:+.3f}"),
        (f"PPO mean reward, last {k} steps", f"{last:+.3f}"),
        ("PPO reward change", f"{last - first:+.3f}"),
    ]
    if len(evals) >= 2:
        rows.append(("eval reward before -> after PPO", f"{evals[0]['eval_reward']:+.3f} -> {evals[-1]['eval_reward']:+.3f}"))
    rows.append(("KL(actor || reference), last step", f"{kl:.4f}"))
    rows.append(("responses stating '#### <answer>', SFT -> PPO", f"{shares['SFT']:.0%} -> {shares['PPO']:.0%}"))
    width = max(len(r[0]) for r in rows)
    print("\n" + "=" * (width + 16))
    for name, value in rows:
        print(f"{name:<{width}}  {value:>12}")
    print("=" * (width + 16))
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s")
    print(f"reward/KL plot: {ppo_dir / 'ppo_curves.png'}")
    print(f"policy checkpoint: {ppo_dir / 'policy'}")


if __name__ == "__main__":
    main()

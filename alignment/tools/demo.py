r"""``make demo``: the whole RLHF pipeline on a tiny model, on a laptop CPU, with no download.

    python -m alignment.tools.demo [--out demo_output] [--ppo-steps 40] [--ppo-nproc N] [--ppo-tensor-parallel T]

1. builds a tiny Llama + SentencePiece tokenizer (``alignment.tools.make_tiny_model``);
2. SFT on GSM8K question -> worked answer (``alignment/sft/run_sft.py``);
3. trains a reward model on preference pairs built from GSM8K: the *chosen* answer ends with the
   GSM8K final-answer line ``#### <number>``, the *rejected* one is the same reasoning without it
   (a format preference that a tiny model can learn: "state your final answer");
4. PPO (``alignment/ppo/run_ppo.py``) with the SFT model as actor and reference, the reward model as
   reward and critic init, under tensor parallelism by default - two processes over gloo::

       python -m paddle.distributed.launch --nproc_per_node 2 --log_dir <out>/ppo_launch_log \
           alignment/ppo/run_ppo.py config/llama/tiny/ppo_argument.json ... --tensor_parallel_degree 2

   ``--ppo-nproc N`` (default 2) and ``--ppo-tensor-parallel T`` (default 2, or 1 with ``--ppo-nproc 1``;
   T must divide N) pick the layout; the other N / T ranks are data parallel, and then each rank gets
   1 / (N / T) of the config's ``per_device_prompt_batch_size`` and ``per_device_train_batch_size`` so that
   a step still rolls out the same number of prompts and updates on the same mini-batches.
   ``--ppo-nproc 1`` runs the plain single-process ``python alignment/ppo/run_ppo.py ...``. The layout is
   printed before the stage (``PPO layout: 2 processes, tensor_parallel_degree 2
   (paddle.distributed.launch)``) and checked after it against the launcher's ``envlog.0`` (world size) and
   fleet's ``HybridParallelInfo`` line in ``workerlog.0`` (degrees); a launch that takes over 30 minutes is
   stopped as hung;
5. prints a table of the reward of the policy's responses before and after PPO, the share of responses
   that state a final answer, the PPO layout, and the path of the reward/KL plot.

Each stage is run through its real command-line entry point with ``config/llama/tiny/*.json``-style
arguments, exactly as a user would; its output goes to ``<out>/logs/<stage>.log`` (for the launched PPO stage
that is the launcher's output, which echoes rank 0; every rank's own log is
``<out>/ppo_launch_log/workerlog.N``). When a stage fails the demo stops with the last lines of that log and,
for the launched stage, of every ``workerlog.N`` (rank 0, with the traceback, last). GSM8K (MIT, OpenAI)
ships in ``alignment/tools/demo_data``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]
GSM8K = Path(__file__).with_name("demo_data") / "gsm8k_test_first1000.jsonl"
FINAL = re.compile(r"####\s*-?[\d,.]+")
PPO_SCRIPT = "alignment/ppo/run_ppo.py"
PPO_CONFIG = "config/llama/tiny/ppo_argument.json"
# A hung collective (one rank dead, the other waiting) must not hang the demo: the launched stage takes about
# 2 minutes on 2 cores, so 30 minutes means something is wrong.
LAUNCH_TIMEOUT_S = 1800


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


def _tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _worker_logs(log_dir: Path) -> List[Path]:
    """``workerlog.N`` under ``log_dir``, rank 0 last (its traceback then ends the failure message)."""
    logs = [p for p in log_dir.glob("workerlog.*") if p.suffix[1:].isdigit()]
    return sorted(logs, key=lambda p: (int(p.suffix[1:]) == 0, int(p.suffix[1:])))


def failure_message(stage: str, returncode: Optional[int], log: Path, worker_log_dir: Optional[Path] = None,
                    timeout: Optional[float] = None, lines: int = 25, worker_lines: int = 40) -> str:
    """What the demo says when a stage fails (``returncode`` None: timed out): the tail of its log and, for a
    launched stage, of every worker log."""
    what = f"timed out after {timeout:.0f} s" if returncode is None else f"exit {returncode}"
    parts = [f"[demo] {stage} failed ({what}); last lines of {log}:\n{_tail(log, lines)}"]
    if worker_log_dir is not None:
        workers = _worker_logs(worker_log_dir)
        if not workers:
            parts.append(f"[demo] no workerlog.N under {worker_log_dir}: "
                         "the launcher failed before starting the workers")
        for w in workers:
            parts.append(f"[demo] last lines of {w}:\n{_tail(w, worker_lines)}")
    return "\n".join(parts)


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End what is left of the stage's process group (the launcher and its workers): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):  # nothing left
            return
        deadline = time.time() + grace
        while time.time() < deadline:
            try:
                proc.wait(timeout=0.2)  # reap the leader, or it stays in the group as a zombie
            except subprocess.TimeoutExpired:
                continue
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.2)


PROGRESS_EVERY_S = 10.0
_PROGRESS_KEYS = ("loss", "train_loss", "eval_loss", "accuracy", "eval_accuracy", "reward", "kl_divergence")


def progress_line(stage: str, elapsed: float, metrics: Optional[Path]) -> str:
    """``[demo] sft: 40s, step 30, loss 2.913`` from the newest record of the stage's metrics.jsonl."""
    line = f"[demo] {stage}: {elapsed:.0f}s"
    record = {}
    try:
        with open(metrics, encoding="utf-8") as f:
            for text in f:
                if text.strip():
                    record = json.loads(text)
    except (OSError, TypeError, ValueError):
        record = {}
    step = record.get("step", record.get("global_step"))
    if step is not None:
        line += f", step {step}"
    shown = [f"{k} {record[k]:.4g}" for k in _PROGRESS_KEYS if isinstance(record.get(k), (int, float))]
    if not shown and step is None:
        return line + ", loading"
    return line + "".join(", " + text for text in shown[:2])


def _run(stage: str, args: Sequence[str], log_dir: Path, *, worker_log_dir: Optional[Path] = None,
         timeout: Optional[float] = None, metrics: Optional[Path] = None) -> float:
    """``python <args>`` from the repository root, output to ``log_dir/<stage>.log``; seconds it took.

    Every ``PROGRESS_EVERY_S`` seconds a line with the elapsed time and the newest step and metric of
    ``metrics`` (the stage's metrics.jsonl) goes to the console. The stage runs in its own process group, ended
    on a timeout or Ctrl-C (and after a launcher exits, so no worker outlives it). On failure raises SystemExit
    with ``failure_message``.
    """
    log = log_dir / f"{stage}.log"
    start = time.time()
    print(f"[demo] {stage}: python {' '.join(map(str, args))}  (log: {log})", flush=True)
    returncode: Optional[int] = None
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while returncode is None:
                left = None if timeout is None else timeout - (time.time() - start)
                if left is not None and left <= 0:
                    break
                try:
                    returncode = proc.wait(timeout=PROGRESS_EVERY_S if left is None else min(PROGRESS_EVERY_S, left))
                except subprocess.TimeoutExpired:
                    print(progress_line(stage, time.time() - start, metrics), flush=True)
        finally:  # also on KeyboardInterrupt
            _stop(proc)
    if returncode != 0:
        raise SystemExit(failure_message(stage, returncode, log, worker_log_dir, timeout))
    print(progress_line(stage, time.time() - start, metrics).replace(f"[demo] {stage}:", f"[demo] {stage} done:"),
          flush=True)
    return time.time() - start


@dataclass(frozen=True)
class PPOLayout:
    """How the PPO stage runs: ``nproc`` processes, ``tensor_parallel``-way tensor parallel, the rest data
    parallel.

    ``prompt_batch`` / ``train_batch`` are the per-device batch sizes passed to each rank: the config's values
    divided by the data-parallel degree, so the global batch (prompts per step, rows per update) is the
    config's whatever the layout.
    """

    nproc: int
    tensor_parallel: int
    prompt_batch: int
    train_batch: int
    global_prompt_batch: int

    @property
    def data_parallel(self) -> int:
        return self.nproc // self.tensor_parallel

    @property
    def launched(self) -> bool:
        return self.nproc > 1

    def describe(self) -> str:
        if not self.launched:
            return "1 process (python alignment/ppo/run_ppo.py, no launcher)"
        text = f"{self.nproc} processes, tensor_parallel_degree {self.tensor_parallel}"
        if self.data_parallel > 1:
            text += (f", data parallel {self.data_parallel} ({self.prompt_batch} prompts per device, "
                     f"{self.global_prompt_batch} per step)")
        return text + " (paddle.distributed.launch)"

    def short(self) -> str:
        if not self.launched:
            return "1 process"
        dp = f" x DP{self.data_parallel}" if self.data_parallel > 1 else ""
        return f"{self.nproc} procs, TP{self.tensor_parallel}{dp}"


def plan_ppo_layout(nproc: int, tensor_parallel: Optional[int] = None,
                    config: Path = ROOT / PPO_CONFIG) -> PPOLayout:
    """Check ``--ppo-nproc`` / ``--ppo-tensor-parallel``, split the config's batches; ValueError says why not."""
    if nproc < 1:
        raise ValueError(f"--ppo-nproc must be >= 1, got {nproc}")
    tp = min(2, nproc) if tensor_parallel is None else tensor_parallel
    if tp < 1 or nproc % tp:
        raise ValueError(f"--ppo-tensor-parallel ({tp}) must divide --ppo-nproc ({nproc})")
    config = Path(config)
    settings = json.loads(config.read_text(encoding="utf-8"))
    prompts, rows = settings["per_device_prompt_batch_size"], settings["per_device_train_batch_size"]
    dp = nproc // tp
    if prompts % dp or rows % dp:
        raise ValueError(
            f"--ppo-nproc {nproc} / --ppo-tensor-parallel {tp} leaves {dp} data-parallel ranks, "
            f"which must divide the global batch of {config.name} (per_device_prompt_batch_size {prompts}, "
            f"per_device_train_batch_size {rows})"
        )
    return PPOLayout(nproc, tp, prompts // dp, rows // dp, prompts)


def ppo_command(layout: PPOLayout, stage_args: Sequence[str], launch_log_dir: Path) -> List[str]:
    """Arguments after ``python`` for the PPO stage: plain ``run_ppo.py`` or ``paddle.distributed.launch``."""
    if not layout.launched:
        return [PPO_SCRIPT, PPO_CONFIG, *stage_args]
    batches = []
    if layout.data_parallel > 1:
        batches = ["--per_device_prompt_batch_size", str(layout.prompt_batch),
                   "--per_device_train_batch_size", str(layout.train_batch)]
    return ["-m", "paddle.distributed.launch", "--nproc_per_node", str(layout.nproc), "--log_dir",
            str(launch_log_dir), PPO_SCRIPT, PPO_CONFIG, *stage_args, *batches,
            "--tensor_parallel_degree", str(layout.tensor_parallel)]


_HYBRID = re.compile(r"HybridParallelInfo:.*?mp_degree: (\d+),.*?dp_degree: (\d+)")
_TRAINERS = re.compile(r"^PADDLE_TRAINERS_NUM=(\d+)$", re.M)


def check_launched_layout(layout: PPOLayout, launch_log_dir: Path) -> str:
    """Compare the layout with what the launcher and rank 0 report; a note for the printout.

    The world size is ``PADDLE_TRAINERS_NUM`` of ``envlog.0``; the degrees are fleet's ``HybridParallelInfo``
    line in ``workerlog.0`` (absent for plain data parallelism, where fleet's hybrid topology is not set up).
    Raises SystemExit when a rank's log is missing or a reported figure differs from the layout.
    """
    missing = [r for r in range(layout.nproc) if not (launch_log_dir / f"workerlog.{r}").exists()]
    if missing:
        raise SystemExit(f"[demo] PPO: no workerlog for rank(s) {missing} under {launch_log_dir}")
    seen = []
    env = launch_log_dir / "envlog.0"
    world = _TRAINERS.search(env.read_text(encoding="utf-8", errors="replace")) if env.exists() else None
    if world is not None:
        if int(world.group(1)) != layout.nproc:
            raise SystemExit(f"[demo] PPO ran {world.group(1)} processes (envlog.0), expected {layout.nproc}")
        seen.append(f"{layout.nproc} ranks")
    match = _HYBRID.search((launch_log_dir / "workerlog.0").read_text(encoding="utf-8", errors="replace"))
    if match is not None:
        mp, dp = int(match.group(1)), int(match.group(2))
        if (mp, dp) != (layout.tensor_parallel, layout.data_parallel):
            raise SystemExit(f"[demo] PPO ran with mp_degree {mp}, dp_degree {dp} (workerlog.0), expected "
                             f"{layout.tensor_parallel} and {layout.data_parallel}")
        seen.append(f"mp_degree {mp}, dp_degree {dp}")
    elif layout.tensor_parallel == 1:
        seen.append("plain data parallel")
    else:
        seen.append("no HybridParallelInfo line in workerlog.0 to check the degrees")
    return "(" + "; ".join(seen) + ")"


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
    """Flags every trained stage of the demo shares: where to write (afresh: a second ``make demo`` replaces
    the first one's outputs), how long, no mid-run checkpoints."""
    return ["--output_dir", str(output_dir), "--overwrite_output_dir", "true", "--max_steps", str(steps),
            "--eval_steps", str(steps), "--save_strategy", "no"]


def _metrics(path: Path) -> List[Dict[str, float]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="End-to-end tiny RLHF demo: SFT -> reward model -> PPO.")
    parser.add_argument("--out", default="demo_output", help="output folder (relative to the repo root)")
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--rm-steps", type=int, default=150)
    parser.add_argument("--ppo-steps", type=int, default=40)
    parser.add_argument("--ppo-nproc", type=int, default=2,
                        help="processes of the PPO stage (paddle.distributed.launch); 1 = one plain process")
    parser.add_argument("--ppo-tensor-parallel", type=int, default=None,
                        help="tensor_parallel_degree of the PPO stage, dividing --ppo-nproc (default 2, 1 "
                             "when --ppo-nproc is 1); the other ranks are data parallel, same global batch")
    args = parser.parse_args(argv)
    try:
        layout = plan_ppo_layout(args.ppo_nproc, args.ppo_tensor_parallel)
    except ValueError as e:
        parser.error(str(e))

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
        logs, metrics=sft_dir / "metrics.jsonl",
    )

    rm_dir = out / "rm"
    timings["reward model"] = _run(
        "reward-model",
        ["alignment/rm/run_reward.py", "config/llama/tiny/rm_argument.json",
         "--model_name_or_path", str(sft_dir), "--train_datasets", f"json:1.0:{data['pairs']}",
         *_stage_flags(rm_dir, args.rm_steps), "--max_length", "160", "--logging_steps", "25"],
        logs, metrics=rm_dir / "metrics.jsonl",
    )

    ppo_dir = out / "ppo"
    launch_log = out / "ppo_launch_log"
    shutil.rmtree(launch_log, ignore_errors=True)  # the launcher appends to old worker logs otherwise
    ppo_args = ["--actor_model_name_or_path", str(sft_dir), "--reward_model_name_or_path", str(rm_dir),
                "--train_datasets", f"gsm8k:1.0:{data['prompts']}",
                "--eval_datasets", f"gsm8k:0.1:{data['prompts']}",
                *_stage_flags(ppo_dir, args.ppo_steps), "--max_dec_len", "48",
                "--learning_rate", "5e-4", "--kl_coeff", "0.05"]
    print(f"PPO layout: {layout.describe()}", flush=True)
    timings["PPO"] = _run(
        "ppo", ppo_command(layout, ppo_args, launch_log), logs,
        worker_log_dir=launch_log if layout.launched else None,
        timeout=LAUNCH_TIMEOUT_S if layout.launched else None, metrics=ppo_dir / "metrics.jsonl",
    )
    if layout.launched:
        confirmed = check_launched_layout(layout, launch_log)
        print(f"[demo] PPO layout confirmed {confirmed}; worker logs: {launch_log}", flush=True)

    shares = {"SFT": final_answer_share(sft_dir, data["prompts"]),
              "PPO": final_answer_share(ppo_dir / "policy", data["prompts"])}
    _report(sft_dir, rm_dir, ppo_dir, timings, time.time() - began, shares, layout)


def _report(sft_dir: Path, rm_dir: Path, ppo_dir: Path, timings: Dict[str, float], total: float,
            shares: Dict[str, float], layout: PPOLayout) -> None:
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
        ("PPO layout", layout.short()),
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

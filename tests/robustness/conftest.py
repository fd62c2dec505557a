"""Shared pieces of the robustness tests: small data files, a reward model, and ``run_entry`` that calls an
entry point's ``main`` in-process through ``alignment.utils.cli.run_cli`` (one Paddle process for all cases)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORDS = "pie car tree river house dog song book road cloud apple lamp".split()
STAGES = ("sft", "rm", "dpo", "kto", "gkd", "ppo")


def entry(stage: str):
    """The ``main`` of a stage's run_*.py."""
    if stage == "sft":
        from alignment.sft.run_sft import main
    elif stage == "rm":
        from alignment.rm.run_reward import main
    elif stage == "dpo":
        from alignment.dpo.run_dpo import main
    elif stage == "kto":
        from alignment.kto.run_kto import main
    elif stage == "gkd":
        from alignment.gkd.run_gkd import main
    else:
        from alignment.ppo.run_ppo import main
    return main


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """pairs.jsonl (preference), sft.jsonl (instruction), unpaired.jsonl (KTO), prompts.jsonl (PPO / GKD)."""
    d = tmp_path_factory.mktemp("robust_data")
    rng = random.Random(0)
    with open(d / "pairs.jsonl", "w") as f:
        for i in range(48):
            w = " ".join(rng.choice(WORDS) for _ in range(4))
            f.write(json.dumps({"prompt": f"Tell me about {i}.", "chosen": f"{w}, thank you",
                                "rejected": f"{w}, go away"}) + "\n")
    with open(d / "sft.jsonl", "w") as f:
        for i in range(48):
            f.write(json.dumps({"instruction": f"say {WORDS[i % 12]} {i}", "input": "",
                                "output": f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]}"}) + "\n")
    with open(d / "unpaired.jsonl", "w") as f:
        for i in range(48):
            f.write(json.dumps({"prompt": f"Tell me about {i}.", "completion": f"{WORDS[i % 12]} ok",
                                "label": bool(i % 2)}) + "\n")
    with open(d / "prompts.jsonl", "w") as f:
        for i in range(48):
            f.write(json.dumps({"prompt": f"{' '.join(rng.choice(WORDS) for _ in range(3))} {i}"}) + "\n")
    return d


@pytest.fixture(scope="session")
def rm_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny LM with a fresh seeded score head, saved as a reward model."""
    import paddle
    from paddlenlp.transformers import AutoTokenizer

    from alignment.models.score_model import ScoreModel

    paddle.seed(3)
    out = tmp_path_factory.mktemp("robust_rm") / "rm"
    ScoreModel.from_pretrained(str(tiny_model_dir), score_type="reward", init_score_head=True).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


def base_argv(stage: str, model: Path, data: Path, out: Path, rm: Path = None, steps: int = 2):
    """A small, valid command line of ``stage`` (tiny model, a few steps, no eval)."""
    common = ["--output_dir", str(out), "--max_steps", str(steps), "--logging_steps", "1", "--seed", "1"]
    if stage == "ppo":
        return ["config/llama/tiny/ppo_argument.json", "--actor_model_name_or_path", str(model),
                "--reward_model_name_or_path", str(rm), "--reward_critic_model_name_or_path", str(model),
                "--train_datasets", f"json:1.0:{data / 'prompts.jsonl'}", "--eval_datasets", "none",
                "--do_eval", "false", "--max_dec_len", "6", "--max_length", "48", "--save_strategy", "no",
                "--evaluation_strategy", "no", *common]
    trainer_common = ["--model_name_or_path", str(model), "--do_eval", "false", "--eval_split_ratio", "0",
                      "--evaluation_strategy", "no", "--max_length", "64", "--max_prompt_length", "32",
                      "--per_device_train_batch_size", "4", "--lr_scheduler_type", "constant", *common]
    files = {"sft": "sft.jsonl", "rm": "pairs.jsonl", "dpo": "pairs.jsonl", "kto": "unpaired.jsonl",
             "gkd": "sft.jsonl"}
    extra = ["--teacher_model_name_or_path", str(model), "--max_completion_length", "6"] if stage == "gkd" else []
    return [f"config/llama/tiny/{'rm' if stage == 'rm' else stage}_argument.json", *trainer_common,
            "--train_datasets", f"json:1.0:{data / files[stage]}", *extra]


def run_entry(stage: str, argv, capsys, **kwargs):
    """(exit code, last stderr line, all output) of ``run_cli(main, argv)``."""
    from alignment.utils.cli import run_cli

    capsys.readouterr()
    code = 0
    try:
        run_cli(entry(stage), [str(a) for a in argv], **kwargs)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    return code, (lines[-1] if lines else ""), out.out + out.err

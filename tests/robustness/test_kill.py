"""SIGKILL during a checkpoint save (RM, SFT, DPO, PPO): the newest complete checkpoint loads, ``latest`` resumes
from it, and the next start removes what the killed save left. ALIGNMENT_SAVE_DELAY widens the window between
the files being written and the checkpoint being published; the kill lands at three points of the save in every
stage (12 kills)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from alignment.training import checkpoints
from alignment.utils.trainer import read_metrics

from .conftest import REPO, base_argv, entry

SCRIPTS = {"rm": "alignment/rm/run_reward.py", "sft": "alignment/sft/run_sft.py", "dpo": "alignment/dpo/run_dpo.py",
           "ppo": "alignment/ppo/run_ppo.py"}
# seconds after the staging directory of checkpoint-2 appears, three points per stage: at once (files still
# being written), inside the publish delay (all files, no marker yet), near its end (marker or rename pending)
KILL_AFTER = (0.0, 0.35, 0.75)


@pytest.mark.parametrize("kill_after", KILL_AFTER)
@pytest.mark.parametrize("stage", list(SCRIPTS))
def test_sigkill_during_save_then_resume(stage, kill_after, tiny_model_dir, rm_dir, data, tmp_path):
    out = tmp_path / "out"
    argv = base_argv(stage, tiny_model_dir, data, out, rm_dir, steps=4) + [
        "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO), ALIGNMENT_SAVE_DELAY="0.8")
    proc = subprocess.Popen([sys.executable, SCRIPTS[stage], *map(str, argv)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    staging = out / ".tmp-checkpoint-2"
    deadline = time.time() + 240
    try:
        while not staging.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no second checkpoint was started"
            time.sleep(0.02)
        time.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    newest = checkpoints.newest_complete(str(out))
    assert newest is not None and newest.endswith(("checkpoint-1", "checkpoint-2")), os.listdir(out)
    assert not (out / "checkpoint-2").exists() or checkpoints.is_complete(str(out / "checkpoint-2"))
    env_delay = os.environ.pop("ALIGNMENT_SAVE_DELAY", None)
    try:
        entry(stage)([*map(str, argv), "--resume_from_checkpoint", "latest"])
    finally:
        if env_delay is not None:
            os.environ["ALIGNMENT_SAVE_DELAY"] = env_delay
    leftovers = [n for n in os.listdir(out) if n.startswith(".")]
    assert leftovers == [], leftovers
    assert checkpoints.newest_complete(str(out)).endswith("checkpoint-4")
    steps = [r["step"] for r in read_metrics(str(out)) if "loss" in r or "actor_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 4, steps

"""Running scripts in subprocesses for the multi-process tests: one process, ``paddle.distributed.launch``
(one node, or several launchers at once), with a timeout that kills the whole process tree, and the tail of
every ``workerlog.*`` in the assertion message when a run fails or hangs.

    launch(script, args, log_dir, nproc=2)                          # paddle.distributed.launch, one node
    run_single(script, args, log_dir)                               # plain `python script args`
    launch_together([launch_command(..., launcher_args=[...]), ...], [log_a, log_b])   # concurrent launchers
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "launch", "launch_command", "launch_together", "run_single", "worker_logs"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def worker_logs(*log_dirs: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of every ``workerlog.*`` under ``log_dirs``."""
    parts = []
    for log_dir in log_dirs:
        for p in sorted(Path(log_dir).glob("workerlog.*")):
            parts.append(f"--- {p}\n{p.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


def launch_command(script: Path, args: Sequence, log_dir: Path, nproc: int = 2,
                   launcher_args: Sequence = ()) -> List[str]:
    """``python -m paddle.distributed.launch --nproc_per_node N --log_dir DIR [launcher_args] script ...``."""
    return [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
            "--log_dir", str(log_dir), *map(str, launcher_args), str(script), *map(str, args)]


def launch_together(commands: Sequence[Sequence[str]], log_dirs: Sequence[Path], timeout: int = 300):
    """Start every command at once (own process group each) and wait for all; returns their CompletedProcess.

    On a non-zero exit of any, or when ``timeout`` seconds pass (every process group is killed then), raises
    AssertionError with each command's output tail and the tail of every worker log.
    """
    procs = [subprocess.Popen(list(map(str, cmd)), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for cmd in commands]
    results, timed_out = [], False
    try:
        for proc, cmd in zip(procs, commands):
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                break
            results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    finally:
        for proc in procs:  # the launcher and any worker it left behind (one process group per command)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if timed_out:
            for proc, cmd in zip(procs[len(results):], commands[len(results):]):
                out, err = proc.communicate()
                results.append(subprocess.CompletedProcess(cmd, None, out, err))
    failed = [r for r in results if r.returncode != 0]
    if timed_out or failed:
        what = f"timed out after {timeout} s" if timed_out else "failed"
        tails = "\n".join(f"$ {' '.join(map(str, r.args[:8]))} ... -> rc {r.returncode}\n"
                          f"{(r.stdout or '')[-2000:]}\n{(r.stderr or '')[-2000:]}" for r in results)
        raise AssertionError(f"run {what}:\n{tails}\n{worker_logs(*log_dirs)}")
    return results


def launch(script: Path, args: Sequence, log_dir: Path, nproc: int = 2, timeout: int = 300,
           launcher_args: Sequence = ()):
    """Run ``script`` under ``paddle.distributed.launch`` on CPU; returns the CompletedProcess."""
    command = launch_command(script, args, log_dir, nproc, launcher_args)
    return launch_together([command], [log_dir], timeout)[0]


def run_single(script: Path, args: Sequence, log_dir: Path, timeout: int = 300):
    """``python script args`` in one process (same environment and failure report as ``launch``)."""
    return launch_together([[sys.executable, str(script), *map(str, args)]], [log_dir], timeout)[0]

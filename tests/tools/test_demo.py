"""The demo's PPO stage layout: planning, the launch command, the layout check and the failure report.

These are quick (no training); the full demo is `make demo`.
"""

from __future__ import annotations

import json
import sys

import pytest

from alignment.tools import demo
from alignment.tools.demo import PPO_CONFIG, PPO_SCRIPT, check_launched_layout, plan_ppo_layout, ppo_command


def _config(tmp_path, prompts=4, rows=4):
    path = tmp_path / "ppo.json"
    path.write_text(json.dumps({"per_device_prompt_batch_size": prompts,
                                "per_device_train_batch_size": rows}))
    return path


def test_default_layout_is_tensor_parallel_2_with_the_config_batches():
    layout = plan_ppo_layout(2)
    shipped = json.loads((demo.ROOT / PPO_CONFIG).read_text())
    assert (layout.nproc, layout.tensor_parallel, layout.data_parallel) == (2, 2, 1)
    assert (layout.prompt_batch, layout.train_batch) == (shipped["per_device_prompt_batch_size"],
                                                         shipped["per_device_train_batch_size"])
    assert layout.describe() == "2 processes, tensor_parallel_degree 2 (paddle.distributed.launch)"
    assert layout.short() == "2 procs, TP2"


def test_data_parallel_ranks_split_the_per_device_batches(tmp_path):
    layout = plan_ppo_layout(4, 1, _config(tmp_path, prompts=4, rows=8))
    assert (layout.data_parallel, layout.prompt_batch, layout.train_batch) == (4, 1, 2)
    assert layout.global_prompt_batch == 4
    assert "data parallel 4 (1 prompts per device, 4 per step)" in layout.describe()
    layout = plan_ppo_layout(4, 2, _config(tmp_path))
    assert (layout.data_parallel, layout.prompt_batch, layout.train_batch) == (2, 2, 2)
    assert layout.short() == "4 procs, TP2 x DP2"


def test_single_process_layout_and_default_tensor_parallel_follow_nproc():
    layout = plan_ppo_layout(1)
    assert (layout.launched, layout.tensor_parallel, layout.data_parallel) == (False, 1, 1)
    assert layout.short() == "1 process"


@pytest.mark.parametrize("nproc, tp, message", [
    (1, 2, "must divide --ppo-nproc"),
    (2, 3, "must divide --ppo-nproc"),
    (2, 0, "must divide --ppo-nproc"),
    (0, None, "--ppo-nproc must be >= 1"),
    (8, 1, "8 data-parallel ranks, which must divide"),
])
def test_bad_layouts_are_refused_before_anything_runs(tmp_path, nproc, tp, message):
    with pytest.raises(ValueError, match=message):
        plan_ppo_layout(nproc, tp, _config(tmp_path))


def test_bad_layout_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as err:
        demo.main(["--ppo-nproc", "1", "--ppo-tensor-parallel", "2"])
    assert err.value.code == 2 and "must divide" in capsys.readouterr().err


def test_launch_command_has_the_design_card_shape(tmp_path):
    args = ["--output_dir", "out/ppo", "--max_steps", "3"]
    cmd = ppo_command(plan_ppo_layout(2), args, tmp_path / "ppo_launch_log")
    assert cmd[:6] == ["-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                       str(tmp_path / "ppo_launch_log")]
    assert cmd[6:8] == [PPO_SCRIPT, PPO_CONFIG] and cmd[8:12] == args
    assert cmd[-2:] == ["--tensor_parallel_degree", "2"]
    assert "--devices" not in cmd and "--per_device_prompt_batch_size" not in cmd

    dp = ppo_command(plan_ppo_layout(2, 1), args, tmp_path)
    i = dp.index("--per_device_prompt_batch_size")
    assert dp[i + 1] == "2" and dp[dp.index("--per_device_train_batch_size") + 1] == "2"
    assert dp[-2:] == ["--tensor_parallel_degree", "1"]

    assert ppo_command(plan_ppo_layout(1), args, tmp_path) == [PPO_SCRIPT, PPO_CONFIG, *args]


def test_layout_check_reads_the_launcher_env_and_rank_0(tmp_path):
    layout = plan_ppo_layout(2)
    with pytest.raises(SystemExit, match=r"no workerlog for rank\(s\) \[1\]"):
        (tmp_path / "workerlog.0").write_text("")
        check_launched_layout(layout, tmp_path)
    (tmp_path / "workerlog.1").write_text("")
    assert "no HybridParallelInfo line" in check_launched_layout(layout, tmp_path)
    (tmp_path / "envlog.0").write_text("PADDLE_LOCAL_RANK=0\nPADDLE_TRAINERS_NUM=2\nPADDLE_TRAINER_ID=0\n")
    assert check_launched_layout(plan_ppo_layout(2, 1), tmp_path) == "(2 ranks; plain data parallel)"
    (tmp_path / "workerlog.0").write_text(
        "[INFO] topology.py:440 - HybridParallelInfo: rank_id: 0, mp_degree: 2, sharding_degree: 1, "
        "pp_degree: 1, dp_degree: 1, sep_degree: 1, mp_group: [0, 1]\n")
    assert check_launched_layout(layout, tmp_path) == "(2 ranks; mp_degree 2, dp_degree 1)"
    with pytest.raises(SystemExit, match="mp_degree 2, dp_degree 1 .* expected 1 and 2"):
        check_launched_layout(plan_ppo_layout(2, 1), tmp_path)
    (tmp_path / "envlog.0").write_text("PADDLE_TRAINERS_NUM=4\n")
    with pytest.raises(SystemExit, match=r"ran 4 processes \(envlog.0\), expected 2"):
        check_launched_layout(layout, tmp_path)


_FAKE_LAUNCHER = """
import pathlib, sys
logs = pathlib.Path(sys.argv[1])
logs.mkdir(parents=True, exist_ok=True)
(logs / 'workerlog.0').write_text('step 1\\nTraceback (most recent call last):\\n'
                                  'ZeroDivisionError: rank 0 died\\n')
(logs / 'workerlog.1').write_text('rank 1 waiting in all_reduce\\n')
print('LAUNCH INFO Exit code 1')
sys.exit(1)
"""


def test_a_failed_launch_reports_the_worker_logs(tmp_path):
    launch_log, stage_logs = tmp_path / "ppo_launch_log", tmp_path / "logs"
    stage_logs.mkdir()
    with pytest.raises(SystemExit) as err:
        demo._run("ppo", ["-c", _FAKE_LAUNCHER, str(launch_log)], stage_logs, worker_log_dir=launch_log,
                  timeout=60)
    message = str(err.value)
    assert "ppo failed (exit 1)" in message and "LAUNCH INFO Exit code 1" in message
    assert "rank 1 waiting in all_reduce" in message
    assert message.rstrip().endswith("ZeroDivisionError: rank 0 died")  # rank 0's traceback last
    assert "LAUNCH INFO Exit code 1" in (stage_logs / "ppo.log").read_text()  # the per-stage log is kept


def test_a_launch_without_worker_logs_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no workerlog.N under .*: the launcher failed before starting"):
        demo._run("ppo", ["-c", "import sys; sys.exit(3)"], tmp_path, worker_log_dir=tmp_path / "none",
                  timeout=60)


def test_a_hung_stage_is_stopped_with_its_process_group(tmp_path):
    child = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    with pytest.raises(SystemExit, match="ppo failed \\(timed out after 3 s\\)"):
        demo._run("ppo", ["-c", script], tmp_path, worker_log_dir=tmp_path, timeout=3)
    pid = int(child.read_text())
    import os

    try:
        os.kill(pid, 0)
        alive = open(f"/proc/{pid}/stat").read().split()[2] != "Z"  # a zombie awaiting init counts as gone
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    assert not alive, "the stage's child process outlived the timeout"


def test_stage_commands_run_with_this_interpreter(tmp_path):
    demo._run("ok", ["-c", "import sys; print(sys.executable)"], tmp_path)
    assert (tmp_path / "ok.log").read_text().strip() == sys.executable


def test_progress_line_shows_elapsed_time_step_and_metric(tmp_path):
    from alignment.tools.demo import progress_line

    metrics = tmp_path / "metrics.jsonl"
    assert progress_line("sft", 3.2, metrics) == "[demo] sft: 3s, loading"
    metrics.write_text('{"step": 10, "loss": 2.5}\n{"step": 20, "loss": 2.25, "learning_rate": 0.001}\n')
    assert progress_line("sft", 41.6, metrics) == "[demo] sft: 42s, step 20, loss 2.25"
    metrics.write_text('{"step": 3, "reward": 0.5, "kl_divergence": 0.01, "actor_loss": 1}\n')
    assert progress_line("ppo", 9, metrics) == "[demo] ppo: 9s, step 3, reward 0.5, kl_divergence 0.01"

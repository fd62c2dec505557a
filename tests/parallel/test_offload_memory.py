"""Offload levels, the memory report and the memory planner.

* PPO with each offload combination gives the run without offload's metrics and weights (on a CPU build a move
  changes no memory, but every scheduled move and its bookkeeping runs), and the report shows the schedule:
  the reference and reward model are not resident in the update phases, optimizer states only during their
  model's update, the actor not during the critic's update;
* a move keeps parameter and optimizer-state identity (``_move`` between two places of the CPU build);
* ``memory.jsonl`` has, every step and for every rank, per model the measured parameter / gradient / optimizer
  bytes, which equal the planner's formulas for the same model;
* the planner's proposal fits the budget and the next doubling does not; a bad option is one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.parallel.memory import LayerShape, parameter_count
from alignment.parallel.offload import OffloadScheduler, optimizer_state_tensors, parse_offload_level
from alignment.ppo.run_ppo import build_trainer
from alignment.tools import plan_memory

from tests.stages.test_ppo import _args, _params, data_files, rm_dir  # noqa: F401  (fixtures)

COMBOS = ["", "freeze_model", "optimizer", "train_model", "freeze_model optimizer", "freeze_model train_model",
          "optimizer train_model", "freeze_model optimizer train_model"]


def _allocated() -> int:
    import gc

    from paddle.base import core

    gc.collect()
    return int(core.host_memory_stat_current_value("Allocated", 0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_files, tiny_model_dir, rm_dir):  # noqa: F811
    out = {}
    for levels in COMBOS:
        tmp = tmp_path_factory.mktemp("offload")
        model, data, args = _args(tmp, data_files, tiny_model_dir, rm_dir, offload_level=levels, max_steps=2)
        base = _allocated()
        trainer = build_trainer(model, data, args)
        trainer.train()
        out[levels] = (trainer, args.output_dir)
        trainer.allocated_before = base
    return out


def test_every_offload_combination_matches_no_offload(runs):
    base, _ = runs[""]
    for levels in COMBOS[1:]:
        trainer, _ = runs[levels]
        for a, b in zip(base.history, trainer.history):
            for key in ("reward", "kl_divergence", "actor_loss", "critic_loss", "advantages"):
                if key in a:
                    assert a[key] == b[key], (levels, key, a[key], b[key])
        for role in ("actor", "critic"):
            wa, wb = _params(getattr(base.m, role)), _params(getattr(trainer.m, role))
            assert all(np.array_equal(wa[k], wb[k]) for k in wa), (levels, role)


def _placements(out_dir):
    with open(f"{out_dir}/memory.jsonl") as f:
        return [json.loads(line) for line in f]


def test_the_report_shows_the_schedule(runs):
    records = _placements(runs["freeze_model optimizer train_model"][1])
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        rank = record["ranks"][0]
        where = rank["placement"]
        assert set(where) == {"generation", "experience", "update_actor", "update_critic"}
        for phase in ("generation", "update_actor", "update_critic"):  # frozen models only while scoring
            assert where[phase]["reference"]["parameters"] == where[phase]["reward_model"]["parameters"] == "host"
        assert where["experience"]["reference"]["parameters"] == "device"
        assert where["update_actor"]["actor"]["optimizer_states"] == "device"
        assert where["update_actor"]["critic"]["optimizer_states"] == "host"
        assert where["update_critic"]["actor"]["parameters"] == "host"  # train_model: one trained model at a time
        assert where["generation"]["critic"]["parameters"] == "host"
        assert where["experience"]["actor"]["optimizer_states"] == "host"
        assert set(rank["peak_bytes"]) == set(where) and all(v > 0 for v in rank["peak_bytes"].values())
    none = _placements(runs[""][1])[0]["ranks"][0]["placement"]
    assert none["update_actor"]["reference"]["parameters"] == "device"  # no offload: everything stays
    # the peaks are logged with the metrics
    assert "memory_peak_update_actor_mib_max" in runs[""][0].history[-1]


def test_measured_bytes_equal_the_planner(runs, tiny_model_dir):
    trainer, out_dir = runs[""]
    measured = _placements(out_dir)[-1]["ranks"][0]["models"]
    with open(f"{tiny_model_dir}/config.json") as f:
        shape = LayerShape.from_config(json.load(f))
    lm, score = parameter_count(shape), parameter_count(shape, score_dim=1)
    assert measured["actor"]["parameters"] == measured["reference"]["parameters"] == 4 * lm
    assert measured["critic"]["parameters"] == measured["reward_model"]["parameters"] == 4 * score
    spec = plan_memory.PlanSpec(shape=shape, stage="ppo")
    planned = plan_memory.plan(spec)["update_actor"]
    assert planned["actor.parameters"] == measured["actor"]["parameters"]
    # AdamW: two fp32 moments per parameter (+ one scalar beta-power pair per tensor, which the plan leaves out)
    states = measured["actor"]["optimizer_states"]
    assert planned["actor.optimizer_states"] <= states <= planned["actor.optimizer_states"] * 1.01, states


def test_a_move_keeps_identity():
    lin = paddle.nn.Linear(4, 3)
    opt = paddle.optimizer.AdamW(parameters=lin.parameters())
    lin(paddle.ones([2, 4])).sum().backward()
    opt.step()
    sched = OffloadScheduler("optimizer train_model")
    sched.host = paddle.CUDAPinnedPlace() if paddle.is_compiled_with_cuda() else paddle.CPUPlace()
    sched.register("actor", lin, opt)
    before = [id(p) for p in lin.parameters()], [id(t) for t in optimizer_state_tensors(opt)]
    values = lin.weight.numpy().copy()
    for phase in ("generation", "update_actor", "update_critic", "update_actor"):
        sched.enter(phase)
    assert ([id(p) for p in lin.parameters()], [id(t) for t in optimizer_state_tensors(opt)]) == before
    np.testing.assert_array_equal(lin.weight.numpy(), values)
    assert sched.where(0, "update_critic", "actor") == "host" and sched.where(0, "update_actor", "actor") == "device"
    opt.step()  # the optimizer still updates the same tensors


def test_bad_level_is_one_line():
    with pytest.raises(ValueError, match="allowed values .*freeze_model, optimizer, train_model"):
        parse_offload_level("freeze_model gpu")


def test_planner_proposal_fits_and_the_next_size_does_not(capsys):
    spec = plan_memory.PlanSpec(shape=plan_memory.PRESETS["llama-7b"], stage="ppo", tensor_parallel_degree=2,
                                sharding_parallel_degree=4, sharding="stage1", dtype="bfloat16",
                                offload_level="freeze_model optimizer", max_prompt_len=512, max_new_tokens=512)
    budget = 80 * plan_memory.GIB
    best, lines = plan_memory.propose(spec, budget)
    assert best is not None and plan_memory.peak(plan_memory.plan(best)) <= budget
    bigger = plan_memory.replace(best, per_device_train_batch_size=2 * best.per_device_train_batch_size,
                                 experience_batch_size=2 * best.experience_batch_size)
    assert plan_memory.peak(plan_memory.plan(bigger)) > budget
    # offloading and sharding lower the peak; the frozen models leave the update phases
    full = plan_memory.plan(plan_memory.replace(spec, offload_level=(), sharding_parallel_degree=1))
    assert plan_memory.peak(plan_memory.plan(spec)) < plan_memory.peak(full)
    assert "reference.parameters" not in plan_memory.plan(spec)["update_actor"]
    assert plan_memory.main(["--model", "llama-7b", "--budget_gib", "80", "--offload_level", "optimizer"]) == 0
    assert "proposal for a budget of 80 GiB" in capsys.readouterr().out
    assert plan_memory.main(["--model", "/nonexistent"]) == 2


def test_plan_memory_flag_on_an_entry_point(tiny_model_dir, rm_dir, capsys):  # noqa: F811
    from alignment.ppo.run_ppo import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--actor_model_name_or_path", str(tiny_model_dir), "--reward_model_name_or_path", str(rm_dir),
              "--plan_memory", "true", "--offload_level", "freeze_model"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "ppo: tp 1 x pp 1" in out and "offload freeze_model" in out and "peak" in out


def test_dpo_reference_offloaded_between_forwards(tmp_path, tiny_model_dir, monkeypatch):
    """DPO with ``offload_level freeze_model``: the reference comes to the device for each forward and goes back
    after it; the losses equal the run without offload. A level the Trainer stages do not have is one line."""
    from alignment.dpo.run_dpo import main
    from alignment.utils.cli import ArgumentError

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the tiny configs use repo-relative paths

    def run(name, *extra):
        argv = ["config/llama/tiny/dpo_argument.json", "--model_name_or_path", str(tiny_model_dir),
                "--output_dir", str(tmp_path / name), "--max_steps", "2", "--logging_steps", "1",
                "--do_eval", "false", "--evaluation_strategy", "no", "--save_strategy", "no", *extra]
        return main(argv)

    from alignment.utils.trainer import read_metrics

    run("plain")
    offloaded = run("offloaded", "--offload_level", "freeze_model")
    losses = [[r["loss"] for r in read_metrics(str(tmp_path / n)) if "loss" in r and "train_loss" not in r]
              for n in ("plain", "offloaded")]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    moves = offloaded.ref_model._offload_transitions
    assert moves["device"] >= 2 and moves["host"] == moves["device"] + 1, moves  # + the initial send
    with pytest.raises((ArgumentError, SystemExit)):
        run("bad", "--offload_level", "optimizer")


# ---------------------------------------------------------------------------------------------- predicted vs measured
PLAN_RTOL = 0.15  # the planner's peak within 15% of the host allocator's peak (measured: 0.5-14%)
BIG = dict(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, num_key_value_heads=4, vocab_size=2048)


@pytest.fixture(scope="module")
def big_model_dir(tmp_path_factory):
    """A second model size: hidden 256, 4 layers, vocab 2048 (about 4 M parameters)."""
    from alignment.tools.make_tiny_model import TinyModelSpec, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("big") / "big", TinyModelSpec(**BIG))


def _offline_peak(stage, model_dir, out_dir, batch=4):
    """(measured peak bytes over 2 training steps, the longest sequence) of the SFT or DPO stage in-process."""
    from paddle.base import core

    repo = Path(__file__).resolve().parents[2]
    argv = [f"config/llama/tiny/{stage}_argument.json", "--model_name_or_path", str(model_dir), "--output_dir",
            str(out_dir), "--max_steps", "2", "--do_eval", "false", "--evaluation_strategy", "no", "--save_strategy",
            "no", "--per_device_train_batch_size", str(batch), "--max_length", "128"]
    if stage == "sft":
        from alignment.sft.run_sft import build_trainer as build

        argv += ["--train_datasets", f"json:1.0:{repo}/tests/fixtures/llamafactory_alpaca_en_demo_first10.json",
                 "--eval_split_ratio", "0"]
        keys = ("input_ids",)
    else:
        from alignment.dpo.run_dpo import main

        def build(argv):  # main trains (and saves the final model: no allocations of paddle's)
            trained = main(argv)
            trained.train = lambda: None
            return trained

        keys = ("chosen_input_ids", "rejected_input_ids")
    base = _allocated()
    core.host_memory_stat_reset_peak_value("Allocated", 0)
    trainer = build(argv)
    trainer.train()
    peak = int(core.host_memory_stat_peak_value("Allocated", 0)) - base
    ds = trainer.train_dataset
    return peak, max(len(ds[i][k]) for i in range(len(ds)) for k in keys)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
@pytest.mark.parametrize("size", ["tiny", "big"])
def test_planner_predicts_the_measured_peak_of_a_training_step(stage, size, tiny_model_dir, big_model_dir, tmp_path,
                                                                monkeypatch):
    model_dir = tiny_model_dir if size == "tiny" else big_model_dir
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    measured, length = _offline_peak(stage, model_dir, tmp_path / "out")
    with open(f"{model_dir}/config.json") as f:
        shape = LayerShape.from_config(json.load(f))
    spec = plan_memory.PlanSpec(shape=shape, stage=stage, max_length=length, per_device_train_batch_size=4)
    planned = plan_memory.peak(plan_memory.plan(spec))
    print(f"{stage} {size}: planned {planned / 2**20:.2f} MiB, measured {measured / 2**20:.2f} MiB "
          f"({planned / measured - 1:+.1%})")
    assert abs(planned / measured - 1) <= PLAN_RTOL, (planned, measured)


def test_planner_predicts_each_ppo_phase(runs, data_files, rm_dir, big_model_dir, tmp_path):  # noqa: F811
    """PPO's phases (step 2: the optimizer states exist) on both sizes: memory.jsonl's allocator peaks against the
    planner's prediction for the step's actual shapes, which the report writes next to them."""
    from alignment.models.score_model import ScoreModel

    big_rm = tmp_path / "big_rm"
    ScoreModel.from_pretrained(str(big_model_dir), init_score_head=True, score_type="reward").save_pretrained(str(big_rm))
    from paddlenlp.transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(big_model_dir)).save_pretrained(str(big_rm))
    model, data, args = _args(tmp_path, data_files, big_model_dir, big_rm, max_steps=2)
    base = _allocated()
    big = build_trainer(model, data, args)
    big.train()
    big.allocated_before = base
    for trainer, out_dir in ((runs[""][0], runs[""][1]), (big, args.output_dir)):
        rank = _placements(out_dir)[-1]["ranks"][0]
        for phase, peak in rank["peak_bytes"].items():
            measured, planned = peak - trainer.allocated_before, rank["planned_bytes"][phase]
            print(f"PPO {phase}: planned {planned / 2**20:.2f} MiB, measured {measured / 2**20:.2f} MiB "
                  f"({planned / measured - 1:+.1%})")
            assert abs(planned / measured - 1) <= PLAN_RTOL, (phase, planned, measured)


def test_a_proposal_fits_its_budget_when_run(data_files, tiny_model_dir, rm_dir, tmp_path):  # noqa: F811
    """Ask for the largest batch sizes under a budget (planned with the README's 10% headroom), run PPO with
    them, and measure: every phase's peak stays under the budget; the next doubling is planned over it."""
    with open(f"{tiny_model_dir}/config.json") as f:
        shape = LayerShape.from_config(json.load(f))
    budget = 9 * 2 ** 20
    spec = plan_memory.PlanSpec(shape=shape, stage="ppo", max_prompt_len=40, max_new_tokens=8, num_return_sequences=2)
    best, lines = plan_memory.propose(spec, int(0.9 * budget))
    assert best is not None and best.per_device_train_batch_size >= 2, lines
    model, data, args = _args(tmp_path, data_files, tiny_model_dir, rm_dir, max_steps=2, max_dec_len=8,
                              min_dec_len=8, per_device_train_batch_size=best.per_device_train_batch_size,
                              per_device_prompt_batch_size=best.per_device_prompt_batch_size,
                              rollout_logprob_batch_size=best.experience_batch_size)
    base = _allocated()
    build_trainer(model, data, args).train()
    peaks = _placements(args.output_dir)[-1]["ranks"][0]["peak_bytes"]
    worst = max(peaks.values()) - base
    print(f"proposal {best.per_device_train_batch_size} rows: measured peak {worst / 2**20:.2f} MiB of "
          f"{budget / 2**20:.0f} MiB")
    assert worst <= budget, (worst, budget, lines)


def test_resume_with_offload_continues_the_run(runs, data_files, tiny_model_dir, rm_dir, tmp_path):  # noqa: F811
    """Checkpoint-1 of a run with every level, resumed under the same levels: step 2's metrics and the final
    weights equal the uninterrupted run's (the optimizer states were saved from and loaded into the host
    copies)."""
    levels = "freeze_model optimizer train_model"
    whole, _ = runs[levels]
    model, data, args = _args(tmp_path, data_files, tiny_model_dir, rm_dir, offload_level=levels, max_steps=1,
                              save_strategy="steps", save_steps=1)
    build_trainer(model, data, args).train()  # writes checkpoint-1 (the final one of this 1-step run)
    model, data, args = _args(tmp_path, data_files, tiny_model_dir, rm_dir, offload_level=levels, max_steps=2,
                              resume_from_checkpoint="latest")
    resumed = build_trainer(model, data, args)
    resumed.train()
    a = [h for h in whole.history if h["step"] == 2][0]
    b = [h for h in resumed.history if h["step"] == 2][0]
    for key in ("reward", "kl_divergence", "actor_loss", "critic_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
    for role in ("actor", "critic"):
        wa, wb = _params(getattr(whole.m, role)), _params(getattr(resumed.m, role))
        assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) < 1e-6, role

"""Runs that go wrong on purpose: NaN / Inf losses and rewards are skipped, counted and stop the run at the limit;
N steps = N/2 + resume + N/2 in every stage (metrics and weights); report_to sinks in RM and SFT."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import paddle
import pytest

from alignment.models.loading import read_weights
from alignment.utils.guards import NonFiniteStop
from alignment.utils.trainer import read_metrics

from .conftest import base_argv, entry

# ------------------------------------------------------------------------------------------ numeric guards


def _nan_at(trainer, bad_calls):
    """compute_loss returns NaN on the given (1-based) training calls."""
    original, calls = trainer.compute_loss, {"n": 0}

    def compute_loss(model, inputs, return_outputs=False):
        out = original(model, inputs, return_outputs=return_outputs)
        if model.training:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                return (out[0] * float("nan"), out[1]) if return_outputs else out * float("nan")
        return out

    trainer.compute_loss = compute_loss


def test_nan_loss_is_skipped_counted_and_stops_at_the_limit(tiny_model_dir, data, tmp_path, caplog):
    from alignment.sft.run_sft import build_trainer
    from alignment.training.runner import run_trainer

    argv = base_argv("sft", tiny_model_dir, data, tmp_path / "a", steps=5) + ["--max_nonfinite_steps", "3"]
    trainer = build_trainer(argv)
    start = {k: v.numpy().copy() for k, v in trainer.model.state_dict().items()}
    _nan_at(trainer, {1, 2})
    with caplog.at_level("WARNING"):
        run_trainer(trainer, trainer.args)
    assert trainer.nonfinite_guard.skipped == 2
    assert any("step 1: non-finite loss" in r.message and "skipped (1 in a row" in r.message for r in caplog.records)
    records = read_metrics(str(tmp_path / "a"))
    assert [r["nonfinite_skipped"] for r in records if "nonfinite_skipped" in r] == [1.0, 2.0]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    trained = trainer.model.state_dict()
    assert any(not np.allclose(trained[k].numpy(), start[k]) for k in start)  # steps 3-5 updated

    trainer = build_trainer(base_argv("sft", tiny_model_dir, data, tmp_path / "b", steps=6))
    before = {k: v.numpy().copy() for k, v in trainer.model.state_dict().items()}
    _nan_at(trainer, set(range(1, 100)))
    with pytest.raises(NonFiniteStop, match=r"step 3: 3 updates in a row .*max_nonfinite_steps=3"):
        run_trainer(trainer, trainer.args)
    for k, v in trainer.model.state_dict().items():  # no update ever applied
        np.testing.assert_array_equal(v.numpy(), before[k])


def test_inf_reward_is_skipped_and_stops_ppo_with_exit_3(tiny_model_dir, rm_dir, data, tmp_path, capsys):
    from alignment.utils.cli import run_cli

    calls = {"n": 0}

    def reward(sequences, mask, prompts, answers, bad=(1,)):
        calls["n"] += 1
        out = paddle.ones([sequences.shape[0]], dtype="float32")
        return out * float("inf") if calls["n"] in bad else out

    argv = base_argv("ppo", tiny_model_dir, data, tmp_path / "a", rm_dir, steps=3)
    trainer_history = entry("ppo")(argv, reward_fn=reward)
    assert trainer_history is not None
    records = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    assert records[0].get("nonfinite_skipped") == 1.0 and "nonfinite_skipped" not in records[1]

    calls["n"] = 0
    with pytest.raises(SystemExit) as e:
        run_cli(entry("ppo"), base_argv("ppo", tiny_model_dir, data, tmp_path / "b", rm_dir, steps=5),
                reward_fn=lambda s, m, p, a: reward(s, m, p, a, bad=range(1, 100)))
    assert e.value.code == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "3 updates in a row" in last and "max_nonfinite_steps=3" in last


# ------------------------------------------------------------------------------------- N = N/2 + resume + N/2
RESUME_STAGES = ["sft", "rm", "dpo", "kto", "gkd", "ppo", "grpo"]


@pytest.mark.parametrize("stage", RESUME_STAGES)
def test_half_run_plus_resume_equals_the_full_run(stage, tiny_model_dir, rm_dir, data, tmp_path):
    name = "ppo" if stage == "grpo" else stage
    out = tmp_path / "out"
    argv = base_argv(name, tiny_model_dir, data, out, rm_dir, steps=4) + [
        "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "3"]
    if stage == "grpo":
        argv += ["--rl_algorithm", "grpo"]
    main = entry(name)
    main(argv)
    weights_dir = out / "policy" if name == "ppo" else out
    full_weights = {k: v.numpy() for k, v in read_weights(str(weights_dir)).items()}
    full = [r for r in read_metrics(str(out)) if "loss" in r or "actor_loss" in r or "reward" in r]
    # the run was killed after checkpoint-2: later checkpoints are gone, the metrics run on
    shutil.rmtree(out / "checkpoint-4", ignore_errors=True)
    main(argv + ["--resume_from_checkpoint", "latest"])
    resumed = [r for r in read_metrics(str(out)) if "loss" in r or "actor_loss" in r or "reward" in r]
    steps = [r["step"] for r in read_metrics(str(out))]
    assert steps == sorted(steps), steps  # no repeated steps after the resume
    key = "actor_loss" if name == "ppo" else "loss"
    a = [(r["step"], r[key]) for r in full if key in r]
    b = [(r["step"], r[key]) for r in resumed if key in r]
    assert [s for s, _ in a] == [s for s, _ in b]
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], rtol=1e-5, atol=1e-6)
    for k, v in read_weights(str(weights_dir)).items():
        np.testing.assert_allclose(v.numpy(), full_weights[k], rtol=1e-5, atol=1e-6, err_msg=k)


# ------------------------------------------------------------------------------------------------ report_to
SINKS = ["visualdl", "none", "tensorboard", None]


@pytest.mark.parametrize("stage", ["rm", "sft"])
@pytest.mark.parametrize("sink", SINKS, ids=[str(s) for s in SINKS])
def test_report_to_sinks_train(stage, sink, tiny_model_dir, data, tmp_path):
    if sink == "tensorboard" and importlib.util.find_spec("tensorboardX") is None \
            and importlib.util.find_spec("torch") is None:
        pytest.skip("tensorboard reporting needs tensorboardX or torch, neither is installed")
    argv = base_argv(stage, tiny_model_dir, data, tmp_path / "out", steps=1)
    argv = [a for a in argv]
    if sink is not None:
        argv += ["--report_to", sink]
    else:  # unset, as in config/llama/*.json: PaddleNLP's default (visualdl)
        path = tmp_path / "args.json"
        cfg = json.loads(open(argv[0]).read())
        cfg.pop("report_to")
        path.write_text(json.dumps(cfg))
        argv[0] = str(path)
    entry(stage)(argv)
    assert (tmp_path / "out" / "metrics.jsonl").exists()
    if sink in ("visualdl", None):
        assert any((tmp_path / "out" / "runs").rglob("vdlrecords*"))


# ------------------------------------------------------------------------------------ dict dataset specs
def test_dict_dataset_spec_in_an_argument_file_and_as_a_flag(tiny_model_dir, data, tmp_path):
    from alignment.sft.run_sft import build_trainer

    spec = {"json": {"proportion": 0.5, "path": str(data / "sft.jsonl"), "format": "alpaca"}}
    argv = base_argv("sft", tiny_model_dir, data, tmp_path / "a")
    cfg = json.loads(open(argv[0]).read())
    cfg["train_datasets"] = spec
    path = tmp_path / "args.json"
    path.write_text(json.dumps(cfg))
    argv = [str(path)] + [a for i, a in enumerate(argv[1:]) if argv[i] != "--train_datasets"
                          and a != "--train_datasets"]
    assert len(build_trainer(argv).train_dataset) == 24  # half of the 48 records
    flag = base_argv("sft", tiny_model_dir, data, tmp_path / "b") + ["--train_datasets", json.dumps(spec)]
    assert len(build_trainer(flag).train_dataset) == 24


def test_dict_dataset_spec_for_ppo_prompts(tiny_model_dir, data):
    """PPO's DataArgument reads a dict spec given as JSON text too (argument file value or flag)."""
    from alignment.data import PromptOnlyDataset
    from alignment.models.loading import load_tokenizer
    from alignment.ppo.config import DataArgument

    spec = {"json": {"proportion": 0.5, "path": str(data / "prompts.jsonl")}}
    args = DataArgument(train_datasets=json.dumps(spec), eval_datasets=json.dumps(spec))
    assert args.train_datasets == spec and args.eval_datasets == spec
    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    full = len(PromptOnlyDataset(f"json:1.0:{data / 'prompts.jsonl'}", tok, max_length=64))
    assert len(PromptOnlyDataset(args.train_datasets, tok, max_length=64)) == full // 2
    with pytest.raises(ValueError, match="train_datasets: not a valid JSON dataset spec"):
        DataArgument(train_datasets='{"json": ')


def test_grad_norm_equals_the_float64_norm_and_flags_non_finite_gradients():
    """``utils.guards.grad_norm`` (Paddle's squared_l2_norm kernel per gradient) against NumPy in float64."""
    import numpy as np
    import paddle

    from alignment.utils.guards import grad_norm

    paddle.seed(3)
    params = [paddle.create_parameter(shape, "float32") for shape in ([64, 300], [77], [5, 3])]
    weights = [paddle.randn(p.shape) for p in params]
    sum((p * w).sum() for p, w in zip(params, weights)).backward()
    want = np.sqrt(sum((w.numpy().astype("float64") ** 2).sum() for w in weights))
    assert abs(grad_norm(params) - want) <= 1e-5 * want
    bad = paddle.randn([77])
    bad[5] = float("nan")
    q = paddle.create_parameter([77], "float32")
    (q * bad).sum().backward()
    assert not np.isfinite(grad_norm(params + [q]))

"""SFT stage: the eval loss falls on shipped alpaca-style data and the saved model loads; JSON + flag overrides;
bad arguments are named; LoRA trains only adapters and saves a merged model; the loss and the batches do not
depend on the data-parallel world size (one process == two processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.models.loading import read_weights
from alignment.sft.run_sft import build_trainer, main
from alignment.sft.trainer import answer_nll
from alignment.training.runner import run_trainer
from alignment.training.sampler import GlobalBatchSampler
from alignment.utils.cli import ArgumentError
from alignment.utils.trainer import read_metrics

REPO = Path(__file__).resolve().parents[2]
ALPACA = "tests/fixtures/llamafactory_alpaca_en_demo_first10.json"


def _argv(model, out, *extra, data=f"json:1.0:{ALPACA}"):
    return ["config/llama/tiny/sft_argument.json", "--model_name_or_path", str(model), "--train_datasets", data,
            "--output_dir", str(out), "--max_length", "128", "--eval_split_ratio", "0.2", "--max_steps", "30",
            "--eval_steps", "30", "--logging_steps", "10", "--per_device_train_batch_size", "4", *map(str, extra)]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the tiny configs use repo-relative paths


def _logits(model, ids):
    model.eval()
    with paddle.no_grad():
        return model(input_ids=ids, attention_mask=paddle.ones_like(ids), return_dict=True).logits.numpy()


def test_sft_lowers_eval_loss_on_alpaca_and_saves_a_loadable_model(tiny_model_dir, tmp_path):
    trainer = build_trainer(_argv(tiny_model_dir, tmp_path / "sft"))
    assert (len(trainer.train_dataset), len(trainer.eval_dataset)) == (8, 2)
    before = trainer.evaluate()["eval_loss"]
    run_trainer(trainer, trainer.args)
    records = read_metrics(str(tmp_path / "sft"))
    after = [r["eval_loss"] for r in records if "eval_loss" in r][-1]
    print(f"alpaca SFT eval loss {before:.3f} -> {after:.3f}")
    assert after < before - 1.0, (before, after)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]

    from paddlenlp.transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft"))
    ids = paddle.to_tensor([[1, 40, 41, 42, 2]], dtype="int64")
    np.testing.assert_allclose(_logits(loaded, ids), _logits(trainer.model, ids), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "sft" / "tokenizer_config.json").exists()


def test_flag_overrides_json_and_bad_arguments_are_named(tiny_model_dir, tmp_path):
    trainer = build_trainer(_argv(tiny_model_dir, tmp_path / "o", "--learning_rate", "1e-5", "--max_length", "64"))
    assert trainer.args.learning_rate == pytest.approx(1e-5)
    assert trainer.args.max_steps == 30 and trainer.args.per_device_train_batch_size == 4  # file, then flags
    with pytest.raises(ArgumentError, match="learnin_rate.*learning_rate"):
        build_trainer(_argv(tiny_model_dir, tmp_path / "o", "--learnin_rate", "1e-5"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_name_or_path": str(tiny_model_dir), "train_datasets": "alpaca", "templat": "x"}))
    with pytest.raises(ArgumentError, match=r"bad.json.*templat"):
        build_trainer([str(bad), "--output_dir", str(tmp_path / "o")])
    for flag, value, message in (
        ("--template", "nope", "template='nope' is not valid; allowed values: beaver"),
        ("--truncation", "middle", "truncation='middle' is not valid; allowed values"),
        ("--eval_split_ratio", "1.5", r"eval_split_ratio must be in \[0, 1\)"),
        ("--lora_rank", "0", "lora_rank must be > 0"),
    ):
        with pytest.raises(ValueError, match=message):
            build_trainer(_argv(tiny_model_dir, tmp_path / "o", flag, value))


def test_lora_trains_only_adapters_and_saves_a_merged_model(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    trainer = main(_argv(tiny_model_dir, out, "--lora", "true", "--lora_rank", "4", "--learning_rate", "5e-3",
                         "--max_steps", "6", "--eval_steps", "6", "--lora_target_modules", ".*q_proj.*", ".*v_proj.*"))
    state = {k: v.numpy() for k, v in trainer.model.model.state_dict().items()}
    start = read_weights(str(tiny_model_dir))
    for key, value in start.items():  # frozen base weights
        np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
    assert any(np.abs(v).max() > 0 for k, v in state.items() if "lora_B" in k)  # adapters moved off zero
    assert (out / "lora_config.json").exists() and (out / "lora_model_state.pdparams").exists()

    from paddlenlp.transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(out))
    ids = paddle.to_tensor([[1, 40, 41, 42, 2]], dtype="int64")
    np.testing.assert_allclose(_logits(merged, ids), _logits(trainer.model, ids), rtol=1e-4, atol=1e-4)


def test_answer_nll_matches_a_token_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype("float32")
    labels = np.array([[-100, -100, 3, 4, 2], [-100, 1, 2, -100, -100]])
    loss, total, count = answer_nll(paddle.to_tensor(logits), paddle.to_tensor(labels))
    terms = []
    for b in range(2):
        for t in range(1, 5):
            if labels[b, t] != -100:
                z = logits[b, t - 1]
                terms.append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[labels[b, t]])
    assert float(count) == len(terms) == 5
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)
    np.testing.assert_allclose(float(total), np.sum(terms), rtol=1e-5)


def test_global_batches_do_not_depend_on_world_size():
    data = list(range(23))
    for drop_last in (False, True):
        one = GlobalBatchSampler(data, batch_size=4, num_replicas=1, rank=0, seed=3, drop_last=drop_last)
        ranks = [GlobalBatchSampler(data, batch_size=2, num_replicas=2, rank=r, seed=3, drop_last=drop_last)
                 for r in range(2)]
        for epoch in (0, 1):
            for s in (one, *ranks):
                s.set_epoch(epoch)
            single = list(one)
            split = [a + b for a, b in zip(*ranks)]
            assert len(one) == len(ranks[0]) == len(ranks[1]) == len(single)
            if drop_last:
                assert split == single and len(single) == 5
            else:  # 23 samples: the 2-rank run pads one sample so both ranks take the same number of steps
                assert split[:-1] == single[:-1] and split[-1][:3] == single[-1]
                assert sorted(sum(single, [])) == list(range(23))


def _run(cmd, log_dir: Path):
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("workerlog.*")))
        raise AssertionError(f"{' '.join(map(str, cmd[:6]))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}")


@pytest.mark.distributed
def test_two_process_data_parallel_matches_one_process(tiny_model_dir, tmp_path):
    """Same global batches (train 4, eval 2): one process == two processes, loss for loss (command line)."""
    script = str(REPO / "alignment/sft/run_sft.py")
    common = ("--max_steps", "6", "--eval_steps", "3", "--logging_steps", "1")
    _run([sys.executable, script, *_argv(tiny_model_dir, tmp_path / "single", *common, "--per_device_eval_batch_size", "2")],
         tmp_path)
    _run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log"),
          script, *_argv(tiny_model_dir, tmp_path / "dp", *common, "--per_device_train_batch_size", "2",
                         "--per_device_eval_batch_size", "1")],
         tmp_path / "log")
    a, b = read_metrics(str(tmp_path / "single")), read_metrics(str(tmp_path / "dp"))
    for key in ("loss", "eval_loss"):
        la, lb = [r[key] for r in a if key in r], [r[key] for r in b if key in r]
        assert len(la) == len(lb) >= 2, (key, la, lb)
        print(f"SFT DP vs single, {key}: max abs diff {np.abs(np.subtract(la, lb)).max():.2e}")
        np.testing.assert_allclose(lb, la, rtol=0, atol=1e-4)
    assert [r["tokens"] for r in a if "tokens" in r] == [r["tokens"] for r in b if "tokens" in r]


def test_sft_loss_through_the_chunked_lm_head_equals_the_logits_path(tiny_model_dir, tmp_path, monkeypatch):
    """With use_fusemt on, SFT's loss goes through the chunked LM head (no (B, L, V) logits); the loss and the
    gradients equal the plain logits path (answer_nll) within 1e-5."""
    from alignment.ops import fused_available, linear_logps, use_fusemt

    calls = []
    chunked = linear_logps.linear_completion_logps
    monkeypatch.setattr(linear_logps, "linear_completion_logps", lambda *a, **k: calls.append(1) or chunked(*a, **k))

    trainer = build_trainer(_argv(tiny_model_dir, tmp_path / "c"))
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    model = trainer.model
    model.train()
    results = []
    for fused in (True, False):
        with use_fusemt(fused):
            if fused:
                assert fused_available()  # the operator library is built here (else the test proves nothing)
            model.clear_gradients()
            loss = trainer.compute_loss(model, batch)
            loss.backward()
            results.append((float(loss), model.lm_head.weight.grad.numpy().copy(),
                            model.llama.layers[0].mlp.down_proj.weight.grad.numpy().copy()))
    (a, ga, da), (b, gb, db) = results
    assert len(calls) == 1  # the fused run took the chunked head, the plain one did not
    assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (a, b)
    np.testing.assert_allclose(ga, gb, rtol=0, atol=1e-5)
    np.testing.assert_allclose(da, db, rtol=0, atol=1e-5)

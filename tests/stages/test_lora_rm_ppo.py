"""LoRA in the reward-model and PPO stages (issue 12): the adapters and the score heads train, nothing else moves
(the reward model's loss falls, the PPO reward rises);
the PPO reference is the actor with its adapters off (no second copy of the base weights, measured in parameter
bytes); merged and adapter-only saving; resume; bf16 / fp16 on a CPU-only Paddle stop with one clear line, and one
PPO step with fp16 forced on (GPU check monkeypatched) runs the mixed-precision plumbing end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.utils.trainer import read_metrics

REPO = Path(__file__).resolve().parents[2]
NOUNS = "pie car tree river house dog song book road cloud apple lamp".split()
WORDS = "apple banana cherry dog egg fish grape house ice juice kite lemon moon nest orange pear".split()


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Chosen answers end in 'thank you', rejected ones in 'go away'."""
    path = tmp_path_factory.mktemp("lora_rm") / "pairs.jsonl"
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(64):
            words = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(3, 6)))
            f.write(json.dumps({"prompt": f"Tell me about the {rng.choice(NOUNS)} number {i}.",
                                "chosen": f"{words}, thank you", "rejected": f"{words}, go away"}) + "\n")
    return path


def _rm_argv(model, data, out, *extra):
    return ["config/llama/tiny/rm_argument.json", "--model_name_or_path", str(model), "--train_datasets",
            f"json:1.0:{data}", "--output_dir", str(out), "--max_length", "48", "--max_prompt_length", "24",
            "--eval_split_ratio", "0", "--do_eval", "false", "--evaluation_strategy", "no", "--logging_steps", "1",
            "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--lr_scheduler_type", "constant",
            "--lora", "true", "--lora_rank", "4", *map(str, extra)]


def _losses(out):
    return [r["loss"] for r in read_metrics(str(out)) if "loss" in r and "accuracy" in r]


def test_lora_reward_model_trains_adapters_and_head_only_and_resumes(tiny_model_dir, pairs, tmp_path):
    from alignment.models import ScoreModel
    from alignment.models.loading import read_weights
    from alignment.rm.run_reward import main
    from alignment.tools.export import main as export

    out = tmp_path / "rm"
    trainer = main(_rm_argv(tiny_model_dir, pairs, out, "--max_steps", 6, "--save_strategy", "steps",
                            "--save_steps", 3))
    losses = _losses(out)
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
    base = read_weights(str(tiny_model_dir))
    inner = trainer.model.model  # the ScoreModel inside the LoRAModel
    changed = {k for k, v in inner.state_dict().items()
               if k in base and float(np.abs(v.numpy() - base[k].numpy()).max()) > 0}
    assert not changed, f"base weights moved: {sorted(changed)[:4]}"
    trainable = sorted(n for n, p in inner.named_parameters() if not p.stop_gradient)
    assert trainable and all(".lora_" in n or n.startswith("score_head.") for n in trainable)
    assert any(n.startswith("score_head.") for n in trainable)
    # merged score model next to the adapters: loads without peft and scores like the LoRA model
    for name in ("lora_config.json", "lora_model_state.pdparams", "model.safetensors", "value_head.safetensors"):
        assert (out / name).is_file(), name
    ids = paddle.to_tensor([[1, 40, 41, 42, 2]])
    inner.eval()
    with paddle.no_grad():
        want = inner(ids).end_scores.numpy()
        got = ScoreModel.from_pretrained(str(out))(ids).end_scores.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    # resume from checkpoint-3: the same losses as the uninterrupted run
    import shutil

    shutil.rmtree(out / "checkpoint-6")
    main(_rm_argv(tiny_model_dir, pairs, out, "--max_steps", 6, "--save_strategy", "steps", "--save_steps", 3,
                  "--resume_from_checkpoint", out / "checkpoint-3"))
    np.testing.assert_allclose(_losses(out), losses, rtol=0, atol=1e-5)

    # adapter-only saving; the export merges it into its base and gives the merged model's weights
    only = tmp_path / "rm-adapters"
    main(_rm_argv(tiny_model_dir, pairs, only, "--max_steps", 6, "--merge_lora_on_save", "false"))
    assert not (only / "model.safetensors").exists() and (only / "value_head.safetensors").is_file()
    export(["--checkpoint", str(only), "--out", str(tmp_path / "a-hf")])
    export(["--checkpoint", str(out), "--out", str(tmp_path / "m-hf")])
    from safetensors.numpy import load_file

    a, m = load_file(str(tmp_path / "a-hf/model.safetensors")), load_file(str(tmp_path / "m-hf/model.safetensors"))
    assert sorted(a) == sorted(m)
    assert max(float(np.abs(a[k] - m[k]).max()) for k in a) <= 1e-5


def _param_bytes(*models) -> int:
    """Bytes of the distinct parameters held by ``models`` (a tensor shared by two models counts once)."""
    seen = {}
    for model in models:
        if model is None:
            continue
        for p in model.parameters():
            seen[id(p)] = int(p.numel()) * p.element_size()
    return sum(seen.values())


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lora_ppo") / "prompts.jsonl"
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(48):
            f.write(json.dumps({"prompt": f"{' '.join(rng.choice(WORDS, 4))} {i}"}) + "\n")
    return path


def _ppo(tiny_model_dir, prompts, out, **kw):
    from alignment.ppo.config import DataArgument, ModelArgument, PPOArguments

    model = ModelArgument(actor_model_name_or_path=str(tiny_model_dir),
                          reward_critic_model_name_or_path=str(tiny_model_dir), lora=True, lora_rank=8,
                          lora_alpha=32)  # lora_dropout: PPO's default 0
    base = dict(output_dir=str(out), max_steps=10, per_device_prompt_batch_size=16, per_device_train_batch_size=16,
                num_return_sequences=2, max_dec_len=6, learning_rate=0.05, critic_learning_rate=0.01,
                lr_scheduler_type="constant", report_to=["none"], disable_tqdm=True, save_strategy="no", seed=1,
                update_iters=1, normalize_advantage=True, kl_coeff=0.05, clip_range_score=10.0)
    base.update(kw)
    return model, DataArgument(train_datasets=f"json:1.0:{prompts}", max_length=64), PPOArguments(**base)


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its final norm weight x 8. The random tiny model's LM head (std 0.02, hidden 64) and unit
    final norm bound every logit by |h| |w_row| ~ 8 x 0.16: whatever hidden state adapters produce, the target-token
    fraction of the task below cannot exceed 0.146 (direct maximisation through the frozen head: 0.146 for LoRA
    rank 8, 1.0 for full-parameter training). x 8 gives a trained model's logit range (direct maximisation with
    LoRA: 0.998); the initial target fraction stays ~1/8."""
    import glob
    import shutil

    from alignment.models.loading import load_causal_lm

    out = tmp_path_factory.mktemp("sharp") / "tiny-sharp"
    model = load_causal_lm(str(tiny_model_dir), dtype="float32")
    with paddle.no_grad():
        model.llama.norm.weight.set_value(model.llama.norm.weight * 8.0)
    model.save_pretrained(str(out), safe_serialization=True)
    for f in glob.glob(f"{tiny_model_dir}/*token*") + glob.glob(f"{tiny_model_dir}/*.model"):
        shutil.copy(f, out)
    return out


def test_lora_ppo_reward_rises_with_adapters_only_and_one_copy_of_the_base_weights(sharp_model_dir, prompts, tmp_path):
    """The task of test_ppo.py::test_reward_rises_and_kl_stays_bounded (TokenSetReward, 1/8 of the vocabulary), on
    the sharpened tiny model (see ``sharp_model_dir`` for why the plain one cannot show it). Measured (seed 1):
    0.141 0.12 0.12 0.151 0.13 0.188 0.209 0.188 0.211 0.181; seed 2: 0.075 ... 0.17 over the last four."""
    from alignment.models.loading import AdaptersOff, load_causal_lm
    from alignment.ppo.rewards import TokenSetReward
    from alignment.ppo.run_ppo import build_trainer

    reward = TokenSetReward(range(100, 164), scale=3.0)
    trainer = build_trainer(*_ppo(sharp_model_dir, prompts, tmp_path / "ppo", max_steps=10,
                                  per_device_prompt_batch_size=8, per_device_train_batch_size=8, max_dec_len=12,
                                  learning_rate=0.01, critic_learning_rate=5e-3, update_iters=2, kl_coeff=0.1),
                            reward_fn=reward)
    m = trainer.m
    assert isinstance(m.reference, AdaptersOff) and not list(m.reference.parameters())
    plain = _param_bytes(load_causal_lm(str(sharp_model_dir)))
    held = _param_bytes(m.actor, m.reference)
    lora_bytes = sum(int(p.numel()) * p.element_size() for n, p in m.actor.named_parameters() if ".lora_" in n)
    print(f"LoRA PPO parameter bytes: actor + reference {held} = base {plain} + adapters {lora_bytes} "
          f"(a separate reference would add {plain})")
    assert held == plain + lora_bytes
    trainable = [p for p in m.actor.parameters() if not p.stop_gradient]
    assert trainable and {id(p) for p in trainable} == {id(p) for p in trainer.actor_optimizer._parameter_list}
    before = {k: v.numpy().copy() for k, v in m.actor.state_dict().items()}
    critic_before = {k: v.numpy().copy() for k, v in m.critic.state_dict().items()}
    trainer.train()
    r = [h["reward"] / 3.0 for h in trainer.history]
    print("LoRA PPO target-token fraction per step:", np.round(r, 3).tolist())
    assert len(r) == 10 and np.isfinite(r).all()
    start, end = np.mean(r[:2]), np.mean(r[-4:])
    assert end > start + 0.04 and end > 1.25 * start, (start, end)
    assert trainer.history[0]["kl_divergence"] == pytest.approx(0.0, abs=1e-6)  # reference == initial actor
    assert trainer.history[1]["kl_divergence"] > 1e-3  # the rollout ran with the adapters on
    moved = [k for k, v in m.actor.state_dict().items() if float(np.abs(v.numpy() - before[k]).max()) > 0]
    assert moved and all(".lora_" in k for k in moved), moved[:4]
    moved = [k for k, v in m.critic.state_dict().items() if float(np.abs(v.numpy() - critic_before[k]).max()) > 0]
    assert moved and all(".lora_" in k or "score_head" in k for k in moved), moved[:4]
    policy = tmp_path / "ppo" / "policy"
    assert (policy / "lora_model_state.pdparams").is_file() and (policy / "model.safetensors").is_file()


def test_lora_ppo_resume_reloads_the_adapters(tiny_model_dir, prompts, tmp_path):
    from alignment.ppo.rewards import TokenSetReward
    from alignment.ppo.run_ppo import build_trainer

    reward = TokenSetReward(range(100, 164), scale=3.0)
    kw = dict(max_steps=2, per_device_prompt_batch_size=2, per_device_train_batch_size=4, max_dec_len=4,
              save_strategy="steps", save_steps=1)
    full = build_trainer(*_ppo(tiny_model_dir, prompts, tmp_path / "a", **kw), reward_fn=reward)
    full.train()
    import shutil

    shutil.rmtree(tmp_path / "a" / "checkpoint-2")
    resumed = build_trainer(*_ppo(tiny_model_dir, prompts, tmp_path / "a", resume_from_checkpoint="latest", **kw),
                            reward_fn=reward)
    resumed.train()
    a, b = full.m.actor.state_dict(), resumed.m.actor.state_dict()
    assert max(float(np.abs(a[k].numpy() - b[k].numpy()).max()) for k in a) <= 1e-6
    assert resumed.history[-1]["reward"] == pytest.approx(full.history[-1]["reward"], abs=1e-6)


# ------------------------------------------------------------------------------------------ precision
def test_bf16_and_fp16_need_a_gpu_here(tiny_model_dir, tmp_path):
    from alignment.training.precision import amp_device

    if amp_device() is not None:
        pytest.skip("an accelerator is present: bf16 / fp16 run there (this checks the CPU-only error)")
    from alignment.dpo.run_dpo import main as dpo
    from alignment.ppo.config import PPOArguments
    from alignment.sft.run_sft import main as sft
    from alignment.utils.cli import ArgumentError

    for flag, dtype in (("--bf16", "bfloat16"), ("--fp16", "float16")):
        for main, config in ((sft, "sft_argument.json"), (dpo, "dpo_argument.json")):
            with pytest.raises(ArgumentError, match=f"{flag} true needs a GPU: .*{dtype} matmul kernels are missing"):
                main([f"config/llama/tiny/{config}", "--model_name_or_path", str(tiny_model_dir),
                      "--output_dir", str(tmp_path / "x"), flag, "true"])
        with pytest.raises(ValueError, match=f"{flag} true needs a GPU"):
            PPOArguments(output_dir=str(tmp_path / "p"), **{flag[2:]: True})


def test_one_ppo_step_with_fp16_forced_on_runs_the_mixed_precision_plumbing(tiny_model_dir, prompts, tmp_path,
                                                                             monkeypatch):
    """The GPU check monkeypatched: PPOArguments accept fp16, the trainer runs rollout, experience and update under
    paddle.amp.auto_cast (a no-op on a CPU place) and steps the actor's and the critic's optimizer through their
    own GradScaler (disabled on a CPU place); fused operators off; the step's results are float32 and finite."""
    import alignment.training.precision as precision
    from alignment.ops import fusemt_requested
    from alignment.ppo.rewards import TokenSetReward
    from alignment.ppo.run_ppo import build_trainer

    monkeypatch.setattr(precision, "amp_device", lambda: "gpu")
    monkeypatch.setattr(paddle.amp, "is_float16_supported", lambda *a: True)
    casts = []
    real_auto_cast = paddle.amp.auto_cast

    def auto_cast(*a, **kw):
        if kw.get("enable", a[0] if a else True) and "dtype" in kw:  # not PaddleNLP's own auto_cast(False) blocks
            casts.append((kw["dtype"], kw.get("level")))
        return real_auto_cast(*a, **kw)

    monkeypatch.setattr(paddle.amp, "auto_cast", auto_cast)
    model, data, args = _ppo(tiny_model_dir, prompts, tmp_path / "fp16", max_steps=1, per_device_prompt_batch_size=4,
                             per_device_train_batch_size=4, max_dec_len=4, fp16=True, fp16_opt_level="O1")
    trainer = build_trainer(model, data, args, reward_fn=TokenSetReward(range(100, 164), scale=3.0))
    p = trainer.precision
    assert (p.dtype, p.level, p.enabled) == ("float16", "O1", True) and not fusemt_requested()
    assert trainer.updater.precision is p
    calls = {"actor": [], "critic": []}
    for name, opt in (("actor", trainer.actor_optimizer), ("critic", trainer.critic_optimizer)):
        scaler = p.scaler(opt)
        assert isinstance(scaler, paddle.amp.GradScaler)
        for method in ("scale", "step", "update"):
            real = getattr(scaler, method)
            monkeypatch.setattr(scaler, method, lambda *a, _r=real, _m=method, _n=name, **k: (calls[_n].append(_m),
                                                                                               _r(*a, **k))[1])
    seen = {}
    real_update = trainer.updater.update

    def update(exp, ptx=None):
        seen.update(old=exp.old_logps, ref=exp.ref_logps, values=exp.values, adv=exp.advantages, ret=exp.returns)
        return real_update(exp, ptx)

    trainer.updater.update = update
    trainer.train()
    # rollout + experience + (2 actor + 2 critic micro-batch forwards) = 6 auto_cast entries, all fp16 O1
    assert len(casts) >= 6 and set(casts) == {("float16", "O1")}, casts
    for name in ("actor", "critic"):  # 8 rows / 4 per micro-batch: 2 scaled backwards, 2 steps, 2 scale updates
        assert calls[name] == ["scale", "step", "update"] * 2, (name, calls[name])
    for key, t in seen.items():
        assert t.dtype == paddle.float32 and np.isfinite(t.numpy()).all(), key
    assert np.isfinite([trainer.history[-1][k] for k in ("reward", "actor_loss", "critic_loss")]).all()
    with pytest.raises(ValueError, match="runs in one process or data parallel"):
        from alignment.ppo.config import PPOArguments

        PPOArguments(output_dir=str(tmp_path / "tp"), bf16=True, tensor_parallel_degree=2)

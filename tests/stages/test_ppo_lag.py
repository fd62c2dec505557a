"""PPO-Lagrangian (Safe RLHF, issue 11) and dense token-level rewards in the PPO stage: on a task where reward
and cost conflict the Lagrangian keeps the mean episode cost under the threshold while the same run without it
exceeds it, λ rises then falls; the cost critic trains while reward / cost / reference models stay frozen;
checkpoints carry λ and the cost critic; dense per-token rewards feed GAE directly and learn faster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.ppo.config import DataArgument, ModelArgument, PPOArguments
from alignment.ppo.rewards import TokenSetReward
from alignment.ppo.run_ppo import build_trainer

TARGET = range(100, 164)  # an eighth of the vocabulary
WORDS = "apple banana cherry dog egg fish grape house ice juice kite lemon moon nest orange pear".split()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("lag_data")
    rng = np.random.default_rng(0)
    with open(d / "prompts.jsonl", "w") as f:
        for i in range(48):
            f.write(json.dumps({"prompt": f"{' '.join(rng.choice(WORDS, 4))} {i}"}) + "\n")
    return d / "prompts.jsonl"


@pytest.fixture(scope="module")
def score_dirs(tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    """A reward model and a cost model: the tiny LM with fresh (seeded) score heads."""
    from alignment.models.score_model import ScoreModel

    out = {}
    for seed, kind in ((3, "reward"), (4, "cost")):
        paddle.seed(seed)
        path = tmp_path_factory.mktemp(kind) / kind
        ScoreModel.from_pretrained(str(tiny_model_dir), score_type=kind, init_score_head=True).save_pretrained(str(path))
        tiny_tokenizer.save_pretrained(str(path))
        out[kind] = path
    return out


def _args(out, prompts, model_dir, *, reward=None, cost=None, **kw):
    model = ModelArgument(actor_model_name_or_path=str(model_dir), reward_critic_model_name_or_path=str(model_dir),
                          reward_model_name_or_path=str(reward) if reward else None,
                          cost_model_name_or_path=str(cost) if cost else None)
    data = DataArgument(train_datasets=f"json:1.0:{prompts}", max_length=64)
    base = dict(output_dir=str(out), max_steps=2, per_device_prompt_batch_size=2, per_device_train_batch_size=8,
                num_return_sequences=4, max_dec_len=8, learning_rate=1e-2, lr_scheduler_type="constant",
                report_to=["none"], disable_tqdm=True, save_strategy="no", seed=1, kl_coeff=0.05,
                normalize_advantage=True, clip_range_score=10.0)
    base.update(kw)
    return model, data, PPOArguments(**base)


def _history(trainer, key):
    return [h[key] for h in trainer.history if key in h]


def _params(model):
    from alignment.parallel import unwrap_model

    return {k: v.numpy().copy() for k, v in unwrap_model(model).state_dict().items()}


def test_lagrangian_keeps_cost_under_threshold_where_plain_exceeds_it(tmp_path, prompts, tiny_model_dir):
    """reward = 3 x share of TARGET tokens; cost = 2 x that share - 0.1 (> 0, unsafe, above a 5% share);
    threshold 0. Critic-free GRPO estimators for both reward and cost, same seed, 16 steps."""
    reward = TokenSetReward(TARGET, scale=3.0)
    cost = TokenSetReward(TARGET, scale=2.0, offset=-0.1)
    lag_kw = dict(rl_algorithm="grpo", max_steps=16, threshold=0.0, lambda_init=1.0, lambda_lr=2.0,
                  episode_cost_window_size=16)
    runs = {}
    for name, cost_fn in (("lag", cost), ("plain", None)):
        model, data, args = _args(tmp_path / name, prompts, tiny_model_dir, **lag_kw)
        trainer = build_trainer(model, data, args, reward_fn=reward, cost_fn=cost_fn)
        trainer.train()
        runs[name] = trainer
    lag = runs["lag"]
    lag_cost = _history(lag, "episode_cost")
    plain_cost = [2.0 / 3.0 * r - 0.1 for r in _history(runs["plain"], "reward")]  # the same cost, computed
    lam = _history(lag, "lambda")
    print(f"last-5 mean cost: ppo-lag {np.mean(lag_cost[-5:]):.3f}, plain {np.mean(plain_cost[-5:]):.3f}; "
          f"lambda {[round(x, 2) for x in lam]}")
    assert np.mean(lag_cost[-5:]) <= 0.0 < np.mean(plain_cost[-5:])
    peak = int(np.argmax(lam))
    assert lam[peak] > 2.0 * lam[0] and lam[-1] < lam[peak]  # λ rose while the cost was high, then fell
    rec = lag.history[-1]
    for key in ("lambda", "log_lambda", "episode_cost", "episode_cost_window", "unsafe_share", "reward"):
        assert key in rec, key
    assert 0.0 <= rec["unsafe_share"] <= 1.0
    assert (tmp_path / "lag" / "ppo_curves.png").exists()
    logged = [json.loads(x) for x in (tmp_path / "lag" / "metrics.jsonl").read_text().splitlines()]
    assert sum("lambda" in r for r in logged) == 16


def test_cost_critic_trains_frozen_models_do_not_and_resume_keeps_lambda(tmp_path, prompts, tiny_model_dir,
                                                                         score_dirs):
    out = tmp_path / "run"
    model, data, args = _args(out, prompts, tiny_model_dir, reward=score_dirs["reward"], cost=score_dirs["cost"],
                              max_steps=2, save_strategy="steps", save_steps=1, threshold=-1.0, lambda_lr=0.5)
    trainer = build_trainer(model, data, args)
    m = trainer.m
    assert m.cost_model is not None and m.cost_critic is not None and m.critic is not None
    before = {role: _params(getattr(m, role)) for role in ("cost_critic", "critic", "cost_model", "reward_model",
                                                            "reference")}
    trainer.train()
    for role, changed in (("cost_critic", True), ("critic", True), ("cost_model", False), ("reward_model", False),
                          ("reference", False)):
        after = _params(getattr(m, role))
        diff = max(float(np.abs(after[k] - before[role][k]).max()) for k in after)
        assert (diff > 0) == changed, (role, diff)
    rec = trainer.history[-1]
    assert "cost_critic_loss" in rec and "critic_loss" in rec and rec["lambda"] > 1.0  # cost > threshold = -1
    for name in ("policy", "value", "cost_value"):
        assert (out / name / "config.json").exists(), name

    # the checkpoint of step 1 holds λ and the cost critic; a resume restores both
    ckpt = out / "checkpoint-1"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["lagrange"]["steps"] == 1 and len(state["lagrange"]["window"]) == 8
    assert (ckpt / "cost_value" / "config.json").exists() and (ckpt / "cost_critic_optimizer.safetensors").exists()
    model, data, args = _args(out, prompts, tiny_model_dir, reward=score_dirs["reward"], cost=score_dirs["cost"],
                              max_steps=2, threshold=-1.0, lambda_lr=0.5, resume_from_checkpoint=str(ckpt))
    resumed = build_trainer(model, data, args)
    from alignment.ppo import checkpoint

    checkpoint.load(resumed, str(ckpt))
    assert resumed.lagrange.state_dict() == state["lagrange"]
    from alignment.models.loading import read_weights

    saved = read_weights(str(ckpt / "cost_value"))
    now = _params(resumed.m.cost_critic)
    assert all(np.allclose(now[k], np.asarray(saved[k])) for k in now if k in saved)


def test_dense_token_rewards_feed_gae_directly():
    """reward_granularity token: token rewards = clip(dense) - kl_coeff x KL per token; GAE of a loop reference."""
    from alignment.ppo.advantages import compute_advantages
    from alignment.rollout import Experience

    rng = np.random.default_rng(0)
    n, r = 3, 6
    mask = np.zeros((n, r), "float32")
    for b, length in enumerate((6, 4, 2)):
        mask[b, :length] = 1
    old, ref = rng.normal(size=(n, r)).astype("float32"), rng.normal(size=(n, r)).astype("float32")
    values = rng.normal(size=(n, r)).astype("float32") * mask
    dense = rng.normal(size=(n, r)).astype("float32") * 3 * mask
    t = paddle.to_tensor
    exp = Experience(sequences=t(np.zeros((n, 2 + r), "int64")), attention_mask=t(np.ones((n, 2 + r), "int64")),
                     position_ids=t(np.zeros((n, 2 + r), "int64")), response_mask=t(mask), prompt_length=2,
                     group_ids=t(np.arange(n)), old_logps=t(old * mask), ref_logps=t(ref * mask),
                     scores=t(dense.sum(-1)), values=t(values), dense_rewards=t(dense))
    exp, _ = compute_advantages(exp, estimator="gae", kl_coeff=0.1, clip_range_score=2.0, gamma=0.9, lam=0.8)
    adv = np.zeros((n, r))
    for b in range(n):
        length = int(mask[b].sum())
        rewards = [min(max(dense[b, k], -2.0), 2.0) - 0.1 * (old[b, k] - ref[b, k]) for k in range(length)]
        last = 0.0
        for k in reversed(range(length)):
            next_v = values[b, k + 1] if k + 1 < length else 0.0
            last = rewards[k] + 0.9 * next_v - values[b, k] + 0.9 * 0.8 * last
            adv[b, k] = last
    np.testing.assert_allclose(exp.advantages.numpy(), adv, atol=1e-5)


def test_dense_rewards_learn_faster_than_the_end_score(tmp_path, prompts, tiny_model_dir):
    """The same reward (share of TARGET tokens) given per token vs once at the end, same seed, PPO with a critic:
    steps until the mean share of the last 2 steps reaches 0.25 (the tiny model starts near 0.1)."""
    steps = {}
    for granularity in ("token", "sequence"):
        model, data, args = _args(tmp_path / granularity, prompts, tiny_model_dir, max_steps=12,
                                  reward_granularity=granularity, critic_learning_rate=5e-3, kl_coeff=0.02)
        reward = TokenSetReward(TARGET, scale=1.0, per_token=granularity == "token")
        trainer = build_trainer(model, data, args, reward_fn=reward)
        trainer.train()
        share = _history(trainer, "reward")
        reached = [i + 1 for i in range(1, len(share)) if np.mean(share[i - 1:i + 1]) >= 0.25]
        steps[granularity] = (reached[0] if reached else 99, [round(x, 2) for x in share])
    print("steps to a 0.25 target share:", steps)
    assert steps["token"][0] < steps["sequence"][0], steps


def test_lagrangian_and_granularity_errors_name_the_field(tmp_path, prompts, tiny_model_dir):
    for kw, message in ((dict(lambda_init=0.0), "lambda_init must be > 0"),
                        (dict(lambda_init=2.0, lambda_max=1.0), "lambda_max"),
                        (dict(episode_cost_window_size=0), "episode_cost_window_size must be > 0"),
                        (dict(reward_granularity="word"), "reward_granularity='word' is not valid; allowed values: "
                                                           "sequence, token"),
                        (dict(reward_granularity="token", rl_algorithm="grpo"), "reward_granularity='token' needs")):
        with pytest.raises(ValueError, match=message):
            _args(tmp_path, prompts, tiny_model_dir, **kw)


def test_tiny_ppo_lag_config_parses_with_the_lagrangian_fields():
    from alignment.utils.cli import parse_args

    repo = Path(__file__).resolve().parents[2]
    model, _, args = parse_args([ModelArgument, DataArgument, PPOArguments],
                                [str(repo / "config/llama/tiny/ppo_lag_argument.json")])
    assert model.cost_model_name_or_path == "checkpoints/tiny-cost"
    assert (args.threshold, args.lambda_init, args.episode_cost_window_size) == (0.0, 1.0, 32)
    full = json.loads((repo / "config/llama/ppo_lag_argument.json").read_text())
    assert set(full) <= {f for cls in (ModelArgument, DataArgument, PPOArguments) for f in cls.__dataclass_fields__}

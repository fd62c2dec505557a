"""alignment.training.precision.MixedPrecision, the bf16 / fp16 choice of the PPO stage, in its CPU-testable parts:
which dtype each phase computes in, float32 log-probs / values / advantages / losses from half-precision forwards,
one GradScaler per optimizer under fp16 with the non-finite guard still seeing inf/nan gradients, O2's decorate
with fp32 master weights. (auto_cast and GradScaler are inactive on a CPU place; the GPU path is not run here.)"""

from __future__ import annotations

import warnings

import numpy as np
import paddle
import pytest

from alignment.training.precision import FLOAT32_RESULTS, PHASES, MixedPrecision


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("level", ["O1", "O2"])
def test_each_phase_dtype(dtype, level):
    p = MixedPrecision(dtype, level)
    assert p.enabled == (dtype != "float32")
    assert [p.phase_dtype(ph) for ph in PHASES] == [dtype] * 3  # rollout, experience, update forwards
    assert [p.phase_dtype(r) for r in FLOAT32_RESULTS] == ["float32"] * len(FLOAT32_RESULTS)
    assert p.weight_dtype() == (dtype if level == "O2" else "float32")
    with pytest.raises(ValueError, match="unknown phase 'loss'"):
        p.phase_dtype("loss")


def test_from_args_and_bad_values(monkeypatch):
    from types import SimpleNamespace as NS

    assert MixedPrecision.from_args(NS(bf16=False, fp16=False)).dtype == "float32"
    import alignment.training.precision as precision

    monkeypatch.setattr(precision, "amp_device", lambda: "gpu")
    monkeypatch.setattr(paddle.amp, "is_float16_supported", lambda *a: True)
    p = MixedPrecision.from_args(NS(bf16=False, fp16=True, fp16_opt_level="O2"))
    assert (p.dtype, p.level) == ("float16", "O2")
    assert "dynamic loss scaling" in p.describe() and "float32" in p.describe()
    with pytest.raises(ValueError, match="exclusive"):
        MixedPrecision.from_args(NS(bf16=True, fp16=True))
    with pytest.raises(ValueError, match="fp16_opt_level='O3'"):
        MixedPrecision("bfloat16", "O3")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        MixedPrecision("int8")


def test_float32_has_no_autocast_and_no_scaler():
    p = MixedPrecision()
    assert not isinstance(p.autocast(), type(paddle.amp.auto_cast()))
    opt = paddle.optimizer.SGD(parameters=paddle.nn.Linear(2, 2).parameters())
    p.add_optimizers(actor=opt)
    assert p.scalers == {}


class _HalfLM(paddle.nn.Layer):
    """Stands for a forward under auto_cast: logits / scores come out in bfloat16."""

    def __init__(self, vocab=11, score=False):
        super().__init__()
        self.vocab, self.score = vocab, score

    def forward(self, input_ids, attention_mask=None, position_ids=None, return_dict=True):
        paddle.seed(0)
        out = paddle.randn([*input_ids.shape, 1 if self.score else self.vocab]) * 3
        from types import SimpleNamespace

        return SimpleNamespace(**{"scores" if self.score else "logits": out.astype("bfloat16")})


def test_logps_values_advantages_are_float32_from_half_forwards():
    from alignment.ops import use_fusemt
    from alignment.ppo.advantages import compute_advantages
    from alignment.rollout import Experience, response_logps, response_values
    from alignment.training.precision import check_float32

    n, p, r = 4, 3, 5
    seq = paddle.to_tensor(np.random.default_rng(0).integers(0, 11, (n, p + r)))
    mask = paddle.ones([n, p + r], dtype="int64")
    pos = paddle.arange(p + r).unsqueeze(0).expand([n, p + r])
    resp = paddle.ones([n, r], dtype="float32")
    with use_fusemt(False):  # a bf16 / fp16 PPO run takes the pure-Paddle paths
        old = response_logps(_HalfLM(), seq, mask, pos, p, resp)
        values = response_values(_HalfLM(score=True), seq, mask, pos, p, resp)
    check_float32(old_logps=old, values=values)
    want = paddle.nn.functional.log_softmax(_HalfLM()(seq).logits.astype("float32"), -1)
    want = paddle.take_along_axis(want[:, p - 1:p - 1 + r], seq[:, p:].unsqueeze(-1), -1).squeeze(-1)
    np.testing.assert_allclose(old.numpy(), want.numpy(), atol=1e-5)
    exp = Experience(sequences=seq, attention_mask=mask, position_ids=pos, response_mask=resp, prompt_length=p,
                     group_ids=paddle.arange(n), old_logps=old, ref_logps=old * 0.9,
                     scores=paddle.to_tensor([1.0, 0.0, 2.0, 0.5]), values=values)
    exp, _ = compute_advantages(exp, estimator="gae", kl_coeff=0.1, clip_range_score=10.0, normalize_advantage=True)
    check_float32(advantages=exp.advantages, returns=exp.returns, token_rewards=exp.token_rewards)
    # a loss that is not float32 is refused before its backward
    with pytest.raises(TypeError, match="losses are computed in float32"):
        MixedPrecision("bfloat16").backward(paddle.ones([1]).astype("bfloat16"), None)
    with pytest.raises(TypeError, match="expected float32"):
        check_float32(old_logps=old.astype("bfloat16"))


def _opt(seed):
    paddle.seed(seed)
    layer = paddle.nn.Linear(3, 2)
    return layer, paddle.optimizer.AdamW(learning_rate=0.1, parameters=layer.parameters())


def test_fp16_gives_each_optimizer_a_dynamic_grad_scaler_and_the_guard_sees_nonfinite_gradients():
    from alignment.utils.guards import NonFiniteGuard, guard_optimizer

    p = MixedPrecision("float16")
    (actor, a_opt), (critic, c_opt) = _opt(0), _opt(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "AmpScaler can only be enabled on CUDAPlace ..." on this CPU build
        p.add_optimizers(actor=a_opt, critic=c_opt, cost_critic=None)
    assert len(p.scalers) == 2 and p.scaler(a_opt) is not p.scaler(c_opt)
    for opt in (a_opt, c_opt):
        s = p.scaler(opt)
        assert isinstance(s, paddle.amp.GradScaler)
        assert s._init_loss_scaling == 2.0 ** 15 or not s._enable  # disabled (no effect) on a CPU place
    assert MixedPrecision("bfloat16").scalers == {}  # bf16 needs no loss scaling
    bf = MixedPrecision("bfloat16")
    bf.add_optimizers(actor=a_opt)
    assert bf.scalers == {}

    guard = NonFiniteGuard(limit=0)
    guard_optimizer(a_opt, guard, lambda: 1, name="actor")
    x = paddle.ones([4, 3])
    before = actor.weight.numpy().copy()
    loss = (actor(x) * float("nan")).mean()
    p.backward(loss, a_opt)
    p.step(a_opt)  # GradScaler.step -> unscale -> the guarded optimizer.step: skipped
    a_opt.clear_grad()
    assert guard.skipped == 1 and np.array_equal(actor.weight.numpy(), before)
    p.backward(actor(x).mean(), a_opt)
    p.step(a_opt)
    assert guard.skipped == 1 and not np.array_equal(actor.weight.numpy(), before)


def test_o2_decorates_trained_models_with_fp32_master_weights(monkeypatch):
    calls = []

    def decorate(models, optimizers=None, **kw):
        calls.append((models, optimizers, kw))
        return (models, optimizers) if optimizers is not None else models

    monkeypatch.setattr(paddle.amp, "decorate", decorate)
    (actor, a_opt), (critic, c_opt) = _opt(0), _opt(1)
    reference, paramless = paddle.nn.Linear(3, 2), paddle.nn.Layer()  # paramless: AdaptersOff (LoRA reference)
    pairs = [(actor, a_opt), (critic, c_opt), (None, None)]
    assert MixedPrecision("bfloat16", "O1").decorate(pairs, frozen=(reference,)) == pairs and not calls
    out = MixedPrecision("bfloat16", "O2").decorate(pairs, frozen=(reference, paramless, None))
    assert out == pairs
    assert [(c[0], c[1]) for c in calls] == [(actor, a_opt), (critic, c_opt), (reference, None)]
    for _, opt, kw in calls:
        assert kw["level"] == "O2" and kw["dtype"] == "bfloat16" and kw["save_dtype"] == "float32"
        assert kw.get("master_weight") is (True if opt is not None else None)

"""PPO / GRPO through the chunked LM head (``linear_completion_logps(..., with_entropy=True, offset=P - 1)``,
arXiv 2410.10989): the op's log-probs and entropies and their gradients against the full-logits reference,
``make_experience``'s old / reference log-probs and one actor update (policy loss, KL, entropy bonus,
high-entropy mask, ptx) with ``use_fusemt`` on (chunked head) vs off (logits), and proof the chunked head ran.

Tolerance 1e-5 absolute (float32); the op is checked against the reference evaluated in float64.
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from alignment import ops
from alignment.ops import linear_logps
from alignment.ops.linear_logps import linear_completion_logps, linear_completion_logps_reference

TOL = 1e-5
TEMPERATURE = 0.7


@pytest.fixture
def head_calls(monkeypatch):
    """Counts the chunked LM head's calls (and whether each asked for the entropy)."""
    calls = []
    original = linear_logps.linear_completion_logps

    def counted(*a, **k):
        calls.append(bool(k.get("with_entropy", False)))
        return original(*a, **k)

    monkeypatch.setattr(linear_logps, "linear_completion_logps", counted)
    return calls


# ----------------------------------------------------------------------------------------------------- the op
def _op_run(fn, hidden, weight, labels, g_logp, g_ent):
    h, w = hidden.detach().clone(), weight.detach().clone()
    h.stop_gradient = w.stop_gradient = False
    logps, entropy = fn(h, w)
    valid = (labels >= 0).astype(logps.dtype)
    loss = 0.0
    if g_logp is not None:
        loss = loss + (logps * valid * g_logp.astype(logps.dtype)).sum()
    if g_ent is not None:
        loss = loss + (entropy * valid * g_ent.astype(entropy.dtype)).sum()
    loss.backward()
    return (logps * valid).numpy(), (entropy * valid).numpy(), h.grad.numpy(), w.grad.numpy()


@pytest.mark.parametrize("transpose_y", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("grads", ["both", "logps_only", "entropy_only"])
def test_chunked_logps_entropy_and_grads_match_full_logits(ops_library, transpose_y, grads):
    paddle.seed(11)
    n, length, hid, vocab, p = 3, 13, 24, 389, 5  # response window: positions p - 1 .. length - 2
    hidden = paddle.randn([n, length, hid])
    weight = paddle.randn([vocab, hid] if transpose_y else [hid, vocab]) * 0.5
    labels = paddle.randint(0, vocab, [n, length - p])
    labels[0, 5:] = -100  # right padding after an EOS
    labels[2, 1] = -100  # a masked token inside the window
    g_logp = paddle.randn(labels.shape) if grads != "entropy_only" else None
    g_ent = paddle.randn(labels.shape) if grads != "logps_only" else None
    kw = dict(transpose_y=transpose_y, temperature=TEMPERATURE, with_entropy=True, offset=p - 1)
    chunked = _op_run(lambda h, w: linear_completion_logps(h, w, labels, chunk_rows=4, **kw),
                      hidden, weight, labels, g_logp, g_ent)
    ref = _op_run(lambda h, w: linear_completion_logps_reference(h.astype("float64"), w.astype("float64"), labels,
                                                                 **kw), hidden, weight, labels, g_logp, g_ent)
    assert np.abs(chunked[3]).max() > 1e-3  # the weight's gradient is not trivially zero
    for name, a, b in zip(("logps", "entropy", "d hidden", "d weight"), chunked, ref):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=name)
    # rows outside the window and masked positions get no gradient
    np.testing.assert_array_equal(chunked[2][:, : p - 1], 0.0)
    np.testing.assert_array_equal(chunked[2][0, p - 1 + 5:], 0.0)


def test_chunked_entropy_is_the_softmax_entropy_at_temperature(ops_library):
    paddle.seed(2)
    hidden, weight = paddle.randn([2, 6, 8]), paddle.randn([8, 50])
    labels = paddle.randint(0, 50, [2, 4])
    _, entropy = linear_completion_logps(hidden, weight, labels, temperature=TEMPERATURE, with_entropy=True, offset=2)
    z = (paddle.matmul(hidden, weight)[:, 2:6] / TEMPERATURE).astype("float64")
    p = paddle.nn.functional.softmax(z, -1)
    np.testing.assert_allclose(entropy.numpy(), -(p * paddle.log(p)).sum(-1).numpy(), atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------ models and batches
@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """The tiny Llama (untied head), a second one with other weights (the reference) and a tied-head variant."""
    from paddlenlp.transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    actor = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    config = LlamaConfig.from_pretrained(str(tiny_model_dir))
    paddle.seed(7)
    reference = LlamaForCausalLM(config)
    tied_config = LlamaConfig.from_pretrained(str(tiny_model_dir))
    tied_config.tie_word_embeddings = True
    paddle.seed(8)
    tied = LlamaForCausalLM(tied_config)
    assert tied.lm_head.transpose_y and not actor.lm_head.transpose_y
    return {"untied": actor, "reference": reference, "tied": tied}


def _rollout():
    """4 rows, prompt width P = 5 with left pads, responses of different lengths then right pads."""
    from alignment.rollout import RolloutBatch, make_position_ids

    rng = np.random.default_rng(0)
    p, r = 5, 6
    seq = rng.integers(4, 500, (4, p + r))
    attn = np.ones_like(seq)
    attn[1, :2] = attn[3, :1] = 0  # left pads
    resp = np.ones((4, r), dtype="int64")
    for row, length in ((0, 3), (2, 5), (3, 1)):  # stopped early (EOS at length - 1)
        resp[row, length:] = 0
        attn[row, p + length:] = 0
    seq = np.where(attn == 1, seq, 0)
    mask = paddle.to_tensor(attn, dtype="int64")
    return RolloutBatch(sequences=paddle.to_tensor(seq, dtype="int64"), attention_mask=mask,
                        position_ids=make_position_ids(mask), response_mask=paddle.to_tensor(resp), prompt_length=p,
                        group_ids=paddle.to_tensor([0, 0, 1, 1], dtype="int64"),
                        ended_with_eos=paddle.to_tensor([True, False, True, True]))


def _experience(actor, reference, fused):
    from alignment.rollout import make_experience

    with ops.use_fusemt(fused):
        return make_experience(_rollout(), actor=actor, reference=reference, temperature=TEMPERATURE,
                               micro_batch_size=3, scores=paddle.to_tensor([1.0, -0.5, 0.2, 0.8]))


@pytest.mark.parametrize("head", ["untied", "tied"])
def test_make_experience_logps_equal_with_and_without_the_chunked_head(ops_library, models, head, head_calls):
    actor = models[head]
    on = _experience(actor, models["reference"], True)
    assert len(head_calls) == 4  # actor and reference, 2 micro-batches each (3 + 1 rows)
    off = _experience(actor, models["reference"], False)
    assert len(head_calls) == 4  # use_fusemt off: the logits path
    for name in ("old_logps", "ref_logps"):
        a, b = getattr(on, name).numpy(), getattr(off, name).numpy()
        assert np.abs(b).max() > 0.1, name
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0, err_msg=name)
    np.testing.assert_array_equal(on.old_logps.numpy()[on.response_mask.numpy() == 0], 0.0)
    assert np.abs(on.old_logps.numpy() - on.ref_logps.numpy()).max() > 0.1  # two different models


def test_a_reference_without_the_chunked_head_keeps_the_logits_path(ops_library, models, head_calls):
    """A reference the chunked head does not apply to (here: any layer wrapping the LM's forward) is scored
    through its own forward and the logits, the actor through the chunked head; results unchanged."""

    class Wrapped(paddle.nn.Layer):
        def __init__(self, lm):
            super().__init__()
            self.inner = lm

        def forward(self, **kw):
            return self.inner(**kw)

    on = _experience(models["untied"], Wrapped(models["reference"]), True)
    assert len(head_calls) == 2  # the actor's 2 micro-batches only
    off = _experience(models["untied"], models["reference"], False)
    np.testing.assert_allclose(on.ref_logps.numpy(), off.ref_logps.numpy(), atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------- the update
def _ptx_batch():
    rng = np.random.default_rng(1)
    ids = paddle.to_tensor(rng.integers(4, 500, (3, 9)), dtype="int64")
    mask = paddle.ones([3, 9], dtype="int64")
    mask[2, 6:] = 0  # right padding
    mask[1, :2] = 0  # left padding: no position_ids given, so both paths use the model's default 0 .. L-1
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt
    labels[2, 6:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _updater(actor):
    from alignment.ppo.updates import LossSettings, PPOUpdater

    s = LossSettings(temperature=TEMPERATURE, kl_loss_coeff=0.3, entropy_coeff=0.5, top_entropy_quantile=0.5,
                     ptx_coeff=0.7, clip_range_ratio=0.1)
    return PPOUpdater(actor, paddle.optimizer.SGD(learning_rate=0.1, parameters=actor.parameters()), settings=s,
                      micro_batch_size=4)


def _with_advantages(exp):
    rng = np.random.default_rng(3)
    mask = exp.response_mask.numpy()
    # old log-probs off the current policy: ratios != 1, some clipped
    old = exp.old_logps.numpy() + rng.normal(0, 0.2, mask.shape).astype("float32") * mask
    return exp.replace(old_logps=paddle.to_tensor(old),
                       advantages=paddle.to_tensor(rng.normal(0, 1, mask.shape).astype("float32") * mask))


def _loss_and_grads(updater, actor, exp, ptx_batch, fused):
    from alignment.ppo.updates import ptx_loss

    actor.train()
    actor.clear_gradients()
    with ops.use_fusemt(fused):
        loss, metrics = updater.actor_loss(exp)
        ptx = ptx_loss(actor, ptx_batch)
        (loss + updater.s.ptx_coeff * ptx).backward()
    grads = {name: p.grad.numpy().copy() for name, p in actor.named_parameters() if p.grad is not None}
    actor.clear_gradients()
    return float(loss), float(ptx), {k: float(v) for k, v in metrics.items()}, grads


@pytest.mark.parametrize("head", ["untied", "tied"])
def test_one_actor_update_equal_with_and_without_the_chunked_head(ops_library, models, head, head_calls):
    """Policy loss + KL + entropy bonus, under the top-entropy token mask, and the ptx loss: loss, metrics and
    every parameter gradient through the chunked head equal the logits path."""
    actor = models[head]
    exp = _with_advantages(_experience(actor, models["reference"], False))
    updater = _updater(actor)
    before = len(head_calls)
    on = _loss_and_grads(updater, actor, exp, _ptx_batch(), True)
    assert head_calls[before:] == [True, False]  # actor loss (with entropy) then ptx, both chunked
    off = _loss_and_grads(updater, actor, exp, _ptx_batch(), False)
    assert len(head_calls) == before + 2
    (loss_on, ptx_on, m_on, g_on), (loss_off, ptx_off, m_off, g_off) = on, off
    assert abs(loss_on - loss_off) <= TOL and abs(ptx_on - ptx_off) <= TOL, (loss_on, loss_off, ptx_on, ptx_off)
    assert sorted(m_on) == sorted(m_off) and {"kl_loss", "entropy", "pg_loss"} <= set(m_on)
    for key in m_on:
        assert abs(m_on[key] - m_off[key]) <= TOL, (key, m_on[key], m_off[key])
    assert 0 < m_on["actor_clipfrac"] < 1  # the clip is active on some tokens, not all
    head_weight = next(name for name, p in actor.named_parameters() if p is actor.lm_head.weight)
    assert sorted(g_on) == sorted(g_off) and head_weight in g_on
    for name in g_off:
        assert np.abs(g_off[name]).max() > 0, name
        np.testing.assert_allclose(g_on[name], g_off[name], atol=TOL, rtol=0, err_msg=name)


def test_entropy_terms_change_the_chunked_update(ops_library, models):
    """The entropy bonus's gradient and the high-entropy mask both reach the chunked path's result (so the
    comparison above cannot pass with the entropy ignored)."""
    actor = models["untied"]
    exp = _with_advantages(_experience(actor, models["reference"], False))
    full = _loss_and_grads(_updater(actor), actor, exp, _ptx_batch(), True)
    for change in ({"entropy_coeff": 0.0}, {"top_entropy_quantile": 1.0}):
        updater = _updater(actor)
        for key, value in change.items():
            setattr(updater.s, key, value)
        other = _loss_and_grads(updater, actor, exp, _ptx_batch(), True)
        assert abs(full[0] - other[0]) > 1e-4, change
        assert np.abs(full[3]["lm_head.weight"] - other[3]["lm_head.weight"]).max() > 1e-4, change


def test_update_phase_runs_the_chunked_head(ops_library, models, head_calls):
    """``PPOUpdater.update`` (actor pass + ptx, one optimizer step) takes the chunked head for both losses and
    logs the same metrics as the logits path; the stepped weights agree."""
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    base = models["untied"]
    exp = _with_advantages(_experience(base, models["reference"], False))
    results = []
    for fused in (True, False):
        actor = LlamaForCausalLM(LlamaConfig(**base.config.to_dict()))
        actor.set_state_dict(base.state_dict())
        before = len(head_calls)
        with ops.use_fusemt(fused):
            metrics = _updater(actor).update(exp, iter([_ptx_batch()]))
        results.append((len(head_calls) - before, metrics, actor.lm_head.weight.numpy().copy()))
    (calls_on, m_on, w_on), (calls_off, m_off, w_off) = results
    assert (calls_on, calls_off) == (2, 0)
    for key in ("actor_loss", "ptx_loss", "entropy", "kl_loss", "pg_loss"):
        assert abs(m_on[key] - m_off[key]) <= TOL, (key, m_on[key], m_off[key])
    assert np.abs(w_on - base.lm_head.weight.numpy()).max() > 1e-4  # a step was taken
    np.testing.assert_allclose(w_on, w_off, atol=TOL, rtol=0)

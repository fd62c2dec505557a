"""GKD's generalised JSD through chunked LM heads (alignment.ops.linear_generalized_jsd) against
``distill.generalized_jsd`` on full logits, and the GKD trainer's loss with use_fusemt on (chunked heads) vs
off (logits): same loss, same gradients and SGD update, same eval_loss, and the chunked path did run.

Tolerance 1e-5 absolute (float32 op against the float64 reference on the same inputs).
"""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from alignment import ops
from alignment.algorithms.distill import generalized_jsd
from alignment.ops import linear_jsd
from alignment.ops.linear_jsd import linear_generalized_jsd
from alignment.training.logps import token_logps

TOL = 1e-5


def _inputs(seed, m, hid, hid_t, vocab, s_tied, t_tied):
    paddle.seed(seed)
    hs, ht = paddle.randn([m, hid]), paddle.randn([m, hid_t])
    ws = paddle.randn([vocab, hid] if s_tied else [hid, vocab]) * 0.5
    wt = paddle.randn([vocab, hid_t] if t_tied else [hid_t, vocab]) * 0.7
    mask = (paddle.rand([m]) > 0.3).astype("float32")
    mask[0] = 0.0  # a masked row first, and at least one kept
    mask[1] = 1.0
    labels = paddle.randint(0, vocab, [m])
    return hs, ws, ht, wt, mask, labels


def _reference(hs, ws, ht, wt, mask, labels, beta, temperature, s_tied, t_tied, sft_alpha):
    """generalized_jsd (+ sft_alpha x token-mean NLL) on the full float64 logits; gradients by autograd."""
    h, w = hs.astype("float64"), ws.astype("float64")
    h.stop_gradient = w.stop_gradient = False
    zs = paddle.matmul(h, w, transpose_y=s_tied).unsqueeze(0)
    zt = paddle.matmul(ht.astype("float64"), wt.astype("float64"), transpose_y=t_tied).unsqueeze(0)
    m64 = mask.astype("float64").unsqueeze(0)
    loss, _ = generalized_jsd(zs, zt, m64, beta=beta, temperature=temperature)
    per_token = []  # each row's divergence: the registry function with that row alone in the mask
    for i in range(hs.shape[0]):
        one = paddle.zeros_like(m64)
        one[0, i] = 1.0
        per_token.append(float(generalized_jsd(zs.detach(), zt, one, beta=beta, temperature=temperature)[0]))
    logps = token_logps(zs, labels.unsqueeze(0), temperature)[0]
    total = loss - sft_alpha * (logps * m64[0]).sum() / m64.sum()
    total.backward()
    return float(total), np.array(per_token), logps.numpy(), h.grad.numpy(), w.grad.numpy()


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("s_tied,t_tied", [(False, True), (True, False)])
def test_chunked_jsd_and_grads_match_generalized_jsd(beta, s_tied, t_tied):
    m, temperature, sft_alpha = 23, 0.7, 0.4  # 23 rows in chunks of 5: the last chunk is short
    hs, ws, ht, wt, mask, labels = _inputs(7, m, 16, 12, 97, s_tied, t_tied)
    ref = _reference(hs, ws, ht, wt, mask, labels, beta, temperature, s_tied, t_tied, sft_alpha)

    h, w = hs.detach().clone(), ws.detach().clone()
    h.stop_gradient = w.stop_gradient = False
    count = float(mask.sum())
    out = linear_generalized_jsd(h, w, ht, wt, mask / count, beta=beta, temperature=temperature, labels=labels,
                                 label_weights=sft_alpha * mask / count, student_transpose_y=s_tied,
                                 teacher_transpose_y=t_tied, chunk_rows=5)
    out.loss.backward()
    got = (float(out.loss), out.divergence.numpy(), out.logps.numpy(), h.grad.numpy(), w.grad.numpy())
    diffs = [abs(got[0] - ref[0])] + [float(np.abs(a - b).max()) for a, b in zip(got[1:], ref[1:])]
    print(f"beta {beta} tied {s_tied}/{t_tied}: max abs diff loss {diffs[0]:.1e}, per-token {diffs[1]:.1e}, "
          f"logps {diffs[2]:.1e}, d hidden {diffs[3]:.1e}, d weight {diffs[4]:.1e}")
    assert max(diffs) <= TOL, diffs
    assert np.abs(ref[3]).max() > 1e-3 and np.abs(ref[4]).max() > 1e-3  # the gradients are not trivially 0
    assert np.all(h.grad.numpy()[0] == 0)  # the masked row gets no gradient


def test_no_grad_frozen_weight_upstream_scale_and_empty_rows():
    hs, ws, ht, wt, mask, labels = _inputs(11, 9, 8, 8, 64, False, False)
    weights = mask / mask.sum()
    with paddle.no_grad():  # evaluation: the same values, no gradient buffers
        plain = linear_generalized_jsd(hs, ws, ht, wt, weights, beta=0.5, chunk_rows=4)
    h = hs.detach().clone()
    h.stop_gradient = False  # a LoRA student: the head frozen, only the hidden rows get a gradient
    out = linear_generalized_jsd(h, ws, ht, wt, weights, beta=0.5, chunk_rows=4)
    np.testing.assert_allclose(plain.divergence.numpy(), out.divergence.numpy(), atol=1e-7, rtol=0)
    assert plain.logps is None and out.loss.stop_gradient is False
    (2.0 * out.loss).backward()
    assert ws.grad is None
    ref = linear_jsd.linear_generalized_jsd_reference(hs.astype("float64"), ws.astype("float64"),
                                                      ht.astype("float64"), wt.astype("float64"), weights, beta=0.5)
    h64 = hs.astype("float64")
    h64.stop_gradient = False
    (2.0 * linear_jsd.linear_generalized_jsd_reference(h64, ws.astype("float64"), ht.astype("float64"),
                                                       wt.astype("float64"), weights, beta=0.5).loss).backward()
    np.testing.assert_allclose(out.divergence.numpy(), ref.divergence.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(h.grad.numpy(), h64.grad.numpy(), atol=TOL, rtol=0)  # the upstream 2 applied
    empty = paddle.zeros([0, 8])
    empty.stop_gradient = False
    none = linear_generalized_jsd(empty, ws, paddle.zeros([0, 8]), wt, paddle.zeros([0]), beta=0.5)
    assert float(none.loss) == 0.0 and none.divergence.shape == [0]
    with pytest.raises(ValueError, match="vocabulary"):
        linear_generalized_jsd(hs, ws, ht, wt[:, :10], weights)


# ------------------------------------------------------------------------------------------ the GKD trainer
from tests.stages.test_dpo import one_batch  # noqa: E402
from tests.stages.test_gkd import gkd_data, gkd_trainer  # noqa: E402,F401  (fixture)


def _tied_teacher(hidden=48):
    """A teacher of another width with its head tied to the embedding, same 512-token vocabulary."""
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    paddle.seed(21)
    return LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=96,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=True, use_flash_attention=False))


@pytest.mark.parametrize("beta,sft_alpha,tied_teacher", [(0.0, 0.0, False), (0.5, 0.5, False), (1.0, 0.3, True)])
def test_gkd_step_equal_with_chunked_heads_and_logits(ops_library, beta, sft_alpha, tied_teacher, tiny_model_dir,
                                                      gkd_data, tmp_path, monkeypatch):  # noqa: F811
    from alignment.gkd import trainer as gkd_module
    from alignment.gkd.config import GKDArguments

    calls = {"jsd": 0, "logits": 0}
    chunked, logits = linear_jsd.linear_generalized_jsd, gkd_module.model_logits

    def count(key, fn):
        def wrapped(*a, **k):
            calls[key] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(linear_jsd, "linear_generalized_jsd", count("jsd", chunked))
    monkeypatch.setattr(gkd_module, "model_logits", count("logits", logits))
    train, heldout = gkd_data
    batch = one_batch(train, range(6))
    results = []
    for flag in (True, False):
        teacher = _tied_teacher() if tied_teacher else None
        trainer = gkd_trainer(tiny_model_dir, tmp_path / str(flag), train, heldout,
                              GKDArguments(beta=beta, sft_alpha=sft_alpha, lmbda=0.0), steps=1, teacher=teacher)
        model = trainer.model
        trainer.optimizer = paddle.optimizer.SGD(learning_rate=0.5, parameters=model.parameters())
        before = {k: p.numpy().copy() for k, p in model.named_parameters()}
        calls.update(jsd=0, logits=0)
        with ops.use_fusemt(flag):
            assert (trainer._chunked_heads(model) is not None) == flag
            loss = float(trainer.training_step(model, batch))
            trainer.optimizer.step()
            step_calls = dict(calls)
            eval_loss = trainer.evaluate()["eval_loss"]
        update = {k: p.numpy() - before[k] for k, p in model.named_parameters()}
        results.append((loss, update, eval_loss, step_calls))
    (loss_on, up_on, eval_on, calls_on), (loss_off, up_off, eval_off, calls_off) = results
    # the chunked path ran with use_fusemt on (no logits at all), the logits path with it off
    assert calls_on == {"jsd": 1, "logits": 0} and calls_off == {"jsd": 0, "logits": 2}, (calls_on, calls_off)
    worst = max(float(np.abs(up_on[k] - up_off[k]).max()) for k in up_on)
    print(f"GKD beta {beta} sft_alpha {sft_alpha} tied teacher {tied_teacher}: loss {loss_on:.6f} vs {loss_off:.6f}, "
          f"max |update diff| {worst:.1e}, eval_loss {eval_on:.6f} vs {eval_off:.6f}")
    assert abs(loss_on - loss_off) <= TOL * max(1.0, abs(loss_off))
    assert abs(eval_on - eval_off) <= TOL * max(1.0, abs(eval_off))
    assert sorted(up_on) == sorted(up_off)
    assert max(float(np.abs(u).max()) for u in up_off.values()) > 1e-4  # the step did move the weights
    assert worst <= TOL


def test_planner_counts_gkd_chunked_heads_where_they_apply():
    """plan_memory: GKD's logits term is one chunk's working set where the chunked heads apply (float32, no
    tensor / pipeline parallelism), the (B, L, V) copies elsewhere."""
    from alignment.ops.linear_jsd import WORKING_COPIES, default_chunk_rows
    from alignment.tools import plan_memory

    shape = plan_memory.PRESETS["llama-7b"]
    spec = plan_memory.PlanSpec(shape=shape, stage="gkd", max_length=1024, per_device_train_batch_size=4)
    chunked = plan_memory.plan(spec)["train"]["logits"]
    assert chunked == default_chunk_rows(shape.vocab_size) * shape.vocab_size * 4 * WORKING_COPIES
    assert chunked < 4 * 1024 * shape.vocab_size * 4  # less than one copy of the logits
    for other in (dict(tensor_parallel_degree=2), dict(pipeline_parallel_degree=2), dict(dtype="bfloat16")):
        logits = plan_memory.plan(plan_memory.PlanSpec(**{**spec.__dict__, **other}))["train"]["logits"]
        tp = other.get("tensor_parallel_degree", 1)
        assert logits == 4 * 1024 * (shape.vocab_size // tp) * 4 * 3, other

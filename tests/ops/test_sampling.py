"""The fused sampler (alignment.ops.sample_tokens) and the "fused" rollout sampler.

Distribution test: 40,000 independent draws (one per row, each row with its own counter-based uniform)
from fixed logits; Pearson's chi-square of the counts against the top-k / top-p renormalised
distribution computed in NumPy (sort-based), at significance 1e-3 (df = kept tokens - 1), and no draw
outside the kept set.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import paddle
import pytest
from scipy import stats

from alignment import ops
from alignment.rollout.generation import GenerationConfig, generate

ALPHA = 1e-3
DRAWS = 40_000


def _kept_distribution(z: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    x = z.astype(np.float64) / temperature
    keep = np.ones_like(x, dtype=bool)
    if 0 < top_k < len(x):
        keep &= x >= np.sort(x)[::-1][top_k - 1]
    p = np.where(keep, np.exp(x - x.max()), 0.0)
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        n_keep = max(1, int((before < top_p).sum()))
        p = np.where(p >= p[order][n_keep - 1], p, 0.0)
        p /= p.sum()
    return p


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.8, 6, 1.0), (1.0, 0, 0.8), (1.3, 9, 0.9)])
def test_sampled_distribution_matches_the_renormalised_one(ops_library, temperature, top_k, top_p):
    rng = np.random.default_rng(7)
    z = (rng.normal(size=16) * 1.5).astype(np.float32)
    logits = paddle.to_tensor(np.tile(z, (DRAWS, 1)))
    history = paddle.zeros([DRAWS, 1], dtype="int64")
    ids = ops.sample_tokens(logits, history, paddle.zeros([DRAWS, 1], dtype="int64"), temperature=temperature,
                            top_k=top_k, top_p=top_p, seed=1234, use_fusemt=True).numpy()
    expected = _kept_distribution(z, temperature, top_k, top_p)
    counts = np.bincount(ids, minlength=len(z))
    assert counts[expected == 0].sum() == 0, "a token outside the top-k / nucleus was drawn"
    kept = expected > 0
    chi2 = (((counts[kept] - DRAWS * expected[kept]) ** 2) / (DRAWS * expected[kept])).sum()
    critical = stats.chi2.ppf(1 - ALPHA, df=int(kept.sum()) - 1) if kept.sum() > 1 else 0.0
    assert chi2 <= critical, f"chi2 {chi2:.1f} > {critical:.1f} (df {kept.sum() - 1}, alpha {ALPHA})"


def _numpy_penalties(z, history, mask, alpha, beta, gamma, eos, cur_len, min_len):
    out = z.astype(np.float64).copy()
    for b in range(z.shape[0]):
        toks = [t for t, m in zip(history[b], mask[b]) if m and 0 <= t < z.shape[1]]
        for t in set(toks):
            v = out[b, t] * alpha if out[b, t] < 0 else out[b, t] / alpha
            out[b, t] = v - toks.count(t) * beta - gamma
        if cur_len < min_len:
            out[b, list(eos)] = -np.inf
    return out


@pytest.mark.parametrize("alpha,beta,gamma,cur_len", [(1.3, 0.0, 0.0, 5), (0.8, 0.4, 0.25, 1), (1.0, 0.2, 0.0, 2)])
def test_penalties_match_numpy(ops_library, alpha, beta, gamma, cur_len):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 40)).astype(np.float32) * 2
    history = rng.integers(-1, 40, size=(5, 12))
    mask = (rng.random((5, 12)) > 0.2).astype(np.int64)
    want = _numpy_penalties(z, history, mask, alpha, beta, gamma, (3, 7), cur_len, 3)
    args = dict(repetition_penalty=alpha, frequency_penalty=beta, presence_penalty=gamma)
    fused = ops.fused_penalties(paddle.to_tensor(z), paddle.to_tensor(history), paddle.to_tensor(mask),
                                eos_token_ids=(3, 7), cur_len=cur_len, min_len=3, **args).numpy()
    np.testing.assert_allclose(fused, want, rtol=1e-6, atol=1e-6)
    ref = ops.apply_penalties(paddle.to_tensor(z), paddle.to_tensor(history), paddle.to_tensor(mask), **args).numpy()
    finite = np.isfinite(want)
    np.testing.assert_allclose(ref[finite], want[finite], rtol=1e-6, atol=1e-6)
    greedy = [ops.sample_tokens(paddle.to_tensor(z), paddle.to_tensor(history), paddle.to_tensor(mask),
                                eos_token_ids=(3, 7), cur_len=cur_len, min_len=3, do_sample=False, use_fusemt=flag,
                                **args).numpy() for flag in (True, False)]
    np.testing.assert_array_equal(greedy[0], want.argmax(-1))
    np.testing.assert_array_equal(greedy[0], greedy[1])


class MarkovLM(paddle.nn.Layer):
    """A stand-in causal LM: the next-token logits depend only on the last token (a fixed random table)."""

    def __init__(self, vocab: int = 24, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.table = paddle.to_tensor((rng.normal(size=(vocab, vocab)) * 2.5).astype(np.float32))

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                return_dict=True):
        return SimpleNamespace(logits=paddle.gather(self.table, input_ids.reshape([-1])).reshape(
            input_ids.shape + [self.table.shape[0]]), past_key_values=())


def _generate(model, sampler, do_sample, seed=0, **kw):
    paddle.seed(seed)
    ids = paddle.to_tensor(np.random.default_rng(1).integers(3, 24, size=(12, 4)))
    mask = paddle.ones_like(ids)
    cfg = GenerationConfig(eos_token_ids=(2,), pad_token_id=0, max_new_tokens=20, do_sample=do_sample,
                           sampler=sampler, **kw)
    return generate(model, ids, mask, cfg)


def test_greedy_decoding_identical_fused_and_fallback(ops_library):
    model = MarkovLM()
    fused = _generate(model, "fused", False, repetition_penalty=1.2)
    default = _generate(model, "default", False, repetition_penalty=1.2)
    np.testing.assert_array_equal(fused.sequences.numpy(), default.sequences.numpy())
    with ops.use_fusemt(False):  # the fused sampler's own fallback
        off = _generate(model, "fused", False, repetition_penalty=1.2)
    np.testing.assert_array_equal(off.sequences.numpy(), default.sequences.numpy())


def test_rows_finishing_at_different_steps_emit_pad(ops_library):
    out = _generate(MarkovLM(seed=3), "fused", True, seed=5, top_p=0.95, temperature=1.5)
    resp = out.responses.numpy()
    mask = out.response_mask.numpy()
    ends = []
    for row, m, eos in zip(resp, mask, out.ended_with_eos.numpy()):
        hits = np.flatnonzero(row == 2)
        assert bool(eos) == (len(hits) > 0)
        stop = hits[0] + 1 if len(hits) else len(row)
        ends.append(stop)
        assert np.all(row[stop:] == 0) and np.all(m[:stop] == 1) and np.all(m[stop:] == 0)
    assert len(set(ends)) >= 3, f"rows should stop at different steps, got {ends}"
    direct = ops.sample_tokens(paddle.randn([4, 24]), paddle.zeros([4, 1], dtype="int64"),
                               finished=paddle.to_tensor([True, False, True, False]), pad_token_id=0,
                               eos_token_ids=(2,), use_fusemt=True).numpy()
    assert direct[0] == 0 and direct[2] == 0

"""Experience making: shapes, masks, where rewards and values are read, micro-batching, re-tokenisation."""

import numpy as np
import paddle
import pytest

from alignment.algorithms.utils import gather_logps
from alignment.rollout import (
    Experience,
    GenerationConfig,
    Retokenizer,
    RolloutBatch,
    concat_rollouts,
    generate,
    make_experience,
    reward_scores,
)
from alignment.rollout import sampling

EOS, PAD = 2, 3


class _Out:
    def __init__(self, scores):
        self.scores = scores


class PositionScorer(paddle.nn.Layer):
    """Score-model double: score[b, t] = 1000 * token[b, t] + t, so a read position tells what was read."""

    def forward(self, input_ids, attention_mask, position_ids=None):
        t = paddle.arange(input_ids.shape[1], dtype="float32").unsqueeze(0)
        return _Out(1000.0 * input_ids.astype("float32") + t)


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from paddlenlp.transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def rollout(lm, tiny_tokenizer):
    """4 prompts x 2 samples, rows stop at different steps (one is cut by max_new_tokens)."""
    stops = [1, 4, 0, 9, 2, 2, 3, 5]  # 9 > max_new_tokens - 1: never stops
    calls = []

    def scripted(logits, generated, **kw):
        step = len(calls)
        calls.append(step)
        return paddle.to_tensor([EOS if step == s else 300 + step for s in stops], dtype="int64")

    sampling.register_sampler("test-exp")(scripted)
    try:
        texts = ["USER: hello ASSISTANT:", "USER: a much longer question about eggs ASSISTANT:", "hi", "two apples"]
        ids = [tiny_tokenizer(t)["input_ids"] for t in texts]
        width = max(map(len, ids))
        input_ids = paddle.to_tensor([[PAD] * (width - len(r)) + r for r in ids], dtype="int64")
        mask = paddle.to_tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], dtype="int64")
        cfg = GenerationConfig(eos_token_ids=(EOS,), pad_token_id=PAD, max_new_tokens=6, num_return_sequences=2,
                               sampler="test-exp")
        return generate(lm, input_ids, mask, cfg, prompts=texts, answers=["1", "2", "3", "4"])
    finally:
        sampling._SAMPLERS.pop("test-exp")


def test_shapes_masks_and_reward_position(lm, rollout):
    exp = make_experience(rollout, actor=lm, reference=lm, reward_model=PositionScorer(), critic=PositionScorer(),
                          temperature=0.7, micro_batch_size=3)
    n, p, r = 8, rollout.prompt_length, rollout.response_mask.shape[1]
    assert isinstance(exp, Experience) and len(exp) == n and exp.prompt_length == p and exp.response_length == r == 6
    for name in ("old_logps", "ref_logps", "values", "response_mask"):
        assert getattr(exp, name).shape == [n, r], name
    assert exp.scores.shape == [n] and exp.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    mask = exp.response_mask.numpy()
    resp = exp.sequences.numpy()[:, p:]
    # EOS is inside the mask, pads after it are not
    lengths = [2, 5, 1, 6, 3, 3, 4, 6]
    assert mask.sum(1).tolist() == lengths
    for b, n_tok in enumerate(lengths):
        if n_tok < 6 or resp[b, 5] == EOS:
            assert resp[b, n_tok - 1] == EOS and mask[b, n_tok - 1] == 1
        assert (resp[b, n_tok:] == PAD).all() and (mask[b, n_tok:] == 0).all()
    # the reward is read at the last real token (EOS when the row stopped), never at a pad
    read_token = np.floor(exp.scores.numpy() / 1000).astype(int)
    read_pos = exp.scores.numpy() - 1000 * read_token
    assert (read_token != PAD).all()
    np.testing.assert_array_equal(read_pos, [p + n_tok - 1 for n_tok in lengths])
    np.testing.assert_array_equal(read_token[[0, 1, 2, 4, 5, 6]], [EOS] * 6)
    # values: critic score of the state before each response token, zero on pads
    vals = exp.values.numpy()
    for b, n_tok in enumerate(lengths):
        expected = 1000.0 * exp.sequences.numpy()[b, p - 1 : p - 1 + n_tok] + np.arange(p - 1, p - 1 + n_tok)
        np.testing.assert_allclose(vals[b, :n_tok], expected)
        assert (vals[b, n_tok:] == 0).all()
    # log-probs: same temperature as the loss, zero on pads, reference == actor here
    with paddle.no_grad():
        logits = lm(exp.sequences, attention_mask=exp.attention_mask, position_ids=exp.position_ids, return_dict=True).logits
    ref = gather_logps(logits[:, p - 1 : -1], exp.sequences[:, p:], 0.7).numpy() * mask
    np.testing.assert_allclose(exp.old_logps.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(exp.ref_logps.numpy(), exp.old_logps.numpy(), atol=1e-6)
    assert (exp.old_logps.numpy()[mask == 0] == 0).all()
    assert exp.prompts[2] == exp.prompts[3] and exp.answers[7] == "4"


def test_micro_batch_size_does_not_change_results(lm, rollout):
    a = make_experience(rollout, actor=lm, reference=None, reward_model=PositionScorer(), micro_batch_size=1)
    b = make_experience(rollout, actor=lm, reference=None, reward_model=PositionScorer(), micro_batch_size=8)
    np.testing.assert_allclose(a.old_logps.numpy(), b.old_logps.numpy(), atol=1e-5)
    np.testing.assert_array_equal(a.scores.numpy(), b.scores.numpy())
    assert a.ref_logps is None and a.values is None


def test_reward_fn_alternative(lm, rollout):
    seen = {}

    def reward_fn(sequences, attention_mask, prompts, answers):
        seen.update(shape=sequences.shape, prompts=prompts, answers=answers)
        return [float(i) for i in range(sequences.shape[0])]

    exp = make_experience(rollout, actor=lm, reference=None, reward_fn=reward_fn)
    assert exp.scores.tolist() == list(range(8)) and seen["answers"][0] == "1" and len(seen["prompts"]) == 8
    with pytest.raises(ValueError, match="exactly one"):
        reward_scores(rollout, reward_model=PositionScorer(), reward_fn=reward_fn)
    with pytest.raises(ValueError, match="returned 2 scores"):
        reward_scores(rollout, reward_fn=lambda *a: [0.0, 1.0])


def test_select_split_and_concat(lm, rollout):
    exp = make_experience(rollout, actor=lm, reference=lm, reward_model=PositionScorer())
    parts = exp.split(3)
    assert [len(x) for x in parts] == [3, 3, 2]
    np.testing.assert_array_equal(parts[1].old_logps.numpy(), exp.old_logps.numpy()[3:6])
    sub = exp.select([7, 0])
    assert sub.group_ids.tolist() == [3, 0] and sub.prompts == [exp.prompts[7], exp.prompts[0]]
    # concatenating rollout chunks of different widths re-pads both sides consistently
    half = lambda sl: RolloutBatch(  # noqa: E731
        sequences=rollout.sequences[sl, 2:], attention_mask=rollout.attention_mask[sl, 2:],
        position_ids=rollout.position_ids[sl, 2:], response_mask=rollout.response_mask[sl],
        prompt_length=rollout.prompt_length - 2, group_ids=rollout.group_ids[sl],
        ended_with_eos=rollout.ended_with_eos[sl], prompts=rollout.prompts[sl], answers=rollout.answers[sl],
    )
    assert int(rollout.attention_mask[4:6, :2].sum()) == 0  # prompt 3 ("hi") is short: its 2 first columns are pads
    joined = concat_rollouts([half(slice(4, 6)), rollout], PAD)
    assert joined.prompt_length == rollout.prompt_length and joined.sequences.shape[0] == 10
    np.testing.assert_array_equal(joined.sequences.numpy()[:2], rollout.sequences.numpy()[4:6])
    np.testing.assert_array_equal(joined.attention_mask.numpy()[:2], rollout.attention_mask.numpy()[4:6])


def test_retokenizer_for_a_different_reward_tokenizer(tmp_path, tiny_tokenizer, rollout):
    from paddlenlp.transformers import LlamaTokenizer

    from alignment.tools.make_tiny_model import train_tokenizer

    sp = train_tokenizer(tmp_path / "sp", vocab_size=600)
    other = LlamaTokenizer(vocab_file=str(sp), pad_token="<pad>", add_bos_token=True, add_eos_token=False)
    assert Retokenizer.needed(tiny_tokenizer, other) and not Retokenizer.needed(tiny_tokenizer, tiny_tokenizer)
    retok = Retokenizer(tiny_tokenizer, other)
    ids, mask, pos, end = retok(rollout.sequences, rollout.attention_mask, rollout.ended_with_eos)
    lengths = mask.sum(1).numpy()
    np.testing.assert_array_equal(end.numpy(), lengths - 1)
    for b in range(ids.shape[0]):
        row = ids.numpy()[b, : lengths[b]]
        assert (row[-1] == other.eos_token_id) == bool(rollout.ended_with_eos.numpy()[b])
        text_a = tiny_tokenizer.decode([int(t) for t, m in zip(rollout.sequences.numpy()[b], rollout.attention_mask.numpy()[b]) if m],
                                       skip_special_tokens=True)
        assert other.decode(row.tolist(), skip_special_tokens=True) == text_a
        assert (ids.numpy()[b, lengths[b]:] == retok.pad_id).all()
    scores = reward_scores(rollout, reward_model=PositionScorer(), retokenizer=retok)
    np.testing.assert_array_equal((scores.numpy() % 1000).astype(int), lengths - 1)

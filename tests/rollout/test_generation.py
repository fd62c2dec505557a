"""The rollout decode loop: KV cache == full forward, left padding, EOS/pad handling, groups, limits."""

import numpy as np
import paddle
import pytest

from alignment.rollout import GenerationConfig, generate, make_position_ids, response_logps
from alignment.rollout import sampling

EOS, PAD = 2, 3


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    from paddlenlp.transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model.eval()
    return model


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    tok = tiny_tokenizer
    texts = ["BEGINNING OF CONVERSATION: USER: how many eggs ASSISTANT:", "USER: hi ASSISTANT:", "two apples"]
    ids = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    input_ids = paddle.to_tensor([[PAD] * (width - len(r)) + r for r in ids], dtype="int64")
    mask = paddle.to_tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], dtype="int64")
    return ids, input_ids, mask


def _greedy(**kw):
    return GenerationConfig(eos_token_ids=(EOS,), pad_token_id=PAD, do_sample=False, **kw)


@pytest.fixture
def scripted_sampler():
    """A sampler that emits EOS at a scripted step per row (and token 10 + step otherwise)."""
    calls = []

    def make(stop_steps):
        def fn(logits, generated, **kw):
            calls.append(kw)
            step = len(calls) - 1
            ids = [EOS if step == s else 10 + step for s in stop_steps]
            ids = paddle.to_tensor(ids, dtype="int64")
            # respect min_new_tokens: a banned EOS has logit -inf
            banned = ~paddle.isfinite(logits[:, EOS])
            return paddle.where(banned & (ids == EOS), paddle.full_like(ids, 99), ids)

        sampling.register_sampler("test-scripted")(fn)
        return fn

    yield make, calls
    sampling._SAMPLERS.pop("test-scripted", None)


def test_kv_cache_matches_full_forward(lm, prompts):
    _, input_ids, mask = prompts
    out = generate(lm, input_ids, mask, _greedy(max_new_tokens=10))
    p = out.prompt_length
    assert out.sequences.shape == [3, p + out.response_mask.shape[1]]
    with paddle.no_grad():
        logits = lm(out.sequences, attention_mask=out.attention_mask, position_ids=out.position_ids, return_dict=True).logits
    pred = logits[:, p - 1 : -1].argmax(-1).numpy()
    real = out.response_mask.numpy().astype(bool)
    np.testing.assert_array_equal(pred[real], out.responses.numpy()[real])


def test_left_padding_does_not_change_the_result(lm, prompts):
    ids, input_ids, mask = prompts
    batched = generate(lm, input_ids, mask, _greedy(max_new_tokens=8))
    for row, prompt in enumerate(ids):
        alone = generate(
            lm, paddle.to_tensor([prompt], dtype="int64"), paddle.ones([1, len(prompt)], dtype="int64"), _greedy(max_new_tokens=8)
        )
        n = int(alone.response_mask.sum())
        np.testing.assert_array_equal(alone.responses.numpy()[0, :n], batched.responses.numpy()[row, :n])
        # log-probs of the response agree too (explicit position ids make padding invisible)
        lp_alone = response_logps(lm, alone.sequences, alone.attention_mask, alone.position_ids, alone.prompt_length,
                                  alone.response_mask.astype("float32"))
        b = batched
        lp_batch = response_logps(lm, b.sequences[row:row + 1], b.attention_mask[row:row + 1], b.position_ids[row:row + 1],
                                  b.prompt_length, b.response_mask[row:row + 1].astype("float32"))
        np.testing.assert_allclose(lp_alone.numpy()[0, :n], lp_batch.numpy()[0, :n], atol=2e-5)


def test_stop_at_eos_then_pad(lm, prompts, scripted_sampler):
    make, calls = scripted_sampler
    make([1, 3, 0])  # row 0 stops at step 1, row 1 at step 3, row 2 at step 0
    _, input_ids, mask = prompts
    out = generate(lm, input_ids, mask, GenerationConfig(eos_token_ids=(EOS,), pad_token_id=PAD, max_new_tokens=10,
                                                           sampler="test-scripted"))
    assert len(calls) == 4  # the loop ends once every row has stopped
    resp = out.responses.numpy()
    assert resp.tolist() == [[10, EOS, PAD, PAD], [10, 11, 12, EOS], [EOS, PAD, PAD, PAD]]
    assert out.response_mask.numpy().tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert out.response_lengths.tolist() == [2, 4, 1]
    # attention covers prompt + response up to and including EOS, never the pads after it
    p = out.prompt_length
    np.testing.assert_array_equal(out.attention_mask.numpy()[:, p:], out.response_mask.numpy())
    np.testing.assert_array_equal(out.attention_mask.numpy()[:, :p], mask.numpy())
    np.testing.assert_array_equal(out.position_ids.numpy(), make_position_ids(out.attention_mask).numpy())
    assert out.ended_with_eos.tolist() == [True, True, True]


def test_min_new_tokens_forbids_early_eos(lm, prompts, scripted_sampler):
    make, _ = scripted_sampler
    make([0, 0, 2])
    _, input_ids, mask = prompts
    out = generate(lm, input_ids, mask, GenerationConfig(eos_token_ids=(EOS,), pad_token_id=PAD, max_new_tokens=4,
                                                           min_new_tokens=1, sampler="test-scripted"))
    resp = out.responses.numpy()
    assert resp[0, 0] == 99 and resp[1, 0] == 99 and resp[2, 2] == EOS
    assert out.ended_with_eos.tolist() == [False, False, True]


def test_num_return_sequences_groups_and_limits(lm, prompts):
    _, input_ids, mask = prompts
    paddle.seed(0)
    cfg = GenerationConfig(eos_token_ids=(EOS,), pad_token_id=PAD, max_new_tokens=6, num_return_sequences=3,
                           temperature=0.8, top_p=0.9, top_k=50, repetition_penalty=1.1)
    out = generate(lm, input_ids, mask, cfg, group_offset=10, prompts=["a", "b", "c"], answers=[None, "1", "2"])
    assert out.sequences.shape[0] == 9
    assert out.group_ids.tolist() == [10, 10, 10, 11, 11, 11, 12, 12, 12]
    assert out.prompts == ["a"] * 3 + ["b"] * 3 + ["c"] * 3 and out.answers[3:6] == ["1"] * 3
    p = out.prompt_length
    np.testing.assert_array_equal(out.sequences.numpy()[:, :p], np.repeat(input_ids.numpy(), 3, axis=0))
    assert out.response_mask.shape[1] <= 6
    # max_length caps prompt + response
    capped = generate(lm, input_ids, mask, _greedy(max_new_tokens=50, max_length=p + 4))
    assert capped.sequences.shape[1] <= p + 4
    with pytest.raises(ValueError, match="max_length"):
        generate(lm, input_ids, mask, _greedy(max_length=p))


def test_model_mode_restored_and_no_graph(lm, prompts):
    _, input_ids, mask = prompts
    lm.train()
    out = generate(lm, input_ids, mask, _greedy(max_new_tokens=3))
    assert lm.training
    lm.eval()
    assert out.sequences.stop_gradient


def test_config_validation():
    with pytest.raises(ValueError, match="pad_token_id"):
        GenerationConfig(eos_token_ids=(2,), pad_token_id=2)
    with pytest.raises(ValueError, match="valid samplers"):
        GenerationConfig(eos_token_ids=(2,), pad_token_id=3, sampler="fused-not-there")
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(eos_token_ids=(2,), pad_token_id=3, top_p=0.0)
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerationConfig(eos_token_ids=(2,), pad_token_id=3, max_new_tokens=2, min_new_tokens=3)
    assert GenerationConfig(eos_token_ids=5, pad_token_id=3).eos_token_ids == (5,)

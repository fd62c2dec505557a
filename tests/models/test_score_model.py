"""ScoreModel: end index from the attention mask, per-token scores, normalisation, save/load round trip,
the missing-head error, critic overrides and config validation. Tiny Llama, sequences of <= 8 tokens."""

from __future__ import annotations

import json

import numpy as np
import paddle
import pytest

from alignment.models import ScoreConfig, ScoreHeadMissingError, ScoreModel, VALUE_HEAD_NAME, has_score_head

PAD, EOS = 3, 2


def _batch():
    """Row 0 right padded and ending in EOS; row 1 full length and holding the pad id as a REAL token;
    row 2 left padded (as PPO critic batches are)."""
    ids = paddle.to_tensor([[1, 40, 41, EOS, PAD, PAD], [1, 50, PAD, 52, 53, 54], [PAD, PAD, 1, 60, 61, EOS]], dtype="int64")
    mask = paddle.to_tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype="int64")
    return ids, mask


@pytest.fixture(scope="module")
def score_model(tiny_model_dir):
    paddle.seed(7)
    return ScoreModel.from_pretrained(str(tiny_model_dir), init_score_head=True)


def test_outputs_end_index_from_attention_mask(score_model):
    ids, mask = _batch()
    out = score_model(ids, attention_mask=mask)
    assert out.scores.shape == [3, 6] and out.scores.dtype == paddle.float32
    assert out.end_scores.shape == [3]
    assert out.end_index.tolist() == [3, 5, 5]  # never "last token != pad": row 1 holds the pad id as a real token
    expected = out.scores.numpy()[np.arange(3), [3, 5, 5]]
    np.testing.assert_allclose(out.end_scores.numpy(), expected, rtol=0, atol=0)
    # attribute, key and index access (PaddleNLP ModelOutput)
    assert out["scores"] is out.scores and out[0] is out.scores


def test_end_score_ignores_padding_content(score_model):
    ids, mask = _batch()
    other = ids.numpy().copy()
    other[0, 4:] = [77, 78]  # different tokens under mask 0 after the end
    a = score_model(ids, attention_mask=mask).end_scores.numpy()
    b = score_model(paddle.to_tensor(other), attention_mask=mask).end_scores.numpy()
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_mask_required_for_batches(score_model):
    ids, _ = _batch()
    with pytest.raises(ValueError, match="attention_mask"):
        score_model(ids)
    single = score_model(ids[1:2])  # one row without a mask: all tokens real
    assert single.end_index.tolist() == [5]


def test_lm_checkpoint_without_head_is_an_error(tiny_model_dir):
    assert not has_score_head(str(tiny_model_dir))
    with pytest.raises(ScoreHeadMissingError, match="init_score_head=True"):
        ScoreModel.from_pretrained(str(tiny_model_dir))


def test_save_load_round_trip(tmp_path, tiny_model_dir):
    from safetensors.numpy import load_file

    paddle.seed(3)
    model = ScoreModel.from_pretrained(str(tiny_model_dir), init_score_head=True, do_normalize=True, bias=True,
                                       normalizer_type="RunningMeanStd")
    ids, mask = _batch()
    model.train()
    model(ids, attention_mask=mask)  # one normaliser update
    model.eval()
    before = model(ids, attention_mask=mask)
    model.save_pretrained(str(tmp_path / "rm"))

    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForScore"]
    assert {k: config[k] for k in ("score_type", "do_normalize", "normalizer_type", "momentum", "score_dim", "score_bias")} == {
        "score_type": "reward", "do_normalize": True, "normalizer_type": "RunningMeanStd", "momentum": None,
        "score_dim": 1, "score_bias": True}
    assert config["normalizer_count"] == 3.0 and len(config["mean"]) == len(config["var"]) == 1
    head = load_file(str(tmp_path / "rm" / VALUE_HEAD_NAME))
    assert head["v_head.summary.weight"].shape == (1, 64)  # torch / TRL layout (score_dim, hidden)
    np.testing.assert_array_equal(head["v_head.summary.weight"], model.score_head.weight.numpy().T)
    np.testing.assert_array_equal(head["normalizer.count"], [3.0])

    loaded = ScoreModel.from_pretrained(str(tmp_path / "rm"))
    assert not loaded.training  # eval mode: a stray forward does not move the normaliser
    assert loaded.score_config == model.score_config
    after = loaded(ids, attention_mask=mask)
    np.testing.assert_allclose(after.scores.numpy(), before.scores.numpy(), rtol=1e-6, atol=1e-6)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)

    # the directory is also a causal-LM checkpoint of the same backbone (the lm_head is new)
    from paddlenlp.transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(tmp_path / "rm"))
    np.testing.assert_array_equal(lm.llama.embed_tokens.weight.numpy(), model.llama.embed_tokens.weight.numpy())

    # a score-model directory whose head file is gone is an error too
    (tmp_path / "rm" / VALUE_HEAD_NAME).unlink()
    with pytest.raises(ScoreHeadMissingError, match="score-model config"):
        ScoreModel.from_pretrained(str(tmp_path / "rm"))


def test_critic_from_reward_model_and_head_checks(tmp_path, tiny_model_dir):
    paddle.seed(5)
    rm = ScoreModel.from_pretrained(str(tiny_model_dir), init_score_head=True, do_normalize=True,
                                    normalizer_type="ExponentialMovingAverage", momentum=0.9)
    rm.normalizer.set_state_dict({"mean": paddle.to_tensor([2.0]), "var": paddle.to_tensor([4.0]),
                                  "count": paddle.to_tensor([10.0])})
    rm.save_pretrained(str(tmp_path / "rm"))
    ids, mask = _batch()
    reward = ScoreModel.from_pretrained(str(tmp_path / "rm"))(ids, attention_mask=mask).scores.numpy()
    critic_model = ScoreModel.from_pretrained(str(tmp_path / "rm"), score_type="critic")
    critic = critic_model(ids, attention_mask=mask).scores.numpy()
    np.testing.assert_allclose(reward, (critic - 2.0) / (2.0 + 1e-8), rtol=1e-5, atol=1e-6)  # critic: identity
    assert critic_model.normalizer.count.tolist() == [10.0]
    with pytest.raises(ValueError, match="score_dim=2 does not match"):
        ScoreModel.from_pretrained(str(tmp_path / "rm"), score_dim=2)


def test_normaliser_updates_only_when_training_with_do_normalize(tiny_model_dir):
    paddle.seed(11)
    model = ScoreModel.from_pretrained(str(tiny_model_dir), init_score_head=True, normalizer_type="RunningMeanStd")
    ids, mask = _batch()
    model.train()
    model(ids, attention_mask=mask)
    assert model.normalizer.count.tolist() == [0.0]  # do_normalize off: statistics untouched
    model.set_normalize(True)
    raw = model(ids, attention_mask=mask)  # updates with this batch's end scores, then normalises
    model.set_normalize(False)
    model.eval()
    plain = model(ids, attention_mask=mask).end_scores.numpy()
    assert model.normalizer.count.tolist() == [3.0]
    np.testing.assert_allclose(model.normalizer.mean.numpy(), [plain.mean()], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.normalizer.var.numpy(), [plain.var(ddof=1)], rtol=1e-4, atol=1e-6)
    std = float(np.sqrt(model.normalizer.var.numpy()[0]))
    np.testing.assert_allclose(raw.end_scores.numpy(), (plain - plain.mean()) / (std + 1e-8), rtol=1e-4, atol=1e-5)
    model.set_normalize(True)
    model(ids, attention_mask=mask)  # eval mode: no update
    assert model.normalizer.count.tolist() == [3.0]


def test_multi_dim_scores_and_gradients(tiny_model_dir):
    paddle.seed(2)
    model = ScoreModel.from_pretrained(str(tiny_model_dir), init_score_head=True, score_dim=2, bias=True)
    ids, mask = _batch()
    model.train()
    out = model(ids, attention_mask=mask)
    assert out.scores.shape == [3, 6, 2] and out.end_scores.shape == [3, 2]
    out.end_scores.sum().backward()
    assert model.score_head.weight.grad is not None and model.score_head.bias.grad is not None
    assert model.llama.embed_tokens.weight.grad is not None
    model.clear_gradients()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(score_type="value"), "score_type='value' is not valid; allowed values: reward, cost, critic"),
        (dict(normalizer_type="BatchNorm"), "allowed values: RunningMeanStd, ExponentialMovingAverage, None"),
        (dict(normalizer_type="ExponentialMovingAverage"), "needs momentum"),
        (dict(normalizer_type="ExponentialMovingAverage", momentum=1.5), r"momentum \(normalizer_momentum\) must be in \[0, 1\)"),
        (dict(score_dim=0), "score_dim must be >= 1"),
    ],
)
def test_score_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScoreConfig(**kwargs)


def test_score_config_normalizer_none_spellings():
    for name in (None, "None", "none", "", "IdentityNormalizer"):
        assert ScoreConfig(normalizer_type=name).normalizer_type is None
    assert ScoreConfig(score_type="cost").normalize_mode == "scale"
    assert ScoreConfig(score_type="critic").normalize_mode == "identity"

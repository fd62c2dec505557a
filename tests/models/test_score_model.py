"""Score model: end score at the last real token, explicit head creation, save/load round trip."""

import json

import numpy as np
import paddle
import pytest

from alignment.models import ScoreModel
from alignment.models.score_model import ScoreHeadMissingError


@pytest.fixture(scope="module")
def score_model(tiny_model_dir):
    paddle.seed(0)
    model = ScoreModel.from_pretrained(str(tiny_model_dir), init_score_head=True, score_type="reward")
    model.eval()
    return model


def test_lm_checkpoint_without_head_is_an_error(tiny_model_dir):
    with pytest.raises(ScoreHeadMissingError, match="init_score_head"):
        ScoreModel.from_pretrained(str(tiny_model_dir))


def test_end_score_is_read_at_last_real_token_not_at_padding(score_model):
    ids = paddle.to_tensor([[1, 50, 60, 70, 2, 3, 3], [1, 80, 90, 2, 3, 3, 3]], dtype="int64")
    mask = paddle.to_tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0]], dtype="int64")
    out = score_model(ids, attention_mask=mask)
    assert out.scores.shape == [2, 7] and out.end_scores.shape == [2]
    assert out.end_index.numpy().tolist() == [4, 3]  # the EOS positions
    np.testing.assert_allclose(out.end_scores.numpy(), out.scores.numpy()[[0, 1], [4, 3]], atol=1e-6)
    # More right padding must not change the end score.
    ids2 = paddle.concat([ids, paddle.full([2, 3], 3, dtype="int64")], axis=1)
    mask2 = paddle.concat([mask, paddle.zeros([2, 3], dtype="int64")], axis=1)
    np.testing.assert_allclose(score_model(ids2, attention_mask=mask2).end_scores.numpy(), out.end_scores.numpy(), atol=1e-5)


def test_save_and_load_round_trip_with_head_and_normalizer(score_model, tmp_path):
    score_model.normalizer.update(paddle.to_tensor([[1.0], [3.0], [5.0]]))
    score_model.save_pretrained(str(tmp_path / "rm"))
    assert (tmp_path / "rm" / "value_head.safetensors").exists()
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["score_type"] == "reward"
    loaded = ScoreModel.from_pretrained(str(tmp_path / "rm"))
    loaded.eval()
    ids = paddle.to_tensor([[1, 50, 60, 2]], dtype="int64")
    mask = paddle.ones_like(ids)
    np.testing.assert_allclose(loaded(ids, attention_mask=mask).scores.numpy(),
                               score_model(ids, attention_mask=mask).scores.numpy(), atol=1e-6)
    np.testing.assert_allclose(loaded.normalizer.mean.numpy(), score_model.normalizer.mean.numpy(), atol=1e-6)
    critic = ScoreModel.from_pretrained(str(tmp_path / "rm"), score_type="critic")
    assert critic.score_type == "critic"


def test_forward_needs_a_2d_mask_for_batches(score_model):
    ids = paddle.to_tensor([[1, 5, 2], [1, 6, 2]], dtype="int64")
    with pytest.raises(ValueError, match="attention_mask"):
        score_model(ids)

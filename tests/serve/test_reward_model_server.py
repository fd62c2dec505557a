"""A trained reward model served over HTTP on 127.0.0.1 (with a reward function next to it): the client's scores
equal the score model's own end scores of prompt + completion (one unpadded row at a time), weighted; and one
GRPO step from the CLI with ``--reward_funcs remote`` takes its rewards from that server."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import paddle
import pytest

from alignment.serve.client import RewardClient
from alignment.serve.reward import main as serve_main

from tests.stages.test_ppo import rm_dir  # noqa: F401 (fixture: the tiny LM with a seeded score head)

PROMPTS = ["Question: how many apples? Answer:", "Say hi.", "2 + 3 =", "A much longer prompt about pears and plums:"]
COMPLETIONS = [" three apples", " hi", " 5 #### 5", " pears"]


def _reference_scores(path):
    """End score of each prompt + completion (+ EOS), row by row with no padding."""
    from alignment.models.loading import load_tokenizer
    from alignment.models.score_model import ScoreModel

    tok = load_tokenizer(str(path), padding_side="right", ensure_pad=False)
    model = ScoreModel.from_pretrained(str(path), score_type="reward", do_normalize=False, dtype="float32")
    model.eval()
    out = []
    for p, c in zip(PROMPTS, COMPLETIONS):
        ids = list(tok(p + c, add_special_tokens=True)["input_ids"]) + [tok.eos_token_id]
        with paddle.no_grad():
            scores = model(paddle.to_tensor([ids]), attention_mask=paddle.ones([1, len(ids)], dtype="int64")).scores
        out.append(float(scores.reshape([len(ids), -1])[-1, 0]))
    return np.array(out)


@pytest.fixture(scope="module")
def model_server(rm_dir):  # noqa: F811
    # batch_size 3: a padded batch of 3 rows of different lengths, then one row
    srv = serve_main(["--reward_model_name_or_path", str(rm_dir), "--reward_funcs", "length",
                      "--reward_weights", "0.5", "2.0", "--reward_target_length", "4", "--batch_size", "3",
                      "--port", "0"], block=False)
    yield srv
    srv.stop()


def test_served_reward_model_scores_equal_the_model(model_server, rm_dir):  # noqa: F811
    assert model_server.url.startswith("http://127.0.0.1:")
    client = RewardClient(model_server.url, timeout=30, retries=0)
    assert client.health() == {"status": "ok", "rewards": ["length", "reward_model"], "weights": [0.5, 2.0]}
    lengths = [2, 8, 4, 1]
    body = json.dumps({"prompts": PROMPTS, "completions": COMPLETIONS,
                       "columns": {"completion_lengths": lengths}}).encode()
    req = urllib.request.Request(model_server.url + "/score", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        reply = json.loads(resp.read())
    expected_model = _reference_scores(rm_dir)
    assert np.ptp(expected_model) > 1e-4  # the rows score differently: a real comparison
    np.testing.assert_allclose(reply["components"]["reward_model"], expected_model, rtol=1e-5, atol=1e-6)
    scores = client(PROMPTS, COMPLETIONS, completion_lengths=lengths)
    np.testing.assert_allclose(scores, 0.5 * np.array(reply["components"]["length"]) + 2.0 * expected_model,
                               rtol=1e-5, atol=1e-6)


def test_grpo_step_with_the_remote_reward(tmp_path, tiny_model_dir, model_server):
    from alignment.ppo.run_ppo import main
    from tests.stages.test_grpo import GRPO_CONFIG

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "out"
    main([GRPO_CONFIG, "--actor_model_name_or_path", str(tiny_model_dir), "--train_datasets", f"json:1.0:{data}",
          "--output_dir", str(out), "--max_steps", "1", "--do_eval", "false", "--evaluation_strategy", "no",
          "--save_strategy", "no", "--max_dec_len", "4", "--reward_funcs", "remote",
          "--reward_server_url", model_server.url])
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert rec["rewards_remote"] == pytest.approx(rec["reward"])
    assert rec["reward"] != 0.0 and np.isfinite(rec["pg_loss"])

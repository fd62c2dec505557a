"""A second TP-aware family: a tiny random Qwen2 (grouped-query attention) trained by the SFT stage under
tensor parallel 2 and pipeline parallel 2 reproduces one process (losses of every step and final weights).
Qwen2's pipeline layers read position ids from another tuple slot than Llama's; ``alignment.models.pipeline``
adapts them, and this test would fail without it (the embedding stage asserts)."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.models.loading import read_weights
from alignment.utils.trainer import read_metrics

from .launching import REPO, launch, run_single

pytestmark = pytest.mark.distributed
SCRIPT = REPO / "alignment/sft/run_sft.py"


@pytest.fixture(scope="module")
def qwen2_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from paddlenlp.transformers import Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2"
    paddle.seed(0)
    config = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    config.architectures = ["Qwen2ForCausalLM"]
    Qwen2ForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    for f in glob.glob(f"{tiny_model_dir}/*token*") + glob.glob(f"{tiny_model_dir}/*.model"):
        shutil.copy(f, out)
    return out


def _argv(model, out, *extra):
    return ["config/llama/tiny/sft_argument.json", "--model_name_or_path", model,
            "--train_datasets", "json:1.0:tests/fixtures/llamafactory_alpaca_en_demo_first10.json",
            "--output_dir", out, "--max_length", 128, "--eval_split_ratio", 0.2, "--max_steps", 4,
            "--logging_steps", 1, "--per_device_train_batch_size", 4, "--do_eval", "false",
            "--evaluation_strategy", "no", *extra]


def test_qwen2_sft_tp2_and_pp2_match_one_process(qwen2_dir, tmp_path):
    run_single(SCRIPT, _argv(qwen2_dir, tmp_path / "single"), tmp_path / "single.log")
    base = [r["loss"] for r in read_metrics(str(tmp_path / "single")) if "loss" in r and "train_loss" not in r]
    w0 = read_weights(str(tmp_path / "single"))
    for name, flags in (("tp2", ("--tensor_parallel_degree", 2)), ("pp2", ("--pipeline_parallel_degree", 2))):
        out = tmp_path / name
        launch(SCRIPT, _argv(qwen2_dir, out, *flags), tmp_path / f"{name}.log")
        losses = [r["loss"] for r in read_metrics(str(out)) if "loss" in r and "train_loss" not in r]
        assert len(losses) == len(base) == 4 and base[-1] < base[0]
        np.testing.assert_allclose(losses, base, rtol=0, atol=1e-5, err_msg=name)
        w = read_weights(str(out))
        assert sorted(w) == sorted(w0)
        diff = max(float(np.abs(w[k].numpy() - w0[k].numpy()).max()) for k in w0)
        print(f"qwen2 {name}: loss diff {np.abs(np.subtract(losses, base)).max():.2e}, weight diff {diff:.2e}")
        assert diff <= 5e-5

"""Hugging Face checkpoints in and out (issue 12): a tiny HF-layout Llama / Qwen2 checkpoint trains one SFT step
through the stage's entry point, is exported back, and an independent reader -- PaddleNLP's own PyTorch-checkpoint
conversion (``from_pretrained(..., convert_from_torch=True)``) always, ``transformers`` when it is installed --
gives the project's logits within 1e-4; the same for a reward model's scores (``AutoModelForSequenceClassification``
layout). Checkpoint files keep the user's umask."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.models.hf import export_hf, is_hf_checkpoint, paddle_dir
from alignment.models.loading import load_causal_lm, read_weights

REPO = Path(__file__).resolve().parents[2]
IDS = [[1, 45, 97, 12, 300, 200, 17, 2], [1, 60, 61, 62, 63, 3, 3, 3]]
MASK = [[1] * 8, [1] * 5 + [0] * 3]
TOL = 1e-4


def _logits(model, ids=IDS, mask=MASK):
    model.eval()
    with paddle.no_grad():
        out = model(input_ids=paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask))
    out = out[0] if isinstance(out, (tuple, list)) else out.logits
    return out.astype("float32").numpy()


def _paddlenlp_convert_from_torch(hf_dir: Path, tmp: Path, auto="AutoModelForCausalLM"):
    """PaddleNLP's own conversion of a PyTorch-layout checkpoint (it writes model_state.pdparams next to the
    weights, so it reads a copy)."""
    import paddlenlp.transformers as t

    copy = tmp / f"{hf_dir.name}-convert-copy"
    shutil.copytree(hf_dir, copy)
    return getattr(t, auto).from_pretrained(str(copy), convert_from_torch=True, dtype="float32")


def _transformers():
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError:
        return None
    return transformers


NO_TRANSFORMERS = "transformers / torch not installed (not a project dependency: the registry's torch wheels pull " \
                  "in gigabytes of CUDA libraries); PaddleNLP's convert_from_torch reader ran instead"


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def hf_source(request, tiny_model_dir, tiny_qwen2_dir, tmp_path_factory, hf_import_cache):
    """(arch, Paddle original, its Hugging Face twin) -- the HF twin is what a user's download looks like."""
    paddle_src = tiny_model_dir if request.param == "llama" else tiny_qwen2_dir
    hf = tmp_path_factory.mktemp(f"hf-{request.param}") / f"tiny-{request.param}-hf"
    export_hf(str(paddle_src), str(hf))
    return request.param, Path(paddle_src), hf


def test_hf_layout_is_pytorch_layout(hf_source):
    arch, src, hf = hf_source
    from safetensors.numpy import load_file

    tensors, paddle_state = load_file(str(hf / "model.safetensors")), read_weights(str(src))
    prefix = "llama" if arch == "llama" else "qwen2"
    assert all(k.startswith(("model.", "lm_head.")) for k in tensors)
    w = paddle_state[f"{prefix}.layers.0.mlp.gate_proj.weight"].numpy()  # Paddle [in, out]
    np.testing.assert_array_equal(tensors["model.layers.0.mlp.gate_proj.weight"], w.T)  # PyTorch [out, in]
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == arch and config["architectures"] == [f"{'Llama' if arch == 'llama' else 'Qwen2'}ForCausalLM"]
    for name in ("tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        assert (hf / name).is_file(), name
    assert is_hf_checkpoint(str(hf)) and not is_hf_checkpoint(str(src))
    # import: the converted copy gives the original's logits exactly
    np.testing.assert_array_equal(_logits(load_causal_lm(str(hf))), _logits(load_causal_lm(str(src))))


def test_sft_from_hf_checkpoint_exports_back_with_the_same_logits(hf_source, tmp_path):
    from alignment.sft.run_sft import main

    arch, _, hf = hf_source
    out, exported = tmp_path / "sft", tmp_path / "sft-hf"
    old = os.umask(0o002)  # a team's umask: group-writable files must come out 0664 / 0775
    try:
        main([str(REPO / "config/llama/tiny/sft_argument.json"), "--model_name_or_path", str(hf),
              "--train_datasets", f"json:1.0:{REPO / 'tests/fixtures/llamafactory_alpaca_en_demo_first10.json'}",
              "--output_dir", str(out), "--max_steps", "1", "--max_length", "64", "--per_device_train_batch_size", "2",
              "--eval_split_ratio", "0", "--do_eval", "false", "--evaluation_strategy", "no",
              "--save_strategy", "steps", "--save_steps", "1", "--learning_rate", "0.01"])
        export_hf(str(out), str(exported))
        modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
                 for d in (out, exported) for p in [d, *d.rglob("*")]}
    finally:
        os.umask(old)
    bad = {k: oct(v) for k, v in modes.items() if v not in (0o664, 0o775)}
    assert not bad, f"files not following umask 002: {bad}"
    assert (out / "checkpoint-1").is_dir()

    ours = _logits(load_causal_lm(str(out)))
    before = _logits(load_causal_lm(str(hf)))
    assert np.abs(ours - before).max() > 1e-3  # the step trained
    theirs = _logits(_paddlenlp_convert_from_torch(exported, tmp_path))
    diff = float(np.abs(ours - theirs).max())
    print(f"{arch}: SFT step from an HF checkpoint -> export -> PaddleNLP convert_from_torch: max |logit diff| {diff:.2e}")
    assert diff <= TOL
    np.testing.assert_allclose(_logits(load_causal_lm(str(exported))), ours, atol=TOL, rtol=0)  # re-import

    transformers = _transformers()
    if transformers is None:
        pytest.skip(NO_TRANSFORMERS)
    import torch

    model = transformers.AutoModelForCausalLM.from_pretrained(str(exported), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()
    assert float(np.abs(hf_logits - ours).max()) <= TOL


def _end_scores(model, ids=IDS, mask=MASK):
    model.eval()
    with paddle.no_grad():
        return model(paddle.to_tensor(ids), attention_mask=paddle.to_tensor(mask)).end_scores.numpy()


def test_reward_model_exports_as_sequence_classification(tiny_model_dir, tmp_path, hf_import_cache):
    from safetensors.numpy import load_file

    from alignment.models import ScoreModel
    from alignment.rm.run_reward import main

    hf_lm = tmp_path / "lm-hf"
    export_hf(str(tiny_model_dir), str(hf_lm))
    rm, exported = tmp_path / "rm", tmp_path / "rm-hf"
    main([str(REPO / "config/llama/tiny/rm_argument.json"), "--model_name_or_path", str(hf_lm),
          "--train_datasets", f"json:1.0:{REPO / 'tests/fixtures/hh_rlhf_harmless_200.jsonl'}",
          "--output_dir", str(rm), "--max_steps", "2", "--max_length", "64", "--max_prompt_length", "32",
          "--per_device_train_batch_size", "4", "--eval_split_ratio", "0", "--do_eval", "false",
          "--evaluation_strategy", "no", "--score_bias", "true"])
    summary = export_hf(str(rm), str(exported))
    assert summary["architecture"] == "LlamaForSequenceClassification"
    config = json.loads((exported / "config.json").read_text())
    assert config["num_labels"] == 1 and (exported / "value_head.safetensors").is_file()
    ours = _end_scores(ScoreModel.from_pretrained(str(rm)))

    # independent reader: PaddleNLP's convert_from_torch for the backbone, score.weight applied by hand
    backbone = _paddlenlp_convert_from_torch(exported, tmp_path, auto="AutoModel")
    backbone.eval()
    with paddle.no_grad():
        hidden = backbone(input_ids=paddle.to_tensor(IDS), attention_mask=paddle.to_tensor(MASK))[0].numpy()
    last = np.asarray(MASK).sum(axis=1) - 1
    w = load_file(str(exported / "model.safetensors"))["score.weight"]  # [num_labels, hidden]
    theirs = hidden[np.arange(len(IDS)), last] @ w.T.astype("float32")
    theirs = theirs[:, 0] + np.asarray(config["score_offset"], "float32")[0]
    diff = float(np.abs(ours - theirs).max())
    print(f"reward model -> export -> convert_from_torch backbone + score.weight: max |score diff| {diff:.2e}")
    assert diff <= TOL
    np.testing.assert_allclose(_end_scores(ScoreModel.from_pretrained(str(exported))), ours, atol=TOL, rtol=0)
    assert ScoreModel.from_pretrained(paddle_dir(str(exported))).score_config.bias  # head bias kept on re-import

    transformers = _transformers()
    if transformers is None:
        pytest.skip(NO_TRANSFORMERS)
    import torch

    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(exported)).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits.numpy()[:, 0]
    assert float(np.abs(logits + config["score_offset"][0] - ours).max()) <= TOL


def test_adapter_only_lora_checkpoint_is_refused_with_the_export_command(tmp_path):
    from alignment.models.loading import ModelPathError, resolve_model_path

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "lora_config.json").write_text("{}")
    (tmp_path / "lora_model_state.pdparams").write_bytes(b"")
    with pytest.raises(ModelPathError, match="LoRA adapters only.*alignment.tools.export"):
        resolve_model_path(str(tmp_path))

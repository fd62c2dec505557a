"""DPO (sigmoid, ipo, simpo, orpo), KTO and GKD under tensor and pipeline parallelism reproduce one process.

Each case runs the stage's ``run_*.py`` once in one process and once under ``paddle.distributed.launch``
(2 processes, CPU/gloo) with the same model, data and seed, and compares the per-step train losses
(``metrics.jsonl``, LOSS_ATOL) and the single-process checkpoint each run writes (WEIGHT_ATOL, rtol 0).

* DPO-family losses under TP2 and PP2: under PP the policy is a ``PipelineLayer`` whose last stage computes
  the preference loss; sigmoid and ipo need the reference, whose log-probs are precomputed once. DPO also
  under sharding stage2.
* KTO under TP2 and PP2: the KL reference point is averaged over the data-carrying ranks only; under PP
  the completions and KL completions go through the pipeline as 2B rows, scored first by the reference.
* GKD under TP2 and PP2 with on-policy sampling (lmbda 0.5) against a different teacher: the JSD is computed
  vocabulary-parallel and the sampled completions are the same tokens as in one process (under PP they
  come from a generation copy of the student refreshed after each update).
Measured (2 cores): losses within ~5e-7, weights within ~1e-5 after 3 steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.models.loading import read_weights
from alignment.utils.trainer import read_metrics

from .launching import REPO, launch, run_single

pytestmark = pytest.mark.distributed

LOSS_ATOL = 1e-5
WEIGHT_ATOL = 5e-5
SCRIPTS = {"dpo": "alignment/dpo/run_dpo.py", "simpo": "alignment/dpo/run_dpo.py",
           "orpo": "alignment/dpo/run_dpo.py", "kto": "alignment/kto/run_kto.py", "gkd": "alignment/gkd/run_gkd.py"}
CASES = [
    ("dpo", ("--loss_type", "sigmoid"), "tp2"), ("dpo", ("--loss_type", "sigmoid"), "pp2"),
    ("dpo", ("--loss_type", "ipo"), "tp2"), ("dpo", ("--loss_type", "ipo"), "pp2"),
    ("simpo", (), "tp2"), ("simpo", (), "pp2"), ("orpo", (), "tp2"), ("orpo", (), "pp2"),
    ("kto", (), "tp2"), ("kto", (), "pp2"), ("gkd", (), "tp2"), ("gkd", (), "pp2"),
    # LoRA on the student's stages: on-policy samples come from a generation copy with the adapters merged in
    ("gkd", ("--lora", "true", "--lora_dropout", 0, "--merge_lora_on_save", "true"), "pp2"),
    # 8 training pairs (a multiple of the global batch 4): a short last batch would be padded differently
    ("dpo", ("--loss_type", "sigmoid", "--eval_split_ratio", 0.12), "sharding_stage2"),
]
LAYOUT_FLAGS = {"tp2": ("--tensor_parallel_degree", 2), "pp2": ("--pipeline_parallel_degree", 2),
                # sharding ranks carry different data: half the per-device batch keeps the global batch 4
                "sharding_stage2": ("--sharding_parallel_degree", 2, "--sharding", "stage2",
                                    "--per_device_train_batch_size", 2)}


@pytest.fixture(scope="module")
def teacher_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with every weight scaled by 1.1: a teacher GKD can learn something from."""
    from paddlenlp.transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("teacher") / "teacher"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with paddle.no_grad():
        for p in model.parameters():
            p.set_value(p * 1.1)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


def _argv(stage, model, out, extra, teacher):
    argv = [f"config/llama/tiny/{stage}_argument.json", "--model_name_or_path", model, "--output_dir", out,
            "--max_steps", 3, "--logging_steps", 1, "--do_eval", "false", "--evaluation_strategy", "no", *extra]
    if stage == "gkd":
        argv += ["--teacher_model_name_or_path", teacher, "--lmbda", 0.5]
    return argv


def _losses(out: Path):
    return [r["loss"] for r in read_metrics(str(out)) if "loss" in r and "train_loss" not in r]


_BASELINES = {}


def _baseline(stage, extra, model, teacher, root: Path) -> Path:
    key = (stage, extra)
    if key not in _BASELINES:
        out = root / f"single_{stage}_{'_'.join(map(str, extra)) or 'default'}"
        run_single(REPO / SCRIPTS[stage], _argv(stage, model, out, extra, teacher), out.with_suffix(".log"))
        _BASELINES[key] = out
    return _BASELINES[key]


@pytest.mark.parametrize("stage,extra,layout", CASES,
                         ids=[f"{s}-{'-'.join(map(str, e[1:])) or s}-{lay}" for s, e, lay in CASES])
def test_layout_matches_one_process(stage, extra, layout, tiny_model_dir, teacher_dir, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "preference_layouts"
    root.mkdir(exist_ok=True)
    single = _baseline(stage, extra, tiny_model_dir, teacher_dir, root)
    out = root / f"{layout}_{stage}_{'_'.join(map(str, extra)) or 'default'}"
    launch(REPO / SCRIPTS[stage], _argv(stage, tiny_model_dir, out, (*extra, *LAYOUT_FLAGS[layout]), teacher_dir),
           out.with_suffix(".log"), nproc=2)
    a, b = _losses(single), _losses(out)
    assert len(a) == len(b) == 3, (a, b)
    assert a[-1] != a[0]  # the run trains: a comparison of constant losses would prove nothing
    print(f"{stage} {extra} {layout}: loss max abs diff {np.abs(np.subtract(a, b)).max():.2e}")
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=LOSS_ATOL)
    wa = read_weights(str(single))
    wb = read_weights(str(out))
    assert sorted(wa) == sorted(wb)
    diff = max(float(np.abs(wa[k].numpy() - wb[k].numpy()).max()) for k in wa)
    print(f"{stage} {extra} {layout}: weight max abs diff {diff:.2e}")
    assert diff <= WEIGHT_ATOL

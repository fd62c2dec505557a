"""PPO and GRPO under tensor / pipeline / sharding layouts reproduce one process (CPU, gloo).

Each layout runs ``alignment/ppo/run_ppo.py`` for two full steps (rollout, experience, advantages, actor and
critic updates) under ``paddle.distributed.launch`` and is compared with one process on the same model,
data and seed: every logged metric of every step (METRIC_RTOL / METRIC_ATOL) and the saved ``policy`` /
``value`` weights (WEIGHT_ATOL, rtol 0; measured <= 6.3e-5 for the policy - the first Adam steps turn
float32 reduction-order differences of near-zero gradients into steps of up to the learning rate 1e-3 -
and <= 3.2e-6 for the value model; metrics within 3e-7).

* TP2 with sampling (temperature 1): the sampled tokens are the same as in one process, because
  generation gathers the last position's vocabulary-parallel logits and broadcasts the sampled ids;
* PP2 with ``eval_mode tensor_parallel``: actor and critic are pipeline stages, rollouts come from a
  generation copy refreshed each step (``reshard_seconds`` / ``reshard_bytes`` are logged);
* sharding stage2 (data world 2: half the per-device prompt and train batches against one process with one
  8-row micro-batch, greedy decoding so both ranks' samples are those of one process);
* TP2 x PP2 (4 processes, slow), GRPO under TP2, and PP2 with a ptx loss and 2 accumulated micro-batches
  (ptx micro-batches ride in the actor's ``train_batch``, padded to the cycle's sequence length);
* the resharded copy generates token for token what the single-process model generates (greedy and
  sampled), for ``eval_mode`` tensor_parallel (PP2) and single (TP2 x PP2, slow);
* a TP2 run resumed from its step-1 checkpoint under TP2 continues the uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from alignment.models.loading import read_weights

from .launching import REPO, launch, run_single

pytestmark = pytest.mark.distributed

SCRIPT = REPO / "alignment/ppo/run_ppo.py"
WORKER = Path(__file__).with_name("_reshard_worker.py")
METRIC_RTOL, METRIC_ATOL = 1e-4, 1e-5
WEIGHT_ATOL = 2e-4
# clip fractions are counts: one token on the clip boundary may flip between layouts, so they are not compared
COMPARED = ("reward", "kl_divergence", "actor_loss", "critic_loss", "pg_loss", "returns", "values", "advantages",
            "response_length", "actor_ratio_mean", "actor_approx_kl", "ptx_loss")
WORDS = "apple banana cherry dog egg fish grape house ice juice kite lemon moon nest orange pear".split()


@pytest.fixture(scope="module")
def ppo_inputs(tiny_model_dir, tmp_path_factory):
    """(prompts file, reward model dir) shared by every case."""
    from alignment.models.score_model import ScoreModel

    root = tmp_path_factory.mktemp("ppo_layouts")
    rng = np.random.default_rng(0)
    prompts = root / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i in range(32):
            f.write(json.dumps({"prompt": f"{' '.join(rng.choice(WORDS, 4))} {i}"}) + "\n")
    with open(root / "ptx.jsonl", "w") as f:
        for i in range(16):
            f.write(json.dumps({"instruction": f"say {WORDS[i]}", "input": "", "output": f"{WORDS[i]} {WORDS[-1 - i]}"})
                    + "\n")
    paddle.seed(3)
    rm = root / "rm"
    ScoreModel.from_pretrained(str(tiny_model_dir), score_type="reward", init_score_head=True).save_pretrained(str(rm))
    from paddlenlp.transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(rm))
    return prompts, rm


def _argv(model, rm, prompts, out, *extra):
    return ["config/llama/tiny/ppo_argument.json", "--actor_model_name_or_path", model,
            "--reward_model_name_or_path", rm, "--reward_critic_model_name_or_path", model,
            "--train_datasets", f"json:1.0:{prompts}", "--eval_datasets", f"json:1.0:{prompts}",
            "--output_dir", out, "--max_steps", 2, "--num_return_sequences", 2, "--max_dec_len", 6,
            "--update_iters", 2, "--normalize_reward", "true", "--normalize_advantage", "true",
            "--evaluation_strategy", "no", "--save_strategy", "no", "--report_to", "none", *extra]


def _records(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


_RUNS = {}


def _run(name, nproc, extra, tiny_model_dir, ppo_inputs, root):
    if name not in _RUNS:
        prompts, rm = ppo_inputs
        out = root / name
        extra = tuple(f"json:1.0:{prompts.with_name('ptx.jsonl')}" if x == "PTX" else x for x in extra)
        argv = _argv(tiny_model_dir, rm, prompts, out, *extra)
        if nproc == 1:
            run_single(SCRIPT, argv, root / f"{name}.log")
        else:
            launch(SCRIPT, argv, root / f"{name}.log", nproc=nproc)
        _RUNS[name] = out
    return _RUNS[name]


def _compare(single: Path, other: Path, label: str, critic: bool = True) -> None:
    a, b = _records(single), _records(other)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    worst = 0.0
    for ra, rb in zip(a, b):
        for key in COMPARED:
            if key not in ra:
                continue
            np.testing.assert_allclose(rb[key], ra[key], rtol=METRIC_RTOL, atol=METRIC_ATOL,
                                       err_msg=f"{label} step {ra['step']} {key}")
            worst = max(worst, abs(rb[key] - ra[key]))
    for sub in ("policy", "value") if critic else ("policy",):
        wa = read_weights(str(single / sub))
        wb = read_weights(str(other / sub))
        assert sorted(wa) == sorted(wb), set(wa) ^ set(wb)
        diff = max(float(np.abs(wa[k].numpy() - wb[k].numpy()).max()) for k in wa)
        print(f"{label}: worst metric diff {worst:.2e}, {sub} weight diff {diff:.2e}")
        assert diff <= WEIGHT_ATOL, (sub, diff)
    assert json.loads((other / "policy" / "config.json").read_text()).get("tensor_parallel_degree", 1) == 1


LAYOUTS = {
    "tp2": (2, ("--tensor_parallel_degree", 2), "single"),
    "pp2": (2, ("--pipeline_parallel_degree", 2, "--eval_mode", "tensor_parallel"), "single"),
    "sharding_stage2": (2, ("--sharding_parallel_degree", 2, "--sharding", "stage2", "--top_k", 1,
                            "--per_device_prompt_batch_size", 2, "--per_device_train_batch_size", 4), "greedy"),
    # the actor and critic wrapped by group_sharded stage 3, the frozen reference and reward sharded by
    # alignment.parallel.frozen (their parameters gathered layer by layer in every forward)
    "sharding_stage3": (2, ("--sharding_parallel_degree", 2, "--sharding", "stage3", "--top_k", 1,
                            "--per_device_prompt_batch_size", 2, "--per_device_train_batch_size", 4), "greedy"),
    "tp2xpp2": (4, ("--tensor_parallel_degree", 2, "--pipeline_parallel_degree", 2), "single"),
    # ptx micro-batches interleaved with the rollout ones in each train_batch, 2 micro-batches per step
    "pp2_ptx_gas2": (2, ("--pipeline_parallel_degree", 2, "--ptx_datasets", "PTX", "--ptx_coeff", 0.5,
                         "--gradient_accumulation_steps", 2), "ptx_gas2"),
    "grpo_tp2": (2, ("--rl_algorithm", "grpo", "--num_return_sequences", 4, "--tensor_parallel_degree", 2),
                 "grpo"),
}
BASELINES = {"ptx_gas2": ("--ptx_datasets", "PTX", "--ptx_coeff", 0.5, "--gradient_accumulation_steps", 2),
             "single": (), "greedy": ("--top_k", 1, "--per_device_train_batch_size", 8), "grpo": ("--rl_algorithm", "grpo", "--num_return_sequences", 4)}


@pytest.mark.parametrize("layout", [pytest.param(k, marks=pytest.mark.slow) if k == "tp2xpp2" else k
                                    for k in LAYOUTS])
def test_ppo_layout_matches_one_process(layout, tiny_model_dir, ppo_inputs, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "ppo_layout_runs"
    root.mkdir(exist_ok=True)
    nproc, flags, baseline = LAYOUTS[layout]
    single = _run(f"single_{baseline}", 1, BASELINES[baseline], tiny_model_dir, ppo_inputs, root)
    other = _run(layout, nproc, flags, tiny_model_dir, ppo_inputs, root)
    _compare(single, other, layout, critic=baseline != "grpo")
    if layout == "sharding_stage3":
        here = json.loads((other / "placement.json").read_text())["models"]
        assert here["reference"]["placement"] == here["reward_model"]["placement"] == "stage3 shards", here
    if layout.startswith("pp2") or layout == "tp2xpp2":
        # the frozen reference and reward models are pipeline stages too: rank 0 holds part of each
        whole = json.loads((single / "placement.json").read_text())["models"]
        here = json.loads((other / "placement.json").read_text())["models"]
        for role in ("actor", "critic", "reference", "reward_model"):
            assert here[role]["placement"] == "pipeline stages", (role, here[role])
            assert here[role]["parameters_on_rank"] < 0.75 * whole[role]["parameters_on_rank"], (role, here, whole)
        if "ptx" in layout:
            assert all("ptx_loss" in r for r in _records(other))
        records = _records(other)
        assert all(r["reshard_bytes"] > 0 and r["reshard_seconds"] > 0 for r in records)


@pytest.mark.parametrize("mode,nproc", [("tensor_parallel", 2), pytest.param("single", 4, marks=pytest.mark.slow)])
def test_resharded_generation_copy_generates_what_one_process_does(mode, nproc, tiny_model_dir, tmp_path):
    run_single(WORKER, [tiny_model_dir, tmp_path, mode], tmp_path / "single.log")
    launch(WORKER, [tiny_model_dir, tmp_path, mode], tmp_path / "launch.log", nproc=nproc)
    one = json.loads((tmp_path / "single_rank0.json").read_text())
    for r in range(nproc):
        got = json.loads((tmp_path / f"{mode}_w{nproc}_rank{r}.json").read_text())
        assert got["copy_params"] > got["stage_params"]  # the copy holds every stage's layers
        assert got["reshard"]["reshard_bytes"] > 0
        assert got["tokens_sample_False"] == one["tokens_sample_False"]  # greedy, token for token
        assert got["tokens_sample_True"] == one["tokens_sample_True"]
        np.testing.assert_allclose(got["logps"], one["logps"], rtol=0, atol=1e-5)


def test_tp2_resume_continues_the_same_run(tiny_model_dir, ppo_inputs, tmp_path):
    prompts, rm = ppo_inputs
    flags = ("--tensor_parallel_degree", 2, "--save_strategy", "steps", "--save_steps", 1, "--save_total_limit", 3)
    full = tmp_path / "full"
    launch(SCRIPT, _argv(tiny_model_dir, rm, prompts, full, *flags), tmp_path / "full.log")
    assert (full / "checkpoint-1" / "shards" / "rank1.safetensors").exists()
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(full / "checkpoint-1", resumed / "checkpoint-1")
    launch(SCRIPT, _argv(tiny_model_dir, rm, prompts, resumed, *flags, "--resume_from_checkpoint", "latest"),
           tmp_path / "resumed.log")
    a = [r for r in _records(full) if r["step"] == 2]
    b = [r for r in _records(resumed) if r["step"] == 2]
    assert len(a) == len(b) == 1
    for key in COMPARED:
        if key in a[0]:
            np.testing.assert_allclose(b[0][key], a[0][key], rtol=1e-6, atol=1e-7, err_msg=key)
    wa = read_weights(str(full / "policy"))
    wb = read_weights(str(resumed / "policy"))
    assert max(float(np.abs(wa[k].numpy() - wb[k].numpy()).max()) for k in wa) < 1e-6

"""The SFT and reward-model stages under every parallel layout reproduce one process (CPU, gloo).

Layouts (``paddle.distributed.launch`` on this machine): tensor parallel 2, pipeline parallel 2, sharding 2
with stage1 / stage2 / stage3 (2 processes each) and TP2 x PP2 (4 processes, ``slow``). Each run is compared
with one single-process run of the same stage (both run as subprocesses, each layout once per module):

* per-step train losses (``metrics.jsonl``) within LOSS_ATOL, and the eval loss at the last step;
* the single-process checkpoint every layout writes (``model.safetensors``, plus ``value_head.safetensors``
  for the reward model): the same keys and shapes, values within WEIGHT_ATOL (rtol 0). The losses agree to
  ~1e-7; the weights drift more (~1e-5 after 4 steps) because Adam divides by the square root of tiny second
  moments, which amplifies float32 reduction-order differences.

Same global batches everywhere: tensor and pipeline ranks share their data, sharding ranks carry different
data (data-parallel world 2), so sharding runs use half the per-device batch.

Also here: the TP2 x PP2 checkpoints load in one process and give the baseline's logits / scores and the
in-run eval loss; an SFT run under TP2 (and TP2 x PP2) resumed from its step-2 checkpoint under the same
layout continues the uninterrupted run; two ``--nnodes 2`` launchers on loopback (one process each) run the reward model with
tensor parallel 2 across the "nodes" and match one process. Measured differences are printed (pytest -s).
"""

from __future__ import annotations

import glob
import json
import random
import shutil
import socket
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import paddle
import pytest

from alignment.utils.trainer import read_metrics

from .launching import REPO, launch, launch_command, launch_together, run_single

pytestmark = pytest.mark.distributed

SCRIPTS = {"sft": REPO / "alignment/sft/run_sft.py", "rm": REPO / "alignment/rm/run_reward.py"}
ALPACA = "tests/fixtures/llamafactory_alpaca_en_demo_first10.json"
LOSS_ATOL = 1e-5    # per-step train losses and eval losses (measured: <= ~1e-7)
WEIGHT_ATOL = 5e-5  # saved weights, rtol 0 (measured: <= ~1.3e-5)
OUTPUT_ATOL = 1e-4  # logits / scores of the TP2 x PP2 checkpoint vs the baseline's: the weight drift's effect
TIMEOUT = 300       # seconds per launch; a hang fails the test instead of blocking CI
NOUNS = "pie car tree river house dog song book road cloud apple lamp".split()


@dataclass(frozen=True)
class Layout:
    nproc: int
    flags: Tuple = ()
    data_world: int = 1  # ranks that carry different data (sharding x data parallel)


LAYOUTS: Dict[str, Layout] = {
    "single": Layout(1),
    "tp2": Layout(2, ("--tensor_parallel_degree", 2)),
    "pp2": Layout(2, ("--pipeline_parallel_degree", 2)),
    "sharding_stage1": Layout(2, ("--sharding_parallel_degree", 2, "--sharding", "stage1"), data_world=2),
    "sharding_stage2": Layout(2, ("--sharding_parallel_degree", 2, "--sharding", "stage2"), data_world=2),
    "sharding_stage3": Layout(2, ("--sharding_parallel_degree", 2, "--sharding", "stage3"), data_world=2),
    "tp2xpp2": Layout(4, ("--tensor_parallel_degree", 2, "--pipeline_parallel_degree", 2)),
}
BATCH = {"sft": (4, 2), "rm": (4, 4)}  # (train, eval) batch of one process; divided by the data world
# the SFT TP2 and TP2 x PP2 runs also save step checkpoints (saving does not change a run) for the resume test
EXTRA = {("sft", "tp2"): ("--save_strategy", "steps", "--save_steps", 2),
         ("sft", "tp2xpp2"): ("--save_strategy", "steps", "--save_steps", 2)}


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marker_pairs(path: Path, n: int = 64, seed: int = 0) -> Path:
    """As tests/stages/test_rm.py: chosen answers end in 'thank you', rejected ones in 'go away'."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            words = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(3, 6)))
            f.write(json.dumps({"prompt": f"Tell me about the {rng.choice(NOUNS)} number {i}.",
                                "chosen": f"{words}, thank you", "rejected": f"{words}, go away"}) + "\n")
    return path


class Runs:
    """Every (stage, layout) run at most once per module, on first use; ``get`` returns its output_dir."""

    def __init__(self, root: Path, tiny: Path):
        self.root, self.tiny = root, tiny
        self._out: Dict[Tuple[str, str], Path] = {}
        self._rm_inputs = None

    def rm_inputs(self) -> Tuple[Path, Path]:
        """(score checkpoint with a head, 64 synthetic pairs), made once in this process."""
        if self._rm_inputs is None:
            from alignment.models import ScoreModel

            rm0 = self.root / "rm0"
            ScoreModel.from_pretrained(str(self.tiny), init_score_head=True).save_pretrained(str(rm0))
            for pattern in ("*token*", "*.model", "special_tokens_map.json"):
                for p in glob.glob(str(self.tiny / pattern)):
                    shutil.copy(p, rm0)
            self._rm_inputs = rm0, _marker_pairs(self.root / "pairs.jsonl")
        return self._rm_inputs

    def argv(self, stage: str, layout: str, out: Path, model: Path = None) -> list:
        return [str(a) for a in self._argv(stage, layout, out, model)]

    def _argv(self, stage: str, layout: str, out: Path, model: Path = None) -> list:
        lay = LAYOUTS[layout]
        train_bs, eval_bs = (b // lay.data_world for b in BATCH[stage])
        common = ["--output_dir", out, "--max_steps", 4, "--eval_steps", 4, "--logging_steps", 1,
                  "--per_device_train_batch_size", train_bs, "--per_device_eval_batch_size", eval_bs,
                  "--do_eval", "false", *lay.flags]
        if stage == "sft":
            return ["config/llama/tiny/sft_argument.json", "--model_name_or_path", model or self.tiny,
                    "--train_datasets", f"json:1.0:{ALPACA}", "--max_length", 128, "--eval_split_ratio", 0.2,
                    *common]
        rm0, pairs = self.rm_inputs()
        return ["config/llama/tiny/rm_argument.json", "--model_name_or_path", model or rm0,
                "--init_score_head", "false", "--train_datasets", f"json:1.0:{pairs}", "--max_length", 64,
                "--max_prompt_length", 32, "--eval_split_ratio", 0.25, *common]

    def get(self, stage: str, layout: str) -> Path:
        key = (stage, layout)
        if key not in self._out:
            out = self.root / f"{stage}-{layout}"
            argv = self.argv(stage, layout, out) + list(EXTRA.get(key, ()))
            start = time.perf_counter()
            if layout == "single":
                run_single(SCRIPTS[stage], argv, out.with_suffix(".log"), timeout=TIMEOUT)
            else:
                launch(SCRIPTS[stage], argv, out.with_suffix(".log"), nproc=LAYOUTS[layout].nproc,
                       timeout=TIMEOUT)
            wall = time.perf_counter() - start
            print(f"\n[{stage} {layout}: {LAYOUTS[layout].nproc} process(es), {wall:.1f} s]")
            self._out[key] = out
        return self._out[key]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("layouts"), tiny_model_dir)


def step_losses(out: Path) -> Dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(str(out)) if "loss" in r and "train_loss" not in r}


def first_eval_loss(out: Path) -> float:
    return next(r["eval_loss"] for r in read_metrics(str(out)) if "eval_loss" in r)


def saved_weights(out: Path) -> Dict[str, np.ndarray]:
    """The single-process checkpoint in ``out``: model.safetensors (+ value_head.safetensors, prefixed)."""
    from safetensors.numpy import load_file

    state = dict(load_file(str(out / "model.safetensors")))
    head = out / "value_head.safetensors"
    if head.exists():
        state.update({f"value_head/{k}": v for k, v in load_file(str(head)).items()})
    return state


def compare_losses(got: Path, want: Path, steps: Sequence[int] = (1, 2, 3, 4)) -> float:
    a, b = step_losses(got), step_losses(want)
    assert sorted(a) == list(steps) and set(steps) <= set(b), (a, b)
    la, lb = [a[s] for s in steps], [b[s] for s in steps]
    np.testing.assert_allclose(la, lb, rtol=0, atol=LOSS_ATOL, err_msg=f"per-step losses {la} vs {lb}")
    return float(np.abs(np.subtract(la, lb)).max())


def compare_weights(got: Path, want: Path) -> float:
    a, b = saved_weights(got), saved_weights(want)
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))
    worst = 0.0
    for k in sorted(b):
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=WEIGHT_ATOL, err_msg=k)
        worst = max(worst, float(np.abs(a[k].astype("float64") - b[k]).max()))
    return worst


@pytest.mark.parametrize("stage", ["sft", "rm"])
@pytest.mark.parametrize("layout", [
    "tp2", "pp2", "sharding_stage1", "sharding_stage2", "sharding_stage3",
    pytest.param("tp2xpp2", marks=pytest.mark.slow),
])
def test_layout_reproduces_one_process(runs, stage, layout):
    base, out = runs.get(stage, "single"), runs.get(stage, layout)
    loss_diff = compare_losses(out, base)
    eval_diff = abs(first_eval_loss(out) - first_eval_loss(base))
    assert eval_diff <= LOSS_ATOL, (first_eval_loss(out), first_eval_loss(base))
    weight_diff = compare_weights(out, base)
    print(f"{stage} {layout} vs one process: max |loss diff| {loss_diff:.1e} (atol {LOSS_ATOL:g}), "
          f"|eval_loss diff| {eval_diff:.1e}, max |weight diff| {weight_diff:.1e} (atol {WEIGHT_ATOL:g})")
    config = json.loads((out / "config.json").read_text())
    assert config.get("tensor_parallel_degree", 1) == 1  # a single-process checkpoint
    if stage == "rm":  # the pair metrics are logged under every layout (pipeline: from the last stage)
        for key in ("accuracy", "rewards/margins", "eval_accuracy", "eval_rewards/margins", "eval_rewards_std"):
            a = [r[key] for r in read_metrics(str(base)) if key in r]
            b = [r[key] for r in read_metrics(str(out)) if key in r]
            assert len(a) == len(b) >= 1, (key, a, b)
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=key)


def _logits(model, ids, mask):
    model.eval()
    with paddle.no_grad():
        return model(input_ids=ids, attention_mask=mask, return_dict=True).logits.numpy()


def _end_scores(model, batch):
    model.eval()
    with paddle.no_grad():
        c = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).end_scores
        r = model(batch["rejected_input_ids"], attention_mask=batch["rejected_attention_mask"]).end_scores
    return np.concatenate([c.numpy().reshape(-1), r.numpy().reshape(-1)])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_tp2xpp2_checkpoint_loads_in_one_process(runs, stage, tmp_path, monkeypatch):
    """The merged TP2 x PP2 checkpoint, loaded by one process: the baseline checkpoint's outputs (within the
    effect of the weight drift, OUTPUT_ATOL) and the in-run model's eval loss (recorded at step 4 by the
    4-process run, after the last update; LOSS_ATOL)."""
    monkeypatch.chdir(REPO)  # the tiny configs use repo-relative paths
    base, out = runs.get(stage, "single"), runs.get(stage, "tp2xpp2")
    argv = runs.argv(stage, "single", tmp_path / "eval", model=out)
    if stage == "sft":
        from paddlenlp.transformers import AutoModelForCausalLM

        from alignment.sft.run_sft import build_trainer

        trainer = build_trainer(argv)
        batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        got = _logits(AutoModelForCausalLM.from_pretrained(str(out)), ids, mask)
        want = _logits(AutoModelForCausalLM.from_pretrained(str(base)), ids, mask)
        what = "logits"
    else:
        from alignment.models import ScoreModel
        from alignment.rm.run_reward import build_trainer

        trainer = build_trainer(argv)
        batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])
        got = _end_scores(ScoreModel.from_pretrained(str(out)), batch)
        want = _end_scores(ScoreModel.from_pretrained(str(base)), batch)
        what = "end scores"
    output_diff = float(np.abs(got - want).max())
    reloaded_eval = trainer.evaluate()["eval_loss"]
    in_run_eval = first_eval_loss(out)
    print(f"{stage} TP2xPP2 checkpoint in one process: max |{what} diff| vs baseline checkpoint "
          f"{output_diff:.1e} (atol {OUTPUT_ATOL:g}, |{what}| up to {np.abs(want).max():.2f}); "
          f"eval_loss {reloaded_eval:.7f} vs "
          f"in-run {in_run_eval:.7f} (diff {abs(reloaded_eval - in_run_eval):.1e})")
    np.testing.assert_allclose(got, want, rtol=0, atol=OUTPUT_ATOL)
    assert abs(reloaded_eval - in_run_eval) <= LOSS_ATOL, (reloaded_eval, in_run_eval)


@pytest.mark.parametrize("layout,shards", [
    ("tp2", ("tp00", "tp01")),
    pytest.param("tp2xpp2", tuple(f"tp0{t}_pp0{p}" for t in (0, 1) for p in (0, 1)), marks=pytest.mark.slow),
])
def test_sft_resume_under_the_same_layout_continues_the_run(runs, layout, shards, tmp_path):
    """The layout run saves per-rank shards at step 2; a second run of that layout from checkpoint-2 gives the
    same steps 3-4 and the same final weights."""
    full = runs.get("sft", layout)
    checkpoint = full / "checkpoint-2"
    names = {p.name for p in checkpoint.iterdir()}
    expected = {f"model.{s}.safetensors" for s in shards} | {f"optimizer.{s}.pdopt" for s in shards}
    assert expected <= names, sorted(names)
    resumed = tmp_path / "resumed"
    launch(SCRIPTS["sft"], runs.argv("sft", layout, resumed) + ["--resume_from_checkpoint", checkpoint],
           tmp_path / "log", nproc=LAYOUTS[layout].nproc, timeout=TIMEOUT)
    loss_diff = compare_losses(resumed, full, steps=(3, 4))
    weight_diff = compare_weights(resumed, full)
    print(f"sft {layout} resumed at step 2 vs uninterrupted: max |loss diff| steps 3-4 {loss_diff:.1e}, "
          f"max |weight diff| {weight_diff:.1e}")


def test_two_node_launch_reward_model_tp2_matches_one_process(runs, tmp_path):
    """Two launchers (``--nnodes 2 --rank 0|1``, one process each, loopback): TP2 across two "nodes"."""
    port = _free_port()
    commands, logs = [], []
    for rank in (0, 1):
        logs.append(tmp_path / f"node{rank}.log")
        commands.append(launch_command(
            SCRIPTS["rm"], runs.argv("rm", "tp2", tmp_path / f"node{rank}"), logs[-1], nproc=1,
            launcher_args=["--master", f"127.0.0.1:{port}", "--nnodes", 2, "--rank", rank,
                           "--host", "127.0.0.1"]))
    base = runs.get("rm", "single")
    start = time.perf_counter()
    launch_together(commands, logs, timeout=TIMEOUT)
    wall = time.perf_counter() - start
    out = tmp_path / "node0"  # global rank 0 writes the metrics and the merged checkpoint
    loss_diff = compare_losses(out, base)
    weight_diff = compare_weights(out, base)
    print(f"rm TP2 over two 1-process launchers ({wall:.1f} s) vs one process: "
          f"max |loss diff| {loss_diff:.1e}, "
          f"max |weight diff| {weight_diff:.1e}")
    env = (tmp_path / "node1.log" / "envlog.0").read_text()
    assert "PADDLE_TRAINER_ID=1" in env and "PADDLE_TRAINERS_NUM=2" in env  # node 1 ran global rank 1


def _with(argv: list, **values) -> list:
    """``argv`` with the values of existing ``--name value`` flags replaced (no flag given twice)."""
    out = list(argv)
    for name, value in values.items():
        out[out.index(f"--{name}") + 1] = str(value)
    return out


def test_pipeline_short_micro_batch_inside_a_cycle(runs, tmp_path):
    """10 SFT examples in batches of 3 with 2 accumulation steps under PP2: the second cycle holds a full
    micro-batch and a short one of 1 row (filled up with copies that the criterion drops; before that fix
    gloo aborted on the backward receive size). Losses of both steps and the final weights equal one process."""
    def argv(layout, out):
        base = _with(runs.argv("sft", layout, out), eval_split_ratio=0, per_device_train_batch_size=3,
                     max_steps=-1)
        return base + ["--gradient_accumulation_steps", "2", "--num_train_epochs", "1"]

    run_single(SCRIPTS["sft"], argv("single", tmp_path / "single"), tmp_path / "single.log", timeout=TIMEOUT)
    launch(SCRIPTS["sft"], argv("pp2", tmp_path / "pp2"), tmp_path / "pp2.log", nproc=2, timeout=TIMEOUT)
    loss_diff = compare_losses(tmp_path / "pp2", tmp_path / "single", steps=(1, 2))
    weight_diff = compare_weights(tmp_path / "pp2", tmp_path / "single")
    print(f"PP2 cycle (3 rows, 1 row): max |loss diff| {loss_diff:.1e}, max |weight diff| {weight_diff:.1e}")


def test_sft_lora_under_pipeline_parallel_matches_one_process(runs, tmp_path):
    """LoRA adapters on pipeline stages (PP2): the same per-step losses as one process (the adapters start from
    their names and the seed, not from the build order; lora_dropout 0 so no random masks differ), and the
    merged single-process checkpoint (``merge_lora_on_save``, gathered over the stages) equals the one-process
    merged model."""
    def argv(layout, out):
        return runs.argv("sft", layout, out) + ["--lora", "true", "--lora_dropout", "0", "--merge_lora_on_save",
                                                "true"]

    run_single(SCRIPTS["sft"], argv("single", tmp_path / "single"), tmp_path / "single.log", timeout=TIMEOUT)
    launch(SCRIPTS["sft"], argv("pp2", tmp_path / "pp2"), tmp_path / "pp2.log", nproc=2, timeout=TIMEOUT)
    loss_diff = compare_losses(tmp_path / "pp2", tmp_path / "single")
    weight_diff = compare_weights(tmp_path / "pp2", tmp_path / "single")
    base = dict(__import__("safetensors.numpy", fromlist=["load_file"]).load_file(str(runs.tiny / "model.safetensors")))
    moved = max(float(np.abs(v - base[k]).max()) for k, v in saved_weights(tmp_path / "single").items())
    assert moved > 1e-4, moved  # the merged adapters changed the weights
    print(f"SFT LoRA PP2 vs one process: max |loss diff| {loss_diff:.1e}, max |merged weight diff| "
          f"{weight_diff:.1e} (weights moved {moved:.1e} from the base)")

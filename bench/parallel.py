"""Benchmark the parallel layouts of the SFT stage: step time and what each rank holds in memory.

For every layout -- one process; data parallel 2 (DP2); tensor parallel 2 (TP2); pipeline parallel 2 (PP2);
sharding stage1 / stage2 / stage3 at degree 2; TP2 x PP2 (4 processes) -- the SFT stage itself runs
(``alignment.sft.run_sft.build_trainer`` with ``--tensor_parallel_degree`` / ``--pipeline_parallel_degree`` /
``--sharding_parallel_degree`` / ``--sharding``, under ``paddle.distributed.launch`` over gloo) on a random
Llama built by ``alignment.tools.make_tiny_model`` and the alpaca fixture, with the same global batch
(``--global-batch`` sequences per optimizer step) in every layout, so every layout trains on the same batches.
The ``*_strategy`` layouts run the three sharding stages once more through ``ParallelStrategy
.wrap_model_and_optimizer`` (the Trainer's model, AdamW, schedule, batches and ``compute_loss``, in a plain
forward / backward / ``optimizer.step()`` loop) instead of the Trainer's own wrapping. On every rank a probe
records

* the step time, forward to the end of the optimizer step (data loading and logging excluded), median over
  ``--steps`` steps after ``--warmup``; the table shows the slowest rank's median, that rank's CPU time per
  step and the 1-minute load average (other work on the machine inflates wall times; CPU time less so);
* the bytes this rank *holds*, walked, not derived from theory:
  parameters  the model's parameter tensors that still have storage on this rank, plus the stage-3 slices
              (``param.fw_storage``) and the fused parameter buffers of the sharding wrappers;
  gradients   ``param.grad`` / ``main_grad`` with storage, the stage-3 gradient slices (``bw_storage``) and
              the stage-2 gradient buffers, read just before the optimizer step (the gradients of the step
              are complete and reduced; after the step Paddle zeroes or releases them);
  optimizer   the AdamW accumulators (moments, beta powers) and master weights of the innermost optimizer
              object on this rank (through ``_inner_opt`` / ``_optim``: what a sharded wrapper steps);
  tensors are deduplicated by address range (a gradient that is a view into a fused buffer counts once); the
  bytes are read at ``--measure-step`` (default 2, a warm-up step: step 1's optimizer states exist);
* the peak RSS of the rank (``resource.getrusage``; secondary: it includes Paddle itself, activations, data
  and communication buffers not visible as Python tensors, e.g. DataParallel's fused gradient buffers);
* the training losses, against the one-process run (``loss diff``: the largest difference over the steps).

Each byte column shows MiB and, in brackets, the share of the one-process value; a share more than 15% over
what the layout should give (TP2 / PP2 / stage3: 0.5 of everything; stage1: optimizer states 0.5; stage2:
gradients and states 0.5; TP2 x PP2: 0.25) is listed under the table. At the default model size stage 3
is listed: Paddle's stage 3 slices only parameters above ``segment_size`` elements (2^20 by default, which
neither the Trainer nor ``wrap_model_and_optimizer`` changes), and no tensor here is larger; see
docs/performance.md. Threads:
``OMP_NUM_THREADS=MKL_NUM_THREADS=--threads`` (default 1) per rank, so the 4-process layout oversubscribes a
2-core machine two to one. Prints a table and writes ``bench/results/parallel.json`` (atomically). Not part of
the test run.

    python bench/parallel.py                              # every layout, hidden 256 x 4 layers, vocab 4096
    python bench/parallel.py --layouts single tp2 stage3 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ALPACA = "tests/fixtures/llamafactory_alpaca_en_demo_first10.json"
SFT_CONFIG = "config/llama/tiny/sft_argument.json"


@dataclass(frozen=True)
class Layout:
    processes: int
    description: str
    flags: Tuple[str, ...] = ()
    path: str = "trainer"  # "trainer": the SFT Trainer; "strategy": ParallelStrategy.wrap_model_and_optimizer


_SHARD = ("--sharding_parallel_degree", "2", "--sharding")
LAYOUTS: Dict[str, Layout] = {
    "single": Layout(1, "1 process"),
    "dp2": Layout(2, "data parallel 2"),
    "tp2": Layout(2, "tensor parallel 2", ("--tensor_parallel_degree", "2")),
    "pp2": Layout(2, "pipeline parallel 2", ("--pipeline_parallel_degree", "2")),
    "stage1": Layout(2, "sharding stage1 x2", (*_SHARD, "stage1")),
    "stage2": Layout(2, "sharding stage2 x2", (*_SHARD, "stage2")),
    "stage3": Layout(2, "sharding stage3 x2", (*_SHARD, "stage3")),
    "tp2pp2": Layout(4, "TP2 x PP2", ("--tensor_parallel_degree", "2", "--pipeline_parallel_degree", "2")),
    # the same sharding stages through our own ParallelStrategy.wrap_model_and_optimizer and a plain loop
    "stage1_strategy": Layout(2, "stage1 x2, ParallelStrategy", (*_SHARD, "stage1"), "strategy"),
    "stage2_strategy": Layout(2, "stage2 x2, ParallelStrategy", (*_SHARD, "stage2"), "strategy"),
    "stage3_strategy": Layout(2, "stage3 x2, ParallelStrategy", (*_SHARD, "stage3"), "strategy"),
}
KINDS = ("params", "grads", "states")
# expected share of one process's (params, grads, optimizer states) per rank
EXPECTED: Dict[str, Tuple[float, float, float]] = {
    "dp2": (1.0, 1.0, 1.0), "tp2": (0.5, 0.5, 0.5), "pp2": (0.5, 0.5, 0.5), "stage1": (1.0, 1.0, 0.5),
    "stage2": (1.0, 0.5, 0.5), "stage3": (0.5, 0.5, 0.5), "tp2pp2": (0.25, 0.25, 0.25),
    "stage1_strategy": (1.0, 1.0, 0.5), "stage2_strategy": (1.0, 0.5, 0.5),
    "stage3_strategy": (0.5, 0.5, 0.5),
}
TOLERANCE = 0.15


# ------------------------------------------------------------------------------------------------ accounting
def _storage(t):
    """(address, nbytes) of a tensor that holds storage on this rank, else None."""
    if t is None:
        return None
    try:
        if not t._is_initialized():
            return None
        n = int(t._numel())
        if n == 0:
            return None
        return int(t.data_ptr()), n * int(t.element_size())
    except Exception:  # pragma: no cover - not a dense tensor
        return None


class Ledger:
    """Address ranges per kind; bytes are the union, so views into one buffer count once."""

    def __init__(self):
        self.ranges: Dict[str, List[tuple]] = {k: [] for k in KINDS}
        self.count: Dict[str, int] = {k: 0 for k in KINDS}

    def add(self, kind: str, tensor) -> None:
        got = _storage(tensor)
        if got is not None:
            self.ranges[kind].append((got[0], got[0] + got[1]))
            self.count[kind] += 1

    @staticmethod
    def _union(ranges: List[tuple]) -> int:
        total, end = 0, None
        for lo, hi in sorted(ranges):
            if end is None or lo >= end:
                total += hi - lo
                end = hi
            elif hi > end:
                total += hi - end
                end = hi
        return total

    def summary(self) -> Dict[str, int]:
        out = {f"{k}_bytes": self._union(self.ranges[k]) for k in KINDS}
        out["total_bytes"] = self._union([r for k in KINDS for r in self.ranges[k]])
        out.update({f"{k}_tensors": self.count[k] for k in KINDS})
        return out


def _optimizer_chain(optimizer) -> list:
    chain, seen = [], set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        chain.append(optimizer)
        optimizer = next((getattr(optimizer, a) for a in ("_inner_opt", "_optim", "_optimizer")
                          if getattr(optimizer, a, None) is not None), None)
    return chain


def _wrapper_chain(model) -> list:
    chain, seen = [], set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        chain.append(model)
        model = next((getattr(model, a) for a in ("_layers", "_layer")
                      if getattr(model, a, None) is not None), None)
    return chain


def _buffers(obj, names) -> list:
    """Tensors of fused storages (``.buffer``) held in dict / list attributes ``names`` of ``obj``."""
    out = []

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif hasattr(x, "buffer"):
            out.append(x.buffer)

    for name in names:
        walk(getattr(obj, name, None))
    return out


def measure(trainer, kinds=KINDS) -> Dict[str, int]:
    """Bytes of parameters / gradients / optimizer states this rank holds now (see the module docstring)."""
    ledger = Ledger()
    params = list(trainer.model.parameters())
    wrappers = _wrapper_chain(trainer.model_wrapped)
    optimizers = _optimizer_chain(trainer.optimizer)
    if "params" in kinds:
        for p in params:
            ledger.add("params", p)
            ledger.add("params", getattr(p, "fw_storage", None))
        for w in wrappers + optimizers:
            for t in _buffers(w, ("param_storages", "_param_storages")):
                ledger.add("params", t)
    if "grads" in kinds:
        for p in params:
            ledger.add("grads", p.grad)
            ledger.add("grads", getattr(p, "main_grad", None))
            fw = getattr(p, "fw_storage", None)
            if fw is not None:
                ledger.add("grads", fw.grad)
            ledger.add("grads", getattr(p, "bw_storage", None))
        for w in wrappers + optimizers:
            for t in _buffers(w, ("_grad_storages", "grad_storages")):
                ledger.add("grads", t)
    if "states" in kinds:
        inner = optimizers[-1]
        for per_param in getattr(inner, "_accumulators", {}).values():
            for t in per_param.values():
                ledger.add("states", t)
        for t in getattr(inner, "_master_weights", {}).values():
            ledger.add("states", t)
    return ledger.summary()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------------------------------------------- worker
class _Run:
    """What ``measure`` walks: the plain model, its wrapper and the optimizer as the step calls it."""

    def __init__(self, model, model_wrapped, optimizer):
        self.model, self.model_wrapped, self.optimizer = model, model_wrapped, optimizer


class Probe:
    """Step times, the bytes at ``measure_step`` (gradients before the optimizer step, the rest after it)."""

    def __init__(self, measure_step: int):
        self.measure_step = measure_step
        self.times: List[float] = []
        self.cpu_times: List[float] = []
        self.grads: Optional[Dict[str, int]] = None
        self.after: Optional[Dict[str, int]] = None
        self.t0 = self.c0 = 0.0

    def begin(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def before_optimizer(self, step: int, run: _Run) -> None:  # step: 1-based step being taken
        if step == self.measure_step:
            self.grads = measure(run, ("grads",))

    def end(self, step: int, run: _Run) -> None:
        self.times.append(time.perf_counter() - self.t0)
        self.cpu_times.append(time.process_time() - self.c0)
        if step == self.measure_step:
            self.after = measure(run)

    def held(self) -> Dict[str, int]:
        held = dict(self.after)
        held["grads_bytes_after_step"] = held["grads_bytes"]  # Paddle zeroes them in place or releases them
        for key in ("grads_bytes", "grads_tensors"):
            held[key] = self.grads[key]
        held["total_bytes"] = held["params_bytes"] + held["grads_bytes"] + held["states_bytes"]
        return held


def _train_with_trainer(trainer, probe: Probe):
    """The SFT Trainer's own loop, with the probe as a TrainerCallback; (logged losses, what ran)."""
    from paddlenlp.trainer import TrainerCallback

    def run() -> _Run:
        return _Run(trainer.model, trainer.model_wrapped, trainer.optimizer)

    class Callback(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            probe.begin()

        def on_optimizer_begin(self, args, state, control, **kwargs):
            probe.before_optimizer(state.global_step + 1, run())

        def on_step_end(self, args, state, control, **kwargs):
            probe.end(state.global_step, run())

    trainer.add_callback(Callback())
    trainer.train()
    return [r["loss"] for r in getattr(trainer, "metrics_history", []) if "loss" in r], run()


def _train_with_strategy(trainer, strategy, probe: Probe, max_steps: int):
    """Our own loop over ``ParallelStrategy.wrap_model_and_optimizer``: the Trainer's model, optimizer (AdamW,
    same settings and schedule), batches and ``compute_loss``; forward, backward, ``optimizer.step()``."""
    trainer.create_optimizer_and_scheduler(num_training_steps=max_steps)
    model, optimizer = strategy.wrap_model_and_optimizer(trainer.model, trainer.optimizer)
    run = _Run(trainer.model, model, optimizer)
    model.train()
    loader = trainer.get_train_dataloader()
    losses: List[float] = []
    step, epoch = 0, 0
    while step < max_steps:
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for inputs in loader:
            probe.begin()
            inputs = trainer._prepare_inputs(inputs)
            loss = trainer.compute_loss(model, inputs)
            loss.backward()
            probe.before_optimizer(step + 1, run)
            optimizer.step()
            trainer.lr_scheduler.step()
            optimizer.clear_grad()
            step += 1
            probe.end(step, run)
            losses.append(strategy.all_reduce_mean({"loss": float(loss)})["loss"])
            if step >= max_steps:
                break
        epoch += 1
    return losses, run


def worker(args, sft_argv: List[str]) -> None:
    """One rank: build the SFT trainer, train ``warmup + steps`` steps with the probe, write rank<R>.json."""
    os.chdir(ROOT)  # the tiny argument file uses repo-relative paths
    from alignment.parallel import ParallelStrategy
    from alignment.sft.run_sft import build_trainer

    trainer = build_trainer(sft_argv)
    strategy = ParallelStrategy.current()
    probe = Probe(args.measure_step)
    if args.worker == "strategy":
        losses, run = _train_with_strategy(trainer, strategy, probe, int(trainer.args.max_steps))
    else:
        losses, run = _train_with_trainer(trainer, probe)
    timed = probe.times[args.warmup:]
    record = {
        "rank": strategy.rank,
        "world_size": strategy.world_size,
        "describe": strategy.describe(),
        "path": args.worker,
        "tensor_parallel_rank": strategy.tensor_parallel_rank,
        "pipeline_parallel_rank": strategy.pipeline_parallel_rank,
        "sharding_parallel_rank": strategy.sharding_parallel_rank,
        "model_wrapper": type(run.model_wrapped).__name__,
        "optimizer_chain": [type(o).__name__ for o in _optimizer_chain(run.optimizer)],
        "local_parameters": int(sum(int(p._numel()) for p in trainer.model.parameters())),
        "losses": losses,
        "step_times_s": probe.times,
        "median_step_s": statistics.median(timed) if timed else None,
        "cpu_times_s": probe.cpu_times,
        "median_cpu_s": statistics.median(probe.cpu_times[args.warmup:]) if timed else None,
        "peak_rss_mib": peak_rss_mib(),
        **probe.held(),
    }
    out = Path(args.worker_out) / f"rank{strategy.rank}.json"
    out.write_text(json.dumps(record, indent=2))


# ---------------------------------------------------------------------------------------------------- driver
def sft_argv(model_dir: str, out_dir: str, layout: str, args) -> List[str]:
    procs, extra = LAYOUTS[layout].processes, LAYOUTS[layout].flags
    flags = dict(zip(extra[::2], extra[1::2]))
    tp = int(flags.get("--tensor_parallel_degree", 1))
    pp = int(flags.get("--pipeline_parallel_degree", 1))
    data_ranks = procs // (tp * pp)  # ranks that see different data (data parallel x sharding)
    if args.global_batch % data_ranks:
        raise ValueError(f"--global-batch {args.global_batch} does not split over {data_ranks} data ranks")
    return [
        str(ROOT / SFT_CONFIG), "--model_name_or_path", model_dir, "--train_datasets", f"json:1.0:{ALPACA}",
        "--output_dir", out_dir, "--max_length", str(args.max_length), "--eval_split_ratio", "0",
        "--do_eval", "false", "--evaluation_strategy", "no", "--save_strategy", "no", "--logging_steps", "1",
        "--max_steps", str(args.warmup + args.steps), "--warmup_ratio", "0",
        "--per_device_train_batch_size", str(args.global_batch // data_ranks),
        "--gradient_accumulation_steps", "1",
        *extra,
    ]


def run_layout(layout: str, model_dir: str, work: Path, args) -> List[dict]:
    procs = LAYOUTS[layout].processes
    run_dir = work / layout
    run_dir.mkdir(parents=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    env.pop("PADDLE_TRAINERS_NUM", None)
    me = [str(Path(__file__).resolve()), "--worker", LAYOUTS[layout].path, "--worker-out", str(run_dir),
          "--warmup", str(args.warmup), "--measure-step", str(args.measure_step), "--"]
    argv = sft_argv(model_dir, str(run_dir / "output"), layout, args)
    if procs == 1:
        cmd = [sys.executable, *me, *argv]
    else:
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(procs),
               "--log_dir", str(run_dir / "log"), *me, *argv]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    ranks = sorted((json.loads(p.read_text()) for p in run_dir.glob("rank*.json")), key=lambda r: r["rank"])
    if proc.returncode or len(ranks) != procs:
        logs = [f"--- {p.name}\n{p.read_text()[-4000:]}"
                for p in sorted((run_dir / "log").glob("workerlog.*"))]
        raise RuntimeError(f"layout {layout} failed (rc {proc.returncode}, {len(ranks)}/{procs} ranks wrote "
                           f"results):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}\n" + "\n".join(logs))
    for r in ranks:
        r["launch_wall_s"] = wall
        r["load_avg_1min"] = [load_before, os.getloadavg()[0]]  # other work on the machine skews step times
    return ranks


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=688)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--global-batch", type=int, default=4,
                        help="sequences per optimizer step (the same in every layout)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--measure-step", type=int, default=2, help="step at which the bytes are read")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads per rank")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per layout")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "parallel.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, rank files)")
    parser.add_argument("--worker", choices=["trainer", "strategy"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = parser.parse_args(argv)
    if args.worker:
        worker(args, rest)
        return {}
    if not 1 <= args.measure_step <= args.warmup + args.steps:
        parser.error("--measure-step must be within the steps run")

    import paddle

    from alignment.tools.make_tiny_model import TinyModelSpec, build_tiny_model
    from alignment.utils.io import atomic_write_json

    spec = TinyModelSpec(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                         intermediate_size=args.intermediate_size, num_layers=args.num_layers,
                         num_heads=args.num_heads)
    work = Path(tempfile.mkdtemp(prefix="bench_parallel_"))
    try:
        model_dir = str(build_tiny_model(work / "model", spec))
        state = paddle.load(str(Path(model_dir) / "model_state.pdparams"))
        n_params = int(sum(int(v.numel()) for v in state.values()))
        del state
        results: Dict[str, List[dict]] = {}
        results_loss: Dict[str, Optional[float]] = {}
        failed: Dict[str, str] = {}
        for layout in args.layouts:
            spec_ = LAYOUTS[layout]
            print(f"running {layout} ({spec_.description}, {spec_.processes} process(es)) ...", flush=True)
            try:
                results[layout] = run_layout(layout, model_dir, work, args)
            except (RuntimeError, subprocess.TimeoutExpired) as e:  # report it, measure the other layouts
                failed[layout] = str(e)
                print(f"FAILED {layout}:\n{e}", flush=True)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    base = results["single"][0] if "single" in results else None
    notes: List[str] = []
    for layout, ranks in results.items():
        expected = EXPECTED.get(layout)
        for r in ranks:
            r["ratio_vs_single"] = {k: (r[f"{k}_bytes"] / base[f"{k}_bytes"]) if base else None
                                    for k in (*KINDS, "total")}
            if base and expected:
                for kind, want in zip(KINDS, expected):
                    got = r["ratio_vs_single"][kind]
                    if got > want * (1 + TOLERANCE):
                        notes.append(f"{layout} rank {r['rank']}: {kind} {got:.2f}x of one process, expected "
                                     f"~{want:.2f}x")
        if base and base.get("losses"):
            diffs = [abs(a - b) for r in ranks for a, b in zip(r["losses"], base["losses"])]
            results_loss[layout] = max(diffs) if diffs else None

    def cell(r, kind):
        ratio = r["ratio_vs_single"][kind]
        return f"{_mib(r[f'{kind}_bytes'])} ({ratio:.2f})" if ratio is not None else _mib(r[f"{kind}_bytes"])

    header = (f"{'layout':<16} {'rank':>4} {'tp/pp/sh':>8} {'step s':>7} {'cpu s':>6} {'load':>5} "
              f"{'params MiB (x)':>15} {'grads MiB (x)':>15} {'states MiB (x)':>15} {'sum MiB (x)':>15} "
              f"{'RSS MiB':>8} {'loss diff':>9}")
    print(f"model: Llama hidden {args.hidden_size}, {args.num_layers} layers, {args.num_heads} heads, "
          f"intermediate {args.intermediate_size}, vocab {args.vocab_size}: {n_params:,} parameters "
          f"({_mib(4 * n_params)} MiB float32)")
    print(f"global batch {args.global_batch} x <= {args.max_length} tokens, {args.threads} thread(s) per "
          f"rank; step s: median of {args.steps} steps after {args.warmup}, slowest rank;")
    print(f"cpu s: that rank's CPU time per step; load: 1-minute load average; bytes at step "
          f"{args.measure_step}, (x) against one process")
    print("-" * len(header))
    print(header)
    print("-" * len(header))
    for layout, ranks in results.items():
        step = max(r["median_step_s"] for r in ranks)
        slowest = max(ranks, key=lambda r: r["median_step_s"])
        load = max(max(r["load_avg_1min"]) for r in ranks)
        loss = results_loss.get(layout)
        shown_loss = "-" if loss is None else f"{loss:.1e}"
        for r in ranks:
            coords = "/".join(str(r[f"{axis}_parallel_rank"]) for axis in ("tensor", "pipeline", "sharding"))
            print(f"{layout:<16} {r['rank']:>4} {coords:>8} {step:>7.3f} {slowest['median_cpu_s']:>6.3f} "
                  f"{load:>5.1f} {cell(r, 'params'):>15} {cell(r, 'grads'):>15} {cell(r, 'states'):>15} "
                  f"{cell(r, 'total'):>15} {r['peak_rss_mib']:>8.0f} {shown_loss:>9}")
    for layout in failed:
        print(f"{layout:<16} FAILED (the error is printed above and stored in the JSON)")
    print("-" * len(header))
    if notes:
        print(f"not reduced as expected (more than {TOLERANCE:.0%} over the expected share):")
        for line in notes:
            print(f"  {line}")

    result = {
        "benchmark": "parallel",
        "model": {"hidden_size": args.hidden_size, "intermediate_size": args.intermediate_size,
                  "num_layers": args.num_layers, "num_heads": args.num_heads, "vocab_size": args.vocab_size,
                  "parameters": n_params, "dtype": "float32"},
        "global_batch": args.global_batch,
        "max_length": args.max_length,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "measure_step": args.measure_step,
        "threads_per_rank": args.threads,
        "cpu_count": os.cpu_count(),
        "not_reduced_as_expected": notes,
        "failed": failed,
        "machine": platform.machine(),
        "paddle": paddle.__version__,
        "device": "cpu (gloo)",
        "layouts": {
            layout: {
                "processes": LAYOUTS[layout].processes,
                "description": LAYOUTS[layout].description,
                "path": LAYOUTS[layout].path,
                "sft_flags": list(LAYOUTS[layout].flags),
                "median_step_s": max(r["median_step_s"] for r in ranks),
                "expected_share": EXPECTED.get(layout),
                "max_loss_diff_vs_single": results_loss.get(layout),
                "ranks": ranks,
            }
            for layout, ranks in results.items()
        },
    }
    atomic_write_json(args.out, result)
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(1 if main().get("failed") else 0)

"""Predict the per-rank peak memory of each phase of a run, and propose the largest batch sizes that fit.

    python -m alignment.tools.plan_memory --model checkpoints/sft --stage ppo \\
        --tensor_parallel_degree 2 --sharding_parallel_degree 4 --sharding stage1 --dtype bfloat16 \\
        --offload_level "freeze_model optimizer" --max_prompt_len 512 --max_new_tokens 512 \\
        --per_device_prompt_batch_size 8 --num_return_sequences 1 --per_device_train_batch_size 4 --budget_gib 80

``--model`` is a checkpoint directory (its config.json) or one of the presets (``tiny``, ``llama-7b``,
``llama-13b``, ``qwen2-7b``); the sizes can also be given one by one (``--hidden_size`` ...). Every entry point
takes ``--plan_memory true`` as well: it prints this plan for its own arguments and exits without loading a model.

Phases and what each holds (per rank; formulas in ``alignment.parallel.memory``):

    PPO / GRPO  generation     actor (+ its eval_mode copy under PP), KV cache of a rollout chunk, prefill logits
                experience     actor, critic, reference, reward + one scoring micro-batch's logits (through the
                               chunked LM head: one (chunk, V) logits chunk instead)
                update_actor   actor + gradients + optimizer states + one micro-batch's activations and logits
                               (chunked LM head: two (chunk, V) tensors and one head-sized gradient instead)
                update_critic  critic + gradients + optimizer states + activations
    SFT / RM / DPO / KTO / GKD
                train          policy + gradients + optimizer states (+ the frozen reference / teacher) + activations
                               + logits (GKD through the chunked LM heads: one chunk's working set instead)

Whatever the offload levels send to the host in a phase (``alignment.parallel.offload``) is counted as host
memory there, not device memory. With ``--budget_gib`` the planner doubles ``per_device_train_batch_size`` (and
the experience and rollout batch sizes) from 1 while the largest phase still fits, and says which phase binds.
The numbers are estimates for planning: allocator fragmentation, the framework's workspace and the CUDA
context (about 0.5-1 GiB per GPU) come on top; leave that much headroom in the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

from alignment.parallel.memory import DTYPE_BYTES, LayerShape, buffer_bytes, parameter_count
from alignment.parallel.offload import RESIDENT, UPDATES, parse_offload_level

__all__ = ["PlanSpec", "plan", "propose", "format_plan", "main", "PRESETS"]

GIB = 1024 ** 3
PRESETS = {
    "tiny": LayerShape(512, 64, 172, 2, 4, 2, max_position_embeddings=1024),
    "llama-7b": LayerShape(32000, 4096, 11008, 32, 32, 32, max_position_embeddings=4096),
    "llama-13b": LayerShape(32000, 5120, 13824, 40, 40, 40, max_position_embeddings=4096),
    "qwen2-7b": LayerShape(152064, 3584, 18944, 28, 28, 4, max_position_embeddings=32768),
}
STAGES = ("ppo", "grpo", "sft", "rm", "dpo", "kto", "gkd")


@dataclass(frozen=True)
class PlanSpec:
    """What the planner needs; every size per rank unless it says otherwise."""

    shape: LayerShape
    stage: str = "ppo"
    tensor_parallel_degree: int = 1
    pipeline_parallel_degree: int = 1
    sharding_parallel_degree: int = 1
    sharding: str = ""
    dtype: str = "float32"
    offload_level: tuple = ()
    max_prompt_len: int = 512
    max_new_tokens: int = 512
    max_length: int = 1024  # offline stages: the sequence length
    per_device_prompt_batch_size: int = 8
    num_return_sequences: int = 1
    per_device_rollout_batch_size: int = 0  # prompts per generate call (0: all)
    per_device_train_batch_size: int = 4
    experience_batch_size: int = 0  # rows per scoring pass (0: per_device_train_batch_size)
    recompute: bool = False
    eval_mode: str = "tensor_parallel"
    use_critic: Optional[bool] = None  # default: ppo yes, grpo no

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage '{self.stage}' is not valid; allowed values: {', '.join(STAGES)}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype '{self.dtype}' is not valid; allowed values: {', '.join(DTYPE_BYTES)}")
        object.__setattr__(self, "offload_level", parse_offload_level(self.offload_level))

    @property
    def critic(self) -> bool:
        return self.stage == "ppo" if self.use_critic is None else bool(self.use_critic)


def _stage_level(spec: PlanSpec) -> int:
    if spec.sharding_parallel_degree <= 1:
        return 0
    return {"stage1": 1, "stage2": 2, "stage3": 3}.get(spec.sharding or "stage1", 1)


def _model_static(spec: PlanSpec, score: bool, trained: bool) -> Dict[str, int]:
    """Parameters / gradients / optimizer states of one model on the largest stage of one rank (bytes)."""
    n = parameter_count(spec.shape, tp=spec.tensor_parallel_degree, pp=spec.pipeline_parallel_degree,
                        score_dim=1 if score else None)
    w, sd, level = DTYPE_BYTES[spec.dtype], max(1, spec.sharding_parallel_degree), _stage_level(spec)
    out = {"parameters": n * w // (sd if level >= 3 else 1),
           "buffers": buffer_bytes(spec.shape, pp=spec.pipeline_parallel_degree)}
    if trained:
        out["gradients"] = n * w // (sd if level >= 2 else 1)
        master = 4 if w < 4 else 0
        out["optimizer_states"] = n * (8 + master) // (sd if level >= 1 else 1)
    return out


def _activations(spec: PlanSpec, rows: int, length: int) -> int:
    """One training micro-batch's activations on the first pipeline stage (Korthikanti et al., Eq. 2)."""
    s, b, h, a = length, rows, spec.shape.hidden_size, spec.shape.num_attention_heads
    w, tp, pp = DTYPE_BYTES[spec.dtype], spec.tensor_parallel_degree, spec.pipeline_parallel_degree
    per_layer = 2 * s * b * h * w if spec.recompute else int(s * b * h * (34 + 5 * a * s / h) * w / 2) // tp
    if not spec.recompute and spec.dtype == "float32":
        # the fused RMSNorm (alignment.ops.rms_norm, use_fusemt assumed on; float32 only) keeps one (s, b) rstd
        # for its backward where PaddleNLP's norm keeps the normalised (s, b, h) product: two norms per layer
        per_layer -= 2 * s * b * h * w // tp
    layers = -(-spec.shape.num_hidden_layers // pp)
    return per_layer * layers * (pp if pp > 1 else 1)  # 1F1B: the first stage holds up to pp micro-batches


def _logits(spec: PlanSpec, rows: int, length: int, copies: int) -> int:
    return rows * length * (spec.shape.vocab_size // spec.tensor_parallel_degree) * 4 * copies


def plan(spec: PlanSpec) -> Dict[str, Dict[str, int]]:
    """{phase: {component: device bytes}} per rank, plus a "host" entry per phase for offloaded tensors."""
    if spec.stage in ("ppo", "grpo"):
        return _plan_rl(spec)
    return _plan_offline(spec)


def _plan_rl(spec: PlanSpec) -> Dict[str, Dict[str, int]]:
    models = {"actor": _model_static(spec, False, True), "reference": _model_static(spec, False, False),
              "reward_model": _model_static(spec, True, False)}
    if spec.critic:
        models["critic"] = _model_static(spec, True, True)
    levels = spec.offload_level
    rows = spec.per_device_prompt_batch_size * spec.num_return_sequences
    chunk = (spec.per_device_rollout_batch_size or spec.per_device_prompt_batch_size) * spec.num_return_sequences
    length = spec.max_prompt_len + spec.max_new_tokens
    mb = spec.per_device_train_batch_size
    exp_mb = spec.experience_batch_size or mb
    sh = spec.shape
    kv_width = sh.num_key_value_heads * sh.head_dim // spec.tensor_parallel_degree
    chunked = _chunked_head_applies(spec)  # PPO / GRPO experience and actor update: no (N, T, V) logits
    out: Dict[str, Dict[str, int]] = {}
    for phase in RESIDENT:
        if phase == "update_critic" and not spec.critic:
            continue
        device: Dict[str, int] = {}
        host = 0
        for role, parts in models.items():
            frozen = role in ("reference", "reward_model")
            for kind, nbytes in parts.items():
                if kind == "buffers":
                    needed = True  # small, never offloaded
                elif kind == "gradients":
                    needed = UPDATES.get(phase) == role  # freed after each optimizer step
                    if not needed:
                        continue
                elif kind == "optimizer_states":
                    needed = UPDATES.get(phase) == role or "optimizer" not in levels
                else:
                    managed = "freeze_model" in levels if frozen else "train_model" in levels
                    needed = role in RESIDENT[phase] or not managed
                if needed:
                    device[f"{role}.{kind}"] = nbytes
                else:
                    host += nbytes
        if spec.pipeline_parallel_degree > 1 and phase in ("generation", "experience"):  # eval_mode copies
            tp = 1 if spec.eval_mode == "single" else spec.tensor_parallel_degree
            copy = replace(spec, tensor_parallel_degree=tp, pipeline_parallel_degree=1, sharding_parallel_degree=1)
            device["actor.generation_copy"] = _model_static(copy, False, False)["parameters"]
            if spec.critic and phase == "experience":
                device["critic.generation_copy"] = _model_static(copy, True, False)["parameters"]
        w = DTYPE_BYTES[spec.dtype]
        if phase == "generation":
            device["kv_cache"] = 2 * 2 * sh.num_hidden_layers * chunk * length * kv_width * w  # old + new at a step
            device["logits"] = _logits(spec, chunk, spec.max_prompt_len, 1)  # the prefill's
        elif phase == "experience":
            # through the chunked LM head (where it applies) one (chunk, V) logits chunk of the response rows
            device["logits"] = _head_chunks(spec, exp_mb * spec.max_new_tokens, 1) if chunked \
                else _logits(spec, exp_mb, length, 2)
            device["rollout"] = rows * length * 8 * 4  # ids, masks, position ids, per-token results
            # one layer's transient tensors of a no-grad forward (the MLP's intermediate, the residual stream)
            device["forward_workspace"] = exp_mb * length * (2 * sh.intermediate_size + 2 * sh.hidden_size) * w \
                // spec.tensor_parallel_degree
        else:
            device["activations"] = _activations(spec, mb, length)
            if phase == "update_actor":
                # chunked: the backward's recomputed chunk and its gradient, and the head-sized weight gradient
                # the chunk loop accumulates before autograd adds it to the parameter's (measured on CPU)
                head_grad = sh.hidden_size * sh.vocab_size * 4
                device["logits"] = _head_chunks(spec, mb * spec.max_new_tokens, 2) + head_grad if chunked \
                    else _logits(spec, mb, length, 2)
        device["host (offloaded)"] = host
        out[phase] = device
    return out


def _head_chunks(spec: PlanSpec, rows: int, copies: int) -> int:
    """``copies`` (chunk, V) float32 tensors of the chunked LM head (``alignment.ops.linear_completion_logps``)
    over ``rows`` scored rows."""
    from alignment.ops.linear_logps import DEFAULT_CHUNK_BYTES

    vocab = spec.shape.vocab_size
    return min(rows, max(1, DEFAULT_CHUNK_BYTES // (4 * vocab))) * vocab * 4 * copies


def _chunked_head_applies(spec: PlanSpec) -> bool:
    """Where the trainers take the chunked LM head (``alignment.training.logps.chunked_head``, ``use_fusemt``
    assumed on): float32 heads outside tensor and pipeline parallelism and sharding-stage-3 slices."""
    return spec.tensor_parallel_degree == 1 and spec.pipeline_parallel_degree == 1 and spec.dtype == "float32" \
        and _stage_level(spec) < 3


def _plan_offline(spec: PlanSpec) -> Dict[str, Dict[str, int]]:
    score = spec.stage == "rm"
    device = {f"policy.{k}": v for k, v in _model_static(spec, score, True).items()}
    rows = spec.per_device_train_batch_size * (2 if spec.stage in ("rm", "dpo", "kto") else 1)
    host = 0
    if spec.stage in ("dpo", "kto", "gkd"):  # the frozen reference / teacher
        ref = _model_static(spec, False, False)
        device["reference.buffers"] = ref["buffers"]
        if "freeze_model" in spec.offload_level:
            host += ref["parameters"]  # resident only during its forward, which precedes the policy's activations
        else:
            device["reference.parameters"] = ref["parameters"]
    device["activations"] = _activations(spec, rows, spec.max_length)
    if spec.stage == "gkd" and _chunked_head_applies(spec):
        # student and teacher heads chunk by chunk (alignment.ops.linear_generalized_jsd): no (B, L, V)
        # logits, a fixed working set of (chunk, V) tensors
        from alignment.ops.linear_jsd import WORKING_COPIES, default_chunk_rows

        chunk = min(rows * spec.max_length, default_chunk_rows(spec.shape.vocab_size))
        device["logits"] = chunk * spec.shape.vocab_size * 4 * WORKING_COPIES
    elif not score:
        # copies held at the peak, as measured on CPU: SFT's loss through the chunked LM head keeps one
        # (B, L, V) gradient-sized buffer, the pair losses two, GKD also the teacher's logits
        device["logits"] = _logits(spec, rows, spec.max_length, {"sft": 1, "gkd": 3}.get(spec.stage, 2))
    device["host (offloaded)"] = host
    return {"train": device}


def peak(phases: Dict[str, Dict[str, int]]) -> int:
    return max(sum(v for k, v in parts.items() if not k.startswith("host")) for parts in phases.values())


def propose(spec: PlanSpec, budget_bytes: int, limit: int = 4096) -> tuple:
    """(spec with the largest batch sizes that fit, reasoning lines). Batch sizes are doubled from 1."""
    lines: List[str] = []
    best = None
    size = 1
    while size <= limit:
        trial = replace(spec, per_device_train_batch_size=size, experience_batch_size=size,
                        per_device_prompt_batch_size=max(1, -(-size // spec.num_return_sequences)),
                        per_device_rollout_batch_size=0)
        phases = plan(trial)
        top = peak(phases)
        binding = max(phases, key=lambda p: sum(v for k, v in phases[p].items() if not k.startswith("host")))
        fits = top <= budget_bytes
        lines.append(f"micro-batch {size:>4}: peak {top / GIB:8.2f} GiB in {binding:<13} "
                     f"{'fits' if fits else 'does not fit'} {budget_bytes / GIB:.2f} GiB")
        if not fits:
            break
        best = trial
        size *= 2
    return best, lines


def format_plan(spec: PlanSpec, phases: Dict[str, Dict[str, int]]) -> str:
    head = (f"{spec.stage}: tp {spec.tensor_parallel_degree} x pp {spec.pipeline_parallel_degree} x sharding "
            f"{spec.sharding_parallel_degree} ({spec.sharding or 'none'}), {spec.dtype}, offload "
            f"{' '.join(spec.offload_level) or 'none'}; per rank:")
    lines = [head]
    unit, size = ("GiB", GIB) if peak(phases) >= GIB else ("MiB", 1024 ** 2)
    for phase, parts in phases.items():
        total = sum(v for k, v in parts.items() if not k.startswith("host"))
        lines.append(f"  {phase:<13} {total / size:9.3f} {unit} on the device, "
                     f"{parts.get('host (offloaded)', 0) / size:.3f} {unit} offloaded to the host")
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            if v and not k.startswith("host"):
                lines.append(f"      {k:<30} {v / size:9.3f} {unit}")
    lines.append(f"  peak {peak(phases) / size:.3f} {unit} per rank")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI
def shape_from(model: Optional[str], overrides: Dict[str, Optional[int]]) -> LayerShape:
    if model in PRESETS:
        shape = PRESETS[model]
    elif model:
        config = os.path.join(model, "config.json")
        if not os.path.isfile(config):
            raise ValueError(f"--model '{model}': no config.json there; give a checkpoint directory or one of the "
                             f"presets {', '.join(PRESETS)}")
        with open(config, encoding="utf-8") as f:
            shape = LayerShape.from_config(json.load(f))
    else:
        missing = [k for k, v in overrides.items() if v is None and k != "num_key_value_heads"]
        if missing:
            raise ValueError(f"give --model or every size ({', '.join('--' + k for k in missing)})")
        shape = LayerShape(**{k: v for k, v in overrides.items() if v is not None})
    return replace(shape, **{k: v for k, v in overrides.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alignment.tools.plan_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (config.json) or preset: " + ", ".join(PRESETS))
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads"):
        p.add_argument(f"--{name}", type=int, help="override the model's size")
    p.add_argument("--stage", default="ppo", choices=STAGES)
    for name, default in (("tensor_parallel_degree", 1), ("pipeline_parallel_degree", 1),
                          ("sharding_parallel_degree", 1), ("max_prompt_len", 512), ("max_new_tokens", 512),
                          ("max_length", 1024), ("per_device_prompt_batch_size", 8), ("num_return_sequences", 1),
                          ("per_device_rollout_batch_size", 0), ("per_device_train_batch_size", 4),
                          ("experience_batch_size", 0)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--sharding", default="", choices=["", "stage1", "stage2", "stage3"])
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPE_BYTES))
    p.add_argument("--offload_level", default="", help="any of: freeze_model optimizer train_model")
    p.add_argument("--recompute", action="store_true")
    p.add_argument("--eval_mode", default="tensor_parallel", choices=["tensor_parallel", "single"])
    p.add_argument("--budget_gib", type=float, help="propose the largest batch sizes whose peak fits this")
    p.add_argument("--json", help="also write the plan here")
    return p


def spec_from_namespace(ns) -> PlanSpec:
    sizes = {k: getattr(ns, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads", "num_key_value_heads")}
    fields = {k: getattr(ns, k) for k in PlanSpec.__dataclass_fields__ if k not in ("shape", "use_critic")
              and hasattr(ns, k)}
    return PlanSpec(shape=shape_from(ns.model, sizes), **fields)


def spec_from_run_args(objs: Sequence[object]) -> PlanSpec:
    """The plan of an entry point's parsed arguments (``--plan_memory true``): its model, layout, lengths and
    batch sizes; nothing is loaded but the model's config.json."""
    def first(*names, default=None):
        for obj in objs:
            for name in names:
                value = getattr(obj, name, None)
                if value is not None:
                    return value
        return default

    kinds = {type(o).__name__ for o in objs}
    if "PPOArguments" in kinds:
        stage = "ppo" if first("use_critic", default=True) else "grpo"
    else:
        stage = next((s for k, s in (("DPOArguments", "dpo"), ("KTOArguments", "kto"), ("GKDArguments", "gkd"),
                                     ("RewardArguments", "rm")) if k in kinds), "sft")
    model = first("actor_model_name_or_path", "model_name_or_path")
    if not (model and os.path.isfile(os.path.join(model, "config.json"))):
        raise ValueError(f"--plan_memory needs a local model directory with config.json, got '{model}'")
    shape = shape_from(model, {})
    dtype = "bfloat16" if first("bf16", default=False) else "float16" if first("fp16", default=False) else "float32"
    max_length = int(first("max_length", default=1024))
    new_tokens = int(first("max_dec_len", default=0) or 0)
    prompt = int(first("max_prompt_len", default=0) or 0) or max(1, max_length - new_tokens)
    rollout = int(first("per_device_rollout_batch_size", default=0) or 0)
    return PlanSpec(
        shape=shape, stage=stage, dtype=dtype,
        tensor_parallel_degree=int(first("tensor_parallel_degree", default=1)),
        pipeline_parallel_degree=int(first("pipeline_parallel_degree", default=1)),
        sharding_parallel_degree=int(first("sharding_parallel_degree", default=1)),
        sharding=(str(first("sharding", default="") or "").split() or [""])[0],
        offload_level=first("offload_level", default=""),
        max_prompt_len=prompt, max_new_tokens=new_tokens, max_length=max_length,
        per_device_prompt_batch_size=int(first("per_device_prompt_batch_size", default=1)),
        num_return_sequences=int(first("num_return_sequences", default=1)),
        per_device_rollout_batch_size=max(rollout, 0),
        per_device_train_batch_size=int(first("per_device_train_batch_size", default=1)),
        experience_batch_size=int(first("rollout_logprob_batch_size", default=0) or 0),
        recompute=bool(first("recompute", default=False)),
        eval_mode=str(first("eval_mode", default="tensor_parallel") or "tensor_parallel"),
    )


def run(spec: PlanSpec, budget_gib: Optional[float] = None, json_path: Optional[str] = None,
        out=None) -> Dict[str, object]:
    out = out if out is not None else sys.stdout
    phases = plan(spec)
    print(format_plan(spec, phases), file=out)
    result: Dict[str, object] = {"phases": phases, "peak_bytes": peak(phases)}
    if budget_gib is not None:
        best, lines = propose(spec, int(budget_gib * GIB))
        print(f"proposal for a budget of {budget_gib:g} GiB per rank:", file=out)
        for line in lines:
            print("  " + line, file=out)
        if best is None:
            print("  nothing fits, even one row: raise the parallel degrees, offload, recompute or a 16-bit dtype",
                  file=out)
        else:
            print(f"  -> per_device_train_batch_size {best.per_device_train_batch_size}, experience_batch_size "
                  f"{best.experience_batch_size}, per_device_prompt_batch_size {best.per_device_prompt_batch_size}",
                  file=out)
            result["proposal"] = {k: getattr(best, k) for k in ("per_device_train_batch_size",
                                                              "experience_batch_size", "per_device_prompt_batch_size")}
    if json_path:
        from alignment.utils.io import atomic_write_json

        atomic_write_json(json_path, result)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        spec = spec_from_namespace(ns)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(spec, ns.budget_gib, ns.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

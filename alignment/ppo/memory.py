"""The PPO step's phases as the offload schedule and the memory report see them.

    tracker = PhaseTracker.build(args, models, actor_optimizer, critic_optimizer, strategy)
    tracker.enter("generation"); ...; tracker.enter("experience"); ...   # the updater enters the update phases
    metrics.update(tracker.finish_step(step))                          # memory.jsonl + peak metrics

``enter`` moves what ``offload_level`` manages (``alignment.parallel.offload.OffloadScheduler``) and starts
the phase's peak measurement (``alignment.parallel.memory.PhaseMonitor``). ``finish_step`` writes one line of
``output_dir/memory.jsonl`` per step with every rank's view: per model and kind (parameters, gradients,
optimizer states) the bytes and where they were in each phase, the peak of each phase (Paddle's CUDA or host
allocator; the process RSS next to it), and the planner's prediction of each phase for the step's actual shapes.
It logs ``memory_peak_<phase>_mib_max`` (the largest rank's peak) with the step's metrics.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from alignment.parallel import ParallelStrategy
from alignment.parallel.memory import PhaseMonitor, model_bytes
from alignment.parallel.offload import OffloadScheduler

__all__ = ["PhaseTracker"]

MIB = 1024 ** 2


class PhaseTracker:
    def __init__(self, scheduler: OffloadScheduler, models: Dict[str, Any], optimizers: Dict[str, Any],
                 strategy: ParallelStrategy, output_dir: Optional[str]):
        self.scheduler = scheduler
        self.models = {k: v for k, v in models.items() if v is not None}
        self.optimizers = optimizers
        self.strategy = strategy
        self.output_dir = output_dir
        self.monitor = PhaseMonitor()

    @classmethod
    def build(cls, args, models, actor_optimizer, critic_optimizer, strategy: ParallelStrategy) -> "PhaseTracker":
        scheduler = OffloadScheduler(args.offload_level)
        roles = {"actor": models.actor, "critic": models.critic, "reference": models.reference,
                 "reward_model": models.reward_model}
        optimizers = {"actor": actor_optimizer, "critic": critic_optimizer}
        for role, model in roles.items():
            if model is not None:
                scheduler.register(role, model, optimizers.get(role))
        tracker = cls(scheduler, roles, optimizers, strategy, args.output_dir)
        tracker.plan_settings = _plan_settings(args, models, strategy)
        return tracker

    def planned(self, rows: int, prompt_length: int, response_length: int) -> Dict[str, int]:
        """The planner's device bytes per phase for this step's actual shapes (``alignment.tools.plan_memory``)."""
        settings = getattr(self, "plan_settings", None)
        if settings is None:
            return {}
        from alignment.tools.plan_memory import PlanSpec, plan

        spec = PlanSpec(**settings, per_device_prompt_batch_size=max(1, rows // settings["num_return_sequences"]),
                        max_prompt_len=prompt_length, max_new_tokens=response_length)
        self.last_parts = plan(spec)
        return {phase: sum(v for k, v in parts.items() if not k.startswith("host"))
                for phase, parts in self.last_parts.items()}

    def enter(self, phase: str) -> None:
        self.scheduler.enter(phase)
        self.monitor.begin(phase)

    def _placement(self, managed: Dict[str, Any]) -> Dict[str, Dict[str, str]]:
        """Where every model's parameters and optimizer states were: managed ones as scheduled, the rest on the
        device."""
        out = {}
        for role in self.models:
            kinds = ("parameters", "optimizer_states") if self.optimizers.get(role) is not None else ("parameters",)
            out[role] = {k: managed.get(role, {}).get(k, {}).get("where", "device") for k in kinds}
        return out

    def finish_step(self, step: int, shapes: Optional[Dict[str, int]] = None) -> Dict[str, float]:
        """``shapes``: the step's rollout (rows, prompt_length, response_length), for the planner's estimate."""
        peaks = self.monitor.take()
        mine = {
            "rank": self.strategy.rank,
            "shapes": shapes or {},
            "planned_bytes": self.planned(**shapes) if shapes else {},
            # per phase and kind (each model's tensors, KV cache, logits, activations, offloaded bytes)
            "planned_parts": getattr(self, "last_parts", {}) if shapes else {},
            "peak_bytes": peaks,
            "peak_source": self.monitor.source,
            "rss_peak_bytes": getattr(self.monitor, "last_rss", {}),
            "models": {role: model_bytes(m, self.optimizers.get(role)) for role, m in self.models.items()},
            "placement": {r["phase"]: self._placement(r["placement"]) for r in self.scheduler.timeline
                          if r["step"] == self.scheduler.step},
            "moved_bytes": {r["phase"]: r["moved_bytes"] for r in self.scheduler.timeline
                            if r["step"] == self.scheduler.step},
        }
        self.scheduler.end_step()
        self.scheduler.timeline = [r for r in self.scheduler.timeline if r["step"] >= self.scheduler.step]
        ranks = self.strategy.all_gather_object(mine)
        if self.strategy.is_main_process and self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            record = {"step": step, "offload_level": list(self.scheduler.levels),
                      "moves_memory": self.scheduler.moves_memory, "ranks": ranks}
            with open(os.path.join(self.output_dir, "memory.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        out: Dict[str, float] = {}
        for r in ranks:
            for phase, nbytes in r["peak_bytes"].items():
                key = f"memory_peak_{phase}_mib_max"
                out[key] = max(out.get(key, 0.0), nbytes / MIB)
        return out


def _plan_settings(args, models, strategy: ParallelStrategy) -> Optional[Dict[str, Any]]:
    """The run's planner settings but the per-step shapes (None when the actor's config has no decoder sizes)."""
    from alignment.parallel.memory import LayerShape

    try:
        shape = LayerShape.from_config(strategy.unwrap(models.actor).config)
    except (TypeError, AttributeError, ValueError):
        return None
    return dict(
        shape=shape, stage="ppo" if models.critic is not None else "grpo", use_critic=models.critic is not None,
        tensor_parallel_degree=strategy.tensor_parallel_degree, pipeline_parallel_degree=strategy.pipeline_parallel_degree,
        sharding_parallel_degree=strategy.sharding_parallel_degree, sharding=strategy.sharding or "",
        offload_level=args.offload_level, per_device_train_batch_size=args.per_device_train_batch_size,
        experience_batch_size=args.experience_batch_size, recompute=bool(args.recompute),
        eval_mode=args.eval_mode or "tensor_parallel", num_return_sequences=args.num_return_sequences,
        per_device_rollout_batch_size=max(0, args.per_device_rollout_batch_size),
    )

"""AdamW + learning-rate schedule for the actor and (separately) the critic.

Schedules (all with optional linear warmup, counted in optimizer steps):
* ``constant``             lr (no warmup, as PaddleNLP's "constant")
* ``constant_with_warmup`` warmup, then lr
* ``linear``               warmup, then linear decay to ``min_lr`` (0 by default) over ``decay_steps``
* ``cosine``               warmup, then half-cosine decay to ``min_lr`` over ``decay_steps``
The critic gets its own schedule from the ``critic_*`` arguments, including ``critic_min_learning_rate``
and ``critic_decay_steps`` (which PaddleNLP declared but never applied).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import paddle

__all__ = ["ScheduleSpec", "build_scheduler", "build_optimizer"]


@dataclass
class ScheduleSpec:
    kind: str
    learning_rate: float
    total_steps: int
    warmup_steps: int = 0
    min_learning_rate: Optional[float] = None
    decay_steps: Optional[int] = None

    @classmethod
    def from_args(cls, args, total_steps: int, critic: bool = False) -> "ScheduleSpec":
        get = (lambda n: args.critic_value(n)) if critic else (lambda n: getattr(args, n))
        warmup_steps = get("warmup_steps") or 0
        if not warmup_steps:
            warmup_steps = int(math.ceil(total_steps * (get("warmup_ratio") or 0.0)))
        return cls(
            kind=get("lr_scheduler_type"),
            learning_rate=get("learning_rate"),
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            min_learning_rate=get("min_learning_rate"),
            decay_steps=get("decay_steps"),
        )

    def factor(self, step: int) -> float:
        """Multiplier of ``learning_rate`` at optimizer step ``step`` (0-based)."""
        if self.kind == "constant":
            return 1.0
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant_with_warmup":
            return 1.0
        decay = max(1, (self.decay_steps or self.total_steps) - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / decay))
        floor = (self.min_learning_rate or 0.0) / self.learning_rate
        if self.kind == "linear":
            shape = 1.0 - progress
        elif self.kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # validated by PPOArguments
            raise ValueError(f"unknown lr_scheduler_type '{self.kind}'")
        return floor + (1.0 - floor) * shape


def build_scheduler(spec: ScheduleSpec) -> paddle.optimizer.lr.LambdaDecay:
    """A LambdaDecay whose state (``last_epoch``) is saved with the optimizer state dict."""
    return paddle.optimizer.lr.LambdaDecay(learning_rate=spec.learning_rate, lr_lambda=spec.factor)


def build_optimizer(
    model: paddle.nn.Layer,
    scheduler: paddle.optimizer.lr.LRScheduler,
    *,
    weight_decay: float,
    beta1: float,
    beta2: float,
    epsilon: float,
    max_grad_norm: float,
) -> paddle.optimizer.AdamW:
    """AdamW over the trainable parameters; no decay on biases and norm weights; global-norm clipping."""
    params = [p for p in model.parameters() if not p.stop_gradient]
    decay_names = {p.name for n, p in model.named_parameters() if not p.stop_gradient and not _no_decay(n, p)}
    return paddle.optimizer.AdamW(
        learning_rate=scheduler,
        parameters=params,
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
        epsilon=epsilon,
        apply_decay_param_fun=lambda name: name in decay_names,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(max_grad_norm) if max_grad_norm and max_grad_norm > 0 else None,
    )


def _no_decay(name: str, param) -> bool:
    return len(param.shape) == 1 or name.endswith("bias") or "norm" in name.lower()

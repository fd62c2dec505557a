"""PPO-Lagrangian pieces of Safe RLHF (Dai et al., arXiv 2310.12773, Eq. 10-11; Ray et al. 2019's PPO-Lag).

The constrained problem  max_θ J_R(θ)  s.t.  J_C(θ) <= d  becomes  min_{λ>=0} max_θ J_R - λ (J_C - d).

* ``lagrangian_advantages(reward_adv, cost_adv, lam)``: the actor's advantage (A_r - λ·A_c) / (1 + λ)
  (the 1 + λ keeps its scale bounded whatever λ; Safe RLHF Eq. 11).
* ``LagrangeMultiplier``: λ = exp(log λ) and its update by gradient ascent in log λ on (J_C - d), with
  J_C the mean episode cost over a window of recent episodes.

No configuration objects: explicit scalars in, tensors / floats out. Not a registered kind (one variant).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Dict, Iterable, Optional

import paddle

__all__ = ["LagrangeMultiplier", "lagrangian_advantages"]


def lagrangian_advantages(reward_advantages: paddle.Tensor, cost_advantages: paddle.Tensor,
                          lam: float) -> paddle.Tensor:
    """(A_r - λ·A_c) / (1 + λ), elementwise; shapes (N, R) (or any equal shapes), λ >= 0 a float."""
    if lam < 0:
        raise ValueError(f"the Lagrange multiplier must be >= 0, got {lam}")
    return (reward_advantages - lam * cost_advantages) / (1.0 + lam)


class LagrangeMultiplier:
    """λ = exp(log λ), updated by gradient ascent on the constraint violation.

    ``update(episode_costs)`` appends the new episodes' costs (floats, every rank's: the caller gathers them)
    to a window of the last ``window_size``; once more than ``delay_steps`` updates were seen, with
    J_C = mean(window) and d = ``threshold``::

        log λ <- clip(log λ + lr · (J_C - d), LOG_LAMBDA_MIN, log lambda_max)   (no upper cap when lambda_max is None)

    i.e. ascent on (J_C - d) · log λ; so λ grows geometrically while the recent mean cost is above the
    threshold and shrinks once it is below. Deliberate differences from safe-rlhf (Adam on log λ with the loss
    -λ·(J_C - d), on the last rollout batch's mean cost): plain SGD whose step in log λ does not scale with λ
    (the λ-scaled gradient of that loss under plain SGD grows without bound), and a window of episodes, so the
    update is deterministic, bounded per step and reproducible from the state alone. ``state_dict`` /
    ``set_state_dict`` hold everything a resume needs (plain floats / lists).
    """

    LOG_LAMBDA_MIN = -20.0  # λ >= 2e-9: it can always grow back within a few steps

    def __init__(self, *, lambda_init: float = 1.0, lr: float = 0.1, threshold: float = 0.0,
                 lambda_max: Optional[float] = None, delay_steps: int = 0, window_size: int = 128):
        if lambda_init <= 0:
            raise ValueError(f"lambda_init must be > 0 (λ = exp(log λ)), got {lambda_init}")
        if lambda_max is not None and lambda_max < lambda_init:
            raise ValueError(f"lambda_max ({lambda_max}) must be >= lambda_init ({lambda_init}) or None")
        if window_size < 1:
            raise ValueError(f"episode_cost_window_size must be >= 1, got {window_size}")
        self.log_lambda = math.log(lambda_init)
        self.lr, self.threshold, self.lambda_max = float(lr), float(threshold), lambda_max
        self.delay_steps, self.window_size = int(delay_steps), int(window_size)
        self.window: deque = deque(maxlen=self.window_size)
        self.steps = 0

    @property
    def value(self) -> float:
        """λ."""
        return math.exp(self.log_lambda)

    @property
    def mean_episode_cost(self) -> float:
        """J_C over the window (nan before any episode)."""
        return sum(self.window) / len(self.window) if self.window else float("nan")

    def update(self, episode_costs: Iterable[float]) -> Dict[str, float]:
        """Add the step's episode costs, then (after the delay) one ascent step; returns the metrics."""
        self.window.extend(float(c) for c in episode_costs)
        self.steps += 1
        violation = self.mean_episode_cost - self.threshold
        updated = self.steps > self.delay_steps and bool(self.window)
        if updated:
            self.log_lambda = max(self.log_lambda + self.lr * violation, self.LOG_LAMBDA_MIN)
            if self.lambda_max is not None:
                self.log_lambda = min(self.log_lambda, math.log(self.lambda_max))
        return {"lambda": self.value, "log_lambda": self.log_lambda, "episode_cost_window": self.mean_episode_cost,
                "cost_violation": violation, "lambda_updated": float(updated)}

    def state_dict(self) -> Dict[str, object]:
        return {"log_lambda": self.log_lambda, "window": list(self.window), "steps": self.steps}

    def set_state_dict(self, state: Dict[str, object]) -> None:
        self.log_lambda = float(state["log_lambda"])
        self.window = deque((float(c) for c in state["window"]), maxlen=self.window_size)
        self.steps = int(state["steps"])

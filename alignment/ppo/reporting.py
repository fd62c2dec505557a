"""Where PPO metrics go: console (progress bar), ``output_dir/metrics.jsonl``, VisualDL / TensorBoard, a PNG.

Only the main process writes. ``metrics.jsonl`` holds one JSON object per logged step (training records
have ``step`` and the ``train/...``-free metric names; evaluation records carry ``eval_`` names), and is
what tests, plots and a resumed run read back.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence

__all__ = ["MetricsReporter", "read_metrics", "plot_curves"]

# Console line: the most useful metrics first, in this order.
_CONSOLE_KEYS = (
    "reward", "eval_reward", "kl_divergence", "actor_loss", "critic_loss", "ptx_loss", "returns", "advantages",
    "actor_clipfrac", "critic_clipfrac", "response_length", "time_generation", "time_experience", "time_update",
    "samples_per_second",
)


def read_metrics(output_dir: str) -> List[Dict[str, float]]:
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsReporter:
    """Console + jsonl + VisualDL/TensorBoard sink for one run (no-op on non-main ranks)."""

    def __init__(
        self,
        output_dir: str,
        *,
        enabled: bool = True,
        report_to: Sequence[str] = ("visualdl",),
        logging_dir: Optional[str] = None,
        total_steps: Optional[int] = None,
        initial_step: int = 0,
        disable_tqdm: bool = False,
    ):
        self.output_dir = output_dir
        self.enabled = enabled
        self.writers = []
        self.bar = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        logdir = logging_dir or os.path.join(output_dir, "runs")
        for sink in report_to:
            self.writers.append(_open_writer(sink, logdir))
        if not disable_tqdm:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, desc="ppo", dynamic_ncols=True, unit="step")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _num(v) for k, v in metrics.items()}}
        with open(os.path.join(self.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for kind, writer in self.writers:
            for key, value in record.items():
                if key == "step" or value is None or not math.isfinite(value):
                    continue
                tag = key if key.startswith("eval_") else f"train/{key}"
                writer.add_scalar(tag, value, step) if kind == "tensorboard" else writer.add_scalar(
                    tag=tag, value=value, step=step
                )
        line = _console_line(step, record)
        if self.bar is not None:
            self.bar.set_postfix_str(_short(record), refresh=False)
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for _, writer in self.writers:
            try:
                writer.close()
            except Exception:  # pragma: no cover - a sink failing to close must not lose the run
                pass
        self.writers = []


def _open_writer(sink: str, logdir: str):
    if sink == "visualdl":
        from visualdl import LogWriter

        return "visualdl", LogWriter(logdir=logdir)
    if sink == "tensorboard":
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError(
                    "report_to contains 'tensorboard' but neither tensorboardX nor torch is installed; "
                    "pip install tensorboardX, or use report_to visualdl"
                ) from None
        return "tensorboard", SummaryWriter(log_dir=logdir)
    raise ValueError(f"unknown report_to sink '{sink}'; valid: visualdl, tensorboard, none")


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt(v) -> str:
    if v is None:
        return "nan"
    return f"{v:.4g}"


def _console_line(step: int, record: Mapping[str, float]) -> str:
    """The main metrics (every metric goes to metrics.jsonl and VisualDL/TensorBoard)."""
    keys = [k for k in _CONSOLE_KEYS if k in record] + sorted(
        k for k in record if k.startswith("eval_") and k not in _CONSOLE_KEYS
    )
    return f"step {step}: " + " ".join(f"{k}={_fmt(record[k])}" for k in keys)


def _short(record: Mapping[str, float]) -> str:
    return " ".join(f"{k}={_fmt(record[k])}" for k in ("reward", "kl_divergence", "actor_loss") if k in record)


def plot_curves(output_dir: str, path: Optional[str] = None, keys: Sequence[str] = ("reward", "kl_divergence")) -> str:
    """PNG of ``keys`` (default reward and KL) over steps from ``metrics.jsonl``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(output_dir) if any(k in r for k in keys)]
    path = path or os.path.join(output_dir, "ppo_curves.png")
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5))
    axes = axes if len(keys) > 1 else [axes]
    for ax, key in zip(axes, keys):
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=key)
        if key == "reward":
            ev = [(r["step"], r["eval_reward"]) for r in read_metrics(output_dir) if r.get("eval_reward") is not None]
            if ev:
                ax.plot(*zip(*ev), marker="o", label="eval_reward")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path

"""What every PaddleNLP-Trainer-based stage (SFT, RM, DPO, KTO, GKD) shares: metric logging.

``MetricsLoggingMixin`` lets ``compute_loss`` hand over a dict of per-step metrics
(``self.store_metrics(metrics, "train")``); at each logging step their means are merged into the
Trainer's log record (eval metrics get the ``eval_`` prefix). Every record is also kept in
``self.metrics_history`` and appended to ``<output_dir>/metrics.jsonl`` on the main process, which is
what tests, plots and users read back.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Dict, List, Mapping

import paddle

__all__ = ["LossOnlyEvaluationMixin", "MetricsLoggingMixin", "read_metrics"]


class MetricsLoggingMixin:
    """Mix in before ``paddlenlp.trainer.Trainer``: ``class RewardTrainer(MetricsLoggingMixin, Trainer)``."""

    def _metric_store(self) -> Dict[str, Dict[str, List[float]]]:
        if not hasattr(self, "_stored_metrics"):
            self._stored_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
            self.metrics_history: List[Dict[str, float]] = []
        return self._stored_metrics

    def store_metrics(self, metrics: Mapping[str, object], split: str = "train") -> None:
        store = self._metric_store()[split]
        for key, value in metrics.items():
            if isinstance(value, paddle.Tensor):
                value = float(value.astype("float32").mean())
            store[key].append(float(value))

    def log(self, logs: Dict[str, float], **kwargs) -> None:  # noqa: D102 (Trainer API)
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        store = self._metric_store()[split]
        prefix = "eval_" if split == "eval" else ""
        for key, values in store.items():
            if values:
                logs[f"{prefix}{key}"] = round(sum(values) / len(values), 6)
        store.clear()
        record = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
        record["step"] = int(self.state.global_step)
        self.metrics_history.append(record)
        if self.args.should_save or self.args.process_index == 0:
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        super().log(logs, **kwargs)


def read_metrics(output_dir: str) -> List[Dict[str, float]]:
    """Records written by ``MetricsLoggingMixin`` (one dict per logging step)."""
    path = os.path.join(output_dir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class LossOnlyEvaluationMixin:
    """Evaluation by ``compute_loss`` alone (its metrics go through ``store_metrics``), and batches passed
    through whole: the preference / unpaired / distillation columns are not ``forward()`` arguments, so
    the Trainer must not drop them."""

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):  # noqa: D102
        if self.args.pipeline_parallel_degree > 1:  # the last pipeline stage computes the loss (eval_batch)
            loss, _, _ = super().prediction_step(model, inputs, True, ignore_keys)
            return loss, None, None
        inputs = self._prepare_inputs(inputs)
        with paddle.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _remove_unused_columns(self, dataset, description=None):  # noqa: D102
        return dataset

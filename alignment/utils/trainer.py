"""What every PaddleNLP-Trainer-based stage (SFT, RM, DPO, KTO, GKD) shares: metric logging, crash-safe
pickle-free checkpoints (``CheckpointMixin``), numeric guards (``NumericGuardMixin``), a working VisualDL sink.

``MetricsLoggingMixin`` lets ``compute_loss`` hand over a dict of per-step metrics
(``self.store_metrics(metrics, "train")``); at each logging step their means are merged into the
Trainer's log record (eval metrics get the ``eval_`` prefix). Every record is also kept in
``self.metrics_history`` and appended to ``<output_dir>/metrics.jsonl`` on the main process, which is
what tests, plots and users read back. ``MetricsLoggingMixin`` brings the checkpoint and guard mixins with it,
so every stage trainer that logs through it also saves crash-safely and skips non-finite updates.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Mapping, Optional

import paddle

logger = logging.getLogger(__name__)

__all__ = ["LossOnlyEvaluationMixin", "MetricsLoggingMixin", "CheckpointMixin", "NumericGuardMixin",
           "install_visualdl_fix", "read_metrics", "trim_metrics"]


# ------------------------------------------------------------------------------------ crash-safe checkpoints
class CheckpointMixin:
    """Crash-safe, pickle-free checkpoints for a PaddleNLP Trainer (alignment/training/checkpoints.py).

    ``checkpoint-N`` is written by the Trainer's own code (every tensor / pipeline rank its files) into a
    staging directory, then published by the main process with its completion marker; old checkpoints are
    rotated only after that, counting complete ones. ``paddle.save`` / ``paddle.load`` write and read
    safetensors meanwhile (``alignment.utils.safe_io``): weights as ``model*.safetensors``, the optimizer,
    scheduler and RNG files under their PaddleNLP names, the arguments as ``training_args.json``.
    """

    def train(self, *args, **kwargs):  # noqa: D102
        from alignment.utils.safe_io import safe_paddle_io

        # optimizer-state names (from a fresh name generator) match those of a resumed run
        with safe_paddle_io(), paddle.utils.unique_name.guard():
            return super().train(*args, **kwargs)

    def save_model(self, output_dir: Optional[str] = None, merge_tensor_parallel: Optional[bool] = False):  # noqa: D102
        from alignment.utils.safe_io import safe_paddle_io

        with safe_paddle_io():
            return super().save_model(output_dir, merge_tensor_parallel)

    def _save_checkpoint(self, model, metrics=None):  # noqa: D102 (Trainer API)
        from alignment.parallel import ParallelStrategy
        from alignment.training import checkpoints
        from alignment.utils.safe_io import safe_paddle_io

        strategy = ParallelStrategy.current()
        step = int(self.state.global_step)
        out = self.args.output_dir
        final = os.path.join(out, f"{checkpoints.PREFIX}-{step}")
        staging = checkpoints.begin(out, step, strategy)
        saved = self.args.output_dir, self.args.save_total_limit
        self.args.output_dir, self.args.save_total_limit = staging, None  # the Trainer writes staging/checkpoint-N
        try:
            with safe_paddle_io():
                super()._save_checkpoint(model, metrics)
        finally:
            self.args.output_dir, self.args.save_total_limit = saved
        best = self.state.best_model_checkpoint
        if best and os.path.abspath(best).startswith(os.path.abspath(staging)):
            self.state.best_model_checkpoint = final
            if self.args.should_save:  # the state file inside the checkpoint names the published path
                self.state.save_to_json(os.path.join(staging, os.path.basename(final), "trainer_state.json"))
        checkpoints.publish(staging, final, strategy, meta={"stage": type(self).__name__},
                            inner=os.path.basename(final))
        if strategy.is_main_process:
            checkpoints.rotate(out, self.args.save_total_limit, keep=[self.state.best_model_checkpoint])
        strategy.barrier()

    def _load_from_checkpoint(self, resume_from_checkpoint=None):  # noqa: D102 (Trainer API)
        from paddlenlp.trainer.trainer import _add_variant

        from alignment.utils.safe_io import load_tree, safe_paddle_io

        if resume_from_checkpoint and not isinstance(resume_from_checkpoint, bool):
            weights = os.path.join(resume_from_checkpoint,
                                   _add_variant("model.safetensors", self.args.weight_name_suffix))
            plain = not hasattr(self.model, "lora_config") and not self.args.should_load_sharding_stage1_model
            if plain and not self.args.unified_checkpoint and os.path.isfile(weights):
                if self.args.dataset_rank == 0 or self.args.use_expert_parallel:
                    self._set_state_dict_in_model(load_tree(weights, return_numpy=True))
                return
        with safe_paddle_io():
            return super()._load_from_checkpoint(resume_from_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):  # noqa: D102 (Trainer API)
        from alignment.utils.safe_io import safe_paddle_io

        with safe_paddle_io():
            return super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint):  # noqa: D102 (Trainer API)
        from alignment.utils.safe_io import safe_paddle_io

        with safe_paddle_io():
            return super()._load_rng_state(checkpoint)


def install_visualdl_fix(trainer) -> None:
    """Swap PaddleNLP's VisualDL callback for one whose hyperparameter record takes booleans.

    VisualDL's ``add_hparams`` rejects bool values ("HparamInfo.int_value: Expected an int, got a boolean"),
    and PaddleNLP hands it every TrainingArguments field, so any run reporting to VisualDL stopped at train
    start; booleans and None are recorded as text instead.
    """
    try:
        from paddlenlp.trainer.integrations import VisualDLCallback
    except ImportError:  # pragma: no cover
        return
    handler = trainer.callback_handler
    if not any(type(cb) is VisualDLCallback for cb in handler.callbacks):
        return

    class _VisualDLCallback(VisualDLCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if self.vdl_writer is None and state.is_world_process_zero:
                self._init_summary_writer(args)
            writer = self.vdl_writer
            if writer is not None and hasattr(writer, "add_hparams") and not getattr(writer, "_bool_safe", False):
                add = writer.add_hparams

                def add_hparams(hparams_dict, metrics_list, *a, **kw):
                    clean = {k: (str(v) if isinstance(v, bool) or v is None else v) for k, v in hparams_dict.items()}
                    return add(clean, metrics_list, *a, **kw)

                writer.add_hparams, writer._bool_safe = add_hparams, True
            return super().on_train_begin(args, state, control, **kwargs)

    handler.pop_callback(VisualDLCallback)
    handler.add_callback(_VisualDLCallback())


# ------------------------------------------------------------------------------------------ numeric guards
class NumericGuardMixin:
    """Skip an update whose loss or gradient norm is not finite; stop after ``max_nonfinite_steps`` in a row.

    A non-finite micro-batch loss counts as 0 in the logged loss; the skipped update leaves weights and
    optimizer moments untouched (the learning-rate schedule still advances). Every skip is logged with its
    step and counted in ``nonfinite_skipped``; a gradient norm far above its running level is warned about
    (alignment/utils/guards.py). ``max_nonfinite_steps`` is read from the training arguments (set by
    ``alignment.utils.cli``; default 3).
    """

    def training_step(self, model, inputs, *args, **kwargs):  # noqa: D102 (Trainer API)
        loss = super().training_step(model, inputs, *args, **kwargs)
        if isinstance(loss, paddle.Tensor) and not bool(paddle.isfinite(loss.astype("float32")).all()):
            self._bad_loss = float(loss.astype("float32").reshape([-1])[0])
            return paddle.zeros_like(loss)
        return loss

    @property
    def nonfinite_guard(self):
        if getattr(self, "_nonfinite_guard", None) is None:
            from alignment.parallel import ParallelStrategy
            from alignment.utils.guards import NonFiniteGuard

            self._nonfinite_guard = NonFiniteGuard(int(getattr(self.args, "max_nonfinite_steps", 3) or 0),
                                                   self.args.output_dir, ParallelStrategy.current())
        return self._nonfinite_guard

    def _check_loss_valid(self, loss):  # noqa: D102 (Trainer API: called once per update, before the step)
        """Instead of raising on a NaN loss: guard the (possibly fleet-wrapped) optimizer's step."""
        if getattr(self, "_guarded_optimizer", None) is self.optimizer:
            return
        from alignment.utils.guards import guard_optimizer

        def bad_loss():
            value, self._bad_loss = getattr(self, "_bad_loss", None), None
            return {"loss": value} if value is not None else {}

        def skipped():
            self.store_metrics({"nonfinite_skipped": float(self.nonfinite_guard.skipped)}, "train")

        guard_optimizer(self.optimizer, self.nonfinite_guard, lambda: int(self.state.global_step) + 1,
                        name="model", extra=bad_loss, on_skip=skipped)
        self._guarded_optimizer = self.optimizer


class MetricsLoggingMixin(NumericGuardMixin, CheckpointMixin):
    """Mix in before ``paddlenlp.trainer.Trainer``: ``class RewardTrainer(MetricsLoggingMixin, Trainer)``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        install_visualdl_fix(self)

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


def trim_metrics(output_dir: str, last_step: int) -> int:
    """Drop the records after ``last_step`` from ``output_dir/metrics.jsonl`` (a resumed run logs them again);
    returns how many were dropped. The file is rewritten atomically."""
    from alignment.utils.io import atomic_write_text

    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
        try:
            step = int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError):
            continue  # a line cut by a kill
        if step <= last_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))
    return len(lines) - len(kept)


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

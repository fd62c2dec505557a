"""RewardTrainer: a thin PaddleNLP Trainer whose loss comes from ``alignment.algorithms`` (kind "reward").

One step: chosen and rejected rows of a ``PreferenceBatch`` go through the score model as one batch of 2B
(so a data-parallel normaliser update sees both), the per-token scores are split back into (B, L) halves,
and ``algorithms.get("reward", loss_type)`` returns the loss and the metrics ``accuracy`` (strict
r_chosen > r_rejected), ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, which
``MetricsLoggingMixin`` logs for training.

Evaluation gathers the end scores of every eval pair over all ranks (PaddleNLP's evaluation loop) and
``reward_metrics`` computes ``eval_accuracy``, ``eval_rewards/chosen``, ``eval_rewards/rejected``,
``eval_rewards/margins``, ``eval_rewards_mean`` and ``eval_rewards_std`` from them, so the numbers are
exact over the whole eval split whatever the batch size or world size (``metric_for_best_model: accuracy``).

Cost models (``score_type: cost``, Safe RLHF arXiv 2310.12773): the batches are ``SafetyPreferenceBatch``
(safer / unsafer rows with safety signs), the loss is ``algorithms.get("cost", loss_type)`` and the metrics
are ``accuracy`` (pair accuracy, c_unsafer > c_safer), ``sign_accuracy`` (the sign of each end cost matches its
response's safety: > 0 unsafe, < 0 safe) and ``costs/*``; evaluation gathers [c_safer, c_unsafer, safety
signs] of every pair and ``cost_eval_metrics`` gives ``eval_accuracy``, ``eval_sign_accuracy``, ``eval_costs/*``.
Under pipeline parallelism the last stage's criterion is ``cost_loss_criterion`` (labels ``COST_PIPELINE_LABELS``:
masks, ids and both safety signs) and its metrics / end costs reach every stage as the reward model's do.

Saving writes ``ScoreModel.save_pretrained`` (config.json with the score fields, model_state.pdparams,
value_head.safetensors) plus the tokenizer; ``resume_from_checkpoint`` restores the same state dict.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import paddle
from paddlenlp.trainer import Trainer

from alignment.algorithms import get as get_algorithm
from alignment.rm.config import RewardArguments
from alignment.training.sampler import GlobalBatchMixin
from alignment.utils.trainer import MetricsLoggingMixin

__all__ = ["RewardTrainer", "reward_metrics", "cost_eval_metrics", "pair_loss_criterion", "PIPELINE_LABELS",
           "cost_loss_criterion", "COST_PIPELINE_LABELS"]

TRAINING_ARGS_NAME = "training_args.bin"


def reward_metrics(eval_pred) -> Dict[str, float]:
    """Metrics of all eval pairs from predictions (N, 2) = [chosen end score, rejected end score]."""
    preds = eval_pred.predictions
    preds = preds[0] if isinstance(preds, (tuple, list)) else preds
    preds = np.asarray(preds, dtype="float64").reshape([-1, 2])
    chosen, rejected = preds[:, 0], preds[:, 1]
    both = preds.reshape([-1])
    return {
        "accuracy": float((chosen > rejected).mean()),
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
        "rewards/margins": float((chosen - rejected).mean()),
        "rewards_mean": float(both.mean()),
        "rewards_std": float(both.std()),
    }


def cost_eval_metrics(eval_pred) -> Dict[str, float]:
    """Metrics of all eval pairs from predictions (N, 4) = [c_safer, c_unsafer, safer sign, unsafer sign]
    (signs in the data's convention, +1 safe); a cost > 0 reads as unsafe."""
    preds = eval_pred.predictions
    preds = preds[0] if isinstance(preds, (tuple, list)) else preds
    preds = np.asarray(preds, dtype="float64").reshape([-1, 4])
    c_s, c_u, sign_s, sign_u = preds.T
    right = np.concatenate([c_s * -sign_s > 0, c_u * -sign_u > 0])
    both = np.concatenate([c_s, c_u])
    return {
        "accuracy": float((c_u > c_s).mean()),
        "sign_accuracy": float(right.mean()),
        "costs/safer": float(c_s.mean()),
        "costs/unsafer": float(c_u.mean()),
        "costs/margins": float((c_u - c_s).mean()),
        "costs_mean": float(both.mean()),
        "costs_std": float(both.std()),
        "unsafe_share": float((both > 0).mean()),
    }


def _mean_over_ranks(metrics: Dict[str, paddle.Tensor]) -> Dict[str, float]:
    from alignment.parallel import ParallelStrategy

    return ParallelStrategy.current().all_reduce_mean({k: float(v) for k, v in metrics.items()})


def _pair_end_scores(scores, batch: int, first_mask, second_mask):
    """[end score of the first B rows, of the last B rows]: each row's score at its last real token."""
    from alignment.models.score_model import last_index

    return [paddle.take_along_axis(half, last_index(mask).unsqueeze(-1), axis=1).squeeze(-1)
            for half, mask in ((scores[:batch], first_mask), (scores[batch:], second_mask))]


def pair_loss_criterion(reward_args: RewardArguments):
    """The reward-model loss as the last pipeline stage's criterion.

    The stage's output is the per-token scores (2B, L) of ``stack_pairs`` rows; the labels are
    (chosen_attention_mask, rejected_attention_mask, chosen_input_ids, rejected_input_ids, margin or None).
    """
    from alignment.models.pipeline import PipeCriterion

    loss_fn = get_algorithm("reward", reward_args.loss_type)

    def criterion(scores, labels):
        chosen_mask, rejected_mask, chosen_ids, rejected_ids, margin = labels
        if scores.ndim == 3:
            scores = scores[..., 0]
        batch = chosen_mask.shape[0]
        loss, metrics = loss_fn(
            scores[:batch], scores[batch:], chosen_mask, rejected_mask, chosen_ids=chosen_ids,
            rejected_ids=rejected_ids, regularization=reward_args.regularization, margin=margin,
            center_rewards_coefficient=reward_args.center_rewards_coefficient,
        )
        if not scores.stop_gradient:  # training micro-batches: kept for logging (last stage only)
            out.metrics.append({k: float(v) for k, v in metrics.items()})
        else:  # evaluation: the end scores, for the exact eval metrics of ``reward_metrics``
            ends = _pair_end_scores(scores, batch, chosen_mask, rejected_mask)
            out.end_scores.append(paddle.stack(ends, axis=-1).astype("float32").numpy())
        return loss

    out = PipeCriterion(criterion)
    out.metrics, out.end_scores = [], []
    return out


PIPELINE_LABELS = ("chosen_attention_mask", "rejected_attention_mask", "chosen_input_ids", "rejected_input_ids",
                   "margin")


def cost_loss_criterion(reward_args: RewardArguments):
    """The cost-model loss (kind "cost") as the last pipeline stage's criterion.

    The stage's output is the per-token costs (2B, L) of ``stack_pairs(..., "safer", "unsafer")`` rows; the labels
    are ``COST_PIPELINE_LABELS`` (safer / unsafer masks, ids, safety signs). Training micro-batches append their
    pair / sign metrics to ``criterion.metrics``, evaluation ones [c_safer, c_unsafer, safer sign, unsafer sign]
    rows to ``criterion.end_scores`` (what ``cost_eval_metrics`` reads), as ``pair_loss_criterion`` does.
    """
    from alignment.models.pipeline import PipeCriterion

    loss_fn = get_algorithm("cost", reward_args.loss_type)

    def criterion(scores, labels):
        safer_mask, unsafer_mask, safer_ids, unsafer_ids, safer_sign, unsafer_sign = labels
        if scores.ndim == 3:
            scores = scores[..., 0]
        batch = safer_mask.shape[0]
        loss, metrics = loss_fn(
            scores[:batch], scores[batch:], safer_mask, unsafer_mask, safer_safety_sign=safer_sign,
            unsafer_safety_sign=unsafer_sign, safer_ids=safer_ids, unsafer_ids=unsafer_ids,
            regularization=reward_args.regularization,
        )
        if not scores.stop_gradient:  # training micro-batches: kept for logging (last stage only)
            out.metrics.append({k: float(v) for k, v in metrics.items()})
        else:  # evaluation: end costs and signs, for the exact eval metrics of ``cost_eval_metrics``
            cols = _pair_end_scores(scores, batch, safer_mask, unsafer_mask)
            cols += [safer_sign.astype(cols[0].dtype), unsafer_sign.astype(cols[0].dtype)]
            out.end_scores.append(paddle.stack(cols, axis=-1).astype("float32").numpy())
        return loss

    out = PipeCriterion(criterion)
    out.metrics, out.end_scores = [], []
    return out


COST_PIPELINE_LABELS = ("safer_attention_mask", "unsafer_attention_mask", "safer_input_ids", "unsafer_input_ids",
                        "safer_safety_sign", "unsafer_safety_sign")


class RewardTrainer(GlobalBatchMixin, MetricsLoggingMixin, Trainer):
    """``RewardTrainer(score_model, args, reward_args=RewardArguments(...), train_dataset=..., ...)``."""

    merges_on_save = True  # ``_save`` writes one merged score checkpoint under any layout

    def __init__(self, model, args, *, reward_args: Optional[RewardArguments] = None, score_type: str = "reward",
                 **kwargs):
        self.is_cost = score_type == "cost"  # safer / unsafer pairs and the "cost" losses
        kwargs.setdefault("compute_metrics", cost_eval_metrics if self.is_cost else reward_metrics)
        if getattr(args, "unified_checkpoint", False):
            raise ValueError(
                "unified_checkpoint is not supported for score models; set unified_checkpoint false"
            )
        super().__init__(model=model, args=args, **kwargs)
        self.reward_args = reward_args or RewardArguments()
        self.loss_fn = get_algorithm("cost" if self.is_cost else "reward", self.reward_args.loss_type)

    def train(self, *args, **kwargs):
        with paddle.utils.unique_name.guard():  # optimizer-state names match a resumed run, even in one process
            return super().train(*args, **kwargs)

    # ---------------------------------------------------------------------------------------------- loss
    def pair_scores(self, model, inputs: Dict[str, paddle.Tensor], first: str = "chosen", second: str = "rejected"):
        """One forward of the 2B rows; returns (chosen scores, rejected scores, chosen end, rejected end)
        (cost models: ``first="safer", second="unsafer"``)."""
        batch = inputs[f"{first}_input_ids"].shape[0]
        ids = paddle.concat([inputs[f"{first}_input_ids"], inputs[f"{second}_input_ids"]], axis=0)
        mask = paddle.concat([inputs[f"{first}_attention_mask"], inputs[f"{second}_attention_mask"]], axis=0)
        out = model(input_ids=ids, attention_mask=mask)
        scores, end = out.scores, out.end_scores
        if scores.ndim == 3:  # score_dim > 1: the pairwise loss reads the first score
            scores, end = scores[..., 0], end[..., 0]
        return scores[:batch], scores[batch:], end[:batch], end[batch:]

    def compute_cost_loss(self, model, inputs: Dict[str, paddle.Tensor], return_outputs: bool = False):
        """Cost model: the "cost" loss of a ``SafetyPreferenceBatch``; outputs (N, 4) [c_safer, c_unsafer, signs]."""
        safer, unsafer, safer_end, unsafer_end = self.pair_scores(model, inputs, "safer", "unsafer")
        loss, metrics = self.loss_fn(
            safer, unsafer, inputs["safer_attention_mask"], inputs["unsafer_attention_mask"],
            safer_safety_sign=inputs["safer_safety_sign"], unsafer_safety_sign=inputs["unsafer_safety_sign"],
            safer_ids=inputs["safer_input_ids"], unsafer_ids=inputs["unsafer_input_ids"],
            regularization=self.reward_args.regularization,
        )
        if model.training:
            self.store_metrics(_mean_over_ranks(metrics), "train")
        if return_outputs:
            signs = [inputs[f"{k}_safety_sign"].astype("float32") for k in ("safer", "unsafer")]
            return loss, {"pairs": paddle.stack([safer_end.astype("float32"), unsafer_end.astype("float32"), *signs],
                                                axis=-1)}
        return loss

    def compute_loss(self, model, inputs: Dict[str, paddle.Tensor], return_outputs: bool = False):
        if self.is_cost:
            return self.compute_cost_loss(model, inputs, return_outputs)
        chosen, rejected, chosen_end, rejected_end = self.pair_scores(model, inputs)
        a = self.reward_args
        loss, metrics = self.loss_fn(
            chosen, rejected, inputs["chosen_attention_mask"], inputs["rejected_attention_mask"],
            chosen_ids=inputs["chosen_input_ids"], rejected_ids=inputs["rejected_input_ids"],
            regularization=a.regularization, margin=inputs.get("margin"),
            center_rewards_coefficient=a.center_rewards_coefficient,
        )
        if model.training:  # averaged over data-parallel ranks (equal per-rank batches: the global-batch value)
            self.store_metrics(_mean_over_ranks(metrics), "train")
        if return_outputs:
            return loss, {"chosen_end_scores": chosen_end, "rejected_end_scores": rejected_end}
        return loss

    def training_pipeline_step(self, model, inputs):
        """PaddleNLP's pipeline step, then the last stage's pair metrics, averaged like ``compute_loss``'s."""
        from alignment.parallel import ParallelStrategy, unwrap_model

        loss = super().training_pipeline_step(model, inputs)
        criterion = unwrap_model(model).alignment_criterion
        if not self._pp_data_buffer:  # an optimizer step ran: the cycle's micro-batches were scored
            strategy = ParallelStrategy.current()
            records = strategy.broadcast_from_last_stage(criterion.metrics)
            criterion.metrics.clear()
            if records:
                mean = {k: sum(r[k] for r in records) / len(records) for k in records[0]}
                self.store_metrics(strategy.all_reduce_mean(mean), "train")
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        if self.args.pipeline_parallel_degree > 1:  # the last stage computes the loss (eval_batch)
            from alignment.parallel import ParallelStrategy, unwrap_model

            loss, _, _ = super().prediction_step(model, inputs, True, ignore_keys)
            criterion = unwrap_model(model).alignment_criterion
            ends = ParallelStrategy.current().broadcast_from_last_stage(criterion.end_scores)
            criterion.end_scores.clear()
            if prediction_loss_only or not ends:
                return loss, None, None
            preds = paddle.to_tensor(np.concatenate(ends, axis=0))
            return loss, preds, paddle.ones([preds.shape[0]], dtype="int64")
        inputs = self._prepare_inputs(inputs)
        with paddle.no_grad():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        if self.is_cost:
            preds = out["pairs"]
            return loss.detach(), preds, paddle.ones([preds.shape[0]], dtype="int64")
        preds = paddle.stack([out["chosen_end_scores"], out["rejected_end_scores"]], axis=-1).astype("float32")
        labels = paddle.ones([preds.shape[0]], dtype="int64")  # without labels no compute_metrics call
        return loss.detach(), preds, labels

    # ---------------------------------------------------------------------------------------------- save
    def _save(self, output_dir: Optional[str] = None, state_dict=None, merge_tensor_parallel=False):
        """One single-process score checkpoint (merged over tensor / pipeline ranks) + tokenizer + arguments.

        Called by ``Trainer.save_model`` on the saving ranks of every tensor / pipeline group (stage-3
        parameters already gathered); the merged files are written by the main process only.
        """
        from alignment.models.score_model import save_score_checkpoint
        from alignment.parallel.checkpoint import full_state_dict

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        from alignment.models.loading import is_lora_model

        if is_lora_model(self.model):
            return self._save_lora(output_dir)
        state = full_state_dict(self.model, gather_stage3=False)
        if state is None or not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_score_checkpoint(self.model, output_dir, state)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(output_dir)
        paddle.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    # ---------------------------------------------------------------------------------------------- LoRA
    def _save_lora(self, output_dir: str) -> None:
        """Adapters + head: lora_config.json and lora_model_state.pdparams (safetensors content: the adapters and
        the score head, what a resume reloads), value_head.safetensors and the score config.json."""
        from alignment.models.score_model import save_score_head
        from alignment.parallel import unwrap_model
        from alignment.utils.safe_io import safe_paddle_io

        model = unwrap_model(self.model)
        with safe_paddle_io():
            model.save_pretrained(output_dir, merge_tensor_parallel=self.args.tensor_parallel_degree > 1,
                                  is_main_process=self.args.should_save)
        if not self.args.should_save:
            return
        save_score_head(model.model, output_dir)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(output_dir)
        paddle.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def save_merged(self, output_dir: str) -> None:
        """The LoRA-merged score model (config.json, model.safetensors, value_head.safetensors) in ``output_dir``,
        next to the adapter files; ``ScoreModel.from_pretrained`` loads it without paddlenlp.peft. Collective."""
        from alignment.models.loading import merge_lora_state_dict
        from alignment.models.score_model import save_score_checkpoint
        from alignment.parallel import unwrap_model
        from alignment.parallel.checkpoint import full_state_dict

        model = unwrap_model(self.model)
        state = full_state_dict(model.model, state_dict=merge_lora_state_dict(model), gather_stage3=False)
        if state is not None and self.args.should_save:
            save_score_checkpoint(model.model, output_dir, state)

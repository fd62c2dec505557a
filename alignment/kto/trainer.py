"""KTOTrainer: a thin PaddleNLP Trainer whose ``compute_loss`` calls the registered unpaired loss.

One step on an ``UnpairedPreferenceBatch``: the policy scores the completions (with gradient) and, for
``kto``, the mismatched "KL" completions (prompt i + completion i-1, built by the collator) without
gradient; the reference scores both in one forward. ``registry.get("unpaired", loss_type)`` gives the
loss and metrics, which ``MetricsLoggingMixin`` logs. The KL reference point is detached and, as in TRL,
averaged over the KL completions of every data-carrying rank (tensor-parallel replicas count once).
"""

from __future__ import annotations

from typing import Dict, Optional

import paddle
from paddlenlp.trainer import Trainer

from alignment.algorithms import registry
from alignment.data.batches import IGNORE_INDEX
from alignment.kto.config import KTOArguments
from alignment.models.loading import freeze
from alignment.parallel import ParallelStrategy
from alignment.training.logps import (
    completion_logps,
    logits_completion_logps,
    position_ids_from_mask,
    reference_logps,
)
from alignment.training.sampler import GlobalBatchMixin
from alignment.utils.trainer import LossOnlyEvaluationMixin, MetricsLoggingMixin

__all__ = ["KTOTrainer"]


def _pad_cols(x: paddle.Tensor, length: int, value: int) -> paddle.Tensor:
    if x.shape[1] == length:
        return x
    return paddle.concat([x, paddle.full([x.shape[0], length - x.shape[1]], value, dtype=x.dtype)], axis=1)


class KTOTrainer(GlobalBatchMixin, LossOnlyEvaluationMixin, MetricsLoggingMixin, Trainer):
    """``KTOTrainer(model, args, kto_args=..., ref_model=..., train_dataset=..., data_collator=...)``.

    ``ref_model=None`` uses the policy itself with LoRA adapters disabled as the reference.
    """

    def __init__(self, model, args, *, kto_args: KTOArguments, ref_model=None, pad_token_id: int = 0, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        self.kto_args = kto_args
        self.pad_token_id = pad_token_id
        self.ref_model = ref_model
        if ref_model is not None:
            freeze(ref_model)
        elif not hasattr(model, "disable_lora"):
            raise ValueError("KTO needs a reference model: pass ref_model, or train a LoRA policy "
                             "(its adapters are disabled to score the reference)")
        self.loss_fn = registry.get("unpaired", kto_args.loss_type)
        if args.pipeline_parallel_degree > 1:
            self._bind_pipeline(model)
        if kto_args.uses_kl and args.per_device_train_batch_size < 2:
            raise ValueError(
                f"per_device_train_batch_size must be >= 2 for loss_type '{kto_args.loss_type}': the KL reference "
                f"point pairs each prompt with another example's completion in the batch (got {args.per_device_train_batch_size})"
            )

    def _rows(self, inputs: Dict[str, paddle.Tensor], with_kl: bool):
        """input_ids, attention_mask, labels of the completions, stacked over the KL completions when asked."""
        keys = ("input_ids", "attention_mask", "labels")
        if not with_kl:
            return [inputs[k] for k in keys]
        length = max(inputs["input_ids"].shape[1], inputs["kl_input_ids"].shape[1])
        return [
            paddle.concat([_pad_cols(inputs[k], length, v), _pad_cols(inputs[f"kl_{k}"], length, v)], axis=0)
            for k, v in zip(keys, (self.pad_token_id, 0, IGNORE_INDEX))
        ]

    def _reference_scores(self, inputs: Dict[str, paddle.Tensor], with_kl: bool):
        """Reference log-probs of the completions (and of the KL completions), one forward of B or 2B rows."""
        rows = self._rows(inputs, with_kl)
        logps = reference_logps(self.ref_model if self.ref_model is not None else self.model, *rows)
        n = inputs["input_ids"].shape[0]
        return logps[:n], (logps[n:] if with_kl else None)

    # ---------------------------------------------------------------------------------- pipeline parallel
    def _bind_pipeline(self, model) -> None:
        """Under pipeline parallelism the policy is a PipelineLayer: each micro-batch's completions and KL
        completions go through it as 2B rows, the reference (pipeline stages too) scores them first, and the
        last stage computes the loss from the rows' log-probs."""
        if self.ref_model is None:
            raise ValueError("kto with pipeline_parallel_degree > 1 needs a reference model (no LoRA policy)")
        model.alignment_criterion.fn = self._pipeline_loss

    def _pipeline_micro_batch(self, inputs: Dict[str, paddle.Tensor]) -> Dict[str, paddle.Tensor]:
        uses_kl = self.kto_args.uses_kl
        ref_logps, kl_ref_logps = self._reference_scores(inputs, uses_kl)
        input_ids, attention_mask, labels = self._rows(inputs, uses_kl)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "position_ids": position_ids_from_mask(attention_mask), "kto_labels": inputs["kto_labels"],
                "ref_logps": ref_logps, "kl_ref_logps": kl_ref_logps if uses_kl else paddle.zeros_like(ref_logps)}

    def _pipeline_inputs(self, batches):
        from alignment.models.pipeline import pipeline_inputs

        batches = batches if isinstance(batches, (list, tuple)) else [batches]
        return pipeline_inputs([self._pipeline_micro_batch(self._prepare_inputs(b)) for b in batches],
                               first=("input_ids", "attention_mask", "position_ids"),
                               labels=("labels", "kto_labels", "ref_logps", "kl_ref_logps"),
                               pad_values={"input_ids": self.pad_token_id})

    def _pipeline_loss(self, logits, labels):
        row_labels, kto_labels, ref_logps, kl_ref_logps = labels
        out = logits_completion_logps(logits, row_labels)
        n = kto_labels.shape[0]
        kl_logps = out.logps[n:].detach() if self.kto_args.uses_kl else None
        if kl_logps is not None:
            strategy = ParallelStrategy.current()
            kl_logps, kl_ref_logps = strategy.all_gather(kl_logps), strategy.all_gather(kl_ref_logps)
        a = self.kto_args
        loss, _ = self.loss_fn(out.logps[:n], ref_logps, kto_labels, kl_logps,
                               kl_ref_logps if a.uses_kl else None, beta=a.beta,
                               desirable_weight=a.desirable_weight, undesirable_weight=a.undesirable_weight)
        return loss

    def training_pipeline_step(self, model, inputs):
        model._prepare_pipeline_inputs_func = self._pipeline_inputs  # the reference scores each cycle
        return super().training_pipeline_step(model, inputs)

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        if self.args.pipeline_parallel_degree > 1:
            model._prepare_pipeline_inputs_func = self._pipeline_inputs
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def compute_loss(self, model, inputs, return_outputs: bool = False):
        a = self.kto_args
        policy = completion_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        kl_logps: Optional[paddle.Tensor] = None
        if a.uses_kl:
            with paddle.no_grad():
                kl_logps = completion_logps(model, inputs["kl_input_ids"], inputs["kl_attention_mask"], inputs["kl_labels"]).logps
        ref_logps, kl_ref_logps = self._reference_scores(inputs, a.uses_kl)
        if kl_logps is not None:  # the KL reference point z0 is a mean over every data-carrying rank's batch
            strategy = ParallelStrategy.current()
            kl_logps, kl_ref_logps = strategy.all_gather(kl_logps), strategy.all_gather(kl_ref_logps)
        loss, metrics = self.loss_fn(
            policy.logps, ref_logps, inputs["kto_labels"], kl_logps, kl_ref_logps,
            beta=a.beta, desirable_weight=a.desirable_weight, undesirable_weight=a.undesirable_weight,
        )
        self.store_metrics(metrics, "train" if model.training else "eval")
        return (loss, metrics) if return_outputs else loss


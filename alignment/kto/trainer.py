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
from alignment.training.logps import completion_logps, reference_context
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
        if kto_args.uses_kl and args.per_device_train_batch_size < 2:
            raise ValueError(
                f"per_device_train_batch_size must be >= 2 for loss_type '{kto_args.loss_type}': the KL reference "
                f"point pairs each prompt with another example's completion in the batch (got {args.per_device_train_batch_size})"
            )

    def _reference_scores(self, inputs: Dict[str, paddle.Tensor], with_kl: bool):
        """Reference log-probs of the completions (and of the KL completions), one forward of B or 2B rows."""
        keys = ("input_ids", "attention_mask", "labels")
        rows = [inputs[k] for k in keys]
        if with_kl:
            length = max(inputs["input_ids"].shape[1], inputs["kl_input_ids"].shape[1])
            rows = [
                paddle.concat([_pad_cols(inputs[k], length, v), _pad_cols(inputs[f"kl_{k}"], length, v)], axis=0)
                for k, v in zip(keys, (self.pad_token_id, 0, IGNORE_INDEX))
            ]
        ref = self.ref_model if self.ref_model is not None else self.model
        with reference_context(ref):
            out = completion_logps(ref, *rows)
        n = inputs["input_ids"].shape[0]
        return out.logps[:n].detach(), (out.logps[n:].detach() if with_kl else None)

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


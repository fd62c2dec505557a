"""DPOTrainer: a thin PaddleNLP Trainer whose ``compute_loss`` calls ``preference_loss``.

One step: chosen and rejected go through one 2B-row policy forward (``policy_pair_logps`` of
``alignment.training.logps``), the reference log-probs come from the batch (precomputed), a frozen
reference model, or the LoRA policy with adapters disabled, and
``alignment.algorithms.preference.preference_loss`` turns them into the loss and the metrics
(rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected,
nll, loss/<name>) that ``MetricsLoggingMixin`` logs.

The reference model is in eval mode, its parameters have ``stop_gradient=True`` and it is an
attribute of the trainer, not a sub-layer of the policy, so the optimizer never sees it.
"""

from __future__ import annotations

import copy
import gc
import inspect
from typing import Any, Dict, List, Tuple

import numpy as np
import paddle
from paddle.io import DataLoader, Dataset
from paddlenlp.trainer import Trainer

from alignment.algorithms import registry
from alignment.algorithms.preference import PairLogps, RunningMoments, preference_loss
from alignment.dpo.config import DPOArguments
from alignment.models.loading import freeze
from alignment.training.logps import (
    PairForward,
    concat_pair,
    logits_completion_logps,
    policy_pair_logps,
    position_ids_from_mask,
    reference_pair_logps,
    split_pair,
)
from alignment.training.sampler import GlobalBatchMixin
from alignment.utils.trainer import LossOnlyEvaluationMixin, MetricsLoggingMixin

__all__ = ["DPOTrainer", "WithReferenceLogps", "ReferenceLogpsCollator"]

REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


class WithReferenceLogps(Dataset):
    """A dataset whose items also carry precomputed reference log-probs (``REF_KEYS``)."""

    def __init__(self, base, ref_chosen: np.ndarray, ref_rejected: np.ndarray):
        if len(ref_chosen) != len(base) or len(ref_rejected) != len(base):
            raise ValueError(f"{len(ref_chosen)} reference log-probs for a dataset of {len(base)} examples")
        self.base, self.ref_chosen, self.ref_rejected = base, ref_chosen, ref_rejected

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        item = dict(self.base[idx])
        item[REF_KEYS[0]] = float(self.ref_chosen[idx])
        item[REF_KEYS[1]] = float(self.ref_rejected[idx])
        return item

    def __getattr__(self, name: str):  # e.g. get_collator, split_train_test of the wrapped dataset
        if name in ("base", "ref_chosen", "ref_rejected"):
            raise AttributeError(name)
        return getattr(self.base, name)


class ReferenceLogpsCollator:
    """Wraps a preference collator: strips ``REF_KEYS`` from items and adds them back as (B,) tensors."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, items: List[Dict[str, Any]]):
        has_ref = all(REF_KEYS[0] in item for item in items)
        refs = {k: [item[k] for item in items] for k in REF_KEYS} if has_ref else None
        batch = self.collator([{k: v for k, v in item.items() if k not in REF_KEYS} for item in items])
        if refs is not None:
            for k, values in refs.items():
                batch[k] = paddle.to_tensor(np.asarray(values, dtype="float32"))
        return batch


def _pair_rows(batch: Dict[str, Any], pad_token_id: int = 0) -> Dict[str, Any]:
    """A preference batch as 2B rows (chosen over rejected) with position ids, for a pipeline model."""
    input_ids, attention_mask, labels = concat_pair(batch, pad_token_id)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
           "position_ids": position_ids_from_mask(attention_mask)}
    for key in REF_KEYS:
        out[key] = batch.get(key)
    return out


class SyncedRunningMoments(RunningMoments):
    """The BCO baseline fed with the mean over every data-carrying rank, so all ranks keep one baseline."""

    def update(self, value: float, count: int = 1) -> None:
        from alignment.parallel import ParallelStrategy

        super().update(ParallelStrategy.current().all_reduce_mean({"value": float(value)})["value"], count)


class DPOTrainer(GlobalBatchMixin, LossOnlyEvaluationMixin, MetricsLoggingMixin, Trainer):
    """``DPOTrainer(model, args, dpo_args=..., ref_model=..., train_dataset=..., data_collator=...)``.

    ``ref_model=None`` with a reference-needing loss uses the policy itself with LoRA adapters
    disabled (it must then be a ``paddlenlp.peft.LoRAModel``).
    """

    def __init__(self, model, args, *, dpo_args: DPOArguments, ref_model=None, pad_token_id: int = 0, **kwargs):
        if kwargs.get("data_collator") is not None:
            kwargs["data_collator"] = ReferenceLogpsCollator(kwargs["data_collator"])
        super().__init__(model=model, args=args, **kwargs)
        self.dpo_args = dpo_args
        self.pad_token_id = pad_token_id
        self.ref_model = ref_model if dpo_args.needs_reference else None
        if self.ref_model is not None:
            freeze(self.ref_model)
        elif dpo_args.needs_reference and not hasattr(model, "disable_lora"):
            raise ValueError("this loss needs a reference model: pass ref_model, or train a LoRA policy "
                             "(its adapters are disabled to score the reference)")
        self.bco_baseline = SyncedRunningMoments() if "bco_pair" in dpo_args.loss_type else None
        self.pipeline = args.pipeline_parallel_degree > 1
        if self.pipeline:
            self._bind_pipeline(model)
        if (dpo_args.precompute_ref_log_probs or self.pipeline) and dpo_args.needs_reference:
            self.precompute_reference()

    # ----------------------------------------------------------------------------------------- reference
    def _reference_model(self):
        return self.ref_model if self.ref_model is not None else self.model

    def reference_logps(self, inputs: Dict[str, paddle.Tensor]) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """(B,) reference log-probs of chosen and rejected: from the batch when precomputed, else a forward."""
        if REF_KEYS[0] in inputs:
            return inputs[REF_KEYS[0]], inputs[REF_KEYS[1]]
        ref = reference_pair_logps(self._reference_model(), inputs, pad_token_id=self.pad_token_id)
        return ref.chosen, ref.rejected

    def _score_dataset(self, dataset) -> Tuple[np.ndarray, np.ndarray]:
        loader = DataLoader(
            dataset, batch_size=self.args.per_device_eval_batch_size, shuffle=False,
            collate_fn=self.data_collator.collator, num_workers=0,
        )
        chosen, rejected = [], []
        for batch in loader:
            batch = self._prepare_inputs(batch)
            ref = reference_pair_logps(self._reference_model(), batch, pad_token_id=self.pad_token_id)
            chosen.append(ref.chosen.numpy())
            rejected.append(ref.rejected.numpy())
        return np.concatenate(chosen), np.concatenate(rejected)

    def precompute_reference(self) -> None:
        """One pass of the reference over the train (and eval) data; then the reference model is released."""
        if self.train_dataset is not None:
            self.train_dataset = WithReferenceLogps(self.train_dataset, *self._score_dataset(self.train_dataset))
        if self.eval_dataset is not None:
            self.eval_dataset = WithReferenceLogps(self.eval_dataset, *self._score_dataset(self.eval_dataset))
        if self.ref_model is not None:
            self.ref_model = None
            gc.collect()
            if paddle.device.is_compiled_with_cuda():
                paddle.device.cuda.empty_cache()

    # ---------------------------------------------------------------------------------------------- loss
    def loss_hparams(self, training: bool = True) -> Dict[str, Any]:
        """The hyperparameters that the chosen losses accept (``preference_loss`` rejects the others).

        Evaluation scores with a copy of the BCO baseline so that eval batches never move it.
        """
        a = self.dpo_args
        baseline = self.bco_baseline if training else copy.deepcopy(self.bco_baseline)
        candidates = dict(
            beta=a.beta, label_smoothing=a.label_smoothing, discopop_tau=a.discopop_tau,
            dpop_lambda=a.dpop_lambda, simpo_gamma=a.simpo_gamma, bco_baseline=baseline,
        )
        accepted = set()
        for name in a.loss_type:
            fn = registry.get("preference", name)
            accepted |= {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}
        return {k: v for k, v in candidates.items() if k in accepted}

    def pair_logps(self, model, inputs: Dict[str, paddle.Tensor]) -> PairLogps:
        """Policy (and reference) log-probs of one preference batch, as the pure loss functions take them."""
        policy: PairForward = policy_pair_logps(model, inputs, ld_alpha=self.dpo_args.ld_alpha, pad_token_id=self.pad_token_id)
        ref_chosen = ref_rejected = None
        if self.dpo_args.needs_reference:
            ref_chosen, ref_rejected = self.reference_logps(inputs)
        return PairLogps(
            chosen=policy.chosen, rejected=policy.rejected, ref_chosen=ref_chosen, ref_rejected=ref_rejected,
            chosen_lengths=policy.chosen_lengths, rejected_lengths=policy.rejected_lengths,
            chosen_nll=policy.chosen_nll,
        )

    def loss_from_logps(self, logps: PairLogps, training: bool):
        a = self.dpo_args
        return preference_loss(
            a.loss_type, logps, a.loss_weights, reference_free=a.reference_free, rpo_alpha=a.rpo_alpha,
            cpo_alpha=a.cpo_alpha, **self.loss_hparams(training),
        )

    def compute_loss(self, model, inputs, return_outputs: bool = False):
        loss, metrics = self.loss_from_logps(self.pair_logps(model, inputs), model.training)
        self.store_metrics(metrics, "train" if model.training else "eval")
        return (loss, metrics) if return_outputs else loss

    # ---------------------------------------------------------------------------------- pipeline parallel
    def _bind_pipeline(self, model) -> None:
        """The last pipeline stage computes ``loss_from_logps`` from the policy logits of 2B pair rows.

        Inputs: chosen over rejected (``concat_pair``) with position ids; labels: the pair labels and the
        precomputed reference log-probs (the reference is scored once, before training).
        """
        from functools import partial

        from alignment.models.pipeline import pipeline_inputs

        model.alignment_criterion.fn = self._pipeline_loss
        model._prepare_pipeline_inputs_func = partial(
            pipeline_inputs, first=("input_ids", "attention_mask", "position_ids"),
            labels=("labels", *REF_KEYS), transform=partial(_pair_rows, pad_token_id=self.pad_token_id),
            pad_values={"input_ids": self.pad_token_id})

    def _pipeline_loss(self, logits, labels):
        pair_labels, ref_chosen, ref_rejected = labels
        policy = split_pair(logits_completion_logps(logits, pair_labels), self.dpo_args.ld_alpha)
        needs_ref = self.dpo_args.needs_reference
        logps = PairLogps(
            chosen=policy.chosen, rejected=policy.rejected, ref_chosen=ref_chosen if needs_ref else None,
            ref_rejected=ref_rejected if needs_ref else None, chosen_lengths=policy.chosen_lengths,
            rejected_lengths=policy.rejected_lengths, chosen_nll=policy.chosen_nll,
        )
        loss, _ = self.loss_from_logps(logps, training=not logits.stop_gradient)
        return loss


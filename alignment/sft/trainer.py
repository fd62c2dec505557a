"""SFTTrainer: a thin PaddleNLP Trainer whose loss is the token-mean NLL of the answer tokens.

One step: ``model(input_ids, attention_mask, position_ids)`` -> logits (B, L, V); the labels of a
``SupervisedBatch`` are NOT shifted (token t's label sits at t), so position t-1 predicts label t; prompt and
padding positions carry IGNORE_INDEX and do not count. The mean is over the answer tokens of the whole
data-parallel micro-batch (each rank divides its token sum by the global token count / world size), so N
processes with per-device batch b train exactly like one process with batch N*b.

The batches themselves are independent of the world size too: ``GlobalBatchSampler``
(alignment/training/sampler.py, shared with the reward-model trainer) cuts one permutation per epoch into
global batches of b * world_size, rank r taking the r-th slice of each.
"""

from __future__ import annotations

from typing import Dict

import paddle
from paddlenlp.trainer import Trainer

from alignment.algorithms.utils import gather_logps
from alignment.data.batches import IGNORE_INDEX
from alignment.training.sampler import GlobalBatchMixin
from alignment.utils.trainer import MetricsLoggingMixin

__all__ = ["SFTTrainer", "answer_nll"]


def _global_sum(value: paddle.Tensor) -> paddle.Tensor:
    from alignment.parallel import ParallelStrategy

    return ParallelStrategy.current().all_reduce_sum(value)  # over the data-carrying ranks only


def answer_nll(logits: paddle.Tensor, labels: paddle.Tensor, world_size: int = 1):
    """Token-mean NLL of the labelled tokens, normalised by the data-parallel token count.

    logits (B, L, V), labels (B, L) unshifted with IGNORE_INDEX outside the answers. Returns
    (loss, local token sum of the NLL, global token count). With ``world_size`` N the local loss is
    sum_local / (count_global / N), whose mean over ranks is sum_global / count_global. Under tensor
    parallelism ``logits`` hold this rank's vocabulary slice (B, L, V / tp) and the NLL is computed
    vocabulary-parallel (``gather_logps``): the full logits are never gathered.
    """
    target = labels[:, 1:]
    mask = (target != IGNORE_INDEX).astype("float32")
    nll = -gather_logps(logits[:, :-1], target)
    total = (nll * mask).sum()
    count = mask.sum().detach()
    if world_size > 1:
        count = _global_sum(count)
    loss = total * float(world_size) / paddle.clip(count, min=1.0)
    return loss, total, count


class SFTTrainer(GlobalBatchMixin, MetricsLoggingMixin, Trainer):
    """``SFTTrainer(model, args, train_dataset=ds, eval_dataset=..., data_collator=ds.get_collator(), ...)``.

    Logs ``loss`` (train), ``eval_loss``, and ``tokens`` (answer tokens per micro-batch, all ranks).
    """

    def train(self, *args, **kwargs):
        with paddle.utils.unique_name.guard():  # optimizer-state names match a resumed run, even in one process
            return super().train(*args, **kwargs)

    def compute_loss(self, model, inputs: Dict[str, paddle.Tensor], return_outputs: bool = False):
        world = max(int(self.args.dataset_world_size), 1)
        if not return_outputs:  # log-probs through the chunked LM head where it applies (no (B, L, V) logits)
            from alignment.training.logps import completion_logps

            scored = completion_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            count = scored.mask.sum().detach()
            if world > 1:
                count = _global_sum(count)
            if model.training:
                self.store_metrics({"tokens": float(count)}, "train")
            return -scored.token_logps.sum() * float(world) / paddle.clip(count, min=1.0)
        out = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            position_ids=inputs.get("position_ids"),
            return_dict=True,
        )
        logits = out.logits if hasattr(out, "logits") else out[0]
        loss, _, count = answer_nll(logits, inputs["labels"], world_size=world)
        if model.training:
            self.store_metrics({"tokens": float(count)}, "train")
        return (loss, {"logits": logits}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        if self.args.pipeline_parallel_degree > 1:  # the last stage computes the loss (eval_batch)
            loss, _, _ = super().prediction_step(model, inputs, True, ignore_keys)
            return loss, None, None
        inputs = self._prepare_inputs(inputs)
        with paddle.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

"""GKDTrainer: generalised knowledge distillation (Agarwal et al. 2024, arXiv:2306.13649) as a thin Trainer.

Each training step picks its completions: with probability ``lmbda`` the student samples them from the
batch's prompts (on-policy), else with ``seq_kd`` the teacher samples them, else the dataset's are used.
The student and the frozen teacher then score the same sequences and
``alignment.algorithms.distill.generalized_jsd`` (registry kind "distill") compares their next-token
distributions on the completion tokens (T = 1 in the loss; ``temperature`` is the sampling one).
``sft_alpha`` adds the student's token-mean NLL on the step's completions (ms-swift). Evaluation uses
the dataset completions, so ``eval_loss`` is the held-out student-teacher divergence.

Outside pipeline parallelism, when the student and an ordinary (non-pipeline) teacher both qualify for the
chunked LM head (``alignment.training.logps.chunked_head``: ``use_fusemt``, Llama/Qwen2, float32, no tensor
parallelism) and share the vocabulary, the loss runs their decoders and
``alignment.ops.linear_generalized_jsd`` on the completion rows: neither model's (N, L, V) logits are built,
and the loss (training and ``eval_loss``) equals the logits path.
"""

from __future__ import annotations

import random
from typing import List

import numpy as np
import paddle
from paddlenlp.trainer import Trainer

from alignment.algorithms import registry
from alignment.data.batches import IGNORE_INDEX, SupervisedBatch
from alignment.gkd.config import GKDArguments
from alignment.models.loading import freeze
from alignment.training.logps import chunked_head, model_logits, position_ids_from_mask, resident, token_logps
from alignment.parallel import ParallelStrategy
from alignment.training.sampler import GlobalBatchMixin
from alignment.utils.trainer import LossOnlyEvaluationMixin, MetricsLoggingMixin

__all__ = ["GKDTrainer", "split_prompts", "generate_completions"]


def split_prompts(batch: SupervisedBatch) -> List[np.ndarray]:
    """The prompt token ids of each row: the real tokens before the first supervised (label != -100) one."""
    ids, labels, mask = (batch[k].numpy() for k in ("input_ids", "labels", "attention_mask"))
    prompts = []
    for row_ids, row_labels, row_mask in zip(ids, labels, mask):
        supervised = np.nonzero(row_labels != IGNORE_INDEX)[0]
        end = int(supervised[0]) if len(supervised) else int(row_mask.sum())
        prompts.append(row_ids[:end][row_mask[:end] == 1])
    return prompts


def _right_padded(rows: List[np.ndarray], prompt_lens: List[int], pad_token_id: int) -> SupervisedBatch:
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_token_id, dtype="int64")
    mask = np.zeros((len(rows), length), dtype="int64")
    labels = np.full((len(rows), length), IGNORE_INDEX, dtype="int64")
    for i, (row, p) in enumerate(zip(rows, prompt_lens)):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        labels[i, p : len(row)] = row[p:]
    attention_mask = paddle.to_tensor(mask)
    return SupervisedBatch(
        input_ids=paddle.to_tensor(ids), labels=paddle.to_tensor(labels), attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    )


def generate_completions(
    model, batch: SupervisedBatch, *, max_new_tokens: int, temperature: float, pad_token_id: int, eos_token_id: int
) -> SupervisedBatch:
    """Replace each row's completion by a sample of ``model`` from its prompt (up to and including EOS)."""
    from alignment.rollout.generation import GenerationConfig, generate

    prompts = split_prompts(batch)
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_token_id, dtype="int64")
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding for generation
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    config = GenerationConfig(
        eos_token_ids=(eos_token_id,), pad_token_id=pad_token_id, max_new_tokens=max_new_tokens,
        temperature=temperature, do_sample=True,
    )
    out = generate(model, paddle.to_tensor(ids), paddle.to_tensor(mask), config)
    responses, response_mask = out.responses.numpy(), out.response_mask.numpy()
    rows = [np.concatenate([p, r[m == 1]]).astype("int64") for p, r, m in zip(prompts, responses, response_mask)]
    return _right_padded(rows, [len(p) for p in prompts], pad_token_id)


class GKDTrainer(GlobalBatchMixin, LossOnlyEvaluationMixin, MetricsLoggingMixin, Trainer):
    """``GKDTrainer(student, args, gkd_args=..., teacher_model=..., pad_token_id=..., eos_token_id=..., ...)``."""

    def __init__(self, model, args, *, gkd_args: GKDArguments, teacher_model, pad_token_id: int, eos_token_id: int, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        self.gkd_args = gkd_args
        self.teacher_model = teacher_model
        freeze(teacher_model)
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self.jsd = registry.get("distill", "generalized_jsd")
        self._rng = random.Random(args.seed)
        self._source = "dataset"
        self._student_copy = None
        if args.pipeline_parallel_degree > 1:
            self._bind_pipeline(model)
        # sampling draws from paddle's default generator; building models used it a layout-dependent number
        # of times (split weights, a generation copy are initialised before loading), so restart it here
        paddle.seed(int(args.seed) + 1000003 * ParallelStrategy.current().data_parallel_rank)

    def choose_completions(self, model, inputs: SupervisedBatch) -> SupervisedBatch:
        """On-policy with probability lmbda, else teacher samples (seq_kd), else the dataset's."""
        a = self.gkd_args
        gen = dict(max_new_tokens=a.max_completion_length, temperature=a.temperature,
                   pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id)
        if self._rng.random() < a.lmbda:
            self._source = "student"
            if self._student_copy is not None:  # pipeline parallel: sample from the refreshed copy
                if self._copy_stale:
                    self._student_copy.refresh()
                    self._copy_stale = False
                model = self._student_copy.model
            return generate_completions(model, inputs, **gen)
        if a.seq_kd:
            self._source = "teacher"
            return generate_completions(self.teacher_model, inputs, **gen)
        self._source = "dataset"
        return inputs

    def training_step(self, model, inputs, step_control=0):
        inputs = self.choose_completions(self.model, self._prepare_inputs(inputs))  # unwrapped for generate
        return super().training_step(model, inputs, step_control)

    # ---------------------------------------------------------------------------------- pipeline parallel
    def _bind_pipeline(self, model) -> None:
        """Under pipeline parallelism the student is a PipelineLayer whose last stage computes the JSD (+ NLL)
        against teacher logits computed for each micro-batch by the teacher (pipeline stages too, whose last
        stage is the student's: the logits never move; an ordinary model with ``seq_kd``);
        on-policy samples come from a tensor-parallel generation copy refreshed after every update."""
        from alignment.models.pipeline import generation_copy

        model.alignment_criterion.fn = self._pipeline_loss
        self._student_copy = generation_copy(model, "tensor_parallel", score=False)
        self._copy_stale = True

    def _pipeline_inputs(self, batches):
        from alignment.models.pipeline import pipeline_inputs

        batches = batches if isinstance(batches, (list, tuple)) else [batches]
        micro = []
        for b in batches:
            b = dict(b)
            b["position_ids"] = position_ids_from_mask(b["attention_mask"])
            if hasattr(self.teacher_model, "map_micro_batches"):  # teacher stages: its logits stay on the last
                b["teacher_logits"] = self.teacher_model.map_micro_batches(  # stage, where the student's loss is
                    lambda logits, rows: logits, b["input_ids"], b["attention_mask"], b["position_ids"],
                    micro_batch_size=int(b["input_ids"].shape[0]), broadcast=False)
            else:
                with paddle.no_grad(), resident(self.teacher_model):
                    b["teacher_logits"] = model_logits(self.teacher_model, b["input_ids"], b["attention_mask"])
            micro.append(b)
        return pipeline_inputs(micro, first=("input_ids", "attention_mask", "position_ids"),
                               labels=("labels", "teacher_logits"), pad_values={"input_ids": self.pad_token_id})

    def _pipeline_loss(self, student_logits, labels):
        labels, teacher_logits = labels
        loss, _ = self._distill_loss(student_logits, teacher_logits, labels)
        return loss

    def training_pipeline_step(self, model, inputs):
        model._prepare_pipeline_inputs_func = self._pipeline_inputs
        loss = super().training_pipeline_step(model, inputs)
        if not self._pp_data_buffer:  # the optimizer stepped: the generation copy is out of date
            self._copy_stale = True
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        if self.args.pipeline_parallel_degree > 1:
            model._prepare_pipeline_inputs_func = self._pipeline_inputs
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def _distill_loss(self, student_logits, teacher_logits, labels):
        """JSD (+ sft_alpha x NLL) of next-token distributions on the completion tokens; (loss, metrics)."""
        a = self.gkd_args
        if student_logits.shape[-1] != teacher_logits.shape[-1]:
            raise ValueError(f"student vocabulary ({student_logits.shape[-1]}) and teacher vocabulary "
                             f"({teacher_logits.shape[-1]}) differ; GKD needs one tokenizer")
        mask = (labels[:, 1:] != IGNORE_INDEX).astype("float32")
        loss, metrics = self.jsd(student_logits[:, :-1], teacher_logits[:, :-1], mask, beta=a.beta, temperature=1.0)
        metrics = dict(metrics)
        if a.sft_alpha > 0:
            per_token = token_logps(student_logits[:, :-1], labels[:, 1:]) * mask
            nll = -per_token.sum() / paddle.clip(mask.sum(), min=1.0)
            loss = loss + a.sft_alpha * nll
            metrics["nll"] = nll.detach()
        return loss, metrics

    def _chunked_heads(self, model):
        """(student, teacher) ``ChunkedHead`` where the chunked loss applies, else None."""
        from alignment.algorithms.distill import generalized_jsd

        if self.jsd is not generalized_jsd or self.args.pipeline_parallel_degree > 1 \
                or hasattr(self.teacher_model, "map_micro_batches"):
            return None
        student, teacher = chunked_head(model), chunked_head(self.teacher_model)
        if student is None or teacher is None or student.vocab_size != teacher.vocab_size:
            return None  # (different vocabularies: the logits path raises its error)
        return student, teacher

    def _chunked_distill_loss(self, heads, ids, attention_mask, labels):
        """``_distill_loss`` from the decoders' hidden states through ``linear_generalized_jsd``: only the
        completion rows meet the heads, a chunk at a time, and the sft_alpha NLL comes from the same pass."""
        from alignment.ops import linear_jsd

        student, teacher = heads
        a = self.gkd_args
        hidden = student.hidden(ids, attention_mask)
        with paddle.no_grad(), resident(self.teacher_model):
            teacher_hidden = teacher.hidden(ids, attention_mask)
        n, length = labels.shape
        targets = labels[:, 1:].reshape([-1])
        valid = paddle.nonzero(targets != IGNORE_INDEX).reshape([-1])
        count = max(int(valid.shape[0]), 1)
        index = (valid // (length - 1)) * length + valid % (length - 1)  # hidden row i*L + t scores token t + 1

        def rows(h):  # gathered without slicing h[:, :-1]
            return paddle.index_select(h.reshape([n * length, h.shape[-1]]), index)

        weights = paddle.full([valid.shape[0]], 1.0 / count, dtype="float32")
        nll_args = {}
        if a.sft_alpha > 0:
            nll_args = dict(labels=paddle.index_select(targets, valid),
                            label_weights=paddle.full([valid.shape[0]], a.sft_alpha / count, dtype="float32"))
        out = linear_jsd.linear_generalized_jsd(
            rows(hidden), student.weight, rows(teacher_hidden), teacher.weight, weights, beta=a.beta,
            temperature=1.0, student_transpose_y=student.transpose_y, teacher_transpose_y=teacher.transpose_y,
            **nll_args)
        metrics = {"jsd": out.divergence.sum() / count}
        if a.sft_alpha > 0:
            metrics["nll"] = -out.logps.sum() / count
        return out.loss, metrics

    def compute_loss(self, model, inputs, return_outputs: bool = False):
        ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        heads = self._chunked_heads(model)
        if heads is not None:
            loss, metrics = self._chunked_distill_loss(heads, ids, attention_mask, labels)
        else:
            student_logits = model_logits(model, ids, attention_mask)
            with paddle.no_grad(), resident(self.teacher_model):
                teacher_logits = model_logits(self.teacher_model, ids, attention_mask)
            loss, metrics = self._distill_loss(student_logits, teacher_logits, labels)
        mask = (labels[:, 1:] != IGNORE_INDEX).astype("float32")
        if model.training:
            metrics["on_policy"] = float(self._source == "student")
            metrics["completion_length"] = float(mask.sum(axis=-1).mean())
        self.store_metrics(metrics, "train" if model.training else "eval")
        return (loss, metrics) if return_outputs else loss


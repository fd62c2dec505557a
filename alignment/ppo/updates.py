"""The update phase: ``update_iters`` passes of actor (+ptx) and critic mini-batch steps over one Experience.

Per micro-batch of ``per_device_train_batch_size`` rows (in rollout order, groups contiguous), first all
actor passes (phase ``update_actor``), then all critic passes (``update_critic``; the two are independent, and
the offload schedule keeps one model with its optimizer states resident at a time):
1. actor: current log-probs (same temperature as the rollout) -> registry "policy"[policy_loss] (ppo, gspo,
   cispo, sapo) x pg_loss_coeff (+ kl_loss_coeff x KL (kl_loss_estimator) to the reference, - entropy_coeff x
   entropy); per-token weights: TIS min(π_train / π_rollout, tis_cap) and the top_entropy_quantile mask; the
   aggregation is loss_agg_mode with the denominator of the loss_type preset (dr_grpo: max_dec_len per row;
   dapo: every token of the optimizer step over all ranks, ``_set_step_tokens``);
2. ptx (when a ptx iterator is given): ptx_coeff x token-mean NLL of one supervised micro-batch,
   accumulated into the same actor optimizer step (as PaddleNLP does);
3. critic (PPO): registry "value"["clipped"] clipped value loss; with a cost critic (PPO-Lagrangian) the same
   loss on the cost values / cost returns, right after the critic's passes (metrics ``cost_critic_*``).
Every ``gradient_accumulation_steps`` micro-batches each optimizer takes a step and its schedule advances.
Gradients are averaged over data-parallel ranks by the wrapped models during ``backward``.

Pipeline parallel: the actor and critic are ``PipelineParallel`` models whose last stage computes the same
losses (``actor_loss_from_logits`` / ``critic_loss_from_scores``) as their criterion; one ``train_batch``
per optimizer step takes the ``gradient_accumulation_steps`` micro-batches as a list (1F1B schedule), and
the last stage's metrics are broadcast over the pipeline group.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import paddle

from alignment.algorithms import registry
from alignment.algorithms.policy import kl_penalty_loss, token_entropy_bonus
from alignment.algorithms.shaping import high_entropy_mask, truncated_is_weights
from alignment.algorithms.utils import entropy_from_logits, gather_logps, masked_mean
from alignment.data.batches import IGNORE_INDEX, SupervisedBatch
from alignment.models.pipeline import cycle_inputs, pad_columns
from alignment.rollout import (
    Experience,
    chunked_response_logps,
    chunked_token_logps,
    logits_response_logps,
    make_position_ids,
    response_logps,
    response_values,
    scores_response_values,
)

__all__ = ["LossSettings", "PPOUpdater", "ptx_loss"]


@dataclass
class LossSettings:
    """Scalar hyperparameters of the update losses (copied from PPOArguments)."""

    temperature: float = 1.0
    pg_loss_coeff: float = 1.0
    clip_range_ratio: float = 0.2
    clip_range_ratio_low: Optional[float] = None
    clip_range_ratio_high: Optional[float] = None
    dual_clip: Optional[float] = None
    clip_range_value: float = 5.0
    clip_range_score: float = 50.0
    kl_loss_coeff: float = 0.0
    entropy_coeff: float = 0.0
    ptx_coeff: float = 0.0
    loss_agg_mode: str = "token-mean"
    policy_loss: str = "ppo"
    delta: Optional[float] = None
    kl_loss_estimator: str = "k3"
    top_entropy_quantile: float = 1.0
    tis_cap: Optional[float] = None
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    loss_normaliser: str = "local"  # local | max_dec_len | global (PPOArguments.loss_normaliser, from loss_type)
    max_dec_len: int = 512

    @classmethod
    def from_args(cls, args) -> "LossSettings":
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})


@dataclass
class _MicroBatch:
    """The fields of an ``Experience`` micro-batch that the losses read (pipeline labels)."""

    sequences: Optional[paddle.Tensor] = None
    response_mask: Optional[paddle.Tensor] = None
    old_logps: Optional[paddle.Tensor] = None
    advantages: Optional[paddle.Tensor] = None
    ref_logps: Optional[paddle.Tensor] = None
    values: Optional[paddle.Tensor] = None
    returns: Optional[paddle.Tensor] = None
    prompt_length: int = 0


def _cost_view(mb: Experience) -> Experience:
    """The micro-batch as the cost critic sees it: its values and returns are the cost ones."""
    return mb.replace(values=mb.cost_values, returns=mb.cost_returns)


def _prefixed(metrics: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return {prefix + k: v for k, v in metrics.items()} if prefix else metrics


def _criterion(model):
    from alignment.parallel import unwrap_model

    return unwrap_model(model).alignment_criterion


def _advance_schedule(optimizer) -> None:
    lr = optimizer._learning_rate
    if isinstance(lr, paddle.optimizer.lr.LRScheduler):
        lr.step()


def ptx_loss(model: paddle.nn.Layer, batch: SupervisedBatch) -> paddle.Tensor:
    """Token-mean NLL of the supervised labels (labels unshifted, IGNORE_INDEX outside the answer).

    Through the chunked LM head where it applies (``alignment.rollout.chunked_token_logps``, arXiv
    2410.10989: only the answer rows are multiplied by the head, no (B, L, V) logits), else the logits.
    """
    targets = batch["labels"][:, 1:]  # IGNORE_INDEX (< 0) rows are skipped by the chunked head
    per_token = chunked_token_logps(model, batch["input_ids"], batch["attention_mask"], batch.get("position_ids"),
                                    targets)
    if per_token is not None:
        return -masked_mean(per_token, (targets != IGNORE_INDEX).astype("float32"))
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch.get("position_ids"),
        return_dict=True,
    )
    return ptx_nll_from_logits(out.logits if hasattr(out, "logits") else out[0], batch["labels"])


def ptx_nll_from_logits(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """``ptx_loss`` from logits (B, L, V) already computed (a pipeline's last stage); labels (B, L) unshifted."""
    labels = labels[:, 1:]
    mask = (labels != IGNORE_INDEX).astype("float32")
    return -masked_mean(gather_logps(logits[:, :-1], labels), mask)





def _collect(sums: Dict[str, List[float]], metrics: Dict[str, Any]) -> None:
    for key, v in metrics.items():
        sums[key].append(float(v.astype("float32").mean()) if isinstance(v, paddle.Tensor) else float(v))


def _flat(metrics: Dict[str, paddle.Tensor]) -> Dict[str, paddle.Tensor]:
    """'actor/clipfrac' -> 'actor_clipfrac' (flat names for metrics.jsonl; VisualDL adds its own prefix)."""
    return {k.replace("/", "_"): v for k, v in metrics.items()}


class PPOUpdater:
    """Holds the trainable models and their optimizers/schedules; ``update(exp)`` runs the whole update phase."""

    def __init__(
        self,
        actor: paddle.nn.Layer,
        actor_optimizer: paddle.optimizer.Optimizer,
        *,
        critic: Optional[paddle.nn.Layer] = None,
        critic_optimizer: Optional[paddle.optimizer.Optimizer] = None,
        settings: LossSettings,
        micro_batch_size: int,
        gradient_accumulation_steps: int = 1,
        update_iters: int = 1,
        strategy=None,
        cost_critic: Optional[paddle.nn.Layer] = None,
        cost_critic_optimizer: Optional[paddle.optimizer.Optimizer] = None,
    ):
        if (critic is None) != (critic_optimizer is None) or (cost_critic is None) != (cost_critic_optimizer is None):
            raise ValueError("PPOUpdater: give each critic together with its optimizer")
        self.cost_critic, self.cost_critic_optimizer = cost_critic, cost_critic_optimizer
        self._pp_prefix = ""  # pipeline parallel: "cost_" while the cost critic trains
        self.actor, self.actor_optimizer = actor, actor_optimizer
        self.critic, self.critic_optimizer = critic, critic_optimizer
        self.s = settings
        self.micro_batch_size = micro_batch_size
        self.gas = gradient_accumulation_steps
        self.update_iters = update_iters
        self.policy_fn = registry.get("policy", settings.policy_loss)
        self._step_tokens: Optional[float] = None  # loss_type dapo: tokens of the optimizer step / (world x gas)
        self.value_fn = registry.get("value", "clipped") if critic is not None or cost_critic is not None else None
        self.strategy = strategy
        self.phase_hook: Callable[[str], None] = lambda phase: None  # the trainer's offload schedule
        from alignment.training.precision import MixedPrecision

        self.precision = MixedPrecision()  # the trainer's bf16 / fp16 (auto_cast forwards, fp16 GradScalers)
        self.pipeline = strategy is not None and strategy.pipeline_parallel_degree > 1
        if self.pipeline:
            self._pp_metrics: List[Dict[str, float]] = []
            self._prompt_length = 0
            self._ptx_in_pipeline = False
            _criterion(actor).fn = self._pipeline_actor_loss
            if critic is not None:
                _criterion(critic).fn = self._pipeline_critic_loss
            if cost_critic is not None:
                _criterion(cost_critic).fn = self._pipeline_critic_loss

    # ------------------------------------------------------------------ losses
    def _needs_entropy(self) -> bool:
        return self.s.entropy_coeff > 0 or self.s.top_entropy_quantile < 1.0

    def actor_loss(self, mb: Experience):
        """Actor loss and metrics of one micro-batch. Through the chunked LM head where it applies
        (``chunked_response_logps``, arXiv 2410.10989: the response rows' log-probs and entropies, chunk by
        chunk, no (N, T, V) logits nor their gradient), else through the logits (``actor_loss_from_logits``)."""
        with self.precision.autocast():  # the forward only: log-probs and the loss are float32
            scored = chunked_response_logps(self.actor, mb.sequences, mb.attention_mask, mb.position_ids,
                                            mb.prompt_length, mb.response_mask, temperature=self.s.temperature,
                                            with_entropy=self._needs_entropy())
            if scored is None:
                out = self.actor(input_ids=mb.sequences, attention_mask=mb.attention_mask,
                                 position_ids=mb.position_ids, return_dict=True)
        if scored is None:
            return self.actor_loss_from_logits(out.logits if hasattr(out, "logits") else out[0], mb)
        logps, entropy = scored if self._needs_entropy() else (scored, None)
        return self._actor_loss(logps, entropy, mb)

    def actor_loss_from_logits(self, full_logits: paddle.Tensor, mb):
        """Actor loss and metrics from the logits (N, T, V) of ``mb.sequences`` (any object with the fields)."""
        s = self.s
        logps, logits = logits_response_logps(
            full_logits, mb.sequences, mb.prompt_length, mb.response_mask, temperature=s.temperature,
            return_logits=True,
        )
        entropy = None
        if s.entropy_coeff > 0:  # the bonus differentiates through it
            entropy = entropy_from_logits(logits)
        elif s.top_entropy_quantile < 1.0:  # the token mask only
            with paddle.no_grad():
                entropy = entropy_from_logits(logits.detach())
        return self._actor_loss(logps, entropy, mb)

    def _actor_loss(self, logps: paddle.Tensor, entropy: Optional[paddle.Tensor], mb):
        """Policy loss (+ KL term, - entropy bonus) from the response log-probs (N, R) and, when the entropy
        bonus or the high-entropy mask needs it, the response entropies (N, R) of softmax(logits / T)."""
        s = self.s
        agg = self._aggregation()
        weights, extra = self._token_weights(entropy, mb), {}
        if s.policy_loss == "sapo":
            extra = {"tau_pos": s.sapo_tau_pos, "tau_neg": s.sapo_tau_neg}
        pg, metrics = self.policy_fn(
            logps, mb.old_logps, mb.advantages, mb.response_mask,
            clip_range_ratio=s.clip_range_ratio, clip_range_ratio_low=s.clip_range_ratio_low,
            clip_range_ratio_high=s.clip_range_ratio_high, dual_clip=s.dual_clip, delta=s.delta,
            token_weights=weights, **agg, **extra,
        )
        metrics = _flat(metrics)
        metrics["pg_loss"] = pg
        loss = s.pg_loss_coeff * pg
        if s.kl_loss_coeff > 0:
            if mb.ref_logps is None:
                raise ValueError("kl_loss_coeff > 0 needs reference log-probs")
            kl, _ = kl_penalty_loss(
                logps, mb.ref_logps, mb.response_mask, estimator=s.kl_loss_estimator, clip=s.clip_range_score, **agg,
            )
            metrics["kl_loss"] = kl
            loss = loss + s.kl_loss_coeff * kl
        if s.entropy_coeff > 0:
            ent, _ = token_entropy_bonus(entropy, mb.response_mask, **agg)
            metrics["entropy"] = ent
            loss = loss - s.entropy_coeff * ent
        metrics["actor_loss"] = loss
        return loss, metrics

    def _aggregation(self) -> Dict[str, Any]:
        """Keyword arguments of the aggregation: the mode and, for the loss_type presets, its denominator."""
        s = self.s
        out: Dict[str, Any] = {"loss_agg_mode": s.loss_agg_mode}
        if s.loss_normaliser == "max_dec_len":
            out["norm_length"] = float(s.max_dec_len)
        elif s.loss_normaliser == "global" and self._step_tokens is not None:
            out["global_token_count"] = self._step_tokens
        return out

    def _token_weights(self, entropy: Optional[paddle.Tensor], mb) -> Optional[paddle.Tensor]:
        """TIS weights (tis_cap, when the micro-batch has rollout log-probs) x the high-entropy token mask (from the
        response entropies (N, R), used detached)."""
        s, weights = self.s, None
        rollout_logps = getattr(mb, "rollout_logps", None)
        if s.tis_cap is not None and rollout_logps is not None:
            weights, _ = truncated_is_weights(mb.old_logps, rollout_logps, mb.response_mask, cap=s.tis_cap)
        if s.top_entropy_quantile < 1.0:
            with paddle.no_grad():
                keep = high_entropy_mask(entropy.detach(), mb.response_mask, s.top_entropy_quantile)
            weights = keep if weights is None else weights * keep
        return weights

    def _set_step_tokens(self, group) -> None:
        """loss_type dapo: every token of the optimizer step's micro-batches on every rank, / (world x gas), so
        that the sum over micro-batches / gas, averaged over ranks, is Σℓ / (all tokens of the step)."""
        if self.s.loss_normaliser != "global":
            return
        tokens = paddle.to_tensor([sum(float(mb.response_mask.astype("float32").sum()) for mb in group)],
                                  dtype="float64")
        world = 1
        if self.strategy is not None:
            tokens = self.strategy.all_reduce_sum(tokens)
            world = self.strategy.data_parallel_world_size
        self._step_tokens = max(float(tokens[0]), 1.0) / (world * self.gas)

    def critic_loss(self, mb: Experience, critic: Optional[paddle.nn.Layer] = None):
        with self.precision.autocast():  # values come out float32 (scores_response_values casts)
            values = response_values(
                critic if critic is not None else self.critic, mb.sequences, mb.attention_mask, mb.position_ids, mb.prompt_length, mb.response_mask
            )
        return self.critic_loss_from_values(values, mb)

    def critic_loss_from_values(self, values: paddle.Tensor, mb):
        loss, metrics = self.value_fn(
            values, mb.values, mb.returns, mb.response_mask,
            clip_range_value=self.s.clip_range_value, loss_agg_mode=self.s.loss_agg_mode,
        )
        metrics = _flat(metrics)
        metrics["critic_loss"] = loss
        return loss, metrics

    # ------------------------------------------------------------------ phase
    def update(self, exp: Experience, ptx_batches: Optional[Iterator[SupervisedBatch]] = None) -> Dict[str, float]:
        """All mini-batch updates of one rollout batch; returns metrics averaged over micro-batches."""
        if exp.advantages is None:
            raise ValueError("update: compute advantages before updating (exp.advantages is None)")
        if self.critic is not None and (exp.values is None or exp.returns is None):
            raise ValueError("update: the critic needs exp.values and exp.returns")
        if self.cost_critic is not None and (exp.cost_values is None or exp.cost_returns is None):
            raise ValueError("update: the cost critic needs exp.cost_values and exp.cost_returns")
        sums: Dict[str, List[float]] = defaultdict(list)
        self.actor.train()
        for model in (self.critic, self.cost_critic):
            if model is not None:
                model.train()
        micro = exp.split(self.micro_batch_size)
        if self.pipeline:
            return self._update_pipeline(micro, ptx_batches)
        # the actor's passes, then the critic's: the two updates are independent, and one model (with its
        # optimizer states) at a time is what the offload schedule keeps resident (phase_hook)
        self.phase_hook("update_actor")
        for _ in range(self.update_iters):
            for k, mb in enumerate(micro):
                if k % self.gas == 0:
                    self._set_step_tokens(micro[k:k + self.gas])
                loss, metrics = self.actor_loss(mb)
                self.precision.backward(loss / self.gas, self.actor_optimizer)
                if ptx_batches is not None and self.s.ptx_coeff > 0:
                    with self.precision.autocast():
                        ptx = ptx_loss(self.actor, next(ptx_batches))
                    self.precision.backward(self.s.ptx_coeff * ptx / self.gas, self.actor_optimizer)
                    metrics["ptx_loss"] = ptx
                if (k + 1) % self.gas == 0:
                    self._step(self.actor_optimizer)
                _collect(sums, metrics)
        if self.critic is not None:
            self.phase_hook("update_critic")
            for _ in range(self.update_iters):
                for k, mb in enumerate(micro):
                    closs, cmetrics = self.critic_loss(mb)
                    self.precision.backward(closs / self.gas, self.critic_optimizer)
                    if (k + 1) % self.gas == 0:
                        self._step(self.critic_optimizer)
                    _collect(sums, cmetrics)
        if self.cost_critic is not None:  # the cost critic's passes, in the critic's phase
            self.phase_hook("update_critic")
            for _ in range(self.update_iters):
                for k, mb in enumerate(micro):
                    closs, cmetrics = self.critic_loss(_cost_view(mb), self.cost_critic)
                    self.precision.backward(closs / self.gas, self.cost_critic_optimizer)
                    if (k + 1) % self.gas == 0:
                        self._step(self.cost_critic_optimizer)
                    _collect(sums, _prefixed(cmetrics, "cost_"))
        return self._finish(sums)

    def _finish(self, sums: Dict[str, List[float]]) -> Dict[str, float]:
        out = {k: sum(v) / len(v) for k, v in sums.items()}
        out["actor_lr"] = float(self.actor_optimizer.get_lr())
        if self.critic_optimizer is not None:
            out["critic_lr"] = float(self.critic_optimizer.get_lr())
        if self.cost_critic_optimizer is not None:
            out["cost_critic_lr"] = float(self.cost_critic_optimizer.get_lr())
        return out

    # ------------------------------------------------------------------ pipeline parallel
    def _pipeline_actor_loss(self, logits, labels):
        kind, sequences, response_mask, old_logps, advantages, ref_logps = labels
        # with ptx, each optimizer step runs 2 x gas micro-batches (rollout and ptx alternate) and the pipeline
        # divides by that count: scaling by 2 keeps the one-process sum over gas micro-batches / gas
        scale = 2.0 if self._ptx_in_pipeline else 1.0
        if int(kind.reshape([-1])[0]) == 1:  # a ptx micro-batch: ``sequences`` holds its (unshifted) labels
            ptx = ptx_nll_from_logits(logits, sequences)
            self._pp_metrics.append({"ptx_loss": float(ptx)})
            return scale * self.s.ptx_coeff * ptx
        mb = _MicroBatch(sequences=sequences, response_mask=response_mask, old_logps=old_logps,
                         advantages=advantages, ref_logps=ref_logps, prompt_length=self._prompt_length)
        loss, metrics = self.actor_loss_from_logits(logits, mb)
        self._pp_metrics.append({k: float(v.astype("float32").mean()) for k, v in metrics.items()})
        return scale * loss

    def _pipeline_critic_loss(self, scores, labels):
        response_mask, values, returns = labels
        mb = _MicroBatch(response_mask=response_mask, values=values, returns=returns)
        loss, metrics = self.critic_loss_from_values(
            scores_response_values(scores, self._prompt_length, response_mask), mb)
        self._pp_metrics.append({self._pp_prefix + k: float(v.astype("float32").mean()) for k, v in metrics.items()})
        return loss

    def _update_pipeline(self, micro: List[Experience], ptx_batches=None) -> Dict[str, float]:
        if len(micro) % self.gas:
            raise ValueError(f"pipeline parallel: {len(micro)} micro-batches per rollout are not a multiple of "
                             f"gradient_accumulation_steps={self.gas}")
        self._prompt_length = micro[0].prompt_length
        self._pp_metrics = []
        zeros = [paddle.zeros_like(mb.old_logps) for mb in micro]
        self._ptx_in_pipeline = ptx_batches is not None and self.s.ptx_coeff > 0
        kind = {0: paddle.zeros([1], dtype="int64"), 1: paddle.ones([1], dtype="int64")}
        self.phase_hook("update_actor")
        for _ in range(self.update_iters):
            for g in range(0, len(micro), self.gas):
                group = micro[g:g + self.gas]
                self._set_step_tokens(group)
                rows = []  # (input_ids, mask, position_ids, labels...) per micro-batch, ptx after each rollout one
                for i, mb in enumerate(group):
                    ref = mb.ref_logps if mb.ref_logps is not None else zeros[g + i]
                    rows.append((mb.sequences, mb.attention_mask, mb.position_ids, kind[0], mb.sequences,
                                 mb.response_mask, mb.old_logps, mb.advantages, ref))
                    if self._ptx_in_pipeline:
                        batch = next(ptx_batches)
                        pos = batch.get("position_ids")
                        pos = pos if pos is not None else make_position_ids(batch["attention_mask"])
                        dummy = paddle.zeros([1, 1], dtype="float32")
                        rows.append((batch["input_ids"], batch["attention_mask"], pos, kind[1], batch["labels"],
                                     dummy, dummy, dummy, dummy))
                # one sequence length per cycle: a stage sizes its receive buffers from the shapes in flight
                width = max(int(r[0].shape[1]) for r in rows)
                pads = (0, 0, 0, None, 0, None, None, None, None)
                pads_ptx = (0, 0, 0, None, IGNORE_INDEX, None, None, None, None)
                rows = [tuple(t if v is None else pad_columns(t, width, v)
                              for t, v in zip(r, pads_ptx if int(r[3]) == 1 else pads)) for r in rows]
                columns = list(zip(*rows))
                inputs = (list(columns[0]), [m.astype("bool") for m in columns[1]], list(columns[2]))
                labels = tuple(list(c) for c in columns[3:])
                self.actor.train_batch(cycle_inputs(inputs, labels), self.actor_optimizer)
                _advance_schedule(self.actor_optimizer)
        # the rollout micro-batches only; the cost critic (PPO-Lagrangian) on the cost values / returns
        for critic, optimizer, prefix in ((self.critic, self.critic_optimizer, ""),
                                          (self.cost_critic, self.cost_critic_optimizer, "cost_")):
            if critic is None:
                continue
            self.phase_hook("update_critic")
            self._pp_prefix = prefix
            for _ in range(self.update_iters):
                for g in range(0, len(micro), self.gas):
                    group = [_cost_view(mb) for mb in micro[g:g + self.gas]] if prefix else micro[g:g + self.gas]
                    inputs = ([mb.sequences for mb in group], [mb.attention_mask.astype("bool") for mb in group],
                              [mb.position_ids for mb in group])
                    labels = ([mb.response_mask for mb in group], [mb.values for mb in group],
                              [mb.returns for mb in group])
                    critic.train_batch(cycle_inputs(inputs, labels), optimizer)
                    _advance_schedule(optimizer)
            self._pp_prefix = ""
        records = self.strategy.broadcast_from_last_stage(self._pp_metrics)
        sums: Dict[str, List[float]] = defaultdict(list)
        for record in records:
            for key, v in record.items():
                sums[key].append(v)
        return self._finish(sums)

    def _step(self, optimizer: paddle.optimizer.Optimizer) -> None:
        self.precision.step(optimizer)  # fp16: GradScaler.step (unscale, skip on inf) + update
        try:
            optimizer.clear_grad(set_to_zero=False)
        except TypeError:  # sharding stage 2 / 3 optimizers manage their gradient buffers themselves
            optimizer.clear_grad()
        lr = optimizer._learning_rate
        if isinstance(lr, paddle.optimizer.lr.LRScheduler):
            lr.step()

"""PPO trainer: a thin orchestrator over rollout -> experience -> advantages -> updates -> metrics.

    trainer = PPOTrainer(args, models=models, strategy=strategy, train_dataset=prompts, reward_fn=None)
    trainer.train()

One *step* = one rollout batch of ``per_device_prompt_batch_size`` prompts per rank:
1. generation   ``alignment.rollout.generate`` (KV cache; n samples per prompt, contiguous groups);
2. experience   ``alignment.rollout.make_experience`` (old/ref log-probs, reward, values; micro-batched);
3. advantages   ``alignment.ppo.advantages.compute_advantages`` (KL-shaped rewards, estimator, whitening);
4. update       ``alignment.ppo.updates.PPOUpdater.update`` (update_iters epochs of actor/ptx/critic steps);
then the metrics of the step are averaged over ranks and logged; evaluation and checkpoints follow
``eval_steps`` / ``save_steps``. Each phase is timed (``time_generation`` ... ``time_update``).
GRPO, Dr.GRPO, RLOO and REINFORCE++ are the same loop with another estimator and no critic.

PPO-Lagrangian (Safe RLHF, arXiv 2310.12773) is on when a cost model (``cost_model_name_or_path``) or a
``cost_fn`` is given, under any rl_algorithm: the experience phase adds the episode costs and the cost critic's
values (critic-based algorithms), the advantage phase computes cost advantages with the same estimator, moves
λ (``alignment.algorithms.lagrangian.LagrangeMultiplier``, on every rank's episode costs) and gives the actor
(A_r - λ·A_c) / (1 + λ); the update phase trains the cost critic after the critic. Logged per step:
``lambda``, ``episode_cost``, ``episode_cost_window``, ``unsafe_share`` (cost > 0), ``reward`` (also plotted).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import paddle

from alignment.ops import set_use_fusemt
from alignment.parallel import ParallelStrategy
from alignment.rollout import (
    GenerationConfig,
    Retokenizer,
    RewardFn,
    RolloutBatch,
    make_experience,
)

from . import checkpoint
from .advantages import RewardNormalizer, compute_advantages, lagrangian_advantages_step
from .collect import RewardScorer, RolloutCollector, evaluate_rewards, finish_experience
from .config import PPOArguments
from .feeding import BatchStream
from .memory import PhaseTracker
from .optim import ScheduleSpec, build_optimizer, build_scheduler
from .reporting import MetricsReporter, plot_curves
from .updates import LossSettings, PPOUpdater

__all__ = ["PPOModels", "PPOTrainer"]


@dataclass
class PPOModels:
    """The models of a run, already created through the strategy (trainable ones wrapped)."""

    actor: paddle.nn.Layer  # trainable, wrapped for data parallel
    reference: Optional[paddle.nn.Layer]  # frozen copy of the SFT model (None: no KL term)
    actor_tokenizer: Any
    critic: Optional[paddle.nn.Layer] = None  # trainable (PPO only), wrapped
    reward_model: Optional[paddle.nn.Layer] = None  # frozen score model (or use a reward_fn)
    reward_tokenizer: Any = None  # when it differs from the actor's, rollouts are re-tokenised
    actor_copy: Any = None  # pipeline parallel: GenerationCopy of the actor (rollout, old log-probs)
    critic_copy: Any = None  # pipeline parallel: GenerationCopy of the critic (values)
    cost_model: Optional[paddle.nn.Layer] = None  # PPO-Lagrangian: frozen cost model (cost > 0 = unsafe)
    cost_tokenizer: Any = None  # when it differs from the actor's, rollouts are re-tokenised for it
    cost_critic: Optional[paddle.nn.Layer] = None  # PPO-Lagrangian with a critic-based algorithm: trainable, wrapped
    cost_critic_copy: Any = None  # pipeline parallel: GenerationCopy of the cost critic


class PPOTrainer:
    """Runs PPO-family training; see the module docstring for the phases."""

    def __init__(
        self,
        args: PPOArguments,
        *,
        models: PPOModels,
        train_dataset: Any,
        strategy: Optional[ParallelStrategy] = None,
        reward_fn: Optional[RewardFn] = None,
        eval_dataset: Any = None,
        ptx_dataset: Any = None,
        max_length: Optional[int] = None,
        cost_fn: Optional[RewardFn] = None,
    ):
        self.args = args
        self.strategy = strategy or ParallelStrategy.current()
        self.m = models
        self.reward_fn = reward_fn
        self.cost_fn = cost_fn
        _check_models(args, models, reward_fn, cost_fn)
        self.lagrange = None
        if models.cost_model is not None or cost_fn is not None:  # PPO-Lagrangian
            from alignment.algorithms.lagrangian import LagrangeMultiplier

            self.lagrange = LagrangeMultiplier(
                lambda_init=args.lambda_init, lr=args.lambda_lr, threshold=args.threshold, lambda_max=args.lambda_max,
                delay_steps=args.lambda_update_delay_steps, window_size=args.episode_cost_window_size)
        from alignment.training.precision import MixedPrecision

        # bf16 / fp16: auto_cast around every model forward, fp16 GradScalers (PPOArguments checked the device)
        self.precision = MixedPrecision.from_args(args, check=False)
        # fused log-probs (alignment.ops) for experience and updates; float32 kernels, so not under bf16 / fp16
        set_use_fusemt(args.use_fusemt and not self.precision.enabled)
        self.generation_config = _generation_config(args, models.actor_tokenizer, max_length)
        self.retokenizer = (
            Retokenizer(models.actor_tokenizer, models.reward_tokenizer, max_length)
            if models.reward_model is not None and Retokenizer.needed(models.actor_tokenizer, models.reward_tokenizer)
            else None
        )
        self.cost_retokenizer = (
            Retokenizer(models.actor_tokenizer, models.cost_tokenizer, max_length)
            if models.cost_model is not None and Retokenizer.needed(models.actor_tokenizer, models.cost_tokenizer)
            else None
        )
        self.collector = RolloutCollector(
            args, self.generation_config, rollout_actor=self.rollout_actor, scorer=_scorer(args, models, reward_fn,
                                                                                              self.retokenizer),
            strategy=self.strategy)
        self._make_streams(train_dataset, ptx_dataset)
        self.eval_dataset = eval_dataset
        opt_steps = max(1, self.total_steps * args.optimizer_steps_per_step)
        self.actor_optimizer = self._optimizer(models.actor, ScheduleSpec.from_args(args, opt_steps), critic=False)
        self.critic_optimizer = (
            self._optimizer(models.critic, ScheduleSpec.from_args(args, opt_steps, critic=True), critic=True)
            if models.critic is not None
            else None
        )
        self.cost_critic_optimizer = (
            self._optimizer(models.cost_critic, ScheduleSpec.from_args(args, opt_steps, critic=True), critic=True)
            if models.cost_critic is not None
            else None
        )
        # O2: half weights in the models, fp32 master weights in the optimizers (no-op under O1 / float32)
        (models.actor, self.actor_optimizer), (models.critic, self.critic_optimizer), \
            (models.cost_critic, self.cost_critic_optimizer) = self.precision.decorate(
                [(models.actor, self.actor_optimizer), (models.critic, self.critic_optimizer),
                 (models.cost_critic, self.cost_critic_optimizer)],
                frozen=(models.reference, models.reward_model, models.cost_model))
        # tensor / sharding layouts wrap a trainable model together with its optimizer
        gas = args.gradient_accumulation_steps
        # pipeline parallel with ptx: a ptx micro-batch follows each rollout micro-batch in one train_batch
        actor_steps = gas * (2 if self.ptx is not None else 1)
        models.actor, self.actor_optimizer = self.strategy.wrap_model_and_optimizer(
            models.actor, self.actor_optimizer, accumulate_steps=actor_steps)
        if models.critic is not None:
            models.critic, self.critic_optimizer = self.strategy.wrap_model_and_optimizer(
                models.critic, self.critic_optimizer, accumulate_steps=gas)
        if models.cost_critic is not None:
            models.cost_critic, self.cost_critic_optimizer = self.strategy.wrap_model_and_optimizer(
                models.cost_critic, self.cost_critic_optimizer, accumulate_steps=gas)
        self.updater = PPOUpdater(
            models.actor, self.actor_optimizer,
            critic=models.critic, critic_optimizer=self.critic_optimizer,
            settings=LossSettings.from_args(args), micro_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, update_iters=args.update_iters,
            strategy=self.strategy, cost_critic=models.cost_critic, cost_critic_optimizer=self.cost_critic_optimizer,
        )
        # offload_level's schedule and the per-step memory report (alignment/ppo/memory.py)
        self.phases = PhaseTracker.build(args, models, self.actor_optimizer, self.critic_optimizer, self.strategy)
        self.updater.phase_hook = self.phases.enter
        self.updater.precision = self.precision
        self.precision.add_optimizers(actor=self.actor_optimizer, critic=self.critic_optimizer,
                                      cost_critic=self.cost_critic_optimizer)
        self.reward_normalizer = RewardNormalizer() if args.normalize_reward else None
        self._copies_stale = True  # generation copies (pipeline parallel) are filled before the first use
        self._reshard_stats: Dict[str, float] = {}
        self.global_step = 0
        self.history: list = []
        # numeric guards: a non-finite reward / KL skips the update, a non-finite gradient the optimizer step
        from alignment.utils.guards import NonFiniteGuard, guard_optimizer

        self.guard = NonFiniteGuard(getattr(args, "max_nonfinite_steps", 3), args.output_dir, self.strategy)
        for name, opt in (("actor", self.actor_optimizer), ("critic", self.critic_optimizer),
                          ("cost_critic", self.cost_critic_optimizer)):
            if opt is not None:
                guard_optimizer(opt, self.guard, lambda: self.global_step + 1, name=name)

    def _make_streams(self, train_dataset, ptx_dataset) -> None:
        """Prompt and ptx batch streams for this rank, and the number of steps of the run."""
        a, s = self.args, self.strategy
        self.prompts = self.ptx = None
        if train_dataset is not None:
            self.prompts = BatchStream(
                train_dataset, a.per_device_prompt_batch_size, collate=train_dataset.get_collator(),
                world_size=s.data_parallel_world_size, rank=s.data_parallel_rank, seed=a.seed,
                drop_last=a.dataloader_drop_last,
            )
        if ptx_dataset is not None and a.ptx_coeff > 0:
            self.ptx = BatchStream(
                ptx_dataset, a.per_device_train_batch_size, collate=ptx_dataset.get_collator(),
                world_size=s.data_parallel_world_size, rank=s.data_parallel_rank, seed=a.seed + 1,
            )
        self.steps_per_epoch = self.prompts.order.batches_per_epoch if self.prompts is not None else 1
        if self.prompts is None:
            self.total_steps = 0
        elif a.max_steps > 0:
            self.total_steps = a.max_steps
        else:
            self.total_steps = int(math.ceil(a.num_train_epochs * self.steps_per_epoch))

    def _optimizer(self, model, spec: ScheduleSpec, critic: bool):
        a = self.args
        return build_optimizer(
            model, build_scheduler(spec),
            weight_decay=a.critic_value("weight_decay") if critic else a.weight_decay,
            beta1=a.adam_beta1, beta2=a.adam_beta2, epsilon=a.adam_epsilon, max_grad_norm=a.max_grad_norm,
        )

    # ------------------------------------------------------------------ phases
    def rollout(self, batch: Dict[str, Any], config: Optional[GenerationConfig] = None) -> RolloutBatch:
        """Generate for one prompt batch, in chunks of per_device_rollout_batch_size prompts (``collect``)."""
        return self.collector.generate(batch, config).batch

    def rollout_actor(self):
        """The model that generates: the actor itself, or (pipeline parallel) its refreshed generation copy."""
        self._refresh_copies()
        return self.m.actor_copy.model if self.m.actor_copy is not None else self.strategy.unwrap(self.m.actor)

    def _scoring_critic(self):
        if self.m.critic is None:
            return None
        self._refresh_copies()
        return self.m.critic_copy.model if self.m.critic_copy is not None else self.strategy.unwrap(self.m.critic)

    def _refresh_copies(self) -> None:
        """Pipeline parallel: copy the trained weights into the generation copies when they changed."""
        if self.m.actor_copy is None or not self._copies_stale:
            return
        stats = self.m.actor_copy.refresh()
        for copy in (self.m.critic_copy, self.m.cost_critic_copy):
            if copy is not None:
                more = copy.refresh()
                stats = {k: stats[k] + more[k] for k in stats}
        self._reshard_stats = stats
        self._copies_stale = False

    def cost_experience(self, exp, rollout: RolloutBatch):
        """PPO-Lagrangian: the episode costs (cost model or cost_fn) and the cost critic's values of ``exp``."""
        from alignment.rollout import reward_scores
        from alignment.rollout.experience import map_micro_batches, scores_response_values

        costs = reward_scores(rollout, reward_model=self.m.cost_model, reward_fn=self.cost_fn,
                              retokenizer=self.cost_retokenizer, micro_batch_size=self.args.experience_batch_size)
        values = None
        if self.m.cost_critic is not None:
            self._refresh_copies()
            critic = (self.m.cost_critic_copy.model if self.m.cost_critic_copy is not None
                      else self.strategy.unwrap(self.m.cost_critic))
            mask, p = exp.response_mask, exp.prompt_length
            with paddle.no_grad():
                values = map_micro_batches(
                    critic, lambda scores, sl: scores_response_values(
                        scores[..., 0] if scores.ndim == 3 else scores, p, mask[sl]),
                    exp.sequences, exp.attention_mask, exp.position_ids, self.args.experience_batch_size)
        return exp.replace(cost_scores=costs.astype("float32"), cost_values=values)

    def experience(self, rollout: RolloutBatch, scores: Optional[paddle.Tensor] = None):
        return make_experience(
            rollout,
            scores=scores,
            actor=self.rollout_actor(),
            reference=self.m.reference,
            reward_model=self.m.reward_model,
            reward_fn=self.reward_fn,
            critic=self._scoring_critic(),
            temperature=self.args.temperature,
            micro_batch_size=self.args.experience_batch_size,
            retokenizer=self.retokenizer,
        )

    def step(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """One PPO iteration on one prompt batch; returns the step's metrics averaged over ranks."""
        a = self.args
        t0 = time.perf_counter()
        self.phases.enter("generation")  # generation and rewards (+ dynamic sampling's further batches)
        with self.precision.autocast():  # generation and reward-model forwards
            rollout, collected = self.collector.collect(batch, self.prompts)
        t1 = time.perf_counter()
        self.phases.enter("experience")
        with self.precision.autocast():  # the forwards; log-probs, values and scores come out float32
            exp, extras = finish_experience(self.experience(rollout.batch, rollout.scores), rollout, a)
            if self.lagrange is not None:
                exp = self.cost_experience(exp, rollout.batch)
        t2 = time.perf_counter()
        reward = float(exp.scores.astype("float32").mean())
        if self.guard.check(self.global_step + 1, what="update", reward=reward):  # before the normaliser sees it
            return {"reward": reward, "nonfinite_skipped": float(self.guard.skipped)}
        grpo_scaled = a.rl_algorithm == "grpo" and a.scale_rewards != "group"  # group-centred, then batch / none
        exp, metrics = compute_advantages(
            exp, estimator="dr_grpo" if grpo_scaled else a.advantage_estimator, kl_coeff=a.kl_coeff,
            clip_range_score=a.clip_range_score, kl_estimator=a.kl_estimator, group_size=a.num_return_sequences,
            gamma=a.gamma, lam=a.lam, normalize_advantage=a.normalize_advantage,
            reward_normalizer=self.reward_normalizer, strategy=self.strategy,
            scale_by_batch_std=grpo_scaled and a.scale_rewards == "batch",
        )
        metrics.update(collected, **extras)
        if self.lagrange is not None:
            exp, cost_metrics = lagrangian_advantages_step(
                exp, self.lagrange, estimator="dr_grpo" if grpo_scaled else a.advantage_estimator, args=a,
                strategy=self.strategy, scale_by_batch_std=grpo_scaled and a.scale_rewards == "batch")
            metrics.update(cost_metrics)
        t3 = time.perf_counter()
        kl = metrics.get("kl_divergence")
        if self.guard.check(self.global_step + 1, what="update", kl=kl):
            return {**metrics, "nonfinite_skipped": float(self.guard.skipped)}
        self.guard.watch(self.global_step + 1, kl=kl)
        metrics.update(self.updater.update(exp, self.ptx))  # enters update_actor, then update_critic
        metrics.update(self.phases.finish_step(self.global_step + 1, shapes={
            "rows": len(exp), "prompt_length": exp.prompt_length, "response_length": exp.response_length}))
        self._copies_stale = True
        metrics.update(self._reshard_stats)
        t4 = time.perf_counter()
        metrics.update(
            time_generation=t1 - t0, time_experience=t2 - t1, time_advantages=t3 - t2, time_update=t4 - t3,
            time_step=t4 - t0,
        )
        metrics.update(self.precision.loss_scales())  # fp16 on a GPU: each optimizer's dynamic loss scale
        metrics = self.strategy.all_reduce_mean(metrics)
        metrics["samples_per_second"] = len(exp) * self.strategy.data_parallel_world_size / metrics["time_step"]
        return metrics

    def evaluate(self) -> Dict[str, float]:
        """Mean reward and length over eval prompts, and each reward's mean and pass@k (k = num_return_sequences;
        one greedy response per prompt when k = 1), over all ranks (``collect.evaluate_rewards``)."""
        if self.eval_dataset is None:
            return {}
        with self.precision.autocast():
            return evaluate_rewards(self.collector, self.eval_dataset, self.args, self.strategy, self.phases.enter)

    # ------------------------------------------------------------------ loop
    def train(self) -> Dict[str, float]:
        a, s = self.args, self.strategy
        from alignment.training.runner import prepare_output_dir

        # orphans of a killed save removed, another run's outputs refused, metrics past the checkpoint dropped
        path = prepare_output_dir(a)
        if path is not None:
            checkpoint.resolve(a.output_dir, path)  # a PPO checkpoint (trainer_state.json)
            checkpoint.load(self, path)
        else:
            # model construction drew a layout-dependent number of random numbers: restart the streams
            # (tensor / pipeline replicas of one data rank share a stream; sampled ids are broadcast anyway)
            paddle.seed(a.seed + s.data_parallel_rank)
        reporter = MetricsReporter(
            a.output_dir, enabled=s.is_main_process, report_to=a.report_to, logging_dir=a.logging_dir,
            total_steps=self.total_steps, initial_step=self.global_step, disable_tqdm=a.disable_tqdm,
        )
        last: Dict[str, float] = {}
        pending: list = []
        try:
            if a.do_eval and a.evaluation_strategy != "no" and self.global_step == 0:
                self._log_eval(reporter)  # the starting point (step 0) of the eval-reward curve
            while self.global_step < self.total_steps:
                metrics = self.step(next(self.prompts))
                self.global_step += 1
                reporter.advance()
                pending.append(metrics)
                last = metrics
                if self.global_step % a.logging_steps == 0 or self.global_step == self.total_steps:
                    logged = _mean_records(pending)
                    pending = []
                    self.history.append({"step": self.global_step, **logged})
                    reporter.log(self.global_step, logged)
                if a.do_eval and self._due(a.evaluation_strategy, a.eval_steps):
                    self._log_eval(reporter)
                if self._due(a.save_strategy, a.save_steps) and self.global_step < self.total_steps:
                    checkpoint.save(self, os.path.join(a.output_dir, f"checkpoint-{self.global_step}"))
                    checkpoint.rotate(a.output_dir, a.save_total_limit, s)
        finally:
            reporter.close()
        if a.save_strategy != "no":
            checkpoint.save(self, os.path.join(a.output_dir, f"checkpoint-{self.global_step}"))
            checkpoint.rotate(a.output_dir, a.save_total_limit, s)
        checkpoint.save_final(self, a.output_dir)
        if s.is_main_process:
            keys = ("reward", "kl_divergence")
            if self.lagrange is not None:
                keys += ("episode_cost", "lambda", "unsafe_share")
            plot_curves(a.output_dir, keys=keys)
        s.barrier()
        return last

    def _log_eval(self, reporter: MetricsReporter) -> None:
        ev = self.evaluate()
        if ev:
            self.history.append({"step": self.global_step, **ev})
            reporter.log(self.global_step, ev)

    def _due(self, strategy: str, every: int) -> bool:
        if strategy == "steps":
            return self.global_step % every == 0
        if strategy == "epoch":
            return self.global_step % self.steps_per_epoch == 0
        return False


def _scorer(args: PPOArguments, models: PPOModels, reward_fn, retokenizer) -> RewardScorer:
    """The step's reward: reward_funcs terms, the reward model and a reward_fn, weighted (reward_weights)."""
    from alignment.training.reward_funcs import reward_terms

    terms = reward_terms(args)
    extra = list(args.reward_weights or [])[len(terms):]
    model_weight = extra.pop(0) if extra and models.reward_model is not None else 1.0
    fn_weight = extra.pop(0) if extra and reward_fn is not None else 1.0
    return RewardScorer(
        terms=terms, tokenizer=models.actor_tokenizer, reward_model=models.reward_model, reward_fn=reward_fn,
        model_weight=model_weight, fn_weight=fn_weight, retokenizer=retokenizer,
        micro_batch_size=args.experience_batch_size, max_dec_len=args.max_dec_len,
        overlong_buffer_len=args.overlong_buffer_len, overlong_penalty_factor=args.overlong_penalty_factor,
        granularity=args.reward_granularity)


def _check_models(args: PPOArguments, models: PPOModels, reward_fn, cost_fn=None) -> None:
    if models.reward_model is None and reward_fn is None and not args.reward_funcs:
        raise ValueError("PPOTrainer: give a reward model, a reward_fn or reward_funcs")
    if models.cost_model is not None and cost_fn is not None:
        raise ValueError("PPOTrainer: give a cost model or a cost_fn, not both")
    lagrangian = models.cost_model is not None or cost_fn is not None
    if lagrangian and args.use_critic and models.cost_critic is None:
        raise ValueError(f"PPO-Lagrangian with rl_algorithm='{args.rl_algorithm}' needs a cost critic model")
    if models.cost_critic is not None and not (lagrangian and args.use_critic):
        raise ValueError("a cost critic needs a cost model (or cost_fn) and a critic-based rl_algorithm")
    if args.use_critic and models.critic is None:
        raise ValueError(f"rl_algorithm='{args.rl_algorithm}' needs a critic model")
    if not args.use_critic and models.critic is not None:
        raise ValueError(f"rl_algorithm='{args.rl_algorithm}' trains no critic; do not pass one")
    if (args.kl_coeff > 0 or args.kl_loss_coeff > 0) and models.reference is None:
        raise ValueError("kl_coeff / kl_loss_coeff > 0 need a reference model")


def _generation_config(args: PPOArguments, tokenizer, max_length: Optional[int]) -> GenerationConfig:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad is None or pad == eos:
        raise ValueError(
            "the actor tokenizer needs a pad token distinct from EOS (alignment.data.ensure_pad_token adds one); "
            "with pad == eos a generated EOS would be masked as padding"
        )
    return GenerationConfig(
        eos_token_ids=(eos,), pad_token_id=pad, max_new_tokens=args.max_dec_len, min_new_tokens=args.min_dec_len,
        max_length=max_length, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        repetition_penalty=args.repetition_penalty, num_return_sequences=args.num_return_sequences,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
        sampler="fused" if args.use_fusemt and args.sampler == "default" else args.sampler,
    )


def _mean_records(records) -> Dict[str, float]:
    keys = set().union(*records)
    out = {}
    for k in sorted(keys):
        vals = [r[k] for r in records if k in r]
        out[k] = max(vals) if k.endswith("_max") else min(vals) if k.endswith("_min") else sum(vals) / len(vals)
    return out

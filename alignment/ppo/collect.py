"""Rollout collection of one step: generation (with the sampler's log-probs), rewards, DAPO shaping and filtering.

    collector = RolloutCollector(args, generation_config, rollout_actor=..., scorer=..., strategy=...)
    rollout, metrics = collector.collect(prompt_batch, more_prompts=stream)   # a scored ``Rollout``

* generation runs in chunks of ``per_device_rollout_batch_size`` prompts; a recording wrapper around the
  configured sampler keeps log softmax(logits / temperature) of every sampled token (``rollout_logps``),
  the distribution the token was drawn from (after the EOS ban of ``min_dec_len``, before the sampler's own
  penalties / top-k / top-p), so the train/rollout mismatch |old_logps - rollout_logps| can be logged;
* ``RewardScorer``: named reward functions (``reward_funcs``), the reward model and a Python ``reward_fn``,
  weighted and summed; each one's mean is logged as ``rewards_<name>``; DAPO's soft overlong punishment
  (``overlong_buffer_len``) is added unweighted (``rewards_overlong``); with ``reward_granularity: token`` the
  reward model and the reward function give per-token rewards (``token_reward_scores``), the rollout's ``dense``
  (N, R) is their weighted sum plus the sequence-level terms at each row's last token, and its score is the
  row sum;
* ``dynamic_sampling`` (DAPO, arXiv 2503.14476): groups whose rewards are all equal are dropped and further
  prompt batches are generated until the step has ``per_device_prompt_batch_size`` groups or
  ``max_gen_batches`` batches were generated (then dropped groups fill the rest; their advantages are 0).
  Every data-parallel rank generates the same number of batches (the decision is all-reduced), so the
  collective calls inside generation and scoring stay matched under every layout.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import paddle

from alignment.algorithms.shaping import constant_reward_groups, overlong_penalty
from alignment.parallel import ParallelStrategy
from alignment.algorithms.utils import last_token_index
from alignment.rollout import GenerationConfig, RolloutBatch, concat_rollouts, generate, register_sampler, reward_scores
from alignment.rollout.experience import token_reward_scores
from alignment.rollout.sampling import available_samplers, get_sampler

from alignment.training.reward_funcs import RewardTerm, decode_completions, row_columns

__all__ = ["Rollout", "RewardScorer", "RolloutCollector", "recording_sampler"]


@dataclass
class Rollout:
    """A generated batch with what the step needs besides the tokens."""

    batch: RolloutBatch
    rollout_logps: paddle.Tensor  # (N, R) float32: the sampler's log-probs, 0 on pads
    columns: Optional[List[dict]] = None  # (N,) extra record columns of each row's prompt
    scores: Optional[paddle.Tensor] = None  # (N,) float32: total reward
    components: Dict[str, paddle.Tensor] = field(default_factory=dict)  # name -> (N,) float32 (unweighted)
    dense: Optional[paddle.Tensor] = None  # (N, R) float32: per-token rewards (reward_granularity token)

    def __len__(self) -> int:
        return int(self.batch.sequences.shape[0])

    def select(self, rows: Sequence[int]) -> "Rollout":
        idx = paddle.to_tensor(list(rows), dtype="int64")
        b = self.batch

        def pick(x):
            return None if x is None else [x[i] for i in rows]

        batch = replace(
            b, sequences=paddle.index_select(b.sequences, idx), attention_mask=paddle.index_select(b.attention_mask, idx),
            position_ids=paddle.index_select(b.position_ids, idx), response_mask=paddle.index_select(b.response_mask, idx),
            group_ids=paddle.index_select(b.group_ids, idx), ended_with_eos=paddle.index_select(b.ended_with_eos, idx),
            prompts=pick(b.prompts), answers=pick(b.answers),
        )
        return Rollout(batch, paddle.index_select(self.rollout_logps, idx), pick(self.columns),
                       None if self.scores is None else paddle.index_select(self.scores, idx),
                       {k: paddle.index_select(v, idx) for k, v in self.components.items()},
                       None if self.dense is None else paddle.index_select(self.dense, idx))


def concat(parts: Sequence[Rollout], pad_token_id: int, group_size: int) -> Rollout:
    """Rows of several rollouts in order; group ids renumbered 0.. (groups of ``group_size`` contiguous rows)."""
    if len(parts) == 1:
        out = parts[0]
    else:
        batch = concat_rollouts([p.batch for p in parts], pad_token_id)
        width = int(batch.response_mask.shape[1])
        logps = paddle.concat([_pad_columns(p.rollout_logps, width) for p in parts])
        columns = None if any(p.columns is None for p in parts) else [c for p in parts for c in p.columns]
        scores = None if any(p.scores is None for p in parts) else paddle.concat([p.scores for p in parts])
        names = parts[0].components.keys()
        components = {k: paddle.concat([p.components[k] for p in parts]) for k in names}
        dense = None if any(p.dense is None for p in parts) else paddle.concat(
            [_pad_columns(p.dense, width) for p in parts])
        out = Rollout(batch, logps, columns, scores, components, dense)
    n = len(out)
    groups = paddle.repeat_interleave(paddle.arange(n // group_size, dtype="int64"), group_size)
    return replace(out, batch=replace(out.batch, group_ids=groups))


def _pad_columns(x: paddle.Tensor, width: int) -> paddle.Tensor:
    missing = width - int(x.shape[1])
    return x if missing <= 0 else paddle.concat([x, paddle.zeros([x.shape[0], missing], dtype=x.dtype)], axis=1)


# ---------------------------------------------------------------------------------------------- sampler log-probs
class _Recorder:
    """Collects, per decode step, log softmax(logits / T)[sampled id] while ``active``."""

    def __init__(self):
        self.steps: Optional[List[paddle.Tensor]] = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[List[paddle.Tensor]]:
        self.steps = []
        try:
            yield self.steps
        finally:
            self.steps = None


_RECORDER = _Recorder()


def recording_sampler(base: str) -> str:
    """Name of a sampler that samples like ``base`` and records the sampled tokens' log-probs (registered once)."""
    name = f"record:{base}"
    if name in available_samplers():
        return name
    inner = get_sampler(base)

    def sampler(logits, generated, *, temperature: float = 1.0, **kw):
        scaled = logits.astype("float32") / (temperature if temperature > 0 else 1.0)  # before any in-place change
        ids = inner(logits, generated, temperature=temperature, **kw)
        ids = ParallelStrategy.current().tensor_parallel_broadcast(ids)  # the ids every rank will keep
        if _RECORDER.steps is not None:  # log p(id) of each row: the fused log-prob operator where it is built
            from alignment import ops

            logps, _ = ops.completion_logps(scaled.unsqueeze(1), ids.astype("int64").unsqueeze(-1))
            _RECORDER.steps.append(logps.squeeze(1))
        return ids

    sampler.__qualname__ = f"recording_sampler({base})"
    register_sampler(name)(sampler)
    return name


# ---------------------------------------------------------------------------------------------- rewards
class RewardScorer:
    """Total reward of a rollout = Σ_k w_k R_k (named functions, reward model, reward_fn) + overlong penalty."""

    def __init__(self, *, terms: Sequence[RewardTerm], tokenizer, reward_model=None, reward_fn=None,
                 model_weight: float = 1.0, fn_weight: float = 1.0, retokenizer=None, micro_batch_size: int = 8,
                 max_dec_len: int = 0, overlong_buffer_len: int = 0, overlong_penalty_factor: float = 1.0,
                 granularity: str = "sequence"):
        if not terms and reward_model is None and reward_fn is None:
            raise ValueError("no reward: give reward_funcs, a reward model (reward_model_name_or_path) or a reward_fn")
        self.terms, self.tokenizer = list(terms), tokenizer
        self.reward_model, self.reward_fn, self.retokenizer = reward_model, reward_fn, retokenizer
        self.model_weight, self.fn_weight, self.micro_batch_size = model_weight, fn_weight, micro_batch_size
        self.max_dec_len, self.buffer, self.factor = max_dec_len, overlong_buffer_len, overlong_penalty_factor
        self.granularity = granularity
        self.last_dense: Optional[paddle.Tensor] = None  # (N, R) of the last call (granularity token)

    @property
    def names(self) -> List[str]:
        return [t.name for t in self.terms] + (["reward_model"] if self.reward_model is not None else []) + (
            ["reward_fn"] if self.reward_fn is not None else [])

    def __call__(self, rollout: Rollout) -> Tuple[paddle.Tensor, Dict[str, paddle.Tensor]]:
        b = rollout.batch
        n = int(b.sequences.shape[0])
        components: Dict[str, paddle.Tensor] = {}
        total = paddle.zeros([n], dtype="float32")
        dense = paddle.zeros(b.response_mask.shape, dtype="float32") if self.granularity == "token" else None
        if self.terms:
            completions = decode_completions(self.tokenizer, b)
            prompts = list(b.prompts) if b.prompts is not None else [""] * n
            columns = row_columns(b, rollout.columns)
            for term in self.terms:
                values = paddle.to_tensor(term(prompts, completions, columns), dtype="float32")
                components[term.name] = values
                total = total + term.weight * values
        for name, weight, kw in (("reward_model", self.model_weight, {"reward_model": self.reward_model}),
                                 ("reward_fn", self.fn_weight, {"reward_fn": self.reward_fn})):
            if next(iter(kw.values())) is None:
                continue
            if dense is not None:  # per-token rewards; the component logged is each row's sum
                if name == "reward_model" and self.retokenizer is not None:
                    raise ValueError("reward_granularity='token' needs a reward model with the actor's tokenizer "
                                     "(per-token scores are read at the actor's response tokens)")
                per_token = token_reward_scores(b, micro_batch_size=self.micro_batch_size, **kw)
                dense = dense + weight * per_token
                components[name] = per_token.sum(axis=-1)
                continue
            values = reward_scores(b, retokenizer=self.retokenizer if name == "reward_model" else None,
                                   micro_batch_size=self.micro_batch_size, **kw).astype("float32").reshape([-1])
            components[name] = values
            total = total + weight * values
        if self.buffer > 0:
            penalty = overlong_penalty(b.response_lengths, max_length=self.max_dec_len, buffer_length=self.buffer,
                                       penalty_factor=self.factor)
            components["overlong"] = penalty
            total = total + penalty
        if dense is not None:  # sequence-level terms at each row's last response token
            mask = b.response_mask.astype("float32")
            last = paddle.nn.functional.one_hot(last_token_index(mask), mask.shape[1]).astype("float32")
            dense = (dense + last * total.unsqueeze(-1)) * mask
            total = dense.sum(axis=-1)
        self.last_dense = dense
        return total, components


# ---------------------------------------------------------------------------------------------- collection
class RolloutCollector:
    """Generation + scoring (+ dynamic sampling) of one step; see the module docstring."""

    def __init__(self, args, config: GenerationConfig, *, rollout_actor: Callable[[], paddle.nn.Layer],
                 scorer: RewardScorer, strategy: ParallelStrategy):
        self.args, self.scorer, self.strategy = args, scorer, strategy
        self.config = replace(config, sampler=recording_sampler(config.sampler))
        self.rollout_actor = rollout_actor

    def generate(self, batch, config: Optional[GenerationConfig] = None) -> Rollout:
        """Generate for one prompt batch, in chunks of per_device_rollout_batch_size prompts."""
        config = self.config if config is None else replace(config, sampler=recording_sampler(
            config.sampler.split("record:", 1)[-1]))
        actor = self.rollout_actor()
        n_prompts = batch["input_ids"].shape[0]
        chunk = self.args.per_device_rollout_batch_size
        chunk = n_prompts if chunk <= 0 else chunk
        parts = []
        for s in range(0, n_prompts, chunk):
            sl = slice(s, min(s + chunk, n_prompts))
            with _RECORDER.recording() as steps:
                part = generate(
                    actor, batch["input_ids"][sl], batch["attention_mask"][sl], config, group_offset=s,
                    prompts=None if batch.get("prompts") is None else batch["prompts"][sl],
                    answers=None if batch.get("answers") is None else batch["answers"][sl],
                )
            logps = paddle.stack(steps[: part.response_mask.shape[1]], axis=1) * part.response_mask.astype("float32")
            cols = batch.get("columns")
            cols = None if cols is None else [c for c in cols[sl] for _ in range(config.num_return_sequences)]
            parts.append(Rollout(part, logps, cols))
        return concat(parts, config.pad_token_id, config.num_return_sequences)

    def score(self, rollout: Rollout) -> Rollout:
        scores, components = self.scorer(rollout)
        return replace(rollout, scores=scores, components=components, dense=self.scorer.last_dense)

    def collect(self, batch, more_prompts: Optional[Iterator] = None) -> Tuple[Rollout, Dict[str, float]]:
        """One step's scored rollout; with dynamic_sampling, constant-reward groups are replaced (module doc)."""
        a = self.args
        rollout = self.score(self.generate(batch))
        metrics: Dict[str, float] = {}
        if not a.dynamic_sampling:
            return rollout, metrics
        g, want = a.num_return_sequences, a.per_device_prompt_batch_size
        kept: List[Rollout] = []
        spare: List[Rollout] = []
        n_kept = dropped = rounds = 0
        while True:
            rounds += 1
            flat = constant_reward_groups(rollout.scores, g).numpy()
            good = [i for i, f in enumerate(flat) if not f]
            bad = [i for i, f in enumerate(flat) if f]
            dropped += len(bad)
            take = good[: max(0, want - n_kept)]
            if take:
                kept.append(rollout.select([i * g + j for i in take for j in range(g)]))
                n_kept += len(take)
            if bad:
                spare.append(rollout.select([i * g + j for i in bad for j in range(g)]))
            short = 1.0 if n_kept < want else 0.0
            anyone_short = float(self.strategy.all_reduce_max(paddle.to_tensor([short], dtype="float32"))[0])
            if anyone_short == 0.0 or rounds >= a.max_gen_batches or more_prompts is None:
                break
            rollout = self.score(self.generate(next(more_prompts)))
        filled = 0
        if n_kept < want:  # max_gen_batches reached: dropped groups (zero advantage) keep the step's shape
            pool = concat(spare, self.config.pad_token_id, g)
            filled = want - n_kept
            kept.append(pool.select(list(range(filled * g))))
        metrics.update(dynamic_sampling_dropped=float(dropped), dynamic_sampling_gen_batches=float(rounds),
                       dynamic_sampling_filled=float(filled))
        return concat(kept, self.config.pad_token_id, g), metrics


# ---------------------------------------------------------------------------------------------- after experience
def finish_experience(exp, rollout: Rollout, args) -> Tuple[object, Dict[str, float]]:
    """Attach the sampler's log-probs, log each reward's mean and the train/rollout mismatch, and (with
    mask_truncated_completions) take completions without an EOS out of the loss."""
    from alignment.algorithms.shaping import truncated_is_weights

    metrics = {f"rewards_{k}": float(v.mean()) for k, v in rollout.components.items()}
    _, tis = truncated_is_weights(exp.old_logps, rollout.rollout_logps, exp.response_mask,
                                  cap=args.tis_cap if args.tis_cap is not None else float("inf"))
    metrics.update(rollout_logp_diff_max=float(tis["rollout_logp_diff_max"]),
                   rollout_logp_diff_mean=float(tis["rollout_logp_diff_mean"]))
    if args.tis_cap is not None:
        metrics["tis_weight_mean"] = float(tis["tis_weight_mean"])
    ended = rollout.batch.ended_with_eos.astype("float32")
    metrics["truncated_fraction"] = 1.0 - float(ended.mean())
    exp = exp.replace(rollout_logps=rollout.rollout_logps, dense_rewards=rollout.dense)
    if args.mask_truncated_completions:
        exp = exp.replace(response_mask=exp.response_mask * ended.unsqueeze(-1))
    return exp, metrics


@paddle.no_grad()
def evaluate_rewards(collector: RolloutCollector, dataset, args, strategy: ParallelStrategy,
                     phase: Callable[[str], None] = lambda name: None) -> Dict[str, float]:
    """Mean reward, mean response length, and per reward function its mean and pass@k over ``dataset``.

    k = num_return_sequences samples per prompt (sampled when k > 1; with k = 1 greedy unless
    eval_do_sample). pass@k of a function is the mean over prompts of the best of its k scores (for a 0/1
    verifier such as accuracy, the fraction of prompts with at least one correct sample). Each rank scores
    its share of the prompts; the sums are all-reduced.
    """
    k = args.num_return_sequences
    cfg = replace(collector.config, num_return_sequences=k, do_sample=k > 1 or args.eval_do_sample)
    n = len(dataset)
    per_rank = -(-n // strategy.data_parallel_world_size)
    mine = list(range(strategy.data_parallel_rank * per_rank, min(n, (strategy.data_parallel_rank + 1) * per_rank)))
    collate = dataset.get_collator()
    names = collector.scorer.names + (["overlong"] if collector.scorer.buffer > 0 else [])
    sums = [0.0] * (3 + 2 * len(names))  # reward, length, samples, then (mean, best-of-k) per name
    prompts = 0.0
    for b in range(0, len(mine), args.per_device_eval_batch_size):
        batch = collate([dataset[i] for i in mine[b: b + args.per_device_eval_batch_size]])
        phase("generation")
        rollout = collector.generate(batch, cfg)
        phase("experience")  # the reward model scores
        rollout = collector.score(rollout)
        sums[0] += float(rollout.scores.sum())
        sums[1] += float(rollout.batch.response_lengths.astype("float32").sum())
        sums[2] += len(rollout)
        prompts += len(rollout) / k
        for j, name in enumerate(names):
            values = rollout.components[name]
            sums[3 + 2 * j] += float(values.sum())
            sums[4 + 2 * j] += float(values.reshape([-1, k]).max(axis=1).sum())
    total = strategy.all_reduce_sum(paddle.to_tensor(sums + [prompts], dtype="float64")).numpy()
    samples, prompts = max(total[2], 1.0), max(total[-1], 1.0)
    out = {"eval_reward": total[0] / samples, "eval_response_length": total[1] / samples}
    for j, name in enumerate(names):
        out[f"eval_{name}"] = total[3 + 2 * j] / samples
        out[f"eval_{name}_pass@{k}"] = total[4 + 2 * j] / prompts
    return out

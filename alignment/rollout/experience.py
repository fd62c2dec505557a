"""The ``Experience`` of one rollout batch and how it is made (batched, micro-batched forward passes).

Layout. N rows (prompts x num_return_sequences), T = P + R columns: ``sequences`` is
``[left pads | prompt | response | right pads]``, the response of every row starts at column P.
Every per-token RL tensor is RESPONSE-ALIGNED with shape (N, R): column j describes response token
``sequences[:, P + j]``:

* ``old_logps[:, j]`` / ``ref_logps[:, j]`` = log softmax(logits[:, P + j - 1] / temperature)[sequences[:, P + j]]
  (the same temperature the loss uses, so the first PPO ratio is exactly 1);
* ``values[:, j]`` = critic score at position P + j - 1, the state in which token P + j is chosen;
* ``response_mask[:, j]`` = 1 for the response tokens up to and including the EOS, 0 on pads after it.

Reward scores are read at the row's true last token, ``P + response_length - 1`` (the EOS when the
row stopped), never at a pad; a reward function may replace the reward model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator, List, Optional, Sequence

import paddle

from alignment.algorithms.utils import gather_logps

from .generation import RolloutBatch, eval_mode, make_position_ids

__all__ = [
    "Experience",
    "RewardFn",
    "Retokenizer",
    "make_experience",
    "response_logps",
    "chunked_response_logps",
    "chunked_token_logps",
    "response_values",
    "reward_scores",
    "token_reward_scores",
    "concat_rollouts",
    "map_micro_batches",
]

# reward_fn(sequences (N, T) int64, attention_mask (N, T), prompts list[str] | None, answers list | None) -> (N,)
# A reward function that also declares ``prompt_length`` (int P: responses start at column P) and/or
# ``response_mask`` ((N, R)) keyword parameters, or ``**kwargs``, receives them too.
RewardFn = Callable[[paddle.Tensor, paddle.Tensor, Optional[List[str]], Optional[List[Any]]], Any]


def _extra_kwargs(fn, rollout: RolloutBatch) -> dict:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {"prompt_length": rollout.prompt_length, "response_mask": rollout.response_mask}
    return {k: v for k, v in extra.items() if var_kw or k in params}


@dataclass
class Experience:
    """One rollout batch with everything the PPO/GRPO updates need (shapes: N rows, T = P + R columns)."""

    sequences: paddle.Tensor  # (N, T) int64: [left pads | prompt | response | right pads]
    attention_mask: paddle.Tensor  # (N, T) int64: 1 on prompt + response tokens (EOS included)
    position_ids: paddle.Tensor  # (N, T) int64: 0 on left pads, 0.. on real tokens
    response_mask: paddle.Tensor  # (N, R) float32: 1 on response tokens up to and including EOS
    prompt_length: int  # P: column where every response starts
    group_ids: paddle.Tensor  # (N,) int64: rows sampled from one prompt share the id (contiguous)
    old_logps: paddle.Tensor  # (N, R) float32: actor log-probs at rollout time (/ temperature), 0 on pads
    ref_logps: Optional[paddle.Tensor]  # (N, R) float32: reference-model log-probs, 0 on pads
    scores: paddle.Tensor  # (N,) float32: raw reward (reward model end score or reward_fn)
    values: Optional[paddle.Tensor] = None  # (N, R) float32: critic values at rollout time (PPO only)
    token_rewards: Optional[paddle.Tensor] = None  # (N, R) float32: KL-shaped per-token rewards
    advantages: Optional[paddle.Tensor] = None  # (N, R) float32
    returns: Optional[paddle.Tensor] = None  # (N, R) float32
    prompts: Optional[List[str]] = None  # (N,) prompt texts, when known
    answers: Optional[List[Any]] = None  # (N,) reference answers, when known
    rollout_logps: Optional[paddle.Tensor] = None  # (N, R) float32: the sampler's log-probs (/ temperature), 0 on pads
    dense_rewards: Optional[paddle.Tensor] = None  # (N, R) float32: per-token rewards (reward_granularity token)
    # PPO-Lagrangian (Safe RLHF): the cost model's episode costs, the cost critic's values, the cost returns
    cost_scores: Optional[paddle.Tensor] = None  # (N,) float32: raw cost (> 0 reads as unsafe)
    cost_values: Optional[paddle.Tensor] = None  # (N, R) float32: cost-critic values at rollout time
    cost_advantages: Optional[paddle.Tensor] = None  # (N, R) float32
    cost_returns: Optional[paddle.Tensor] = None  # (N, R) float32

    def __len__(self) -> int:
        return int(self.sequences.shape[0])

    @property
    def response_length(self) -> int:
        """R, the width of the response area."""
        return int(self.response_mask.shape[1])

    @property
    def response_lengths(self) -> paddle.Tensor:  # (N,) float32, EOS counted
        return self.response_mask.sum(axis=-1)

    def select(self, index: Sequence[int] | paddle.Tensor) -> "Experience":
        """Rows ``index`` (any order) as a new Experience; columns that are padding in every row are kept."""
        idx = index if isinstance(index, paddle.Tensor) else paddle.to_tensor(list(index), dtype="int64")
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, paddle.Tensor):
                value = paddle.index_select(value, idx, axis=0)
            elif isinstance(value, list):
                value = [value[int(i)] for i in idx.tolist()]
            out[f.name] = value
        return Experience(**out)

    def split(self, micro_batch_size: int) -> List["Experience"]:
        """Consecutive chunks of ``micro_batch_size`` rows (the last one may be smaller)."""
        n = len(self)
        return [self.select(list(range(s, min(s + micro_batch_size, n)))) for s in range(0, n, micro_batch_size)]

    def replace(self, **changes) -> "Experience":
        return replace(self, **changes)


def concat_rollouts(batches: Sequence[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Join rollout chunks of different prompt/response widths into one (re-padding both sides)."""
    if len(batches) == 1:
        return batches[0]
    p_max = max(b.prompt_length for b in batches)
    r_max = max(b.response_mask.shape[1] for b in batches)
    seqs, masks, resp = [], [], []
    for b in batches:
        left, right = p_max - b.prompt_length, r_max - b.response_mask.shape[1]
        n = b.sequences.shape[0]
        seqs.append(
            paddle.concat(
                [
                    paddle.full([n, left], pad_token_id, dtype="int64"),
                    b.sequences,
                    paddle.full([n, right], pad_token_id, dtype="int64"),
                ],
                axis=1,
            )
        )
        zl, zr = paddle.zeros([n, left], dtype="int64"), paddle.zeros([n, right], dtype="int64")
        masks.append(paddle.concat([zl, b.attention_mask.astype("int64"), zr], axis=1))
        resp.append(paddle.concat([b.response_mask.astype("int64"), zr], axis=1))
    mask = paddle.concat(masks)

    def _join(attr):
        parts = [getattr(b, attr) for b in batches]
        return None if any(p is None for p in parts) else [x for p in parts for x in p]

    return RolloutBatch(
        sequences=paddle.concat(seqs),
        attention_mask=mask,
        position_ids=make_position_ids(mask),
        response_mask=paddle.concat(resp),
        prompt_length=p_max,
        group_ids=paddle.concat([b.group_ids for b in batches]),
        ended_with_eos=paddle.concat([b.ended_with_eos for b in batches]),
        prompts=_join("prompts"),
        answers=_join("answers"),
    )


def _chunks(n: int, size: int) -> Iterator[slice]:
    size = max(1, int(size))
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


def response_logps(
    model: paddle.nn.Layer,
    sequences: paddle.Tensor,
    attention_mask: paddle.Tensor,
    position_ids: paddle.Tensor,
    prompt_length: int,
    response_mask: paddle.Tensor,
    temperature: float = 1.0,
    return_logits: bool = False,
):
    """Response-aligned log-probs (N, R) of ``sequences[:, P:]`` under ``model`` (graph kept if grads are on).

    With ``return_logits`` also returns the response-aligned logits (N, R, V) divided by ``temperature``
    (for an entropy bonus). Without it, a model the chunked LM head applies to (``chunked_response_logps``)
    never builds the (N, T, V) logits.
    """
    if not return_logits:
        scored = chunked_response_logps(model, sequences, attention_mask, position_ids, prompt_length, response_mask,
                                        temperature)
        if scored is not None:
            return scored
    out = model(
        input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids, return_dict=True
    )
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits_response_logps(logits, sequences, prompt_length, response_mask, temperature, return_logits)


def chunked_response_logps(model, sequences: paddle.Tensor, attention_mask: paddle.Tensor,
                           position_ids: Optional[paddle.Tensor], prompt_length: int, response_mask: paddle.Tensor,
                           temperature: float = 1.0, with_entropy: bool = False):
    """``response_logps`` through the decoder and the chunked LM head (Liger's approach, arXiv 2410.10989;
    ``alignment.ops.linear_completion_logps``): only the hidden rows P - 1 .. P + R - 2 of the response tokens
    that ``response_mask`` keeps are multiplied by the head, a chunk at a time, so neither the (N, T, V)
    logits nor their gradient are held. With ``with_entropy`` a pair (log-probs, entropy of
    softmax(logits / temperature)), both (N, R), 0 on pads, differentiable. None where the chunked head does
    not apply (``alignment.training.logps.chunked_head``: another architecture, tensor parallel, a wrapper,
    ``use_fusemt`` off; or under ``auto_cast``): the caller takes the logits path."""
    width = response_mask.shape[1]
    labels = sequences[:, prompt_length : prompt_length + width]
    labels = paddle.where(response_mask.astype("bool"), labels, paddle.full_like(labels, -100))  # pads: skipped
    return chunked_token_logps(model, sequences, attention_mask, position_ids, labels, offset=prompt_length - 1,
                               temperature=temperature, with_entropy=with_entropy)


def chunked_token_logps(model, input_ids: paddle.Tensor, attention_mask: paddle.Tensor,
                        position_ids: Optional[paddle.Tensor], labels: paddle.Tensor, *, offset: int = 0,
                        temperature: float = 1.0, with_entropy: bool = False):
    """Log-probs (N, T) of ``labels`` (``labels[:, t]`` scored at position ``offset + t``, negative ids skipped
    and 0) through the decoder of ``model`` and the chunked LM head (arXiv 2410.10989), with the entropies
    too under ``with_entropy``; None where the chunked head does not apply. ``position_ids`` None: the causal
    LM's default (0 .. L-1), as its own forward would use."""
    from alignment.ops import linear_logps

    head = _chunked_head(model)
    if head is None:
        return None
    hidden = head.hidden(input_ids, attention_mask, _positions(position_ids, input_ids))
    return linear_logps.linear_completion_logps(hidden, head.weight, labels, transpose_y=head.transpose_y,
                                                temperature=temperature, offset=offset, with_entropy=with_entropy)


def _chunked_head(model):
    """``alignment.training.logps.chunked_head(model)`` (None under ``auto_cast`` too)."""
    from alignment.training.logps import chunked_head

    return chunked_head(model)


def _positions(position_ids: Optional[paddle.Tensor], input_ids: paddle.Tensor) -> paddle.Tensor:
    """The position ids a causal LM's forward uses: the given ones, else 0 .. L-1 in every row (its default)."""
    if position_ids is not None:
        return position_ids
    n, length = input_ids.shape
    return paddle.arange(length, dtype="int64").unsqueeze(0).expand([n, length])


def logits_response_logps(logits: paddle.Tensor, sequences: paddle.Tensor, prompt_length: int,
                          response_mask: paddle.Tensor, temperature: float = 1.0, return_logits: bool = False):
    """``response_logps`` from the full-sequence logits (N, T, V) already computed (a pipeline's last stage)."""
    width = response_mask.shape[1]  # R; columns past P + R (padding added by a pipeline cycle) are ignored
    labels = sequences[:, prompt_length : prompt_length + width]
    from alignment import ops

    if not return_logits and ops.fused_applies(logits):  # the op reads the window in place: no sliced copy
        logps = ops.completion_logps(logits, labels, temperature=temperature, offset=prompt_length - 1)[0]
        return logps * response_mask.astype(logps.dtype)
    logits = logits[:, prompt_length - 1 : prompt_length - 1 + width]
    logps = gather_logps(logits, labels, temperature)
    logps = logps * response_mask.astype(logps.dtype)
    if return_logits:
        return logps, (logits / temperature if temperature != 1.0 else logits)
    return logps


def _scores_2d(out) -> paddle.Tensor:
    scores = out if isinstance(out, paddle.Tensor) else out.scores if hasattr(out, "scores") else out[0]
    if scores.ndim == 3:
        scores = scores[..., 0]
    return scores.astype("float32")


def _main_output(out) -> paddle.Tensor:
    """The logits (causal LM) or per-token scores (score model) of a forward pass's output."""
    if isinstance(out, paddle.Tensor):
        return out
    for name in ("logits", "scores"):
        if hasattr(out, name):
            return getattr(out, name)
    return out[0]


def map_micro_batches(model, reduce: Callable[[paddle.Tensor, slice], paddle.Tensor], input_ids: paddle.Tensor,
                      attention_mask: paddle.Tensor, position_ids: paddle.Tensor, micro_batch_size: int
                      ) -> paddle.Tensor:
    """``reduce(logits or scores, row slice)`` of every micro-batch of rows, concatenated (no autograd graph).

    A pipeline-parallel frozen model (``alignment.models.pipeline.FrozenPipeline``, which has its own
    ``map_micro_batches``) runs the micro-batches as one pipelined pass and reduces on its last stage.
    """
    if hasattr(model, "map_micro_batches"):
        return model.map_micro_batches(reduce, input_ids, attention_mask, position_ids, micro_batch_size)
    parts = []
    with eval_mode(model):
        for sl in _chunks(int(input_ids.shape[0]), micro_batch_size):
            out = model(input_ids=input_ids[sl], attention_mask=attention_mask[sl], position_ids=position_ids[sl])
            parts.append(reduce(_main_output(out), sl))
    return paddle.concat(parts)


def response_values(
    critic: paddle.nn.Layer,
    sequences: paddle.Tensor,
    attention_mask: paddle.Tensor,
    position_ids: paddle.Tensor,
    prompt_length: int,
    response_mask: paddle.Tensor,
) -> paddle.Tensor:
    """Response-aligned critic values (N, R): the score at position P + j - 1, zeroed on pads."""
    out = critic(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids)
    return scores_response_values(_scores_2d(out), prompt_length, response_mask)


def scores_response_values(scores: paddle.Tensor, prompt_length: int, response_mask: paddle.Tensor) -> paddle.Tensor:
    """``response_values`` from per-token scores (N, T) already computed (a pipeline's last stage)."""
    width = response_mask.shape[1]
    values = scores.astype("float32")[:, prompt_length - 1 : prompt_length - 1 + width]
    return values * response_mask.astype(values.dtype)


class Retokenizer:
    """Re-encode actor rollouts for a reward model whose tokenizer differs from the actor's.

    Each row's real tokens are decoded with the actor tokenizer (special tokens dropped), re-encoded with
    the reward tokenizer, the reward tokenizer's EOS is appended when the row ended with EOS, and the
    batch is right padded with the reward tokenizer's pad id.
    """

    def __init__(self, actor_tokenizer, reward_tokenizer, max_length: Optional[int] = None):
        self.actor_tokenizer = actor_tokenizer
        self.reward_tokenizer = reward_tokenizer
        self.max_length = max_length
        pad = reward_tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else reward_tokenizer.eos_token_id

    @staticmethod
    def needed(actor_tokenizer, reward_tokenizer) -> bool:
        """True when the two tokenizers do not map text to the same ids."""
        if actor_tokenizer is None or reward_tokenizer is None or actor_tokenizer is reward_tokenizer:
            return False
        if type(actor_tokenizer) is not type(reward_tokenizer):
            return True
        return actor_tokenizer.get_vocab() != reward_tokenizer.get_vocab()

    def __call__(self, rollout_sequences: paddle.Tensor, attention_mask: paddle.Tensor, ended_with_eos):
        rows, ends = [], []
        ids_np, mask_np = rollout_sequences.numpy(), attention_mask.numpy()
        eos_np = ended_with_eos.numpy()
        for ids, mask, eos in zip(ids_np, mask_np, eos_np):
            text = self.actor_tokenizer.decode([int(t) for t, m in zip(ids, mask) if m], skip_special_tokens=True)
            enc = self.reward_tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"]
            if eos and self.reward_tokenizer.eos_token_id is not None:
                enc = list(enc) + [self.reward_tokenizer.eos_token_id]
            if self.max_length is not None and len(enc) > self.max_length:
                enc = enc[-self.max_length :]  # keep the response end, where the score is read
            rows.append(enc)
            ends.append(len(enc) - 1)
        width = max(len(r) for r in rows)
        input_ids = paddle.to_tensor([r + [self.pad_id] * (width - len(r)) for r in rows], dtype="int64")
        mask = paddle.to_tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype="int64")
        return input_ids, mask, make_position_ids(mask), paddle.to_tensor(ends, dtype="int64")


def reward_scores(
    rollout: RolloutBatch,
    *,
    reward_model: Optional[paddle.nn.Layer] = None,
    reward_fn: Optional[RewardFn] = None,
    retokenizer: Optional[Retokenizer] = None,
    micro_batch_size: int = 8,
) -> paddle.Tensor:
    """Scalar reward per row (N,) float32, read at the row's last real token (EOS when it stopped)."""
    if (reward_model is None) == (reward_fn is None):
        raise ValueError("reward_scores: give exactly one of reward_model or reward_fn")
    n = rollout.sequences.shape[0]
    if reward_fn is not None:
        scores = reward_fn(
            rollout.sequences, rollout.attention_mask, rollout.prompts, rollout.answers,
            **_extra_kwargs(reward_fn, rollout),
        )
        scores = paddle.to_tensor(scores, dtype="float32") if not isinstance(scores, paddle.Tensor) else scores
        scores = scores.astype("float32").reshape([-1])
        if scores.shape[0] != n:
            raise ValueError(f"reward_fn returned {scores.shape[0]} scores for {n} rows")
        return scores
    if retokenizer is not None:
        ids, mask, pos, end = retokenizer(rollout.sequences, rollout.attention_mask, rollout.ended_with_eos)
    else:
        ids, mask, pos = rollout.sequences, rollout.attention_mask, rollout.position_ids
        end = rollout.prompt_length + rollout.response_lengths.astype("int64") - 1
    def at_end(scores, sl):
        return paddle.take_along_axis(_scores_2d(scores), end[sl].unsqueeze(-1), axis=-1).squeeze(-1)

    return map_micro_batches(reward_model, at_end, ids, mask, pos, micro_batch_size)


def token_reward_scores(
    rollout: RolloutBatch,
    *,
    reward_model: Optional[paddle.nn.Layer] = None,
    reward_fn: Optional[RewardFn] = None,
    micro_batch_size: int = 8,
) -> paddle.Tensor:
    """Per-token rewards (N, R) float32, response-aligned, 0 on pads (``reward_granularity: token``).

    A reward model (token-wise, with the actor's tokenizer) gives column j the score at position P + j, i.e.
    after reading response token j; a ``reward_fn`` must return (N, R) values itself (a list, array or tensor).
    """
    if (reward_model is None) == (reward_fn is None):
        raise ValueError("token_reward_scores: give exactly one of reward_model or reward_fn")
    mask = rollout.response_mask.astype("float32")
    n, width = int(mask.shape[0]), int(mask.shape[1])
    if reward_fn is not None:
        values = reward_fn(rollout.sequences, rollout.attention_mask, rollout.prompts, rollout.answers,
                           **_extra_kwargs(reward_fn, rollout))
        values = paddle.to_tensor(values, dtype="float32") if not isinstance(values, paddle.Tensor) else values
        if list(values.shape) != [n, width]:
            raise ValueError(f"reward_granularity='token': the reward function must return per-token values of shape "
                             f"(N, R) = ({n}, {width}); got {list(values.shape)}")
        return values.astype("float32") * mask
    p = rollout.prompt_length

    def window(scores, sl):
        return _scores_2d(scores)[:, p: p + width] * mask[sl]

    return map_micro_batches(reward_model, window, rollout.sequences, rollout.attention_mask, rollout.position_ids,
                             micro_batch_size)


def make_experience(
    rollout: RolloutBatch,
    *,
    actor: paddle.nn.Layer,
    reference: Optional[paddle.nn.Layer],
    reward_model: Optional[paddle.nn.Layer] = None,
    reward_fn: Optional[RewardFn] = None,
    critic: Optional[paddle.nn.Layer] = None,
    temperature: float = 1.0,
    micro_batch_size: int = 8,
    retokenizer: Optional[Retokenizer] = None,
    scores: Optional[paddle.Tensor] = None,
) -> Experience:
    """Old/ref log-probs, reward scores and critic values of ``rollout`` in micro-batches of ``micro_batch_size``.

    ``scores`` (N,) already computed (named reward functions, dynamic sampling) replace the reward pass.

    Models should be the plain (unwrapped) layers; every pass runs in eval mode under ``no_grad``.
    ``reference=None`` skips the reference pass (``ref_logps`` None: no KL term possible).
    The actor's and (an ordinary model's) reference's log-probs go through the chunked LM head where it
    applies (``chunked_response_logps``), else through the logits.
    """
    n = rollout.sequences.shape[0]
    p = rollout.prompt_length
    resp_mask = rollout.response_mask.astype("float32")
    seq, mask, pos = rollout.sequences, rollout.attention_mask, rollout.position_ids
    old, val = [], []
    models = [m for m in (actor, critic) if m is not None]
    with eval_mode(*models):
        for sl in _chunks(n, micro_batch_size):
            args = (seq[sl], mask[sl], pos[sl], p, resp_mask[sl])
            old.append(response_logps(actor, *args, temperature=temperature))
            if critic is not None:
                val.append(response_values(critic, *args))
    ref_logps = None
    if reference is not None and not hasattr(reference, "map_micro_batches") \
            and _chunked_head(reference) is not None:
        with eval_mode(reference):  # an ordinary model: the chunked LM head, as the actor's pass
            ref_logps = paddle.concat([response_logps(reference, seq[sl], mask[sl], pos[sl], p, resp_mask[sl],
                                                      temperature=temperature) for sl in _chunks(n, micro_batch_size)])
    elif reference is not None:
        def ref_reduce(logits, sl):
            return logits_response_logps(logits, seq[sl], p, resp_mask[sl], temperature)

        ref_logps = map_micro_batches(reference, ref_reduce, seq, mask, pos, micro_batch_size)
    if scores is None:
        scores = reward_scores(
            rollout,
            reward_model=reward_model,
            reward_fn=reward_fn,
            retokenizer=retokenizer,
            micro_batch_size=micro_batch_size,
        )
    return Experience(
        sequences=seq,
        attention_mask=mask,
        position_ids=pos,
        response_mask=resp_mask,
        prompt_length=p,
        group_ids=rollout.group_ids,
        old_logps=paddle.concat(old),
        ref_logps=ref_logps,
        scores=scores,
        values=paddle.concat(val) if val else None,
        prompts=rollout.prompts,
        answers=rollout.answers,
    )

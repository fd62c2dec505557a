"""Batched generation with a KV cache: the rollout's decode loop over a PaddleNLP causal LM.

Our own loop (not ``model.generate``) so that every convention the RL maths relies on is explicit:

* prompts arrive LEFT padded (``PromptOnlyBatch``); each prompt is repeated ``num_return_sequences``
  times next to itself (``repeat_interleave``) and every copy carries the prompt's group id, so the
  samples of one prompt are contiguous and a group is never split (GRPO/RLOO need whole groups);
* the model always gets an explicit 2-D ``attention_mask`` (PaddleNLP on CPU fails without one) and
  explicit ``position_ids`` (0 on left pads, 0.. on real tokens, +1 per decoded token), so a left-padded
  row computes exactly what the unpadded prompt would;
* one prefill pass fills the cache (``use_cache=True``), then one token per step (``decoding``: the
  model's forward with ``past_key_values``, or, for Llama/Qwen2 with ``use_fusemt`` on, the lean fused
  step over a preallocated KV cache with the ``decode_attention`` operator -- same tokens);
* the token ids and the attention mask live in preallocated (N, P + max_new) buffers written one column
  per step (no concatenation; the sampler sees the full width, the columns not generated yet are pads
  with mask 0), so the per-step Python work does not grow with the batch or the length;
* the next token comes from ONE replaceable function, ``sampling.get_sampler(config.sampler)``; under
  tensor parallelism the last position's vocabulary-parallel logits are gathered (B, V) for it, and the
  sampled ids of tensor-parallel rank 0 are broadcast so all ranks of a model continue the same sequence;
* a row stops at its first EOS (any id of ``eos_token_ids``); the EOS is kept and everything after it
  is ``pad_token_id`` with attention 0; the loop ends when every row has stopped or after
  ``max_new_tokens`` (capped by ``max_length`` total tokens); the stop decision goes through
  ``ParallelStrategy.all_done`` so that all ranks stop together. ``min_new_tokens`` forbids EOS before it;
  ``repetition_penalty``, ``frequency_penalty`` and ``presence_penalty`` follow PaddleNLP's
  get_token_penalty_multi_scores (the last two are passed to the sampler only when non-zero).

Output layout: ``sequences = [left pads | prompt | response | right pads]`` of width ``P + R`` where
``P`` is the padded prompt width and ``R`` the number of decode steps run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import paddle

from alignment.parallel import ParallelStrategy

from .decoding import make_decoder
from .sampling import get_sampler

__all__ = ["GenerationConfig", "RolloutBatch", "generate", "make_position_ids", "eval_mode"]


@dataclass
class GenerationConfig:
    """Decoding settings of one rollout (validated on construction)."""

    eos_token_ids: Tuple[int, ...] = field(default=(2,), metadata={"help": "ids that end a response"})
    pad_token_id: int = field(default=0, metadata={"help": "id written after EOS (must not be an EOS id)"})
    max_new_tokens: int = field(default=16, metadata={"help": "most response tokens per row"})
    min_new_tokens: int = field(default=0, metadata={"help": "EOS is forbidden before this many tokens"})
    max_length: Optional[int] = field(default=None, metadata={"help": "cap on prompt width + response"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature (> 0)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass in (0, 1]; 1 = off"})
    top_k: int = field(default=0, metadata={"help": "keep the k best tokens; 0 = off"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "CTRL repetition penalty; 1 = off"})
    frequency_penalty: float = field(default=0.0, metadata={"help": "logit -= count * this for tokens seen; 0 = off"})
    presence_penalty: float = field(default=0.0, metadata={"help": "logit -= this for tokens seen; 0 = off"})
    do_sample: bool = field(default=True, metadata={"help": "sample (True) or greedy (False)"})
    num_return_sequences: int = field(default=1, metadata={"help": "samples per prompt (group size)"})
    sampler: str = field(default="default", metadata={"help": "registered name of the per-step sampler"})

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_ids, int):
            self.eos_token_ids = (self.eos_token_ids,)
        self.eos_token_ids = tuple(int(i) for i in self.eos_token_ids)
        if not self.eos_token_ids:
            raise ValueError("GenerationConfig.eos_token_ids must name at least one id")
        if self.pad_token_id in self.eos_token_ids:
            raise ValueError(
                f"GenerationConfig.pad_token_id ({self.pad_token_id}) equals an EOS id; use a distinct pad token "
                "so a generated EOS is never mistaken for padding"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"GenerationConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"GenerationConfig.min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )
        if self.temperature <= 0:
            raise ValueError(f"GenerationConfig.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"GenerationConfig.top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"GenerationConfig.repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"GenerationConfig.{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.num_return_sequences < 1:
            raise ValueError(f"GenerationConfig.num_return_sequences must be >= 1, got {self.num_return_sequences}")
        get_sampler(self.sampler)  # unknown names list the valid ones


@dataclass
class RolloutBatch:
    """What generation hands to experience making. N = prompts * num_return_sequences rows."""

    sequences: paddle.Tensor  # (N, P+R) int64: [left pads | prompt | response | right pads]
    attention_mask: paddle.Tensor  # (N, P+R) int64: 1 on prompt and response tokens (EOS included), 0 on pads
    position_ids: paddle.Tensor  # (N, P+R) int64: 0 on left pads, 0.. on real tokens, plateau on right pads
    response_mask: paddle.Tensor  # (N, R) int64: 1 on response tokens up to and including EOS, 0 on pads
    prompt_length: int  # P, the padded prompt width; the response of every row starts at column P
    group_ids: paddle.Tensor  # (N,) int64: rows of one prompt share an id (contiguous runs of n)
    ended_with_eos: paddle.Tensor  # (N,) bool: True if the row stopped at an EOS, False if cut by the length limit
    prompts: Optional[List[str]] = None  # (N,) prompt texts repeated like the rows, when the batch had them
    answers: Optional[List[Optional[str]]] = None  # (N,) reference answers repeated like the rows

    @property
    def response_lengths(self) -> paddle.Tensor:  # (N,) int64, EOS counted
        return self.response_mask.sum(axis=-1)

    @property
    def responses(self) -> paddle.Tensor:  # (N, R) int64
        return self.sequences[:, self.prompt_length :]


def make_position_ids(attention_mask: paddle.Tensor) -> paddle.Tensor:
    """0 on left pads, 0, 1, 2, ... on real tokens, constant over right pads. (B, L) -> (B, L) int64."""
    mask = attention_mask.astype("int64")
    return paddle.clip(paddle.cumsum(mask, axis=-1) - 1, min=0)


@contextlib.contextmanager
def eval_mode(*models) -> Iterator[None]:
    """Run with dropout off and no autograd graph; restore each model's train/eval state afterwards."""
    states = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with paddle.no_grad():
            yield
    finally:
        for m, was_training in zip(models, states):
            if was_training:
                m.train()


def generate(
    model: paddle.nn.Layer,
    input_ids: paddle.Tensor,
    attention_mask: paddle.Tensor,
    config: GenerationConfig,
    *,
    position_ids: Optional[paddle.Tensor] = None,
    group_offset: int = 0,
    prompts: Optional[Sequence[str]] = None,
    answers: Optional[Sequence[Optional[str]]] = None,
) -> RolloutBatch:
    """Sample ``config.num_return_sequences`` responses for each left-padded prompt.

    model: a PaddleNLP causal LM (unwrapped: not a DataParallel wrapper); input_ids, attention_mask:
    (B, P) left padded. ``group_offset`` is added to the prompt index to make group ids unique across
    the calls of one rollout. Runs under ``no_grad`` in eval mode; the model's mode is restored.
    """
    if input_ids.ndim != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"generate: input_ids and attention_mask must be (B, P) of the same shape, got "
            f"{input_ids.shape} and {attention_mask.shape}"
        )
    n = config.num_return_sequences
    batch, prompt_len = input_ids.shape
    attention_mask = attention_mask.astype("int64")
    if n > 1:
        input_ids = paddle.repeat_interleave(input_ids, n, axis=0)
        attention_mask = paddle.repeat_interleave(attention_mask, n, axis=0)
        position_ids = None if position_ids is None else paddle.repeat_interleave(position_ids, n, axis=0)
    if position_ids is None:
        position_ids = make_position_ids(attention_mask)
    max_new = config.max_new_tokens
    if config.max_length is not None:
        max_new = min(max_new, config.max_length - prompt_len)
        if max_new < 1:
            raise ValueError(
                f"generate: prompt width {prompt_len} leaves no room under max_length={config.max_length}"
            )
    sample = get_sampler(config.sampler)
    penalties = {}  # passed only when set, so samplers written for the older signature keep working
    if config.frequency_penalty:
        penalties["frequency_penalty"] = config.frequency_penalty
    if config.presence_penalty:
        penalties["presence_penalty"] = config.presence_penalty
    strategy = ParallelStrategy.current()
    rows, width = batch * n, prompt_len + max_new
    eos_ids = paddle.to_tensor(list(config.eos_token_ids), dtype="int64")
    pad = paddle.full([rows], config.pad_token_id, dtype="int64")
    banned = None  # (1, V) EOS mask, built on the first step that needs it

    # preallocated [prompt | response] buffers, written one column per step (never concatenated)
    seq_buf = paddle.full([rows, width], config.pad_token_id, dtype="int64")
    mask_buf = paddle.zeros([rows, width], dtype="int64")
    seq_buf[:, :prompt_len] = input_ids
    mask_buf[:, :prompt_len] = attention_mask
    finished = paddle.zeros([rows], dtype="bool")
    next_pos = position_ids[:, -1] + 1
    steps = 0
    with eval_mode(model):
        decoder = make_decoder(model, width)
        try:
            logits = decoder.prefill(input_ids, attention_mask, position_ids)
            for step in range(max_new):
                column = prompt_len + step
                if step < config.min_new_tokens:
                    banned = _eos_mask(logits.shape[-1], eos_ids) if banned is None else banned
                    logits = paddle.where(banned, paddle.full_like(logits, float("-inf")), logits)
                ids = sample(
                    logits,
                    seq_buf,  # full width: the columns not yet generated are pads with mask 0
                    generated_mask=mask_buf,
                    temperature=config.temperature,
                    top_p=config.top_p,
                    top_k=config.top_k,
                    repetition_penalty=config.repetition_penalty,
                    do_sample=config.do_sample,
                    **penalties,
                )
                ids = strategy.tensor_parallel_broadcast(ids)  # tensor-parallel ranks keep one sample
                alive = paddle.logical_not(finished)
                ids = paddle.where(alive, ids, pad)
                seq_buf[:, column] = ids
                mask_buf[:, column] = alive.astype("int64")
                finished = paddle.logical_or(finished, paddle.isin(ids, eos_ids))
                steps = step + 1
                # every rank must agree to stop (sharding stage 3 gathers parameters in each forward)
                if strategy.all_done(bool(finished.all())) or step == max_new - 1:
                    break
                logits = decoder.step(ids, mask_buf, next_pos, column)
                next_pos = next_pos + 1
        finally:
            decoder.close()
    full_mask = mask_buf[:, : prompt_len + steps].contiguous()
    response_mask = full_mask[:, prompt_len:].contiguous()
    group_ids = paddle.repeat_interleave(paddle.arange(batch, dtype="int64") + group_offset, n, axis=0)
    return RolloutBatch(
        sequences=seq_buf[:, : prompt_len + steps].contiguous(),
        attention_mask=full_mask,
        position_ids=make_position_ids(full_mask),
        response_mask=response_mask,
        prompt_length=prompt_len,
        group_ids=group_ids,
        ended_with_eos=finished,
        prompts=None if prompts is None else [p for p in prompts for _ in range(n)],
        answers=None if answers is None else [a for a in answers for _ in range(n)],
    )


def _eos_mask(vocab: int, eos_ids: paddle.Tensor) -> paddle.Tensor:
    """(1, V) bool: True on the EOS ids (their logits are set to -inf before ``min_new_tokens``)."""
    banned = paddle.scatter(paddle.zeros([vocab], dtype="int64"), eos_ids, paddle.ones_like(eos_ids))
    return banned.astype("bool").unsqueeze(0)

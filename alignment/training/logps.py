"""Completion log-probabilities of a causal LM, shared by the DPO, KTO and GKD stages.

A sequence log-prob is the **sum** over completion tokens (labels != -100 after the causal shift,
EOS included) of ``log softmax(logits)[label]`` computed in float32; prompt and padding are masked.
Chosen and rejected go through **one** forward pass of 2B rows (``concat_pair``) so the two halves
see the same weights, dropout pattern aside, and the model is called once per step.

    out = completion_logps(model, input_ids, attention_mask, labels)   # CompletionLogps
    pair = policy_pair_logps(model, batch, ld_alpha=None)             # PairForward

Shapes: N rows, L padded length, V vocabulary. Token-level outputs are (N, L-1): position t scores
token t+1.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import paddle

from alignment.algorithms.utils import gather_logps
from alignment.data.batches import IGNORE_INDEX, PreferenceBatch

__all__ = [
    "token_logps",
    "CompletionLogps",
    "PairForward",
    "position_ids_from_mask",
    "model_logits",
    "ChunkedHead",
    "chunked_head",
    "completion_logps",
    "concat_pair",
    "split_pair",
    "logits_completion_logps",
    "policy_pair_logps",
    "reference_logps",
    "reference_pair_logps",
    "reference_context",
    "resident",
]


@dataclass
class CompletionLogps:
    """Per-row completion log-probs of one forward pass."""

    token_logps: paddle.Tensor  # (N, L-1) float32, 0 outside the completion
    mask: paddle.Tensor  # (N, L-1) float32, 1 on completion tokens (labels[:, 1:] != -100)
    logps: paddle.Tensor  # (N,) float32, summed over completion tokens
    lengths: paddle.Tensor  # (N,) float32, number of completion tokens
    logits: Optional[paddle.Tensor] = None  # (N, L, V) when asked for (GKD)


@dataclass
class PairForward:
    """Chosen/rejected halves of one 2B-row forward pass (policy or reference)."""

    chosen: paddle.Tensor  # (B,) summed (or LD-weighted) completion log-probs
    rejected: paddle.Tensor  # (B,)
    chosen_lengths: paddle.Tensor  # (B,) float32 completion token counts
    rejected_lengths: paddle.Tensor  # (B,)
    chosen_nll: paddle.Tensor  # () token-mean NLL over every chosen completion token of the batch


def position_ids_from_mask(attention_mask: paddle.Tensor) -> paddle.Tensor:
    """0, 1, 2, ... over real tokens (left pads get 0), so left- and right-padded rows both work."""
    mask = attention_mask.astype("int64")
    return paddle.clip(paddle.cumsum(mask, axis=-1) - 1, min=0)


def model_logits(model, input_ids: paddle.Tensor, attention_mask: paddle.Tensor) -> paddle.Tensor:
    """(N, L, V) logits of a PaddleNLP causal LM (plain or LoRA-wrapped)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        return_dict=True,
    )
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out[0] if isinstance(out, (tuple, list)) else out
    return logits


def completion_logps(
    model,
    input_ids: paddle.Tensor,
    attention_mask: paddle.Tensor,
    labels: paddle.Tensor,
    *,
    temperature: float = 1.0,
    return_logits: bool = False,
) -> CompletionLogps:
    """Forward ``input_ids`` (N, L) once and score the completion tokens marked by ``labels`` (N, L).

    With ``use_fusemt`` on (and the operator library built) a Llama/Qwen2 causal LM outside tensor
    parallelism (plain or LoRA-wrapped) runs its decoder here and scores the hidden states with the
    chunked LM head (``alignment.ops.linear_completion_logps``): the (N, L, V) logits are never held.
    """
    if not return_logits:
        per_token = _chunked_head_logps(model, input_ids, attention_mask, labels[:, 1:], temperature)
        if per_token is not None:
            mask = (labels[:, 1:] != IGNORE_INDEX).astype("float32")
            per_token = per_token * mask
            return CompletionLogps(token_logps=per_token, mask=mask, logps=per_token.sum(axis=-1),
                                   lengths=mask.sum(axis=-1))
    return logits_completion_logps(model_logits(model, input_ids, attention_mask), labels,
                                   temperature=temperature, return_logits=return_logits)


@dataclass(frozen=True)
class ChunkedHead:
    """A causal LM split into its decoder and its LM head, for losses that apply the head chunk by chunk."""

    decoder: object  # the LlamaModel / Qwen2Model under the causal LM
    weight: paddle.Tensor  # (H, V), or (V, H) with transpose_y (a head tied to the embedding)
    transpose_y: bool

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0] if self.transpose_y else self.weight.shape[1])

    def hidden(self, input_ids: paddle.Tensor, attention_mask: paddle.Tensor,
               position_ids: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """(N, L, H) final hidden states (after the final norm): what the head turns into logits."""
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False, return_dict=True)
        return out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state


def chunked_head(model) -> Optional[ChunkedHead]:
    """The decoder and LM head of ``model`` where a chunked-head loss applies, else None: ``use_fusemt`` on and
    the operator library built, a Llama/Qwen2 causal LM (plain or LoRA-wrapped, no other wrapper), outside
    tensor / sequence parallelism, a float32 head that is not a sharding-stage-3 slice, and not under
    ``auto_cast`` (the head's matmul would give 16-bit logits there, which the fused operator does not take)."""
    from alignment import ops
    from alignment.ops.linear_logps import causal_lm_parts

    if paddle.amp.is_autocast_enabled():
        return None
    parts = causal_lm_parts(model)
    if parts is None or not ops.fused_available():
        return None
    lm, base = parts
    cfg, head = lm.config, getattr(lm, "lm_head", None)
    if (cfg.tensor_parallel_degree or 1) > 1 or getattr(cfg, "sequence_parallel", False) or head is None \
            or type(head).__name__ not in ("LlamaLMHead", "Qwen2LMHead") or head.weight.dtype != paddle.float32:
        return None
    if hasattr(head.weight, "fw_storage") or not head.weight._is_initialized():
        return None  # a sharding-stage-3 slice: only the head's own forward gathers the full weight
    return ChunkedHead(base, head.weight, bool(getattr(head, "transpose_y", False)))


def _chunked_head_logps(model, input_ids, attention_mask, targets, temperature) -> Optional[paddle.Tensor]:
    """(N, L-1) log-probs through the chunked LM head, or None where that path does not apply."""
    from alignment.ops.linear_logps import linear_completion_logps

    head = chunked_head(model)
    if head is None:
        return None
    return linear_completion_logps(head.hidden(input_ids, attention_mask), head.weight, targets,
                                   transpose_y=head.transpose_y, temperature=temperature)


def logits_completion_logps(
    logits: paddle.Tensor, labels: paddle.Tensor, *, temperature: float = 1.0, return_logits: bool = False
) -> CompletionLogps:
    """``completion_logps`` from logits already computed (e.g. on the last pipeline stage)."""
    targets = labels[:, 1:]
    mask = (targets != IGNORE_INDEX).astype("float32")
    # (N, L, V) logits with (N, L-1) targets: position t scores token t+1, and no strided slice is copied
    per_token = token_logps(logits, targets, temperature).astype("float32") * mask
    return CompletionLogps(
        token_logps=per_token,
        mask=mask,
        logps=per_token.sum(axis=-1),
        lengths=mask.sum(axis=-1),
        logits=logits if return_logits else None,
    )


def token_logps(logits: paddle.Tensor, labels: paddle.Tensor, temperature: float = 1.0) -> paddle.Tensor:
    """``log softmax(logits / T)[label]``; logits (N, L, V), labels (N, T <= L); see ``utils.gather_logps``."""
    return gather_logps(logits, labels, temperature)


def _pad_to(x: paddle.Tensor, length: int, value: int) -> paddle.Tensor:
    if x.shape[1] == length:
        return x
    pad = paddle.full([x.shape[0], length - x.shape[1]], value, dtype=x.dtype)
    return paddle.concat([x, pad], axis=1)


def concat_pair(
    batch: PreferenceBatch, pad_token_id: int = 0
) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Stack chosen over rejected: (2B, L) input_ids, attention_mask, labels (rows 0..B-1 are chosen)."""
    length = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    parts = []
    for key, value in (("input_ids", pad_token_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        c = _pad_to(batch[f"chosen_{key}"], length, value)
        r = _pad_to(batch[f"rejected_{key}"], length, value)
        parts.append(paddle.concat([c, r.astype(c.dtype)], axis=0))
    return parts[0], parts[1], parts[2]


def split_pair(out: CompletionLogps, ld_alpha: Optional[float]) -> PairForward:
    """The chosen (first B rows) / rejected (last B rows) halves of a 2B-row ``CompletionLogps``."""
    n = out.logps.shape[0] // 2
    chosen, rejected = out.logps[:n], out.logps[n:]
    if ld_alpha is not None:
        from alignment.algorithms.preference import ld_weighted_logps, pair_public_lengths

        public = pair_public_lengths(out.mask[:n], out.mask[n:])
        chosen = ld_weighted_logps(out.token_logps[:n], out.mask[:n], public, ld_alpha)
        rejected = ld_weighted_logps(out.token_logps[n:], out.mask[n:], public, ld_alpha)
    n_tokens = paddle.clip(out.lengths[:n].sum(), min=1.0)
    return PairForward(
        chosen=chosen,
        rejected=rejected,
        chosen_lengths=out.lengths[:n],
        rejected_lengths=out.lengths[n:],
        chosen_nll=-out.token_logps[:n].sum() / n_tokens,
    )


def policy_pair_logps(
    model, batch: PreferenceBatch, *, ld_alpha: Optional[float] = None, pad_token_id: int = 0
) -> PairForward:
    """One 2B-row forward of the policy. ``ld_alpha`` (LD-DPO) down-weights tokens past the shorter answer."""
    input_ids, attention_mask, labels = concat_pair(batch, pad_token_id)
    return split_pair(completion_logps(model, input_ids, attention_mask, labels), ld_alpha)


@contextlib.contextmanager
def resident(model) -> Iterator[None]:
    """A frozen model offloaded by ``offload_level freeze_model`` is on the device inside this scope only."""
    place = getattr(model, "residency", None)
    if place is not None:
        place("device")
    try:
        yield
    finally:
        if place is not None:
            place("host")


@contextlib.contextmanager
def reference_context(model) -> Iterator[None]:
    """No-grad, eval-mode scope (the model resident, see ``resident``); for a LoRA policy used as its own
    reference, adapters are switched off."""
    with resident(model), _reference_mode(model):
        yield


@contextlib.contextmanager
def _reference_mode(model) -> Iterator[None]:
    was_training = model.training
    lora = hasattr(model, "disable_lora") and hasattr(model, "enable_lora") and hasattr(model, "lora_config")
    model.eval()
    if lora:
        model.disable_lora()
    try:
        with paddle.no_grad():
            yield
    finally:
        if lora:
            model.enable_lora()
        if was_training:
            model.train()


def reference_logps(model, input_ids: paddle.Tensor, attention_mask: paddle.Tensor, labels: paddle.Tensor
                    ) -> paddle.Tensor:
    """(N,) summed completion log-probs of a frozen reference, no autograd graph.

    A pipeline-parallel frozen model (``alignment.models.pipeline.FrozenPipeline``) computes them on its
    last stage and hands them to every stage; the logits never leave that stage.
    """
    if hasattr(model, "map_micro_batches"):
        def reduce(logits, rows):
            return logits_completion_logps(logits, labels[rows]).logps

        return model.map_micro_batches(reduce, input_ids, attention_mask, position_ids_from_mask(attention_mask),
                                       micro_batch_size=int(input_ids.shape[0]))
    with reference_context(model):
        return completion_logps(model, input_ids, attention_mask, labels).logps.detach()


def reference_pair_logps(model, batch: PreferenceBatch, *, pad_token_id: int = 0) -> PairForward:
    """Plain summed log-probs of the reference (no LD weighting: ms-swift / LLaMA-Factory semantics)."""
    if hasattr(model, "map_micro_batches"):  # pipeline stages: only the per-row sums come back
        input_ids, attention_mask, labels = concat_pair(batch, pad_token_id)
        logps = reference_logps(model, input_ids, attention_mask, labels)
        lengths = (labels[:, 1:] != IGNORE_INDEX).astype("float32").sum(axis=-1)
        n = logps.shape[0] // 2
        return PairForward(chosen=logps[:n], rejected=logps[n:], chosen_lengths=lengths[:n],
                           rejected_lengths=lengths[n:], chosen_nll=-logps[:n].sum() / paddle.clip(lengths[:n].sum(), min=1.0))
    with reference_context(model):
        out = policy_pair_logps(model, batch, ld_alpha=None, pad_token_id=pad_token_id)
    parts = (out.chosen, out.rejected, out.chosen_lengths, out.rejected_lengths, out.chosen_nll)
    return PairForward(*(t.detach() for t in parts))

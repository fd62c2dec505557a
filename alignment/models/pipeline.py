"""Pipeline-parallel models: a decoder cut into ``PipelineLayer`` stages whose last stage computes the loss.

    criterion = PipeCriterion(lambda logits, labels: my_loss(logits, *labels))
    model = load_causal_lm_pipe("checkpoints/sft", criterion=criterion)          # LM head on the last stage
    rm = load_score_model_pipe("checkpoints/rm", criterion=criterion)            # score head instead
    inputs = pipeline_inputs(batches, first=("input_ids", "attention_mask", "position_ids"), labels=("labels",))

The stages reuse PaddleNLP's pipeline layers of each family (``LlamaForCausalLMPipe``,
``Qwen2ForCausalLMPipe``: embedding, decoder layers, final norm, LM head), so weights load from an ordinary
single-file checkpoint (split over the tensor-parallel ranks on load) and ``state_dict()`` uses the
single-model names. Two things are ours:

* the loss: ``PipeCriterion`` wraps a function of (last-stage output, label tensors) - the LM NLL, the
  reward-model pair loss, a preference loss, the PPO actor or critic loss - instead of PaddleNLP's
  pretraining criterion;
* the score head: for a score model (reward, cost, critic) the LM head is replaced by ``ScoreHeadPipe``,
  a ``Linear(hidden, score_dim)`` named ``score_head`` like ``ScoreModel``'s, giving per-token scores.

Micro-batches are passed as lists (one tensor per micro-batch), so a micro-batch may hold any number of rows
(a preference pair is two rows) and the last batch of an epoch may be short. ``pipeline_inputs`` pads the
micro-batches of one accumulation cycle to one sequence length and one row count, as the stage-to-stage
transfer expects (``cycle_inputs``; the criterion drops the filler rows).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import paddle
from paddle import nn

__all__ = ["PipeCriterion", "ScoreHeadPipe", "pipeline_inputs", "cycle_inputs", "real_rows", "stack_pairs", "pad_columns", "load_causal_lm_pipe", "load_score_model_pipe",
           "pipe_class", "is_pipeline_model", "single_architecture", "generation_copy", "FrozenPipeline",
           "frozen_causal_lm_pipe", "frozen_score_model_pipe"]

_PAD_VALUES = {"input_ids": 0, "attention_mask": 0, "labels": -100, "position_ids": 0}


class PipeCriterion(nn.Layer):
    """The last stage's loss: ``fn(output, labels)`` with ``labels`` the tuple of label tensors.

    The last label is the micro-batch's row count (``cycle_inputs`` appends it): rows past it are copies
    added so that every micro-batch of a cycle has one shape, and are cut from ``output`` before ``fn``.
    """

    def __init__(self, fn: Callable[[paddle.Tensor, tuple], paddle.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, output, labels):
        if not isinstance(labels, (tuple, list)):
            labels = (labels,)
        *labels, rows = labels
        return self.fn(real_rows(output, rows), tuple(labels))


def real_rows(output, rows):
    """``output`` (a tensor or a tuple of tensors, rows first) without the padding rows past ``rows``."""
    n = int(rows.reshape([-1])[0]) if isinstance(rows, paddle.Tensor) else int(rows)
    if isinstance(output, (tuple, list)):
        return type(output)(real_rows(o, n) for o in output)
    if isinstance(output, paddle.Tensor) and output.ndim >= 1 and output.shape[0] > n:
        return output[:n]
    return output


class ScoreHeadPipe(nn.Layer):
    """Last stage of a score model: final hidden states (B, L, H) -> per-token scores (B, L) or (B, L, D)."""

    def __init__(self, config, score_dim: int = 1, bias: bool = False):
        super().__init__()
        std = float(getattr(config, "initializer_range", 0.02) or 0.02)
        self.score_dim = int(score_dim)
        self.score_head = nn.Linear(
            config.hidden_size, self.score_dim,
            weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(mean=0.0, std=std)),
            bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)) if bias else False,
        )

    def forward(self, args):
        hidden = args[0] if isinstance(args, tuple) else args
        scores = self.score_head(hidden).astype("float32")
        return scores.squeeze(-1) if self.score_dim == 1 else scores


def _base_pipe_class(model_type: str):
    if model_type == "llama":
        from paddlenlp.transformers.llama.modeling_pp import LlamaForCausalLMPipe

        return LlamaForCausalLMPipe
    if model_type == "qwen2":
        from paddlenlp.transformers.qwen2.modeling_pp import Qwen2ForCausalLMPipe

        return Qwen2ForCausalLMPipe
    raise ValueError(
        f"pipeline_parallel_degree > 1 supports model_type llama and qwen2; this checkpoint is '{model_type}'"
    )


_PIPE_CLASSES: Dict[tuple, type] = {}
_POSITION_ADAPTERS: Dict[type, type] = {}


def _positions_third(layer_cls: type) -> type:
    """``layer_cls`` reading our stage tuple ``(hidden, mask, position_ids)``.

    Qwen2's pipeline layers read a 3-tuple as ``(hidden, mask, attn_mask_startend_row_indices)``, so position
    ids (which matter for left-padded rollouts) are handed over as the 4-tuple they expect.
    """
    if layer_cls not in _POSITION_ADAPTERS:
        def forward(self, args):
            if isinstance(args, tuple) and len(args) == 3:
                args = (args[0], args[1], None, args[2])
            return layer_cls.forward(self, args)

        _POSITION_ADAPTERS[layer_cls] = type(layer_cls.__name__, (layer_cls,), {"forward": forward})
    return _POSITION_ADAPTERS[layer_cls]


def pipe_class(model_type: str, *, score_head: Optional[Mapping[str, Any]] = None) -> type:
    """The PipelineLayer class of a family whose loss is the config's ``alignment_criterion``.

    With ``score_head`` ({"score_dim": D, "bias": b}) the LM head is replaced by ``ScoreHeadPipe``.
    """
    key = (model_type, None if score_head is None else tuple(sorted(score_head.items())))
    if key in _PIPE_CLASSES:
        return _PIPE_CLASSES[key]
    base = _base_pipe_class(model_type)
    from alignment.parallel import pipeline_layer_desc

    head = dict(score_head) if score_head is not None else None

    def get_loss_fn(self, config):
        criterion = getattr(config, "alignment_criterion", None)
        if criterion is None:
            raise ValueError("a pipeline model needs config.alignment_criterion (a PipeCriterion)")
        return criterion

    def add_sequential_layer(self, desc, name_prefix=""):
        if head is not None and name_prefix == "lm_head":
            desc, name_prefix = pipeline_layer_desc(ScoreHeadPipe, config=self.config, **head), ""
        elif model_type == "qwen2" and getattr(desc, "layer_func", None) is not None \
                and desc.layer_func.__name__ in ("Qwen2EmbeddingPipe", "Qwen2DecoderLayerPipe"):
            desc.layer_func = _positions_third(desc.layer_func)
        return base.add_sequential_layer(self, desc, name_prefix)

    name = base.__name__.replace("ForCausalLMPipe", "ForScorePipe" if head is not None else "ForAlignmentPipe")
    cls = type(name, (base,), {"get_loss_fn": get_loss_fn, "add_sequential_layer": add_sequential_layer})
    _PIPE_CLASSES[key] = cls
    return cls


def single_architecture(model) -> str:
    """The one-process class name of a model: ``LlamaForCausalLM`` for a Llama pipeline model too."""
    for cls in type(model).__mro__:
        name = cls.__name__
        if name.endswith("ForCausalLMPipe"):
            return name[: -len("Pipe")]
    return type(model).__name__


def is_pipeline_model(model) -> bool:
    from alignment.parallel import is_pipeline_layer

    while hasattr(model, "_layers") and not is_pipeline_layer(model):
        model = model._layers
    return is_pipeline_layer(model)


def _load(name_or_path: str, criterion: PipeCriterion, dtype: Any, score_head, config_overrides, **config_kw):
    from .loading import load_config, resolve_dtype, resolve_model_path

    dtype = resolve_dtype(dtype)
    config = load_config(name_or_path, dtype=dtype, overrides=config_overrides, **config_kw)
    if getattr(config, "tie_word_embeddings", False) and score_head is None:
        raise ValueError(
            f"'{name_or_path}' ties its input and output embeddings; pipeline parallelism here needs untied "
            "weights (tie_word_embeddings false)"
        )
    config.alignment_criterion = criterion
    cls = pipe_class(config.model_type, score_head=score_head)
    try:
        model = cls.from_pretrained(resolve_model_path(name_or_path), config=config, dtype=dtype)
    finally:
        del config.alignment_criterion  # read once by get_loss_fn; a config must stay JSON-serialisable
    model.alignment_criterion = criterion  # a trainer may bind its loss later (``criterion.fn = ...``)
    return model


def load_causal_lm_pipe(
    name_or_path: str, *, criterion: PipeCriterion, dtype: Any = None, use_flash_attention: Optional[bool] = None,
    recompute: Optional[bool] = None, config_overrides: Optional[Dict[str, Any]] = None,
):
    """A causal LM as pipeline stages (call after ``ParallelStrategy.init`` with pipeline_parallel_degree > 1)."""
    return _load(name_or_path, criterion, dtype, None, config_overrides, use_flash_attention=use_flash_attention,
                 recompute=recompute)


def load_score_model_pipe(
    name_or_path: str, *, criterion: PipeCriterion, dtype: Any = None, score_dim: int = 1, bias: bool = False,
    use_flash_attention: Optional[bool] = None, recompute: Optional[bool] = None,
    config_overrides: Optional[Dict[str, Any]] = None,
):
    """A score model (backbone + ``score_head``) as pipeline stages; the head loads from ``score_head.*``.

    A checkpoint without a head (an SFT model) starts a new head, as ``init_score_head=True`` does.
    """
    return _load(name_or_path, criterion, dtype, {"score_dim": int(score_dim), "bias": bool(bias)},
                 config_overrides, use_flash_attention=use_flash_attention, recompute=recompute)


def stack_pairs(batch: Mapping[str, paddle.Tensor], first: str = "chosen", second: str = "rejected"
                ) -> Dict[str, paddle.Tensor]:
    """A pair batch with ``input_ids`` / ``attention_mask`` of 2B rows: the B ``first`` rows, then the B
    ``second`` rows (both halves share one length L); the other entries pass through."""
    out = dict(batch)
    out["input_ids"] = paddle.concat([batch[f"{first}_input_ids"], batch[f"{second}_input_ids"]], axis=0)
    out["attention_mask"] = paddle.concat(
        [batch[f"{first}_attention_mask"], batch[f"{second}_attention_mask"]], axis=0)
    return out


def pad_columns(t: paddle.Tensor, length: int, value) -> paddle.Tensor:
    """``t`` (B, L, ...) right-padded along axis 1 to ``length`` with ``value`` (unchanged if 1-D or long enough)."""
    if t.ndim < 2 or t.shape[1] >= length:
        return t
    pad = paddle.full([t.shape[0], length - t.shape[1], *t.shape[2:]], value, dtype=t.dtype)
    return paddle.concat([t, pad], axis=1)


def pipeline_inputs(
    batches: Union[Mapping[str, paddle.Tensor], Sequence[Mapping[str, paddle.Tensor]]],
    *,
    first: Sequence[str],
    labels: Sequence[str],
    transform: Optional[Callable[[Mapping[str, paddle.Tensor]], Mapping[str, paddle.Tensor]]] = None,
    pad_values: Optional[Mapping[str, int]] = None,
) -> List[tuple]:
    """``[first-stage inputs, last-stage labels]`` for ``PipelineParallel`` from one or more batches.

    ``batches``: one micro-batch (a dict) or the micro-batches of one accumulation cycle (a list). Each entry
    of the result is a tuple with one list per key (one tensor per micro-batch). ``transform`` maps each
    micro-batch first (e.g. chosen + rejected -> 2B rows). Sequence tensors are right-padded to the longest
    of the cycle with ``pad_values`` (defaults: ids 0, masks 0, labels -100). The attention mask goes to the
    first stage as bool, which every device reads as a padding mask.
    """
    if isinstance(batches, Mapping):
        batches = [batches]
    batches = [dict(transform(b)) if transform is not None else dict(b) for b in batches]
    pads = dict(_PAD_VALUES, **(pad_values or {}))
    seq_keys = [k for k in (*first, *labels) if batches[0].get(k) is not None and batches[0][k].ndim >= 2]
    length = max(int(b[k].shape[1]) for b in batches for k in seq_keys) if seq_keys else 0

    def column(key: str, to_bool: bool = False):
        out = []
        for b in batches:
            t = b.get(key)
            if t is not None and key in seq_keys:
                t = pad_columns(t, length, pads.get(key, 0))
            if t is not None and to_bool:
                t = t.astype("bool")
            out.append(t)
        return out

    first_cols = tuple(column(k, to_bool=(k == "attention_mask")) for k in first)
    label_cols = tuple(column(k) for k in labels)
    return cycle_inputs(first_cols, label_cols)


def cycle_inputs(first_cols: Sequence[List[paddle.Tensor]], label_cols: Sequence[list]) -> List[tuple]:
    """``[first-stage inputs, labels + (row counts,)]`` with every micro-batch of the cycle at one row count.

    ``first_cols``: one list per first-stage input (one tensor per micro-batch, rows first, one sequence
    length). Stages size the receive buffers of the backward pass from the shapes of the forward one, so a
    short micro-batch (the last batch of an epoch) in a cycle of several would make them disagree (gloo
    aborts on the size mismatch). Short micro-batches are therefore filled up with copies of their first
    row (real sequences, so no all-masked row can turn into NaN); each micro-batch's own row count is
    appended to its labels, and ``PipeCriterion`` / ``real_rows`` drop the copies before any loss.
    """
    rows = [int(t.shape[0]) for t in first_cols[0]]
    width = max(rows)

    def fill(t):
        if t is None or t.ndim == 0 or int(t.shape[0]) == width:
            return t
        copies = paddle.expand(t[:1], [width - int(t.shape[0]), *t.shape[1:]])
        return paddle.concat([t, copies.astype(t.dtype)], axis=0)

    padded = tuple([fill(t) for t in col] for col in first_cols)
    counts = [paddle.to_tensor([n], dtype="int64") for n in rows]
    return [padded, (*label_cols, counts)]


def generation_copy(pipe_model, mode: str, *, score: bool):
    """A non-pipeline copy of ``pipe_model`` in layout ``mode`` for rollout and experience scoring."""
    import copy

    from paddlenlp.transformers import AutoModel, AutoModelForCausalLM

    from alignment.models.score_model import ScoreModel
    from alignment.parallel import ParallelStrategy
    from alignment.parallel.reshard import GenerationCopy

    strategy = ParallelStrategy.current()
    config = copy.deepcopy(pipe_model.config)
    if mode == "single" or strategy.tensor_parallel_degree == 1:
        config.tensor_parallel_degree, config.tensor_parallel_rank = 1, 0
    if score:
        def build():
            return ScoreModel(AutoModel.from_config(config), pipe_model.score_config)
    else:
        def build():
            return AutoModelForCausalLM.from_config(config)
    state_fn = None
    if hasattr(pipe_model, "lora_config"):  # a LoRA pipeline model: generate with the adapters merged in
        from .loading import merge_lora_state_dict

        state_fn = functools.partial(merge_lora_state_dict, pipe_model)
    return GenerationCopy(pipe_model, build, mode=mode, strategy=strategy, state_fn=state_fn)


class FrozenPipeline:
    """A frozen model (reference, reward, teacher) as pipeline stages, run forward-only.

        ref = FrozenPipeline(strategy.wrap_frozen_pipeline(load_causal_lm_pipe(path, criterion=...)), strategy)
        logps = ref.map_micro_batches(lambda logits, rows: my_logps(logits, rows), ids, mask, pos, 8)

    Each stage holds only its layers, so the frozen model's parameters are split over the pipeline group like
    the trained models'. ``map_micro_batches`` cuts the rows into micro-batches, runs them as one pipelined
    pass (fleet's ``eval_batch``), applies ``reduce(last-stage output, row slice)`` to each micro-batch on the
    last stage (log-probs from logits, end scores from per-token scores: the (B, L, V) logits never leave
    that stage) and hands the concatenated result to every stage of the group (``broadcast=False``: only
    the last stage gets it, None elsewhere). Every rank of the pipeline group must call it with the same rows.
    """

    training = False
    residency = None  # set by an offload schedule: residency("device") before a pass, ("host") after

    def __init__(self, pipeline_model, strategy):
        self.model = pipeline_model
        self.strategy = strategy

    @property
    def config(self):
        from alignment.parallel import unwrap_model

        return unwrap_model(self.model).config

    def eval(self):  # frozen: always in eval mode (the ``eval_mode`` protocol)
        return self

    def train(self, mode: bool = True):
        return self

    def parameters(self):
        return self.model.parameters()

    def map_micro_batches(self, reduce: Callable[[paddle.Tensor, slice], paddle.Tensor], input_ids: paddle.Tensor,
                          attention_mask: paddle.Tensor, position_ids: Optional[paddle.Tensor] = None,
                          micro_batch_size: int = 8, broadcast: bool = True):
        n, size = int(input_ids.shape[0]), max(1, int(micro_batch_size))
        slices = [slice(s, min(s + size, n)) for s in range(0, n, size)]
        first = ("input_ids", "attention_mask") + (("position_ids",) if position_ids is not None else ())
        batches = [{"input_ids": input_ids[sl], "attention_mask": attention_mask[sl],
                    "position_ids": None if position_ids is None else position_ids[sl]} for sl in slices]
        data = pipeline_inputs(batches, first=first, labels=())
        model, steps = self.model, self.model.accumulate_steps
        model.accumulate_steps = len(slices)
        if self.residency is not None:
            self.residency("device")
        try:
            with paddle.no_grad():
                outputs = model.eval_batch(data, compute_loss=False)
        finally:
            model.accumulate_steps = steps
            if self.residency is not None:
                self.residency("host")
        result = None
        if self.strategy.is_last_stage:
            parts = []
            for out, sl in zip(outputs, slices):
                out = out[0] if isinstance(out, (tuple, list)) else out
                parts.append(reduce(real_rows(out, sl.stop - sl.start), sl))
            result = paddle.concat(parts)
        if not broadcast:
            return result
        value = self.strategy.broadcast_from_last_stage(None if result is None else result.numpy())
        return paddle.to_tensor(value)


def frozen_causal_lm_pipe(path: str, strategy, *, dtype: Any = None, use_flash_attention: Optional[bool] = None
                          ) -> FrozenPipeline:
    """A frozen causal LM (reference, teacher) as pipeline stages; see ``FrozenPipeline``."""
    model = load_causal_lm_pipe(path, criterion=PipeCriterion(_forward_only), dtype=dtype,
                                use_flash_attention=use_flash_attention)
    return FrozenPipeline(strategy.wrap_frozen_pipeline(model), strategy)


def frozen_score_model_pipe(path: str, strategy, *, dtype: Any = None, use_flash_attention: Optional[bool] = None
                            ) -> FrozenPipeline:
    """A frozen score model (reward, cost) with its trained head as pipeline stages; outputs raw scores."""
    from .loading import load_config
    from .score_model import ScoreConfig, ScoreHeadMissingError, has_score_head

    if not has_score_head(path):
        raise ScoreHeadMissingError(f"'{path}' has no score head; a reward model needs a trained one")
    score = ScoreConfig.from_config(load_config(path)) or ScoreConfig()
    model = load_score_model_pipe(path, criterion=PipeCriterion(_forward_only), dtype=dtype,
                                  score_dim=score.score_dim, bias=score.bias, use_flash_attention=use_flash_attention)
    model.score_config = score
    return FrozenPipeline(strategy.wrap_frozen_pipeline(model), strategy)


def _forward_only(*_):
    raise RuntimeError("a frozen pipeline model computes no loss")

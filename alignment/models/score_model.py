"""Score model: decoder backbone + linear score head + score normaliser (reward model, cost model, critic).

    from alignment.models import ScoreModel

    rm = ScoreModel.from_pretrained("checkpoints/sft", init_score_head=True)      # new head on an LM
    out = rm(input_ids, attention_mask)         # ScoreOutput(scores (B, L), end_scores (B,), end_index (B,))
    rm.save_pretrained("checkpoints/rm")
    critic = ScoreModel.from_pretrained("checkpoints/rm", score_type="critic")    # head must exist

Architecture (safe-rlhf / PaddleNLP ``*ModelForScore``): the backbone is whatever ``paddlenlp.transformers.
AutoModel`` loads for the checkpoint (LlamaModel, Qwen2Model, ...; hidden states, no LM head); the score head
``Linear(hidden_size -> score_dim)`` is applied at every position, so ``scores`` are per-token (a critic reads
them as values) and ``end_scores`` are read at the last real token of each row: the last index where the 2-D
``attention_mask`` is 1 (never from ``token != pad``, so a pad id equal to EOS cannot move it).

Normalisation (``score_type`` -> normaliser mode): reward -> affine ``(x - mean) / std``, cost -> scale
``x / std``, critic -> identity. With ``do_normalize`` the outputs are normalised and, in training mode, the
normaliser statistics are first updated with the end scores of the whole data-parallel batch (PaddleNLP
behaviour; safe-rlhf updates whenever training).

Checkpoint layout written by ``save_pretrained`` (a directory):

    config.json             backbone config + score fields: score_type, do_normalize, normalizer_type, momentum,
                            score_dim, score_bias, and the normaliser's mean / var / normalizer_count;
                            architectures = ["<Family>ForScore"]
    model.safetensors       full state dict: "<prefix>.*" backbone (e.g. "llama.*", the causal-LM key layout, so
                            AutoModel / AutoModelForCausalLM load the backbone from it), "score_head.weight"
                            (H, D), "score_head.bias", "normalizer.{mean,var,count}"
    value_head.safetensors  the head again in the ms-swift / TRL / LLaMA-Factory convention:
                            "v_head.summary.weight" (D, H) and "v_head.summary.bias" (D,) in float32 (zero bias
                            when the head has none), plus "normalizer.{mean,var,count}"

``from_pretrained`` loads the backbone with ``AutoModel`` and the head + normaliser from value_head.safetensors.
A checkpoint without a head is an error unless ``init_score_head=True`` asks for a new one.

Deviation: the bias flag is stored as ``score_bias`` (safe-rlhf's name) rather than PaddleNLP's ``bias``, which
could clash with a backbone config's own ``bias`` attribute; a PaddleNLP-style ``bias`` key is still read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import paddle
from paddlenlp.transformers.model_outputs import ModelOutput

from alignment.utils.io import atomic_write_json

from .loading import load_backbone, load_config

logger = logging.getLogger(__name__)

__all__ = [
    "ScoreConfig",
    "ScoreOutput",
    "ScoreModel",
    "ScoreHeadMissingError",
    "SCORE_TYPES",
    "NORMALIZER_TYPES",
    "VALUE_HEAD_NAME",
    "WEIGHTS_NAME",
    "has_score_head",
    "save_score_checkpoint",
    "save_score_head",
    "seed_score_head",
]

SCORE_TYPES = ("reward", "cost", "critic")
NORMALIZE_MODES = {"reward": "affine", "cost": "scale", "critic": "identity"}
NORMALIZER_TYPES = ("RunningMeanStd", "ExponentialMovingAverage", None)
VALUE_HEAD_NAME = "value_head.safetensors"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_HEAD_W, _HEAD_B = "v_head.summary.weight", "v_head.summary.bias"
_NORM_KEYS = ("mean", "var", "count")
_SCORE_CONFIG_KEYS = (
    "score_type", "do_normalize", "normalizer_type", "momentum", "score_dim", "score_bias", "mean", "var",
    "normalizer_count",
)


class ScoreHeadMissingError(ValueError):
    """Raised when a checkpoint has no score head and ``init_score_head`` was not requested."""


_NONE_NAMES = ("", "none", "null", "identity", "identitynormalizer")


def _none_name(value):
    if isinstance(value, str) and value.strip().lower() in _NONE_NAMES:
        return None
    return value


@dataclass
class ScoreConfig:
    """The score-specific fields of a score model (saved in config.json next to the backbone's fields)."""

    score_type: str = field(
        default="reward", metadata={"help": "reward, cost or critic (normalisation: affine, scale, identity)."}
    )
    do_normalize: bool = field(
        default=False, metadata={"help": "Normalise the output scores with the normaliser statistics."}
    )
    normalizer_type: Optional[str] = field(
        default=None, metadata={"help": "RunningMeanStd, ExponentialMovingAverage or None (statistics only counted)."}
    )
    momentum: Optional[float] = field(
        default=None,
        metadata={"help": "EMA momentum in [0, 1) (ExponentialMovingAverage only; larger = slower statistics)."},
    )
    score_dim: int = field(default=1, metadata={"help": "Number of scores per token (1: squeezed away in the outputs)."})
    bias: bool = field(default=False, metadata={"help": "Whether the score head has a bias (saved as score_bias)."})

    def __post_init__(self) -> None:
        if self.score_type not in SCORE_TYPES:
            raise ValueError(
                f"score_type='{self.score_type}' is not valid; allowed values: {', '.join(SCORE_TYPES)}"
            )
        self.normalizer_type = _none_name(self.normalizer_type)
        if self.normalizer_type not in NORMALIZER_TYPES:
            raise ValueError(
                f"normalizer_type='{self.normalizer_type}' is not valid; allowed values: RunningMeanStd, "
                "ExponentialMovingAverage, None"
            )
        if self.normalizer_type == "ExponentialMovingAverage":
            if self.momentum is None:
                raise ValueError(
                    "normalizer_type='ExponentialMovingAverage' needs momentum (normalizer_momentum) in [0, 1), "
                    "e.g. 0.9; got None"
                )
            if not 0.0 <= float(self.momentum) < 1.0:
                raise ValueError(f"momentum (normalizer_momentum) must be in [0, 1), got {self.momentum}")
        if int(self.score_dim) < 1:
            raise ValueError(f"score_dim must be >= 1, got {self.score_dim}")
        self.score_dim = int(self.score_dim)
        self.do_normalize = bool(self.do_normalize)
        self.bias = bool(self.bias)

    @property
    def normalize_mode(self) -> str:
        return NORMALIZE_MODES[self.score_type]

    def to_config_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["score_bias"] = d.pop("bias")
        return d

    @classmethod
    def from_config(cls, config) -> Optional["ScoreConfig"]:
        """The score fields of a loaded backbone config; None when it is not a score-model config."""
        get = (lambda k, default=None: config.get(k, default)) if isinstance(config, dict) else (
            lambda k, default=None: getattr(config, k, default))
        if get("score_type") is None:
            return None
        bias = get("score_bias")
        if bias is None:
            bias = get("bias", False)
        return cls(
            score_type=get("score_type"), do_normalize=bool(get("do_normalize", False)),
            normalizer_type=get("normalizer_type"), momentum=get("momentum"),
            score_dim=int(get("score_dim", 1) or 1), bias=bool(bias),
        )


@dataclass
class ScoreOutput(ModelOutput):
    """Output of ``ScoreModel.forward`` (attribute, key or index access).

    scores:     (B, L) float32 per-token scores ((B, L, D) when score_dim D > 1); normalised when do_normalize
    end_scores: (B,) float32 score at each row's last real token ((B, D) when D > 1)
    end_index:  (B,) int64 index of that token (last 1 of the attention mask)
    """

    scores: paddle.Tensor = None
    end_scores: Optional[paddle.Tensor] = None
    end_index: Optional[paddle.Tensor] = None


def _make_normalizer(config: ScoreConfig):
    from alignment.algorithms.normalizers import make_normalizer

    name = config.normalizer_type or "IdentityNormalizer"
    return make_normalizer(name, (config.score_dim,), momentum=config.momentum)


def _gather_end_scores(values: paddle.Tensor) -> paddle.Tensor:
    """End scores (N, D) of every data-parallel rank (this rank's alone when not distributed)."""
    from alignment.parallel import ParallelStrategy

    strategy = ParallelStrategy.current()
    if not strategy.distributed:
        return values
    return strategy.all_gather(values.reshape([-1])).reshape([-1, values.shape[-1]])


def last_index(attention_mask: paddle.Tensor) -> paddle.Tensor:
    """(B,) int64 index of the last 1 in each row of a 2-D mask (0 for an all-zero row)."""
    positions = paddle.arange(attention_mask.shape[-1], dtype="int64").unsqueeze(0)
    return (positions * (attention_mask != 0).astype("int64")).max(axis=-1)


class ScoreModel(paddle.nn.Layer):
    """Backbone + score head + normaliser; build with ``from_pretrained`` (or ``ScoreModel(backbone, cfg)``).

    The backbone is registered under its ``base_model_prefix`` (``llama`` for Llama), so the state-dict keys are
    those of the causal LM (``llama.layers.0...``) plus ``score_head.*`` and ``normalizer.*``.
    """

    def __init__(self, backbone, score_config: Optional[ScoreConfig] = None, **score_kwargs) -> None:
        super().__init__()
        if score_config is None:
            score_config = ScoreConfig(**score_kwargs)
        elif score_kwargs:
            score_config = ScoreConfig(**{**asdict(score_config), **score_kwargs})
        self.score_config = score_config
        self._backbone_name = getattr(backbone, "base_model_prefix", None) or "backbone"
        setattr(self, self._backbone_name, backbone)
        hidden_size = int(backbone.config.hidden_size)
        std = float(getattr(backbone.config, "initializer_range", 0.02) or 0.02)
        self.score_head = paddle.nn.Linear(
            hidden_size,
            score_config.score_dim,
            weight_attr=paddle.ParamAttr(initializer=paddle.nn.initializer.Normal(mean=0.0, std=std)),
            bias_attr=(paddle.ParamAttr(initializer=paddle.nn.initializer.Constant(0.0))
                       if score_config.bias else False),
        )
        dtype = next(iter(backbone.parameters())).dtype
        if dtype != self.score_head.weight.dtype:
            self.score_head.to(dtype=dtype)
        self.normalizer = _make_normalizer(score_config)

    # ------------------------------------------------------------------------------------------ access
    @property
    def backbone(self):
        return getattr(self, self._backbone_name)

    @property
    def config(self):
        """The backbone's PretrainedConfig (hidden_size, pad_token_id, recompute, ...)."""
        return self.backbone.config

    @property
    def score_type(self) -> str:
        return self.score_config.score_type

    def set_normalize(self, enabled: bool) -> None:
        """Turn output normalisation (and the training-time statistics update) on or off."""
        self.score_config.do_normalize = bool(enabled)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def resize_token_embeddings(self, new_num_tokens: int):
        return self.backbone.resize_token_embeddings(new_num_tokens)

    # ----------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: paddle.Tensor,
        attention_mask: Optional[paddle.Tensor] = None,
        position_ids: Optional[paddle.Tensor] = None,
        **kwargs,
    ) -> ScoreOutput:
        """input_ids (B, L), attention_mask (B, L) 0/1 (required when B > 1), position_ids (B, L) optional."""
        if attention_mask is None:
            if input_ids.shape[0] > 1:
                raise ValueError(
                    "ScoreModel.forward needs the 2-D attention_mask when the batch has more than one row "
                    "(the end score is read at each row's last 1)"
                )
            attention_mask = paddle.ones_like(input_ids)
        if attention_mask.ndim != 2:
            raise ValueError(
                f"ScoreModel.forward needs a 2-D (B, L) attention_mask, got shape {attention_mask.shape}"
            )
        kwargs.pop("return_dict", None)
        kwargs.setdefault("use_cache", False)
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True,
            **kwargs,
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        scores = self.score_head(hidden).astype("float32")  # (B, L, D)
        end_index = last_index(attention_mask)
        gather = end_index.reshape([-1, 1, 1]).expand([scores.shape[0], 1, scores.shape[2]])
        end_scores = paddle.take_along_axis(scores, gather, axis=1).squeeze(1)  # (B, D)

        if self.score_config.do_normalize:
            if self.training:
                with paddle.no_grad():
                    self.normalizer.update(_gather_end_scores(end_scores.detach()))
            mode = self.score_config.normalize_mode
            scores = self.normalizer.normalize(scores, mode)
            end_scores = self.normalizer.normalize(end_scores, mode)
        if self.score_config.score_dim == 1:
            scores, end_scores = scores.squeeze(-1), end_scores.squeeze(-1)
        return ScoreOutput(scores=scores, end_scores=end_scores, end_index=end_index)

    # ------------------------------------------------------------------------------------------ saving
    def normalizer_state(self) -> Dict[str, np.ndarray]:
        state = self.normalizer.state_dict()
        return {k: np.asarray(state[k].numpy(), dtype="float32") for k in _NORM_KEYS if k in state}

    def head_state(self) -> Dict[str, np.ndarray]:
        """Head + normaliser in the ms-swift / TRL value-head layout (float32, weight as (D, H))."""
        return _head_tensors(self.state_dict())

    def config_dict(self) -> Dict[str, Any]:
        """config.json contents: the backbone config plus the score fields and normaliser statistics."""
        return _score_config_dict(self.config, self.score_config, self.normalizer_state(), type(self.backbone).__name__)

    def save_pretrained(
        self, save_dir: str, *, is_main_process: bool = True, state_dict=None, **_ignored
    ) -> None:
        """Write config.json, model.safetensors and value_head.safetensors into ``save_dir``.

        Each file is written under a temporary name and renamed, config.json last. Other files in the
        directory (a tokenizer, training arguments) are left alone. Only ``is_main_process`` writes.
        """
        if is_main_process:
            save_score_checkpoint(self, save_dir, state_dict if state_dict is not None else self.state_dict())

    # ----------------------------------------------------------------------------------------- loading
    def load_head_state(self, tensors: Dict[str, np.ndarray], source: str = "value head") -> None:
        """Set head and normaliser from a ``head_state()``-style dict; shapes must match."""
        if _HEAD_W not in tensors:
            raise ScoreHeadMissingError(f"{source}: no '{_HEAD_W}' tensor")
        w = np.asarray(tensors[_HEAD_W], dtype="float32")
        expected = [self.score_config.score_dim, int(self.config.hidden_size)]
        if list(w.shape) != expected:
            raise ValueError(
                f"{source}: '{_HEAD_W}' has shape {list(w.shape)}, expected {expected} (score_dim, hidden_size)"
            )
        self.score_head.weight.set_value(paddle.to_tensor(w.T.copy()).astype(self.score_head.weight.dtype))
        b = np.asarray(tensors.get(_HEAD_B, np.zeros([w.shape[0]], "float32")), dtype="float32").reshape([-1])
        if self.score_head.bias is not None:
            self.score_head.bias.set_value(paddle.to_tensor(b).astype(self.score_head.bias.dtype))
        elif np.any(b != 0):
            raise ValueError(f"{source}: the head has a non-zero bias but the config says score_bias=false")
        norm = {k: tensors[f"normalizer.{k}"] for k in _NORM_KEYS if f"normalizer.{k}" in tensors}
        self._set_normalizer(norm, source)

    def _set_normalizer(self, norm: Dict[str, Any], source: str) -> None:
        current = self.normalizer.state_dict()
        values = {}
        for key, value in norm.items():
            if key in current:
                arr = np.asarray(value, dtype="float32")
                if arr.size != int(np.prod(current[key].shape)):
                    raise ValueError(
                        f"{source}: normalizer.{key} has {arr.size} values, expected shape {current[key].shape}"
                    )
                values[key] = paddle.to_tensor(arr.reshape(current[key].shape)).astype(current[key].dtype)
        if values:
            self.normalizer.set_state_dict(values)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        init_score_head: bool = False,
        head_seed: Optional[int] = None,
        dtype: Any = None,
        score_type: Optional[str] = None,
        do_normalize: Optional[bool] = None,
        normalizer_type: Any = "__keep__",
        momentum: Any = "__keep__",
        score_dim: Optional[int] = None,
        bias: Optional[bool] = None,
        use_flash_attention: Optional[bool] = None,
        recompute: Optional[bool] = None,
        config_overrides: Optional[Dict[str, Any]] = None,
    ) -> "ScoreModel":
        """Load a score model from a hub name or a local directory.

        ``init_score_head=False`` (default): the checkpoint must hold a score head (value_head.safetensors);
        otherwise ``ScoreHeadMissingError`` tells you to pass ``init_score_head=True``. ``init_score_head=True``:
        a new head (normal(0, initializer_range), zero bias) and a fresh normaliser on the checkpoint's
        backbone, ignoring any head it has (the usual start of reward-model training from an SFT model).
        ``head_seed`` draws that new head from its own numpy stream (the same under every parallel layout,
        whereas paddle's stream depends on how many weights were initialised before it).

        The other keywords override the saved score fields (e.g. ``score_type="critic"`` to start a critic
        from a reward model); ``score_dim`` and ``bias`` must match a loaded head.
        """
        config = load_config(name_or_path, dtype=dtype, use_flash_attention=use_flash_attention, recompute=recompute,
                             overrides=config_overrides)
        saved = ScoreConfig.from_config(config)
        head_file = None if init_score_head else _resolve_head_file(name_or_path)
        if not init_score_head and head_file is None:
            what = ("a score-model config but no " + VALUE_HEAD_NAME) if saved is not None else (
                "no score head (it looks like a causal-LM / SFT checkpoint)")
            raise ScoreHeadMissingError(
                f"'{name_or_path}' has {what}. Loading it would leave the score head randomly initialised; pass "
                "init_score_head=True (run_reward.py: --init_score_head true) to start a NEW head on purpose"
            )
        base = ScoreConfig() if (init_score_head or saved is None) else saved
        values = asdict(base)
        for key, value in (("score_type", score_type), ("do_normalize", do_normalize), ("score_dim", score_dim),
                           ("bias", bias)):
            if value is not None:
                if not init_score_head and key in ("score_dim", "bias") and value != values[key]:
                    raise ValueError(
                        f"{key}={value} does not match the saved head of '{name_or_path}' ({key}={values[key]})"
                    )
                values[key] = value
        if normalizer_type != "__keep__":
            values["normalizer_type"] = normalizer_type
        if momentum != "__keep__":
            values["momentum"] = momentum
        score_config = ScoreConfig(**values)

        config_norm = {k: getattr(config, n, None)
                       for k, n in (("mean", "mean"), ("var", "var"), ("count", "normalizer_count"))}
        for key in _SCORE_CONFIG_KEYS:  # keep the backbone config free of score fields
            if hasattr(config, key):
                try:
                    delattr(config, key)
                except AttributeError:
                    pass
        backbone = load_backbone(name_or_path, dtype=dtype, config=config)
        model = cls(backbone, score_config)
        if head_file is not None:
            from safetensors.numpy import load_file

            tensors = load_file(head_file)
            if saved is not None and saved.normalizer_type != score_config.normalizer_type:
                logger.warning(
                    "normalizer_type changed from %s to %s: the saved normaliser statistics are not loaded",
                    saved.normalizer_type, score_config.normalizer_type,
                )
                tensors = {k: v for k, v in tensors.items() if not k.startswith("normalizer.")}
            elif not any(k.startswith("normalizer.") for k in tensors):  # e.g. a TRL / LLaMA-Factory value head
                tensors.update({f"normalizer.{k}": np.asarray(v, "float32")
                                for k, v in config_norm.items() if v is not None})
            model.load_head_state(tensors, source=head_file)
        else:
            if head_seed is not None:
                seed_score_head(model.score_head.weight, config, head_seed)
            logger.info("%s: initialised a new score head (init_score_head=True)", name_or_path)
        model.eval()  # as PaddleNLP / HF models: a stray forward must not update the normaliser
        return model


def _numpy(value) -> np.ndarray:
    return np.asarray(value.astype("float32").numpy() if hasattr(value, "numpy") else value, dtype="float32")


def _head_tensors(state: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """value_head.safetensors tensors from a full state dict: v_head weight (D, H), bias (D,), normaliser."""
    w = _numpy(state["score_head.weight"]).T.copy()
    b = _numpy(state["score_head.bias"]) if state.get("score_head.bias") is not None \
        else np.zeros([w.shape[0]], dtype="float32")
    tensors = {_HEAD_W: np.ascontiguousarray(w), _HEAD_B: np.ascontiguousarray(b.reshape([-1]))}
    for k in _NORM_KEYS:
        if f"normalizer.{k}" in state:
            v = _numpy(state[f"normalizer.{k}"])
            tensors[f"normalizer.{k}"] = np.ascontiguousarray(v.reshape(v.shape or [1]))
    return tensors


def _score_config_dict(backbone_config, score_config: ScoreConfig, norm: Dict[str, np.ndarray],
                       backbone_class: str) -> Dict[str, Any]:
    d = json.loads(backbone_config.to_json_string())
    for key in _SCORE_CONFIG_KEYS:
        d.pop(key, None)
    d.update(score_config.to_config_dict())
    d["tensor_parallel_degree"], d["tensor_parallel_rank"] = 1, 0  # the saved weights are merged
    if "mean" in norm:
        d["mean"] = norm["mean"].reshape([-1]).tolist()
    if "var" in norm:
        d["var"] = norm["var"].reshape([-1]).tolist()
    if "count" in norm:
        d["normalizer_count"] = float(norm["count"].reshape([-1])[0])
    family = backbone_class
    for suffix in ("ForScorePipe", "Model"):
        family = family[: -len(suffix)] if family.endswith(suffix) else family
    d["architectures"] = [f"{family}ForScore"]
    return d


def seed_score_head(weight: paddle.Tensor, config, seed: int) -> None:
    """Redraw a new score head's weight (H, D) from normal(0, initializer_range) with numpy seed ``seed``:
    the same head under every parallel layout, whatever paddle's random stream has been used for."""
    std = float(getattr(config, "initializer_range", 0.02) or 0.02)
    w = np.random.RandomState(int(seed)).normal(0.0, std, weight.shape).astype("float32")
    weight.set_value(paddle.to_tensor(w).astype(weight.dtype))


def normalizer_tensors(name_or_path: str, score_config: ScoreConfig) -> Dict[str, paddle.Tensor]:
    """``normalizer.{mean,var,count}`` of a checkpoint's value head (fresh statistics when it has none)."""
    normalizer = _make_normalizer(score_config)
    head_file = _resolve_head_file(name_or_path)
    if head_file is not None:
        from safetensors.numpy import load_file

        saved = {k[len("normalizer."):]: v for k, v in load_file(head_file).items() if k.startswith("normalizer.")}
        current = normalizer.state_dict()
        normalizer.set_state_dict({k: paddle.to_tensor(np.asarray(v, "float32").reshape(current[k].shape))
                                   for k, v in saved.items() if k in current})
    return {f"normalizer.{k}": v for k, v in normalizer.state_dict().items()}


def save_score_checkpoint(model, save_dir: str, state: Dict[str, Any]) -> None:
    """Write a score checkpoint (layout in the module docstring) from a full single-process state dict.

    ``model``: the ``ScoreModel`` or score pipeline model the state came from (its backbone config and
    ``score_config`` are written; the head and normaliser are read from ``state``).
    """
    from safetensors.numpy import save_file

    from alignment.parallel import unwrap_model
    from alignment.utils.safe_io import make_readable, save_tree

    inner = unwrap_model(model)
    state = {**getattr(inner, "frozen_state", {}), **state}  # e.g. a pipeline model's untouched normaliser
    head = _head_tensors(state)
    norm = {k[len("normalizer."):]: v for k, v in head.items() if k.startswith("normalizer.")}
    backbone_class = type(getattr(inner, "backbone", inner)).__name__
    os.makedirs(save_dir, exist_ok=True)
    save_tree(dict(state), os.path.join(save_dir, WEIGHTS_NAME))  # safetensors, written under a temporary name
    tmp = os.path.join(save_dir, f".{VALUE_HEAD_NAME}.tmp")
    save_file(head, tmp, metadata={"format": "pt", "score_type": inner.score_config.score_type})
    make_readable(tmp)  # save_file makes 0600
    os.replace(tmp, os.path.join(save_dir, VALUE_HEAD_NAME))
    atomic_write_json(os.path.join(save_dir, CONFIG_NAME),
                      _score_config_dict(inner.config, inner.score_config, norm, backbone_class))


def save_score_head(model, save_dir: str) -> None:
    """value_head.safetensors and config.json of ``model`` without the backbone weights: the part of a LoRA
    score checkpoint (adapters saved by ``LoRAModel.save_pretrained``) that is not the base model."""
    from safetensors.numpy import save_file

    from alignment.parallel import unwrap_model
    from alignment.utils.safe_io import make_readable

    inner = unwrap_model(model)
    state = {k: v for k, v in inner.state_dict().items() if k.startswith(("score_head.", "normalizer."))}
    head = _head_tensors(state)
    norm = {k[len("normalizer."):]: v for k, v in head.items() if k.startswith("normalizer.")}
    os.makedirs(save_dir, exist_ok=True)
    tmp = os.path.join(save_dir, f".{VALUE_HEAD_NAME}.tmp")
    save_file(head, tmp, metadata={"format": "pt", "score_type": inner.score_config.score_type})
    make_readable(tmp)
    os.replace(tmp, os.path.join(save_dir, VALUE_HEAD_NAME))
    atomic_write_json(os.path.join(save_dir, CONFIG_NAME),
                      _score_config_dict(inner.config, inner.score_config, norm, type(inner.backbone).__name__))


def _resolve_head_file(name_or_path: str) -> Optional[str]:
    """Local path of the checkpoint's value_head.safetensors (downloaded for a hub name), or None."""
    if os.path.isdir(name_or_path):
        from .hf import paddle_dir

        path = os.path.join(paddle_dir(name_or_path), VALUE_HEAD_NAME)  # a HF checkpoint: its converted copy
        return path if os.path.isfile(path) else None
    try:
        from paddlenlp.utils.download import resolve_file_path

        path = resolve_file_path(name_or_path, [VALUE_HEAD_NAME])
    except Exception:  # noqa: BLE001 - not on the hub / offline: treated as "no head"
        return None
    return path if path and os.path.isfile(path) else None


def has_score_head(name_or_path: str) -> bool:
    """Whether ``name_or_path`` holds a saved score head (``ScoreModel.from_pretrained`` would load it)."""
    return _resolve_head_file(name_or_path) is not None

"""Loading helpers shared by every stage: tokenizer, causal LM, backbone, LoRA wrapping, freezing.

Everything takes a hub name or a local path (PaddleNLP resolves both) and a dtype name::

    from alignment.models.loading import load_tokenizer, load_causal_lm, wrap_lora, freeze

    tokenizer = load_tokenizer("checkpoints/tiny-llama", padding_side="right")
    model = load_causal_lm("checkpoints/tiny-llama", dtype="float32", tokenizer=tokenizer)
    model = wrap_lora(model, LoraArguments(lora=True, lora_rank=8))        # only adapters trainable
    reference = freeze(load_causal_lm("checkpoints/tiny-llama"))            # eval mode, no gradients

``ScoreModel.from_pretrained`` (score_model.py) builds on ``load_config`` and ``load_backbone``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import paddle

logger = logging.getLogger(__name__)

__all__ = [
    "DTYPES",
    "LoraArguments",
    "resolve_dtype",
    "load_tokenizer",
    "load_config",
    "load_causal_lm",
    "load_backbone",
    "wrap_lora",
    "wrap_score_lora",
    "is_lora_model",
    "AdaptersOff",
    "merge_lora_state_dict",
    "freeze",
    "count_parameters",
    "save_causal_lm",
    "resolve_model_path",
    "read_weights",
    "ModelPathError",
    "TINY_MODEL_COMMAND",
]

TINY_MODEL_COMMAND = "python -m alignment.tools.make_tiny_model --out checkpoints/tiny-llama"
_PICKLE_WEIGHTS = (".pdparams", ".bin", ".pt", ".pth", ".pkl")
_LOCAL_FOLDERS = ("checkpoints", "checkpoint", "output", "outputs", "models", "runs", "data")


class ModelPathError(FileNotFoundError):
    """A model path that is neither a local directory nor a hub name; the message says which and how to fix."""


def _looks_local(name: str) -> bool:
    """Whether ``name`` can only mean a local path (see ``resolve_model_path``)."""
    if name.startswith(("/", "./", "../", "~", ".\\")) or os.path.splitext(name)[1] in (".json", ".jsonl"):
        return True
    parts = name.replace("\\", "/").split("/")
    if len(parts) > 2:
        return True
    # "checkpoints/tiny-llama": the folder exists, or is one of the usual local ones (a fresh clone has none)
    return len(parts) == 2 and (os.path.isdir(parts[0]) or parts[0] in _LOCAL_FOLDERS)


def resolve_model_path(name_or_path: str, what: str = "model_name_or_path") -> str:
    """The local directory or hub name to load; refuses pickle weights and explains a missing path.

    The rule: ``hub:owner/name`` is always a hub name; an existing directory is local; a name that does not
    exist locally is a hub name only when it has the shape ``name`` or ``owner/name`` and ``owner`` is not a
    local directory. Anything else that does not exist ("./x", "/abs/x", "a/b/c", "checkpoints/x" next to a
    checkpoints/ folder or under checkpoints/, output(s)/, models/, runs/, data/) is "no such directory" (with the tiny-model kit command for a tiny config). A local
    directory whose only weights are pickle files (model_state.pdparams, pytorch_model.bin) is refused unless
    ``--allow_pickle true``. A local Hugging Face checkpoint (Llama / Qwen2, PyTorch-layout safetensors) resolves
    to its PaddleNLP conversion in the import cache (``alignment.models.hf.paddle_dir``).
    """
    from alignment.utils.safe_io import ALLOW_PICKLE_FLAG, PickleRefusedError, allow_pickle

    name = str(name_or_path)
    if name.startswith("hub:"):
        return name[len("hub:"):]
    if os.path.isdir(name):
        files = os.listdir(name)
        has_safe = any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files
                       if not f.startswith("value_head"))
        needed = "tokenizer_config.json" if what == "tokenizer" else "config.json"
        if needed not in files:
            raise ModelPathError(f"{what}: '{name}' has no {needed}; expected a model directory (config.json + "
                                 "weights + tokenizer files)")
        pickled = sorted(f for f in files if f.endswith(_PICKLE_WEIGHTS) and f != "training_args.bin")
        base_weights = has_safe or any(not f.startswith("lora_") for f in pickled)
        if what != "tokenizer" and not base_weights and "lora_config.json" in files:
            raise ModelPathError(
                f"{what}: '{name}' holds LoRA adapters only (merge_lora_on_save false); merge them into their base "
                f"first: python -m alignment.tools.export --checkpoint {name} --out <dir> --format hf")
        if pickled and not has_safe and not allow_pickle():
            raise PickleRefusedError(
                f"{what}: {os.path.join(name, pickled[0])}: weights are a pickle file (loading it can run code); "
                f"convert them to safetensors, or pass {ALLOW_PICKLE_FLAG} if you trust this directory")
        from alignment.models.hf import paddle_dir

        return paddle_dir(name)  # a Hugging Face (PyTorch-layout) checkpoint: its converted copy
    if os.path.exists(name):
        raise ModelPathError(f"{what}: '{name}' is a file; expected a model directory (config.json + weights)")
    if _looks_local(name):
        hint = ""
        if "tiny" in os.path.basename(name.rstrip("/")):
            hint = f"; build the tiny model first: {TINY_MODEL_COMMAND.replace('checkpoints/tiny-llama', name)}"
        raise ModelPathError(f"{what}: no such directory '{name}'{hint} (a hub model needs the prefix hub:)")
    return name

DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16", "float": "float32"}
_DEFAULT_LORA_TARGETS = (
    ".*q_proj.*", ".*k_proj.*", ".*v_proj.*", ".*o_proj.*", ".*gate_proj.*", ".*up_proj.*", ".*down_proj.*",
)


def resolve_dtype(dtype: Any = None) -> str:
    """A dtype name from a name or a paddle dtype; default float32.

    TrainingArguments give float32 whatever their bf16 / fp16 flags: the weights are loaded as float32 master
    weights and PaddleNLP's Trainer runs the mixed precision through paddle.amp (O1: bf16/fp16 compute on
    float32 weights; O2: ``paddle.amp.decorate`` casts them and keeps float32 masters in the optimizer);
    see alignment/training/precision.py.
    """
    if dtype is None:
        return "float32"
    if hasattr(dtype, "bf16") or hasattr(dtype, "fp16"):  # TrainingArguments: float32 masters, amp computes
        return "float32"
    name = str(dtype).replace("paddle.", "")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype='{dtype}' is not valid; allowed values: {', '.join(DTYPES)}")
    return name


def load_tokenizer(
    name_or_path: str,
    *,
    padding_side: str = "right",
    model_max_length: Optional[int] = None,
    ensure_pad: bool = True,
):
    """``AutoTokenizer`` with a pad token distinct from EOS (added when missing) and the given padding side.

    Training batches are right padded; generation prompts are left padded.
    """
    from paddlenlp.transformers import AutoTokenizer

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side='{padding_side}' is not valid; allowed values: left, right")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path, "tokenizer"))
    if ensure_pad:
        from alignment.data import ensure_pad_token

        ensure_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    if model_max_length is not None:
        tokenizer.model_max_length = int(model_max_length)
    return tokenizer


def load_config(
    name_or_path: str,
    *,
    dtype: Any = None,
    use_flash_attention: Optional[bool] = None,
    recompute: Optional[bool] = None,
    overrides: Optional[Dict[str, Any]] = None,
):
    """``AutoConfig`` with the runtime switches every stage sets (dtype, flash attention, recompute).

    ``overrides`` sets further config attributes (e.g. ``{"recompute_granularity": "full"}``). Under tensor
    parallelism (``ParallelStrategy.current()``) the config asks PaddleNLP to split the weights on load and
    to keep the LM logits vocabulary-parallel.
    """
    from paddlenlp.transformers import AutoConfig

    from alignment.parallel import ParallelStrategy

    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    config.dtype = resolve_dtype(dtype)
    strategy = ParallelStrategy.current()
    for key, value in strategy.model_kwargs().items():  # tensor parallel: weights are split on load
        setattr(config, key, value)
    if strategy.tensor_parallel_degree > 1:
        config.tensor_parallel_output = True  # vocabulary-parallel logits (see alignment.parallel.vocab)
        strategy.register_vocab(int(config.vocab_size))
    if use_flash_attention is not None:
        config.use_flash_attention = bool(use_flash_attention)
    if recompute is not None:
        config.recompute = bool(recompute)
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    return config


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: Any = None,
    use_flash_attention: Optional[bool] = None,
    recompute: Optional[bool] = None,
    tokenizer=None,
    frozen: bool = False,
    config_overrides: Optional[Dict[str, Any]] = None,
):
    """``AutoModelForCausalLM`` from a hub name or local path.

    With ``tokenizer`` the embeddings are resized when the tokenizer has more tokens (an added pad token)
    and ``config.pad_token_id`` follows the tokenizer. ``frozen`` returns it through ``freeze``.
    """
    from paddlenlp.transformers import AutoModelForCausalLM

    dtype = resolve_dtype(dtype)
    config = load_config(name_or_path, dtype=dtype, use_flash_attention=use_flash_attention, recompute=recompute,
                         overrides=config_overrides)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path), config=config, dtype=dtype)
    if tokenizer is not None:
        from alignment.data import ensure_pad_token

        ensure_pad_token(tokenizer, model)
    return freeze(model) if frozen else model


def load_backbone(
    name_or_path: str,
    *,
    dtype: Any = None,
    use_flash_attention: Optional[bool] = None,
    recompute: Optional[bool] = None,
    config=None,
    config_overrides: Optional[Dict[str, Any]] = None,
):
    """The decoder without its LM head (``AutoModel``: LlamaModel, Qwen2Model, ...) giving hidden states.

    Loads from a causal-LM checkpoint (the ``llama.`` prefix is stripped by PaddleNLP) or from a score-model
    checkpoint (the head and normaliser tensors are ignored here; ``ScoreModel`` loads them).
    """
    from paddlenlp.transformers import AutoModel

    dtype = resolve_dtype(dtype)
    if config is None:
        config = load_config(name_or_path, dtype=dtype, use_flash_attention=use_flash_attention, recompute=recompute,
                             overrides=config_overrides)
    return AutoModel.from_pretrained(resolve_model_path(name_or_path), config=config, dtype=dtype)


# ------------------------------------------------------------------------------------------------ LoRA
@dataclass
class LoraArguments:
    """LoRA switches (paddlenlp.peft); mixed into each stage's model arguments."""

    lora: bool = field(
        default=False, metadata={"help": "Train LoRA adapters (paddlenlp.peft) instead of all weights."}
    )
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r (> 0)."})
    lora_alpha: int = field(
        default=16, metadata={"help": "LoRA scaling alpha (> 0); the update is scaled by alpha / r."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    lora_target_modules: List[str] = field(
        default_factory=lambda: list(_DEFAULT_LORA_TARGETS),
        metadata={"help": "Regexes (full match) of the linear layers that get adapters; default: every Llama "
                          "attention and MLP projection."},
    )

    def __post_init__(self) -> None:
        if self.lora_rank <= 0:
            raise ValueError(f"lora_rank must be > 0, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [s for s in self.lora_target_modules.split(",") if s]
        for pattern in self.lora_target_modules:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(
                    f"lora_target_modules: '{pattern}' is not a valid regular expression ({e})"
                ) from None


def wrap_lora(
    model, lora_args: LoraArguments, *, dtype: Any = None, base_model_name_or_path: Optional[str] = None,
    seed: Optional[int] = None,
):
    """Wrap ``model`` (a plain or pipeline causal LM) in ``paddlenlp.peft.LoRAModel``; only the adapters stay
    trainable. With ``seed`` the adapters start the same under every layout (``seed_lora_weights``).

    Raises ``ValueError`` naming the patterns when no layer matches ``lora_target_modules``.
    """
    from paddlenlp.peft import LoRAConfig, LoRAModel

    names = [name for name, _ in model.named_sublayers()]
    if not any(re.fullmatch(p, n) for p in lora_args.lora_target_modules for n in names):
        raise ValueError(
            f"lora_target_modules {lora_args.lora_target_modules} match no layer of {type(model).__name__}; "
            f"layer names look like: {', '.join(names[:6])}"
        )
    config = LoRAConfig(
        target_modules=list(lora_args.lora_target_modules),
        r=lora_args.lora_rank,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        merge_weights=False,
        dtype=resolve_dtype(dtype),
        base_model_name_or_path=base_model_name_or_path,
    )
    model = LoRAModel(model, config)
    model.mark_only_lora_as_trainable()
    if seed is not None:
        seed_lora_weights(model, seed)
    return model


def wrap_score_lora(score_model, lora_args: LoraArguments, *, base_model_name_or_path: Optional[str] = None,
                    seed: Optional[int] = None):
    """LoRA adapters on a ``ScoreModel``'s backbone (reward model, critic); the score head stays trainable.

    The ``LoRAModel``'s trainable state dict (what ``save_pretrained`` writes as lora_model_state.pdparams and
    the Trainer reloads on resume) then holds the adapters and the head; ``merge_lora_state_dict`` gives the
    plain score-model state dict."""
    dtype = str(next(iter(score_model.parameters())).dtype).replace("paddle.", "")
    model = wrap_lora(score_model, lora_args, dtype=dtype, base_model_name_or_path=base_model_name_or_path, seed=seed)
    for p in model.model.score_head.parameters():
        p.stop_gradient = False
    return model


class AdaptersOff(paddle.nn.Layer):
    """A LoRA model seen with its adapters disabled: the frozen reference of a LoRA policy, without a second
    copy of the base weights (``AdaptersOff(lora_model)(input_ids=...)`` is the base model's forward).

    The LoRA model is held, not registered as a sublayer: this layer has no parameters of its own (so memory
    reports and offload schedules count the base weights once), and ``eval()`` / ``train()`` on it leave the
    policy's mode alone; each forward runs the policy in eval mode without gradients and restores it.
    """

    def __init__(self, lora_model) -> None:
        super().__init__()
        self.__dict__["_lora"] = lora_model

    @property
    def config(self):
        return self._lora.model.config

    def forward(self, *args, **kwargs):
        lora = self._lora
        was_training = lora.training
        lora.eval()
        lora.disable_lora()
        try:
            with paddle.no_grad():
                return lora(*args, **kwargs)
        finally:
            lora.enable_lora()
            if was_training:
                lora.train()


def is_lora_model(model) -> bool:
    """Whether ``model`` is a ``paddlenlp.peft.LoRAModel`` (possibly inside a data-parallel wrapper)."""
    from alignment.parallel import unwrap_model

    return hasattr(unwrap_model(model), "lora_config") and hasattr(unwrap_model(model), "disable_lora")


def seed_lora_weights(lora_model, seed: int) -> None:
    """Draw every ``lora_A`` from its parameter name and ``seed`` alone, so one process, a pipeline model (other
    build order) and tensor-parallel ranks (a row-parallel layer holds a slice of the input rows) start from
    the same adapters. Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), the bound of PaddleNLP's Kaiming-uniform
    default for lora_A; lora_B stays zero, so the first forward equals the base model's."""
    import zlib

    import numpy as np

    from alignment.parallel import ParallelStrategy

    strategy = ParallelStrategy.current()
    tp, rank = strategy.tensor_parallel_degree, strategy.tensor_parallel_rank
    owners = {id(layer.lora_A): layer for layer in lora_model.model.sublayers() if hasattr(layer, "lora_A")}
    with paddle.no_grad():
        for name, param in lora_model.model.state_dict().items():
            layer = owners.get(id(param))
            if layer is None:
                continue
            rows = int(param.shape[0]) * (tp if "RowParallel" in type(layer).__name__ else 1)
            rng = np.random.RandomState((zlib.crc32(name.encode()) ^ int(seed)) % 2 ** 32)
            bound = 1.0 / np.sqrt(rows)
            full = rng.uniform(-bound, bound, size=(rows, int(param.shape[1]))).astype("float32")
            if rows != int(param.shape[0]):
                per = int(param.shape[0])
                full = full[rank * per:(rank + 1) * per]
            param.set_value(paddle.to_tensor(full).astype(param.dtype))


def merge_lora_state_dict(lora_model) -> Dict[str, paddle.Tensor]:
    """The base model's state dict with the adapters merged in (LoRA tensors dropped); the model is unchanged.

    Saving this with the base model's ``save_pretrained(..., state_dict=...)`` gives a plain checkpoint that
    ``AutoModelForCausalLM.from_pretrained`` loads without paddlenlp.peft.
    """
    base = lora_model.model
    deltas = {}  # by parameter identity: a pipeline model's state-dict names are not its sublayer names
    with paddle.no_grad():
        for layer in base.sublayers():
            is_lora = hasattr(layer, "get_delta_weight") and hasattr(layer, "lora_A")
            if is_lora and not getattr(layer, "merged", False):
                deltas[id(layer.weight)] = layer.weight + layer.get_delta_weight().astype(layer.weight.dtype)
    return {k: deltas.get(id(v), v) for k, v in base.state_dict().items() if "lora_" not in k}


def save_causal_lm(save_dir: str, state_dict: Dict[str, paddle.Tensor], config, architecture: str) -> None:
    """Write a single-process causal-LM checkpoint (model.safetensors + config.json) from a full state dict.

    ``config`` may come from a tensor- or pipeline-parallel model: the saved one says one process
    (tensor_parallel_degree 1) and ``architecture`` (e.g. ``LlamaForCausalLM``). Files are written under
    temporary names and renamed; config.json last, so a directory with a config is complete.
    """
    import copy

    from alignment.utils.io import atomic_write_json

    from alignment.utils.safe_io import save_tree

    os.makedirs(save_dir, exist_ok=True)
    save_tree(dict(state_dict), os.path.join(save_dir, "model.safetensors"))
    config = copy.deepcopy(config)
    config.tensor_parallel_degree, config.tensor_parallel_rank = 1, 0
    config.architectures = [architecture]
    import json

    atomic_write_json(os.path.join(save_dir, "config.json"), json.loads(config.to_json_string()))


def read_weights(directory: str) -> Dict[str, paddle.Tensor]:
    """The full state dict in ``directory``: its ``model*.safetensors`` files (merged), else its
    ``model_state*.pdparams`` when ``--allow_pickle true`` (alignment.utils.safe_io) allows it."""
    import glob

    from alignment.utils.safe_io import check_not_pickle, load_tree

    files = sorted(glob.glob(os.path.join(directory, "model*.safetensors")))
    if files:
        state: Dict[str, paddle.Tensor] = {}
        for file in files:
            state.update(load_tree(file))
        return state
    pickled = sorted(glob.glob(os.path.join(directory, "model_state*.pdparams")))
    if not pickled:
        raise FileNotFoundError(f"{directory}: no model*.safetensors (or model_state*.pdparams) weights")
    state = {}
    for file in pickled:
        check_not_pickle(file, "weights file")
        state.update(paddle.load(file))
    return state


# ------------------------------------------------------------------------------------------- freezing
def freeze(model):
    """Eval mode and ``stop_gradient`` on every parameter (reference, teacher and reward models)."""
    model.eval()
    for p in model.parameters():
        p.stop_gradient = True
    return model


def count_parameters(model) -> Tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        n = int(p.numel())
        total += n
        if not p.stop_gradient:
            trainable += n
    return trainable, total


def is_local_dir(name_or_path: str) -> bool:
    return os.path.isdir(name_or_path)

"""Hugging Face checkpoints in and out, for the Llama and Qwen2 families.

Import (every stage, through ``loading.resolve_model_path``): a local directory in the Hugging Face layout
(``config.json`` with ``model_type`` llama / qwen2, PyTorch-layout ``model*.safetensors`` whose keys start with
``model.`` / ``lm_head.`` / ``score.``, and the HF tokenizer files) is converted once into a PaddleNLP directory
under the import cache and that directory is what the stage loads::

    from alignment.models.hf import paddle_dir
    paddle_dir("/models/Qwen2-0.5B")        # -> ~/.cache/alignment/hf-import/<key>/ (converted once)

The conversion is PaddleNLP's own: its ``<Family>ForCausalLM._get_name_mappings(config)`` table, the one
``from_pretrained(..., convert_from_torch=True)`` applies (``model.*`` -> ``llama.*`` / ``qwen2.*``, Linear
weights transposed from PyTorch's [out, in] to Paddle's [in, out]). We do not call ``convert_from_torch``
itself because it writes a pickle ``model_state.pdparams`` into the user's checkpoint directory; the
converted copy is written as safetensors in the cache instead (``ALIGNMENT_HF_CACHE`` moves it), keyed by the
source's path, file sizes and modification times, so an edited checkpoint is converted again. A sequence
classification checkpoint (``LlamaForSequenceClassification``, a reward model) becomes a score-model directory
(backbone + ``score.weight`` as the score head; a ``value_head.safetensors`` next to it, as our export writes,
wins because it also holds the normaliser). Tokenizer files are copied; a Llama ``tokenizer.model`` is also
copied as PaddleNLP's ``sentencepiece.bpe.model``.

Export (``python -m alignment.tools.export``): ``export_hf`` writes the inverse, see its docstring.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["FAMILIES", "is_hf_checkpoint", "paddle_dir", "name_pairs", "to_paddle_state", "to_hf_state",
           "export_hf", "ExportError", "cache_root"]

# model_type -> (PaddleNLP class names, Paddle key prefix, HF causal-LM / sequence-classification architectures)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", "llama", "LlamaForCausalLM", "LlamaForSequenceClassification"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", "qwen2", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
}
_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json",
                    "tokenizer.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt", "chat_template.json",
                    "chat_template.jinja")
_HF_SKIP = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry; recomputed by every implementation


class ExportError(ValueError):
    """A checkpoint the export cannot convert; the message names the file or field."""


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("ALIGNMENT_HF_CACHE") or "~/.cache/alignment/hf-import")


# ------------------------------------------------------------------------------------------ detection
def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _weight_files(directory: str) -> List[str]:
    names = sorted(n for n in os.listdir(directory)
                   if n.endswith(".safetensors") and n.startswith("model") and not n.startswith("value_head"))
    return [os.path.join(directory, n) for n in names]


def _keys(path: str) -> Tuple[List[str], dict]:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return list(f.keys()), (f.metadata() or {})


def is_hf_checkpoint(directory: str) -> bool:
    """``directory`` holds a Llama / Qwen2 checkpoint in the Hugging Face (PyTorch) layout."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        return False
    try:
        config = _read_json(config_path)
    except (OSError, ValueError):
        return False
    family = FAMILIES.get(config.get("model_type"))
    if family is None or "score_type" in config and not _is_seq_cls(config):
        return False
    files = _weight_files(directory)
    if not files:
        return False
    keys, metadata = _keys(files[0])
    prefix = family[2] + "."
    if any(k.startswith(prefix) for k in keys):
        return False  # Paddle layout (llama.*, qwen2.*)
    return any(k.startswith(("model.", "lm_head.", "score.")) for k in keys) or metadata.get("format") == "pt"


def _is_seq_cls(config: dict) -> bool:
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


# ------------------------------------------------------------------------------------------ name maps
def _paddle_config(hf_config: dict, architecture: str):
    import paddlenlp.transformers as t

    family = FAMILIES[hf_config["model_type"]]
    config = getattr(t, family[1]).from_dict(dict(hf_config))
    config.architectures = [architecture]
    return config


def name_pairs(hf_config: dict, *, causal_lm: bool = True) -> List[Tuple[str, str, bool]]:
    """(HF name, Paddle name, transposed) for every weight, from PaddleNLP's ``_get_name_mappings``."""
    import paddlenlp.transformers as t

    family = FAMILIES[hf_config["model_type"]]
    config = _paddle_config(hf_config, family[0])
    if not causal_lm:
        config.tie_word_embeddings = True  # no lm_head
    mappings = getattr(t, family[0])._get_name_mappings(config)
    return [(m.source_name, m.target_name, m.action == "transpose") for m in mappings
            if not m.source_name.endswith(_HF_SKIP)]


def to_paddle_state(hf_state: Dict[str, np.ndarray], hf_config: dict) -> Dict[str, np.ndarray]:
    """HF (PyTorch layout) weights -> PaddleNLP names and layout; ``score.weight`` -> ``score_head.weight``."""
    seq_cls = _is_seq_cls(hf_config)
    out, used = {}, set()
    for src, dst, transpose in name_pairs(hf_config, causal_lm=not seq_cls):
        if src in hf_state:
            value = hf_state[src]
            out[dst] = np.ascontiguousarray(value.T) if transpose else value
            used.add(src)
    if seq_cls and "score.weight" in hf_state:
        out["score_head.weight"] = np.ascontiguousarray(hf_state["score.weight"].T)
        used.add("score.weight")
        if "score.bias" in hf_state:
            out["score_head.bias"] = hf_state["score.bias"]
            used.add("score.bias")
    left = sorted(k for k in hf_state if k not in used and not k.endswith(_HF_SKIP))
    if left:
        raise ExportError(f"{len(left)} tensors of the Hugging Face checkpoint have no PaddleNLP "
                          f"{hf_config['model_type']} counterpart: {', '.join(left[:4])}")
    return out


def to_hf_state(state: Dict[str, np.ndarray], hf_config: dict, *, seq_cls: bool = False) -> Dict[str, np.ndarray]:
    """PaddleNLP weights -> HF names and PyTorch layout (the inverse of ``to_paddle_state``)."""
    out = {}
    for src, dst, transpose in name_pairs(hf_config, causal_lm=not seq_cls):
        if dst in state:
            value = state[dst]
            out[src] = np.ascontiguousarray(value.T) if transpose else value
        elif not (src == "lm_head.weight" and hf_config.get("tie_word_embeddings")):
            raise ExportError(f"the checkpoint has no '{dst}' (needed for the Hugging Face '{src}')")
    return out


# ------------------------------------------------------------------------------------------ import
def _source_key(directory: str) -> str:
    h = hashlib.sha1(os.path.abspath(directory).encode())
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            st = os.stat(path)
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:20]


_MEMO: Dict[str, str] = {}


def paddle_dir(directory: str) -> str:
    """The PaddleNLP directory to load for ``directory``: itself unless it is an HF checkpoint, else its
    converted copy in the import cache (converted now when missing; safe under several processes)."""
    if not os.path.isdir(directory) or not is_hf_checkpoint(directory):
        return directory
    key = _source_key(directory)
    if key in _MEMO and os.path.isdir(_MEMO[key]):
        return _MEMO[key]
    root = cache_root()
    final = os.path.join(root, f"{os.path.basename(os.path.abspath(directory))}-{key}")
    if not os.path.isfile(os.path.join(final, "config.json")):
        os.makedirs(root, exist_ok=True)
        tmp = f"{final}.tmp.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            _convert_into(directory, tmp)
            from alignment.utils.safe_io import fsync_tree, share_tree

            share_tree(tmp)
            fsync_tree(tmp)
            try:
                os.rename(tmp, final)
            except OSError:  # another process published it first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("converted the Hugging Face checkpoint %s into %s (PaddleNLP layout)", directory, final)
    _MEMO[key] = final
    return final


def _load_hf_weights(directory: str) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    state: Dict[str, np.ndarray] = {}
    for path in _weight_files(directory):
        state.update(load_file(path))  # bfloat16 arrives as ml_dtypes.bfloat16
    return state


def _convert_into(directory: str, out: str) -> None:
    from safetensors.numpy import save_file

    hf_config = _read_json(os.path.join(directory, "config.json"))
    family = FAMILIES[hf_config["model_type"]]
    state = to_paddle_state(_load_hf_weights(directory), hf_config)
    config = dict(hf_config)
    dtype = config.get("torch_dtype") or config.get("dtype") or "float32"
    config["dtype"] = dtype if isinstance(dtype, str) else "float32"
    seq_cls = _is_seq_cls(hf_config)
    head_file = os.path.join(directory, "value_head.safetensors")
    if seq_cls:
        from alignment.models.score_model import VALUE_HEAD_NAME, ScoreConfig, _head_tensors

        saved = ScoreConfig.from_config(config)
        score = saved or ScoreConfig(score_type="reward", score_dim=int(state["score_head.weight"].shape[1]),
                                     bias="score_head.bias" in state)
        config.update(score.to_config_dict())
        config["architectures"] = [family[0].replace("ForCausalLM", "ForScore")]
        if os.path.isfile(head_file):
            shutil.copy(head_file, os.path.join(out, VALUE_HEAD_NAME))
        else:
            head = _head_tensors({"score_head.weight": state["score_head.weight"].astype("float32"),
                                  **({"score_head.bias": state["score_head.bias"]} if "score_head.bias" in state else {})})
            save_file(head, os.path.join(out, VALUE_HEAD_NAME), metadata={"format": "pt"})
    else:
        config["architectures"] = [family[0]]
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "np"})
    for name in _TOKENIZER_FILES + ("generation_config.json",):
        if os.path.isfile(os.path.join(directory, name)):
            shutil.copy(os.path.join(directory, name), os.path.join(out, name))
    if os.path.isfile(os.path.join(directory, "tokenizer.model")) and not os.path.isfile(
            os.path.join(out, "sentencepiece.bpe.model")):
        shutil.copy(os.path.join(directory, "tokenizer.model"), os.path.join(out, "sentencepiece.bpe.model"))
    with open(os.path.join(out, "alignment_hf_source.json"), "w", encoding="utf-8") as f:
        json.dump({"source": os.path.abspath(directory), "conversion": f"PaddleNLP {family[0]}._get_name_mappings"},
                  f, indent=1)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:  # last: a config means complete
        json.dump(config, f, indent=2)


# ------------------------------------------------------------------------------------------ export
_HF_CONFIG_KEYS = {
    "common": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
               "use_cache", "tie_word_embeddings", "rope_theta", "attention_dropout", "bos_token_id",
               "eos_token_id", "pad_token_id"),
    "llama": ("attention_bias", "mlp_bias", "pretraining_tp"),
    "qwen2": ("use_sliding_window", "sliding_window", "max_window_layers"),
}


def hf_config_dict(paddle_config: dict, architecture: str, torch_dtype: str) -> dict:
    """The HF config.json of a PaddleNLP config (only keys transformers' Llama / Qwen2 configs define)."""
    model_type = paddle_config["model_type"]
    out = {"architectures": [architecture], "model_type": model_type, "torch_dtype": torch_dtype}
    for key in _HF_CONFIG_KEYS["common"] + _HF_CONFIG_KEYS.get(model_type, ()):
        if key in paddle_config and paddle_config[key] is not None:
            out[key] = paddle_config[key]
    if model_type == "llama":
        out.setdefault("attention_bias", False)
        out.setdefault("mlp_bias", False)
        factor = paddle_config.get("rope_scaling_factor") or 1.0
        if paddle_config.get("rope_scaling") or float(factor) != 1.0:
            out["rope_scaling"] = paddle_config.get("rope_scaling") or {
                "type": paddle_config.get("rope_scaling_type") or "linear", "factor": float(factor)}
    if model_type == "qwen2" and isinstance(paddle_config.get("rope_scaling"), dict):
        out["rope_scaling"] = paddle_config["rope_scaling"]
    out.setdefault("rope_theta", 10000.0 if model_type == "llama" else 1000000.0)
    if "num_key_value_heads" not in out:
        out["num_key_value_heads"] = out.get("num_attention_heads")
    return out


def _lora_merged(directory: str, base: Optional[str]) -> Dict[str, np.ndarray]:
    """Base weights + the adapters of an adapter-only LoRA checkpoint, merged: W + A @ B * scaling."""
    from alignment.models.loading import read_weights, resolve_model_path
    from alignment.utils.safe_io import check_not_pickle, is_safetensors_file, load_tree

    lora_config = _read_json(os.path.join(directory, "lora_config.json"))
    files = [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if n.startswith("lora_model")]
    adapters = {}
    for path in files:
        if is_safetensors_file(path):
            adapters.update(load_tree(path, return_numpy=True))
        else:
            check_not_pickle(path, "LoRA weights")
            import paddle

            adapters.update({k: v.numpy() for k, v in paddle.load(path).items()})
    base = base or lora_config.get("base_model_name_or_path")
    if not base:
        raise ExportError(f"{directory}: adapter-only LoRA checkpoint without base_model_name_or_path; pass --base")
    base_dir = paddle_dir(resolve_model_path(base))
    state = {k: _np(v) for k, v in read_weights(base_dir).items()}
    r = int(lora_config.get("r", 8))
    alpha = float(lora_config.get("lora_alpha", r))
    scaling = alpha / (np.sqrt(r) if lora_config.get("rslora") else r)
    for key, a in adapters.items():
        if key.endswith(".lora_A"):
            stem = key[: -len(".lora_A")]
            b = adapters[stem + ".lora_B"]
            w = state[stem + ".weight"]
            state[stem + ".weight"] = (w.astype("float32") + a.astype("float32") @ b.astype("float32")
                                       * scaling).astype(w.dtype)
        elif ".lora_" not in key:  # e.g. a trained score head saved with the adapters
            state[key] = adapters[key]
    return state


def _np(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    import paddle

    if value.dtype == paddle.bfloat16:
        import ml_dtypes

        return value.view(paddle.uint16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()


def _cast(array: np.ndarray, dtype: Optional[str]) -> np.ndarray:
    if dtype in (None, "keep"):
        return array
    if dtype == "bfloat16":
        import ml_dtypes

        return array.astype(ml_dtypes.bfloat16)
    return array.astype(dtype)


def _dtype_name(array: np.ndarray) -> str:
    name = str(array.dtype)
    return {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}.get(name, "float32")


def export_hf(checkpoint: str, out: str, *, dtype: Optional[str] = None, base: Optional[str] = None) -> dict:
    """Write ``checkpoint`` (a causal LM, a score model, or a LoRA checkpoint) as a Hugging Face directory.

    Causal LM: ``model.safetensors`` (HF names, Linear weights in PyTorch's [out, in]), ``config.json``
    (``LlamaForCausalLM`` / ``Qwen2ForCausalLM``), ``generation_config.json`` and the tokenizer (also as
    ``tokenizer.model`` for a SentencePiece one) -> ``AutoModelForCausalLM``.
    Score model (reward, cost, critic): ``model.safetensors`` with the backbone (``model.*``) and the head as
    ``score.weight`` [score_dim, hidden], config ``<Family>ForSequenceClassification`` with ``num_labels`` =
    score_dim -> ``AutoModelForSequenceClassification`` gives the raw end scores (and ``AutoModel`` the
    backbone); ``value_head.safetensors`` keeps the head in the TRL / ms-swift layout (``v_head.summary.weight``
    [D, H], ``v_head.summary.bias``) with the normaliser statistics. A head bias or output normalisation cannot
    be expressed in the sequence-classification layout: the scale is folded into ``score.weight`` and the
    remaining offset is written as ``score_offset`` in config.json (scores differ by that constant; rankings
    are the same).
    LoRA: merged weights next to the adapters are used; an adapter-only checkpoint is merged into its base
    (``base`` or ``lora_config.json``'s ``base_model_name_or_path``). Returns a summary dict.
    """
    from alignment.models.loading import read_weights
    from alignment.models.score_model import ScoreConfig, _head_tensors
    from alignment.utils.safe_io import share_tree

    checkpoint = paddle_dir(checkpoint)
    config_path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(config_path):
        hint = " (a PPO output: export its policy/ or value/ sub-directory)" if os.path.isdir(
            os.path.join(checkpoint, "policy")) else ""
        raise ExportError(f"{checkpoint}: no config.json; expected a model checkpoint directory{hint}")
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ExportError(f"{config_path}: model_type '{model_type}' is not supported; supported: "
                          f"{', '.join(FAMILIES)}")
    family = FAMILIES[model_type]
    has_lora = os.path.isfile(os.path.join(checkpoint, "lora_config.json"))
    if _weight_files(checkpoint):
        state = {k: _np(v) for k, v in read_weights(checkpoint).items()}
        lora = "merged weights of the checkpoint" if has_lora else None
    elif has_lora:
        state, lora = _lora_merged(checkpoint, base), "adapters merged into the base"
    else:
        state, lora = {k: _np(v) for k, v in read_weights(checkpoint).items()}, None
    state = {k: v for k, v in state.items() if ".lora_" not in k}
    score = ScoreConfig.from_config(config)
    if score is not None and "score_head.weight" not in state:
        raise ExportError(f"{checkpoint}: a score-model config but no score_head.weight in the weights")
    first = next(v for k, v in state.items() if not k.startswith(("score_head", "normalizer")))
    dtype = None if dtype in (None, "keep") else dtype
    torch_dtype = dtype or _dtype_name(first)
    hf_config = hf_config_dict(config, family[4] if score is not None else family[3], torch_dtype)
    tensors = {k: _cast(v, dtype) for k, v in to_hf_state(state, {**config, **hf_config},
                                                            seq_cls=score is not None).items()}
    summary = {"checkpoint": checkpoint, "out": out, "architecture": hf_config["architectures"][0],
               "dtype": torch_dtype, "tensors": len(tensors), "lora": lora}
    if score is not None:
        head = _head_tensors(state)
        w = head["v_head.summary.weight"].astype("float64")  # (D, H)
        offset = head["v_head.summary.bias"].astype("float64")
        if score.do_normalize and score.normalizer_type is not None and score.normalize_mode != "identity":
            var, mean = head.get("normalizer.var"), head.get("normalizer.mean")
            std = np.sqrt(np.asarray(var, "float64").reshape(-1)) + 1e-8 if var is not None else np.ones(1)
            w = w / std[:, None]
            offset = offset / std
            if score.normalize_mode == "affine" and mean is not None:
                offset = offset - np.asarray(mean, "float64").reshape(-1) / std
        tensors["score.weight"] = _cast(w.astype("float32"), dtype or _dtype_name(first))
        hf_config.update(num_labels=score.score_dim, score_offset=offset.reshape(-1).tolist(),
                         **{k: v for k, v in score.to_config_dict().items()})
        hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(score.score_dim)}
        hf_config["label2id"] = {f"LABEL_{i}": i for i in range(score.score_dim)}
        summary["score_type"] = score.score_type
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    from alignment.utils.io import atomic_dir

    with atomic_dir(out) as tmp:
        from safetensors.numpy import save_file

        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        if score is not None:
            save_file(_head_tensors(state), os.path.join(tmp, "value_head.safetensors"),
                      metadata={"format": "pt", "score_type": score.score_type})
        _write_tokenizer(checkpoint, str(tmp), config)
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
        gen_path = os.path.join(checkpoint, "generation_config.json")
        if os.path.isfile(gen_path):
            saved = _read_json(gen_path)
            generation.update({k: saved[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "temperature",
                                                     "top_p", "top_k", "do_sample") if k in saved})
        with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump(generation, f, indent=2)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        share_tree(str(tmp))
    return summary


def _write_tokenizer(checkpoint: str, out: str, config: dict) -> None:
    """The tokenizer files for transformers: a SentencePiece model also as tokenizer.model, and a
    tokenizer_config.json without PaddleNLP-only keys."""
    for name in _TOKENIZER_FILES:
        if os.path.isfile(os.path.join(checkpoint, name)):
            shutil.copy(os.path.join(checkpoint, name), os.path.join(out, name))
    sp = os.path.join(checkpoint, "sentencepiece.bpe.model")
    if os.path.isfile(sp) and not os.path.isfile(os.path.join(out, "tokenizer.model")):
        shutil.copy(sp, os.path.join(out, "tokenizer.model"))
    path = os.path.join(out, "tokenizer_config.json")
    if os.path.isfile(path):
        tok = _read_json(path)
        for key in ("sp_model_kwargs", "decode_with_prefix_space") + (("added_tokens_decoder",) if not tok.get(
                "added_tokens_decoder") else ()):
            if tok.get(key) in (None, {}, False):
                tok.pop(key, None)
        tok.setdefault("model_max_length", int(config.get("max_position_embeddings", 2048)))
        tok.setdefault("legacy", True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(copy.deepcopy(tok), f, indent=2)

"""Typed model and data arguments shared by the stages: SFT, DPO, KTO and GKD take both, the reward-model
stage subclasses ``DataArguments``.

Every field has a help string and a default; ``__post_init__`` checks values and names the allowed ones.
Training hyperparameters are PaddleNLP's ``TrainingArguments`` (learning_rate, max_steps, bf16, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from alignment.models.loading import LoraArguments

__all__ = ["ModelArguments", "DataArguments", "spec_from_text"]


def spec_from_text(value, name: str = "train_datasets"):
    """A dataset spec given as JSON text (a dict or list, from an argument file or a flag such as
    ``--train_datasets '{"json": {"path": "a.jsonl", "format": "trl"}}'``) as the dict / list it spells."""
    import json

    if not isinstance(value, str) or value.lstrip()[:1] not in ("{", "["):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: not a valid JSON dataset spec ({e.msg}, column {e.colno}): {value[:80]}") from None


@dataclass
class ModelArguments(LoraArguments):
    """Which causal LM to fine-tune, and how (all weights, or LoRA adapters)."""

    model_name_or_path: str = field(
        default="facebook/llama-7b", metadata={"help": "Hub name or local path of the model to fine-tune."}
    )
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer hub name or path (default: model_name_or_path)."}
    )
    use_flash_attention: bool = field(default=False, metadata={"help": "Use flash attention (GPU only)."})
    merge_lora_on_save: bool = field(
        default=True,
        metadata={"help": "With lora: also write the merged full model into output_dir "
                          "(model_state.pdparams + config.json, loadable by AutoModelForCausalLM) "
                          "next to the adapter files."},
    )
    offload_level: str = field(
        default="",
        metadata={"help": "freeze_model: the frozen reference (DPO, KTO) or teacher (GKD) stays in host memory "
                          "between its forward passes (the PPO stage has more levels)."},
    )

    def __post_init__(self):
        super().__post_init__()
        from alignment.parallel.offload import parse_offload_level

        levels = parse_offload_level(self.offload_level)
        if set(levels) - {"freeze_model"}:
            raise ValueError(f"offload_level '{self.offload_level}': the Trainer stages offload freeze_model only "
                             "(their optimizer and trained model stay with the PaddleNLP Trainer); allowed values: "
                             "freeze_model, or ''")
        self.offload_level = " ".join(levels)


@dataclass
class DataArguments:
    """Where the data comes from and how it is tokenized (spec syntax: alignment/data/API.md)."""

    train_datasets: str = field(
        default="alpaca",
        metadata={"help": "Dataset spec 'name[:ratio[:path]],...', e.g. 'alpaca' or "
                          "'json:1.0:/data/sft.jsonl' (alpaca, TRL, ShareGPT/messages, PKU-SafeRLHF, hh-rlhf "
                          "record layouts are detected)."},
    )
    eval_datasets: Optional[str] = field(default=None, metadata={"help": "Held-out dataset spec (optional)."})
    eval_split_ratio: float = field(
        default=0.0,
        metadata={"help": "Without eval_datasets: fraction of the training data held out, in [0, 1)."},
    )
    max_length: int = field(default=512, metadata={"help": "Maximum prompt + answer tokens (> 0)."})
    max_prompt_length: Optional[int] = field(
        default=None, metadata={"help": "Maximum prompt tokens (its start is cut); None = no separate cap."}
    )
    template: str = field(default="beaver", metadata={"help": "Prompt template: beaver, chat or raw."})
    truncation: str = field(
        default="keep_prompt_end",
        metadata={"help": "Too-long samples: keep_prompt_end (cut the prompt start) or drop."},
    )
    system: Optional[str] = field(default=None, metadata={"help": "Default system prompt."})

    def __post_init__(self) -> None:
        from alignment.data import TEMPLATES, TRUNCATION_MODES

        if isinstance(self.eval_datasets, str) and self.eval_datasets.strip().lower() in ("", "none", "null"):
            self.eval_datasets = None
        self.train_datasets = spec_from_text(self.train_datasets, "train_datasets")
        self.eval_datasets = spec_from_text(self.eval_datasets, "eval_datasets")
        if not self.train_datasets:
            raise ValueError(
                "train_datasets must name at least one dataset, e.g. 'json:1.0:data/train.jsonl'"
            )
        if not 0.0 <= self.eval_split_ratio < 1.0:
            raise ValueError(f"eval_split_ratio must be in [0, 1), got {self.eval_split_ratio}")
        if self.max_length <= 0:
            raise ValueError(f"max_length must be > 0, got {self.max_length}")
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"max_prompt_length must be in (0, max_length={self.max_length}), "
                f"got {self.max_prompt_length}"
            )
        if self.template not in TEMPLATES:
            raise ValueError(
                f"template='{self.template}' is not valid; allowed values: {', '.join(TEMPLATES)}"
            )
        if self.truncation not in TRUNCATION_MODES:
            raise ValueError(
                f"truncation='{self.truncation}' is not valid; allowed values: {', '.join(TRUNCATION_MODES)}"
            )

    def dataset_kwargs(self, seed: int) -> dict:
        """Keywords of the tokenized-dataset constructors."""
        return dict(max_length=self.max_length, seed=seed, template=self.template, truncation=self.truncation,
                    max_prompt_length=self.max_prompt_length, system=self.system)

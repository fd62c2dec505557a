"""Typed arguments of the reward-model stage: model (score model), data, loss.

Field names and defaults follow PaddleNLP's ``run_reward.py`` / ``rm_argument.json`` (see
config/llama/rm_argument.json), plus the ms-swift / TRL extras (``center_rewards_coefficient``; a ``margin``
column in the data is used automatically). Deliberate differences, each for a reason:

* ``normalizer_momentum`` defaults to 0.9 (PaddleNLP: None, which crashes the EMA normaliser at its first
  update; its rm_argument.json and README set 0.9).
* ``regularization`` defaults to 0.001 (PaddleNLP's dataclass: 0.0; its rm_argument.json: 0.001) and is
  safe-rlhf's term, half of PaddleNLP's for the same value (alignment/algorithms/reward.py).
* ``max_length`` defaults to 512 (PaddleNLP's DataArgument: 2048; its rm_argument.json: 512).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from alignment.models.loading import LoraArguments
from alignment.models.score_model import ScoreConfig
from alignment.training.arguments import DataArguments

__all__ = ["RewardModelArguments", "RewardDataArguments", "RewardArguments"]


@dataclass
class RewardModelArguments(LoraArguments):
    """The score model: which backbone, which head, which normaliser; with ``lora`` the backbone trains LoRA
    adapters and the score head is trained in full."""

    model_name_or_path: str = field(
        default="PKU-Alignment/alpaca-7b-reproduced",
        metadata={"help": "Hub name or local path of the start model (usually the SFT model)."},
    )
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer hub name or path (default: model_name_or_path)."}
    )
    init_score_head: bool = field(
        default=True,
        metadata={"help": "Start a NEW score head (the usual case: model_name_or_path is an SFT/LM checkpoint). "
                          "false: continue from the checkpoint's trained head (an error if it has none)."},
    )
    score_type: str = field(
        default="reward", metadata={"help": "reward, cost or critic (normalisation: affine, scale, identity)."}
    )
    score_bias: bool = field(default=False, metadata={"help": "Give the score head a bias (PaddleNLP's `bias`)."})
    normalize_score_during_training: bool = field(
        default=False,
        metadata={"help": "Update the normaliser with each batch's end scores and train on normalised scores; the "
                          "saved model then normalises its outputs (do_normalize=true)."},
    )
    normalizer_type: Optional[str] = field(
        default="ExponentialMovingAverage",
        metadata={"help": "Score normaliser: RunningMeanStd, ExponentialMovingAverage or None (counts only)."},
    )
    normalizer_momentum: Optional[float] = field(
        default=0.9,
        metadata={"help": "EMA momentum in [0, 1): mean' = momentum * mean + (1 - momentum) * batch_mean "
                          "(larger = slower). ExponentialMovingAverage only."},
    )
    use_flash_attention: bool = field(default=False, metadata={"help": "Use flash attention (GPU only)."})
    merge_lora_on_save: bool = field(
        default=True,
        metadata={"help": "With lora: write the merged score model (config.json, model.safetensors, "
                          "value_head.safetensors) into output_dir next to the adapter files; false: adapters + head "
                          "only (lora_config.json, lora_model_state.pdparams, value_head.safetensors)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # the LoRA fields
        self.score_config()  # validates score_type, normalizer_type, normalizer_momentum

    def score_config(self) -> ScoreConfig:
        return ScoreConfig(
            score_type=self.score_type, do_normalize=self.normalize_score_during_training,
            normalizer_type=self.normalizer_type, momentum=self.normalizer_momentum, bias=self.score_bias,
        )


@dataclass
class RewardDataArguments(DataArguments):
    """Preference pairs (chosen / rejected); same spec syntax as SFT (alignment/data/API.md)."""

    train_datasets: str = field(
        default="PKU-SafeRLHF-30K/train",
        metadata={"help": "Preference dataset spec 'name[:ratio[:path]],...' (PKU-SafeRLHF, hh-rlhf, TRL "
                          "prompt/chosen/rejected, LLaMA-Factory and ms-swift layouts; a `margin` column is used)."},
    )
    eval_datasets: Optional[str] = field(
        default=None,
        metadata={"help": "Held-out preference dataset spec, e.g. PKU-SafeRLHF-30K/test (optional; or eval_split_ratio)."},
    )


@dataclass
class RewardArguments:
    """The pairwise loss (alignment.algorithms, kind "reward")."""

    loss_type: str = field(
        default="sequence-wise",
        metadata={"help": "sequence-wise (Bradley-Terry on end scores) or token-wise (safe-rlhf, from the first "
                          "differing token to the end)."},
    )
    regularization: float = field(
        default=0.001, metadata={"help": "Weight of the squared-score regulariser (>= 0; safe-rlhf's term)."}
    )
    center_rewards_coefficient: Optional[float] = field(
        default=None,
        metadata={"help": "Weight of the reward-centering term c * mean (r_chosen + r_rejected)^2 (TRL / ms-swift; "
                          "Eisenstein et al. 2023). None or 0: off."},
    )

    def __post_init__(self) -> None:
        from alignment.algorithms import available

        valid = available("reward")
        if self.loss_type not in valid:
            raise ValueError(f"loss_type='{self.loss_type}' is not valid; allowed values: {', '.join(valid)}")
        if self.regularization < 0:
            raise ValueError(f"regularization must be >= 0, got {self.regularization}")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise ValueError(
                f"center_rewards_coefficient must be >= 0 or None, got {self.center_rewards_coefficient}"
            )

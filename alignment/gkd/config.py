"""Typed arguments of the GKD stage (on-policy distillation with the generalised JSD).

Defaults follow TRL's ``GKDConfig`` (beta 0.5, lmbda 0.5, seq_kd False, temperature 0.9,
max_new_tokens 128) plus ms-swift's ``sft_alpha`` (0 = off).
"""

from dataclasses import dataclass, field
from typing import Optional

__all__ = ["GKDArguments"]


@dataclass
class GKDArguments:
    """GKD hyperparameters (see config/llama/gkd_argument.json)."""

    teacher_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Hub name or local path of the teacher (same tokenizer/vocabulary as the student)."}
    )
    beta: float = field(
        default=0.5,
        metadata={"help": "Generalised JSD interpolation in [0, 1]: 0 = forward KL(teacher||student), "
                          "1 = reverse KL(student||teacher)."},
    )
    lmbda: float = field(
        default=0.5, metadata={"help": "Probability in [0, 1] that a step trains on on-policy student samples."}
    )
    seq_kd: bool = field(
        default=False,
        metadata={"help": "Sequence-level KD: when a step is not on-policy, train on teacher-generated completions "
                          "instead of the dataset's."},
    )
    sft_alpha: float = field(
        default=0.0,
        metadata={"help": "Add sft_alpha * token-mean NLL of the student on the step's completions (ms-swift; >= 0)."},
    )
    temperature: float = field(
        default=0.9, metadata={"help": "Sampling temperature of student/teacher generation (> 0); the loss uses T = 1."}
    )
    max_completion_length: int = field(
        default=128, metadata={"help": "Maximum number of new tokens generated per prompt (> 0)."}
    )

    def __post_init__(self) -> None:
        for name in ("beta", "lmbda"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.sft_alpha < 0:
            raise ValueError(f"sft_alpha must be >= 0, got {self.sft_alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.max_completion_length <= 0:
            raise ValueError(f"max_completion_length must be > 0, got {self.max_completion_length}")

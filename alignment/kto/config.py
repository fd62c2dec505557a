"""Typed arguments of the KTO stage (unpaired desirable / undesirable completions).

Defaults follow TRL's ``KTOConfig`` (beta 0.1, desirable_weight = undesirable_weight = 1.0).
"""

from dataclasses import dataclass, field
from typing import Optional

__all__ = ["KTOArguments"]


@dataclass
class KTOArguments:
    """KTO hyperparameters (see config/llama/kto_argument.json)."""

    loss_type: str = field(
        default="kto",
        metadata={"help": "Registered unpaired loss: kto (KL reference point from mismatched pairs) or "
                          "apo_zero_unpaired (no KL term, no KL forward pass)."},
    )
    beta: float = field(default=0.1, metadata={"help": "Inverse temperature beta of the implicit reward (> 0)."})
    desirable_weight: float = field(
        default=1.0, metadata={"help": "lambda_D: weight of the desirable examples' losses (> 0)."}
    )
    undesirable_weight: float = field(
        default=1.0, metadata={"help": "lambda_U: weight of the undesirable examples' losses (> 0)."}
    )
    ref_model: Optional[str] = field(
        default=None,
        metadata={"help": "Hub name or local path of the reference model; default: a frozen copy of the start "
                          "model (a LoRA policy uses itself with adapters disabled)."},
    )

    def __post_init__(self) -> None:
        from alignment.algorithms import registry
        from alignment.algorithms import preference  # noqa: F401  (registers the unpaired losses)

        valid = registry.available("unpaired")
        if self.loss_type not in valid:
            raise ValueError(f"loss_type='{self.loss_type}' is not a registered unpaired loss; valid names: {', '.join(valid)}")
        for name in ("beta", "desirable_weight", "undesirable_weight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def uses_kl(self) -> bool:
        """Whether the loss needs the KL reference point (and therefore the mismatched-pair forward)."""
        return self.loss_type == "kto"

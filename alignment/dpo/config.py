"""Typed arguments of the offline preference stage (DPO and its loss family, CPO, SimPO, ORPO).

One dataclass, ``DPOArguments``; every field has a help string and a default, and ``__post_init__``
resolves the framework-style selectors into one ``loss_type`` list:

* TRL style: ``loss_type`` (a name or a list of names, MPO with ``loss_weights``), ``rpo_alpha`` ...
* ms-swift style: ``rlhf_type`` in {dpo, cpo, simpo, orpo}; for cpo/simpo the NLL weight ``cpo_alpha``
  defaults to 1.0 and for simpo ``beta``/``simpo_gamma`` default to ms-swift's 2.0/1.0.
* LLaMA-Factory style: ``pref_loss`` in {sigmoid, hinge, ipo, kto_pair, orpo, simpo}; no NLL term unless
  ``cpo_alpha``/``rpo_alpha`` is set (LLaMA-Factory's ``pref_ftx``).

ORPO's lambda is ``beta`` (as in TRL). CPO, SimPO and ORPO never load a reference model.
"""

from dataclasses import dataclass, field
from typing import List, Optional

__all__ = ["DPOArguments", "RLHF_TYPES", "PREF_LOSS_NAMES"]

RLHF_TYPES = ("dpo", "cpo", "simpo", "orpo")
PREF_LOSS_NAMES = ("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo")
# ms-swift defaults that differ from TRL's for rlhf_type=simpo.
_SWIFT_SIMPO_BETA, _SWIFT_SIMPO_GAMMA = 2.0, 1.0


def _preference_names():
    from alignment.algorithms import registry
    from alignment.algorithms import preference  # noqa: F401  (registers the losses)

    return registry.available("preference"), preference.REFERENCE_FREE


@dataclass
class DPOArguments:
    """Preference-optimisation hyperparameters (see config/llama/{dpo,cpo,simpo,orpo}_argument.json)."""

    rlhf_type: str = field(
        default="dpo",
        metadata={"help": "ms-swift style stage selector: dpo (loss_type decides), cpo, simpo or orpo."},
    )
    pref_loss: Optional[str] = field(
        default=None,
        metadata={"help": "LLaMA-Factory style loss selector (sigmoid, hinge, ipo, kto_pair, orpo, simpo); "
                          "overrides rlhf_type/loss_type when set."},
    )
    loss_type: Optional[List[str]] = field(
        default=None,
        metadata={"help": "Registered preference loss name(s); several names mix losses (MPO) with loss_weights. "
                          "Default: sigmoid for rlhf_type=dpo, else the rlhf_type name."},
    )
    loss_weights: Optional[List[float]] = field(
        default=None, metadata={"help": "One weight per loss_type entry (default all 1.0)."}
    )
    beta: Optional[float] = field(
        default=None,
        metadata={"help": "Inverse temperature beta (ORPO: lambda). Default 0.1; 2.0 for rlhf_type=simpo (ms-swift)."},
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "Label smoothing / flip rate epsilon (cDPO, robust, exo_pair, aot, cpo, simpo); [0, 0.5)."}
    )
    rpo_alpha: Optional[float] = field(
        default=None, metadata={"help": "RPO: add rpo_alpha * token-mean NLL of the chosen answers (paper: 1.0)."}
    )
    ld_alpha: Optional[float] = field(
        default=None,
        metadata={"help": "LD-DPO alpha in [0, 1]: weight of policy tokens past the shorter answer of a pair "
                          "(reference log-probs stay plain sums, as ms-swift and LLaMA-Factory do)."},
    )
    discopop_tau: float = field(default=0.05, metadata={"help": "DiscoPOP temperature tau (> 0)."})
    dpop_lambda: float = field(default=50.0, metadata={"help": "DPOP penalty weight lambda (>= 0)."})
    simpo_gamma: Optional[float] = field(
        default=None,
        metadata={"help": "SimPO target margin gamma. Default 0.5 (TRL, LLaMA-Factory); 1.0 for rlhf_type=simpo (ms-swift)."},
    )
    cpo_alpha: Optional[float] = field(
        default=None,
        metadata={"help": "Weight of the chosen NLL term of CPO/SimPO. Default 1.0 for rlhf_type cpo/simpo "
                          "(TRL, ms-swift), 0.0 otherwise. Pure SimPO: rlhf_type=simpo with cpo_alpha=0."},
    )
    reference_free: bool = field(
        default=False, metadata={"help": "Use a zero reference (L_ref = 0) for the DPO-family losses; no reference model."}
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Score the whole training (and eval) set with the reference once before training, "
                          "then release the reference model from memory."},
    )
    ref_model: Optional[str] = field(
        default=None,
        metadata={"help": "Hub name or local path of the reference model; default: a frozen copy of the start "
                          "model (a LoRA policy uses itself with adapters disabled)."},
    )

    def __post_init__(self) -> None:
        if self.rlhf_type not in RLHF_TYPES:
            raise ValueError(f"rlhf_type='{self.rlhf_type}' is not valid; allowed values: {', '.join(RLHF_TYPES)}")
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        user_set_loss = self.loss_type is not None
        if self.pref_loss is not None:
            if self.pref_loss not in PREF_LOSS_NAMES:
                raise ValueError(f"pref_loss='{self.pref_loss}' is not valid; allowed values: {', '.join(PREF_LOSS_NAMES)}")
            if user_set_loss and self.loss_type != [self.pref_loss]:
                raise ValueError(f"pref_loss='{self.pref_loss}' conflicts with loss_type={self.loss_type}; set only one")
            if self.rlhf_type != "dpo":
                raise ValueError(f"pref_loss='{self.pref_loss}' conflicts with rlhf_type='{self.rlhf_type}'; set only one")
            self.loss_type = [self.pref_loss]
        elif self.rlhf_type != "dpo":
            if user_set_loss and self.loss_type != [self.rlhf_type]:
                raise ValueError(
                    f"loss_type={self.loss_type} conflicts with rlhf_type='{self.rlhf_type}' (which selects loss_type "
                    f"['{self.rlhf_type}']); use rlhf_type=dpo to pick losses by loss_type"
                )
            self.loss_type = [self.rlhf_type]
        elif not user_set_loss:
            self.loss_type = ["sigmoid"]
        if not self.loss_type:
            raise ValueError("loss_type must name at least one loss")

        valid, reference_free_names = _preference_names()
        for name in self.loss_type:
            if name not in valid:
                raise ValueError(f"loss_type='{name}' is not a registered preference loss; valid names: {', '.join(valid)}")
        if len(set(self.loss_type)) != len(self.loss_type):
            raise ValueError(f"loss_type={self.loss_type} names a loss twice")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} entries but loss_type has {len(self.loss_type)} "
                f"({self.loss_type}); give one weight per loss"
            )

        simpo_stage = self.rlhf_type == "simpo"
        if self.beta is None:
            self.beta = _SWIFT_SIMPO_BETA if simpo_stage else 0.1
        if self.simpo_gamma is None:
            self.simpo_gamma = _SWIFT_SIMPO_GAMMA if simpo_stage else 0.5
        if self.cpo_alpha is None:
            self.cpo_alpha = 1.0 if self.rlhf_type in ("cpo", "simpo") else 0.0

        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if "exo_pair" in self.loss_type and self.label_smoothing <= 0:
            raise ValueError("loss_type exo_pair needs label_smoothing > 0 (the EXO paper recommends 1e-3)")
        if self.ld_alpha is not None and not 0.0 <= self.ld_alpha <= 1.0:
            raise ValueError(f"ld_alpha must be in [0, 1], got {self.ld_alpha}")
        if self.discopop_tau <= 0:
            raise ValueError(f"discopop_tau must be > 0, got {self.discopop_tau}")
        if self.cpo_alpha and not {"cpo", "simpo"} & set(self.loss_type):
            raise ValueError(
                f"cpo_alpha={self.cpo_alpha} applies only to loss_type cpo or simpo, not {self.loss_type}; "
                "use rpo_alpha (or the 'sft' loss) for an NLL term on other losses"
            )
        for name in ("dpop_lambda", "cpo_alpha", "rpo_alpha"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self._reference_free_names = frozenset(reference_free_names)
        if self.ref_model and not self.needs_reference:
            raise ValueError(
                f"ref_model='{self.ref_model}' is given but loss_type={self.loss_type}"
                f"{' with reference_free' if self.reference_free else ''} uses no reference model; drop ref_model, "
                "or choose a loss with a reference (e.g. sigmoid)")

    @property
    def needs_reference(self) -> bool:
        """False for reference-free losses (CPO, SimPO, ORPO, sft only) and ``reference_free``."""
        if self.reference_free:
            return False
        return any(name not in self._reference_free_names and name != "sft" for name in self.loss_type)


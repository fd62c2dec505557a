"""Pure tensor maths of alignment, registered by name (see ``registry``).

Kinds and what they hold:
    preference   paired DPO-family losses, the ``sft`` NLL term, and the reference-free
                 CPO / SimPO / ORPO terms (``preference.REFERENCE_FREE``)
    unpaired     KTO-style unpaired losses
    reward       pairwise reward-model losses
    cost         Safe RLHF cost-model losses (safer / unsafer pairs with safety signs)
    reward_func  rule-based rewards of completion text (accuracy, format, length, repetition)
    policy       PPO-style policy-gradient losses
    value        critic (value) losses
    advantage    advantage estimators (gae, grpo, dr_grpo, rloo, reinforce_plus_plus)
    kl           KL estimators (k1, k2, k3)
    distill      GKD divergences
    normalizer   score normalisers (RunningMeanStd, ExponentialMovingAverage)
    aggregation  loss-aggregation modes

Usage::

    import alignment.algorithms as a
    a.available("preference")          # sorted names
    loss_fn = a.get("preference", "sigmoid")
"""

from .registry import available, get, kinds, register  # noqa: F401

# Importing the modules registers their functions.
from . import (  # noqa: F401,E402
    advantages,
    aggregation,
    cost,
    distill,
    kl,
    lagrangian,
    normalizers,
    policy,
    preference,
    reward,
    verifiers,
)

__all__ = ["available", "get", "kinds", "register"]

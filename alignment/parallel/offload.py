"""Offload levels: which model tensors live in host memory in which phase of a step, and the one mover.

``offload_level`` is any of (space separated):

    freeze_model   reference / reward / teacher parameters: on the device only while they score
    optimizer      optimizer states (Adam moments, master weights): on the device only while their model updates
    train_model    actor / critic parameters: on the device only in the phases that run that model

A PPO step runs the phases ``generation`` (actor), ``experience`` (actor, critic, reference, reward),
``update_actor`` (actor + its optimizer) and ``update_critic`` (critic + its optimizer); ``RESIDENT`` says which
model each phase needs. ``OffloadScheduler.enter(phase)`` is the only place that moves tensors: what the phase
needs comes to the device, what the levels manage and the phase does not need goes to the host (pinned memory
on CUDA). A move keeps each tensor's identity (parameter objects, the optimizer's references to its states,
names): the data is copied and the tensor is pointed at the copy.

On a CPU build host and device are one memory, so a move changes nothing, but the schedule and its
bookkeeping still run: ``timeline`` records, per step and phase, where each managed (model, kind) is meant to
be and how many bytes the move would take, which is what the tests and the memory report read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import paddle

__all__ = ["LEVELS", "PHASES", "RESIDENT", "parse_offload_level", "OffloadScheduler", "optimizer_state_tensors",
           "parameter_tensors", "tensor_bytes"]

LEVELS = ("freeze_model", "optimizer", "train_model")
PHASES = ("generation", "experience", "update_actor", "update_critic")
FROZEN_ROLES = ("reference", "reward_model", "teacher")
# the models each phase runs (their parameters must be on the device; an updating model also its optimizer)
RESIDENT: Dict[str, Tuple[str, ...]] = {
    "generation": ("actor",),
    "experience": ("actor", "critic", "reference", "reward_model"),
    "update_actor": ("actor",),
    "update_critic": ("critic",),
}
UPDATES = {"update_actor": "actor", "update_critic": "critic"}


def parse_offload_level(value: Any, option: str = "offload_level") -> Tuple[str, ...]:
    """``"freeze_model optimizer"`` -> ("freeze_model", "optimizer"); an unknown name is a one-line error."""
    if value is None:
        return ()
    names = value.split() if isinstance(value, str) else [str(v) for v in value]
    bad = [n for n in names if n not in LEVELS]
    if bad:
        raise ValueError(f"{option}: unknown level(s) {', '.join(repr(b) for b in bad)}; allowed values (any of, "
                         f"space separated): {', '.join(LEVELS)}")
    return tuple(dict.fromkeys(names))


def tensor_bytes(t: paddle.Tensor) -> int:
    if t is None or not t._is_initialized():
        return 0
    return int(t.numel()) * t.element_size()


def parameter_tensors(model) -> List[paddle.Tensor]:
    """The parameter tensors a model holds on this rank (a frozen stage-3 model: its slices)."""
    if model is None:
        return []
    shards = getattr(model, "_frozen_shards", None)
    params = [p for p in model.parameters() if shards is None or id(p) not in shards.shards]
    return params + (list(shards.shards.values()) if shards is not None else [])


def _inner_optimizers(optimizer) -> Iterator[Any]:
    seen = set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        yield optimizer
        optimizer = (getattr(optimizer, "_inner_opt", None) or getattr(optimizer, "_optim", None)
                     or getattr(optimizer, "inner_opt", None))


def optimizer_state_tensors(optimizer) -> List[paddle.Tensor]:
    """The optimizer's state tensors (accumulators such as Adam's moments, master weights), through wrappers."""
    out: Dict[int, paddle.Tensor] = {}
    for opt in _inner_optimizers(optimizer):
        for per_param in getattr(opt, "_accumulators", {}).values():
            for t in per_param.values():
                out[id(t)] = t
        for t in getattr(opt, "_master_weights", {}).values():
            out[id(t)] = t
    return list(out.values())


def _places():
    """(device place, host place); the same place on a CPU build."""
    if paddle.is_compiled_with_cuda() and paddle.device.get_device().startswith("gpu"):
        return paddle.CUDAPlace(paddle.distributed.ParallelEnv().device_id), paddle.CUDAPinnedPlace()
    return paddle.CPUPlace(), paddle.CPUPlace()


def _move(t: paddle.Tensor, place) -> int:
    """Point ``t`` at a copy of its data on ``place`` (identity kept); returns the bytes copied (0: no move)."""
    if t is None or not t._is_initialized() or t.place._equals(place):
        return 0
    copied = t._copy_to(place, True)
    t.get_tensor()._share_data_with(copied.get_tensor())
    return tensor_bytes(t)


@dataclass
class _Managed:
    role: str
    kind: str  # "parameters" | "optimizer_states"
    tensors: Any  # a callable giving the tensors (optimizer states appear at the first step)
    where: str = "device"


@dataclass
class OffloadScheduler:
    """The offload schedule of one run (see the module docstring)."""

    levels: Tuple[str, ...] = ()
    timeline: List[Dict[str, Any]] = field(default_factory=list)
    moved_bytes: int = 0

    def __post_init__(self) -> None:
        self.levels = parse_offload_level(self.levels)
        self._managed: List[_Managed] = []
        self.device, self.host = _places()
        self.step = 0
        self.phase: Optional[str] = None

    @property
    def moves_memory(self) -> bool:
        """False on a CPU build: host and device are one memory, the moves are bookkeeping only."""
        return not self.device._equals(self.host)

    def register(self, role: str, model=None, optimizer=None) -> None:
        """Put ``role``'s parameters / optimizer states under the schedule where a level manages them."""
        frozen = role in FROZEN_ROLES
        if model is not None and (("freeze_model" in self.levels and frozen)
                                  or ("train_model" in self.levels and not frozen)):
            self._managed.append(_Managed(role, "parameters", lambda m=model: parameter_tensors(m)))
        if optimizer is not None and "optimizer" in self.levels:
            self._managed.append(_Managed(role, "optimizer_states", lambda o=optimizer: optimizer_state_tensors(o)))

    @staticmethod
    def needed(phase: str, role: str, kind: str) -> bool:
        """Whether ``role``'s ``kind`` must be on the device during ``phase``."""
        if kind == "optimizer_states":
            return UPDATES.get(phase) == role
        return role in RESIDENT[phase]

    def enter(self, phase: str) -> Dict[str, Any]:
        """Make ``phase``'s models resident and send the rest of what the levels manage to the host."""
        if phase not in RESIDENT:
            raise ValueError(f"unknown phase '{phase}'; phases: {', '.join(RESIDENT)}")
        self.phase = phase
        record = {"step": self.step, "phase": phase, "placement": {}, "moved_bytes": 0}
        # send first, then bring: the phase's peak never holds both
        for m in sorted(self._managed, key=lambda m: self.needed(phase, m.role, m.kind)):
            want = "device" if self.needed(phase, m.role, m.kind) else "host"
            tensors = m.tensors()
            nbytes = sum(tensor_bytes(t) for t in tensors)
            if want != m.where:
                place = self.device if want == "device" else self.host
                moved = sum(_move(t, place) for t in tensors)
                self.moved_bytes += moved
                record["moved_bytes"] += moved if self.moves_memory else nbytes
                m.where = want
            record["placement"].setdefault(m.role, {})[m.kind] = {"where": m.where, "bytes": nbytes}
        self.timeline.append(record)
        return record

    def end_step(self) -> None:
        self.step += 1

    def where(self, step: int, phase: str, role: str, kind: str = "parameters") -> Optional[str]:
        """Where ``role``'s ``kind`` was during ``phase`` of ``step`` (None: not managed or not recorded)."""
        for r in self.timeline:
            if r["step"] == step and r["phase"] == phase:
                return r["placement"].get(role, {}).get(kind, {}).get("where")
        return None

    # ------------------------------------------------------------------ frozen models of the Trainer stages
    def attach_frozen(self, model, role: str = "reference") -> None:
        """Offload a frozen model of a Trainer stage (DPO / KTO reference, GKD teacher) between its uses:
        ``model.residency("device")`` before a use and ``("host")`` after it (``freeze_model`` only)."""
        if "freeze_model" not in self.levels or model is None:
            return
        managed = _Managed(role, "parameters", lambda m=model: parameter_tensors(m))
        self._managed.append(managed)
        counts = {"device": 0, "host": 0}

        def place(where: str) -> None:
            target = self.device if where == "device" else self.host
            for t in managed.tensors():
                self.moved_bytes += _move(t, target)
            managed.where = where
            counts[where] += 1

        # the callers bracket each use with it (alignment.training.logps.resident; a FrozenPipeline itself):
        # forward hooks would miss a caller that runs the backbone and the LM head's weight separately
        model.residency = place
        model._offload_transitions = counts  # how often it came to the device / went to the host
        place("host")


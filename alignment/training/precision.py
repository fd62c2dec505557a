"""Mixed precision (bf16 / fp16) for every stage: what runs where, and one clear error where it cannot.

The Trainer-based stages (SFT, reward model, DPO, KTO, GKD) use PaddleNLP's Trainer, which runs
``paddle.amp.auto_cast`` (``fp16_opt_level`` O1: fp32 weights, bf16/fp16 matmuls; O2: bf16/fp16 weights with
fp32 master copies in the optimizer, ``paddle.amp.decorate``) and, for fp16, a dynamic ``GradScaler``. The
weights are loaded in float32 (``alignment.models.loading.resolve_dtype`` of TrainingArguments), so the master
weights are float32 whatever the level; the losses and log-probs are computed in float32 (the pure functions
in ``alignment.algorithms`` and ``alignment.training.logps`` cast their inputs).

Measured on this project's CPU machines (PaddlePaddle 3.3.1, CPU wheel): ``paddle.amp.auto_cast`` is a no-op on
a CPU place (it warns "amp_guard can only be enabled on CUDAPlace, XPUPlace, and CustomPlace") and the CPU
kernels of ``matmul`` (bfloat16) and ``multiply`` (float16) are not registered, so neither mode can run there:
``precision_problem`` turns that into one line before any model is loaded, instead of a kernel error deep
in the first step. ``paddle.amp.is_bfloat16_supported()`` answers True on that CPU build, so it is not asked.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Iterator, List, Optional

__all__ = ["amp_device", "precision_problem", "check_precision", "MixedPrecision", "PHASES", "FLOAT32_RESULTS", "check_float32"]


def amp_device() -> Optional[str]:
    """The accelerator paddle.amp runs on here ('gpu', 'xpu', a custom device), or None (CPU only)."""
    import paddle

    device = str(paddle.device.get_device())
    if device.startswith(("gpu", "xpu")) or (device != "cpu" and ":" in device):
        return device.split(":")[0]
    return None


def precision_problem(bf16: bool, fp16: bool, fp16_opt_level: str = "O1") -> Optional[str]:
    """None when the requested precision can run on this device, else a one-line explanation."""
    if not (bf16 or fp16):
        return None
    if bf16 and fp16:
        return "bf16 and fp16 are exclusive; set one of them"
    if fp16_opt_level not in ("O1", "O2"):
        return f"fp16_opt_level='{fp16_opt_level}' is not valid; allowed values: O1, O2"
    flag, dtype = ("bf16", "bfloat16") if bf16 else ("fp16", "float16")
    device = amp_device()
    if device is None:
        import paddle

        return (f"--{flag} true needs a GPU: on this CPU build of Paddle {paddle.__version__} paddle.amp is inactive "
                f"and the {dtype} matmul kernels are missing; drop --{flag} (float32 runs on CPU)")
    if fp16 and device == "gpu":
        import paddle

        if not paddle.amp.is_float16_supported():
            return "--fp16 true: this GPU has no float16 support in Paddle; use --bf16 true or float32"
    if bf16 and device == "gpu":
        import paddle

        if not paddle.amp.is_bfloat16_supported():
            return "--bf16 true: this GPU has no bfloat16 support (compute capability < 8.0); use --fp16 true"
    return None


def check_precision(args) -> None:
    """Raise ``ValueError`` with ``precision_problem``'s line for arguments with bf16 / fp16 fields."""
    problem = precision_problem(bool(getattr(args, "bf16", False)), bool(getattr(args, "fp16", False)),
                                str(getattr(args, "fp16_opt_level", "O1")))
    if problem:
        raise ValueError(problem)


# ------------------------------------------------------------------------------------------- PPO's own loop
#: the model forward passes of a PPO step, each run under ``MixedPrecision.autocast``
PHASES = ("rollout", "experience", "update")
#: what a PPO step computes from those forwards, always in float32 (the casts live in ``gather_logps``,
#: ``scores_response_values`` / ``_scores_2d``, ``reward_scores``; advantages and losses read only these)
FLOAT32_RESULTS = ("logps", "values", "rewards", "advantages", "losses")


class MixedPrecision:
    """The precision of a PPO run as one object: which dtype each phase computes in, the ``auto_cast`` context
    around the model forwards, ``decorate`` for O2 and one dynamic ``GradScaler`` per optimizer for fp16.

        precision = MixedPrecision.from_args(args)          # float32 unless bf16 / fp16 (checked here)
        models, optimizers = precision.decorate(models, optimizers)   # O2: half weights, fp32 master weights
        precision.add_optimizers(actor_opt, critic_opt)     # fp16: a GradScaler for each
        with precision.autocast():                          # rollout, experience, update forwards
            out = model(...)
        precision.backward(loss, actor_opt)                 # fp16: the scaled loss
        precision.step(actor_opt)                           # fp16: unscale, step (skipped on inf), update scale

    The PaddleNLP Trainer does the same for the Trainer stages (``auto_cast`` O1/O2, ``decorate`` with
    master weights, ``GradScaler`` for fp16). The non-finite guards (``alignment.utils.guards.guard_optimizer``)
    wrap ``optimizer.step``, which ``GradScaler.step`` calls after unscaling, so they see the same inf/nan
    gradients as in float32 (an fp16 overflow is a skipped, logged step that counts toward max_nonfinite_steps).
    """

    init_loss_scaling = 2.0 ** 15  # PaddleNLP's TrainingArguments.scale_loss default

    def __init__(self, dtype: str = "float32", level: str = "O1") -> None:
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"MixedPrecision: dtype '{dtype}' is not valid; allowed values: float32, bfloat16, float16")
        if level not in ("O1", "O2"):
            raise ValueError(f"fp16_opt_level='{level}' is not valid; allowed values: O1, O2")
        self.dtype, self.level = dtype, level
        self.scalers: Dict[int, object] = {}  # id(optimizer) -> GradScaler (fp16 only)
        self._names: Dict[int, str] = {}

    @classmethod
    def from_args(cls, args, check: bool = True) -> "MixedPrecision":
        """From ``bf16`` / ``fp16`` / ``fp16_opt_level``; ``check`` raises ``precision_problem``'s line."""
        bf16, fp16 = bool(getattr(args, "bf16", False)), bool(getattr(args, "fp16", False))
        level = str(getattr(args, "fp16_opt_level", "O1"))
        if check:
            problem = precision_problem(bf16, fp16, level)
            if problem:
                raise ValueError(problem)
        return cls("bfloat16" if bf16 else "float16" if fp16 else "float32", level)

    @property
    def enabled(self) -> bool:
        return self.dtype != "float32"

    def phase_dtype(self, phase: str) -> str:
        """The dtype of the matmuls in ``phase`` (PHASES), or 'float32' for the results (FLOAT32_RESULTS)."""
        if phase in PHASES:
            return self.dtype
        if phase in FLOAT32_RESULTS:
            return "float32"
        raise ValueError(f"unknown phase '{phase}'; allowed values: {', '.join(PHASES + FLOAT32_RESULTS)}")

    def weight_dtype(self) -> str:
        """Weights the forwards read: float32 under O1; bf16/fp16 under O2 (the trained models keep float32
        master copies in their optimizers)."""
        return self.dtype if self.enabled and self.level == "O2" else "float32"

    def describe(self) -> str:
        if not self.enabled:
            return "float32"
        what = "fp32 weights, half matmuls" if self.level == "O1" else "half weights, fp32 master weights"
        scale = ", dynamic loss scaling" if self.dtype == "float16" else ""
        return f"{self.dtype} {self.level} ({what}{scale}); log-probs, values, advantages and losses in float32"

    # ------------------------------------------------------------------ forwards
    def autocast(self):
        """``paddle.amp.auto_cast`` at this dtype and level (a no-op context in float32; Paddle itself makes it a
        no-op on a CPU place)."""
        if not self.enabled:
            return contextlib.nullcontext()
        import paddle

        return paddle.amp.auto_cast(enable=True, dtype=self.dtype, level=self.level)

    def decorate(self, trainable: List[tuple], frozen: Iterable = ()) -> List[tuple]:
        """O2: ``paddle.amp.decorate`` each (model, optimizer) pair with fp32 master weights (saved as float32) and
        cast the frozen models; returns the pairs (unchanged under O1 or float32). ``None`` entries pass through."""
        if not (self.enabled and self.level == "O2"):
            return list(trainable)
        import paddle

        out = []
        for model, optimizer in trainable:
            if model is None:
                out.append((model, optimizer))
                continue
            model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=self.dtype,
                                                   master_weight=True, save_dtype="float32")
            out.append((model, optimizer))
        for model in frozen:
            if model is not None and len(list(model.parameters())):
                paddle.amp.decorate(models=model, level="O2", dtype=self.dtype, save_dtype="float32")
        return out

    # ------------------------------------------------------------------ backward / step
    def add_optimizers(self, **optimizers) -> None:
        """fp16: one dynamic GradScaler per named optimizer (actor=..., critic=...; None skipped); nothing for
        bf16 / float32."""
        if self.dtype != "float16":
            return
        import paddle

        for name, opt in optimizers.items():
            if opt is not None and id(opt) not in self.scalers:
                self.scalers[id(opt)] = paddle.amp.GradScaler(
                    init_loss_scaling=self.init_loss_scaling, use_dynamic_loss_scaling=True)
                self._names[id(opt)] = name

    def scaler(self, optimizer):
        return self.scalers.get(id(optimizer))

    def backward(self, loss, optimizer) -> None:
        """``loss.backward()``, scaled by ``optimizer``'s GradScaler under fp16."""
        if loss.dtype != _float32():
            raise TypeError(f"MixedPrecision: the loss is {loss.dtype}; losses are computed in float32")
        scaler = self.scaler(optimizer)
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def step(self, optimizer) -> None:
        """``optimizer.step()``; under fp16 ``GradScaler.step`` (unscale, skip on inf/nan) and ``update``."""
        scaler = self.scaler(optimizer)
        if scaler is None:
            optimizer.step()
            return
        scaler.step(optimizer)
        scaler.update()

    def loss_scales(self) -> Dict[str, float]:
        """The current loss scale of each enabled GradScaler (for the logs): ``<name>_loss_scale``."""
        return {f"{self._names[k]}_loss_scale": float(s._scale) for k, s in self.scalers.items()
                if getattr(s, "_scale", None) is not None}


def _float32():
    import paddle

    return paddle.float32


def check_float32(**tensors) -> None:
    """Raise ``TypeError`` naming any of ``tensors`` (None skipped) that is not float32."""
    import paddle

    bad = {k: str(v.dtype) for k, v in tensors.items() if v is not None and v.dtype != paddle.float32}
    if bad:
        raise TypeError(f"expected float32: {bad}")

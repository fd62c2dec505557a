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

from typing import Optional

__all__ = ["amp_device", "precision_problem", "check_precision"]


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

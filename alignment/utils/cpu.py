"""CPU settings that decide how fast Paddle's dense kernels run.

Paddle's CPU wheels do their matmuls in Intel's MKL (``libmklml_intel.so``). That MKL picks its
kernels by CPU vendor, and on AMD processors it falls back to a generic SSE path, although the
processors run AVX2 and AVX-512 code. The MKL of those wheels still honours the documented switch
``MKL_DEBUG_CPU_TYPE=5``, which selects the AVX2 kernels whatever the vendor. Measured on a 2-core
AMD EPYC (one thread, float32): a (32, 512) x (512, 32000) matmul went from 18 to 51-58 GFLOP/s and
a (2048, 512) x (512, 1376) one from 28 to 81 GFLOP/s, with results equal to NumPy's OpenBLAS to
float32 rounding. That is the LM head and the projections of every stage.

MKL reads the variable when it first dispatches a BLAS call, not when the library is loaded, so
setting it on import of :mod:`alignment` works even after ``import paddle``, as long as no matmul
has run yet. Child processes (``paddle.distributed.launch`` ranks, data loader workers) inherit it.

Rules (:func:`select_mkl_code_path`):

- only on x86-64 Linux with ``vendor_id : AuthenticAMD`` in ``/proc/cpuinfo``;
- never overrides a value the user set (``MKL_DEBUG_CPU_TYPE`` already in the environment);
- ``ALIGNMENT_MKL_AMD_FIX=0`` switches it off.
"""

from __future__ import annotations

import os
import platform

ENV_SWITCH = "ALIGNMENT_MKL_AMD_FIX"
MKL_VARIABLE = "MKL_DEBUG_CPU_TYPE"
AVX2_CODE_PATH = "5"


def cpu_vendor(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The ``vendor_id`` field of the first processor, or ``""`` when it cannot be read."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return ""
    return ""


def select_mkl_code_path(environ=None, vendor: str | None = None, machine: str | None = None) -> str | None:
    """Set ``MKL_DEBUG_CPU_TYPE=5`` on AMD x86-64 CPUs; return the value set, or ``None`` when left alone."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    if MKL_VARIABLE in environ:
        return None
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in ("x86_64", "amd64"):
        return None
    vendor = cpu_vendor() if vendor is None else vendor
    if vendor != "AuthenticAMD":
        return None
    environ[MKL_VARIABLE] = AVX2_CODE_PATH
    return AVX2_CODE_PATH

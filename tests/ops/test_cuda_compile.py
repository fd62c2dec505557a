"""The CUDA kernels compile with nvcc (no GPU needed): csrc/tests/harness.py --compile-only builds the
standalone CPU and CUDA shims. Skipped where nvcc or g++ is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "csrc" / "tests" / "harness.py"


@pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("g++") is None, reason="nvcc or g++ not installed")
def test_cuda_kernels_compile_with_nvcc(tmp_path):
    env = dict(os.environ, HARNESS_BUILD=str(tmp_path))
    proc = subprocess.run([sys.executable, str(HARNESS), "--compile-only", "--arch", "sm_80"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "libshim_cuda.so").stat().st_size > 0

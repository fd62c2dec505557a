"""MKL's code path on AMD CPUs (alignment.utils.cpu): when it is chosen, and that ``import alignment`` applies it."""

import os
import subprocess
import sys

from alignment.utils import cpu


def test_amd_x86_gets_the_avx2_code_path():
    env = {}
    assert cpu.select_mkl_code_path(env, vendor="AuthenticAMD", machine="x86_64") == "5"
    assert env == {"MKL_DEBUG_CPU_TYPE": "5"}


def test_other_vendors_machines_user_values_and_the_switch_are_left_alone():
    for env, vendor, machine in [
        ({}, "GenuineIntel", "x86_64"),
        ({}, "", "x86_64"),
        ({}, "AuthenticAMD", "aarch64"),
        ({"MKL_DEBUG_CPU_TYPE": "2"}, "AuthenticAMD", "x86_64"),
        ({"ALIGNMENT_MKL_AMD_FIX": "0"}, "AuthenticAMD", "x86_64"),
        ({"ALIGNMENT_MKL_AMD_FIX": "off"}, "AuthenticAMD", "x86_64"),
    ]:
        before = dict(env)
        assert cpu.select_mkl_code_path(env, vendor=vendor, machine=machine) is None
        assert env == before


def test_vendor_is_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    assert cpu.cpu_vendor(str(info)) == "AuthenticAMD"
    assert cpu.cpu_vendor(str(tmp_path / "missing")) == ""


def test_import_alignment_sets_it_in_the_process_and_its_children():
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_DEBUG_CPU_TYPE", "ALIGNMENT_MKL_AMD_FIX")}
    code = "import os, alignment; print(os.environ.get('MKL_DEBUG_CPU_TYPE'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    amd = cpu.cpu_vendor() == "AuthenticAMD" and cpu.platform.machine().lower() in ("x86_64", "amd64")
    assert out.stdout.strip().splitlines()[-1] == ("5" if amd else "None")
    env["ALIGNMENT_MKL_AMD_FIX"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "None"


def test_the_kernels_share_mkls_openmp_runtime(ops_library):
    """The operator library links Paddle's libiomp5 (MKL's OpenMP runtime), not GCC's libgomp: two runtimes
    keep each other's idle threads spinning on the same cores (alignment.ops._build._openmp_link_flags)."""
    import shutil
    from pathlib import Path

    import paddle
    import pytest

    from alignment.ops import _build

    if not (Path(paddle.__file__).resolve().parent / "libs" / "libiomp5.so").exists():
        pytest.skip("this Paddle ships no libiomp5 (the kernels link libgomp)")
    assert "-l:libiomp5.so" in _build.LD_FLAGS and "-fopenmp" not in _build.LD_FLAGS
    if shutil.which("readelf") is None:
        pytest.skip("no readelf to read the library's NEEDED entries")
    out = subprocess.run(["readelf", "-d", str(ops_library.path)], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[-1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
    assert "libiomp5.so" in needed and not any(n.startswith("libgomp") for n in needed), needed

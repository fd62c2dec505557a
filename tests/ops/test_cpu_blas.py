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


def test_openmp_runtime_follows_the_thread_count_and_the_switch(monkeypatch):
    """libiomp5 (MKL's runtime) where the operators run more than one thread, libgomp otherwise or when asked
    (alignment.ops._build.openmp_runtime); each choice is its own cached build."""
    from pathlib import Path

    import paddle
    import pytest

    from alignment import ops
    from alignment.ops import _build

    if not (Path(paddle.__file__).resolve().parent / "libs" / "libiomp5.so").exists():
        pytest.skip("this Paddle ships no libiomp5 (the kernels always link libgomp)")
    monkeypatch.delenv("ALIGNMENT_OPS_OPENMP", raising=False)
    monkeypatch.setitem(ops._SWITCH, "threads", 1)
    assert _build.openmp_runtime() == "gomp" and _build.link_flags() == ["-fopenmp"]
    gomp_dir = _build.build_directory()
    monkeypatch.setitem(ops._SWITCH, "threads", 2)
    assert _build.openmp_runtime() == "iomp" and "-l:libiomp5.so" in _build.link_flags()
    assert _build.build_directory() != gomp_dir
    monkeypatch.setenv("ALIGNMENT_OPS_OPENMP", "gomp")
    assert _build.openmp_runtime() == "gomp"
    monkeypatch.setitem(ops._SWITCH, "threads", 1)
    monkeypatch.setenv("ALIGNMENT_OPS_OPENMP", "iomp")
    assert _build.openmp_runtime() == "iomp"
    monkeypatch.setenv("ALIGNMENT_OPS_OPENMP", "intel")
    with pytest.raises(ValueError, match="allowed values: auto, iomp, gomp"):
        _build.openmp_runtime()


def test_a_two_thread_build_links_libiomp5_only(tmp_path):
    """The library built for a two-thread process needs libiomp5 and not libgomp (readelf's NEEDED entries)."""
    import shutil
    from pathlib import Path

    import paddle
    import pytest

    if not (Path(paddle.__file__).resolve().parent / "libs" / "libiomp5.so").exists():
        pytest.skip("this Paddle ships no libiomp5")
    if shutil.which("readelf") is None:
        pytest.skip("no readelf to read the library's NEEDED entries")
    code = ("import alignment; from alignment import ops; from alignment.ops import _build; ops.set_num_threads(2);"
            "lib = _build.load_ops(); print(lib.path if lib else 'NONE')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    path = out.stdout.strip().splitlines()[-1]
    if path == "NONE":
        pytest.skip("the operators cannot be built here")
    elf = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    needed = [line.split("[")[-1].rstrip("]") for line in elf.splitlines() if "(NEEDED)" in line]
    assert "libiomp5.so" in needed and not any(n.startswith("libgomp") for n in needed), needed

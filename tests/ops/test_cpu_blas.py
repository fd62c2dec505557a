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

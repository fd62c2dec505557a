"""Build and load the custom operators of ``csrc/`` with ``paddle.utils.cpp_extension``, cached on disk.

The build runs once per source version: the cache key hashes every source under ``csrc/`` (not
``csrc/tests``), the Paddle version, the compiler flags and the CPU, and names the folder
``build/alignment_ops/<key>/`` of the repository (``ALIGNMENT_OPS_BUILD_DIR`` moves it;
``ALIGNMENT_OPS_CSRC`` points at another source folder). A later
process finds the shared library there and registers it directly (milliseconds; Paddle's ``load``
would start a setup.py subprocess every time). Concurrent processes (a distributed launch) serialise
the build with a file lock. The CPU build is the one file ``csrc/alignment_ops.cc``; a CUDA Paddle adds
the ``.cu`` files and ``-DALIGNMENT_WITH_CUDA``.

Any failure (no compiler, no ``csrc/`` next to the package, a compile error) is caught: ``load_ops()``
returns None, one ``RuntimeWarning`` names the reason, and every caller uses the pure-Paddle path.
``ALIGNMENT_FUSED_OPS=0`` turns the build off without a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator, List, Optional

import paddle

__all__ = ["CSRC", "NAME", "OpsLibrary", "load_ops", "build_reason", "build_directory", "compile_into", "reset_for_tests"]

CSRC = Path(os.environ.get("ALIGNMENT_OPS_CSRC") or Path(__file__).resolve().parents[2] / "csrc")
NAME = "alignment_ops"
CXX_FLAGS = ["-O3", "-fopenmp", "-march=native", "-std=c++17"]


def openmp_runtime() -> str:
    """The OpenMP runtime the kernels link: ``"iomp"`` (Paddle's ``paddle/libs/libiomp5.so``, the runtime MKL
    runs on, which also implements GCC's ``GOMP_*`` entry points) or ``"gomp"`` (GCC's libgomp).

    Two OpenMP runtimes in one process each keep their idle threads spinning after a parallel region; on two
    cores with two threads each they took the cores from each other (a hidden-256 rollout: 2.7 s at 2 threads
    against 0.68 s at 1 thread; 0.6 s with one runtime). With one thread per process (Paddle's default, every
    ``paddle.distributed.launch`` rank) nothing spins and libgomp is kept: it is what the kernels always ran
    on there (a 4-process run on 2 cores aborted in 2 of 8 tries with libiomp5, in none of 4 with libgomp; not
    explained). So ``ALIGNMENT_OPS_OPENMP`` = ``auto`` (default): libiomp5 when ``alignment.ops.num_threads()``
    is above 1 at the first use of the operators, else libgomp; ``iomp`` / ``gomp`` force one. A Paddle
    without libiomp5 (an OpenBLAS build) always gets libgomp. Each choice is its own cached build."""
    choice = os.environ.get("ALIGNMENT_OPS_OPENMP", "auto").strip().lower()
    if choice not in ("auto", "iomp", "gomp"):
        raise ValueError(f"ALIGNMENT_OPS_OPENMP={choice!r} is not valid; allowed values: auto, iomp, gomp")
    if not (Path(paddle.__file__).resolve().parent / "libs" / "libiomp5.so").exists():
        return "gomp"
    if choice == "auto":
        from alignment.ops import num_threads

        return "iomp" if num_threads() > 1 else "gomp"
    return choice


def link_flags() -> List[str]:
    """Linker flags of the operator library for ``openmp_runtime()``."""
    if openmp_runtime() == "iomp":
        libs = Path(paddle.__file__).resolve().parent / "libs"
        return [f"-L{libs}", "-l:libiomp5.so", f"-Wl,-rpath,{libs}"]
    return ["-fopenmp"]


CUDA_FLAGS = ["-O3", "-DALIGNMENT_WITH_CUDA"]


class OpsLibrary:
    """The registered operators; ``call(name, *inputs_and_attrs)`` runs one in dynamic mode."""

    def __init__(self, path: Path, op_names: List[str]):
        self.path = path
        self.op_names = tuple(op_names)

    def call(self, name: str, *args):
        from paddle import _C_ops

        return _C_ops._run_custom_op(name, *args)


_STATE = {"tried": False, "library": None, "reason": None}
_REGISTERED: List[OpsLibrary] = []  # at most one: the library registered in this process


def build_directory() -> Path:
    root = os.environ.get("ALIGNMENT_OPS_BUILD_DIR") or str(CSRC.parent / "build" / "alignment_ops")
    return Path(root) / _cache_key()


def _with_cuda() -> bool:
    return bool(paddle.is_compiled_with_cuda())


def _sources() -> List[Path]:
    sources = [CSRC / "alignment_ops.cc"]
    if _with_cuda():
        sources += [CSRC / name for name in (
            "logps_op.cu", "sampling_op.cu", "attention_op.cu", "rms_norm_op.cu", "masked_softmax_op.cu")]
    return sources


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("model name", "flags")):
                return line
    return platform.processor()


def _cache_key() -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in CSRC.rglob("*") if p.is_file() and "tests" not in p.relative_to(CSRC).parts):
        h.update(str(path.relative_to(CSRC)).encode())
        h.update(path.read_bytes())
    for part in (paddle.__version__, sys.version, str(_with_cuda()), " ".join(CXX_FLAGS + CUDA_FLAGS + link_flags()),
                 _cpu_model()):
        h.update(part.encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def compile_into(target: Path) -> Path:
    """Run Paddle's JIT build into a private folder, then move the finished library into ``target``.

    ``load`` also registers the operators in the calling process, and Paddle aborts the process when a
    library is registered twice, so ``load_ops`` runs this in a child process (``csrc/build.py``).
    """
    from paddle.utils.cpp_extension import load

    staging = target.parent / f"{target.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        load(
            name=NAME,
            sources=[str(s) for s in _sources()],
            extra_cxx_cflags=CXX_FLAGS + [f"-I{CSRC}"] + (["-DALIGNMENT_WITH_CUDA"] if _with_cuda() else []),
            extra_cuda_cflags=CUDA_FLAGS + [f"-I{CSRC}"],
            extra_ldflags=link_flags(),
            build_directory=str(staging),
            verbose=bool(os.environ.get("ALIGNMENT_OPS_VERBOSE")),
        )
        built = staging / NAME / f"{NAME}.so"
        if not built.exists():
            raise RuntimeError(f"the build finished without {built.name}")
        target.mkdir(parents=True, exist_ok=True)
        os.replace(built, target / f"{NAME}.so")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / f"{NAME}.so"


def _compile_in_child(target: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CSRC.parent), os.environ.get("PYTHONPATH", "")]),
               ALIGNMENT_OPS_OPENMP=openmp_runtime())  # the child links what this process chose
    proc = subprocess.run([sys.executable, str(CSRC / "build.py"), "--target", str(target)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "error" in ln.lower()] or [""]
        raise RuntimeError(f"csrc/build.py failed (exit {proc.returncode}): {tail[0].strip()[:300]}")


def _build_and_register() -> OpsLibrary:
    if not (CSRC / "alignment_ops.cc").exists():
        raise FileNotFoundError(f"the operator sources are not at {CSRC} (an installed copy without csrc/)")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise RuntimeError("no C++ compiler (c++ or g++) on PATH")
    target = build_directory()
    so = target / f"{NAME}.so"
    if not so.exists():
        with _file_lock(target.parent / f"{target.name}.lock"):
            if not so.exists():
                _compile_in_child(target)
    if _REGISTERED:  # Paddle aborts on a second registration of the same operators
        return _REGISTERED[0]
    from paddle.utils.cpp_extension.extension_utils import load_op_meta_info_and_register_op

    _REGISTERED.append(OpsLibrary(so, load_op_meta_info_and_register_op(str(so))))
    return _REGISTERED[0]


def load_ops() -> Optional[OpsLibrary]:
    """The operator library, built on first use; None (after one warning) when it cannot be built."""
    if _STATE["tried"]:
        return _STATE["library"]
    _STATE["tried"] = True
    if os.environ.get("ALIGNMENT_FUSED_OPS", "1") == "0":
        _STATE["reason"] = "disabled by ALIGNMENT_FUSED_OPS=0"
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Paddle's own notes (no ccache, ABI) are not the user's business
            _STATE["library"] = _build_and_register()
    except Exception as exc:  # noqa: BLE001 - any failure means: use the pure-Paddle path
        lines = str(exc).strip().splitlines() or [""]
        _STATE["reason"] = f"{type(exc).__name__}: {lines[-1][:300]}"
        warnings.warn(
            f"alignment.ops: the fused operators of csrc/ are unavailable ({_STATE['reason']}); "
            "using the pure-Paddle implementations",
            RuntimeWarning,
            stacklevel=2,
        )
    return _STATE["library"]


def build_reason() -> Optional[str]:
    """Why ``load_ops()`` returned None (None when it succeeded or was not tried yet)."""
    return _STATE["reason"]


def reset_for_tests() -> None:
    """Forget the outcome of ``load_ops`` (tests of the fallback); a library already registered stays."""
    _STATE.update(tried=False, library=None, reason=None)

"""alignment: a PaddlePaddle-native framework that aligns language models with human preferences.

Subpackages (see README.md): ``algorithms`` (pure tensor maths, registered by name), ``data``
(raw-dataset registry and tokenized datasets), ``models`` (score model, loading/saving),
``rollout`` (generation and experience), ``parallel`` (the one strategy object over fleet),
``training`` (what several stages share) and one folder per training stage; a stage never imports
another stage.
"""

__version__ = "0.1.0"

# Before any matmul runs: MKL's AVX2 kernels on AMD CPUs (2.5-3x faster matmuls; see utils/cpu.py).
from alignment.utils.cpu import select_mkl_code_path as _select_mkl_code_path  # noqa: E402

_select_mkl_code_path()

# The fused log-prob hook of alignment.algorithms.utils (use_fusemt); the operator build itself is lazy.
from alignment import ops as _ops  # noqa: E402,F401

"""Paddle side of the ``--compare`` benchmarks: hand the same Llama weights and inputs to a torch Python.

``torch_python(arg)`` finds the interpreter (``--torch-python``, else this one when it can import torch and
transformers, else None: the peer columns are skipped with a note); ``run_peer`` writes the model's weights
(``.npz``, PaddleNLP names; one per model for PPO's four) and the spec to a temporary folder and runs
``bench/_torch_peer.py`` there.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _torch_peer import PeakRSS  # noqa: E402,F401 - the same RSS sampler on both sides


def torch_python(arg: Optional[str]) -> Optional[str]:
    if arg:
        return arg
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        return sys.executable
    return None


def llama_config(model) -> dict:
    c = model.config
    return dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                rms_norm_eps=c.rms_norm_eps, rope_theta=getattr(c, "rope_theta", 10000.0),
                eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id)


def _save_weights(model, path: Path) -> str:
    np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})
    return str(path)


def run_peer(python: str, mode: str, model, spec: dict, timeout: float = 3600,
             models: Optional[dict] = None) -> dict:
    """Run ``_torch_peer.py mode`` on ``model``'s weights (``spec["weights"]``: one ``.npz``) and Llama config;
    with ``models`` (name -> Paddle layer, e.g. the four PPO models) ``spec["weights"]`` maps each name to its
    ``.npz`` instead, and ``model`` only gives the config."""
    with tempfile.TemporaryDirectory(prefix="torch_peer_") as tmp:
        if models:
            weights = {name: _save_weights(m, Path(tmp) / f"weights_{name}.npz") for name, m in models.items()}
        else:
            weights = _save_weights(model, Path(tmp) / "weights.npz")
        spec = dict(spec, weights=weights, config=llama_config(model))
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run([python, str(HERE / "_torch_peer.py"), mode, str(Path(tmp) / "spec.json"),
                               str(Path(tmp) / "out.json")], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"torch peer failed: {proc.stderr.strip().splitlines()[-1:]}")
        return json.loads((Path(tmp) / "out.json").read_text())

"""Memory: what each model holds on this rank (measured), the peak of each phase, and the formulas the planner
(``alignment.tools.plan_memory``) predicts with.

Measured (``model_bytes``): parameters, gradients and optimizer states are counted tensor by tensor.
Peaks (``PhaseMonitor``): paddle's allocator statistics, reset per phase: the CUDA allocator's max allocated on
a GPU, the host allocator's peak on a CPU build (every tensor Paddle allocates); next to them the process's
resident-set high-water mark (``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``), which
also counts the interpreter and libraries.

Formulas (``LayerShape`` + the ``*_bytes`` functions), per rank, for a Llama / Qwen2-style decoder:

* parameters: embedding V*H, per layer 2*H*H (q, o) + 2*H*kv*d (k, v) + 3*H*I (gate, up, down) + 2*H (norms),
  final norm H, LM head V*H (a score model: H*D) -- split over tensor-parallel ranks (norms replicated), and
  over pipeline stages (the first holds the embedding, the last the head);
* training: gradients as the parameters, AdamW moments 2 x fp32 per parameter, fp32 master weights when the
  parameters are 16-bit; sharding stage1 divides the optimizer states, stage2 also the gradients, stage3 also
  the parameters, by the sharding degree;
* activations of one training micro-batch per layer (Korthikanti et al., arXiv 2205.05198, Eq. 2, written for
  2-byte activations and scaled by the activation width): s*b*h*(34 + 5*a*s/h) bytes / tp, or 2*s*b*h*bytes
  with full recompute; under 1F1B the first stage keeps up to ``pp`` micro-batches in flight;
* logits: rows x length x V / tp in fp32, twice in training (the logits and their gradient);
* KV cache: 2 x layers x rows x length x kv heads x head_dim / tp x the cache width, twice (a cache that grows by
  concatenation holds the old and the new one at each step);
* buffers: every decoder layer's rotary cos / sin cache, 2 x max positions x head_dim x 4 bytes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import paddle

from .offload import optimizer_state_tensors, parameter_tensors, tensor_bytes

__all__ = ["model_bytes", "PhaseMonitor", "LayerShape", "parameter_count", "buffer_bytes", "DTYPE_BYTES"]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def model_bytes(model, optimizer=None) -> Dict[str, int]:
    """Bytes this rank holds for ``model``: parameters, gradients, optimizer states (measured)."""
    params = parameter_tensors(model)
    grads = [p.grad for p in params if getattr(p, "grad", None) is not None]
    return {
        "parameters": sum(tensor_bytes(p) for p in params),
        "gradients": sum(tensor_bytes(g) for g in grads),
        "optimizer_states": sum(tensor_bytes(t) for t in optimizer_state_tensors(optimizer)) if optimizer else 0,
    }


def _proc_status(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PhaseMonitor:
    """The peak memory of each phase: ``begin("generation")`` ... ``begin("experience")`` ... ``end()`` (or
    ``with monitor.phase(name)``); ``take()`` returns the peaks per phase (bytes) since the last call."""

    def __init__(self):
        self.cuda = paddle.is_compiled_with_cuda() and paddle.device.get_device().startswith("gpu")
        self.source = "cuda allocator" if self.cuda else "host allocator"
        self.peaks: Dict[str, int] = {}
        self.rss_peaks: Dict[str, int] = {}
        self.current: Optional[str] = None

    def begin(self, name: str) -> None:
        self.end()
        self._reset()
        self.current = name

    def end(self) -> None:
        if self.current is not None:
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), self._peak())
            rss = int(_proc_status("VmHWM") or 0)
            self.rss_peaks[self.current] = max(self.rss_peaks.get(self.current, 0), rss)
            self.current = None

    def _reset(self) -> None:
        if self.cuda:
            paddle.device.cuda.reset_max_memory_allocated()
        else:
            from paddle.base import core

            core.host_memory_stat_reset_peak_value("Allocated", 0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    def _peak(self) -> int:
        if self.cuda:
            return int(paddle.device.cuda.max_memory_allocated())
        from paddle.base import core

        return int(core.host_memory_stat_peak_value("Allocated", 0))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end()

    def take(self) -> Dict[str, int]:
        """The allocator peaks since the last ``take`` (per step); ends the current phase. ``last_rss``: the
        process's resident-set peaks of the same phases (interpreter and libraries included)."""
        self.end()
        out, self.peaks = self.peaks, {}
        self.last_rss, self.rss_peaks = self.rss_peaks, {}
        return out


# ---------------------------------------------------------------------------------------------- formulas
@dataclass(frozen=True)
class LayerShape:
    """The sizes the formulas need, from a model config (``from_config``) or given directly."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 0  # each layer's rotary cos / sin cache (fp32 buffers)

    @classmethod
    def from_config(cls, config) -> "LayerShape":
        get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else (
            lambda k, d=None: getattr(config, k, d))
        heads = int(get("num_attention_heads"))
        return cls(
            vocab_size=int(get("vocab_size")), hidden_size=int(get("hidden_size")),
            intermediate_size=int(get("intermediate_size")), num_hidden_layers=int(get("num_hidden_layers")),
            num_attention_heads=heads, num_key_value_heads=int(get("num_key_value_heads") or heads),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            max_position_embeddings=int(get("max_position_embeddings", 0) or 0),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def layer_parameters(self, tp: int = 1) -> int:
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        split = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size
        return split // tp + 2 * h

    def stage_parameters(self, tp: int = 1, pp: int = 1, stage: int = 0, score_dim: Optional[int] = None) -> int:
        """Parameters of pipeline ``stage`` on one tensor-parallel rank (``score_dim``: a score head)."""
        layers = self.num_hidden_layers // pp + (1 if stage < self.num_hidden_layers % pp else 0)
        n = layers * self.layer_parameters(tp)
        if stage == 0:
            n += self.vocab_size * self.hidden_size // tp
        if stage == pp - 1:
            n += self.hidden_size
            if score_dim is not None:
                n += self.hidden_size * score_dim
            elif not self.tie_word_embeddings or pp > 1:
                n += self.vocab_size * self.hidden_size // tp
        return n


def parameter_count(shape: LayerShape, *, tp: int = 1, pp: int = 1, score_dim: Optional[int] = None) -> int:
    """The largest per-rank parameter count over the pipeline stages."""
    return max(shape.stage_parameters(tp, pp, s, score_dim) for s in range(pp))


def buffer_bytes(shape: LayerShape, *, pp: int = 1) -> int:
    """Non-parameter tensors of one stage: PaddleNLP keeps a rotary cos and sin cache (max positions x head_dim,
    fp32) in every decoder layer."""
    layers = -(-shape.num_hidden_layers // pp)
    return layers * 2 * shape.max_position_embeddings * shape.head_dim * 4

"""Fill-ins that let fleet's hybrid-parallel layers run on CPU builds of Paddle (gloo), inert on CUDA builds.

The CPU wheel of Paddle 3.x ships fleet's tensor, pipeline and group-sharded layers, but several of the
pieces they call exist only for GPUs. Each fill-in below replaces exactly one such piece with a CPU
equivalent built from ops the CPU build has (plain gloo collectives, ``concat``/``split``, ``assign``); the
numbers are unchanged (the multi-process tests hold every layout equal to one process).

=================================  ===============================================================================
fill-in                            what fails without it on CPU
=================================  ===============================================================================
``gloo_calc_stream``               ``ProcessGroupGLOO does not support all_reduce/send/recv/... with sync_op and
                                   use_calc_stream flag`` (TP all-reduce, PP send/recv): gloo ops are synchronous,
                                   so the ``*_on_calc_stream`` methods become the synchronous op + ``wait()``.
``mp_ops``                         ``Do not support c_identity / c_concat / c_split / c_softmax_with_cross_entropy
                                   for cpu kernel now`` (column/row-parallel linears, the LM head).
``broadcast_input_data``           ``Only support xpu, gpu and custom_device now, but this is cpu`` in
                                   ``fleet.distributed_model`` (TensorParallel / PipelineParallel inputs).
``parallel_env_device_id``         ``'ParallelEnv' object has no attribute '_device_id'`` in ``PipelineLayer``.
``group_stores``                   hangs / ``Connection refused`` in ``fleet.init`` with 4+ ranks and sub-groups:
                                   every gloo sub-group gets its own TCP store instead of colliding un-prefixed
                                   keys on the default store.
``group_sharded``                  ``group_sharded_parallel only support gpu, xpu and custom_device now`` and the
                                   GPU-only asserts, device ids and ``.cuda()`` calls of sharding stage 2 / 3.
=================================  ===============================================================================

``apply()`` installs all of them once (idempotent) and returns the names it installed; it does nothing and
returns ``[]`` on builds compiled with CUDA (or any device other than CPU) and on Paddle versions outside
``SUPPORTED_PADDLE`` (where the patched internals may differ), logging why. ``ParallelStrategy.init`` calls it
before ``fleet.init``; scripts that set up fleet themselves call ``alignment.parallel.compat.apply()`` first.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Callable, Dict, List

import paddle

logger = logging.getLogger(__name__)

__all__ = ["apply", "applied", "needed", "training_argv", "add_pipeline_config", "SUPPORTED_PADDLE"]

SUPPORTED_PADDLE = ("3.0", "3.1", "3.2", "3.3")  # major.minor versions whose internals these fill-ins match
_APPLIED: List[str] = []


def needed() -> bool:
    """True on a CPU-only build of a supported Paddle version (where the fill-ins are required)."""
    if paddle.is_compiled_with_cuda() or paddle.is_compiled_with_xpu():
        return False
    try:
        if paddle.device.get_all_custom_device_type():
            return False
    except Exception:  # pragma: no cover - very old builds
        pass
    version = paddle.__version__
    return version == "0.0.0" or any(version.startswith(v + ".") for v in SUPPORTED_PADDLE)


def applied() -> List[str]:
    """Names of the fill-ins installed in this process."""
    return list(_APPLIED)


def apply() -> List[str]:
    """Install every fill-in (once); returns the names installed, ``[]`` where none is needed."""
    if _APPLIED:
        return list(_APPLIED)
    if not needed():
        logger.debug("compat: Paddle %s is not a supported CPU-only build; nothing patched", paddle.__version__)
        return []
    for name, patch in _PATCHES.items():
        patch()
        _APPLIED.append(name)
    logger.debug("compat: installed %s", ", ".join(_APPLIED))
    return list(_APPLIED)


def training_argv(tokens: List[str]) -> List[str]:
    """``--flag value`` tokens of a PaddleNLP TrainingArguments parse, adjusted for gloo where needed.

    Pipeline parallelism with tensor parallelism sends partial tensors, which gloo cannot: with the fill-ins
    installed and ``pipeline_parallel_degree > 1``, ``disable_partial_send_recv`` joins
    ``pipeline_parallel_config``. Elsewhere the tokens come back unchanged.
    """
    if not _APPLIED:
        return list(tokens)
    return add_pipeline_config(tokens, "disable_partial_send_recv")


def add_pipeline_config(tokens: List[str], option: str) -> List[str]:
    """``tokens`` with ``option`` in ``--pipeline_parallel_config`` when ``pipeline_parallel_degree > 1``."""
    values: Dict[str, str] = {}
    for i, tok in enumerate(tokens[:-1]):
        if tok.startswith("--"):
            values[tok[2:]] = tokens[i + 1]
    try:
        pp = int(values.get("pipeline_parallel_degree", "1"))
    except ValueError:
        return list(tokens)
    config = values.get("pipeline_parallel_config", "")
    if pp <= 1 or option in config.split():
        return list(tokens)
    out = [t for i, t in enumerate(tokens)
           if t != "--pipeline_parallel_config" and (i == 0 or tokens[i - 1] != "--pipeline_parallel_config")]
    return out + ["--pipeline_parallel_config", f"{config} {option}".strip()]


# ------------------------------------------------------------------------------------------ gloo streams
def _patch_gloo_calc_stream() -> None:
    from paddle.base import core

    pg = core.ProcessGroupGloo

    def synced(method_name: str) -> Callable:
        method = getattr(pg, method_name)

        def call(self, *args):
            task = method(self, *args, True)  # sync_op=True: gloo has no separate calculation stream
            if task is not None and hasattr(task, "wait"):
                task.wait()
            return task

        call.__name__ = f"{method_name}_on_calc_stream"
        return call

    for base in ("all_reduce", "broadcast", "send", "recv", "all_gather", "all_gather_into_tensor", "reduce",
                 "scatter", "all_to_all"):
        if hasattr(pg, base):
            setattr(pg, f"{base}_on_calc_stream", synced(base))


# --------------------------------------------------------------------------------------------- mp ops
def _group_of(group):
    from paddle.distributed import collective

    return collective._get_default_group() if group is None else group


def _patch_mp_ops() -> None:
    import paddle.distributed as dist
    from paddle.autograd import PyLayer
    from paddle.distributed import collective
    from paddle.distributed.fleet.layers.mpu import mp_ops

    def all_gather_last(x, group):
        parts: List[paddle.Tensor] = []
        dist.all_gather(parts, x.contiguous() if hasattr(x, "contiguous") else x, group=group)
        return paddle.concat(parts, axis=-1)

    class _Concat(PyLayer):
        """All-gather along the last axis; the gradient is this rank's slice."""

        @staticmethod
        def forward(ctx, x, group):
            ctx.group = group
            return all_gather_last(x, group)

        @staticmethod
        def backward(ctx, dy):
            return paddle.split(dy, ctx.group.nranks, axis=-1)[ctx.group.rank]

    class _Split(PyLayer):
        """This rank's slice of the last axis; the gradient is all-gathered."""

        @staticmethod
        def forward(ctx, x, group):
            ctx.group = group
            return paddle.split(x, group.nranks, axis=-1)[group.rank]

        @staticmethod
        def backward(ctx, dy):
            return all_gather_last(dy, ctx.group)

    def c_concat(tensor, group=None):
        group = _group_of(group)
        if not group.is_member():
            return None
        if group.nranks == 1:
            return tensor
        return _Concat.apply(tensor, group)

    def c_split(tensor, group=None):
        group = _group_of(group)
        if not group.is_member():
            return None
        if group.nranks == 1:
            return tensor
        return _Split.apply(tensor, group)

    def identity_forward(ctx, tensor, group, skip_c_identity_dynamic):
        ctx.group = group
        return tensor if skip_c_identity_dynamic else paddle.assign(tensor)

    def allreduce_backward(ctx, dy):
        return dy if ctx.skip_c_identity_dynamic else paddle.assign(dy)

    def c_softmax_with_cross_entropy(logits, label, group=None, return_softmax=False, ignore_index=-100, **_):
        import paddle.nn.functional as F

        full = c_concat(logits, group=group)
        loss, softmax = F.softmax_with_cross_entropy(full, label, return_softmax=True, ignore_index=ignore_index)
        if return_softmax:
            return loss, c_split(softmax, group=group)
        return loss

    mp_ops.c_identity_eager.forward = staticmethod(identity_forward)
    mp_ops.mp_allreduce_eager.backward = staticmethod(allreduce_backward)
    mp_ops._c_concat = c_concat
    mp_ops._c_split = c_split
    mp_ops._c_softmax_with_cross_entropy = c_softmax_with_cross_entropy
    collective._c_concat = c_concat  # PaddleNLP's parallel_matmul calls the collective-module names
    collective._c_split = c_split


# ------------------------------------------------------------------------------- broadcast_input_data
def _patch_broadcast_input_data() -> None:
    from paddle.distributed.fleet.meta_parallel import tensor_parallel
    from paddle.distributed.fleet.utils import hybrid_parallel_util as hpu

    def broadcast_input_data(hcg, *inputs, **kwargs):
        place = paddle.CPUPlace()
        if inputs:
            inputs = hpu._broadcast_nested_data(hcg, "cpu", place, inputs)
        if kwargs:
            kwargs = hpu._broadcast_nested_data(hcg, "cpu", place, kwargs)
        return inputs, kwargs

    hpu.broadcast_input_data = broadcast_input_data
    tensor_parallel.broadcast_input_data = broadcast_input_data
    try:
        from paddle.distributed.fleet.meta_parallel import pipeline_parallel

        if hasattr(pipeline_parallel, "broadcast_input_data"):
            pipeline_parallel.broadcast_input_data = broadcast_input_data
    except ImportError:  # pragma: no cover
        pass


def _patch_parallel_env_device_id() -> None:
    from paddle.distributed.parallel import ParallelEnv

    if not hasattr(ParallelEnv, "_device_id"):
        ParallelEnv._device_id = 0  # read by PipelineLayer; set only for cuda/xpu/custom builds upstream


# -------------------------------------------------------------------------------------- group stores
def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _patch_group_stores() -> None:
    from paddle.base import core
    from paddle.distributed import collective

    original = collective._new_process_group_impl
    stores: Dict[int, object] = {}  # keep every store alive as long as its group

    def new_process_group_impl(backend, store, rank, world_size, group_name, pg_options, group_id=0, **kw):
        if backend != "gloo" or group_id == 0:
            return original(backend, store, rank, world_size, group_name, pg_options, group_id=group_id, **kw)
        env = collective._get_global_env()
        host = env.current_endpoint.split(":")[0] if env.current_endpoint else "127.0.0.1"
        key = f"alignment_compat/gloo_group_store/{group_id}"
        if rank == 0:
            store.set(key, f"{host}:{_free_port()}")
        address = store.get(key)
        address = address.decode() if isinstance(address, (bytes, bytearray)) else "".join(map(chr, address))
        master, port = address.rsplit(":", 1)
        own = core.TCPStore(master, int(port), rank == 0, world_size)
        stores[group_id] = own
        return original(backend, own, rank, world_size, group_name, pg_options, group_id=group_id, **kw)

    collective._new_process_group_impl = new_process_group_impl


# ------------------------------------------------------------------------------------ group sharding
class _CudaClaimingCore:
    """Module ``core`` proxy whose ``is_compiled_with_cuda`` is True (stage 2/3 constructors assert it)."""

    def __init__(self, core):
        self._core = core

    def is_compiled_with_cuda(self) -> bool:
        return True

    def __getattr__(self, name):
        return getattr(self._core, name)


class _CpuZeroPaddle:
    """Module ``paddle`` proxy whose ``get_device()`` says ``cpu:0`` (stage 2 parses a device id from it)."""

    def __init__(self, module):
        self._paddle = module

    def get_device(self) -> str:
        device = self._paddle.get_device()
        return "cpu:0" if device == "cpu" else device

    def __getattr__(self, name):
        return getattr(self._paddle, name)


def _patch_group_sharded() -> None:
    from paddle.distributed import sharding as sharding_pkg
    from paddle.distributed.fleet.meta_parallel.sharding import (
        group_sharded_optimizer_stage2 as opt2,
        group_sharded_stage2 as stage2,
        group_sharded_stage3 as stage3,
        group_sharded_storage as storage,
        group_sharded_utils as utils,
    )
    from paddle.distributed.sharding import group_sharded as gs

    for module in (opt2, stage2, stage3):
        module.core = _CudaClaimingCore(module.core)
    opt2.paddle = _CpuZeroPaddle(opt2.paddle)

    original_gsp = gs.group_sharded_parallel

    def group_sharded_parallel(*args, **kwargs):
        get_types = paddle.device.get_all_custom_device_type
        paddle.device.get_all_custom_device_type = lambda: list(get_types() or []) + ["cpu"]
        try:
            return original_gsp(*args, **kwargs)
        finally:
            paddle.device.get_all_custom_device_type = get_types

    gs.group_sharded_parallel = group_sharded_parallel
    sharding_pkg.group_sharded_parallel = group_sharded_parallel

    add_rank_params = storage.ParamStorage.add_rank_params

    def add_rank_params_in_place(self, trainable_params, param2align, convert_gpu=True):
        # On CPU ``param.cpu()`` shares storage, so "copy to host, clear, copy back" would wipe the data.
        return add_rank_params(self, trainable_params, param2align, convert_gpu=False)

    storage.ParamStorage.add_rank_params = add_rank_params_in_place

    clip_init = utils.GroupShardedClipGrad.__init__
    dygraph_clip = utils.GroupShardedClipGrad._dygraph_clip

    def clip_init_cpu(self, clip, device, group):
        clip_init(self, clip, "cpu:0" if device == "cpu" else device, group)

    def dygraph_clip_cpu(self, params_grads):
        cuda = paddle.Tensor.cuda
        paddle.Tensor.cuda = lambda t, *a, **k: t  # the norm stays on the host: there is no device to move to
        try:
            return dygraph_clip(self, params_grads)
        finally:
            paddle.Tensor.cuda = cuda

    utils.GroupShardedClipGrad.__init__ = clip_init_cpu
    utils.GroupShardedClipGrad._dygraph_clip = dygraph_clip_cpu


_PATCHES: Dict[str, Callable[[], None]] = {
    "gloo_calc_stream": _patch_gloo_calc_stream,
    "mp_ops": _patch_mp_ops,
    "broadcast_input_data": _patch_broadcast_input_data,
    "parallel_env_device_id": _patch_parallel_env_device_id,
    "group_stores": _patch_group_stores,
    "group_sharded": _patch_group_sharded,
}

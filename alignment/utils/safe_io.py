"""Files without pickle: weights as safetensors, any other state as a safetensors file with a JSON tree.

A pickle file can run code when it is loaded, so nothing a run writes is a pickle and nothing a user hands
in is unpickled unless the run says ``--allow_pickle true``::

    from alignment.utils import safe_io

    safe_io.save_tree({"step": 3, "moments": {"w_moment1": tensor}}, "optimizer.pdopt")
    state = safe_io.load_tree("optimizer.pdopt")            # tensors come back as paddle tensors
    with safe_io.safe_paddle_io():                          # paddle.save / paddle.load write and read this format
        trainer._save_checkpoint(...)

The tree file is a plain safetensors file: every array of the object is one tensor (named by a number) and
the metadata entry ``alignment_tree`` holds the rest of the object as JSON (dicts with any scalar keys,
lists, tuples, numbers, strings, None, paddle RNG states). A flat dict of arrays is written without the tree,
so it is also an ordinary safetensors weight file. ``load`` tells the two formats apart by their first bytes,
whatever the file is called, and refuses pickle with one line naming the opt-in flag.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

__all__ = [
    "PickleRefusedError",
    "ALLOW_PICKLE_FLAG",
    "allow_pickle",
    "set_allow_pickle",
    "is_pickle_file",
    "is_safetensors_file",
    "check_not_pickle",
    "save_tree",
    "load_tree",
    "safe_paddle_io",
    "fsync_tree",
    "share_tree",
    "make_readable",
]

ALLOW_PICKLE_FLAG = "--allow_pickle true"
_TREE_KEY = "alignment_tree"
_state = {"allow_pickle": False}
_PICKLE_SUFFIXES = (".pdparams", ".pdopt", ".pth", ".pkl", ".pickle", ".bin", ".pt", ".pdmodel.pkl")


class PickleRefusedError(ValueError):
    """A pickle file was about to be loaded without ``--allow_pickle true``."""


def allow_pickle() -> bool:
    """Whether this process may unpickle files (set from the ``allow_pickle`` option of every entry point)."""
    return bool(_state["allow_pickle"])


def set_allow_pickle(value: bool) -> None:
    _state["allow_pickle"] = bool(value)


def is_safetensors_file(path: str) -> bool:
    """An 8-byte little-endian header length followed by a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < length < (1 << 32)


def is_pickle_file(path: str) -> bool:
    """A pickle stream (protocol 2+ starts with 0x80), or a zip archive as torch writes them."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head[:1] == b"\x80" or head == b"PK"


def check_not_pickle(path: str, what: str = "file") -> None:
    """Raise ``PickleRefusedError`` when ``path`` is a pickle and pickle is not allowed."""
    if not allow_pickle() and os.path.isfile(path) and not is_safetensors_file(path):
        raise PickleRefusedError(
            f"{path}: refusing to load this pickle {what} (unpickling can run code); convert it to safetensors, "
            f"or pass {ALLOW_PICKLE_FLAG} if you trust it"
        )


# ------------------------------------------------------------------------------------------- the tree format
def _to_numpy(value) -> Tuple[np.ndarray, Optional[str]]:
    """(array, paddle dtype name or None) of a paddle tensor or numpy array; bfloat16 travels as uint16."""
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value), None
    dtype = str(value.dtype).replace("paddle.", "")
    array = value.numpy()
    return np.ascontiguousarray(array), dtype


def _encode(obj, arrays: List[np.ndarray]):
    import paddle

    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        if isinstance(obj, float) and not np.isfinite(obj):
            return {"__float__": repr(obj)}
        return obj
    if isinstance(obj, np.generic):
        return {"__npscalar__": [str(obj.dtype), obj.item() if np.isfinite(obj).all() else repr(obj.item())]}
    if isinstance(obj, (np.ndarray, paddle.Tensor)):
        array, dtype = _to_numpy(obj)
        arrays.append(array)
        return {"__array__": len(arrays) - 1, "paddle": dtype}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: _encode(v, arrays) for k, v in obj.items()}
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if type(obj).__name__ == "GeneratorState":
        device, seed, offset, mt = obj.__getstate__()
        return {"__generator__": [device, seed, offset, bytes(mt).decode("ascii")]}
    raise TypeError(f"cannot store a {type(obj).__name__} without pickle")


def _decode(obj, arrays: Dict[str, np.ndarray], return_numpy: bool):
    if isinstance(obj, list):
        return [_decode(v, arrays, return_numpy) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        array = arrays[str(obj["__array__"])]
        if obj.get("paddle") is None or return_numpy:
            return array
        import paddle

        if obj["paddle"] == "bfloat16":
            return paddle.to_tensor(array).view(paddle.bfloat16)
        return paddle.to_tensor(array)
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__npscalar__" in obj:
        dtype, value = obj["__npscalar__"]
        return np.dtype(dtype).type(float(value) if isinstance(value, str) else value)
    if "__tuple__" in obj:
        return tuple(_decode(v, arrays, return_numpy) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, arrays, return_numpy): _decode(v, arrays, return_numpy) for k, v in obj["__items__"]}
    if "__generator__" in obj:
        from paddle.framework import core

        device, seed, offset, mt = obj["__generator__"]
        state = core.GeneratorState.__new__(core.GeneratorState)
        state.__setstate__((device, seed, offset, list(mt.encode("ascii"))))
        return state
    return {k: _decode(v, arrays, return_numpy) for k, v in obj.items()}


def _flat_arrays(obj) -> bool:
    import paddle

    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, (np.ndarray, paddle.Tensor)) for k, v in obj.items())


def save_tree(obj: Any, path: str) -> None:
    """Write ``obj`` to ``path`` (any name) as safetensors, fsynced; a flat dict of arrays as plain weights."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    if _flat_arrays(obj):  # bfloat16 as uint16, as PaddleNLP's own safetensors weights
        tensors, bf16 = {}, []
        for k, v in obj.items():
            tensors[k], dtype = _to_numpy(v)
            if dtype == "bfloat16":
                bf16.append(k)
        metadata = {"format": "np", **({"bfloat16": json.dumps(bf16)} if bf16 else {})}
    else:
        arrays: List[np.ndarray] = []
        tree = _encode(obj, arrays)
        tensors = {str(i): a for i, a in enumerate(arrays)}
        metadata = {_TREE_KEY: json.dumps(tree)}
    tmp = f"{path}.tmp.{os.getpid()}"
    save_file(tensors, tmp, metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    _readable(tmp)
    os.replace(tmp, path)


def load_tree(path: str, return_numpy: bool = False) -> Any:
    """The object ``save_tree`` wrote (tensors as paddle tensors unless ``return_numpy``)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = os.fspath(path)
    with safe_open(path, framework="np") as f:
        metadata = f.metadata() or {}
    arrays = load_file(path)
    if _TREE_KEY not in metadata:  # plain weights
        if return_numpy:
            return arrays
        import paddle

        bf16 = set(json.loads(metadata.get("bfloat16", "[]")))
        return {k: paddle.to_tensor(v).view(paddle.bfloat16) if k in bf16 else paddle.to_tensor(v)
                for k, v in arrays.items()}
    return _decode(json.loads(metadata[_TREE_KEY]), arrays, return_numpy)


# ------------------------------------------------------------------------------ paddle.save / paddle.load
_WEIGHT_NAMES = {"model_state": "model"}  # PaddleNLP's pickle weight name -> its safetensors name


def _safe_weights_name(path: str) -> Optional[str]:
    """``.../model_state[.tp00].pdparams`` -> ``.../model[.tp00].safetensors`` (what from_pretrained prefers)."""
    directory, name = os.path.split(path)
    if not name.endswith(".pdparams"):
        return None
    stem = name[: -len(".pdparams")]
    base, _, variant = stem.partition(".")
    if base not in _WEIGHT_NAMES:
        return None
    return os.path.join(directory, _WEIGHT_NAMES[base] + (f".{variant}" if variant else "") + ".safetensors")


@contextlib.contextmanager
def safe_paddle_io() -> Iterator[None]:
    """Within the block ``paddle.save`` writes safetensors and ``paddle.load`` refuses pickle (unless allowed).

    Model weights named ``model_state*.pdparams`` are written as ``model*.safetensors``, the names PaddleNLP's
    ``from_pretrained`` looks for first; every other file keeps its PaddleNLP name with safetensors content
    (the Trainer's optimizer, scheduler and RNG files); training arguments become ``training_args.json``.
    ``paddle.load`` reads a safetensors file under any
    name, follows ``model_state*.pdparams`` to its safetensors twin, and unpickles only with allow_pickle.
    """
    import paddle

    orig_save, orig_load = paddle.save, paddle.load
    if getattr(orig_save, "_alignment_safe", False):  # already inside
        yield
        return

    def save(obj, path, *args, **kwargs):
        if not isinstance(path, (str, os.PathLike)):
            return orig_save(obj, path, *args, **kwargs)
        path = os.fspath(path)
        if hasattr(obj, "to_json_string"):  # TrainingArguments (training_args.bin) -> training_args.json
            from alignment.utils.io import atomic_write_text

            stem = path[: -len(".bin")] if path.endswith(".bin") else path
            atomic_write_text(stem + ".json", obj.to_json_string())
            return
        target = _safe_weights_name(path) or path
        save_tree(obj, target)

    def load(path, *args, **kwargs):
        if not isinstance(path, (str, os.PathLike)):
            return orig_load(path, *args, **kwargs)
        path = os.fspath(path)
        return_numpy = bool(kwargs.get("return_numpy", False))
        twin = _safe_weights_name(path)
        if not os.path.exists(path) and twin and os.path.exists(twin):
            path = twin
        if is_safetensors_file(path):
            return load_tree(path, return_numpy=return_numpy)
        check_not_pickle(path)
        return orig_load(path, *args, **kwargs)

    save._alignment_safe = load._alignment_safe = True
    paddle.save, paddle.load = save, load
    try:
        yield
    finally:
        paddle.save, paddle.load = orig_save, orig_load


def _readable(path: str) -> None:
    """Give a freshly written file the usual permissions (0666 minus the umask), as ``open`` would."""
    mask = os.umask(0)
    os.umask(mask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~mask)


def make_readable(path: str) -> None:
    """``path`` (a file just written by safetensors' ``save_file``, which makes 0600) as ``open`` makes it."""
    _readable(os.fspath(path))


def share_tree(directory: str) -> None:
    """Give every file under ``directory`` 0666 and every directory 0777 minus the umask, as ``open`` and
    ``mkdir`` would: temporary names (mkstemp, mkdtemp, PaddleNLP's writers) leave 0600 / 0700, which a team
    sharing a cluster cannot read once the directory is renamed into place."""
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(directory):
        with contextlib.suppress(OSError):
            os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o666 & ~mask)


def fsync_tree(directory: str) -> None:
    """fsync every file under ``directory`` and the directories themselves (before a rename publishes it)."""
    for root, dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(root)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Crash-safe checkpoint directories, the same for every stage (the Trainer-based ones and PPO).

A checkpoint ``output_dir/checkpoint-<step>/`` is written under a temporary name, fsynced, given its
completion marker ``checkpoint_complete.json`` and renamed into place; a checkpoint counts only with its
marker. Under several processes every rank writes its own files into the one temporary directory, and the
main process publishes it after a barrier::

    staging = begin(output_dir, step, strategy)        # main: fresh temporary dir; every rank: barrier
    ...                                                # each rank writes into staging
    publish(staging, final, strategy, meta={...})      # barrier; main: fsync, marker, rename; barrier

``resolve(output_dir, "latest")`` (or ``true`` / ``auto``) is the newest complete checkpoint;
``clean_orphans`` removes what a killed save left behind (run at the start of a run, main process);
``rotate`` keeps ``save_total_limit`` complete checkpoints and never deletes the newest complete one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from typing import Iterable, List, Optional, Tuple

from alignment.utils.safe_io import fsync_tree, share_tree

logger = logging.getLogger(__name__)

__all__ = [
    "MARKER",
    "PREFIX",
    "is_complete",
    "complete_checkpoints",
    "newest_complete",
    "staging_dir",
    "begin",
    "publish",
    "publish_dir",
    "clean_orphans",
    "rotate",
    "resolve",
    "RESUME_LATEST",
]

MARKER = "checkpoint_complete.json"
PREFIX = "checkpoint"
RESUME_LATEST = ("latest", "true", "auto", "last")
_STEP = re.compile(rf"^{PREFIX}-(\d+)$")
# what a killed save leaves: our staging dirs, atomic_dir temporaries / backups, PPO's shard staging
_ORPHAN = re.compile(r"^(\.tmp-[^/]+|\..+\.tmp\.[^/]+|\..+\.old|.+\.shards\.tmp)$")


def _step(path: str) -> int:
    m = _STEP.match(os.path.basename(path.rstrip("/")))
    return int(m.group(1)) if m else -1


def is_complete(path: str) -> bool:
    """``path`` holds the completion marker and every file the marker lists, with its size."""
    marker = os.path.join(path, MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    for rel, size in (meta.get("files") or {}).items():
        try:
            if os.path.getsize(os.path.join(path, rel)) != size:
                return False
        except OSError:
            return False
    return True


def complete_checkpoints(output_dir: str) -> List[str]:
    """Complete ``checkpoint-N`` directories of ``output_dir``, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = [os.path.join(output_dir, n) for n in os.listdir(output_dir) if _STEP.match(n)]
    return sorted((p for p in found if is_complete(p)), key=_step)


def newest_complete(output_dir: str) -> Optional[str]:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def staging_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, f".tmp-{PREFIX}-{step}")


def begin(output_dir: str, step: int, strategy=None) -> str:
    """A fresh, empty staging directory for ``checkpoint-<step>`` (collective when ``strategy`` is given)."""
    staging = staging_dir(output_dir, step)
    if strategy is None or strategy.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    if strategy is not None:
        strategy.barrier()
    return staging


def _save_delay() -> float:
    """Seconds to sleep between published files (ALIGNMENT_SAVE_DELAY; the kill tests widen the window)."""
    try:
        return float(os.environ.get("ALIGNMENT_SAVE_DELAY", "0") or 0)
    except ValueError:
        return 0.0


def publish_dir(source: str, final: str, meta: Optional[dict] = None) -> None:
    """Single process: fsync ``source``, write its marker (files and sizes), rename it to ``final``.

    An existing ``final`` (a checkpoint of the same step from an earlier attempt) is moved aside first and
    removed after the rename, so at every instant one complete copy exists.
    """
    delay = _save_delay()
    if delay:
        time.sleep(delay)
    files = {}
    for root, _, names in os.walk(source):
        for name in sorted(names):
            path = os.path.join(root, name)
            files[os.path.relpath(path, source)] = os.path.getsize(path)
    share_tree(source)  # the user's umask, not the temporary names' 0700 / 0600
    fsync_tree(source)
    record = {"complete": True, "step": _step(final), "time": time.time(), **(meta or {}), "files": files}
    marker_tmp = os.path.join(source, f".{MARKER}.tmp")
    with open(marker_tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(marker_tmp, os.path.join(source, MARKER))
    parent = os.path.dirname(os.path.abspath(final))
    old = None
    if os.path.exists(final):
        old = os.path.join(parent, f".{os.path.basename(final)}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(source, final)
    fsync_tree_parent(parent)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def fsync_tree_parent(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(staging: str, final: str, strategy=None, meta: Optional[dict] = None,
            inner: Optional[str] = None) -> None:
    """Collective: wait for every rank's files, then the main process publishes ``staging`` (or its
    sub-directory ``inner``) as ``final`` and removes the staging directory."""
    if strategy is not None:
        strategy.barrier()
    if strategy is None or strategy.is_main_process:
        meta = dict(meta or {})
        if strategy is not None:
            meta.setdefault("world_size", strategy.world_size)
        publish_dir(os.path.join(staging, inner) if inner else staging, final, meta)
        shutil.rmtree(staging, ignore_errors=True)
    if strategy is not None:
        strategy.barrier()


def clean_orphans(output_dir: str) -> List[str]:
    """Remove the temporary directories and files killed saves left in ``output_dir``; returns their names."""
    if not os.path.isdir(output_dir):
        return []
    removed = []
    for name in sorted(os.listdir(output_dir)):
        if not _ORPHAN.match(name):
            continue
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                continue
        removed.append(name)
    if removed:
        logger.warning("removed %d leftover(s) of an interrupted save in %s: %s", len(removed), output_dir,
                       ", ".join(removed))
    return removed


def rotate(output_dir: str, limit: Optional[int], keep: Iterable[str] = ()) -> List[str]:
    """Delete the oldest complete checkpoints beyond ``limit`` (never the newest one, nor those in ``keep``).

    Directories without a marker are not counted and not touched (``clean_orphans`` handles temporaries).
    """
    if not limit or limit <= 0:
        return []
    found = complete_checkpoints(output_dir)
    keep = {os.path.abspath(k) for k in keep if k}
    removable = [p for p in found[:-1] if os.path.abspath(p) not in keep]
    excess = len(found) - max(int(limit), 1)
    deleted = []
    for path in removable[: max(excess, 0)]:
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
    return deleted


def resolve(output_dir: str, spec) -> Tuple[Optional[str], Optional[str]]:
    """(checkpoint directory or None, error message or None) for a ``resume_from_checkpoint`` value.

    None / '' / false: no resume. latest / true / auto / last: the newest complete checkpoint of
    ``output_dir`` (an error when there is none, except for ``auto``, which then starts fresh). A path:
    it must be a complete checkpoint.
    """
    if spec is None or spec is False:
        return None, None
    text = str(spec).strip()
    if text.lower() in ("", "none", "false", "no", "0"):
        return None, None
    if spec is True or text.lower() in RESUME_LATEST:
        newest = newest_complete(output_dir)
        if newest is None and text.lower() != "auto":
            return None, (f"resume_from_checkpoint={text}: no complete checkpoint-N (with {MARKER}) in "
                          f"{output_dir}; drop the option to start a new run, or use 'auto' to resume when one exists")
        return newest, None
    if not os.path.isdir(text):
        return None, f"resume_from_checkpoint: no such directory '{text}'"
    if not is_complete(text):
        newest = newest_complete(os.path.dirname(os.path.abspath(text)))
        hint = f"; the newest complete one is {newest}" if newest else ""
        return None, (f"resume_from_checkpoint: '{text}' is not a complete checkpoint (no {MARKER}, or a file "
                      f"it lists is missing or truncated){hint}")
    return text, None

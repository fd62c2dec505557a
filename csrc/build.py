"""Build the custom operators of csrc/ into the cache folder that ``alignment.ops`` loads from.

    python csrc/build.py            # build (or find) the library for this Paddle and CPU, print its path
    python csrc/build.py --force    # rebuild even if the cached library exists

``alignment.ops`` runs this script by itself on first use (in a child process, because Paddle's
``load`` registers the operators in the process that builds them); running it by hand only moves the
~15 s build out of the first training step. The cache key and the flags live in
``alignment/ops/_build.py``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=None, help="folder of the library (default: the cache folder)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the library exists")
    args = parser.parse_args(argv)
    from alignment.ops import _build

    target = Path(args.target) if args.target else _build.build_directory()
    so = target / f"{_build.NAME}.so"
    if so.exists() and not args.force:
        print(so)
        return 0
    if args.force:
        shutil.rmtree(target, ignore_errors=True)
    print(_build.compile_into(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())

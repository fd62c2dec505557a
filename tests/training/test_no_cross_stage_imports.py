"""Package boundaries, checked on the source with ``ast``: no stage package imports another stage package
(what they share lives in ``alignment.training``), and only ``alignment/parallel/`` imports
``paddle.distributed``.

Every import counts, at module level or inside a function: ``import alignment.X``, ``from alignment.X import
...``, ``from alignment import X``, relative imports (``from ..X import ...``) and ``importlib.import_module``
/ ``__import__`` with a literal name. Strings are not imports (``python -m paddle.distributed.launch`` in a
docstring is fine); an attribute ``paddle.distributed`` is a use and counts as one.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "alignment"
STAGES = ("sft", "rm", "dpo", "kto", "gkd", "ppo")
DISTRIBUTED = "paddle.distributed"


def _package_parts(path: Path) -> Tuple[str, ...]:
    """The package relative imports of ``path`` start from: ('alignment', 'dpo') for alignment/dpo/*.py."""
    return path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]


def _resolve(module: str, level: int, package: Sequence[str]) -> str:
    if level == 0:
        return module
    base = list(package[: len(package) - (level - 1)])
    return ".".join(base + ([module] if module else []))


def imported_modules(source: str, package: Sequence[str] = ("alignment",)) -> Iterator[Tuple[int, str]]:
    """(line, dotted name) of every module ``source`` imports or touches as ``paddle.distributed``.

    ``from M import a`` yields ``M`` and ``M.a`` (``a`` may be a submodule: ``from alignment import sft``).
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node.module or "", node.level, package)
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = getattr(func, "id", None) or getattr(func, "attr", "")
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    yield node.lineno, first.value
        elif isinstance(node, ast.Attribute) and node.attr == "distributed":
            if isinstance(node.value, ast.Name) and node.value.id == "paddle":
                yield node.lineno, DISTRIBUTED


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(files: Sequence[Path], forbidden: Sequence[str]) -> List[str]:
    found = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        for line, name in imported_modules(source, _package_parts(path)):
            hit = next((prefix for prefix in forbidden if _within(name, prefix)), None)
            if hit is not None:
                where = f"{path.relative_to(PACKAGE.parent)}:{line}"
                if f"{where} imports {hit}" not in found:
                    found.append(f"{where} imports {hit}")
    return found


def _sources(folder: Path) -> List[Path]:
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("stage", STAGES)
def test_stage_imports_no_other_stage(stage):
    files = _sources(PACKAGE / stage)
    assert files, f"alignment/{stage}/ has no Python files"
    others = [f"alignment.{s}" for s in STAGES if s != stage]
    bad = _violations(files, others)
    assert not bad, (
        "a stage imports another stage (what stages share belongs in alignment/training/):\n" + "\n".join(bad)
    )


def test_only_parallel_imports_paddle_distributed():
    files = [p for p in _sources(PACKAGE) if not _within(".".join(_package_parts(p)), "alignment.parallel")]
    assert any(p.parent.name == "training" for p in files)
    bad = _violations(files, [DISTRIBUTED])
    assert not bad, "only alignment/parallel/ may import paddle.distributed:\n" + "\n".join(bad)


def _names(source: str, package: Sequence[str] = ("alignment", "dpo")) -> List[str]:
    return [name for _, name in imported_modules(source, package)]


def test_checker_sees_every_import_form():
    source = '''
"""python -m paddle.distributed.launch alignment/sft/run_sft.py"""
import alignment.sft.config
from alignment.rm.trainer import RewardTrainer
from alignment import kto
from ..gkd import config
from . import logps

def main():
    from alignment.ppo.run_ppo import build_trainer
    import importlib
    importlib.import_module("alignment.sft.trainer")
    import paddle.distributed as dist
    from paddle import distributed
    return paddle.distributed.get_rank()
'''
    names = _names(source)
    for expected in ("alignment.sft.config", "alignment.rm.trainer", "alignment.kto", "alignment.gkd",
                     "alignment.dpo.logps", "alignment.ppo.run_ppo", "alignment.sft.trainer"):
        assert any(_within(n, expected) for n in names), expected
    assert sum(n == DISTRIBUTED for n in names) == 3  # import paddle.distributed, from paddle import, use
    assert not any(_within(n, DISTRIBUTED) for n in _names('"""python -m paddle.distributed.launch"""\n'))

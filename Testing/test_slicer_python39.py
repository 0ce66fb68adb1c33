"""The Slicer module's code path runs on Python 3.9 (Slicer 5.8) as well as on newer Pythons.

Every file of the module and its package is parsed with Python 3.9's grammar; a file whose annotations
use 3.10+ syntax (``X | None``, evaluated at import on 3.9) must defer them with
``from __future__ import annotations``. Versions Python 3.9 can get: torch 2.1 .. 2.8, numpy up to 2.0.x
(the module's requirements allow both; see SegHiResCAM/Resources/requirements.txt).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest

MODULE_ROOT = Path(__file__).resolve().parents[1] / "SegHiResCAM"
FILES = [MODULE_ROOT / "SegHiResCAM.py", *sorted((MODULE_ROOT / "seghirescam").rglob("*.py"))]


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
               and any(alias.name == "annotations" for alias in node.names) for node in tree.body)


def _annotations(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from (a.annotation for a in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs,
                                                node.args.vararg, node.args.kwarg] if a is not None and a.annotation)
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(MODULE_ROOT)) for p in FILES])
def test_file_parses_with_the_python_39_grammar(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    if not _has_future_annotations(tree):
        unions = [ast.unparse(a) for a in _annotations(tree)
                  if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(a))]
        assert not unions, f"{path.name}: 'X | Y' annotations need 'from __future__ import annotations' on 3.9: {unions}"
    assert not _newer_calls(tree), f"{path.name}: uses keywords that Python 3.9 lacks: {_newer_calls(tree)}"


_NEWER_KEYWORDS = {"dataclass": {"kw_only", "slots", "match_args"}, "zip": {"strict"}}  # 3.10+


def _newer_calls(tree: ast.Module) -> list[str]:
    """Calls with keywords added after Python 3.9 (the grammar accepts them; 3.9 fails at run time)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            found += [f"{name}({k.arg}=...) line {node.lineno}" for k in node.keywords
                      if k.arg in _NEWER_KEYWORDS.get(name, ())]
    return found


def _python39() -> str | None:
    candidates = [os.environ.get("SEGHIRESCAM_PYTHON39"), shutil.which("python3.9"),
                  str(Path.home() / ".pyenv" / "versions" / "3.9.18" / "bin" / "python")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                                   capture_output=True, text=True)
            if probe.stdout.strip() == "True":
                return candidate
    return None


def test_a_real_python_39_compiles_everything_and_imports_what_slicer_imports_at_start():
    """With a Python 3.9 interpreter at hand (PATH, pyenv or $SEGHIRESCAM_PYTHON39): byte-compile every file and
    import the modules the module file imports at Slicer's start (they need only the standard library)."""
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 interpreter here (set SEGHIRESCAM_PYTHON39); the grammar check above still ran")
    code = ("import sys; sys.dont_write_bytecode = True\n"
            "for f in sys.argv[1:]: compile(open(f, encoding='utf-8').read(), f, 'exec')\n"
            "sys.path.insert(0, %r)\n"
            "import seghirescam, seghirescam.cam.method_info, seghirescam.cam.vocabulary\n"
            "print(len(seghirescam.cam.method_info.METHOD_INFO))") % str(MODULE_ROOT)
    result = subprocess.run([python, "-c", code, *map(str, FILES)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) >= 2


def test_310_only_constructs_are_caught():
    """The checks can fail: a match statement and dataclass(kw_only=True) are not Python 3.9."""
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))
    assert _newer_calls(ast.parse("@dataclass(frozen=True, kw_only=True)\nclass A:\n    x: int\n"))

"""The Slicer extension's CMake files list exactly the module's files, and the extension metadata is complete.

A file missing from SegHiResCAM/CMakeLists.txt would be left out of the installed extension
(the module would fail to import in Slicer); a listed file that does not exist breaks the build.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SegHiResCAM"
EXTENSION_FIELDS = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                    "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _set_commands(text: str) -> dict[str, list[str]]:
    """``set(NAME a b c)`` -> {NAME: [a, b, c]} (quoted values kept whole, quotes removed)."""
    found = {}
    for name, body in re.findall(r"\bset\(\s*(\w+)\s+(.*?)\)", _strip_comments(text), flags=re.S | re.I):
        found[name] = [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', body)]
    return found


def _listed(variable: str) -> list[str]:
    sets = _set_commands((MODULE / "CMakeLists.txt").read_text(encoding="utf-8"))
    module_name = sets["MODULE_NAME"][0]
    return [entry.replace("${MODULE_NAME}", module_name) for entry in sets[variable]]


def _present_scripts() -> set[str]:
    return {str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py")
            if "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts)}


def _present_resources() -> set[str]:
    """Qt resources of the module, and the package's data files (everything but Python in seghirescam/)."""
    resources = [p for p in (MODULE / "Resources").rglob("*") if p.is_file()]
    package_data = [p for p in (MODULE / "seghirescam").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    return {str(p.relative_to(MODULE)) for p in resources + package_data
            if "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts)}


@pytest.mark.parametrize("variable, present", [("MODULE_PYTHON_SCRIPTS", _present_scripts),
                                               ("MODULE_PYTHON_RESOURCES", _present_resources)])
def test_module_cmake_lists_exactly_the_files_present(variable, present):
    listed = _listed(variable)
    assert len(listed) == len(set(listed)), f"{variable} lists a file twice"
    unlisted, missing = sorted(present() - set(listed)), sorted(set(listed) - present())
    assert not unlisted, f"add to {variable} in SegHiResCAM/CMakeLists.txt: {unlisted}"
    assert not missing, f"{variable} lists files that do not exist: {missing}"


def test_module_cmake_builds_the_scripted_module_with_its_self_test():
    text = _strip_comments((MODULE / "CMakeLists.txt").read_text(encoding="utf-8"))
    macro = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, flags=re.S)
    assert macro, "slicerMacroBuildScriptedModule(...) is missing"
    for argument in ("NAME ${MODULE_NAME}", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}", "RESOURCES ${MODULE_PYTHON_RESOURCES}",
                     "WITH_GENERIC_TESTS"):
        assert argument in " ".join(macro.group(1).split()), f"slicerMacroBuildScriptedModule lacks {argument}"
    assert re.search(r"if\(BUILD_TESTING\)\s*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)\s*endif\(\)",
                     text), "the module's self-test is not registered with slicer_add_python_unittest"
    assert _set_commands(text)["MODULE_NAME"] == ["SegHiResCAM"]


def test_top_level_cmake_describes_the_extension():
    text = _strip_comments((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    sets = _set_commands(text)
    for field in EXTENSION_FIELDS:
        assert sets.get(field) and all(sets[field]), f"{field} is missing or empty"
    assert sets["EXTENSION_CATEGORY"] in (["Segmentation"], ["Informatics"])
    assert sets["EXTENSION_ICONURL"][0].endswith("Resources/Icons/SegHiResCAM.png")
    assert (ROOT / "Resources" / "Icons" / "SegHiResCAM.png").is_file()
    order = ["cmake_minimum_required(", "project(SegHiResCAM)", "find_package(Slicer REQUIRED)",
             "include(${Slicer_USE_FILE})", "add_subdirectory(SegHiResCAM)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(item) for item in order]
    assert -1 not in positions, f"missing: {[o for o, p in zip(order, positions, strict=True) if p < 0]}"
    assert positions == sorted(positions), "the top-level CMakeLists.txt commands are out of order"

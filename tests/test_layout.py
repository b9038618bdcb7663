"""The code's rooms, held as the README draws them: one concern per lib module, each named in the
layout with the line that opens it, none grown past its size, and the layering intact."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

LIB = sorted(path for path in (ROOT / "lib").rglob("*.py") if path.name != "__init__.py")
CHECKED = [ROOT / "main.py", *LIB, *sorted((ROOT / "client").glob("*.py"))]
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 50
MAX_MAIN_LINES = 250


def imported(path: Path) -> set[str]:
    """The top-level packages and modules `path` imports (`lib`, `main`, `dev`, ...)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", LIB, ids=lambda path: path.relative_to(ROOT / "lib").as_posix())
def test_every_lib_module_opens_with_its_concern_and_is_in_the_readme_layout(path):
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring, f"{path.name} has no opening line"
    assert docstring.split("\n", 1)[0].strip(), f"{path.name} has no opening line"
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    name = path.relative_to(ROOT).as_posix()
    assert f"\n{name} " in layout, f"{name} is missing from the README's layout"


def test_main_is_an_entrypoint_not_a_room():
    """Issue 34: main.py holds the settings, the routing tables and thin handlers; serving is lib/platform/http.py's,
    the parts lib/wiring.py's, what a request may do lib's."""
    assert len((ROOT / "main.py").read_text().splitlines()) <= MAX_MAIN_LINES


@pytest.mark.parametrize("path", LIB, ids=lambda path: path.relative_to(ROOT / "lib").as_posix())
def test_no_lib_module_outgrows_its_room(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


def test_no_function_is_longer_than_a_screen():
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in CHECKED
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_layers_hold_lib_never_imports_the_entrypoint_the_tooling_or_the_command():
    for path in LIB:
        assert not imported(path) & {"main", "dev", "client", "tests", "bench"}, path.name
    assert not imported(ROOT / "main.py") & {"dev", "client", "tests", "bench"}


# lib's packages, lowest first: a package imports only those before it (lib/__init__.py).
LAYERS = ("platform", "media", "uploads", "limits", "api", "webhooks")
# What composes them, as main.py does: any package, by its face; none of them imports these.
COMPOSITION = ("admin",)


def face(package: str) -> set[str]:
    """The modules of `package` another package may import: its __init__'s FACE."""
    tree = ast.parse((ROOT / "lib" / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["FACE"]:
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"lib/{package}/__init__.py names no FACE")


def lib_imports(path: Path) -> list[tuple[str, str]]:
    """(package, module) for every lib import in `path`; module "" when the package itself is imported."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "lib":
            parts = node.module.split(".")[1:]
            if not parts:
                found += [(alias.name, "") for alias in node.names]
            elif len(parts) == 1 and (ROOT / "lib" / parts[0]).is_dir():
                found += [
                    (parts[0], alias.name)
                    for alias in node.names
                    if (ROOT / "lib" / parts[0] / f"{alias.name}.py").exists()
                ] or [(parts[0], "")]
            else:
                found.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return found


def test_the_packages_are_the_layers_the_readme_draws():
    packages = {path.name for path in (ROOT / "lib").iterdir() if (path / "__init__.py").exists()}
    assert packages == {*LAYERS, *COMPOSITION}
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    for package in COMPOSITION:
        assert f"\nlib/{package}/ " in layout, f"lib/{package}/ is missing from the README's layout"
    for package in LAYERS:
        assert f"\nlib/{package}/ " in layout, f"lib/{package}/ is missing from the README's layout"
        assert face(package) <= {path.stem for path in (ROOT / "lib" / package).glob("*.py")}


@pytest.mark.parametrize("path", [ROOT / "main.py", *LIB], ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_package_reaches_up_or_into_another_packages_internals(path):
    """A module imports its own package freely, a package before its own (LAYERS) only by the face it shows,
    and nothing after it. main.py, lib/wiring.py and lib/admin/ compose: any package, by its face."""
    rel = path.relative_to(ROOT / "lib").parts if path.is_relative_to(ROOT / "lib") else ("main.py",)
    own = rel[0] if len(rel) > 1 else None
    for package, module in lib_imports(path):
        assert package not in COMPOSITION or own == package, f"{path.name} imports lib/{package}, which composes lib"
        if package == own or package not in LAYERS:
            continue
        if own is not None and own not in COMPOSITION:
            assert LAYERS.index(package) < LAYERS.index(own), f"lib/{own} imports lib/{package}, a layer above it"
        assert module == "" or module in face(package), f"{module} is inside lib/{package}, not its face"


def test_the_layout_rule_sees_a_reach_up_and_a_reach_inside(tmp_path):
    """The two rules above, shown failing on a module that breaks each."""
    up = tmp_path / "up.py"
    up.write_text("from lib.api import models\nfrom lib.webhooks.outbound import post\n")
    assert lib_imports(up) == [("api", "models"), ("webhooks", "outbound")]
    assert "outbound" not in face("webhooks")
    assert LAYERS.index("api") > LAYERS.index("uploads")


def test_settings_are_read_once_at_start_up_never_by_a_handler():
    """main.py loads the settings at import (a bad one stops the function starting); handlers use
    the loaded values, and nothing in lib reads the environment's settings on its own."""
    source = (ROOT / "main.py").read_text()
    assert source.count("config.load(") == 1
    assert "\nSETTINGS = _load_settings()\n" in source
    for path in LIB:
        if path.name != "config.py":
            assert "config.load(" not in path.read_text(), path.name


def test_the_api_keys_collection_has_one_owner():
    """Issue 34: admin revoked and listed keys by writing the collection itself; lib/api/auth.py is now the only
    code that names it (creation, lookup, listing, revocation)."""
    sources = [ROOT / "main.py", *LIB, *sorted((ROOT / "dev").glob("*.py"))]
    named = [
        path.relative_to(ROOT).as_posix()
        for path in sources
        if "auth.COLLECTION" in path.read_text() or '"api_keys"' in path.read_text()
    ]
    assert named == ["lib/api/auth.py"]


def test_the_upload_record_has_one_owner():
    """Issue 34: settling, storage events, webhooks and the API's view read `record.data[...]`; now only
    lib/uploads/records.py touches a record's document (`_doc`), only lifecycle.py (which stores and reads it)
    names the collection, and every other room reads the typed Record and ends it by a Settlement."""
    sources = [ROOT / "main.py", *LIB]
    reaching = [
        path.relative_to(ROOT).as_posix()
        for path in sources
        if "._doc" in path.read_text() or "lifecycle.COLLECTION" in path.read_text() or ".data[" in path.read_text()
    ]
    assert reaching == ["lib/uploads/records.py"]

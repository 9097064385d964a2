"""The installed names cannot collide, every code folder is packaged, and the import graph has floors and no circle.

Floors (lowest first): nemo_migrate.automodel (Automodel 0.7's semantics, torch-free) < nemo_migrate.runtime (the
training runtime) < the compiler (everything else in nemo_migrate).  A module imports its own floor or lower floors;
the runtime never imports the compiler; the compiler imports the runtime only to train (verify)."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"nemo_migrate": ROOT / "migrate", "nemo_migrate.runtime": ROOT / "runtime", "nemo_migrate.automodel": ROOT / "automodel"}
CODE_DIRS = ("migrate", "runtime", "automodel", "tests", "tools", "bench")


def _modules() -> dict[str, Path]:
    """Every module of the package by its installed name (nemo_migrate.sources.launch -> migrate/sources/launch.py)."""
    out: dict[str, Path] = {}
    for pkg, folder in FOLDERS.items():
        if not folder.is_dir():
            continue
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "nemo_migrate" and parts and parts[0] in ("runtime", "automodel"):
                continue
            out[".".join([pkg, *parts])] = f
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Modules of nemo_migrate that ``name`` imports, anywhere in the file (lazy imports count: they are design too)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "nemo_migrate" or m.startswith("nemo_migrate.")}


def _under(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def _floor(mod: str) -> int:
    if _under(mod, "nemo_migrate.automodel"):
        return 0
    if _under(mod, "nemo_migrate.runtime"):
        return 1
    return 2


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: {m for m in _imports(n, p) if m in mods and m != n} for n, p in mods.items()}


def test_no_code_imports_the_folder_names():
    """`migrate` and `runtime` are folder names, never import names (they would collide in site-packages)."""
    bad = []
    rx = re.compile(r"^\s*(from|import)\s+(migrate|runtime)\b|-m\s+(migrate|runtime)\.|['\"](migrate|runtime)\.[a-z_]+['\"]", re.M)
    for d in CODE_DIRS:
        for f in (ROOT / d).rglob("*.py"):
            if "realworld" in f.parts or "fixtures" in f.parts:
                continue
            for m in rx.finditer(f.read_text()):
                bad.append(f"{f.relative_to(ROOT)}:{f.read_text()[:m.start()].count(chr(10)) + 1}: {m.group(0).strip()}")
    assert not bad, "\n".join(bad)


def test_every_code_folder_is_packaged():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(cfg["packages"]), cfg["package-dir"]
    assert cfg["package-data"], "data files are found by glob patterns"
    for pkg, folder in FOLDERS.items():
        if not folder.is_dir():
            continue
        assert dirs.get(pkg) == folder.name, f"{pkg} must map onto {folder.name}/"
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            name = ".".join([pkg, *rel.parts])
            if pkg == "nemo_migrate" and rel.parts and rel.parts[0] in ("runtime", "automodel"):
                continue
            assert name in listed, f"{init.parent.relative_to(ROOT)} holds code but {name} is not in pyproject.toml's packages"


def test_imports_never_go_up_a_floor():
    up = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps
          if _floor(b) > _floor(a) and not (_floor(b) == 1 and _under(a, "nemo_migrate.verify"))]
    assert not up, "\n".join(sorted(up))


def test_the_runtime_never_imports_the_compiler():
    bad = [f"{a} -> {b}" for a, deps in _graph().items() if _floor(a) <= 1 for b in deps if _floor(b) == 2]
    assert not bad, "\n".join(sorted(bad))


# import circles still to remove (the issue-16 redesign removed rules <-> transforms and recipe_py -> rules -> resolve);
# this list only shrinks
KNOWN_CIRCLES: set[str] = set()


def test_no_import_circle():
    g = _graph()
    seen: dict[str, int] = {}
    cycles: list[str] = []

    def visit(n: str, stack: list[str]) -> None:
        seen[n] = 1
        for m in sorted(g[n]):
            if seen.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in seen:
                visit(m, stack + [m])
        seen[n] = 2

    for n in sorted(g):
        if n not in seen:
            visit(n, [n])
    assert set(cycles) <= KNOWN_CIRCLES, "\n".join(sorted(set(cycles) - KNOWN_CIRCLES))

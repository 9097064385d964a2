"""Derive mappings/nemo2/releases.yaml from the NeMo 2 releases users run (nemo-toolkit wheels on PyPI).

For each release it reads, without importing anything: which `llm.<recipe>.finetune_recipe` modules exist (and the
name they register for NeMo-Run's CLI, their NAME), and the parameters of every NeMo class in
mappings/nemo2/classes.yaml whose source file is in the wheel (__init__ arguments, or dataclass fields).  The table
lets `convert --nemo-version` say when a job uses a recipe or a parameter its release does not have.

    python tools/nemo_versions/extract.py [--cache /tmp/nemowheels]   # downloads the wheels with pip (no deps)

The output is data committed with its source (the wheel names); tests/test_nemo_versions.py checks the table
against the wheels when they are present.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# the last patch release of each minor version users run (2.0 .. 2.7; 3.0 removed nemo.collections.llm)
RELEASES = {"2.0": "2.0.0", "2.1": "2.1.0", "2.2": "2.2.1", "2.3": "2.3.2", "2.4": "2.4.1", "2.5": "2.5.3", "2.6": "2.6.2", "2.7": "2.7.3"}


def wheel(cache: Path, version: str) -> Path:
    d = cache / f"v{version}"
    found = sorted(d.glob("nemo_toolkit-*.whl")) if d.is_dir() else []
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"nemo-toolkit=={version}", "-d", str(d)], check=True)
        found = sorted(d.glob("nemo_toolkit-*.whl"))
    return found[0]


def recipes(z: zipfile.ZipFile) -> dict[str, str]:
    out = {}
    for n in sorted(z.namelist()):
        if n.startswith("nemo/collections/llm/recipes/") and n.endswith(".py") and n.count("/") == 4:
            src = z.read(n).decode("utf-8", "replace")
            if "def finetune_recipe" not in src:
                continue
            tree = ast.parse(src)
            name = None
            for st in tree.body:
                if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "NAME" for t in st.targets) \
                        and isinstance(st.value, ast.Constant):
                    name = st.value.value
            out[Path(n).stem] = name or Path(n).stem
    return out


def params(z: zipfile.ZipFile, path: str, cls: str) -> list[str] | None:
    try:
        src = z.read(path).decode("utf-8", "replace")
    except KeyError:
        return None
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef) and node.name == cls:  # a function (llm.finetune)
            a = node.args
            return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        if isinstance(node, ast.ClassDef) and node.name == cls:
            init = next((b for b in node.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
            if init is not None:
                a = init.args
                if a.kwarg is not None:  # **kwargs passed on to a parent: every parent parameter is accepted too
                    return ["**"] + [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg != "self"]
                return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg != "self"]
            return [b.target.id for b in node.body if isinstance(b, ast.AnnAssign) and isinstance(b.target, ast.Name)
                    and "ClassVar" not in ast.unparse(b.annotation)]
    return None


def class_sources() -> dict[str, tuple[str, str]]:
    """classes.yaml key -> (file in the wheel, class name), for classes whose source is NeMo's."""
    classes = yaml.safe_load((ROOT / "mappings/nemo2/classes.yaml").read_text())
    out = {}
    for key, c in classes.items():
        doc = str(c.get("doc") or "")
        path = doc.split("::")[0].split(" ")[0]
        if not path.startswith("nemo/") or not path.endswith(".py"):
            continue
        name = doc.split("::")[1].split(" ")[0] if "::" in doc else key
        out[key] = (path, name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/nemowheels"))
    ap.add_argument("--out", type=Path, default=ROOT / "mappings/nemo2/releases.yaml")
    args = ap.parse_args()
    rel_recipes: dict[str, dict[str, str]] = {}
    rel_params: dict[str, dict[str, list[str] | None]] = {}
    srcs = class_sources()
    wheels = {}
    for minor, version in RELEASES.items():
        w = wheel(args.cache, version)
        wheels[minor] = w.name
        with zipfile.ZipFile(w) as z:
            rel_recipes[minor] = recipes(z)
            rel_params[minor] = {k: params(z, p, n) for k, (p, n) in srcs.items()}
    order = list(RELEASES)
    out: dict = {"releases": order, "wheels": wheels, "recipes": {}, "fields": {}}
    for r in sorted(set().union(*rel_recipes.values())):
        have = [m for m in order if r in rel_recipes[m]]
        entry: dict = {"since": have[0]}
        if have[-1] != order[-1]:
            entry["until"] = have[-1]
        names = {rel_recipes[m][r] for m in have}
        if names != {r}:
            entry["cli_name"] = rel_recipes[have[-1]][r]
        out["recipes"][r] = entry
    for key in sorted(srcs):
        seen = [m for m in order if rel_params[m].get(key) is not None]
        if not seen:
            continue
        cls: dict = {}
        if seen[0] != order[0]:
            cls["_since"] = seen[0]
        if seen[-1] != order[-1]:
            cls["_until"] = seen[-1]
        allp = sorted(set().union(*(set(rel_params[m][key] or []) for m in seen)) - {"**"})
        for p in allp:
            have = [m for m in seen if p in (rel_params[m][key] or []) or "**" in (rel_params[m][key] or [])]
            if have == seen:
                continue  # in every release the class exists in
            cls[p] = have  # the releases that have the parameter
        if cls:
            out["fields"][key] = cls
    header = ("# Generated by tools/nemo_versions/extract.py from the nemo-toolkit wheels below (PyPI): per NeMo 2 release, the\n"
              "# finetune recipes that exist (since/until; cli_name = the NAME NeMo-Run's CLI registers when it is not the module\n"
              "# name) and, for NeMo classes whose parameters differ between releases, the releases that have each such\n"
              "# parameter (a class's own _since/_until when it is not in every release). Releases name the minor version; each\n"
              "# was read from its last patch release. Do not edit by hand: rerun the tool.\n")
    args.out.write_text(header + yaml.safe_dump(out, sort_keys=False, width=120, default_flow_style=None))
    print(f"wrote {args.out}: {len(out['recipes'])} recipes, {len(out['fields'])} classes with release differences")


if __name__ == "__main__":
    main()

"""Derive recipe knowledge from REAL NeMo 2.7.3: what `performance_mode=True` changes in each finetune recipe.

Run with the oracle venv (requirements/nemo-oracle.txt), never with the product's; nothing trains, no model is built:

    .nemo-venv/bin/python tools/nemo_oracle/derive_recipes.py > /tmp/perf.yaml        # then review and merge:
    .venv/bin/python tools/nemo_oracle/derive_recipes.py --merge /tmp/perf.yaml       # writes mappings/nemo2/recipes.yaml

For every recipe with a `performance_mode` parameter and each branch (lora, none) the recipe is built twice by NeMo's
own factory (performance_mode False / True, packed_sequence fixed to False so that the packing default, which the
compiler models on its own, stays out) and the two configs are compared leaf by leaf; the assignments that differ are
the recipe's `performance_mode` entry (dotted path -> value; run.Config values as `_target_` mappings).
"""

from __future__ import annotations

import argparse
import enum
import importlib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def plain(v: Any) -> Any:
    import fiddle as fdl

    if isinstance(v, fdl.Buildable):
        fn = fdl.get_callable(v)
        out: dict[str, Any] = {"_target_": getattr(fn, "__name__", str(fn))}
        if isinstance(v, fdl.Partial):
            out["_partial_"] = True
        for k, x in sorted(v.__arguments__.items()):
            out[k] = plain(x)
        return out
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, enum.Enum):
        return v.value
    if type(v).__module__ == "torch" and type(v).__name__ == "dtype":
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    import fiddle as fdl

    out: dict[str, Any] = {}
    if isinstance(cfg, fdl.Buildable):
        out[f"{prefix}_target_" if prefix else "_target_"] = plain(cfg)["_target_"]
        for k, x in cfg.__arguments__.items():
            p = f"{prefix}{k}"
            if isinstance(x, fdl.Buildable):
                out.update(flatten(x, p + "."))
            else:
                out[p] = plain(x)
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in sorted(flat.items(), key=lambda kv: (kv[0] != "_target_", kv[0])):
        cur = out
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return out


def derive() -> dict[str, dict[str, dict[str, Any]]]:
    import inspect

    import nemo.collections.llm.recipes as R

    result: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(Path(R.__file__).parent.glob("*.py")):
        try:
            mod = importlib.import_module(f"nemo.collections.llm.recipes.{path.stem}")
        except Exception as e:  # noqa: BLE001 - a recipe module that needs what a CPU install lacks
            print(f"# {path.stem}: cannot import ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        fn = getattr(mod, "finetune_recipe", None)
        if fn is None or "performance_mode" not in inspect.signature(fn).parameters:
            continue
        entry: dict[str, dict[str, Any]] = {}
        for scheme, key in (("lora", "lora"), ("none", "full")):
            try:
                base = flatten(fn(peft_scheme=scheme, performance_mode=False, packed_sequence=False))
                perf = flatten(fn(peft_scheme=scheme, performance_mode=True, packed_sequence=False))
            except Exception as e:  # noqa: BLE001 - NeMo's own validation (e.g. a branch it refuses)
                entry[key] = {"_refused": f"{type(e).__name__}: {e}"}
                continue
            diff = {p: v for p, v in perf.items() if base.get(p, "<absent>") != v}
            # a node that is new (or of another class) in performance mode: one assignment of the whole node
            nodes = sorted(p[: -len("._target_")] for p in diff if p.endswith("._target_"))
            for n in nodes:
                node = {k[len(n) + 1:]: v for k, v in perf.items() if k.startswith(n + ".")}
                for k in list(diff):
                    if k.startswith(n + "."):
                        del diff[k]
                diff[n] = _nest(node)
            entry[key] = dict(sorted(diff.items()))
        result[path.stem] = entry
    return result


def merge(perf_file: Path) -> None:
    """Write the derived entries into mappings/nemo2/recipes.yaml (round trip: the file's comments stay)."""
    import yaml
    from ruamel.yaml import YAML

    perf = yaml.safe_load(perf_file.read_text())
    recipes_path = ROOT / "mappings/nemo2/recipes.yaml"
    rt = YAML()
    rt.width = 140
    rt.preserve_quotes = True
    data = rt.load(recipes_path.read_text())
    changed = []
    for name, entry in sorted(perf.items()):
        if name not in data:
            continue
        if data[name].get("performance_mode") != entry:
            changed.append(name)
        data[name]["performance_mode"] = entry
    with recipes_path.open("w") as fh:
        rt.dump(data, fh)
    print(f"{len(changed)} recipes' performance_mode replaced by the derived one: {', '.join(changed)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--merge", type=Path)
    args = ap.parse_args()
    if args.merge:
        merge(args.merge)
        return
    import yaml

    print("# performance_mode assignments derived from NeMo 2.7.3 (tools/nemo_oracle/derive_recipes.py)")
    print(yaml.safe_dump(derive(), sort_keys=True, width=140, default_flow_style=None))


if __name__ == "__main__":
    main()

"""Front end for NeMo 1.0 SFT/PEFT jobs (megatron_gpt_finetuning.py, megatron_gpt_sft.py) and NeMo-Aligner SFT jobs
(train_gpt_sft.py, also the SteerLM and CAI SFT entry point).

The script that runs decides the config Hydra starts from (mappings/nemo1/scripts.yaml): with ``--config-name`` the
user's YAML, merged here over that script's shipped default config (a verbatim copy in mappings/nemo1/, its header
names the release); without one the shipped config itself.  Hydra command-line overrides are applied (``key=value``,
``+key=value``, ``++key=value``, ``~key``; parsed and typed by Hydra's own grammar, applied with Hydra's rules),
OmegaConf interpolations are resolved by OmegaConf itself (``${a.b}``, relative ``${.x}``/``${..x}``, inside strings
and lists, nested); resolvers such as ``${oc.env:X}`` are never called (NM232: they would read this machine's
environment). hydra-core and omegaconf are imported only here, only when a NeMo 1 job is read (+0.11 s).  Every leaf
keeps its file:line through both, and is lowered into the NeMo 2 IR by the table in
mappings/nemo1/lowering.yaml, keeping its file:line (or ``NeMo 1.0 default``).  Settings with no NeMo 2 meaning are
kept as ``nemo1.<path>`` knobs that rows N1xx of the rule table bucket.  Nothing is executed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .. import knowledge, schema
from ..diagnostics import Diagnostics, MigrateError, did_you_mean
from ..ir import Knob, Node, Provenance
from .yaml_source import YamlError, _Builder, _mark, compose_file

MANDATORY = "???"
_INTERP = re.compile(r"\$\{([^{}]*)\}")
_SHELL_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class Leaf:
    value: Any
    prov: Provenance


def detect(data: Any) -> str | None:
    """'nemo1' (megatron_gpt_finetuning / megatron_gpt_sft), 'aligner' (NeMo-Aligner SFT), or None."""
    if not isinstance(data, dict):
        return None
    trainer, model = data.get("trainer"), data.get("model")
    if isinstance(trainer, dict) and isinstance(trainer.get("sft"), dict):
        return "aligner"
    if isinstance(model, dict) and ("restore_from_path" in model or isinstance(model.get("data"), dict) or isinstance(model.get("peft"), dict)):
        return "nemo1"
    if "exp_manager" in data:
        return "nemo1"
    return None


# ---------------------------------------------------------------------------------------------- scripts

def _scripts() -> dict[str, dict]:
    return knowledge.load("nemo1/scripts.yaml")["scripts"]


def hydra_scripts() -> set[str]:
    """Basenames of the NeMo 1.0 / NeMo-Aligner Hydra training scripts (mappings/nemo1/scripts.yaml)."""
    return set(_scripts())


def not_sft() -> dict[str, dict]:
    """Training scripts that are not supervised fine-tuning (pre-training, DPO, PPO...): basename -> {kind, trains}."""
    return knowledge.load("nemo1/scripts.yaml").get("not_sft") or {}


def script_entry(script: str | None) -> dict | None:
    """The scripts.yaml entry of a script path (by basename), or None for a script this table does not know."""
    return _scripts().get(Path(script).name) if script else None


def _config_stem(name: str) -> str:
    return name[: -len(Path(name).suffix)] if Path(name).suffix in (".yaml", ".yml") else name


def shipped_config(name: str) -> tuple[str, dict] | None:
    """(script, entry) whose shipped default config has this --config-name, or None."""
    stem = _config_stem(Path(name).name)
    for script, e in _scripts().items():
        if e["config"] == stem and e.get("defaults"):
            return script, e
    return None


def defaults_path(entry: dict) -> Path:
    return knowledge.MAPPINGS / "nemo1" / entry["defaults"]


def _is_shipped(path: Path) -> bool:
    try:
        return path.resolve().parent == (knowledge.MAPPINGS / "nemo1").resolve()
    except OSError:
        return False


def shipped_display(path: Path) -> str | None:
    """How the report names a shipped default config ('gpt_sft.yaml (NeMo-Aligner v0.7.0, shipped)'), None for a user file."""
    if not _is_shipped(path):
        return None
    for e in _scripts().values():
        if e.get("defaults") == path.name:
            s = e["source"]
            return f"{s['config'].rsplit('/', 1)[-1]} ({s['repo'].split('/')[-1]} {s['version']}, shipped)"
    return None


def source_text(entry: dict) -> str:
    s = entry["source"]
    return f"{s['config'].rsplit('/', 1)[-1]} of {s['repo']} {s['version']} ({s['commit'][:8]}, {s['config']})"


def locate_config(job_dir: Path, launch: Any, diags: Diagnostics) -> Path | None:
    """The config file a Hydra launch line composes: the --config-name YAML in the job directory, else the shipped
    default config of that name (a note says so), else a located error.  None after an error."""
    where = {"file": launch.file, "line": launch.line}
    script = Path(launch.script).name if getattr(launch, "script", None) else None
    entry = script_entry(script)
    if entry is not None and entry["format"] == "unsupported":
        diags.error("NM242", f"{script} ({entry['label']}) cannot be migrated: {entry['reason']}", hint=entry.get("hint"), **where)
        return None
    name = launch.config_name or (entry["config"] if entry else None)
    if not name:
        diags.error("NM006", "the launcher's --config-name is empty", hint="--config-name=<config file name>", **where)
        return None
    fname = name if Path(name).suffix in (".yaml", ".yml") else name + ".yaml"
    cands: list[Path] = []
    cpath = launch.config_path
    if cpath and not Path(cpath).is_absolute() and "$" not in cpath:
        cands.append(job_dir / cpath / fname)
    cands.append(job_dir / fname)
    for c in cands:
        if c.is_file():
            if c != cands[0] and launch.config_name:
                diags.note("NM241", f"--config-path {cpath} is not in {job_dir}: reading {fname} next to the launcher", **where)
            return c
    hit = shipped_config(fname)
    if hit is not None:
        s, e = hit
        told = f"--config-name {launch.config_name}" if launch.config_name else f"{script} (no --config-name)"
        diags.note("NM241", f"{told}: {fname} is not in {job_dir}; using the shipped {source_text(e)}", **where)
        return defaults_path(e)
    known = sorted({e["config"] for e in _scripts().values() if e.get("defaults")})
    var = " (it contains a shell variable nemo-migrate cannot expand)" if "$" in name or "$" in (cpath or "") else ""
    diags.error("NM006", f"the launcher's --config-name {name}{var}: {fname} is neither in {job_dir}"
                f" (looked in {', '.join(os.path.relpath(c, job_dir) for c in cands)}) nor one of the shipped configs",
                hint=(did_you_mean(_config_stem(fname), known) or f"shipped: {', '.join(known)}") +
                f"; copy {fname} into the job directory{' under ' + cpath if cpath and not Path(cpath).is_absolute() else ''}, "
                "or convert the YAML itself: nemo-migrate convert <file.yaml> --run-sh <launcher>", **where)
    return None


# ---------------------------------------------------------------------------------------------- trees

def _flatten(tree: Any, prov: Callable[[str], Provenance], prefix: str = "") -> dict[str, Leaf]:
    out: dict[str, Leaf] = {}
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            out.update(_flatten(v, prov, p))
    else:
        out[prefix] = Leaf(tree, prov(prefix))
    return out


def _user_leaves(path: Path, display: str, diags: Diagnostics) -> dict[str, Leaf] | None:
    from ruamel.yaml.nodes import MappingNode

    root = compose_file(path, display, diags)
    if root is None:
        return None if diags.has_errors else {}
    if not isinstance(root, MappingNode):
        diags.error("NM102", "top level must be a mapping", file=display)
        return None
    b = _Builder()
    out: dict[str, Leaf] = {}

    def walk(node: Any, prefix: str, key_mark: tuple) -> None:
        if isinstance(node, MappingNode) and node.value:
            for key, kn, vnode in b.pairs3(node):
                walk(vnode, f"{prefix}.{key}" if prefix else key, _mark(kn))
        else:
            line, col = key_mark
            value = b.value(node)
            if getattr(node, "style", None) is None:  # a plain (unquoted) scalar
                value = _omegaconf_float(value)
            out[prefix] = Leaf(value, Provenance(kind="yaml", file=display, line=line, col=col))

    try:
        walk(root, "", (None, None))
    except YamlError as e:
        diags.error("NM101", str(e), file=display, line=e.line, col=e.col)
        return None
    return out


# OmegaConf (and Hydra's override grammar) read 1e-4 as a float; YAML 1.1 alone would keep it a string
_OC_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$")


def _omegaconf_float(value: Any) -> Any:
    return float(value.replace("_", "")) if isinstance(value, str) and _OC_FLOAT.match(value) else value


def _subtree(leaves: dict[str, Leaf], key: str) -> Any:
    """The value at ``key`` as OmegaConf.select sees it (None when absent or ``???``)."""
    if key in leaves:
        v = leaves[key].value
        return None if v == MANDATORY else v
    under = {p[len(key) + 1:]: lf.value for p, lf in leaves.items() if p.startswith(key + ".")}
    if not under:
        return None
    tree: dict = {}
    for p, v in under.items():
        *parents, last = p.split(".")
        node = tree
        for q in parents:
            node = node.setdefault(q, {})
        node[last] = v
    return tree


def _merge_into(leaves: dict[str, Leaf], key: str, value: Any, prov: Provenance) -> None:
    """``OmegaConf.update(cfg, key, value, merge=True)`` on the flat tree: a mapping merges key by key into a mapping
    (an empty one changes nothing), anything else replaces the node."""
    if isinstance(value, dict) and value and (key not in leaves or isinstance(leaves[key].value, dict)):
        if key in leaves:
            del leaves[key]
        for k, v in value.items():
            _merge_into(leaves, f"{key}.{k}", v, prov)
        return
    if isinstance(value, dict) and not value and any(p.startswith(key + ".") for p in leaves):
        return
    for p in [p for p in leaves if p.startswith(key + ".")]:
        del leaves[p]
    parts = key.split(".")
    for i in range(1, len(parts)):  # a scalar in the way of the new key becomes a mapping
        leaves.pop(".".join(parts[:i]), None)
    leaves[key] = Leaf(value, prov)


def _clash(current: Any, value: Any, at: str) -> str | None:
    """Where OmegaConf's merge refuses ``value`` over ``current``: a list over a mapping or a mapping over a list."""
    if isinstance(current, dict) and isinstance(value, list) or isinstance(current, list) and isinstance(value, dict):
        return at
    if isinstance(current, dict) and isinstance(value, dict):
        for k, v in value.items():
            if k in current and (hit := _clash(current[k], v, f"{at}.{k}")):
                return hit
    return None


def _new_keys(current: dict, value: dict) -> list[str]:
    """Keys of ``value`` that a merge would add to ``current`` (a struct config refuses them)."""
    out = []
    for k, v in value.items():
        if k not in current:
            out.append(str(k))
        elif isinstance(v, dict) and v and isinstance(current[k], dict):
            out += [f"{k}.{n}" for n in _new_keys(current[k], v)]
    return out


def apply_hydra(leaves: dict[str, Leaf], overrides: list[tuple[str, Provenance]], diags: Diagnostics) -> None:
    """Hydra's command-line overrides, each parsed by Hydra's own grammar (sources/overrides.py) and applied as Hydra
    1.3 applies them to the composed (struct) config (hydra/_internal/config_loader_impl.py
    ``_apply_overrides_to_config``), on the flat tree so every value keeps its provenance. One difference: ``~key=v``
    compares ``v`` with the value as written (Hydra compares it with the resolved value)."""
    from .overrides import HYDRA_FORMS, parse_hydra_override

    for text, prov in overrides:
        ov = parse_hydra_override(text, prov, diags)
        if ov is None:
            continue
        key, where = ov.key, prov.where()
        current = _subtree(leaves, key)
        exists = key in leaves or any(p.startswith(key + ".") for p in leaves)
        p_new = prov.model_copy(update={"detail": text})
        if ov.op == "delete":
            if current is None:
                diags.error("NM231", f"Hydra override {text!r}: '{key}' does not exist (Hydra: 'Could not delete from "
                            "config')", key=key, hint=(did_you_mean(key, leaves) or "") + f" {HYDRA_FORMS}", **where)
            elif ov.has_value and ov.value != current:
                diags.error("NM231", f"Hydra override {text!r}: the value of '{key}' is {current!r}, not {ov.value!r} "
                            "(Hydra deletes only a matching value)", key=key, hint=f"~{key} deletes it whatever it holds",
                            **where)
            else:
                gone = [p for p in leaves if p == key or p.startswith(key + ".")]
                last = leaves[gone[0]].prov
                for p in gone:
                    del leaves[p]
                parent = key.rpartition(".")[0]
                if parent and not any(p.startswith(parent + ".") for p in leaves):
                    leaves[parent] = Leaf({}, last)  # Hydra leaves the emptied mapping in place
            continue
        if ov.op == "change" and not exists:
            diags.error("NM231", f"Hydra override {text!r}: key '{key}' is not in the config (Hydra: 'Could not override')",
                        hint=(did_you_mean(key, leaves) or "") + f" use +{text} to add a key", **where)
            continue
        if (hit := _clash(current, ov.value, key)) is not None:
            kinds = ("a list", "mapping") if isinstance(ov.value, list) else ("a mapping", "list")
            diags.error("NM231", f"Hydra override {text!r}: OmegaConf cannot merge {kinds[0]} into the {kinds[1]} at "
                        f"'{hit}' (Hydra: 'Error merging override')", key=key,
                        hint=f"delete it first (~{hit}) and add the new value (+{hit}=...)", **where)
            continue
        if ov.op == "change" and isinstance(ov.value, dict) and isinstance(current, dict) and _new_keys(current, ov.value):
            diags.error("NM231", f"Hydra override {text!r}: '{key}.{_new_keys(current, ov.value)[0]}' is not in the config "
                        "(Hydra: 'Could not override')", hint=f"use +{text} to add keys", **where)
            continue
        if ov.op == "add" and current is not None and not isinstance(ov.value, (dict, list)):
            diags.error("NM231", f"Hydra override {text!r}: '{key}' already exists (use ++ to override)", **where)
            continue
        _merge_into(leaves, key, ov.value, p_new)


def _shell_variables(leaves: dict[str, Leaf], diags: Diagnostics) -> None:
    """A value from the launcher that still holds $VAR / ${VAR}: the shell expands it before NeMo runs, so it is a
    variable nemo-migrate does not know (not an OmegaConf interpolation: those name config keys)."""
    for path, lf in leaves.items():
        if not (lf.prov.kind in ("cli", "launch") and lf.prov.file and isinstance(lf.value, str) and "$" in lf.value):
            continue
        for m in _SHELL_VAR.finditer(lf.value):
            name = m.group(1) or m.group(2)
            if m.group(1) and (name in leaves or any(p.startswith(name + ".") for p in leaves)):
                continue  # ${name} naming a config key: an OmegaConf interpolation that reached the script quoted
            diags.error("NM243", f"'{path}' holds ${name} ({lf.value!r}): {name} is neither a key of the config (an OmegaConf "
                        "interpolation) nor a shell variable nemo-migrate knows (the shell expands those before NeMo starts)", key=path,
                        hint=f"pass --set {path}=<value> to nemo-migrate, or set {name}=... in the launcher", **lf.prov.where())


def _strings(v: Any):
    if isinstance(v, str):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _strings(x)
    elif isinstance(v, dict):
        for x in v.values():
            yield from _strings(x)


def _plain(v: Any, escape: bool = False) -> Any:
    """``v`` as OmegaConf can hold it; ``escape``: every ``${`` made literal (``\\${``), so nothing in it resolves."""
    if isinstance(v, str):
        return v.replace("${", "\\${") if escape else v
    if isinstance(v, (list, tuple)):
        return [_plain(x, escape) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x, escape) for k, x in v.items()}
    return v if v is None or isinstance(v, (bool, int, float)) else str(v)


def resolve_interpolations(leaves: dict[str, Leaf], diags: Diagnostics, label: str) -> None:
    """OmegaConf interpolations, resolved by OmegaConf 2.3 itself (its grammar: ``${a.b}``, relative ``${.x}`` /
    ``${..x}``, inside strings and lists, nested ``${a.${b}}``, escaped ``\\${x}``) over the merged tree. A value that
    is one ``${key}`` keeps the provenance of the value it points at; any other keeps its own.
    Resolvers (``${oc.env:HOME}``, ``${oc.decode:...}``, any ``${name:...}``) are never called: they depend on the machine
    the job runs on (``oc.env`` would read *this* machine's environment). Such a value is kept as written, with a
    warning (NM232); Automodel's loader resolves ``${oc.env:VAR}`` itself when the job runs."""
    todo = [p for p, lf in leaves.items() if any("${" in t for t in _strings(lf.value))]
    if not todo:
        return
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import InterpolationToMissingValueError, OmegaConfBaseException
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as G
    from omegaconf.grammar_parser import parse

    held: set[str] = set()  # kept as written (a resolver, or not OmegaConf's grammar)
    whole: dict[str, str] = {}  # path -> the key a value that is exactly one ${key} points at

    def nodes(tree: Any, cls: type) -> list:
        out = [tree] if isinstance(tree, cls) else []
        for c in getattr(tree, "children", None) or []:
            out += nodes(c, cls)
        return out

    for p in todo:
        lf = leaves[p]
        for text in (t for t in _strings(lf.value) if "${" in t):
            try:
                parsed = parse(text)
            except OmegaConfBaseException as e:
                diags.error("NM233", f"'{p}' holds {text!r}, which is not an OmegaConf interpolation "
                            f"({_first_line(e)})", key=p, hint="write ${a.b} for the value of key a.b; \\${ for a literal ${",
                            **lf.prov.where())
                held.add(p)
                break
            names = [r.getText() for r in nodes(parsed, G.ResolverNameContext)]
            if names:
                diags.warning("NM232", f"'{p}' uses the resolver {names[0]!r} ({text!r}), which depends on the machine the "
                              "job runs on; kept as text, not resolved here", key=p, **lf.prov.where())
                held.add(p)
                break
            inter = nodes(parsed, G.InterpolationNodeContext)  # ${a.${b}} holds two
            if isinstance(lf.value, str) and len(inter) == 1 and inter[0].getText() == text:
                whole[p] = text[2:-1].strip()
    tree: dict = {}
    for path, lf in leaves.items():
        *parents, last = path.split(".")
        node = tree
        for q in parents:
            node = node.setdefault(q, {})
            if not isinstance(node, dict):
                break
        else:
            node[last] = _plain(lf.value, escape=path in held)
    try:
        cfg = OmegaConf.create(tree)
    except OmegaConfBaseException as e:  # pragma: no cover - every ${ string was parsed above
        diags.error("NM233", f"the {label} config cannot be read by OmegaConf ({_first_line(e)})", file=label)
        return

    def target_of(ref: str, at: str) -> str:
        if ref.startswith("."):
            ups = len(ref) - len(ref.lstrip("."))
            base = at.split(".")[:-ups]
            return ".".join(base + [ref.lstrip(".")]) if ref.lstrip(".") else ".".join(base)
        return ref

    # a value that is one ${key}: where its chain of such values ends, and how long the chain is (resolved shortest
    # first and written back, so each lookup is one step however long the chain)
    nxt = {p: t for p, ref in whole.items() if (t := target_of(ref, p)) in leaves}
    end: dict[str, str] = {}
    depth: dict[str, int] = {}
    for p in todo:
        chain, q = [], p
        while q in nxt and q not in end and q not in chain:
            chain.append(q)
            q = nxt[q]
        last, d0 = (end[q], depth[q]) if q in end else (q, 0)
        for i, c in enumerate(reversed(chain)):
            end[c], depth[c] = last, d0 + i + 1

    def origin(path: str) -> Provenance:
        """The provenance of the value at ``path``: that of the value a whole ``${key}`` points at, else its own."""
        src = leaves[end.get(path, path)].prov
        if end.get(path, path) == path or src.kind == "yaml":
            return src
        return src.model_copy(update={"detail": f"via ${{{whole[path]}}} at {path}"})

    provs = {p: origin(p) for p in todo if p not in held}
    for p in sorted(todo, key=lambda q: depth.get(q, 0)):
        if p in held:
            continue
        lf = leaves[p]
        try:
            value = OmegaConf.select(cfg, p, throw_on_missing=True)
            if isinstance(value, (DictConfig, ListConfig)):
                value = OmegaConf.to_container(value, resolve=True)
            OmegaConf.update(cfg, p, _plain(value, escape=True), merge=False)  # resolved: later lookups stop here
        except InterpolationToMissingValueError:
            if p in whole:  # ${key} of a mandatory value: the value is still mandatory (NM230 reports it)
                leaves[p] = Leaf(MANDATORY, provs[p])
            else:
                diags.error("NM233", f"cannot resolve an interpolation: '{p}' ({lf.value!r}) uses a mandatory value "
                            "('???') that is not set", key=p, **lf.prov.where())
            continue
        except (OmegaConfBaseException, RecursionError) as e:
            msg = _first_line(e) if not isinstance(e, RecursionError) else f"a chain of interpolations too long at '{p}'"
            if "Recursive interpolation" in msg:
                msg = f"interpolation cycle at '{p}'"
            elif p in whole and target_of(whole[p], p) not in leaves:
                msg = f"'{p}' refers to '{target_of(whole[p], p)}', which is not in the config ({msg})"
            diags.error("NM233", f"cannot resolve an interpolation: {msg}", key=p, **lf.prov.where())
            continue
        if isinstance(value, dict) and value:  # ${key} of a whole mapping: its leaves, each with its provenance
            tgt = target_of(whole.get(p, ""), p)
            del leaves[p]
            for sub, lf2 in _flatten(value, lambda q: leaves.get(f"{tgt}.{q[len(p) + 1:]}", lf).prov, p).items():
                leaves[sub] = lf2
            continue
        leaves[p] = Leaf(value, provs[p])


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ---------------------------------------------------------------------------------------------- lowering

def _pick_script(script: str | None, fmt: str | None, user: dict[str, Leaf] | None, shipped: Path | None) -> str:
    if script_entry(script) is not None:
        return Path(script).name  # type: ignore[arg-type]
    for name, e in _scripts().items():  # the shipped config itself: its own script
        if shipped is not None and e.get("defaults") == shipped.name:
            return name
    by = knowledge.load("nemo1/scripts.yaml")["by_format"]
    if fmt == "nemo1" and user is not None and not any(p.startswith("model.peft.") for p in user):
        return by["nemo1-no-peft"]
    return by[fmt or "nemo1"]


def lower(yaml_path: Path | None, display: str, hydra: list[tuple[str, Provenance]], diags: Diagnostics, fmt: str | None = None,
          base: Path | None = None, script: str | None = None) -> tuple[Node, str]:
    """The NeMo 2 IR tree a NeMo 1.0 / Aligner job means.  ``yaml_path`` is the user's config (None, or a shipped
    file, when the launcher runs the script's own default config); ``script`` the launched script's path, if known."""
    from .yaml_source import load_yaml_file

    user: dict[str, Leaf] | None = None
    if yaml_path is not None and not _is_shipped(yaml_path):
        data = load_yaml_file(yaml_path, display, diags)
        if diags.has_errors:
            raise MigrateError(diags)
        fmt = fmt or detect(data)
        user = _user_leaves(yaml_path, display, diags)
        if user is None:
            raise MigrateError(diags)
    name = _pick_script(script, fmt, user, yaml_path if yaml_path is not None and user is None else None)
    entry = script_entry(name)
    assert entry is not None  # scripts.yaml's by_format names listed scripts
    if entry["format"] == "unsupported":
        diags.error("NM242", f"{name} ({entry['label']}) cannot be migrated: {entry['reason']}", hint=entry.get("hint"))
        raise MigrateError(diags)
    if fmt is not None and user is not None and fmt != entry["format"]:
        diags.warning("NM244", f"{display} looks like a {'NeMo-Aligner' if fmt == 'aligner' else 'NeMo 1.0'} config, but the launcher runs {name}; "
                      f"it is read as {name} reads it", file=display)
    fmt = entry["format"]
    label = entry["label"]
    dprov = Provenance(kind="nemo-default", detail=f"{label.split(' (')[0]} default ({entry['defaults'].replace('.yaml', '')})")
    leaves = _flatten(knowledge.load(f"nemo1/{entry['defaults']}"), lambda _p: dprov)
    peft_read = name != "megatron_gpt_sft.py"  # megatron_gpt_sft.py never reads model.peft
    if user is not None:
        if not any(p.startswith("model.peft.") for p in user):  # the user's config has no PEFT section: none of the shipped one
            for p in [p for p in leaves if p.startswith("model.peft.")]:
                del leaves[p]
            if peft_read:
                leaves["model.peft.peft_scheme"] = Leaf("none", Provenance(kind="derived", file=display, detail=f"{display} has no model.peft: full fine-tuning"))
                diags.note("NM245", f"{display} has no model.peft section: read as full fine-tuning (peft_scheme none); {name} of "
                              f"{entry['source']['version']} reads cfg.model.peft.peft_scheme and stops without it", file=display,
                              hint="add model.peft.peft_scheme: none (or lora) to the config")
        for p, lf in user.items():
            for q in [q for q in leaves if q.startswith(p + ".")]:
                del leaves[q]  # a user value replaces the whole default subtree under it
            parent = p.rsplit(".", 1)[0] if "." in p else None
            if parent in leaves:
                del leaves[parent]
            leaves[p] = lf
    apply_hydra(leaves, hydra, diags)
    _shell_variables(leaves, diags)
    if diags.has_errors:
        raise MigrateError(diags)
    scheme = leaves.get("model.peft.peft_scheme")
    if not peft_read or str(getattr(scheme, "value", "none")).lower() in ("none", "null", ""):
        # no adapters: the shipped PEFT settings are not part of the job (the user's own are still reported)
        for p in [p for p, lf in leaves.items() if p.startswith("model.peft.") and p != "model.peft.peft_scheme" and lf.prov is dprov]:
            del leaves[p]
    resolve_interpolations(leaves, diags, display)
    for p, lf in leaves.items():
        if lf.value == MANDATORY and p.startswith(("model.data.test_ds", "model.peft.p_tuning")):
            leaves[p] = Leaf(None, lf.prov)  # read with .get(..., None) (no test set), or only by another PEFT scheme
        elif lf.value == MANDATORY:
            diags.error("NM230", f"'{p}' is mandatory ('???' in the {label} config) and has no value", key=p,
                        hint=f"set {p} in the YAML or as {p}=... on the command line", **(lf.prov.where() or {"file": display}))
    if diags.has_errors:
        raise MigrateError(diags)
    tree = _skeleton(fmt, leaves, entry)
    ctx = _Lowering(fmt, leaves, tree, diags, display, base or (yaml_path.parent if yaml_path is not None and user is not None else Path(".")), name)
    rows = knowledge.load("nemo1/lowering.yaml")["rows"]
    for path in list(leaves):
        ctx.apply(_match(rows, path, fmt), path)
    ctx.finish()
    if diags.has_errors:
        raise MigrateError(diags)
    tree.origin = None
    return tree, fmt


def _match(rows: list[dict], path: str, fmt: str) -> dict:
    for r in rows:
        if r.get("only") and r["only"] != fmt:
            continue
        pat = r["from"]
        if pat == path or (pat.endswith(".*") and path.startswith(pat[:-2] + ".")) or (pat == "*"):
            return r
    return {"from": "*", "extra": True}


def _skeleton(fmt: str, leaves: dict[str, Leaf], entry: dict) -> Node:
    p = Provenance(kind="nemo-default", detail="NeMo 1.0 job structure" if fmt == "nemo1" else "NeMo-Aligner job structure")
    build = lambda spec: schema.build(spec, {}, p)  # noqa: E731
    tree = build({
        "_target_": "finetune", "_partial_": True,
        "model": {"_target_": "GPTModel", "config": {"_target_": "ModelConfig"}},
        "trainer": {"_target_": "Trainer", "strategy": {"_target_": "MegatronStrategy"},
                    "plugins": {"_target_": "MegatronMixedPrecision", "precision": "16-mixed"}},
        "data": {"_target_": "SFTFileDataModule", "dataset_kwargs": {"_target_": "dict"}},
        "optim": {"_target_": "MegatronOptimizerModule", "config": {"_target_": "OptimizerConfig"}},
        "resume": {"_target_": "AutoResume", "restore_config": {"_target_": "RestoreConfig", "path": ""}},
        "log": {"_target_": "NeMoLogger", "ckpt": {"_target_": "ModelCheckpoint"}},
        "nemo1": {"_target_": "NeMo1Settings"},
        "tokenizer": "model",
    })
    settings = tree.fields["nemo1"]
    assert isinstance(settings, Node)
    # the defaults' release, for the report (rule N1012) and the knob table (nemo1._target_)
    tree.fields["nemo1"] = settings.model_copy(update={"prov": Provenance(kind="nemo-default", detail=f"{entry['label']}: defaults from {source_text(entry)}")})
    return tree  # type: ignore[return-value]


class _Lowering:
    def __init__(self, fmt: str, leaves: dict[str, Leaf], tree: Node, diags: Diagnostics, display: str, base: Path, script: str):
        self.fmt, self.leaves, self.tree, self.diags, self.display, self.base, self.script = fmt, leaves, tree, diags, display, base, script

    def v(self, path: str, default: Any = None) -> Any:
        lf = self.leaves.get(path)
        return default if lf is None else lf.value

    def set(self, path: str, value: Any, prov: Provenance) -> None:
        if isinstance(value, (Node, Knob)):
            schema.set_path(self.tree, path, value, self.diags, prov.where())
        else:
            schema.set_path(self.tree, path, Knob(value=value, prov=prov), self.diags, prov.where())

    def default(self, path: str) -> None:
        """Set a NeMo 1.0 / Aligner default that no shipped config holds (mappings/nemo1/lowering.yaml `defaults`)."""
        d = knowledge.load("nemo1/lowering.yaml")["defaults"][path]
        self.set(path, d["value"], Provenance(kind="nemo-default", detail=d["why"]))

    def extra(self, path: str, lf: Leaf) -> None:
        node = self.tree.fields["nemo1"]
        assert isinstance(node, Node)
        node.fields[path] = Knob(value=lf.value, prov=lf.prov)

    def apply(self, row: dict, path: str) -> None:
        lf = self.leaves[path]
        if row.get("extra"):
            self.extra(path, lf)
            return
        fn = row.get("fn")
        if fn:
            getattr(self, f"fn_{fn}")(row, path, lf)
            return
        to = row["to"]
        if to.endswith(".*"):
            to = to[:-2] + path[len(row["from"]) - 2:]
        if to.startswith("peft.") and not isinstance(self.tree.get("peft"), Node):
            self.extra(path, lf)  # LoRA settings of a job that trains without LoRA
            return
        value = lf.value
        if "values" in row:
            key = str(value)
            if key not in row["values"]:
                self.diags.error("NM234", f"'{path}'={value!r} is not one of {sorted(row['values'])}", key=path, **lf.prov.where())
                return
            value = row["values"][key]
        self.set(to, value, lf.prov)

    # -- the small functions the table points at -----------------------------------------------------------
    def fn_later(self, row: dict, path: str, lf: Leaf) -> None:
        """Kept as nemo1.<path> and read again in finish(): the value NeMo derives from it depends on other settings."""
        self.extra(path, lf)

    def fn_wandb(self, row: dict, path: str, lf: Leaf) -> None:
        if lf.value:
            node = schema.build({"_target_": "WandbLogger", "project": self.v("exp_manager.wandb_logger_kwargs.project"),
                                 "name": self.v("exp_manager.wandb_logger_kwargs.name")}, {}, lf.prov)
            self.set("log.wandb", node, lf.prov)
        self.extra(path, lf)

    def fn_checkpoint_callback(self, row: dict, path: str, lf: Leaf) -> None:
        if lf.value is False:
            self.set("trainer.enable_checkpointing", False, lf.prov)
        self.extra(path, lf)

    def fn_amp_o2(self, row: dict, path: str, lf: Leaf) -> None:
        self.extra(path, lf)

    def fn_peft_scheme(self, row: dict, path: str, lf: Leaf) -> None:
        if self.script == "megatron_gpt_sft.py":
            if str(lf.value).lower() not in ("none", "null", ""):
                self.diags.warning("NM245", f"megatron_gpt_sft.py does not read model.peft: peft_scheme {lf.value!r} is ignored and the "
                                   "whole model is trained", key=path, hint="launch megatron_gpt_finetuning.py for PEFT", **lf.prov.where())
            self.extra(path, lf)
            return
        scheme = str(lf.value).lower() if lf.value is not None else "none"
        if scheme in ("none", "null", ""):
            self.set("peft", None, lf.prov)
            return
        if scheme != "lora":
            self.diags.error("NM235", f"peft_scheme {lf.value!r} ({self.fmt}) has no Automodel equivalent: Automodel 0.7 trains LoRA "
                             "(and DoRA) adapters only", key=path, hint="switch the job to peft_scheme: lora, or none for full fine-tuning",
                             **lf.prov.where())
            return
        variant = self.v("model.peft.lora_tuning.variant", "nemo")
        cls = "CanonicalLoRA" if variant == "canonical" else "LoRA"
        self.set("peft", Node(cls=cls, prov=lf.prov), lf.prov)
        self.default("peft.dropout_position")
        if self.fmt == "aligner" or "model.peft.lora_tuning.alpha" not in self.leaves:
            dim = self.leaves.get("model.peft.lora_tuning.adapter_dim")
            if dim is not None:
                self.set("peft.alpha", dim.value, dim.prov.model_copy(update={"detail": "alpha defaults to adapter_dim"})
                         if dim.prov.kind != "yaml" else dim.prov)

    def fn_lora_targets(self, row: dict, path: str, lf: Leaf) -> None:
        if not isinstance(self.tree.get("peft"), Node):
            self.extra(path, lf)
            return
        names = lf.value if isinstance(lf.value, list) else [lf.value]
        canonical = isinstance(self.tree.get("peft"), Node) and self.tree.get("peft").cls == "CanonicalLoRA"
        m = {"attention_qkv": ["linear_qkv"], "attention_dense": ["linear_proj"], "mlp_fc1": ["linear_fc1"], "mlp_fc2": ["linear_fc2"],
             "attention": ["linear_qkv", "linear_proj"], "mlp": ["linear_fc1", "linear_fc2"], "all": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]}
        if canonical:
            split = {"linear_qkv": ["linear_q", "linear_k", "linear_v"], "linear_fc1": ["linear_fc1_up", "linear_fc1_gate"]}
        out: list[str] = []
        for n in names:
            if n not in m:
                self.diags.error("NM236", f"LoRA target {n!r} is not a NeMo 1.0 target name", key=path,
                                 hint=did_you_mean(str(n), m) or f"one of {sorted(m)}", **lf.prov.where())
                continue
            for t in m[n]:
                for x in (split.get(t, [t]) if canonical else [t]):
                    if x not in out:
                        out.append(x)
        layers = self.v("model.peft.lora_tuning.layer_selection")
        if layers:
            out = [f"*.layers.{int(i) - 1}.*.{t}" for i in layers for t in out]
        self.set("peft.target_modules", out, lf.prov)

    def fn_chat(self, row: dict, path: str, lf: Leaf) -> None:
        self.set("data.chat", bool(lf.value), lf.prov)

    def fn_file_list(self, row: dict, path: str, lf: Leaf) -> None:
        v = lf.value
        files = [v] if isinstance(v, str) else list(v or [])
        self.set(row["to"], files, lf.prov)

    def fn_optimizer(self, row: dict, path: str, lf: Leaf) -> None:
        name = str(lf.value)
        known = {"fused_adam": ("adam", False), "distributed_fused_adam": ("adam", True), "adam": ("adam", False), "adamw": ("adam", False),
                 "sgd": ("sgd", False)}
        if name not in known:
            self.diags.error("NM237", f"optimizer {name!r} has no mapping", key=path, hint=f"one of {sorted(known)}", **lf.prov.where())
            return
        opt, dist = known[name]
        self.set("optim.config.optimizer", opt, lf.prov)
        self.set("optim.config.use_distributed_optimizer", dist, lf.prov)
        self.default("optim.config.adam_eps")
        prec = self.v("trainer.precision")
        bf16 = str(prec) in ("bf16", "bf16-mixed")
        self.set("optim.config.bf16", bf16, lf.prov)
        self.set("optim.config.fp16", str(prec) in ("16", "16-mixed", "fp16"), lf.prov)

    def fn_betas(self, row: dict, path: str, lf: Leaf) -> None:
        b = lf.value
        if not (isinstance(b, list) and len(b) == 2):
            self.diags.error("NM238", f"optim.betas must be two numbers, found {b!r}", key=path, **lf.prov.where())
            return
        self.set("optim.config.adam_beta1", float(b[0]), lf.prov)
        self.set("optim.config.adam_beta2", float(b[1]), lf.prov)

    def fn_scheduler(self, row: dict, path: str, lf: Leaf) -> None:
        if lf.value in (None, "None"):
            self.set("optim.lr_scheduler", None, lf.prov)
            return
        if lf.value != "CosineAnnealing":
            self.diags.error("NM239", f"scheduler {lf.value!r}: only CosineAnnealing (NeMo's warmup + cosine, with an optional hold at "
                             "min_lr) has an Automodel equivalent", key=path, hint="set model.optim.sched.name=CosineAnnealing, "
                             "or ~model.optim.sched for a constant learning rate", **lf.prov.where())
            return
        node = schema.build({"_target_": "CosineAnnealingScheduler"}, {}, lf.prov)
        self.set("optim.lr_scheduler", node, lf.prov)

    # -- values NeMo derives from several settings ------------------------------------------------------------
    def finish(self) -> None:
        vci = self.leaves.get("trainer.sft.val_check_interval" if self.fmt == "aligner" else "trainer.val_check_interval")
        if self.fmt == "nemo1" and vci is not None and isinstance(vci.value, int):
            # exp_manager's checkpoint callback saves when validation runs
            self.set("log.ckpt.every_n_train_steps", vci.value, vci.prov.model_copy(update={"detail": "checkpoints are saved at each validation"})
                     if vci.prov.kind != "yaml" else vci.prov)
        self.default("log.ckpt.save_last")
        pp = self.leaves.get("model.pipeline_model_parallel_size")
        if pp is not None and isinstance(pp.value, int) and pp.value > 1:  # NeMo 2 asks for it explicitly; NeMo 1.0 derives it
            prec = str(self.v("trainer.precision"))
            dtype = "torch.bfloat16" if "bf16" in prec else "torch.half" if prec in ("16", "16-mixed", "fp16") else "torch.float32"
            self.set("trainer.strategy.pipeline_dtype", dtype, Provenance(kind="nemo-default", detail=f"NeMo 1.0 pipelines in the dtype of trainer.precision "
                     f"{prec} (MegatronBaseModel.torch_dtype)"))
        if self.fmt == "aligner":
            self.default("data.dataset_kwargs.answer_only_loss")
            self._aligner_steps()
        else:
            ms = self.leaves.get("trainer.max_steps")
            if ms is None or not isinstance(ms.value, int) or isinstance(ms.value, bool) or ms.value <= 0:
                self.diags.error("NM246", f"trainer.max_steps={getattr(ms, 'value', None)!r}: {self.script} stops with \"Trainer max_steps must be "
                                 "set to a positive integer\" (MegatronGPTSFTModel sizes the training set as max_steps x global batch; it has "
                                 "no epoch-based mode)", key="trainer.max_steps", hint="set trainer.max_steps=N (N = epochs x samples / global batch)",
                                 **((ms.prov.where() if ms is not None else {}) or {"file": self.display}))

    def _aligner_steps(self) -> None:
        """NeMo-Aligner's SupervisedTrainer: max_steps = max_epochs x (samples // GBS), capped by trainer.sft.max_steps when >= 0."""
        ms = self.leaves.get("trainer.sft.max_steps")
        n = ms.value if ms is not None else -1
        where = (ms.prov.where() if ms is not None else {}) or {"file": self.display}
        if not isinstance(n, int) or isinstance(n, bool):
            self.diags.error("NM234", f"trainer.sft.max_steps={n!r} is not an integer", key="trainer.sft.max_steps", **where)
            return
        if self.v("model.data.train_ds.drop_last") is False:
            lf = self.leaves["model.data.train_ds.drop_last"]
            self.diags.error("NM249", "model.data.train_ds.drop_last=False: NeMo-Aligner's SupervisedTrainer raises NotImplementedError "
                             "(compute_num_steps_per_epoch)", key="model.data.train_ds.drop_last", hint="remove the override (True)", **lf.prov.where())
            return
        if n == 0:
            self.diags.error("NM249", "trainer.sft.max_steps=0: NeMo-Aligner trains min(max_epochs x steps per epoch, 0) = 0 steps",
                             key="trainer.sft.max_steps", hint="set a positive max_steps, or -1 to train max_epochs epochs", **where)
            return
        if n > 0:
            self.set("trainer.max_steps", n, ms.prov)  # type: ignore[union-attr]
            return
        steps = self._epochs_to_steps()
        prov = (ms.prov if ms is not None else Provenance(kind="nemo-default")).model_copy(update={"kind": "derived", "file": None, "line": None, "col": None})
        if steps is not None:
            self.set("trainer.max_steps", steps[0], prov.model_copy(update={"detail": steps[1]}))
        else:
            # the data is not readable here: Automodel runs num_epochs epochs with max_steps unset (rule N1013, which also
            # says what of the LR schedule cannot be known).  None, not Lightning's -1: rule SCH001 and validate() read
            # trainer.max_steps as NeMo 2's step count (and set_path refuses None for an int field)
            trainer = self.tree.fields["trainer"]
            assert isinstance(trainer, Node)
            files = ", ".join(self._train_files()) or "unset"
            trainer.fields["max_steps"] = Knob(value=None, prov=prov.model_copy(update={
                "detail": f"trainer.sft.max_steps=-1: max_epochs epochs of {files} (not readable here)"}))

    def _train_files(self) -> list[str]:
        files = self.v("model.data.train_ds.file_path") or self.v("model.data.train_ds.file_names")
        return [files] if isinstance(files, str) else [str(f) for f in (files or [])]

    def _epochs_to_steps(self) -> tuple[int, str] | None:
        n = count_samples(self._train_files(), self.base)
        gbs = self.v("model.data.train_ds.global_batch_size")
        epochs = self.v("trainer.sft.max_epochs", 1)
        if not n or not isinstance(gbs, int) or gbs <= 0 or not isinstance(epochs, int) or epochs <= 0:
            return None
        per_epoch = aligner_steps_per_epoch(n, gbs, self.v("trainer.sft.limit_train_batches", 1.0))
        return per_epoch * epochs, f"max_epochs {epochs} x ({n} samples // global batch {gbs}{_limit_text(self.v('trainer.sft.limit_train_batches', 1.0))}) = {per_epoch * epochs} steps"


def _limit_text(limit: Any) -> str:
    return "" if limit in (None, 1.0, 1) or (isinstance(limit, float) and limit > 1.0) else f", limit_train_batches {limit}"


def count_samples(files: list[str], base: Path | None) -> int | None:
    """Non-empty lines of the training JSONL file(s) (relative paths from the job directory), or None if one is not a
    readable regular file."""
    n = 0
    for f in files:
        p = Path(f) if Path(f).is_absolute() or base is None else base / f
        try:
            st = p.stat()
        except (OSError, ValueError):
            return None
        if not p.is_file():
            return None
        got = _count_lines(str(p), st.st_size, st.st_mtime_ns)
        if got is None:
            return None
        n += got
    return n if files else None


@lru_cache(maxsize=32)
def _count_lines(path: str, size: int, mtime: int, cap: int = 50_000_000) -> int | None:
    n, content = 0, False
    try:
        with open(path, "rb") as fh:
            for piece in iter(lambda: fh.readline(1 << 20), b""):  # bounded reads: a file without newlines is not held at once
                content = content or bool(piece.strip())
                if piece.endswith(b"\n"):
                    n, content = n + content, False
                    if n >= cap:
                        break
    except OSError:
        return None
    return n + content


def aligner_steps_per_epoch(samples: int, gbs: int, limit: Any = 1.0) -> int:
    """nemo_aligner/utils/trainer_utils.py::compute_num_steps_per_epoch (drop_last): samples // GBS, then limit_train_batches."""
    steps = samples // gbs
    if limit is None or (isinstance(limit, float) and limit > 1.0):
        limit = 1.0
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
        return steps
    return int(steps * limit) if isinstance(limit, float) else min(steps, limit)

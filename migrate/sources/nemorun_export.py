"""Front end for NeMo-Run's own export of a built job (``--to-yaml`` / ``--to-json`` / ``--to-toml``).

``python recipe.py --factory X --yaml cfg.yaml k=v --to-yaml job.yaml`` and ``nemo llm finetune --factory X ...
--to-yaml job.yaml`` write the fully built ``run.Partial(llm.finetune, ...)`` instead of launching it, so whatever
Python the recipe ran is already applied.  The format (nemo_run 0.11.1, ``nemo_run/core/serialization/yaml.py``):
``yaml.safe_dump`` (keys sorted, shared objects as anchors/aliases) of nested mappings in which each
``run.Config``/``run.Partial`` is a mapping with ``_target_`` (``module.qualname`` of the class or function) and
``_partial_: true`` for a Partial; a function, a class or a ``torch.dtype`` is ``{_target_: torch.bfloat16,
_call_: false}``; tuples are written as lists, a plain dict as a mapping without ``_target_``.  JSON
(``json.dumps(yaml.safe_load(...), indent=2)``: aliases expanded) is read by the same YAML loader; TOML
(``toml.dumps`` of the same dict) drops every None.

Values are typed by the field's declared type (mappings/nemo2/classes.yaml) like YAML values are, except that an
untyped (Any) value is kept as written: an export writes real values, not CLI text, so ``'None'`` stays a string.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .. import knowledge, schema
from ..diagnostics import Diagnostics, did_you_mean
from ..ir import Knob, Node, Provenance
from .yaml_source import MAX_DEPTH, YamlError, _Builder, _mark, compose_file, load_yaml_outline

FINETUNE = ("nemo.collections.llm.api.finetune", "nemo.collections.llm.finetune", "llm.finetune")
PRETRAIN = ("nemo.collections.llm.api.pretrain", "nemo.collections.llm.pretrain", "llm.pretrain")
# sections whose class decides what trains: an unknown class there is an error, elsewhere a warning
_DECISIVE = ("model", "model.config", "data", "peft", "optim", "optim.config", "optim.lr_scheduler", "trainer",
             "trainer.strategy", "trainer.plugins")
_SECTIONS = ("model", "data", "trainer", "log", "resume", "optim", "peft", "tokenizer")
_MAX_TOML_BYTES = 4_000_000
_HINT = "export the whole job: the same command with --to-yaml job.yaml (no :section, no --lazy)"


class _Loc:
    """A value of the export with its position: ``value`` is a dict of _Loc, a list of _Loc or a scalar."""

    __slots__ = ("value", "line", "col")

    def __init__(self, value: Any, line: int | None, col: int | None):
        self.value, self.line, self.col = value, line, col


def _is_toml(path: Path) -> bool:
    return path.suffix.lower() == ".toml"


def is_export(path: Path) -> bool:
    """Cheap detection: a top-level mapping whose ``_target_`` is a string (a NeMo-Run export of a job or of a
    section; a --yaml file handed to a factory never has one).  Never raises."""
    try:
        if _is_toml(path):
            top = _toml_dict(path.read_bytes()[:_MAX_TOML_BYTES + 1])
        else:
            top = load_yaml_outline(path, path.name, Diagnostics(), depth=1)
    except Exception:  # noqa: BLE001 - detection only: whatever fails here is reported by the real reader
        top = None
    if isinstance(top, dict):
        return isinstance(top.get("_target_"), str)
    # not readable: still an export when a top-level `_target_` key opens a line (the reader then locates the problem)
    try:
        with path.open("rb") as fh:
            head = fh.read(8192).decode("utf-8", "replace")
    except OSError:
        return False
    return _TOP_TARGET.search(head) is not None


_TOP_TARGET = re.compile(r"""(?m)^(?:_target_\s*:|_target_\s*=|\s{0,2}"_target_"\s*:)""")


def _toml_dict(data: bytes) -> Any:
    import tomllib  # Python >= 3.11

    return tomllib.loads(data.decode("utf-8"))


# ---------------------------------------------------------------------------------------------- loading


def _load_yaml(path: Path, display: str, diags: Diagnostics) -> _Loc | None:
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    root = compose_file(path, display, diags, code="NM190")
    if root is None:
        if not diags.has_errors:
            diags.error("NM190", "the file is empty", file=display, hint=_HINT)
        return None
    b = _Builder()

    def conv(n: Any, depth: int) -> _Loc:
        line, col = _mark(n)
        if depth > MAX_DEPTH:
            raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", line, col)
        if isinstance(n, MappingNode):
            b._check_tag(n, "map")
            out = {}
            for k, kn, vn in b.pairs3(n):
                item = conv(vn, depth + 1)
                item.line, item.col = _mark(kn)  # a value's position is its key's (a run.Config's: its _target_'s)
                out[k] = item
            return _Loc(out, line, col)
        if isinstance(n, SequenceNode):
            b._check_tag(n, "seq")
            b._tick(n)
            return _Loc([conv(x, depth + 1) for x in n.value], line, col)
        return _Loc(b.scalar(n), line, col)

    try:
        return conv(root, 0)
    except YamlError as e:
        diags.error("NM190", str(e), file=display, line=e.line, col=e.col)
    except RecursionError:
        diags.error("NM190", "nesting is too deep", file=display)
    return None


_TOML_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_TOML_KEY = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*=")


def _load_toml(path: Path, display: str, diags: Diagnostics) -> _Loc | None:
    try:
        data = path.read_bytes()
    except OSError as e:
        diags.error("NM100", f"cannot read file: {e.strerror or e}", file=display)
        return None
    if len(data) > _MAX_TOML_BYTES:
        diags.error("NM190", f"larger than {_MAX_TOML_BYTES} bytes; an exported job is a few kilobytes", file=display)
        return None
    try:
        top = _toml_dict(data)
    except ImportError:
        diags.error("NM190", "reading a TOML export needs Python >= 3.11 (tomllib)", file=display, hint=_HINT)
        return None
    except UnicodeDecodeError as e:
        diags.error("NM190", f"not UTF-8 text: {e.reason} at byte {e.start}", file=display)
        return None
    except ValueError as e:  # tomllib.TOMLDecodeError: "... (at line N, column M)"
        m = re.search(r"at line (\d+), column (\d+)", str(e))
        diags.error("NM190", f"TOML syntax error: {e}", file=display,
                    **({"line": int(m.group(1)), "col": int(m.group(2))} if m else {}))
        return None
    except RecursionError:
        diags.error("NM190", "nesting is too deep", file=display)
        return None
    # positions: `[a.b]` / `[[a.b]]` headers and `key =` lines (tomllib keeps none)
    lines: dict[str, int] = {}
    table = ""
    for i, text in enumerate(data.decode("utf-8").splitlines(), 1):
        h = _TOML_HEADER.match(text)
        if h and not _TOML_KEY.match(text):
            table = ".".join(p.strip().strip("\"'") for p in h.group(1).split("."))
            lines.setdefault(table, i)
            continue
        k = _TOML_KEY.match(text)
        if k:
            lines.setdefault(f"{table}.{k.group(1).strip(chr(34) + chr(39))}".lstrip("."), i)
    count = [0]

    def conv(v: Any, path: str, depth: int) -> _Loc:
        count[0] += 1
        line = lines.get(path) or lines.get(path.split("[", 1)[0])
        if depth > MAX_DEPTH or count[0] > 200_000:
            raise YamlError("nesting too deep or too many values", line, None)
        if isinstance(v, dict):
            return _Loc({k: conv(x, f"{path}.{k}".lstrip("."), depth + 1) for k, x in v.items()}, line or 1, None)
        if isinstance(v, list):
            return _Loc([conv(x, path, depth + 1) for x in v], line, None)
        if not isinstance(v, (str, int, float, bool)):  # dates and times: not a NeMo value
            raise YamlError(f"'{path}': a TOML {type(v).__name__} is not a NeMo-Run value", line, None)
        return _Loc(v, line, None)

    try:
        out = conv(top, "", 0)
    except YamlError as e:
        diags.error("NM190", str(e), file=display, line=e.line)
        return None
    diags.warning("NM192", "a TOML export cannot hold None: NeMo-Run's toml.dumps drops every key whose value is None, so such a "
                  "key reads here as its class default", file=display, line=1,
                  hint="where a None matters, export the job with --to-yaml job.yaml instead (YAML and JSON keep it)")
    return out


# ---------------------------------------------------------------------------------------------- building


def read_export(path: Path, display: str, diags: Diagnostics) -> Node | None:
    """The job of a NeMo-Run export as the IR tree (a ``finetune`` Partial); None after an error in ``diags``."""
    loc = _load_toml(path, display, diags) if _is_toml(path) else _load_yaml(path, display, diags)
    if loc is None:
        return None
    before = sum(d.severity == "error" for d in diags.items)
    tree = _Reader(display, diags).job(loc)
    return tree if sum(d.severity == "error" for d in diags.items) == before else None


class _Reader:
    def __init__(self, display: str, diags: Diagnostics):
        self.display = display
        self.diags = diags

    def prov(self, loc: _Loc, detail: str | None = None) -> Provenance:
        return Provenance(kind="yaml", file=self.display, line=loc.line, col=loc.col, detail=detail)

    def err(self, code: str, msg: str, loc: _Loc, key: str | None = None, hint: str | None = None) -> None:
        self.diags.error(code, msg, key=key, hint=hint, **self.prov(loc).where())

    def job(self, loc: _Loc) -> Node | None:
        top = loc.value
        if not isinstance(top, dict) or not isinstance(getattr(top.get("_target_"), "value", None), str):
            self.err("NM191", "not a NeMo-Run export: the top level needs `_target_: nemo.collections.llm.api.finetune`",
                     loc, hint=_HINT)
            return None
        tloc = top["_target_"]
        target = tloc.value.strip()
        if "_factory_" in top or " " in target:
            self.err("NM194", f"a lazy export (`--lazy`): NeMo-Run wrote the command ({target!r}), not the built job",
                     tloc, key="_target_", hint=_HINT)
            return None
        if target in PRETRAIN:
            self.err("NM193", f"`{target}` is continued pre-training; nemo-migrate migrates fine-tuning jobs "
                     "(llm.finetune) to Automodel's fine-tune recipe", tloc, key="_target_",
                     hint="export the fine-tuning job (nemo llm finetune ... --to-yaml job.yaml)")
            return None
        if target not in FINETUNE:
            key = _class_key(target)
            section = next((s for s in _SECTIONS if key and key in _SECTION_CLASSES.get(s, ())), None)
            self.err("NM194", f"`_target_: {target}` is not a whole job"
                     + (f": this looks like an export of one section (`--to-yaml FILE:{section}`)" if section else
                        " (a whole-job export starts with `_target_: nemo.collections.llm.api.finetune`)"),
                     tloc, key="_target_", hint=_HINT)
            return None
        partial = top.get("_partial_")
        if partial is None or partial.value is not True:
            self.err("NM191", "an export of llm.finetune is a run.Partial (`_partial_: true`); this file has none",
                     tloc, key="_partial_", hint=_HINT)
            return None
        return self.node(loc, "", "finetune")

    def node(self, loc: _Loc, path: str, key: str | None = None) -> Node | None:
        m: dict[str, _Loc] = loc.value
        tloc = m["_target_"]
        target = tloc.value
        if not isinstance(target, str) or not target.strip():
            self.err("NM195", f"'{path or '<top>'}._target_' must be a dotted name, found {target!r}", tloc, key=f"{path}._target_".lstrip("."))
            return None
        key = key or _class_key(target)
        leaf = target.rsplit(".", 1)[-1]
        pl = m.get("_partial_")
        if pl is not None and not isinstance(pl.value, bool):
            self.err("NM195", f"'{path}._partial_' must be true or false, found {pl.value!r}", pl, key=f"{path}._partial_")
        node = Node(cls=key or target, known=key is not None, partial=bool(pl is not None and pl.value is True),
                    prov=self.prov(tloc, f"run.Config({leaf})"))
        if key is None:
            if path in _DECISIVE:
                self.err("NM196", f"'{path}' is a `{target}`, a class this compiler does not know; what it trains cannot be "
                         "migrated", tloc, key=path,
                         hint="use a NeMo class nemo-migrate knows there (`nemo-migrate rules` lists them), or write the "
                              "Automodel section by hand")
            else:
                self.diags.warning("NM197", f"class '{target}' is not known to this compiler; its settings are carried but not "
                                   "checked", key=path, **self.prov(tloc).where())
        for name, item in m.items():
            if name in ("_target_", "_partial_"):
                continue
            sub = f"{path}.{name}" if path else name
            if name.startswith("_") and name.endswith("_"):
                self.err("NM195", f"'{sub}': NeMo-Run does not write `{name}` in a run.Config", item, key=sub, hint=_HINT)
                continue
            if node.known and not schema.accepts(node, name):
                s = schema.spec(node.cls)
                self.err("NM198", f"'{sub}': {leaf} has a parameter '{name}' this compiler does not know (NeMo 2 signatures in "
                         "mappings/nemo2/classes.yaml); its effect on training cannot be judged", item, key=sub,
                         hint=did_you_mean(name, list(s.fields) if s else []) or
                         "if it does not change what is trained, delete the key from the export; otherwise migrate by hand")
                continue
            child = self.value(item, sub, node, name)
            if child is not None:
                node.fields[name] = child
        return node

    def value(self, item: _Loc, path: str, parent: Node, name: str) -> Node | Knob | None:
        v = item.value
        if isinstance(v, dict) and "_target_" in v and "_call_" not in v:
            return self.node(item, path)
        if isinstance(v, (dict, list)):
            plain = self.plain(item, path)
            return None if plain is _BAD else Knob(value=plain, prov=self.prov(item))
        fs = schema.field_spec(parent, name) if parent.known and parent.cls != "dict" else None
        if fs is not None and fs.type != "any":
            try:
                v = schema.coerce(v, fs)
            except schema.CoerceError as e:
                self.err("NM199", f"'{path}' expects {e.expected}, found {e.found!r}", item, key=path,
                         hint=f"{parent.cls}.{name} is declared as {fs.describe()}; fix the value in the export")
                return None
        return Knob(value=v, prov=self.prov(item))

    def plain(self, item: _Loc, path: str) -> Any:
        """A list or plain-dict value; run.Configs inside become Nodes, callables and dtypes their dotted name."""
        v = item.value
        if isinstance(v, list):
            out = [self.plain(x, f"{path}[{i}]") for i, x in enumerate(v)]
            return _BAD if any(x is _BAD for x in out) else out
        if isinstance(v, dict):
            if "_call_" in v:
                call, target = v["_call_"].value, getattr(v.get("_target_"), "value", None)
                if call is not False or not isinstance(target, str) or set(v) != {"_call_", "_target_"}:
                    self.err("NM195", f"'{path}': a reference to a function, class or dtype is `{{_target_: name, _call_: false}}`",
                             item, key=path, hint=_HINT)
                    return _BAD
                return target
            if "_target_" in v:
                n = self.node(item, path)
                return _BAD if n is None else n
            out = {k: self.plain(x, f"{path}.{k}") for k, x in v.items()}
            return _BAD if any(x is _BAD for x in out.values()) else out
        return v


def _class_key(target: str) -> str | None:
    """The IR's class name for a ``_target_`` as NeMo-Run writes it (``module.qualname``)."""
    if target == "builtins.dict":  # run.Config(dict)
        return "dict"
    cls, known = schema.node_class(target)
    return cls if known else None


_BAD = object()
# the classes a `FILE:section` export of each finetune argument starts with
_SECTION_CLASSES = {
    "model": tuple(sorted({"GPTModel"} | {a.rsplit(".", 1)[-1] for a in (knowledge.classes()["GPTModel"].get("aliases") or [])})), "data": tuple(sorted(k for k, c in knowledge.classes().items() if (c.get("data") or {}).get("kind"))),
    "trainer": ("Trainer",), "log": ("NeMoLogger",), "resume": ("AutoResume",), "optim": ("MegatronOptimizerModule",),
    "peft": ("LoRA", "DoRA", "CanonicalLoRA"),
}


def guess_recipe(tree: Node) -> str | None:
    """The NeMo recipe the exported job most likely came from: the one whose HF id is the restore path
    (``nemo://<hf_id>``), else the one whose model config class it uses."""
    path = schema.value(tree, "resume.restore_config.path")
    cfg = tree.get("model.config")
    cls = cfg.prov.detail[len("run.Config("):-1] if isinstance(cfg, Node) and (cfg.prov.detail or "").startswith("run.Config(") else None
    recipes = knowledge.recipes()
    if isinstance(path, str) and "://" in path:
        hf = path.split("://", 1)[1].strip("/")
        hits = sorted(n for n, r in recipes.items() if r.get("hf_id") == hf and r.get("supported", True) is not False)
        best = [n for n in hits if cls and recipes[n].get("config_class") == cls] or hits
        if best:
            return best[0]
    if cls:
        hits = sorted(n for n, r in recipes.items() if r.get("config_class") == cls)
        if hits:
            return hits[0]
    return None

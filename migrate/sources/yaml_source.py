"""Front end for the YAML files handed to a NeMo-Run entry point with ``--yaml``.

NeMo-Run loads the file, flattens it to dotted ``key=value`` overrides and applies them after the factory
(reference/nemo2-semantics.md §7.2-§7.3).  This reader does the same flattening from ruamel.yaml's node graph
(its C parser when ruamel.yaml.clib is installed), so that every override keeps its file, line and column; only
plain data is accepted (no tags), duplicate keys are errors and alias expansion is bounded.  A mapping holding ``_target_`` replaces that node with a fresh
``run.Config`` before its sibling keys apply; ``_factory_`` replaces it with a factory's result; a top-level
``run: {factory: ...}`` selects the factory (and beats ``--factory``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..diagnostics import Diagnostics
from ..ir import Provenance

MAX_NODES = 200_000
MAX_DEPTH = 64


@dataclass
class NodeSpec:
    """``_target_: pkg.Class`` (``partial`` for ``_partial_: true``) or ``_factory_: name``."""

    target: str | None = None
    factory: str | None = None
    partial: bool = False


@dataclass
class Override:
    path: str
    op: str
    value: Any  # a plain Python value (typed later by the parameter's annotation) or a NodeSpec
    prov: Provenance
    raw: str | None = None  # the text as written (CLI), for messages


@dataclass
class YamlOverrides:
    file: str
    overrides: list[Override]
    factory: Override | None = None  # run.factory


_STD = "tag:yaml.org,2002:"


class YamlError(Exception):
    def __init__(self, message: str, line: int | None = None, col: int | None = None):
        self.line, self.col = line, col
        super().__init__(message)


def _construct(kind: str, text: str) -> Any:
    """A resolved plain scalar (YAML 1.2 core schema, as ruamel.yaml resolves it) -> its Python value."""
    if kind == "null":
        return None
    if kind == "bool":
        return text.lower() in ("true", "yes", "on")
    if kind == "int":
        t = text.replace("_", "")
        if len(t) > MAX_INT_TEXT:  # before converting: int() of a long string is slow and capped at 4,300 digits
            raise ValueError(f"an integer of {len(t):,} characters is far beyond any training setting")
        v = _int(t)
        if v.bit_length() > MAX_INT_BITS:
            raise ValueError(f"{v.bit_length():,} bits is beyond any training setting (a float holds at most about 1.8e308, "
                             "and converting it fails)")
        return v
    if kind == "float":
        t = text.replace("_", "").lower()
        if t in (".inf", "+.inf"):
            return float("inf")
        if t == "-.inf":
            return float("-inf")
        if t == ".nan":
            return float("nan")
        if ":" in t:  # YAML 1.1 sexagesimal
            v = 0.0
            for part in t.lstrip("+-").split(":"):
                v = v * 60 + float(part)
            return -v if t.startswith("-") else v
        return float(t)
    return text


MAX_INT_TEXT = 1_100  # characters of an int literal (1,024 binary digits and a prefix)
MAX_INT_BITS = 1_024  # a larger int cannot even be converted to a float


def _int(t: str) -> int:
    """A YAML 1.1 int literal (underscores removed): decimal, 0x/0o/0b, 0-prefixed octal, sexagesimal."""
    sign = -1 if t.startswith("-") else 1
    body = t.lstrip("+-")
    if body[:2].lower() in ("0x", "0o", "0b"):
        return sign * int(body, 0)
    if ":" in body:  # YAML 1.1 sexagesimal
        v = 0
        for part in body.split(":"):
            v = v * 60 + int(part)
        return sign * v
    if len(body) > 1 and body.startswith("0"):  # YAML 1.1 octal
        return sign * int(body, 8)
    return sign * int(body)


def _mark(node: Any) -> tuple[int | None, int | None]:
    m = getattr(node, "start_mark", None)
    return (m.line + 1, m.column + 1) if m is not None else (None, None)


class _Builder:
    """YAML node graph (from the composer, with marks) -> plain Python values; refuses tags and huge alias graphs."""

    def __init__(self, limit: int = MAX_NODES):
        self.count = 0
        self.limit = limit

    def scalar(self, node: Any) -> Any:
        self._tick(node)
        tag = node.tag or ""
        if tag.startswith(_STD) and tag[len(_STD):] in ("str", "int", "float", "bool", "null", "timestamp"):
            try:
                return _construct(tag[len(_STD):], str(node.value))
            except ValueError as e:
                line, col = _mark(node)
                text = str(node.value)
                shown = repr(text) if len(text) <= 60 else repr(text[:40] + "...")
                raise YamlError(f"cannot read {shown} as {tag[len(_STD):]}" + (f": {e}" if "training setting" in str(e) else ""), line, col) from None
        if tag in ("!", ""):
            return str(node.value)
        line, col = _mark(node)
        raise YamlError(f"YAML tag {tag!r} is not allowed (values must be plain data)", line, col)

    def _tick(self, node: Any) -> None:
        self.count += 1
        if self.count > self.limit:
            line, col = _mark(node)
            raise YamlError(f"more than {self.limit} YAML nodes (aliases expanded); refusing to continue", line, col)

    def value(self, node: Any, depth: int = 0) -> Any:
        from ruamel.yaml.nodes import MappingNode, SequenceNode

        if depth > MAX_DEPTH:
            line, col = _mark(node)
            raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", line, col)
        if isinstance(node, MappingNode):
            self._check_tag(node, "map")
            out: dict[str, Any] = {}
            for k, v in self.pairs(node):
                out[k] = self.value(v, depth + 1)
            return out
        if isinstance(node, SequenceNode):
            self._check_tag(node, "seq")
            self._tick(node)
            return [self.value(x, depth + 1) for x in node.value]
        return self.scalar(node)

    def _check_tag(self, node: Any, kind: str) -> None:
        if node.tag not in (_STD + kind, None, "!"):
            line, col = _mark(node)
            raise YamlError(f"YAML tag {node.tag!r} is not allowed (values must be plain data)", line, col)

    def pairs(self, node: Any) -> list[tuple[str, Any]]:
        """Key/value node pairs of a mapping; merge keys (<<) are expanded, duplicate keys are errors."""
        return [(k, v) for k, _, v in self.pairs3(node)]

    def pairs3(self, node: Any) -> list[tuple[str, Any, Any]]:
        """(key, key node, value node) of a mapping; merge keys (<<) are expanded, duplicate keys are errors."""
        out: list[tuple[str, Any, Any]] = []
        seen: dict[str, int | None] = {}
        for knode, vnode in node.value:
            self._tick(knode)
            if knode.tag == _STD + "merge":
                merged = vnode.value if isinstance(vnode.value, list) and vnode.value and not isinstance(vnode.value[0], tuple) else [vnode]
                for m in merged:
                    for k, kn, v in self.pairs3(m):
                        if k not in seen:
                            seen[k] = None
                            out.append((k, kn, v))
                continue
            key = self.scalar(knode) if not hasattr(knode.value, "__iter__") or isinstance(knode.value, str) else None
            if not isinstance(key, str):
                line, col = _mark(knode)
                raise YamlError(f"keys must be strings, found {key!r}", line, col)
            if key in seen and seen[key] is not None:
                line, col = _mark(knode)
                raise YamlError(f"found duplicate key {key!r} (first at line {seen[key]}); NeMo-Run would keep the last one silently", line, col)
            seen[key] = _mark(knode)[0]
            out.append((key, knode, vnode))
        return out


_RESOLVER: Any = None


def _resolver_class() -> Any:
    """ruamel's YAML 1.1 resolver with its per-scalar overhead removed (version lookup, list rebuilding): same tags."""
    global _RESOLVER
    if _RESOLVER is not None:
        return _RESOLVER
    from ruamel.yaml.nodes import ScalarNode, SequenceNode
    from ruamel.yaml.resolver import VersionedResolver
    from ruamel.yaml.tag import Tag

    class Resolver11(VersionedResolver):
        _by_first: dict | None = None
        _any: tuple = ()

        @property
        def processing_version(self) -> Any:
            return (1, 1)

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is ScalarNode:
                if not implicit[0]:
                    return self.DEFAULT_SCALAR_TAG
                table = self._by_first
                if table is None:
                    vr = self.versioned_resolver
                    self._any = tuple(vr.get(None, ()))
                    table = self._by_first = {k: tuple(v) + self._any for k, v in vr.items() if k is not None}
                for suffix, regexp in table.get(value[0] if value else "", self._any):
                    if regexp.match(value):
                        return Tag(suffix=suffix)
                return self.DEFAULT_SCALAR_TAG
            return self.DEFAULT_SEQUENCE_TAG if kind is SequenceNode else self.DEFAULT_MAPPING_TAG

    _RESOLVER = Resolver11
    return _RESOLVER


_COMPOSED: dict[tuple, Any] = {}
_BUILT: dict[int, tuple[Any, Any]] = {}  # id(composed node) -> (node, plain value); callers must not modify the value


def compose_file(path: Path, display: str, diags: Diagnostics, code: str = "NM101") -> Any:
    """Parse YAML into its node graph (line/column marks kept); problems become diagnostics. None on failure.

    The graph of a file is kept for the process (keyed by path, size and mtime): a job's YAML is read by detection,
    the front end and diff, and is never modified."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _COMPOSED:
        return _COMPOSED[key]
    d = Diagnostics()
    node = _compose(path, display, d, code)
    diags.extend(d.items)
    if key is not None and not d.items:
        if len(_COMPOSED) > 64:
            _COMPOSED.clear()
        _COMPOSED[key] = node
    return node


def _compose(path: Path, display: str, diags: Diagnostics, code: str) -> Any:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        diags.error(code, f"not UTF-8 text: {e.reason} at byte {e.start}", file=display)
        return None
    except OSError as e:
        diags.error("NM100", f"cannot read file: {e.strerror or e}", file=display)
        return None
    try:
        y = YAML(typ="safe", pure=False)
    except Exception:  # noqa: BLE001 - no C extension: the pure-Python parser gives the same nodes
        y = YAML(typ="safe", pure=True)
    y.Resolver = _resolver_class()
    y.version = (1, 1)  # PyYAML / OmegaConf resolve plain scalars with YAML 1.1 rules (yes/no/on/off are booleans)
    try:
        if len(text) > 2 * MAX_NODES or _maybe_deep(text):
            # could hold more values than any config has, or nest deeper than the composer's C recursion survives (a
            # segmentation fault): count values and depth on the event stream (iterative) before building nodes
            from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent

            n = depth = 0
            for ev in y.parse(text):
                if isinstance(ev, CollectionEndEvent):
                    depth -= 1
                elif isinstance(ev, (ScalarEvent, CollectionStartEvent, AliasEvent)):
                    n += 1
                    depth += isinstance(ev, CollectionStartEvent)
                    if n > MAX_NODES or depth > MAX_DEPTH:
                        m = ev.start_mark
                        diags.error(code, f"more than {MAX_NODES} YAML values; refusing to continue (a NeMo config has a few hundred)"
                                    if n > MAX_NODES else f"nesting deeper than {MAX_DEPTH} levels",
                                    file=display, line=m.line + 1 if m else None, col=m.column + 1 if m else None)
                        return None
        return y.compose(text) if text.strip() else None
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        where = {"file": display}
        if mark is not None:
            where.update(line=mark.line + 1, col=mark.column + 1)
        diags.error(code, f"YAML syntax error: {msg}", **where)
    except (YAMLError, ValueError) as e:
        diags.error(code, f"YAML error: {e}", file=display)
    except RecursionError:
        diags.error(code, "YAML nesting is too deep", file=display)
    return None


_DEEP_INDENT = re.compile(r"^[ \t-]{%d,}" % MAX_DEPTH, re.M)


def _maybe_deep(text: str) -> bool:
    """Whether ``text`` could nest more than MAX_DEPTH levels: many flow brackets, or a line indented (or opened with
    '- - -') that far.  Cheap; the event scan decides."""
    return text.count("[") + text.count("{") > MAX_DEPTH or _DEEP_INDENT.search(text) is not None


def load_yaml_file(path: Path, display: str, diags: Diagnostics, code: str = "NM101") -> Any:
    """Load YAML as plain values (tags refused, duplicates reported).  None on failure or for an empty file."""
    node = compose_file(path, display, diags, code)
    if node is None:
        return None
    if id(node) in _BUILT and _BUILT[id(node)][0] is node:  # read-only callers (format detection): build once
        return _BUILT[id(node)][1]
    try:
        value = _Builder().value(node)
        if len(_BUILT) > 64:
            _BUILT.clear()
        _BUILT[id(node)] = (node, value)
        return value
    except YamlError as e:
        diags.error(code, str(e), file=display, line=e.line, col=e.col)
    except RecursionError:
        diags.error(code, "YAML nesting is too deep", file=display)
    return None


def load_yaml_outline(path: Path, display: str, diags: Diagnostics, depth: int = 2) -> Any:
    """The file's mappings down to ``depth`` levels (deeper mappings as empty dicts, lists as empty lists, scalars as
    read): what format detection needs, without building every value of a large file."""
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    node = compose_file(path, display, diags)
    b = _Builder()

    def outline(n: Any, level: int) -> Any:
        if isinstance(n, MappingNode):
            return {k: outline(v, level + 1) for k, v in b.pairs(n)} if level < depth else {}
        if isinstance(n, SequenceNode):
            return []
        return b.scalar(n)

    try:
        return outline(node, 0) if node is not None else None
    except (YamlError, RecursionError):
        return None


def read_nemo_yaml(path: Path, display: str, diags: Diagnostics) -> YamlOverrides | None:
    """Flatten a NeMo-Run ``--yaml`` file into dotted overrides with positions."""
    from ruamel.yaml.nodes import MappingNode

    root = compose_file(path, display, diags)
    if root is None:
        return None if diags.has_errors else YamlOverrides(display, [])
    if not isinstance(root, MappingNode):
        line, col = _mark(root)
        diags.error("NM102", "top level must be a mapping of keys", file=display, line=line, col=col)
        return None
    out = YamlOverrides(display, [])
    b = _Builder()

    def prov(node: Any) -> Provenance:
        line, col = _mark(node)
        return Provenance(kind="yaml", file=display, line=line, col=col)

    def walk(m: Any, prefix: str, depth: int, skip: frozenset = frozenset()) -> None:
        if depth > MAX_DEPTH:
            diags.error("NM102", f"nesting deeper than {MAX_DEPTH} levels under '{prefix}'", file=display, **dict(zip(("line", "col"), _mark(m))))
            return
        pairs = b.pairs(m)
        special = {k: v for k, v in pairs if k in ("_target_", "_factory_", "_partial_")}
        if "_target_" in special or "_factory_" in special:
            tkey = "_target_" if "_target_" in special else "_factory_"
            tnode = special[tkey]
            target = b.value(tnode)
            p = prov(tnode)
            if not isinstance(target, str) or not target.strip():
                diags.error("NM102", f"'{prefix}.{tkey}' must be a dotted name, found {target!r}", key=f"{prefix}.{tkey}", **p.where())
                return
            if not prefix:
                diags.error("NM201", f"No parameter named '{tkey}' (a top-level {tkey} is re-emitted by NeMo-Run as an override and fails)",
                            key=tkey, hint="select the factory with --factory, or `run: {factory: name}`", **p.where())
                return
            partial = bool(b.value(special["_partial_"])) if "_partial_" in special else False
            spec = NodeSpec(target=target if tkey == "_target_" else None, factory=target if tkey == "_factory_" else None, partial=partial)
            out.overrides.append(Override(prefix, "=", spec, p))
        for k, vnode in pairs:
            if k in ("_target_", "_factory_", "_partial_") or k in skip:
                continue
            key = f"{prefix}.{k}" if prefix else k
            p = _key_prov.get(id(vnode)) or prov(vnode)
            if isinstance(vnode, MappingNode) and vnode.tag == _STD + "map" and vnode.value:
                walk(vnode, key, depth + 1)
            else:
                out.overrides.append(Override(key, "=", b.value(vnode, depth + 1), p))

    # positions of keys (a value's line is where its key is)
    _key_prov: dict[int, Provenance] = {}

    def index_keys(m: Any, depth: int = 0) -> None:
        if depth > MAX_DEPTH or not isinstance(m, MappingNode):
            return
        for knode, vnode in m.value:
            _key_prov.setdefault(id(vnode), prov(knode))
            index_keys(vnode, depth + 1)

    try:
        index_keys(root)
        skip: set[str] = set()
        top = dict(b.pairs(root))
        run_block = top.get("run")
        if isinstance(run_block, MappingNode):
            rb = dict(b.pairs(run_block))
            if "factory" in rb:
                out.factory = Override("run.factory", "=", b.value(rb["factory"]), _key_prov.get(id(rb["factory"])) or prov(rb["factory"]))
                for k in rb:
                    if k != "factory":
                        diags.warning("NM104", f"'run.{k}' is not read by this compiler (NeMo-Run executor settings)",
                                      key=f"run.{k}", **(_key_prov.get(id(rb[k])) or prov(rb[k])).where())
                skip.add("run")
        b = _Builder()
        walk(root, "", 0, frozenset(skip))
    except YamlError as e:
        diags.error("NM101", str(e), file=display, line=e.line, col=e.col)
        return None
    except RecursionError:
        diags.error("NM102", "YAML nesting is too deep", file=display)
        return None
    return out

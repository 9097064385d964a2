"""NeMo 2 signatures (mappings/nemo2/classes.yaml) and the tree operations NeMo-Run performs on them.

* class lookup from the spellings recipe.py uses (``llm.FineTuningDataModule``, ``nl.MegatronStrategy``);
* NeMo-Run value parsing by the parameter's annotation (``int('4')``, bool words, ``Literal`` exact match,
  ``Any`` via ``ast.literal_eval``);
* factory expansion (mappings/nemo2/factories.yaml) into :class:`~nemo_migrate.ir.Node` trees;
* ``set_path``: ``recipe.a.b = v`` / ``a.b=v`` with NeMo-Run's rules (unknown parameter -> "No parameter named",
  a plain dict cannot take dotted keys, a None parent cannot either).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from . import knowledge, nemo_release
from .diagnostics import Diagnostics, did_you_mean
from .ir import Knob, Node, Provenance
from .sources.pyexpr import evaluate_source

_MISSING = object()


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    optional: bool
    required: bool
    default: Any
    choices: tuple | None = None

    def describe(self) -> str:
        t = self.type
        if self.type == "literal" and self.choices:
            t = "one of " + ", ".join(repr(c) for c in self.choices)
        return ("Optional[" + t + "]") if self.optional else t


@dataclass(frozen=True)
class ClassSpec:
    key: str
    aliases: tuple[str, ...]
    fields: dict[str, FieldSpec] = field(hash=False)
    kwargs: bool
    doc: str


@lru_cache(maxsize=None)
def _specs() -> dict[str, ClassSpec]:
    out: dict[str, ClassSpec] = {}
    for key, raw in knowledge.classes().items():
        fields: dict[str, FieldSpec] = {}
        for fname, f in (raw.get("fields") or {}).items():
            t = str(f.get("t", "any"))
            optional = t.startswith("?")
            t = t.lstrip("?")
            fields[fname] = FieldSpec(
                name=fname,
                type=t,
                optional=optional or ("d" in f and f["d"] is None) or (not f.get("required") and "d" not in f),
                required=bool(f.get("required")),
                default=f.get("d", None),
                choices=tuple(f["choices"]) if f.get("choices") else None,
            )
        out[key] = ClassSpec(key, tuple(raw.get("aliases") or ()), fields, bool(raw.get("kwargs")), raw.get("doc", ""))
    return out


@lru_cache(maxsize=None)
def _alias_index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for key, spec in _specs().items():
        idx.setdefault(key, key)
        for a in spec.aliases:
            idx.setdefault(a, key)
            idx.setdefault(a.rsplit(".", 1)[-1], key)
    return idx


# Classes the IR keeps by their own name while one signature serves them all (the model families).
_FAMILY_KEYS = ("GPTModel", "ModelConfig")


def spec(key: str) -> ClassSpec | None:
    s = _specs().get(key)
    if s is None and key:
        if model_config_class(key):
            return _specs()["ModelConfig"]  # Llama31Config8B, Qwen2Config7B, ...: one signature for all model configs
        alias = _alias_index().get(key)
        if alias in _FAMILY_KEYS:
            return _specs()[alias]  # LlamaModel, Qwen2Model, Gemma2Model...: GPTModel's signature
    return s


def node_class(dotted: str) -> tuple[str, bool]:
    """(the IR class of a spelled class, known?): a model or model-config class keeps its own name (LlamaModel,
    Llama3Config8B) since NeMo builds that class, other classes their classes.yaml key."""
    key = resolve_class(dotted)
    if key in _FAMILY_KEYS:
        leaf = dotted.rsplit(".", 1)[-1]
        return ((model_config_class(dotted) or key) if key == "ModelConfig" else (leaf if leaf in _alias_index() else key)), True
    return (key or dotted), key is not None


def model_config_class(dotted: str) -> str | None:
    """The class name of a NeMo model config (``llm.Llama3Config8B`` -> ``Llama3Config8B``), None for other classes."""
    leaf = dotted.rsplit(".", 1)[-1]
    if leaf == "ModelConfig" or (re.match(r"^[A-Z]\w*Config\w*$", leaf) and leaf not in ("OptimizerConfig", "RestoreConfig")
                                 and leaf not in _specs() and leaf not in _alias_index()):
        return leaf
    return None


def resolve_class(dotted: str) -> str | None:
    """The classes.yaml key for a spelling such as ``llm.FineTuningDataModule`` (None when unknown)."""
    idx = _alias_index()
    if dotted in idx:
        return idx[dotted]
    # the leaf alone only for NeMo's own spellings: `mypkg.data.FineTuningDataModule` is the user's class, not NeMo's
    if "." in dotted and not dotted.startswith(_NEMO_PREFIXES):
        return None
    leaf = dotted.rsplit(".", 1)[-1]
    if leaf in idx:
        return idx[leaf]
    if re.match(r"^[A-Z]\w*Config\w*$", leaf) and leaf not in ("OptimizerConfig", "RestoreConfig"):
        return "ModelConfig"
    return None


_NEMO_PREFIXES = ("nemo.", "nemo_run.", "megatron.", "lightning.", "pytorch_lightning.", "llm.", "nl.", "run.", "pl.", "torch.", "fiddle.",
                  "builtins.")


def known_class_names() -> list[str]:
    return sorted(_alias_index())


# ----------------------------------------------------------------------------------------------------------
# NeMo-Run value parsing (nemo_run/cli/cli_parser.py): a value is parsed by the parameter's annotation.

_TRUE = {"true", "yes", "1", "on", "t", "y"}
_FALSE = {"false", "no", "0", "off", "f", "n"}


_INT_BITS = 1024


class CoerceError(ValueError):
    def __init__(self, expected: str, found: Any):
        self.expected = expected
        self.found = found
        super().__init__(f"expected {expected}, found {found!r}")


def _parse_any(value: Any) -> Any:
    if isinstance(value, str):
        if value.lower() in ("none", "null"):  # nemo_run/cli/cli_parser.py: value.lower() in ("none", "null")
            return None
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return value
    return value


def coerce(value: Any, fs: FieldSpec | None) -> Any:
    """Parse ``value`` the way NeMo-Run parses it for a parameter annotated like ``fs``."""
    if isinstance(value, Node):
        return value
    if fs is None or fs.type in ("any",):
        return _parse_any(value)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if fs.optional or fs.type in ("node", "any"):
            return None
        raise CoerceError(fs.describe(), value)
    t = fs.type
    if t == "int":
        if isinstance(value, bool):
            raise CoerceError("int", value)
        if isinstance(value, int):
            if value.bit_length() > _INT_BITS:  # no knob takes one; its digits would not even print
                raise CoerceError(f"an integer of at most {_INT_BITS} bits", f"an integer of {value.bit_length()} bits")
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise CoerceError("int", value) from None
    if t == "float":
        if isinstance(value, bool):
            raise CoerceError("float", value)
        if isinstance(value, (int, float)):
            try:
                return float(value)
            except OverflowError:
                raise CoerceError("float", f"an integer of {value.bit_length()} bits, beyond float range") from None
        try:
            return float(str(value).strip())
        except ValueError:
            raise CoerceError("float", value) from None
    if t == "bool":
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise CoerceError("bool (true/false/yes/no/1/0/on/off)", value)
    if t == "str":
        if isinstance(value, (dict, list)):
            raise CoerceError("str", value)
        return value if isinstance(value, str) else str(value)
    if t == "literal":
        s = value if isinstance(value, str) else str(value)
        if fs.choices and s not in fs.choices:
            raise CoerceError(fs.describe(), value)
        return s
    if t == "list":
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, str):
            try:
                v = ast.literal_eval(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise CoerceError("a list (Python syntax on the CLI: '[\"a\",\"b\"]')", value) from None
            if isinstance(v, (list, tuple)):
                return list(v)
        raise CoerceError("list", value)
    if t == "dict":
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            try:
                v = ast.literal_eval(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise CoerceError("dict", value) from None
            if isinstance(v, dict):
                return v
        raise CoerceError("dict", value)
    if t == "node":
        raise CoerceError("a run.Config(...) object", value)
    return value


# ----------------------------------------------------------------------------------------------------------
# Factories as data


class FactoryError(ValueError):
    pass


def factory_names() -> list[str]:
    return sorted(knowledge.factories())


def _value_of(x: Any) -> Any:
    if isinstance(x, Knob):
        return x.value
    return x


def call_factory(name: str, kwargs: dict[str, Any], prov: Provenance, root: str | None = None) -> Node | Knob:
    """Expand a factory of mappings/nemo2/factories.yaml.  ``kwargs`` values may be Knobs (keep provenance)."""
    facts = knowledge.factories()
    if name not in facts:
        raise FactoryError(f"unknown factory '{name}'")
    f = facts[name]
    args = dict(f.get("args") or {})
    unknown = [k for k in kwargs if k not in args]
    if unknown:
        hint = did_you_mean(unknown[0], args)
        raise FactoryError(f"{name}() got an unexpected keyword argument '{unknown[0]}'" + (f" ({hint})" if hint else ""))
    detail_root = root or name
    dprov = Provenance(kind=prov.kind, file=prov.file, line=prov.line, col=prov.col, detail=f"{detail_root} ({name})") if prov.kind == "recipe-default" else prov
    env: dict[str, Any] = {}
    for k, v in args.items():
        env[k] = kwargs[k] if k in kwargs else Knob(value=v, prov=dprov)
    for k, expr in (f.get("derive") or {}).items():
        plain = {n: _value_of(v) for n, v in env.items()}
        env[k] = Knob(value=evaluate_source(expr, plain), prov=dprov)
    out = build(f["tree"], env, dprov, detail_root)
    if isinstance(out, Node):  # values of this factory that differ by NeMo release (versions.yaml)
        for fname in list(out.fields):
            v = nemo_release.value(f"{name}.{fname}")
            if v is not None:
                out.fields[fname] = Knob(value=v, prov=dprov)
    return out


def build(spec_: Any, env: dict[str, Any], prov: Provenance, root: str | None = None) -> Node | Knob:
    if isinstance(spec_, str) and spec_.startswith("$") and spec_[1:] in env:
        v = env[spec_[1:]]
        if isinstance(v, (Node, Knob)):
            return v
        return Knob(value=v, prov=prov)
    if isinstance(spec_, dict) and "$factory" in spec_:
        kw = {k: build(v, env, prov, root) for k, v in spec_.items() if k != "$factory"}
        return call_factory(spec_["$factory"], kw, prov, root)
    if isinstance(spec_, dict) and "_target_" in spec_:
        target = str(spec_["_target_"])
        cls, known = node_class(target)
        node = Node(cls=cls, known=known, partial=bool(spec_.get("_partial_")), prov=prov)
        for k, v in spec_.items():
            if k in ("_target_", "_partial_"):
                continue
            child = build(v, env, prov, root)
            fs = field_spec(node, k) if node.cls != "dict" else None
            if isinstance(child, Knob) and fs is not None:
                try:
                    coerced = coerce(child.value, fs)
                    if coerced is not child.value and coerced != child.value or type(coerced) is not type(child.value):
                        child = Knob(value=coerced, prov=child.prov, replaced=child.replaced)
                except CoerceError:
                    pass
            node.fields[k] = child
        return node
    if isinstance(spec_, list):
        items = []
        for v in spec_:
            b = build(v, env, prov, root)
            items.append(b if isinstance(b, Node) else b.value)
        return Knob(value=items, prov=prov)
    return Knob(value=spec_, prov=prov)


# ----------------------------------------------------------------------------------------------------------
# Tree operations with NeMo-Run's semantics

_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")


def field_spec(node: Node, name: str) -> FieldSpec | None:
    s = spec(node.cls)
    return s.fields.get(name) if s else None


def accepts(node: Node, name: str) -> bool:
    if not node.known:
        return True
    s = spec(node.cls)
    return s is None or name in s.fields or s.kwargs


def default_knob(node: Node, name: str) -> Knob | None:
    fs = field_spec(node, name)
    if fs is None or fs.required:
        return None
    by_release = nemo_release.value(f"{node.cls}.{name}")  # a default that differs by NeMo release (versions.yaml)
    if by_release is not None and by_release != fs.default:
        return Knob(value=by_release, prov=Provenance(kind="nemo-default", detail=f"{display(node)}.{name}, NeMo {nemo_release.current()}"))
    return Knob(value=fs.default, prov=Provenance(kind="nemo-default", detail=f"{display(node)}.{name}"))


def display(node: Node) -> str:
    return node.cls


def set_path(
    root: Node,
    path: str,
    new: Node | Knob,
    diags: Diagnostics,
    where: dict,
    *,
    op: str = "=",
    code_prefix: str = "NM",
) -> bool:
    """Apply ``path <op> new`` to the tree; report problems (with did-you-mean) and return success."""
    parts = path.split(".")
    cur: Node = root
    walked: list[str] = []
    for part in parts[:-1]:
        m = _INDEX.match(part)
        name = m.group(1) if m else part
        child = cur.fields.get(name)
        walked.append(part)
        if child is None:
            fs = field_spec(cur, name)
            if fs is not None and fs.type == "node" and not fs.required:
                diags.error(
                    f"{code_prefix}203",
                    f"cannot set '{path}': '{'.'.join(walked)}' is None in the effective job",
                    key=path,
                    hint=f"give '{'.'.join(walked)}' a value first (a `_target_:` mapping in YAML, or run.Config in recipe.py)",
                    **where,
                )
                return False
            if not accepts(cur, name):
                _unknown(cur, name, ".".join(walked), diags, where, code_prefix)
                return False
            diags.error(
                f"{code_prefix}203",
                f"cannot set '{path}': '{'.'.join(walked)}' is not set in the effective job",
                key=path,
                **where,
            )
            return False
        if isinstance(child, Knob):
            if m and isinstance(child.value, list) and int(m.group(2)) < len(child.value) and isinstance(child.value[int(m.group(2))], Node):
                cur = child.value[int(m.group(2))]
                continue
            if isinstance(child.value, dict):
                diags.error(
                    f"{code_prefix}204",
                    f"cannot set '{path}': '{'.'.join(walked)}' is a plain dict, not a run.Config "
                    "(NeMo-Run fails with \"'dict' object has no attribute '__fn_or_cls__'\")",
                    key=path,
                    hint=f"replace the whole value instead: {'.'.join(walked)}={{...}}",
                    **where,
                )
                return False
            diags.error(
                f"{code_prefix}203",
                f"cannot set '{path}': '{'.'.join(walked)}' is {child.value!r}, not a configurable object",
                key=path,
                **where,
            )
            return False
        cur = child
    leaf = parts[-1]
    if _INDEX.match(leaf):
        diags.error(f"{code_prefix}205", f"cannot assign to a list item '{path}'", key=path, hint="replace the whole list", **where)
        return False
    if not accepts(cur, leaf):
        _unknown(cur, leaf, path, diags, where, code_prefix)
        return False
    missing = nemo_release.parameter_missing(cur.cls, leaf) if cur.known else None
    if missing:  # NeMo-Run checks the parameter against the signature of the release that runs the job
        diags.error(f"{code_prefix}208", f"No parameter named '{leaf}' in this release (at '{path}'): {missing}", key=path,
                    hint="pass --nemo-version with the release the job ran on, or drop the setting", **where)
        return False
    sp = spec(cur.cls) if cur.known else None
    if sp is not None and sp.kwargs and leaf not in sp.fields and cur.cls != "dict":
        hint = did_you_mean(leaf, list(sp.fields))
        if hint:
            diags.warning(f"{code_prefix}207", f"'{leaf}' is not a parameter of {display(cur)}; NeMo-Run passes it on as **kwargs (at '{path}')",
                          key=path, hint=hint, **where)
    if isinstance(new, Knob):
        fs = field_spec(cur, leaf)
        if cur.cls == "dict":
            fs = None  # run.Config(dict): **kwargs: Any
        value = new.value
        if op != "=":
            old = cur.fields.get(leaf) or default_knob(cur, leaf)
            if isinstance(old, Node):
                diags.error(f"{code_prefix}206", f"cannot apply '{op}' to '{path}': it is a {old.cls} object, not a number or list", key=path, **where)
                return False
            if old is None or old.value is None:
                diags.error(f"{code_prefix}206", f"'{path}{op}...' needs an existing value", key=path, **where)
                return False
            try:
                rhs = coerce(value, fs)
                value = {"+=": lambda a, b: a + b, "-=": lambda a, b: a - b, "*=": lambda a, b: a * b, "/=": lambda a, b: a / b}[op](old.value, rhs)
            except (KeyError, TypeError, ArithmeticError, ValueError, CoerceError) as e:
                diags.error(f"{code_prefix}206", f"cannot apply '{op}' to '{path}': {e}", key=path, **where)
                return False
        try:
            value = coerce(value, fs)
        except CoerceError as e:
            diags.error(
                f"{code_prefix}202",
                f"'{path}' expects {e.expected}, found {e.found!r}",
                key=path,
                hint=f"{display(cur)}.{leaf} is declared as {fs.describe() if fs else 'Any'} ({(spec(cur.cls).doc if spec(cur.cls) else '')})",
                **where,
            )
            return False
        old = cur.fields.get(leaf)
        if isinstance(old, Knob):
            cur.fields[leaf] = old.with_value(value, new.prov)
        else:
            cur.fields[leaf] = Knob(value=value, prov=new.prov, replaced=[] if old is None else [])
        return True
    cur.fields[leaf] = new
    return True


def _unknown(node: Node, name: str, path: str, diags: Diagnostics, where: dict, code_prefix: str) -> None:
    s = spec(node.cls)
    cands = list(s.fields) if s else []
    hint = did_you_mean(name, cands)
    diags.error(
        f"{code_prefix}201",
        f"No parameter named '{name}' exists for {display(node)} (at '{path}')",
        key=path,
        hint=hint or (f"known parameters: {', '.join(sorted(cands)[:12])}{', ...' if len(cands) > 12 else ''}" if cands else None),
        **where,
    )


def get(root: Node, path: str, default: bool = True) -> Knob | Node | None:
    """The effective value at ``path``: what was set, else the class default (as a nemo-default Knob)."""
    parts = path.split(".")
    cur: Any = root
    for i, part in enumerate(parts):
        if not isinstance(cur, Node):
            return None
        child = cur.fields.get(part)
        if child is None:
            if default and i == len(parts) - 1:
                return default_knob(cur, part)
            return None
        cur = child
    return cur


def value(root: Node, path: str, fallback: Any = None) -> Any:
    k = get(root, path)
    if isinstance(k, Knob):
        return k.value
    if isinstance(k, Node):
        return k
    return fallback

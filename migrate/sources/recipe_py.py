"""Front end for ``recipe.py``: static analysis of NeMo-Run factories.  The user's code is never executed.

The module is parsed with :mod:`ast`.  A factory (``def migration_recipe() -> run.Partial``) is interpreted
statement by statement over :class:`~migrate.ir.Node` trees:

* ``llm.<recipe>.finetune_recipe(**kw)`` expands NeMo recipe knowledge (mappings/nemo2/recipes.yaml);
* ``run.Config(Cls, *a, **kw)`` / ``run.Config(dict)`` / ``run.Partial(fn, ...)`` and known classes build nodes;
* NeMo helper factories (``bf16_with_fp8_mixed()``, ``default_finetune_trainer(...)``...) expand from
  mappings/nemo2/factories.yaml; functions defined in the same file are interpreted in turn;
* assignments on the tree (``recipe.a.b = v``, ``x = recipe.trainer; x.max_steps = 5``, ``+=``), list
  ``append``/``extend`` on list fields, enums (``StrictHandling.LOG_ALL``), literals and constant folding,
  ``if`` on statically known conditions;
* ``run.cli.main(llm.finetune, default_factory=f)`` and ``@run.cli.factory`` registrations.

Anything else becomes a diagnostic at its line and is left out; nothing crashes.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import knowledge, recipes, schema
from ..diagnostics import Diagnostics, MigrateError, did_you_mean
from ..ir import Knob, Node, Provenance
from .pyexpr import NotStatic, evaluate

MAX_CALL_DEPTH = 8
MAX_STATEMENTS = 100_000

_RUN_CONFIG = {"nemo_run.Config", "nemo_run.config.Config", "nemo_run.api.Config", "fiddle.Config"}
_RUN_PARTIAL = {"nemo_run.Partial", "nemo_run.config.Partial", "nemo_run.api.Partial", "fiddle.Partial"}
_RUN_MAIN = {"nemo_run.cli.main", "nemo_run.cli.api.main"}
_RUN_FACTORY_DECOR = {"nemo_run.cli.factory", "nemo_run.cli.api.factory", "nemo_run.autoconvert"}
_EXECUTORS = {"SlurmExecutor": "SlurmExecutor", "LocalExecutor": "LocalExecutor"}
_RUN_RUN = {"nemo_run.run", "nemo_run.run.run", "nemo_run.api.run"}
_RECIPE_CALL = re.compile(r"(?:^|\.)(\w+)\.finetune_recipe$")
_ENV_READS = {"os.environ.get", "os.getenv", "os.environ.__getitem__"}

# Symbols recipe.py may use as values (enums, dtypes): dotted-suffix -> value NeMo-Run would hold.
_STRICT = ["ASSUME_OK_UNEXPECTED", "LOG_UNEXPECTED", "LOG_ALL", "RAISE_UNEXPECTED", "RAISE_ALL", "RETURN_UNEXPECTED", "RETURN_ALL", "IGNORE_ALL"]
SYMBOLS: dict[str, Any] = {f"StrictHandling.{m}": m.lower() for m in _STRICT}
for _dt in ("bfloat16", "float16", "half", "float32", "float", "float64", "double", "int32", "int64", "bool"):
    SYMBOLS[f"torch.{_dt}"] = f"torch.{_dt}"
for _r in ("delayed", "tensorwise", "mxfp8", "blockwise"):
    SYMBOLS[f"Fp8Recipe.{_r}"] = _r


@dataclass
class Sym:
    """A reference to an imported module/class/function, by its full dotted name."""

    dotted: str


@dataclass
class FactoryDef:
    name: str
    node: ast.FunctionDef
    registered: str | None = None


@dataclass
class Executor:
    """A NeMo-Run executor found in recipe.py: its class and statically known keyword arguments (value, line)."""

    kind: str  # SlurmExecutor | LocalExecutor
    line: int
    kwargs: dict[str, tuple[Any, int]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)  # arguments whose value is not static


@dataclass
class RecipeModule:
    file: str
    tree: ast.Module
    imports: dict[str, str] = field(default_factory=dict)
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    constants: dict[str, tuple[Any, int]] = field(default_factory=dict)
    default_factory: tuple[str, int] | None = None
    registered: dict[str, str] = field(default_factory=dict)
    executors: list[Executor] = field(default_factory=list)

    def factory_names(self) -> list[str]:
        return sorted(set(self.functions) | set(self.registered))


def _where(file: str, node: ast.AST) -> dict:
    return {"file": file, "line": getattr(node, "lineno", None), "col": (getattr(node, "col_offset", -1) + 1) or None}


def _dotted(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def parse_recipe_py(path: Path, display: str, diags: Diagnostics) -> RecipeModule | None:
    try:
        src = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        diags.error("NM300", f"cannot read recipe file: {e}", file=display)
        return None
    try:
        tree = ast.parse(src, filename=display)
    except SyntaxError as e:
        diags.error("NM301", f"Python syntax error: {e.msg}", file=display, line=e.lineno, col=e.offset)
        return None
    except (RecursionError, MemoryError, ValueError) as e:
        diags.error("NM301", f"cannot parse: {type(e).__name__}", file=display)
        return None
    mod = RecipeModule(file=display, tree=tree)
    _collect_imports(tree.body, mod.imports)
    for st in tree.body:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mod.functions[st.name] = st  # type: ignore[assignment]
            for dec in st.decorator_list:
                call = dec if isinstance(dec, ast.Call) else None
                dn = _dotted(call.func if call else dec)
                full = _resolve_import(dn, mod.imports) if dn else None
                if full in _RUN_FACTORY_DECOR:
                    reg = st.name
                    if call is not None:
                        for kw in call.keywords:
                            if kw.arg == "name" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                                reg = kw.value.value
                    mod.registered[reg] = st.name
        elif isinstance(st, (ast.Assign, ast.AnnAssign)):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            if st.value is not None and len(targets) == 1 and isinstance(targets[0], ast.Name):
                try:
                    mod.constants[targets[0].id] = (evaluate(st.value, lambda n, node: _const_lookup(mod, n, node)), st.lineno)
                except NotStatic:
                    pass
    _collect_executors(mod, tree, diags)
    # run.cli.main(llm.finetune, default_factory=...) anywhere in the module
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            dn = _dotted(node.func)
            if dn and _resolve_import(dn, mod.imports) in _RUN_MAIN:
                for kw in node.keywords:
                    if kw.arg == "default_factory":
                        if isinstance(kw.value, ast.Name):
                            mod.default_factory = (kw.value.id, kw.value.lineno)
                        else:
                            diags.warning("NM302", "default_factory is not a plain function name; pass --factory", **_where(display, kw.value))
    if mod.default_factory is None:
        mod.default_factory = _factory_from_run_calls(mod, tree)
    return mod


def _factory_from_run_calls(mod: RecipeModule, tree: ast.Module) -> tuple[str, int] | None:
    """`run.run(my_recipe(), executor=...)` / `exp.add(recipe, ...)` with `recipe = my_recipe()`: the factory they run."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call):
            fn = _dotted(node.value.func)
            if fn in mod.functions:
                bound[node.targets[0].id] = fn
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        dn = _dotted(node.func) or ""
        full = _resolve_import(dn, mod.imports) or ""
        if full in _RUN_RUN or dn.endswith(".add") and any(k.arg == "executor" for k in node.keywords):
            a = node.args[0]
            if isinstance(a, ast.Call) and _dotted(a.func) in mod.functions:
                return _dotted(a.func), node.lineno  # type: ignore[return-value]
            if isinstance(a, ast.Name) and a.id in bound:
                return bound[a.id], node.lineno
    return None


def _collect_executors(mod: RecipeModule, tree: ast.Module, diags: Diagnostics) -> None:
    parents: dict[int, ast.FunctionDef] = {}
    for fn in mod.functions.values():
        for n in ast.walk(fn):
            parents.setdefault(id(n), fn)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        full = _resolve_import(_dotted(node.func), mod.imports) or ""
        leaf = full.rsplit(".", 1)[-1]
        if leaf not in _EXECUTORS or not (full.startswith("nemo_run") or full == leaf):
            continue
        env: dict[str, Any] = {k: v for k, (v, _) in mod.constants.items()}
        fn = parents.get(id(node))
        if fn is not None:
            names = [a.arg for a in fn.args.args]
            for n, d in zip(names[len(names) - len(fn.args.defaults):], fn.args.defaults):
                try:
                    env[n] = evaluate(d, env)
                except NotStatic:
                    pass
        ex = Executor(_EXECUTORS[leaf], node.lineno)
        for kw in node.keywords:
            if kw.arg is None:
                ex.unknown.append("**kwargs")
                continue
            try:
                ex.kwargs[kw.arg] = (evaluate(kw.value, env), kw.value.lineno)
            except NotStatic:  # kept as its source text, so the report can still name it
                ex.kwargs[kw.arg] = (f"<{ast.unparse(kw.value)[:120]}>", kw.value.lineno)
                ex.unknown.append(kw.arg)
        mod.executors.append(ex)
    if len({e.kind for e in mod.executors}) > 1:
        diags.note("NM330", f"recipe.py defines several executors ({', '.join(e.kind for e in mod.executors)}); the Slurm one is migrated",
                   file=mod.file)


def _const_lookup(mod: RecipeModule, name: str, node: ast.AST) -> Any:
    if name in mod.constants:
        return mod.constants[name][0]
    raise NotStatic(node, f"name '{name}' is not a module-level constant")


def _collect_imports(body: list[ast.stmt], imports: dict[str, str]) -> None:
    for st in body:
        if isinstance(st, ast.Import):
            for a in st.names:
                if a.asname:
                    imports[a.asname] = a.name
                else:
                    imports[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(st, ast.ImportFrom) and st.module and st.level == 0:
            for a in st.names:
                if a.name != "*":
                    imports[a.asname or a.name] = f"{st.module}.{a.name}"


def _resolve_import(dotted: str | None, imports: dict[str, str]) -> str | None:
    if dotted is None:
        return None
    head, _, rest = dotted.partition(".")
    if head in imports:
        return imports[head] + ("." + rest if rest else "")
    return dotted


class _Return(Exception):
    def __init__(self, value: Any):
        self.value = value


class FactoryInterpreter:
    """Interprets a factory function of recipe.py over Node trees."""

    def __init__(self, mod: RecipeModule, diags: Diagnostics):
        self.mod = mod
        self.diags = diags
        self.depth = 0
        self.statements = 0
        self._imports: dict[str, str] = dict(mod.imports)

    # -- entry -------------------------------------------------------------------------------------------
    def run_factory(self, name: str, kwargs: dict[str, Knob], call_prov: Provenance) -> Node:
        fn = self.mod.functions.get(self.mod.registered.get(name, name))
        if fn is None:
            raise KeyError(name)
        result = self._call_user(fn, [], kwargs, call_prov)
        if not isinstance(result, Node):
            self.diags.error(
                "NM303",
                f"factory '{name}' does not return a run.Partial/run.Config this compiler can follow",
                hint="the factory should build the recipe (e.g. llm.<model>.finetune_recipe(...)) and return it",
                **_where(self.mod.file, fn),
            )
            raise MigrateError(self.diags)
        return result

    # -- statements ----------------------------------------------------------------------------------------
    def _call_user(self, fn: ast.FunctionDef, args: list[Any], kwargs: dict[str, Any], call_prov: Provenance) -> Any:
        if self.depth >= MAX_CALL_DEPTH:
            raise NotStatic(fn, f"calls nested deeper than {MAX_CALL_DEPTH}")
        params = fn.args
        names = [a.arg for a in params.posonlyargs + params.args]
        defaults = params.defaults
        local: dict[str, Any] = {}
        if len(args) > len(names):
            raise NotStatic(fn, f"{fn.name}() takes {len(names)} positional arguments but {len(args)} were given")
        for n, v in zip(names, args):
            local[n] = v
        for kw, v in kwargs.items():
            if kw not in names and kw not in [a.arg for a in params.kwonlyargs]:
                hint = did_you_mean(kw, names)
                self.diags.error("NM304", f"{fn.name}() got an unexpected keyword argument '{kw}'", hint=hint,
                                 **(v.prov.where() if isinstance(v, Knob) and v.prov.file else _where(self.mod.file, fn)))
                raise MigrateError(self.diags)
            local[kw] = v
        # defaults
        for n, d in zip(names[len(names) - len(defaults):], defaults):
            if n not in local:
                local[n] = self._eval(d, {}, Provenance(kind="recipe.py", file=self.mod.file, line=d.lineno, detail=f"default of {n}"))
        for a, d in zip(params.kwonlyargs, params.kw_defaults):
            if a.arg not in local and d is not None:
                local[a.arg] = self._eval(d, {}, Provenance(kind="recipe.py", file=self.mod.file, line=d.lineno))
        missing = [n for n in names if n not in local]
        if missing:
            self.diags.error("NM304", f"{fn.name}() is missing argument '{missing[0]}'", **_where(self.mod.file, fn))
            raise MigrateError(self.diags)
        local_imports = dict(self.mod.imports)
        self.depth += 1
        try:
            self._exec_block(fn.body, local, local_imports)
        except _Return as r:
            return r.value
        finally:
            self.depth -= 1
        return None

    def _exec_block(self, body: list[ast.stmt], local: dict[str, Any], imports: dict[str, str]) -> None:
        for st in body:
            self.statements += 1
            if self.statements > MAX_STATEMENTS:
                self.diags.error("NM305", f"more than {MAX_STATEMENTS} statements interpreted; giving up", **_where(self.mod.file, st))
                raise MigrateError(self.diags)
            self._exec(st, local, imports)

    def _prov(self, node: ast.AST, detail: str | None = None) -> Provenance:
        return Provenance(kind="recipe.py", file=self.mod.file, line=getattr(node, "lineno", None),
                          col=(getattr(node, "col_offset", -1) + 1) or None, detail=detail)

    def _skip(self, st: ast.AST, why: str, hint: str | None = None) -> None:
        self.diags.warning("NM310", f"statement not understood statically ({why}); its effect is not in the migration",
                           hint=hint, **_where(self.mod.file, st))

    def _exec(self, st: ast.stmt, local: dict[str, Any], imports: dict[str, str]) -> None:
        self._imports = imports
        if isinstance(st, ast.Expr):
            if isinstance(st.value, ast.Constant):
                return  # docstring
            if isinstance(st.value, ast.Call):
                self._exec_call_stmt(st, st.value, local)
                return
            self._skip(st, "expression statement")
            return
        if isinstance(st, (ast.Assign, ast.AnnAssign)):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            if st.value is None:
                return
            try:
                value = self._eval(st.value, local, self._prov(st))
            except NotStatic as e:
                self._skip(st, e.why)
                return
            for t in targets:
                self._assign(t, value, local, st)
            return
        if isinstance(st, ast.AugAssign):
            op = {ast.Add: "+=", ast.Sub: "-=", ast.Mult: "*=", ast.Div: "/="}.get(type(st.op))
            try:
                value = self._eval(st.value, local, self._prov(st))
            except NotStatic as e:
                self._skip(st, e.why)
                return
            if isinstance(st.target, ast.Name):
                cur = local.get(st.target.id)
                if isinstance(cur, Knob) and isinstance(value, Knob) and op:
                    try:
                        local[st.target.id] = Knob(value=evaluate(ast.BinOp(ast.Constant(cur.value), st.op, ast.Constant(value.value))),
                                                   prov=self._prov(st))
                        return
                    except NotStatic as e:
                        self._skip(st, e.why)
                        return
                self._skip(st, "augmented assignment to an unknown name")
                return
            if op is None:
                self._skip(st, "operator")
                return
            self._assign(st.target, value, local, st, op=op)
            return
        if isinstance(st, ast.Return):
            if st.value is None:
                raise _Return(None)
            try:
                raise _Return(self._eval(st.value, local, self._prov(st)))
            except NotStatic as e:
                self._skip(st, e.why)
                raise _Return(None) from None
        if isinstance(st, ast.If):
            try:
                test = self._eval(st.test, local, self._prov(st))
                truth = bool(test.value) if isinstance(test, Knob) else (test is not None)
            except NotStatic as e:
                self._skip(st, f"the condition cannot be decided statically: {e.why}",
                           hint="neither branch was applied; set the values it controls explicitly")
                return
            self._exec_block(st.body if truth else st.orelse, local, imports)
            return
        if isinstance(st, (ast.Import, ast.ImportFrom)):
            _collect_imports([st], imports)
            return
        if isinstance(st, ast.Pass):
            return
        if isinstance(st, ast.Try):
            if st.handlers:
                self.diags.note("NM311", "try: the body is followed as if it raised nothing; except handlers are ignored",
                                **_where(self.mod.file, st))
            self._exec_block(st.body + st.orelse + st.finalbody, local, imports)
            return
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Global, ast.Nonlocal)):
            return
        if isinstance(st, ast.Raise):
            self.diags.error("NM312", "the factory raises here on the path the compiler followed", **_where(self.mod.file, st))
            raise MigrateError(self.diags)
        self._skip(st, type(st).__name__.lower())

    def _exec_call_stmt(self, st: ast.stmt, call: ast.Call, local: dict[str, Any]) -> None:
        func = call.func
        # list methods on a list-valued field: recipe.trainer.callbacks.append(run.Config(...))
        if isinstance(func, ast.Attribute) and func.attr in ("append", "extend", "insert"):
            try:
                owner, fname = self._owner(func.value, local)
            except NotStatic as e:
                self._skip(st, e.why)
                return
            if owner is not None:
                cur = owner.fields.get(fname) or schema.default_knob(owner, fname)
                if isinstance(cur, Knob) and isinstance(cur.value, list):
                    try:
                        args = [self._eval(a, local, self._prov(st)) for a in call.args]
                    except NotStatic as e:
                        self._skip(st, e.why)
                        return
                    items = list(cur.value)
                    vals = [a if isinstance(a, Node) else (a.value if isinstance(a, Knob) else a) for a in args]
                    if func.attr == "append" and len(vals) == 1:
                        items.append(vals[0])
                    elif func.attr == "extend" and len(vals) == 1 and isinstance(vals[0], list):
                        items.extend(vals[0])
                    elif func.attr == "insert" and len(vals) == 2 and isinstance(vals[0], int):
                        items.insert(vals[0], vals[1])
                    else:
                        self._skip(st, f"{func.attr} with these arguments")
                        return
                    owner.fields[fname] = cur.with_value(items, self._prov(st, f"{fname}.{func.attr}(...)"))
                    return
        dn = _dotted(func)
        full = _resolve_import(dn, self._imports) if dn else None
        if full in ("print",) or (full or "").startswith(("logging.", "logger.", "log.")):
            return
        if full in _RUN_MAIN:
            return
        self._skip(st, "a call whose effect on the recipe is unknown")

    def _owner(self, expr: ast.AST, local: dict[str, Any]) -> tuple[Node | None, str]:
        """For ``a.b.c`` return (the Node holding c, 'c')."""
        if isinstance(expr, ast.Attribute):
            base = self._eval(expr.value, local, self._prov(expr))
            if isinstance(base, Node):
                return base, expr.attr
        return None, ""

    def _assign(self, target: ast.AST, value: Any, local: dict[str, Any], st: ast.stmt, op: str = "=") -> None:
        if isinstance(target, ast.Name):
            local[target.id] = value
            return
        if isinstance(target, ast.Attribute):
            try:
                base = self._eval(target.value, local, self._prov(st))
            except NotStatic as e:
                self._skip(st, e.why)
                return
            if not isinstance(base, Node):
                self._skip(st, "assignment to an attribute of something that is not a run.Config")
                return
            new = value if isinstance(value, (Node, Knob)) else Knob(value=value, prov=self._prov(st))
            if isinstance(new, Knob):
                new = Knob(value=new.value, prov=self._prov(st))
            schema.set_path(base, target.attr, new, self.diags, _where(self.mod.file, st), op=op)
            return
        if isinstance(target, ast.Subscript):
            self._skip(st, "assignment to a list/dict item", hint="replace the whole list or dict instead")
            return
        self._skip(st, "unpacking assignment")

    # -- expressions ---------------------------------------------------------------------------------------
    def _eval(self, node: ast.AST, local: dict[str, Any], prov: Provenance) -> Any:
        """Value of an expression: Knob (literal), Node, Sym, or raise NotStatic."""
        if isinstance(node, ast.Call):
            return self._eval_call(node, local, prov)
        if isinstance(node, ast.Name):
            if node.id in local:
                return local[node.id]
            if node.id in self.mod.constants:
                v, line = self.mod.constants[node.id]
                return Knob(value=v, prov=Provenance(kind="recipe.py", file=self.mod.file, line=line, detail=node.id))
            if node.id in self._imports:
                return self._symbol(self._imports[node.id], node)
            if node.id in self.mod.functions:
                return Sym(f"__main__.{node.id}")
            if node.id in ("dict", "list", "str", "int", "float", "bool", "tuple"):
                return Sym(f"builtins.{node.id}")
            raise NotStatic(node, f"name '{node.id}' is not defined statically")
        if isinstance(node, ast.Attribute):
            base = self._eval(node.value, local, prov)
            if isinstance(base, Node):
                child = base.fields.get(node.attr)
                if child is None:
                    child = schema.default_knob(base, node.attr)
                if child is None:
                    raise NotStatic(node, f"'{node.attr}' is not set on {base.cls}")
                return child
            if isinstance(base, Sym):
                return self._symbol(f"{base.dotted}.{node.attr}", node)
            raise NotStatic(node, f"attribute '{node.attr}' of a plain value")
        # literals and arithmetic, with names resolved to literal values
        def lookup(name: str, n: ast.AST) -> Any:
            v = self._eval(n, local, prov) if name not in ("True", "False", "None") else {"True": True, "False": False, "None": None}[name]
            if isinstance(v, Knob):
                return v.value
            if isinstance(v, Node):
                return v
            raise NotStatic(n, f"'{name}' is not a plain value")
        if isinstance(node, (ast.List, ast.Tuple)) and any(isinstance(e, (ast.Call, ast.Attribute)) for e in node.elts):
            items = []
            for e in node.elts:
                v = self._eval(e, local, prov)
                items.append(v if isinstance(v, Node) else (v.value if isinstance(v, Knob) else _sym_value(v, e)))
            return Knob(value=items, prov=prov)
        if isinstance(node, ast.Dict) and any(isinstance(e, (ast.Call, ast.Attribute)) for e in node.values if e is not None):
            out: dict[Any, Any] = {}
            for k, v in zip(node.keys, node.values):
                if k is None:
                    raise NotStatic(node, "dict unpacking")
                kv = self._eval(k, local, prov)
                vv = self._eval(v, local, prov)
                out[kv.value if isinstance(kv, Knob) else kv] = vv.value if isinstance(vv, Knob) else vv
            return Knob(value=out, prov=prov)
        if isinstance(node, ast.Attribute):
            raise NotStatic(node, "attribute")
        return Knob(value=evaluate(node, lookup), prov=prov)

    def _symbol(self, dotted: str, node: ast.AST) -> Any:
        for suffix, val in SYMBOLS.items():
            if dotted == suffix or dotted.endswith("." + suffix):
                return Knob(value=val, prov=self._prov(node))
        return Sym(dotted)

    def _kwargs(self, call: ast.Call, local: dict[str, Any], prov: Provenance) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kw in call.keywords:
            if kw.arg is None:
                raise NotStatic(kw, "**kwargs unpacking")
            kprov = Provenance(kind="recipe.py", file=self.mod.file, line=kw.value.lineno, col=kw.value.col_offset + 1)
            v = self._eval(kw.value, local, kprov)
            if isinstance(v, Knob):
                v = Knob(value=v.value, prov=kprov) if v.prov.kind != "recipe.py" or v.prov.file != self.mod.file else v
            elif isinstance(v, Sym):
                v = Knob(value=_sym_value(v, kw.value), prov=kprov)
            out[kw.arg] = v
        return out

    def _eval_call(self, call: ast.Call, local: dict[str, Any], prov: Provenance) -> Any:
        callee = self._eval(call.func, local, prov) if not isinstance(call.func, ast.Name) or call.func.id not in self.mod.functions else Sym(f"__main__.{call.func.id}")
        if not isinstance(callee, Sym):
            raise NotStatic(call, "call of something that is not a known function")
        full = callee.dotted
        cprov = self._prov(call, full.rsplit(".", 1)[-1] + "()")
        if full.startswith("__main__."):
            fname = full.split(".", 1)[1]
            args = [self._eval(a, local, prov) for a in call.args]
            return self._call_user(self.mod.functions[fname], args, self._kwargs(call, local, prov), cprov)
        if full in _ENV_READS or full.startswith("os.environ"):
            raise NotStatic(call, "reads the environment at run time")
        m = _RECIPE_CALL.search(full)
        if m and recipes.info(m.group(1)) is not None or (m and full.startswith("nemo.collections.llm")):
            name = m.group(1)
            if call.args:
                kwargs = dict(zip(recipes.SIGNATURE, [self._eval(a, local, prov) for a in call.args]))
            else:
                kwargs = {}
            kwargs.update(self._kwargs(call, local, prov))
            kw_knobs = {k: (v if isinstance(v, Knob) else Knob(value=v, prov=cprov)) for k, v in kwargs.items()}
            return recipes.expand(name, kw_knobs, cprov, self.diags, _where(self.mod.file, call))
        if full in _RUN_CONFIG or full in _RUN_PARTIAL:
            if not call.args:
                raise NotStatic(call, "run.Config needs a class as its first argument")
            target = self._eval(call.args[0], local, prov)
            tname = target.dotted if isinstance(target, Sym) else None
            if tname is None:
                raise NotStatic(call.args[0], "the configured class is not a plain name")
            if tname.startswith("builtins."):
                tname = tname.split(".", 1)[1]
            return self._make_node(tname, call.args[1:], call, local, prov, partial=full in _RUN_PARTIAL)
        if full == "builtins.dict":
            kw = self._kwargs(call, local, prov)
            return Knob(value={k: (v.value if isinstance(v, Knob) else v) for k, v in kw.items()}, prov=cprov)
        if full in ("builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float", "builtins.bool"):
            args = [self._eval(a, local, prov) for a in call.args]
            if len(args) == 1 and isinstance(args[0], Knob):
                fn = {"builtins.list": list, "builtins.tuple": tuple, "builtins.str": str, "builtins.int": int,
                      "builtins.float": float, "builtins.bool": bool}[full]
                try:
                    return Knob(value=fn(args[0].value), prov=cprov)
                except (TypeError, ValueError) as e:
                    raise NotStatic(call, str(e)) from None
            raise NotStatic(call, f"{full} with these arguments")
        leaf = full.rsplit(".", 1)[-1]
        if leaf in ("timedelta",):
            kw = self._kwargs(call, local, prov)
            return Knob(value="timedelta(" + ", ".join(f"{k}={v.value}" for k, v in kw.items()) + ")", prov=cprov)
        if leaf == "Path" and len(call.args) == 1:
            a = self._eval(call.args[0], local, prov)
            if isinstance(a, Knob):
                return Knob(value=str(a.value), prov=cprov)
        if leaf in knowledge.factories() and (full.startswith("nemo.") or "." not in full or full.startswith("llm.")):
            kw = self._kwargs(call, local, prov)
            if call.args:
                raise NotStatic(call, f"positional arguments to {leaf}() are not followed; use keywords")
            kw_knobs = {k: (v if isinstance(v, (Knob, Node)) else Knob(value=v, prov=cprov)) for k, v in kw.items()}
            try:
                return schema.call_factory(leaf, kw_knobs, cprov)
            except schema.FactoryError as e:
                self.diags.error("NM306", str(e), **_where(self.mod.file, call))
                raise MigrateError(self.diags) from None
        key = schema.resolve_class(full)
        if key is not None and (full.startswith(("nemo.", "megatron.", "lightning.")) or key != "ModelConfig"):
            return self._make_node(full, call.args, call, local, prov, partial=False)
        raise NotStatic(call, f"call of '{full}' is not something this compiler knows")

    def _make_node(self, tname: str, args: list[ast.AST], call: ast.Call, local: dict[str, Any], prov: Provenance, partial: bool) -> Node:
        key = schema.resolve_class(tname)
        node_prov = self._prov(call, f"run.{'Partial' if partial else 'Config'}({tname.rsplit('.', 1)[-1]})")
        node = Node(cls=key or tname, known=key is not None, partial=partial, prov=node_prov)
        where = _where(self.mod.file, call)
        if key is None:
            self.diags.warning("NM320", f"class '{tname}' is not known to this compiler; its settings are carried but not checked",
                               hint=did_you_mean(tname.rsplit(".", 1)[-1], schema.known_class_names()), **where)
        spec = schema.spec(key) if key else None
        if args:
            if spec is None:
                raise NotStatic(call, "positional arguments for an unknown class")
            fields = list(spec.fields)
            if len(args) > len(fields):
                raise NotStatic(call, "too many positional arguments")
            for fname, a in zip(fields, args):
                v = self._eval(a, local, prov)
                self._set_field(node, fname, v, a, where)
        for kw in call.keywords:
            if kw.arg is None:
                raise NotStatic(kw, "**kwargs unpacking")
            kprov = Provenance(kind="recipe.py", file=self.mod.file, line=kw.value.lineno, col=kw.value.col_offset + 1)
            v = self._eval(kw.value, local, kprov)
            self._set_field(node, kw.arg, v, kw.value, {**where, "line": kw.value.lineno, "col": kw.value.col_offset + 1})
        return node

    def _set_field(self, node: Node, name: str, v: Any, expr: ast.AST, where: dict) -> None:
        kprov = Provenance(kind="recipe.py", file=self.mod.file, line=getattr(expr, "lineno", None), col=(getattr(expr, "col_offset", -1) + 1) or None)
        if isinstance(v, Sym):
            v = Knob(value=_sym_value(v, expr), prov=kprov)
        elif isinstance(v, Knob) and not (v.prov.kind == "recipe.py" and v.prov.file == self.mod.file):
            v = Knob(value=v.value, prov=kprov)
        schema.set_path(node, name, v, self.diags, where)


def _sym_value(v: Any, node: ast.AST) -> Any:
    if isinstance(v, Sym):
        if v.dotted.startswith("__main__."):
            raise NotStatic(node, f"function '{v.dotted[9:]}' used as a value")
        return v.dotted
    return v

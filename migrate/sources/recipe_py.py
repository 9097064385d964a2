"""Front end for NeMo 2 Python: ``recipe.py`` factories, scripts and notebooks, read by a static interpreter.

The user's code is never executed.  The module is parsed with :mod:`ast` and its statements are interpreted in
order, the way Python would run them, over abstract values:

* :class:`~nemo_migrate.ir.Knob` (a value known statically, with where it came from), :class:`~nemo_migrate.ir.Node` (a
  ``run.Config``/``run.Partial``, shared by reference as in Python), :class:`Sym` (an imported name),
  :class:`Func` (a function of the file: calls are followed, defaults bound at ``def`` time, names looked up when the
  call runs), and :class:`Unknown` (a value this compiler cannot know: it says why and where, and is an error only if
  it reaches the job);
* NeMo-Run idioms: ``llm.<recipe>.finetune_recipe(...)`` (mappings/nemo2/recipes.yaml), ``run.Config``/
  ``run.Partial``, NeMo helper factories (mappings/nemo2/factories.yaml), known classes, executors,
  ``run.run(task, executor=...)``, ``run.Experiment`` with ``exp.add``, ``llm.finetune(...)`` called directly,
  ``run.cli.main(llm.finetune, default_factory=f)`` and ``@run.cli.factory`` registrations;
* straight-line code, ``if`` on values known statically, ``for`` over known sequences (unrolled), tuple unpacking,
  augmented assignment, ``argparse`` parsers given the launch line's arguments, f-strings, comprehensions.

What cannot be followed never silently changes the result: a call into code that is not in the file, or a branch
whose condition is not known, marks every run.Config it could have changed; the job is refused at that line if (and
only if) the job that is launched contains such a mark or an :class:`Unknown` value.  Among several launches the
fine-tune is picked (``llm.finetune``), not an ``llm.import_ckpt`` before it or an ``llm.generate`` after it.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import operator
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .. import knowledge, recipes, schema
from ..diagnostics import Diagnostic, Diagnostics, MigrateError, did_you_mean
from ..ir import Knob, Node, Provenance
from .pysource import PySource, SourceError, parse, read_source

MAX_CALL_DEPTH = 24
MAX_STATEMENTS = 200_000
MAX_LOOP = 10_000
MAX_VALUE_ITEMS = 1_000_000
MAX_STR = 10_000_000
MAX_MODULES = 32
# top-level packages that are never the job's own modules, even when a file of that name sits next to the script
_NOT_LOCAL = {"nemo", "nemo_run", "megatron", "lightning", "pytorch_lightning", "torch", "os", "sys", "argparse", "typing",
              "functools", "pathlib", "datetime", "json", "yaml", "math", "re", "logging", "dataclasses", "transformers"}

_RUN_CONFIG = {"nemo_run.Config", "nemo_run.config.Config", "nemo_run.api.Config", "fiddle.Config"}
_RUN_PARTIAL = {"nemo_run.Partial", "nemo_run.config.Partial", "nemo_run.api.Partial", "fiddle.Partial"}
_RUN_MAIN = {"nemo_run.cli.main", "nemo_run.cli.api.main"}
_RUN_FACTORY_DECOR = {"nemo_run.cli.factory", "nemo_run.cli.api.factory"}
_RUN_AUTOCONVERT = {"nemo_run.autoconvert", "nemo_run.config.autoconvert"}
_RUN_RUN = {"nemo_run.run", "nemo_run.run.run", "nemo_run.api.run"}
_RUN_EXPERIMENT = {"nemo_run.Experiment", "nemo_run.experiment.Experiment", "nemo_run.run.experiment.Experiment"}
_EXECUTORS = {"SlurmExecutor", "LocalExecutor", "SkypilotExecutor", "DockerExecutor", "LeptonExecutor", "DGXCloudExecutor"}
_TRANSPARENT_DECOR = {"functools.lru_cache", "functools.cache", "staticmethod", "typing.no_type_check", "typing.overload"}
_RECIPE_FN = re.compile(r"(?:^|\.)(\w+)\.(finetune_recipe|pretrain_recipe|model|tokenizer)$")
_LLM_API = re.compile(r"^(?:nemo\.collections\.llm(?:\.api)?|llm)\.(finetune|pretrain|train|import_ckpt|export_ckpt|generate|validate|"
                      r"evaluate|deploy|distill|prune|ptq|import_ckpt)$")
_ENV_READS = {"os.environ.get", "os.getenv", "os.environ.__getitem__", "os.environ.setdefault"}
_PURE_BUILTINS = {"len", "min", "max", "abs", "round", "sorted", "sum", "any", "all", "range", "enumerate", "zip",
                  "reversed", "repr", "hash", "divmod", "pow", "chr", "ord", "isinstance", "set", "frozenset"}
_TYPES = {"dict": dict, "list": list, "tuple": tuple, "str": str, "int": int, "float": float, "bool": bool}
_STR_METHODS = {"format", "join", "upper", "lower", "replace", "strip", "lstrip", "rstrip", "split", "rsplit", "startswith",
                "endswith", "title", "capitalize", "zfill", "removeprefix", "removesuffix", "count", "find", "index",
                "isdigit", "splitlines", "partition", "rpartition", "center", "ljust", "rjust"}
_READ_METHODS = {"get", "keys", "values", "items", "copy", "index", "count"}
_MUTATE_METHODS = {"append", "extend", "insert", "update", "pop", "remove", "setdefault", "clear", "sort", "reverse"}

# Symbols recipe.py may use as values (enums, dtypes): dotted-suffix -> value NeMo-Run would hold.
_STRICT = ["ASSUME_OK_UNEXPECTED", "LOG_UNEXPECTED", "LOG_ALL", "RAISE_UNEXPECTED", "RAISE_ALL", "RETURN_UNEXPECTED", "RETURN_ALL", "IGNORE_ALL"]
SYMBOLS: dict[str, Any] = {f"StrictHandling.{m}": m.lower() for m in _STRICT}
for _dt in ("bfloat16", "float16", "half", "float32", "float", "float64", "double", "int32", "int64", "bool"):
    SYMBOLS[f"torch.{_dt}"] = f"torch.{_dt}"
for _r in ("delayed", "tensorwise", "mxfp8", "blockwise"):
    SYMBOLS[f"Fp8Recipe.{_r}"] = _r

WAY_OUT = ("export the job NeMo-Run builds and convert that file: add `--to-yaml job.yaml` to the NeMo-Run command line "
           "(`python {file} --factory ... --to-yaml job.yaml`, or `nemo llm finetune --factory <recipe> ... --to-yaml job.yaml`), "
           "or set the value with `nemo-migrate convert ... --set key=value` (NeMo-Run 0.11 cannot export an Enum or a Path value: "
           "write it as its string first, e.g. 'log_all' for StrictHandling.LOG_ALL)")
WAY_OUT_SCRIPT = ("export the job the script launches and convert that file: just before `run.run(job, ...)` add "
                  "`from nemo_run.cli.config import ConfigSerializer; ConfigSerializer().dump(job, \"job.yaml\")`, run it once, "
                  "then `nemo-migrate convert job.yaml`; or set the value with `nemo-migrate convert ... --set key=value`")


# ---------------------------------------------------------------------------------------------- values

@dataclass(frozen=True)
class Sym:
    """A reference to an imported module/class/function, by its full dotted name."""

    dotted: str


@dataclass(frozen=True)
class Unknown:
    """A value this compiler cannot know statically; an error only where it reaches the job.

    ``prov`` is where the value is in the code at hand; ``root`` where the first value not known arose (an argparse
    call, an environment read...), and ``via`` the calls it came back through."""

    why: str
    prov: Provenance
    root: Provenance | None = None
    via: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.why} ({self.root or self.prov})"
        if self.via:
            text += ", returned by " + " -> ".join(self.via[:8]) + (" -> ..." if len(self.via) > 8 else "")
        return text

    def origin(self) -> Provenance:
        return self.root or self.prov

    def caused(self, why: str, prov: Provenance) -> "Unknown":
        """A new value not known because of this one (keeps where the first one arose)."""
        return Unknown(why, prov, self.origin())


@dataclass(eq=False)
class Unit:
    """One Python file being interpreted: the script itself, or a helper module of the job it imports."""

    file: str  # as shown in diagnostics
    source: PySource
    globals: dict[str, Any]
    path: Path | None = None
    functions: set[str] = field(default_factory=set)


@dataclass(eq=False)
class ModuleV:
    """``import helpers``: a helper module of the job that was read."""

    unit: Unit


@dataclass(eq=False)
class Func:
    name: str
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
    defaults: dict[str, Any]
    registered: str | None = None
    unit: Unit | None = None


@dataclass(eq=False)
class UserClass:
    name: str
    line: int | None


@dataclass(eq=False)
class Executor:
    """A NeMo-Run executor: its class and keyword arguments (plain value, line); arguments not known are listed."""

    kind: str
    line: int | None
    kwargs: dict[str, tuple[Any, int | None]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Experiment:
    name: Any
    line: int | None
    tasks: list["Launch"] = field(default_factory=list)


@dataclass(eq=False)
class ArgParser:
    parser: argparse.ArgumentParser | None
    line: int | None
    why_not: str | None = None  # an add_argument this compiler could not reproduce
    lines: dict[str, Provenance] = field(default_factory=dict)  # dest -> where its add_argument is
    unknown_defaults: dict[str, "Unknown"] = field(default_factory=dict)  # dest -> its default, not known statically


_NO_DEFAULT = object()


@dataclass(eq=False)
class Namespace:
    values: dict[str, Any]


@dataclass(eq=False)
class Bound:
    """``obj.method`` before the call: the object (value) and, when it is a Node field, where it lives."""

    obj: Any
    name: str
    owner: Node | None = None
    fname: str | None = None


@dataclass(eq=False)
class Launch:
    """A point where the script starts a job: ``run.run``, ``exp.add``, ``llm.<api>(...)`` or ``run.cli.main``."""

    how: str  # run | experiment | direct | cli
    prov: Provenance
    task: Any  # a Node snapshot, an Unknown, or None (cli)
    executor: Any = None
    default_factory: Any = None  # cli: Func / Sym / Unknown / None
    env: dict[str, Any] | None = None  # cli: the module's names when run.cli.main ran
    conditional: str | None = None
    factory: str | None = None  # `run.run(f(), ...)`: the function of the file that built the task

    @property
    def kind(self) -> str:
        if isinstance(self.task, Node):
            return {"finetune": "finetune", "pretrain": "pretrain", "train": "pretrain"}.get(self.task.cls, "other")
        return "cli" if self.how == "cli" else "unknown"

    def label(self) -> str:
        what = self.task.cls if isinstance(self.task, Node) else ("run.cli.main" if self.how == "cli" else "a task not known statically")
        return f"{what} at {self.prov}"


class _Return(Exception):
    def __init__(self, value: Any):
        self.value = value


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Stop(Exception):
    """The script stops here (sys.exit, a raise on the path followed)."""


# ---------------------------------------------------------------------------------------------- the module

@dataclass
class RecipeModule:
    file: str
    tree: ast.Module
    source: PySource
    imports: dict[str, str] = field(default_factory=dict)
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    constants: dict[str, tuple[Any, int]] = field(default_factory=dict)
    default_factory: tuple[str, int] | None = None
    registered: dict[str, str] = field(default_factory=dict)
    executors: list[Executor] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    interp: "Interpreter | None" = None

    def factory_names(self) -> list[str]:
        return sorted(set(self.functions) | set(self.registered))

    @property
    def cli(self) -> Launch | None:
        return next((l for l in self.launches if l.how == "cli"), None)

    def names(self) -> list[str]:
        return sorted(set(self.functions) | set(self.imports) | set(self.constants))


def _dotted(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def parse_recipe_py(path: Path, display: str, diags: Diagnostics, argv: list[tuple[str, Provenance]] | None = None) -> RecipeModule | None:
    """Read and interpret a recipe file, script or notebook; None (with errors in ``diags``) when it cannot be read."""
    try:
        src = read_source(path, display)
    except SourceError as e:
        diags.error("NM300", f"cannot read {'notebook' if path.suffix == '.ipynb' else 'recipe file'}: {e}", file=display)
        return None
    return interpret_source(src, diags, argv, path=path)


def interpret_source(src: PySource, diags: Diagnostics, argv: list[tuple[str, Provenance]] | None = None,
                     path: Path | None = None) -> RecipeModule | None:
    display = src.display
    try:
        tree = parse(src)
    except SyntaxError as e:
        cell, line = src.locate(e.lineno)
        diags.error("NM301", f"Python syntax error: {e.msg}", file=display, line=line, col=e.offset, cell=cell)
        return None
    except (RecursionError, MemoryError, ValueError) as e:
        diags.error("NM301", f"cannot parse: {type(e).__name__}", file=display)
        return None
    mod = RecipeModule(file=display, tree=tree, source=src)
    interp = Interpreter(mod, diags, argv, path)
    mod.interp = interp
    interp.run_module()
    return mod


# ---------------------------------------------------------------------------------------------- interpreter

@dataclass
class Frame:
    locals: dict[str, Any]
    globals: dict[str, Any]
    local_names: frozenset[str] = frozenset()
    global_decls: set[str] = field(default_factory=set)
    module: bool = False

    def lookup(self, name: str) -> Any:
        if name in self.locals and (self.module or name not in self.global_decls):
            return self.locals[name]
        if not self.module and name in self.local_names and name not in self.global_decls:
            return _MISSING
        return self.globals.get(name, _MISSING)

    def bind(self, name: str, value: Any) -> None:
        if not self.module and name in self.global_decls:
            self.globals[name] = value
        else:
            self.locals[name] = value


_MISSING = object()


class Interpreter:
    def __init__(self, mod: RecipeModule, diags: Diagnostics, argv: list[tuple[str, Provenance]] | None = None, path: Path | None = None):
        self.mod = mod
        self.diags = diags
        self.argv = argv
        self.globals: dict[str, Any] = {"__name__": Knob(value="__main__", prov=Provenance(kind="derived", detail="__name__"))}
        self.main = Unit(mod.file, mod.source, self.globals, Path(os.path.abspath(path)) if path is not None else None)
        self.cur = self.main
        self.units: dict[Path, Unit | None] = {}
        self.depth = 0
        self.statements = 0
        self.marks: dict[int, list[Diagnostic]] = {}  # id(node) -> problems that matter if the node is in the job
        self._alive: list[Node] = []  # keeps marked nodes alive so that their ids stay theirs
        self.conditional: str | None = None
        self._df_line: int | None = None

    # -- positions --------------------------------------------------------------------------------------
    def prov(self, node: ast.AST | None, detail: str | None = None) -> Provenance:
        line = getattr(node, "lineno", None)
        cell, line = self.cur.source.locate(line)
        col = (getattr(node, "col_offset", -1) + 1) or None
        return Provenance(kind="recipe.py", file=self.cur.file, line=line, col=col, detail=detail, cell=cell)

    def where(self, node: ast.AST | None) -> dict:
        return self.prov(node).where()

    # -- marks -------------------------------------------------------------------------------------------
    def mark(self, value: Any, code: str, message: str, at: ast.AST, hint: str | None = None) -> None:
        """Attach a problem to every Node reachable from ``value``: reported only if the job contains it."""
        d = Diagnostic("error", code, message, hint=hint, **self.where(at))
        for node in _nodes_in(value):
            lst = self.marks.setdefault(id(node), [])
            if d not in lst:
                lst.append(d)
                self._alive.append(node)

    def node_diags(self, node: Node) -> Diagnostics:
        """A sink for problems found while building or changing ``node`` (reported if the job contains it)."""
        sink = Diagnostics()
        sink.items = self.marks.setdefault(id(node), [])
        self._alive.append(node)
        return sink

    def way_out(self) -> str:
        return way_out(self.mod)

    # -- module ----------------------------------------------------------------------------------------
    def run_module(self) -> None:
        fr = Frame(locals=self.globals, globals=self.globals, module=True)
        self.main.functions = {st.name for st in ast.walk(self.mod.tree) if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef))}
        try:
            self.exec_block(self.mod.tree.body, fr)
        except _Stop:
            pass
        except (_Return, _Break, _Continue):
            pass
        except RecursionError:
            self.diags.error("NM305", "the script nests too deeply to follow", file=self.mod.file)
        m = self.mod
        for name, v in self.globals.items():
            if isinstance(v, Func) and isinstance(v.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                m.functions[name] = v.node  # type: ignore[assignment]
            elif isinstance(v, Sym):
                m.imports[name] = v.dotted
            elif isinstance(v, Knob) and not isinstance(v.value, (Node,)) and name != "__name__":
                m.constants[name] = (v.value, v.prov.line or 0)
        cli = m.cli
        if cli is not None and isinstance(cli.default_factory, Func):
            m.default_factory = (cli.default_factory.name, self._df_line or cli.prov.line or 0)

    # -- statements ------------------------------------------------------------------------------------
    def exec_block(self, body: list[ast.stmt], fr: Frame) -> None:
        for st in body:
            self.statements += 1
            if self.statements > MAX_STATEMENTS:
                self.diags.error("NM305", f"more than {MAX_STATEMENTS:,} statements interpreted; giving up", **self.where(st))
                raise MigrateError(self.diags)
            self.exec(st, fr)

    def exec(self, st: ast.stmt, fr: Frame) -> None:
        if isinstance(st, ast.Expr):
            if isinstance(st.value, ast.Constant):
                return
            v = self.ev(st.value, fr)
            del v
            return
        if isinstance(st, ast.Assign):
            value = self.ev(st.value, fr)
            for t in st.targets:
                self.assign(t, value, fr, st)
            return
        if isinstance(st, ast.AnnAssign):
            if st.value is not None:
                self.assign(st.target, self.ev(st.value, fr), fr, st)
            return
        if isinstance(st, ast.AugAssign):
            self.aug_assign(st, fr)
            return
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.define(st, fr)
            return
        if isinstance(st, ast.ClassDef):
            fr.bind(st.name, UserClass(st.name, st.lineno))
            return
        if isinstance(st, (ast.Import, ast.ImportFrom)):
            self.imports(st, fr)
            return
        if isinstance(st, ast.Return):
            raise _Return(self.ev(st.value, fr) if st.value is not None else Knob(value=None, prov=self.prov(st)))
        if isinstance(st, ast.If):
            test = self.truth(self.ev(st.test, fr))
            if isinstance(test, Unknown):
                self.cannot_follow(st.body + st.orelse, fr, st, f"the condition `{_src(st.test)}` cannot be decided statically ({test.why})", test)
                return
            self.exec_block(st.body if test else st.orelse, fr)
            return
        if isinstance(st, (ast.For, ast.AsyncFor)):
            self.exec_for(st, fr)
            return
        if isinstance(st, ast.While):
            self.exec_while(st, fr)
            return
        if isinstance(st, (ast.With, ast.AsyncWith)):
            for item in st.items:
                v = self.ev(item.context_expr, fr)
                if item.optional_vars is not None:
                    self.assign(item.optional_vars, v, fr, st)
            self.exec_block(st.body, fr)
            return
        if isinstance(st, ast.Try) or type(st).__name__ == "TryStar":
            if st.handlers:  # type: ignore[attr-defined]
                self.diags.note("NM311", "try: the body is followed as if it raised nothing; except handlers are ignored", **self.where(st))
            self.exec_block(st.body + st.orelse + st.finalbody, fr)  # type: ignore[attr-defined]
            return
        if isinstance(st, ast.Pass):
            return
        if isinstance(st, ast.Break):
            raise _Break()
        if isinstance(st, ast.Continue):
            raise _Continue()
        if isinstance(st, ast.Global):
            fr.global_decls.update(st.names)
            return
        if isinstance(st, ast.Nonlocal):
            return
        if isinstance(st, ast.Delete):
            for t in st.targets:
                if isinstance(t, ast.Name):
                    fr.locals.pop(t.id, None)
                else:
                    self.cannot_follow([st], fr, st, "`del` of an attribute or item")
            return
        if isinstance(st, ast.Assert):
            return
        if isinstance(st, ast.Raise):
            if self.depth == 0:
                self.diags.warning("NM312", "the script raises here on the path the compiler followed; what follows is not read", **self.where(st))
                raise _Stop()
            raise _Stop()
        self.cannot_follow([st], fr, st, f"a `{type(st).__name__.lower()}` statement is not interpreted")

    # -- definitions -------------------------------------------------------------------------------------
    def define(self, st: ast.FunctionDef | ast.AsyncFunctionDef, fr: Frame) -> None:
        defaults: dict[str, Any] = {}
        a = st.args
        pos = a.posonlyargs + a.args
        for arg, d in zip(pos[len(pos) - len(a.defaults):], a.defaults):
            defaults[arg.arg] = self.ev(d, fr)
        for arg, d in zip(a.kwonlyargs, a.kw_defaults):
            if d is not None:
                defaults[arg.arg] = self.ev(d, fr)
        value: Any = Func(st.name, st, defaults, unit=self.cur)
        for dec in reversed(st.decorator_list):
            value = self.decorate(dec, value, st, fr)
        fr.bind(st.name, value)

    def decorate(self, dec: ast.expr, fn: Any, st: ast.stmt, fr: Frame) -> Any:
        call = dec if isinstance(dec, ast.Call) else None
        d = self.ev(call.func if call else dec, fr)
        full = d.dotted if isinstance(d, Sym) else None
        if full in _RUN_FACTORY_DECOR:
            name = fn.name if isinstance(fn, Func) else getattr(st, "name", "?")
            if call is not None:
                for kw in call.keywords:
                    if kw.arg == "name":
                        v = self.ev(kw.value, fr)
                        if isinstance(v, Knob) and isinstance(v.value, str):
                            name = v.value
            self.mod.registered[name] = getattr(st, "name", name)
            if isinstance(fn, Func):
                fn.registered = name
            return fn
        if full in _RUN_AUTOCONVERT or full in _TRANSPARENT_DECOR or full in ("functools.wraps",):
            return fn
        what = full or _src(dec)
        return Unknown(f"'{getattr(st, 'name', '?')}' is wrapped by the decorator {what}, which this compiler does not follow", self.prov(dec))

    def imports(self, st: ast.Import | ast.ImportFrom, fr: Frame) -> None:
        if isinstance(st, ast.Import):
            for a in st.names:
                local = self.local_module(a.name, 0, st)
                if a.asname:
                    fr.bind(a.asname, ModuleV(local) if local else Sym(a.name))
                else:
                    head = a.name.split(".")[0]
                    fr.bind(head, ModuleV(local) if local and "." not in a.name else Sym(head))
            return
        base = ("." * st.level) + (st.module or "")
        unit = self.local_module(st.module or "", st.level, st)
        for a in st.names:
            if a.name == "*":
                if unit is not None:
                    for k, v in unit.globals.items():
                        if not k.startswith("_"):
                            fr.bind(k, v)
                continue
            if unit is not None:
                if a.name in unit.globals:
                    fr.bind(a.asname or a.name, unit.globals[a.name])
                    continue
                sub = self.local_module(f"{st.module}.{a.name}" if st.module else a.name, st.level, st)
                fr.bind(a.asname or a.name, ModuleV(sub) if sub else
                        Unknown(f"'{a.name}' is not defined in {unit.file}", self.prov(st)))
                continue
            fr.bind(a.asname or a.name, Sym(f"{base}.{a.name}" if base else a.name))

    def local_module(self, dotted: str, level: int, st: ast.AST) -> Unit | None:
        """A module of the job itself (a .py file next to the script or in its package), read and interpreted once."""
        if self.cur.path is None or (level == 0 and dotted.split(".")[0] in _NOT_LOCAL):
            return None
        base = (self.cur.path if level else self.main.path).parent  # type: ignore[union-attr]
        for _ in range(max(level - 1, 0)):
            base = base.parent
        parts = [p for p in dotted.split(".") if p]
        cands = [base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")] if parts else [base / "__init__.py"]
        path = next((c for c in cands if c.is_file()), None)
        if path is None:
            return None
        key = path.resolve()
        if key in self.units:
            return self.units[key]  # a module being imported (a cycle) or already read
        if len(self.units) >= MAX_MODULES:
            return None
        display = os.path.relpath(path, self.main.path.parent) if self.main.path else path.name  # type: ignore[union-attr]
        self.units[key] = None
        try:
            src = read_source(path, display)
            tree = parse(src)
        except (SourceError, SyntaxError, ValueError, RecursionError, MemoryError) as e:
            self.diags.warning("NM354", f"the job's module {display} cannot be read ({e}); what it defines is not followed",
                               **self.where(st))
            return None
        name = ".".join(parts) or path.parent.name
        unit = Unit(display, src, {"__name__": Knob(value=name, prov=Provenance(kind="derived", detail="__name__"))}, path,
                    {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))})
        self.units[key] = unit
        saved, self.cur = self.cur, unit
        try:
            self.exec_block(tree.body, Frame(locals=unit.globals, globals=unit.globals, module=True))
        except (_Stop, _Return, _Break, _Continue):
            pass
        finally:
            self.cur = saved
        return unit

    # -- assignment --------------------------------------------------------------------------------------
    def assign(self, target: ast.AST, value: Any, fr: Frame, st: ast.stmt) -> None:
        if isinstance(target, ast.Name):
            fr.bind(target.id, value)
            return
        if isinstance(target, (ast.Tuple, ast.List)):
            items = self.unpack(value, len(target.elts), st)
            if isinstance(items, Unknown):
                for t in target.elts:
                    self.assign(t.value if isinstance(t, ast.Starred) else t, items, fr, st)
                return
            star = [i for i, t in enumerate(target.elts) if isinstance(t, ast.Starred)]
            if star:
                k = star[0]
                after = len(target.elts) - k - 1
                if len(items) < len(target.elts) - 1:
                    self.cannot_follow([st], fr, st, "unpacking a sequence of the wrong length")
                    return
                mid = items[k:len(items) - after]
                for t, v in zip(target.elts[:k], items[:k]):
                    self.assign(t, v, fr, st)
                self.assign(target.elts[k].value, Knob(value=[_unwrap(x) for x in mid], prov=self.prov(st)), fr, st)  # type: ignore[attr-defined]
                for t, v in zip(target.elts[k + 1:], items[len(items) - after:]):
                    self.assign(t, v, fr, st)
                return
            if len(items) != len(target.elts):
                self.cannot_follow([st], fr, st, f"unpacking {len(items)} values into {len(target.elts)} names")
                return
            for t, v in zip(target.elts, items):
                self.assign(t, v, fr, st)
            return
        if isinstance(target, ast.Attribute):
            base = self.ev(target.value, fr)
            if isinstance(base, Node):
                self.set_field(base, target.attr, value, st)
                return
            if isinstance(base, Unknown):
                return
            if isinstance(base, (Executor, Namespace, Experiment, ArgParser, UserClass, Func, Sym, ModuleV)):
                return  # attributes of objects that are not part of a job
            self.cannot_follow([st], fr, st, "assignment to an attribute of something that is not a run.Config")
            return
        if isinstance(target, ast.Subscript):
            self.assign_item(target, value, fr, st)
            return
        self.cannot_follow([st], fr, st, f"assignment to {type(target).__name__}")

    def assign_item(self, target: ast.Subscript, value: Any, fr: Frame, st: ast.stmt) -> None:
        owner, fname = self.owner_of(target.value, fr)
        container = self.ev(target.value, fr)
        key = self.ev(target.slice, fr)
        if isinstance(container, Unknown):
            return
        if not isinstance(container, Knob) or not isinstance(container.value, (dict, list)) or not isinstance(key, Knob):
            if isinstance(key, Unknown) and owner is not None:
                self.mark(owner, "NM342", f"'{fname}' gets an item whose key is not known statically ({key.why})", st, hint=self.way_out())
                return
            self.cannot_follow([st], fr, st, "assignment to an item of something that is not a known list or dict")
            return
        new = dict(container.value) if isinstance(container.value, dict) else list(container.value)
        try:
            new[key.value] = _unwrap(value)
        except (TypeError, IndexError, KeyError) as e:
            self.cannot_follow([st], fr, st, f"item assignment fails: {e}")
            return
        if owner is not None:
            self.set_field(owner, fname, Knob(value=new, prov=self.prov(st)), st)
        else:
            if isinstance(container.value, dict):
                container.value.clear()
                container.value.update(new)
            else:
                container.value[:] = new

    def aug_assign(self, st: ast.AugAssign, fr: Frame) -> None:
        opname = {ast.Add: "+=", ast.Sub: "-=", ast.Mult: "*=", ast.Div: "/="}.get(type(st.op))
        rhs = self.ev(st.value, fr)
        if isinstance(st.target, ast.Attribute):
            base = self.ev(st.target.value, fr)
            if isinstance(base, Node):
                cur = base.fields.get(st.target.attr) or schema.default_knob(base, st.target.attr)
                if isinstance(cur, Knob) and isinstance(rhs, Knob) and opname:
                    sink = self.node_diags(base)
                    schema.set_path(base, st.target.attr, Knob(value=_unwrap(rhs), prov=self.prov(st)), sink, self.where(st), op=opname)
                    return
                if isinstance(rhs, Unknown) or isinstance(cur, Knob) and isinstance(cur.value, Unknown):
                    self.set_field(base, st.target.attr, rhs if isinstance(rhs, Unknown) else cur.value, st)
                    return
            self.cannot_follow([st], fr, st, "augmented assignment to something that is not a known number or list")
            return
        cur = self.ev(st.target, fr)
        result = self.binop(st.op, cur, rhs, st)
        self.assign(st.target, result, fr, st)

    def set_field(self, node: Node, name: str, value: Any, st: ast.stmt) -> None:
        """``node.name = value`` with NeMo-Run's checks (recipe.a.b = v keeps the statement's line)."""
        sink = self.node_diags(node)
        where = self.where(st)
        if isinstance(value, Node):
            schema.set_path(node, name, value, sink, where)
            return
        if isinstance(value, Unknown) or _has_unknown(value):
            if not schema.accepts(node, name):
                schema.set_path(node, name, Knob(value=None, prov=self.prov(st)), sink, where)
                return
            unk = value if isinstance(value, Unknown) else _first_unknown(value)
            node.fields[name] = Knob(value=unk, prov=self.prov(st))
            return
        plain = _unwrap(value)
        if isinstance(value, (Sym, Func, UserClass)):
            plain = _sym_value(value)
        # a value from the launch line (argparse) keeps that origin; anything else is the statement's line
        prov = value.prov if isinstance(value, Knob) and value.prov.kind == "cli" else self.prov(st)
        schema.set_path(node, name, Knob(value=plain, prov=prov), sink, where)

    def unpack(self, value: Any, n: int, st: ast.AST) -> list[Any] | Unknown:
        if isinstance(value, Unknown):
            return value
        if isinstance(value, Knob) and isinstance(value.value, (list, tuple, str)):
            return [_wrap(x, value.prov) for x in value.value]
        if isinstance(value, Knob) and isinstance(value.value, dict):
            return [_wrap(x, value.prov) for x in value.value]
        return Unknown(f"cannot unpack {_describe(value)}", self.prov(st))

    # -- control flow --------------------------------------------------------------------------------------
    def exec_for(self, st: ast.For | ast.AsyncFor, fr: Frame) -> None:
        it = self.iterate(self.ev(st.iter, fr), st)
        if isinstance(it, Unknown):
            self.cannot_follow([st], fr, st, f"the loop over `{_src(st.iter)}` cannot be unrolled ({it.why})", it)
            return
        broke = False
        for item in it:
            self.assign(st.target, item, fr, st)
            try:
                self.exec_block(st.body, fr)
            except _Break:
                broke = True
                break
            except _Continue:
                continue
        if not broke:
            self.exec_block(st.orelse, fr)

    def exec_while(self, st: ast.While, fr: Frame) -> None:
        for _ in range(MAX_LOOP):
            test = self.truth(self.ev(st.test, fr))
            if isinstance(test, Unknown):
                self.cannot_follow([st], fr, st, f"the loop condition `{_src(st.test)}` cannot be decided statically ({test.why})", test)
                return
            if not test:
                self.exec_block(st.orelse, fr)
                return
            try:
                self.exec_block(st.body, fr)
            except _Break:
                return
            except _Continue:
                continue
        self.cannot_follow([st], fr, st, f"the loop runs more than {MAX_LOOP:,} times")

    def iterate(self, v: Any, st: ast.AST) -> list[Any] | Unknown:
        if isinstance(v, Unknown):
            return v
        if isinstance(v, Knob):
            x = v.value
            if isinstance(x, (list, tuple, str, dict, range, set, frozenset)):
                seq = list(x) if not isinstance(x, (set, frozenset)) else sorted(x, key=repr)
                if len(seq) > MAX_LOOP:
                    return Unknown(f"a loop of {len(seq):,} iterations", self.prov(st))
                return [_wrap(i, v.prov) for i in seq]
        return Unknown(f"iteration over {_describe(v)}", self.prov(st))

    def cannot_follow(self, body: list[ast.stmt], fr: Frame, at: ast.AST, why: str, cause: Unknown | None = None) -> None:
        """Code that is not followed: names it binds become Unknown, run.Configs it could change are marked."""
        unk = cause.caused(why, self.prov(at)) if cause is not None else Unknown(why, self.prov(at))
        touched: list[Any] = []
        for st in body:
            for n in ast.walk(st):
                if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.With, ast.AsyncWith, ast.NamedExpr)):
                    targets: list[ast.AST] = []
                    if isinstance(n, ast.Assign):
                        targets = list(n.targets)
                    elif isinstance(n, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.NamedExpr)):
                        targets = [n.target]
                    else:
                        targets = [i.optional_vars for i in n.items if i.optional_vars is not None]
                    for t in targets:
                        for leaf in ast.walk(t):
                            if isinstance(leaf, ast.Name) and isinstance(leaf.ctx, ast.Store):
                                fr.bind(leaf.id, unk)
                        if isinstance(t, (ast.Attribute, ast.Subscript)):
                            touched.append(self.peek(t.value, fr))
                elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    fr.bind(n.name, unk)
                elif isinstance(n, ast.Call):
                    callee = self.peek(n.func, fr)
                    if isinstance(callee, Sym) and _harmless(callee.dotted) or _harmless(_dotted(n.func) or ""):
                        continue
                    for a in list(n.args) + [k.value for k in n.keywords]:
                        touched.append(self.peek(a.value if isinstance(a, ast.Starred) else a, fr))
                    if isinstance(n.func, ast.Attribute):
                        touched.append(self.peek(n.func.value, fr))
                    if isinstance(callee, Func):
                        touched.extend(self.globals_read_by(callee))
                    if _dotted(n.func) and re.search(r"(^|\.)(run|add|finetune|main)$", _dotted(n.func) or ""):
                        self.conditional = self.conditional or why
                elif isinstance(n, ast.Delete):
                    for t in n.targets:
                        if isinstance(t, (ast.Attribute, ast.Subscript)):
                            touched.append(self.peek(t.value, fr))
        for v in touched:
            self.mark(v, "NM342", f"this code is not followed ({why}), and it may change the job", at, hint=self.way_out())

    def peek(self, expr: ast.AST, fr: Frame) -> Any:
        """The value of a name/attribute/constant-subscript path, without calling anything."""
        if isinstance(expr, ast.Name):
            v = fr.lookup(expr.id)
            return None if v is _MISSING else v
        if isinstance(expr, ast.Attribute):
            base = self.peek(expr.value, fr)
            if isinstance(base, Node):
                return base.fields.get(expr.attr)
            return None
        if isinstance(expr, ast.Subscript):
            return self.peek(expr.value, fr)
        return None

    def globals_read_by(self, fn: Func) -> list[Any]:
        g = (fn.unit or self.main).globals
        names = {n.id for n in ast.walk(fn.node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        return [g[n] for n in sorted(names) if n in g]

    def truth(self, v: Any) -> bool | Unknown:
        if isinstance(v, Unknown):
            return v
        if isinstance(v, Knob):
            x = v.value
            if _has_unknown(x):
                return _first_unknown(x)  # type: ignore[return-value]
            try:
                return bool(x)
            except Exception:  # noqa: BLE001
                return Unknown("truth value", v.prov)
        if isinstance(v, Namespace):
            return True
        return v is not None

    # -- functions ---------------------------------------------------------------------------------------
    def call_user(self, fn: Func, args: list[Any], kwargs: dict[str, Any], call: ast.AST) -> Any:
        if self.depth >= MAX_CALL_DEPTH:
            return Unknown(f"calls nested deeper than {MAX_CALL_DEPTH}", self.prov(call))
        unit = fn.unit or self.main
        a = fn.node.args
        pos = [x.arg for x in a.posonlyargs + a.args]
        kwonly = [x.arg for x in a.kwonlyargs]
        local: dict[str, Any] = {}
        extra_pos = args[len(pos):]
        for n, v in zip(pos, args):
            local[n] = v
        if extra_pos:
            if a.vararg is None:
                self.diags.error("NM304", f"{fn.name}() takes {len(pos)} positional arguments but {len(args)} were given", **self.where(call))
                return Unknown(f"bad call of {fn.name}()", self.prov(call))
            local[a.vararg.arg] = Knob(value=tuple(_unwrap(x) for x in extra_pos), prov=self.prov(call))
        elif a.vararg is not None:
            local[a.vararg.arg] = Knob(value=(), prov=self.prov(call))
        extra_kw: dict[str, Any] = {}
        for k, v in kwargs.items():
            if k in pos or k in kwonly:
                local[k] = v
            elif a.kwarg is not None:
                extra_kw[k] = _unwrap(v)
            else:
                hint = did_you_mean(k, pos + kwonly)
                where = v.prov.where() if isinstance(v, Knob) and v.prov.file else self.where(call)
                self.diags.error("NM304", f"{fn.name}() got an unexpected keyword argument '{k}'", hint=hint, **where)
                raise MigrateError(self.diags)
        if a.kwarg is not None:
            local[a.kwarg.arg] = Knob(value=extra_kw, prov=self.prov(call))
        for n, d in fn.defaults.items():
            local.setdefault(n, d)
        missing = [n for n in pos + kwonly if n not in local]
        if missing:
            self.diags.error("NM304", f"{fn.name}() is missing argument '{missing[0]}'", **self.where(call))
            raise MigrateError(self.diags)
        if isinstance(fn.node, ast.Lambda):
            fr = Frame(locals=local, globals=unit.globals)
            self.depth += 1
            saved, self.cur = self.cur, unit
            try:
                return self.ev(fn.node.body, fr)
            finally:
                self.depth -= 1
                self.cur = saved
        assigned = frozenset(_assigned_names(fn.node)) | frozenset(local)
        fr = Frame(locals=local, globals=unit.globals, local_names=assigned,
                   global_decls={n for st in ast.walk(fn.node) if isinstance(st, ast.Global) for n in st.names})
        self.depth += 1
        saved, self.cur = self.cur, unit
        try:
            self.exec_block(fn.node.body, fr)
        except _Return as r:
            self.cur = saved
            return self.returned(fn, r.value, call)
        except (_Break, _Continue):
            pass
        finally:
            self.depth -= 1
            self.cur = saved
        return Knob(value=None, prov=Provenance(kind="recipe.py", file=unit.file, line=unit.source.locate(fn.node.lineno)[1]))

    def returned(self, fn: Func, value: Any, call: ast.AST) -> Any:
        """A value not known that a call returns is reported at the call, with the reason found inside."""
        if isinstance(value, Unknown) and isinstance(call, ast.Call):
            here = self.prov(call)
            if (value.prov.file, value.prov.cell, value.prov.line) != (here.file, here.cell, here.line):
                return Unknown(value.why, here, value.origin(), value.via + (f"{fn.name}() called at {here}",))
        return value

    # -- expressions ---------------------------------------------------------------------------------------
    def ev(self, node: ast.AST, fr: Frame) -> Any:
        m = getattr(self, "ev_" + type(node).__name__, None)
        if m is None:
            return Unknown(f"{type(node).__name__} expressions are not interpreted", self.prov(node))
        return m(node, fr)

    def ev_Constant(self, node: ast.Constant, fr: Frame) -> Any:
        return Knob(value=node.value, prov=self.prov(node))

    def ev_Name(self, node: ast.Name, fr: Frame) -> Any:
        v = fr.lookup(node.id)
        if v is not _MISSING:
            return v
        if node.id in ("True", "False", "None"):
            return Knob(value={"True": True, "False": False, "None": None}[node.id], prov=self.prov(node))
        if node.id in _TYPES or node.id in _PURE_BUILTINS or node.id in ("print", "open", "__nm_fstr__", "__nm_fv__", "__nm_shell__", "format",
                                                                        "getattr", "setattr", "hasattr", "vars", "globals", "locals",
                                                                        "exec", "eval", "compile", "input", "iter", "next", "map", "filter",
                                                                        "type", "callable", "id", "super", "object", "Exception"):
            return Sym(f"builtins.{node.id}")
        if node.id in self.cur.functions:
            return Unknown(f"'{node.id}' is used before its definition runs", self.prov(node))
        return Unknown(f"name '{node.id}' is not defined on the path followed", self.prov(node))

    def ev_Attribute(self, node: ast.Attribute, fr: Frame) -> Any:
        base = self.ev(node.value, fr)
        if isinstance(base, Node):
            child = base.fields.get(node.attr)
            if child is None:
                child = schema.default_knob(base, node.attr)
            if child is None:
                if not schema.accepts(base, node.attr):
                    self.node_diags(base)  # the error is reported at use
                    return Unknown(f"'{node.attr}' is not a parameter of {base.cls}", self.prov(node))
                return Unknown(f"'{node.attr}' is not set on {base.cls}", self.prov(node))
            return child
        if isinstance(base, Sym):
            return self.symbol(f"{base.dotted}.{node.attr}", node)
        if isinstance(base, ModuleV):
            if node.attr in base.unit.globals:
                return base.unit.globals[node.attr]
            return Unknown(f"'{node.attr}' is not defined in {base.unit.file}", self.prov(node))
        if isinstance(base, Namespace):
            if node.attr in base.values:
                return base.values[node.attr]
            return Unknown(f"the parsed arguments have no '{node.attr}'", self.prov(node))
        if isinstance(base, Unknown):
            return base
        if isinstance(base, Knob) or isinstance(base, (Experiment, ArgParser, Executor)):
            return Bound(base, node.attr)
        return Unknown(f"attribute '{node.attr}' of {_describe(base)}", self.prov(node))

    def symbol(self, dotted: str, node: ast.AST) -> Any:
        for suffix, val in SYMBOLS.items():
            if dotted == suffix or dotted.endswith("." + suffix):
                return Knob(value=val, prov=self.prov(node))
        if dotted in ("sys.argv",):
            return Unknown("sys.argv (the command line) is read at run time", self.prov(node))
        return Sym(dotted)

    def ev_Subscript(self, node: ast.Subscript, fr: Frame) -> Any:
        base = self.ev(node.value, fr)
        key = self.ev(node.slice, fr)
        if isinstance(base, Unknown):
            return base
        if isinstance(base, Sym):
            if base.dotted in ("os.environ",):
                return Unknown(f"reads the environment variable {_unwrap(key)!r} at run time", self.prov(node))
            return base  # typing subscripts: run.Config[X], Optional[int]
        if isinstance(key, Unknown):
            return key
        if isinstance(base, Knob) and isinstance(key, Knob):
            try:
                x = base.value[key.value]
            except (KeyError, IndexError, TypeError, ValueError) as e:
                return Unknown(f"`{_src(node)}` fails: {type(e).__name__}: {e}", self.prov(node))
            return _wrap(x, base.prov)
        if isinstance(base, Node) and isinstance(key, Knob) and isinstance(key.value, str):
            return Unknown("item access on a run.Config", self.prov(node))
        return Unknown(f"item of {_describe(base)}", self.prov(node))

    def ev_Slice(self, node: ast.Slice, fr: Frame) -> Any:
        parts = [self.ev(p, fr) if p is not None else Knob(value=None, prov=self.prov(node)) for p in (node.lower, node.upper, node.step)]
        for p in parts:
            if not isinstance(p, Knob):
                return p if isinstance(p, Unknown) else Unknown("slice", self.prov(node))
        return Knob(value=slice(*[p.value for p in parts]), prov=self.prov(node))

    def ev_Index(self, node: Any, fr: Frame) -> Any:  # Python < 3.9 compatibility shape
        return self.ev(node.value, fr)

    def _seq(self, elts: list[ast.expr], fr: Frame, node: ast.AST) -> list[Any] | Unknown:
        items: list[Any] = []
        for e in elts:
            if isinstance(e, ast.Starred):
                v = self.ev(e.value, fr)
                it = self.iterate(v, e)
                if isinstance(it, Unknown):
                    return it
                items.extend(_unwrap(x) for x in it)
                continue
            items.append(_unwrap(self.ev(e, fr)))
        return items

    def ev_List(self, node: ast.List, fr: Frame) -> Any:
        items = self._seq(node.elts, fr, node)
        return items if isinstance(items, Unknown) else self.guard(Knob(value=items, prov=self.prov(node)), node)

    def ev_Tuple(self, node: ast.Tuple, fr: Frame) -> Any:
        items = self._seq(node.elts, fr, node)
        return items if isinstance(items, Unknown) else self.guard(Knob(value=tuple(items), prov=self.prov(node)), node)

    def ev_Set(self, node: ast.Set, fr: Frame) -> Any:
        items = self._seq(node.elts, fr, node)
        if isinstance(items, Unknown):
            return items
        try:
            return Knob(value=set(items), prov=self.prov(node))
        except TypeError:
            return Unknown("a set of unhashable values", self.prov(node))

    def ev_Dict(self, node: ast.Dict, fr: Frame) -> Any:
        out: dict[Any, Any] = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                inner = self.ev(v, fr)
                if isinstance(inner, Knob) and isinstance(inner.value, dict):
                    out.update(inner.value)
                    continue
                return inner if isinstance(inner, Unknown) else Unknown("dict unpacking of something not known", self.prov(v))
            kv = self.ev(k, fr)
            if not isinstance(kv, Knob):
                return kv if isinstance(kv, Unknown) else Unknown("a dict key that is not a plain value", self.prov(k))
            try:
                out[kv.value] = _unwrap(self.ev(v, fr))
            except TypeError:
                return Unknown("an unhashable dict key", self.prov(k))
        return self.guard(Knob(value=out, prov=self.prov(node)), node)

    def ev_JoinedStr(self, node: ast.JoinedStr, fr: Frame) -> Any:
        parts: list[str] = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
                continue
            if isinstance(v, ast.FormattedValue):
                x = self.ev(v.value, fr)
                spec = self.ev(v.format_spec, fr) if v.format_spec is not None else Knob(value="", prov=self.prov(v))
                r = self.format_value(x, {-1: "", 115: "s", 114: "r", 97: "a"}.get(v.conversion, ""), spec, v)
                if not isinstance(r, Knob):
                    return r
                parts.append(r.value)
        return self.guard(Knob(value="".join(parts), prov=self.prov(node)), node)

    def format_value(self, x: Any, conv: str, spec: Any, node: ast.AST) -> Any:
        if isinstance(x, Unknown):
            return x
        if isinstance(spec, Unknown):
            return spec
        if not isinstance(x, Knob) or not isinstance(spec, Knob) or _has_unknown(x.value):
            return Unknown(f"formatting {_describe(x)}", self.prov(node))
        val = x.value
        try:
            if conv == "r":
                val = repr(val)
            elif conv == "s":
                val = str(val)
            elif conv == "a":
                val = ascii(val)
            return Knob(value=format(val, str(spec.value)), prov=self.prov(node))
        except (ValueError, TypeError) as e:
            return Unknown(f"formatting fails: {e}", self.prov(node))

    def ev_FormattedValue(self, node: ast.FormattedValue, fr: Frame) -> Any:
        return self.ev_JoinedStr(ast.JoinedStr(values=[node]), fr)

    def ev_BinOp(self, node: ast.BinOp, fr: Frame) -> Any:
        return self.binop(node.op, self.ev(node.left, fr), self.ev(node.right, fr), node)

    def binop(self, op: ast.operator, a: Any, b: Any, node: ast.AST) -> Any:
        if isinstance(a, Unknown):
            return a
        if isinstance(b, Unknown):
            return b
        fn = _BIN.get(type(op))
        if fn is None or not isinstance(a, Knob) or not isinstance(b, Knob):
            return Unknown(f"`{_src(node)}` on {_describe(a)} and {_describe(b)}", self.prov(node))
        x, y = a.value, b.value
        if _has_unknown(x) or _has_unknown(y):
            return _first_unknown(x) or _first_unknown(y)
        if isinstance(op, ast.Pow) and isinstance(y, (int, float)) and abs(y) > 64:
            return Unknown("an exponent too large to fold", self.prov(node))
        if isinstance(op, ast.Mult):
            for s, k in ((x, y), (y, x)):
                if isinstance(s, (str, list, tuple)) and isinstance(k, int) and len(s) * max(k, 0) > MAX_STR:
                    return Unknown("a value too large", self.prov(node))
        if isinstance(op, ast.LShift) and isinstance(y, int) and y > 4096:
            return Unknown("a number too large", self.prov(node))
        try:
            r = fn(x, y)
        except Exception as e:  # noqa: BLE001 - the same expression would fail when NeMo runs it
            return Unknown(f"`{_src(node)}` fails: {type(e).__name__}: {e}", self.prov(node))
        return self.guard(Knob(value=r, prov=self.prov(node)), node)

    def guard(self, k: Knob, node: ast.AST) -> Any:
        x = k.value
        if isinstance(x, int) and not isinstance(x, bool) and x.bit_length() > 4096:
            return Unknown("a number too large", self.prov(node))
        if _size(x, MAX_VALUE_ITEMS) > MAX_VALUE_ITEMS:
            return Unknown(f"a value of more than {MAX_VALUE_ITEMS:,} items", self.prov(node))
        return k

    def ev_UnaryOp(self, node: ast.UnaryOp, fr: Frame) -> Any:
        v = self.ev(node.operand, fr)
        if isinstance(node.op, ast.Not):
            t = self.truth(v)
            return t if isinstance(t, Unknown) else Knob(value=not t, prov=self.prov(node))
        if not isinstance(v, Knob):
            return v if isinstance(v, Unknown) else Unknown(f"`{_src(node)}`", self.prov(node))
        try:
            r = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}[type(node.op)](v.value)
        except Exception as e:  # noqa: BLE001
            return Unknown(f"`{_src(node)}` fails: {e}", self.prov(node))
        return Knob(value=r, prov=self.prov(node))

    def ev_BoolOp(self, node: ast.BoolOp, fr: Frame) -> Any:
        last: Any = None
        for e in node.values:
            last = self.ev(e, fr)
            t = self.truth(last)
            if isinstance(t, Unknown):
                return t
            if isinstance(node.op, ast.And) and not t:
                return last
            if isinstance(node.op, ast.Or) and t:
                return last
        return last

    def ev_Compare(self, node: ast.Compare, fr: Frame) -> Any:
        left = self.ev(node.left, fr)
        for op, comp in zip(node.ops, node.comparators):
            right = self.ev(comp, fr)
            r = self.compare(op, left, right, node)
            if not isinstance(r, bool):
                return r
            if not r:
                return Knob(value=False, prov=self.prov(node))
            left = right
        return Knob(value=True, prov=self.prov(node))

    def compare(self, op: ast.cmpop, a: Any, b: Any, node: ast.AST) -> Any:
        if isinstance(op, (ast.Is, ast.IsNot)):
            def ident(v: Any) -> Any:
                if isinstance(v, Knob) and (v.value is None or isinstance(v.value, bool)):
                    return v.value
                if isinstance(v, Unknown):
                    return v
                return ("obj", id(v.value) if isinstance(v, Knob) else id(v))
            x, y = ident(a), ident(b)
            if isinstance(x, Unknown) or isinstance(y, Unknown):
                return x if isinstance(x, Unknown) else y
            same = x is y if not isinstance(x, tuple) else x == y
            return same if isinstance(op, ast.Is) else not same
        if isinstance(a, Unknown):
            return a
        if isinstance(b, Unknown):
            return b
        if isinstance(a, Knob) and isinstance(b, Knob):
            if _has_unknown(a.value) or _has_unknown(b.value):
                return _first_unknown(a.value) or _first_unknown(b.value)
            fn = _CMP.get(type(op))
            try:
                return bool(fn(a.value, b.value)) if fn else Unknown("comparison", self.prov(node))
            except Exception as e:  # noqa: BLE001
                return Unknown(f"`{_src(node)}` fails: {e}", self.prov(node))
        if isinstance(op, (ast.Eq, ast.NotEq)):
            if (isinstance(a, Knob) and a.value is None) or (isinstance(b, Knob) and b.value is None):
                return isinstance(op, ast.NotEq)  # an object compared with None
            if isinstance(a, Node) and isinstance(b, Node):
                return (a is b) == isinstance(op, ast.Eq)
        return Unknown(f"`{_src(node)}` compares {_describe(a)} with {_describe(b)}", self.prov(node))

    def ev_IfExp(self, node: ast.IfExp, fr: Frame) -> Any:
        t = self.truth(self.ev(node.test, fr))
        if isinstance(t, Unknown):
            return t
        return self.ev(node.body if t else node.orelse, fr)

    def ev_NamedExpr(self, node: ast.NamedExpr, fr: Frame) -> Any:
        v = self.ev(node.value, fr)
        fr.bind(node.target.id, v)
        return v

    def ev_Lambda(self, node: ast.Lambda, fr: Frame) -> Any:
        defaults: dict[str, Any] = {}
        a = node.args
        pos = a.posonlyargs + a.args
        for arg, d in zip(pos[len(pos) - len(a.defaults):], a.defaults):
            defaults[arg.arg] = self.ev(d, fr)
        return Func("<lambda>", node, defaults, unit=self.cur)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp, fr: Frame) -> Any:
        scope = Frame(locals=dict(fr.locals) if not fr.module else {}, globals=fr.globals if not fr.module else fr.locals)
        results: list[Any] = []

        def rec(i: int) -> Unknown | None:
            if i == len(node.generators):
                if isinstance(node, ast.DictComp):
                    k, v = self.ev(node.key, scope), self.ev(node.value, scope)
                    if not isinstance(k, Knob):
                        return k if isinstance(k, Unknown) else Unknown("a dict key that is not a plain value", self.prov(node))
                    results.append((k.value, _unwrap(v)))
                else:
                    results.append(_unwrap(self.ev(node.elt, scope)))
                return None
            g = node.generators[i]
            it = self.iterate(self.ev(g.iter, scope), g.iter)
            if isinstance(it, Unknown):
                return it
            for item in it:
                self.assign(g.target, item, scope, node)  # type: ignore[arg-type]
                ok = True
                for cond in g.ifs:
                    t = self.truth(self.ev(cond, scope))
                    if isinstance(t, Unknown):
                        return t
                    ok = ok and t
                if ok:
                    u = rec(i + 1)
                    if u is not None:
                        return u
                if len(results) > MAX_LOOP:
                    return Unknown("a comprehension of too many items", self.prov(node))
            return None

        u = rec(0)
        if u is not None:
            return u
        if isinstance(node, ast.DictComp):
            try:
                return Knob(value=dict(results), prov=self.prov(node))
            except TypeError:
                return Unknown("an unhashable dict key", self.prov(node))
        if isinstance(node, ast.SetComp):
            try:
                return Knob(value=set(results), prov=self.prov(node))
            except TypeError:
                return Unknown("a set of unhashable values", self.prov(node))
        return Knob(value=results if isinstance(node, ast.ListComp) else tuple(results), prov=self.prov(node))

    ev_ListComp = ev_SetComp = ev_GeneratorExp = ev_DictComp = _comprehension

    def ev_Starred(self, node: ast.Starred, fr: Frame) -> Any:
        return self.ev(node.value, fr)

    # -- calls ---------------------------------------------------------------------------------------------
    def ev_Call(self, call: ast.Call, fr: Frame) -> Any:
        if isinstance(call.func, ast.Attribute) and call.func.attr == "fit" and call.args:
            # `trainer.fit(model)`: the script trains in its own Python (NeMo 1.0 / Lightning API), not through a launch
            self.mod.launches.append(Launch("fit", self.prov(call), Unknown(
                f"`{_src(call)}` trains in the script's own Python (a Lightning/NeMo 1.0 model built and fitted in code)", self.prov(call)),
                conditional=self.conditional))
        callee = self.ev(call.func, fr)
        if isinstance(callee, Bound):
            return self.call_method(callee, call, fr)
        args, kwargs = self.arguments(call, fr)
        if isinstance(args, Unknown):
            self.mark_args(call, fr, f"its arguments are not known statically ({args.why})")
            return args
        return self.call_value(callee, args, kwargs, call, fr)

    def arguments(self, call: ast.Call, fr: Frame) -> tuple[Any, dict[str, Any]]:
        args: list[Any] = []
        for a in call.args:
            if isinstance(a, ast.Starred):
                it = self.iterate(self.ev(a.value, fr), a)
                if isinstance(it, Unknown):
                    return it, {}
                args.extend(it)
            else:
                args.append(self.ev(a, fr))
        kwargs: dict[str, Any] = {}
        for kw in call.keywords:
            v = self.ev(kw.value, fr)
            if kw.arg is None:
                if isinstance(v, Knob) and isinstance(v.value, dict) and all(isinstance(k, str) for k in v.value):
                    for k, x in v.value.items():
                        kwargs[k] = _wrap(x, v.prov)
                    continue
                return (v if isinstance(v, Unknown) else Unknown("**kwargs of something not known statically", self.prov(kw.value))), {}
            kprov = self.prov(kw.value)
            if isinstance(v, Knob) and v.prov.kind != "recipe.py":
                v = Knob(value=v.value, prov=kprov)
            kwargs[kw.arg] = v
        return args, kwargs

    def mark_args(self, call: ast.Call, fr: Frame, why: str) -> None:
        vals = [self.peek(a.value if isinstance(a, ast.Starred) else a, fr) for a in call.args]
        vals += [self.peek(k.value, fr) for k in call.keywords]
        if isinstance(call.func, ast.Attribute):
            vals.append(self.peek(call.func.value, fr))
        name = _src(call.func)
        for v in vals:
            self.mark(v, "NM341", f"the job is passed to `{name}(...)`, and {why}", call, hint=self.way_out())

    def call_value(self, callee: Any, args: list[Any], kwargs: dict[str, Any], call: ast.Call, fr: Frame) -> Any:
        if isinstance(callee, Func):
            return self.call_user(callee, args, kwargs, call)
        if isinstance(callee, Sym):
            return self.call_symbol(callee.dotted, args, kwargs, call, fr)
        if isinstance(callee, UserClass):
            self.mark(args + list(kwargs.values()), "NM341", f"the job is passed to the class {callee.name} defined in the script, "
                      "which this compiler does not follow", call, hint=self.way_out())
            return Unknown(f"an instance of {callee.name}, a class defined in the script", self.prov(call))
        why = callee.why if isinstance(callee, Unknown) else f"a call of {_describe(callee)}"
        self.mark(args + list(kwargs.values()), "NM341", f"the job is passed to `{_src(call.func)}(...)`, which this compiler cannot follow ({why})",
                  call, hint=self.way_out())
        return callee if isinstance(callee, Unknown) else Unknown(why, self.prov(call))

    def call_method(self, b: Bound, call: ast.Call, fr: Frame) -> Any:
        obj, name = b.obj, b.name
        if isinstance(obj, Experiment):
            args, kwargs = self.arguments(call, fr)
            if name == "add":
                if isinstance(args, Unknown) or not args:
                    task = args if isinstance(args, Unknown) else Unknown("exp.add() without a task", self.prov(call))
                else:
                    task = args[0]
                launch = self.launch("experiment", task, kwargs.get("executor", args[1] if not isinstance(args, Unknown) and len(args) > 1 else None), call)
                obj.tasks.append(launch)
                return Knob(value=len(obj.tasks) - 1, prov=self.prov(call))
            return Knob(value=None, prov=self.prov(call))
        if isinstance(obj, ArgParser):
            return self.argparse_call(obj, name, call, fr)
        if isinstance(obj, Knob):
            owner, fname = self.owner_of(call.func.value, fr) if isinstance(call.func, ast.Attribute) else (None, None)
            args, kwargs = self.arguments(call, fr)
            if isinstance(args, Unknown):
                if owner is not None and name in _MUTATE_METHODS:
                    self.mark(owner, "NM341", f"'{fname}' is changed with arguments not known statically ({args.why})", call, hint=self.way_out())
                return args
            return self.plain_method(obj, name, args, kwargs, call, owner, fname)
        return Unknown(f"method {name}() of {_describe(obj)}", self.prov(call))

    def owner_of(self, expr: ast.AST, fr: Frame) -> tuple[Node | None, str | None]:
        if isinstance(expr, ast.Attribute):
            base = self.peek(expr.value, fr)
            if isinstance(base, Node):
                return base, expr.attr
        return None, None

    def plain_method(self, obj: Knob, name: str, args: list[Any], kwargs: dict[str, Any], call: ast.Call,
                     owner: Node | None, fname: str | None) -> Any:
        x = obj.value
        plain_args = [_unwrap(a) for a in args]
        plain_kw = {k: _unwrap(v) for k, v in kwargs.items()}
        if any(_has_unknown(a) for a in plain_args + list(plain_kw.values())):
            u = next(_first_unknown(a) for a in plain_args + list(plain_kw.values()) if _has_unknown(a))
            if owner is not None and name in _MUTATE_METHODS:
                self.mark(owner, "NM341", f"'{fname}' is changed with a value not known statically ({u.why})", call, hint=self.way_out())
            return u
        if isinstance(x, str) and name in _STR_METHODS:
            try:
                return self.guard(Knob(value=getattr(x, name)(*plain_args, **plain_kw), prov=self.prov(call)), call)
            except Exception as e:  # noqa: BLE001
                return Unknown(f"{name}() fails: {e}", self.prov(call))
        if isinstance(x, (dict, list, tuple)) and name in _READ_METHODS:
            try:
                r = getattr(x, name)(*plain_args, **plain_kw)
            except Exception as e:  # noqa: BLE001
                return Unknown(f"{name}() fails: {e}", self.prov(call))
            if name in ("keys", "values", "items"):
                r = list(r)
            return _wrap(r, obj.prov if name == "get" else self.prov(call))
        if isinstance(x, (dict, list)) and name in _MUTATE_METHODS:
            new = dict(x) if isinstance(x, dict) else list(x)
            try:
                r = getattr(new, name)(*plain_args, **plain_kw)
            except Exception as e:  # noqa: BLE001
                return Unknown(f"{name}() fails: {e}", self.prov(call))
            if owner is not None:
                sink = self.node_diags(owner)
                schema.set_path(owner, fname, obj.with_value(new, self.prov(call, f"{fname}.{name}(...)")), sink, self.where(call))  # type: ignore[arg-type]
            else:
                if isinstance(x, dict):
                    x.clear()
                    x.update(new)
                else:
                    x[:] = new
            return _wrap(r, self.prov(call))
        return Unknown(f"{type(x).__name__}.{name}()", self.prov(call))

    # -- known functions ---------------------------------------------------------------------------------
    def call_symbol(self, full: str, args: list[Any], kwargs: dict[str, Any], call: ast.Call, fr: Frame) -> Any:
        cprov = self.prov(call, full.rsplit(".", 1)[-1] + "()")
        leaf = full.rsplit(".", 1)[-1]
        if full.startswith("builtins."):
            return self.call_builtin(full[9:], args, kwargs, call)
        if full in _ENV_READS:
            name = _unwrap(args[0]) if args else "?"
            return Unknown(f"reads the environment variable {name!r} at run time", self.prov(call))
        if full in _RUN_CONFIG or full in _RUN_PARTIAL:
            if not args:
                return Unknown("run.Config() without a class", self.prov(call))
            target = args[0]
            tname = target.dotted if isinstance(target, Sym) else (f"__main__.{target.name}" if isinstance(target, (UserClass, Func)) else None)
            if tname is None:
                return Unknown("the configured class is not known statically", self.prov(call))
            if tname.startswith("builtins."):
                tname = tname.split(".", 1)[1]
            return self.make_node(tname, args[1:], kwargs, call, partial=full in _RUN_PARTIAL)
        if full in _RUN_RUN:
            task = args[0] if args else kwargs.get("fn_or_script", Unknown("run.run() without a task", self.prov(call)))
            self.launch("run", task, kwargs.get("executor"), call)
            return Knob(value=None, prov=self.prov(call))
        if full in _RUN_EXPERIMENT:
            return Experiment(_unwrap(args[0]) if args else None, call.lineno)
        if full in _RUN_MAIN:
            self.cli_main(args, kwargs, call, fr)
            return Knob(value=None, prov=self.prov(call))
        if leaf in _EXECUTORS and (full.startswith("nemo_run") or full == leaf):
            return self.executor(leaf, kwargs, call)
        if full in ("argparse.ArgumentParser",):
            return ArgParser(argparse.ArgumentParser(prog=Path(self.mod.file).name, add_help=False, exit_on_error=False), call.lineno)
        if full in ("sys.exit", "exit", "quit", "os._exit"):
            raise _Stop()
        m = _LLM_API.match(full)
        if m and (full.startswith("nemo.collections.llm") or full.startswith("llm.")):
            api = m.group(1)
            node = Node(cls={"train": "pretrain"}.get(api, api), partial=True, prov=cprov)
            if api in ("finetune", "pretrain", "train"):
                node = self.make_node(full, args, kwargs, call, partial=True)
            self.launch("direct", node, None, call)
            return Knob(value=None, prov=self.prov(call))
        rm = _RECIPE_FN.search(full)
        if rm and (recipes.info(rm.group(1)) is not None or full.startswith(("nemo.collections.llm", "llm."))):
            return self.recipe_call(rm.group(1), rm.group(2), args, kwargs, call, cprov)
        if leaf == "timedelta":
            return Knob(value="timedelta(" + ", ".join(f"{k}={_unwrap(v)}" for k, v in kwargs.items()) + ")", prov=cprov)
        if leaf in ("Path", "PosixPath") and full in ("pathlib.Path", "pathlib.PosixPath", "Path"):
            vals = [_unwrap(a) for a in args]
            if all(isinstance(v, str) for v in vals) and vals:
                return Knob(value=posixpath.join(*vals), prov=cprov)
            return Unknown("Path(...) of values not known statically", self.prov(call))
        if full in ("os.path.join", "posixpath.join"):
            vals = [_unwrap(a) for a in args]
            if all(isinstance(v, str) for v in vals) and vals:
                return Knob(value=posixpath.join(*vals), prov=cprov)
            return Unknown("os.path.join(...) of values not known statically", self.prov(call))
        if full in ("os.path.basename", "os.path.dirname", "os.path.expanduser", "os.path.abspath"):
            return Unknown(f"{full}() depends on the machine", self.prov(call))
        if leaf in knowledge.factories() and (full.startswith("nemo.") or "." not in full or full.startswith("llm.")):
            if args:
                return Unknown(f"positional arguments to {leaf}() are not followed; use keywords", self.prov(call))
            kw_knobs = {k: (v if isinstance(v, (Knob, Node)) else Knob(value=_unwrap(v), prov=cprov)) for k, v in kwargs.items()}
            if any(_has_unknown(v.value) for v in kw_knobs.values() if isinstance(v, Knob)):
                return Unknown(f"{leaf}() with arguments not known statically", self.prov(call))
            try:
                return schema.call_factory(leaf, kw_knobs, cprov)
            except schema.FactoryError as e:
                self.diags.error("NM306", str(e), **self.where(call))
                raise MigrateError(self.diags) from None
        key = schema.resolve_class(full)
        if key is not None and (full.startswith(("nemo.", "megatron.", "lightning.", "llm.", "nl.")) or key != "ModelConfig"):
            return self.make_node(full, args, kwargs, call, partial=False)
        if _harmless(full):
            return Knob(value=None, prov=self.prov(call))
        what = f"`{full}`" + (" (imported from a module this compiler does not read)" if full.split(".")[0] not in ("nemo", "nemo_run", "megatron", "lightning", "torch", "os", "sys") else "")
        self.mark(list(args) + list(kwargs.values()), "NM341", f"the job is passed to {what}, which this compiler cannot follow",
                  call, hint=self.way_out())
        return Unknown(f"the result of {what}", self.prov(call))

    def call_builtin(self, name: str, args: list[Any], kwargs: dict[str, Any], call: ast.Call) -> Any:
        cprov = self.prov(call, name + "()")
        if name in ("print",):
            return Knob(value=None, prov=cprov)
        if name == "__nm_fstr__":
            out: list[str] = []
            for a in args:
                if not isinstance(a, Knob) or not isinstance(a.value, str):
                    return a if isinstance(a, Unknown) else Unknown("f-string", self.prov(call))
                out.append(a.value)
            return Knob(value="".join(out), prov=self.prov(call))
        if name == "__nm_fv__":
            return self.format_value(args[0], _unwrap(args[1]), args[2], call)
        if name == "__nm_shell__":  # a notebook `!command` runs here: note the plain values IPython can expand in it
            i = _unwrap(args[0]) if args else None
            shells = self.mod.source.shell
            if isinstance(i, int) and 0 <= i < len(shells) and self.cur is self.main:
                shells[i].names = {k: v.value for k, v in self.globals.items()
                                   if isinstance(v, Knob) and isinstance(v.value, (str, int, float)) and not isinstance(v.value, bool)}
            return Knob(value=None, prov=cprov)
        vals = [_unwrap(a) for a in args]
        kw = {k: _unwrap(v) for k, v in kwargs.items()}
        if any(_has_unknown(v) for v in vals + list(kw.values())):
            return next(_first_unknown(v) for v in vals + list(kw.values()) if _has_unknown(v))
        if name == "dict":
            if args and not (len(args) == 1 and isinstance(vals[0], (dict, list, tuple))):
                return Unknown("dict() of this argument", self.prov(call))
            try:
                return Knob(value=dict(*vals, **kw), prov=cprov)
            except (TypeError, ValueError) as e:
                return Unknown(f"dict() fails: {e}", self.prov(call))
        if name in _TYPES or name in _PURE_BUILTINS or name == "format":
            if any(isinstance(a, (Node, Func, Sym)) for a in args):
                return Unknown(f"{name}() of an object", self.prov(call))
            fn = _TYPES.get(name) or getattr(builtins, name)
            if name == "range" and any(not isinstance(v, int) for v in vals):
                return Unknown("range() of values that are not integers", self.prov(call))
            try:
                r = fn(*vals, **kw)
                if name in ("enumerate", "zip", "reversed", "map", "filter"):
                    r = list(r)
                    if len(r) > MAX_LOOP:
                        return Unknown("a sequence too long", self.prov(call))
                if name == "range" and len(r) > MAX_LOOP:
                    return Unknown("a range too long to unroll", self.prov(call))
            except Exception as e:  # noqa: BLE001
                return Unknown(f"{name}() fails: {type(e).__name__}: {e}", self.prov(call))
            return self.guard(Knob(value=r, prov=cprov), call)
        if name in ("open", "input", "exec", "eval", "compile", "vars", "globals", "locals", "setattr", "getattr", "hasattr",
                    "iter", "next", "map", "filter", "type", "callable", "id", "super", "object", "Exception"):
            if name == "setattr":
                self.mark(args[:1], "NM341", "setattr() on the job is not followed", call, hint=self.way_out())
            return Unknown(f"{name}() is not interpreted", self.prov(call))
        return Unknown(f"{name}()", self.prov(call))

    def recipe_call(self, name: str, fn: str, args: list[Any], kwargs: dict[str, Any], call: ast.Call, cprov: Provenance) -> Any:
        if fn == "pretrain_recipe":
            node = Node(cls="pretrain", partial=True, prov=self.prov(call, f"llm.{name}.pretrain_recipe()"))
            node.origin = name
            return node
        if fn in ("model", "tokenizer"):
            info = recipes.info(name)
            if fn == "tokenizer" or info is None:
                return Unknown(f"llm.{name}.{fn}()", self.prov(call))
            cfg = Node(cls=info.get("config_class") or "ModelConfig", prov=self.prov(call, f"llm.{name}.model()"))
            model = Node(cls=schema.node_class(info.get("model_class") or "GPTModel")[0], prov=cfg.prov, fields={"config": cfg})
            model.origin = name
            return model
        kw = dict(zip(recipes.signature(name), args)) if args else {}
        kw.update(kwargs)
        knobs: dict[str, Knob] = {}
        for k, v in kw.items():
            if (isinstance(v, Unknown) or _has_unknown(_unwrap(v))) and k in ("dir", "name", "num_nodes", "num_gpus_per_node"):
                knobs[k] = Knob(value=v if isinstance(v, Unknown) else _first_unknown(_unwrap(v)), prov=v.prov if isinstance(v, Knob) else cprov)
                continue
            if isinstance(v, Unknown) or _has_unknown(_unwrap(v)):
                u = v if isinstance(v, Unknown) else _first_unknown(_unwrap(v))
                self.diags.error("NM340", f"llm.{name}.finetune_recipe({k}=...) is not known statically: {u}", key=k,
                                 hint=self.way_out(), **self.where(call))
                raise MigrateError(self.diags)
            knobs[k] = v if isinstance(v, Knob) else Knob(value=_sym_value(v) if isinstance(v, Sym) else _unwrap(v), prov=cprov)
        return recipes.expand(name, knobs, cprov, self.diags, self.where(call))

    def make_node(self, tname: str, args: list[Any], kwargs: dict[str, Any], call: ast.Call, partial: bool) -> Node:
        key = schema.resolve_class(tname)
        node_prov = self.prov(call, f"run.{'Partial' if partial else 'Config'}({tname.rsplit('.', 1)[-1]})")
        cls, known = schema.node_class(tname)
        node = Node(cls=cls, known=known, partial=partial, prov=node_prov)
        sink = self.node_diags(node)
        where = self.where(call)
        if key is None:
            sink.warning("NM320", f"class '{tname}' is not known to this compiler; its settings are carried but not checked",
                         hint=did_you_mean(tname.rsplit(".", 1)[-1], schema.known_class_names()), **where)
        sp = schema.spec(key) if key else None
        if args:
            if sp is None:
                self.mark(node, "NM340", f"positional arguments of {tname} are not followed (its signature is not known)", call, hint="use keyword arguments")
            else:
                names = list(sp.fields)
                if len(args) > len(names):
                    sink.error("NM304", f"{tname} takes {len(names)} arguments but {len(args)} were given", **where)
                for fname, a in zip(names, args):
                    self.set_arg(node, fname, a, call, sink)
        for k, v in kwargs.items():
            self.set_arg(node, k, v, call, sink)
        return node

    def set_arg(self, node: Node, name: str, v: Any, call: ast.Call, sink: Diagnostics) -> None:
        kwnode = next((kw.value for kw in call.keywords if kw.arg == name), None)
        at = kwnode if kwnode is not None else call
        kprov = self.prov(at)
        where = {**self.where(call), **self.where(at)}
        if isinstance(v, Node):
            schema.set_path(node, name, v, sink, where)
            return
        if isinstance(v, Unknown) or _has_unknown(_unwrap(v)):
            if not schema.accepts(node, name):
                schema.set_path(node, name, Knob(value=None, prov=kprov), sink, where)
                return
            node.fields[name] = Knob(value=v if isinstance(v, Unknown) else _first_unknown(_unwrap(v)), prov=kprov)
            return
        if isinstance(v, (Sym, Func, UserClass)):
            v = Knob(value=_sym_value(v), prov=kprov)
        elif isinstance(v, Knob) and v.prov.kind != "recipe.py":
            v = Knob(value=v.value, prov=kprov)
        elif not isinstance(v, Knob):
            v = Knob(value=Unknown(f"{_describe(v)} as a value", kprov), prov=kprov)
        schema.set_path(node, name, v, sink, where)

    def executor(self, kind: str, kwargs: dict[str, Any], call: ast.Call) -> Executor:
        ex = Executor(kind, self.prov(call).line)
        for k, v in kwargs.items():
            kwnode = next((kw.value for kw in call.keywords if kw.arg == k), call)
            line = self.prov(kwnode).line
            x = _unwrap(v)
            if isinstance(v, Unknown) or _has_unknown(x) or isinstance(v, (Node, Func, Sym)):
                ex.kwargs[k] = (f"<{ast.unparse(kwnode)[:120]}>", line)
                ex.unknown.append(k)
            else:
                ex.kwargs[k] = (x, line)
        if any(kw.arg is None for kw in call.keywords):
            ex.unknown.append("**kwargs")
        self.mod.executors.append(ex)
        return ex

    def cli_main(self, args: list[Any], kwargs: dict[str, Any], call: ast.Call, fr: Frame) -> None:
        target = args[0] if args else kwargs.get("fn")
        df = kwargs.get("default_factory")
        kw = next((k.value for k in call.keywords if k.arg == "default_factory"), None)
        self._df_line = self.prov(kw).line if kw is not None else None
        if df is not None and not isinstance(df, Func):
            self.diags.warning("NM302", f"default_factory is {_describe(df)}, not a function of this file; pass --factory",
                               **self.where(kw or call))
        launch = Launch("cli", self.prov(call), None, executor=kwargs.get("default_executor"), default_factory=df,
                        env=dict(self.main.globals), conditional=self.conditional)
        if isinstance(target, Sym) and not _LLM_API.match(target.dotted):
            launch.task = Unknown(f"run.cli.main runs {target.dotted}, not llm.finetune", self.prov(call))
        self.mod.launches.append(launch)

    def launch(self, how: str, task: Any, executor: Any, call: ast.Call) -> Launch:
        snap = self.snapshot(task) if isinstance(task, Node) else task
        if not isinstance(task, (Node, Unknown)):
            snap = Unknown(f"the task is {_describe(task)}", self.prov(call))
        ex = executor if isinstance(executor, Executor) else None
        l = Launch(how, self.prov(call), snap, executor=ex, conditional=self.conditional)
        first = call.args[0] if call.args else None
        if isinstance(first, ast.Call) and isinstance(first.func, ast.Name) and first.func.id in self.cur.functions:
            l.factory = first.func.id
        self.mod.launches.append(l)
        return l

    def snapshot(self, node: Node) -> Node:
        """A copy of the job as it is when it is launched (later changes to the objects do not reach it)."""
        memo: dict[int, Any] = {}

        def cp(x: Any) -> Any:
            if isinstance(x, Node):
                if id(x) in memo:
                    return memo[id(x)]
                new = Node(cls=x.cls, partial=x.partial, known=x.known, prov=x.prov, origin=x.origin)
                memo[id(x)] = new
                for k, v in x.fields.items():
                    new.fields[k] = cp(v)
                if id(x) in self.marks:
                    self.marks[id(new)] = list(self.marks[id(x)])
                    self._alive.append(new)
                return new
            if isinstance(x, Knob):
                return Knob(value=cp(x.value), prov=x.prov, replaced=x.replaced)
            if isinstance(x, list):
                return [cp(i) for i in x]
            if isinstance(x, tuple):
                return tuple(cp(i) for i in x)
            if isinstance(x, dict):
                return {k: cp(v) for k, v in x.items()}
            return x

        return cp(node)

    # -- argparse ----------------------------------------------------------------------------------------
    def argparse_call(self, p: ArgParser, name: str, call: ast.Call, fr: Frame) -> Any:
        args, kwargs = self.arguments(call, fr)
        if name in ("add_argument",):
            if isinstance(args, Unknown) or p.parser is None:
                p.why_not = p.why_not or f"an add_argument at line {self.prov(call).line} is not known statically"
                return Knob(value=None, prov=self.prov(call))
            kw: dict[str, Any] = {}
            for k, v in kwargs.items():
                x = _unwrap(v)
                if k == "type":
                    if isinstance(v, Sym) and v.dotted in ("builtins.int", "builtins.float", "builtins.str"):
                        x = {"builtins.int": int, "builtins.float": float, "builtins.str": str}[v.dotted]
                    elif isinstance(v, Func):
                        x = self.arg_converter(v, call)  # the script's own converter, interpreted like any function
                    else:
                        p.why_not = p.why_not or f"--{_unwrap(args[0]) if args else '?'} converts its value with {_describe(v)}"
                        x = str
                if k in ("action",) and not isinstance(x, str):
                    p.why_not = p.why_not or "an argparse action that is not a plain name"
                    return Knob(value=None, prov=self.prov(call))
                unknown_default = None
                if _has_unknown(x) or isinstance(x, (Node, Func)):
                    if k in ("help", "metavar"):
                        continue  # text for --help: no effect on the values
                    if k == "default":
                        unknown_default = x if isinstance(x, Unknown) else Unknown("a default not known statically", self.prov(call))
                        x = _NO_DEFAULT
                    else:
                        p.why_not = p.why_not or f"add_argument({k}=...) is not known statically"
                        x = None
                kw[k] = x
            try:
                act = p.parser.add_argument(*[_unwrap(a) for a in args], **kw)
                p.lines[act.dest] = self.prov(call)
                if kw.get("default") is _NO_DEFAULT:
                    p.unknown_defaults[act.dest] = unknown_default or Unknown("a default not known statically", self.prov(call))
            except (TypeError, ValueError, argparse.ArgumentError) as e:
                p.why_not = p.why_not or f"add_argument fails: {e}"
            return Knob(value=None, prov=self.prov(call))
        if name in ("parse_args", "parse_known_args"):
            return self.parse_args(p, name, args, call)
        return Knob(value=None, prov=self.prov(call))

    def arg_converter(self, fn: Func, call: ast.Call) -> Any:
        def convert(text: str) -> Any:
            r = self.call_user(fn, [Knob(value=text, prov=self.prov(call))], {}, call)
            if not isinstance(r, Knob) or _has_unknown(r.value):
                raise argparse.ArgumentTypeError(f"{fn.name} does not give a value known statically for {text!r}")
            return r.value
        convert.__name__ = fn.name
        return convert

    def parse_args(self, p: ArgParser, name: str, args: Any, call: ast.Call) -> Any:
        if self.argv is None and not (isinstance(args, list) and args):
            return Unknown("the script's command-line arguments are not known: no launch line was given "
                           "(convert the directory with the run.sh / sbatch script that starts it, or pass it with --run-sh)",
                           self.prov(call))
        if p.parser is None or p.why_not:
            return Unknown(f"the script's command-line arguments ({p.why_not or 'parser not known'})", self.prov(call))
        if isinstance(args, list) and args:
            given = _unwrap(args[0])
            if not (isinstance(given, list) and all(isinstance(x, str) for x in given)):
                return Unknown("parse_args() of arguments not known statically", self.prov(call))
            argv = [(x, self.prov(call)) for x in given]
        else:
            argv = list(self.argv)
        texts = [t for t, _ in argv]
        try:
            if name == "parse_known_args":
                ns, _rest = p.parser.parse_known_args(texts)
            else:
                ns = p.parser.parse_args(texts)
        except (argparse.ArgumentError, SystemExit, ValueError, TypeError) as e:
            self.diags.error("NM348", f"the launch line's arguments do not parse with the script's argparse parser: {e}",
                             **(argv[0][1].where() if argv else self.where(call)))
            raise MigrateError(self.diags) from None
        given_at: dict[str, Provenance] = {}
        for act in p.parser._actions:  # noqa: SLF001 - read-only use of the parser we built
            for opt in act.option_strings:
                for t, pv in argv:
                    if t == opt or t.startswith(opt + "="):
                        given_at[act.dest] = pv
        values: dict[str, Any] = {}
        for dest, val in vars(ns).items():
            if val is _NO_DEFAULT:
                values[dest] = p.unknown_defaults.get(dest) or Unknown(f"the default of --{dest}", self.prov(call))
                continue
            if dest in given_at:
                pv = given_at[dest]
            else:
                at = p.lines.get(dest)
                pv = at.model_copy(update={"detail": f"default of --{dest}"}) if at else self.prov(call, f"default of --{dest}")
            values[dest] = Knob(value=val, prov=pv)
        ns_v = Namespace(values)
        if name == "parse_known_args":
            return Knob(value=(ns_v, []), prov=self.prov(call))
        return ns_v

    # -- factories for the CLI path ----------------------------------------------------------------------
    def call_factory(self, fn: Any, kwargs: dict[str, Knob], prov: Provenance, env: dict[str, Any] | None = None) -> Any:
        if not isinstance(fn, Func):
            return fn
        if env is self.globals:
            env = None
        saved = dict(self.globals)
        if env is not None:
            self.globals.clear()
            self.globals.update(env)
        try:
            return self.call_user(fn, [], dict(kwargs), fn.node)
        except _Stop:
            return Unknown("the factory stops the script", prov)
        finally:
            if env is not None:
                self.globals.clear()
                self.globals.update(saved)

    # -- what the job contains ---------------------------------------------------------------------------
    def check_job(self, tree: Node, diags: Diagnostics) -> None:
        """Report every problem attached to a node of the job and every value of it that is not known."""
        seen: set[int] = set()
        for path, node in _walk_nodes(tree):
            if id(node) in seen:
                continue
            seen.add(id(node))
            for d in self.marks.get(id(node), []):
                diags.items.append(d) if d not in diags.items else None
        for path, knob, owner, leaf in list(_walk_knobs(tree)):
            u = knob.value if isinstance(knob.value, Unknown) else _first_unknown(knob.value)
            if u is None:
                continue
            loc = knob.prov.where() or u.prov.where()
            src = f" ({u.origin()})" if str(u.origin()) != str(knob.prov) else ""
            if u.via:
                src += ", returned by " + " -> ".join(u.via[:8])
            if not _trains(path):
                del owner.fields[leaf]
                default = schema.default_knob(owner, leaf)
                diags.warning("NM355", f"'{path}' is not known statically: {u.why}{src}; it does not change what is trained, "
                              f"so NeMo's default is used ({default.value if default is not None else 'unset'})", key=path,
                              hint=f"pass --set {path}=VALUE to carry the value over", **loc)
                continue
            diags.error("NM340", f"'{path}' is not known statically: {u.why}{src}", key=path,
                        hint=f"pass --set {path}=VALUE, or " + self.way_out(), **loc)


def way_out(mod: RecipeModule) -> str:
    """The way out of a refusal: NeMo-Run's own export of the job (its CLI's --to-yaml, or its serializer in a script)."""
    if "cli.main" in mod.source.text or "cli.factory" in mod.source.text:
        return WAY_OUT.format(file=Path(mod.file).name)
    return WAY_OUT_SCRIPT


def _walk_nodes(tree: Node, prefix: str = "") -> Iterator[tuple[str, Node]]:
    stack: list[tuple[str, Any]] = [(prefix, tree)]
    seen: set[int] = set()
    while stack:
        path, x = stack.pop()
        if isinstance(x, Node):
            if id(x) in seen:
                continue
            seen.add(id(x))
            yield path, x
            for k, v in x.fields.items():
                stack.append((f"{path}.{k}" if path else k, v))
        elif isinstance(x, Knob):
            stack.append((path, x.value))
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                stack.append((f"{path}[{i}]", v))
        elif isinstance(x, dict):
            for k, v in x.items():
                stack.append((f"{path}.{k}", v))


def _walk_knobs(tree: Node) -> Iterator[tuple[str, Knob, Node, str]]:
    for path, node in _walk_nodes(tree):
        for k, v in node.fields.items():
            if isinstance(v, Knob):
                yield (f"{path}.{k}" if path else k), v, node, k


def _trains(path: str) -> bool:
    """Whether a knob can change what is trained: not logging, checkpoint placement, or a row the table drops."""
    if path.startswith(("log.", "executor.")) or path == "log":
        return False
    from .. import rules

    owner = rules.owner(path)
    row = rules.by_id().get(owner) if owner else None
    return not (row is not None and row.status == "dropped")


# ---------------------------------------------------------------------------------------------- helpers

_BIN = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_, ast.BitXor: operator.xor, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
}
_CMP = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


def _harmless(full: str) -> bool:
    """Calls that never change a job: printing and logging."""
    return full in ("print", "builtins.print", "pprint.pprint", "pprint") or full.startswith(("logging.", "logger.", "log.", "warnings."))


def _src(node: ast.AST) -> str:
    try:
        s = ast.unparse(node)
    except Exception:  # noqa: BLE001
        return type(node).__name__
    return s if len(s) <= 80 else s[:77] + "..."


def _describe(v: Any) -> str:
    if isinstance(v, Knob):
        return f"the value {v.value!r}"[:80]
    if isinstance(v, Node):
        return f"a run.Config({v.cls})"
    if isinstance(v, Sym):
        return v.dotted
    if isinstance(v, Func):
        return f"the function {v.name}"
    if isinstance(v, Unknown):
        return f"a value not known statically ({v.why})"
    if isinstance(v, ModuleV):
        return f"the module {v.unit.file}"
    return type(v).__name__


def _unwrap(v: Any) -> Any:
    return v.value if isinstance(v, Knob) else v


def _wrap(x: Any, prov: Provenance) -> Any:
    if isinstance(x, (Node, Unknown, Sym, Func, UserClass, Executor, Experiment, ArgParser, Namespace, ModuleV)):
        return x
    return Knob(value=x, prov=prov)


def _sym_value(v: Any) -> Any:
    if isinstance(v, Sym):
        return v.dotted
    if isinstance(v, (Func, UserClass)):
        return Unknown(f"the {'function' if isinstance(v, Func) else 'class'} {v.name} used as a value",
                       Provenance(kind="recipe.py", line=getattr(v, "line", None)))
    return v


def _has_unknown(x: Any, budget: list[int] | None = None) -> bool:
    return _first_unknown(x) is not None


def _first_unknown(x: Any) -> Unknown | None:
    stack = [x]
    n = 0
    while stack:
        y = stack.pop()
        n += 1
        if n > MAX_VALUE_ITEMS:
            return None
        if isinstance(y, Unknown):
            return y
        if isinstance(y, (Func, UserClass, Experiment, ArgParser, Namespace, Executor, ModuleV)):
            return Unknown(f"{_describe(y)} used as a value", Provenance(kind="derived"))
        if isinstance(y, (list, tuple, set, frozenset)):
            stack.extend(y)
        elif isinstance(y, dict):
            stack.extend(y.values())
        elif isinstance(y, Knob):
            stack.append(y.value)
    return None


def _size(x: Any, limit: int) -> int:
    """Number of items in a nested value, counting shared sublists each time they appear (stops past limit)."""
    n = 0
    stack = [x]
    while stack:
        y = stack.pop()
        n += 1
        if n > limit:
            return n
        if isinstance(y, (list, tuple, set, frozenset)):
            if len(y) > limit:
                return limit + 1
            stack.extend(y)
        elif isinstance(y, dict):
            stack.extend(y.values())
    return n


def _nodes_in(value: Any) -> list[Node]:
    out: list[Node] = []
    seen: set[int] = set()
    stack = [value]
    while stack:
        x = stack.pop()
        if isinstance(x, Node):
            if id(x) in seen:
                continue
            seen.add(id(x))
            out.append(x)
            stack.extend(x.fields.values())
        elif isinstance(x, Knob):
            stack.append(x.value)
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, Namespace):
            stack.extend(x.values.values())
    return out


def _assigned_names(fn: ast.AST) -> set[str]:
    """Names a function body binds (Python makes them local to the function)."""
    out: set[str] = set()
    body = fn.body if isinstance(fn.body, list) else []  # type: ignore[attr-defined]
    stack: list[ast.AST] = list(body)
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
            continue
        if isinstance(n, ast.Lambda):
            continue
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            out.add(n.id)
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            for a in n.names:
                out.add((a.asname or a.name).split(".")[0])
        stack.extend(ast.iter_child_nodes(n))
    return out


class FactoryInterpreter:
    """Runs a factory of the module (the NeMo-Run CLI path: ``--factory f(...)`` / ``default_factory``)."""

    def __init__(self, mod: RecipeModule, diags: Diagnostics):
        self.mod = mod
        self.diags = diags
        assert mod.interp is not None
        self.interp = mod.interp
        self.interp.diags = diags

    def run_factory(self, name: str, kwargs: dict[str, Knob], call_prov: Provenance) -> Node:
        cli = self.mod.cli
        env = cli.env if cli is not None and cli.env is not None else self.interp.globals
        fname = self.mod.registered.get(name, name)
        fn = env.get(fname)
        if isinstance(fn, Unknown):
            self.diags.error("NM303", f"factory '{name}' cannot be followed: {fn.why}", hint=self.interp.way_out(), **fn.prov.where())
            raise MigrateError(self.diags)
        if not isinstance(fn, Func):
            raise KeyError(name)
        result = self.interp.call_factory(fn, kwargs, call_prov, env)
        if isinstance(result, Unknown):
            self.diags.error("NM303", f"factory '{name}' does not return a run.Partial/run.Config this compiler can follow: {result.why}",
                             hint=self.interp.way_out(), **(result.prov.where() or self.interp.where(fn.node)))
            raise MigrateError(self.diags)
        if not isinstance(result, Node):
            self.diags.error(
                "NM303",
                f"factory '{name}' does not return a run.Partial/run.Config this compiler can follow",
                hint="the factory should build the recipe (e.g. llm.<model>.finetune_recipe(...)) and return it",
                **self.interp.where(fn.node),
            )
            raise MigrateError(self.diags)
        return result


def pick_launch(mod: RecipeModule, diags: Diagnostics) -> Launch:
    """The fine-tune among the script's launches (an import before it or a generate after it are not the job)."""
    cli = mod.cli
    if cli is not None and isinstance(cli.default_factory, Unknown):
        u = cli.default_factory
        diags.error("NM303", f"the default factory of run.cli.main cannot be followed: {u.why}", **(u.prov.where() or cli.prov.where()),
                    hint=way_out(mod))
        raise MigrateError(diags)
    ls = [l for l in mod.launches if l.how != "cli"]
    ft = [l for l in ls if l.kind == "finetune"]
    found = "; ".join(l.label() for l in ls) or "nothing"
    hint_cond = f" (a launch is under code that is not followed: {mod.interp.conditional})" if mod.interp and mod.interp.conditional else ""
    if not ft:
        pre = [l for l in ls if l.kind == "pretrain"]
        unk = [l for l in ls if l.kind == "unknown"]
        if pre:
            l = pre[0]
            diags.error("NM345", f"this script launches a (continued) pre-training job ({l.label()}), not a fine-tune: pre-training "
                        "is out of scope for a migration to Automodel's fine-tune recipe", **l.prov.where(),
                        hint="migrate the fine-tuning job (llm.finetune / finetune_recipe); for pre-training see Automodel's pretrain recipes")
        elif unk and all(l.how == "fit" for l in unk):
            l = unk[-1]
            diags.error("NM347", f"this script trains in its own Python ({_src_of(l)} at {l.prov}): the model, data and trainer are "
                        "built and changed in code, not described by a recipe or a config this compiler can read", **l.prov.where(),
                        hint="write the config it trains with to a file (NeMo 1.0: `OmegaConf.save(cfg, 'job.yaml')` just before "
                        "trainer.fit; NeMo 2: NeMo-Run's `--to-yaml`) and convert that file")
        elif unk:
            l = unk[0]
            why = str(l.task) if isinstance(l.task, Unknown) else "it is not a run.Config/run.Partial"
            where = l.prov.where()
            if isinstance(l.task, Unknown):  # the first value not known, if it is in the script; else where it entered it
                where = (l.task.origin() if l.task.origin().file == mod.file else l.task.prov).where() or where
            diags.error("NM346", f"the task launched at {l.prov} is not known statically: {why}", **where,
                        hint=way_out(mod))
        else:
            diags.error("NM343", f"no fine-tune is launched on the path followed (found: {found}){hint_cond}",
                        file=mod.file, hint="the job must be launched with run.run(recipe), exp.add(recipe) or llm.finetune(...), "
                        "or give the factory with --factory")
        raise MigrateError(diags)
    distinct: list[Launch] = []
    for l in ft:
        if not any(_same_job(l.task, d.task) for d in distinct):
            distinct.append(l)
    if len(distinct) > 1:
        diags.error("NM344", f"{len(distinct)} different fine-tunes are launched: " + "; ".join(l.label() for l in distinct),
                    **distinct[0].prov.where(), hint="convert one at a time: pass --factory for a factory function, "
                    "or keep one launch in the script")
        raise MigrateError(diags)
    chosen = ft[-1]
    if chosen.conditional:
        diags.warning("NM353", f"the fine-tune is launched under code that is not followed ({chosen.conditional})", **chosen.prov.where())
    return chosen


def _src_of(l: Launch) -> str:
    why = l.task.why if isinstance(l.task, Unknown) else ""
    return why.split("`")[1] if why.count("`") >= 2 else "trainer.fit(...)"


def _same_job(a: Any, b: Any) -> bool:
    from ..ir import plain

    return isinstance(a, Node) and isinstance(b, Node) and plain(a) == plain(b)

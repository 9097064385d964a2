"""Back ends: the Automodel YAML (ruamel.yaml, a provenance comment on every value), ``run.sh`` and the migration
report (jinja2 templates in templates/).  Output is deterministic: same input, same bytes."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import __version__, fsio, knowledge
from .diagnostics import Diagnostics, MigrateError
from .ir import Provenance, TargetValue

_MARK = {"exact": "", "approximate": "~", "dropped": "", "unsupported": "!"}


@lru_cache(maxsize=None)
def _order() -> dict[str, list[str]]:
    d = knowledge.automodel_defaults()
    out: dict[str, list[str]] = {"": [k for k in d]}
    for sect, keys in d.items():
        if isinstance(keys, dict):
            out[sect] = [k for k in keys if not k.startswith("_") or k == "_target_"]
    return out


def _key_rank(section: str, key: str) -> tuple[int, str]:
    order = _order().get(section, [])
    return (order.index(key), "") if key in order else (len(order), "")


def comment_for(tv: TargetValue) -> str:
    provs: list[str] = []
    for p in tv.provs:
        s = _short_prov(p)
        if s not in provs:
            provs.append(s)
    mark = _MARK[tv.status]
    text = f"{tv.rule}{mark}"
    where = ", ".join(provs[:3]) + (", ..." if len(provs) > 3 else "")
    if where:
        text += " " + where
    if tv.note:
        text += f" ({tv.note})"
    return _one_line(text)


def _short_prov(p: Provenance) -> str:
    if p.kind == "nemo-adjust":
        return "NeMo adjusts"
    if p.kind in ("yaml", "recipe.py"):
        return f"{p.file}:{p.line}" if p.line else str(p.file)
    if p.kind == "cli":
        return f"{p.file}:{p.line}" if p.file else f"--set {p.detail}"
    return str(p)


def _one_line(s: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]+", " ", s)


def nest(targets: dict[str, TargetValue]) -> dict[str, Any]:
    """Target paths -> an ordered nested dict of (value or dict, TargetValue) for rendering."""
    tree: dict[str, Any] = {}
    for path in sorted(targets, key=lambda p: _path_rank(p, list(targets))):
        tv = targets[path]
        parts = path.split(".")
        cur = tree
        for part in parts[:-1]:
            nxt = cur.get(part)
            if not isinstance(nxt, dict) or "__tv__" in nxt:
                nxt = {}
                cur[part] = nxt
            cur = nxt
        cur[parts[-1]] = {"__tv__": tv}
    return tree


def _path_rank(path: str, insertion: list[str]) -> tuple:
    parts = path.split(".")
    sect = parts[0]
    top = _key_rank("", sect)
    second = _key_rank(sect, parts[1]) if len(parts) > 1 else (0, "")
    return (top, second, insertion.index(path))


def render_config(targets: dict[str, TargetValue], header: list[str]) -> str:
    """The Automodel YAML: block mappings, flow lists of scalars, a provenance comment per value in one column.

    Written directly (not through ruamel's round-trip dumper, which is an order of magnitude slower) from a tree
    of known shape; tests/test_emit.py checks that PyYAML (what Automodel's loader uses) and ruamel read back
    exactly the target values."""
    lines: list[str] = [f"# {_one_line(h)}" if h else "#" for h in header]

    def emit_map(node: dict[str, Any], indent: int) -> None:
        pad = " " * indent
        for k, sub in node.items():
            if "__tv__" in sub:
                tv: TargetValue = sub["__tv__"]
                _emit_value(lines, pad, k, tv.value, comment_for(tv), indent)
            else:
                lines.append(f"{pad}{scalar(str(k))}:")
                emit_map(sub, indent + 2)

    emit_map(nest(targets), 0)
    return "\n".join(_with_comment(l) for l in lines) + "\n"


_COMMENT_SEP = "\x00"


def _with_comment(line: str) -> str:
    if _COMMENT_SEP not in line:
        return line
    code, com = line.split(_COMMENT_SEP, 1)
    return code.ljust(max(len(code) + 2, 44)) + "# " + com


def _emit_value(lines: list[str], pad: str, key: str, v: Any, comment: str, indent: int) -> None:
    head = f"{pad}{scalar(str(key))}:"
    if isinstance(v, dict) and v:
        lines.append(head + _COMMENT_SEP + comment)
        for k, x in v.items():
            _emit_value(lines, pad + "  ", str(k), x, "", indent + 2) if isinstance(x, (dict, list)) else lines.append(f"{pad}  {scalar(str(k))}: {scalar(x)}")
        return
    if isinstance(v, list) and v and (any(isinstance(x, (dict, list)) for x in v) or len(v) > 8):
        lines.append(head + _COMMENT_SEP + comment if comment else head)
        for x in v:
            if isinstance(x, dict) and x:
                first = True
                for k, y in x.items():
                    lines.append(f"{pad}  {'- ' if first else '  '}{scalar(str(k))}: {_flow(y)}")
                    first = False
            else:
                lines.append(f"{pad}  - {_flow(x)}")
        return
    text = f"{head} {_flow(v)}"
    lines.append(text + (_COMMENT_SEP + comment if comment else ""))


def _flow(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{scalar(str(k))}: {_flow(x)}" for k, x in v.items()) + "}"
    return scalar(v)


_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_YAML11_SPECIAL = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none", "~"}


def scalar(v: Any) -> str:
    """One YAML scalar that both YAML 1.1 (PyYAML) and 1.2 (ruamel) read back as ``v``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return ".nan"
        if v in (float("inf"), float("-inf")):
            return ".inf" if v > 0 else "-.inf"
        text = repr(v)
        if "e" in text:
            mant, exp = text.split("e")
            if "." not in mant:
                mant += ".0"
            text = f"{mant}e{'+' if not exp.startswith('-') else ''}{exp.lstrip('+')}"
        return text
    s = str(v)
    if _PLAIN.fullmatch(s) and s.lower() not in _YAML11_SPECIAL:
        return s
    if s.isprintable():
        return "'" + s.replace("'", "''") + "'"
    return _double_quoted(s)


def _double_quoted(s: str) -> str:
    out = []
    for c in s:
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


# what Automodel 0.7's loader expands in a YAML string (components/config/loader.py resolve_yaml_env_vars):
# ${VAR} / ${VAR,default} and $VAR / $var.dot.var; any other '$' (a regex's end anchor) is kept as written
_AM_ENV = re.compile(r"\$\{[^}]+\}|\$[A-Za-z_]")


def dollar_values(targets: dict[str, TargetValue]) -> list[str]:
    """Paths whose string value contains '$': Automodel 0.7's loader expands ${VAR} / $VAR in every string."""
    out = []

    def walk(path: str, v: Any) -> None:
        if isinstance(v, str) and _AM_ENV.search(v):
            out.append(path)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}.{k}", x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(f"{path}[{i}]", x)

    for p, tv in targets.items():
        if tv.note and tv.note.startswith("Automodel expands"):
            continue  # an interpolation written on purpose (e.g. ${NEMO_DATASETS_CACHE,...})
        walk(p, tv.value)
    return out


# ---------------------------------------------------------------------------------------------- templates


@lru_cache(maxsize=None)
def _env(shell: bool = False):
    """The jinja2 environment: for run.sh / sbatch.sh (``shell``) every ``{{ ... }}`` must produce :class:`Sh` text
    (made by the quoting filters below) or an int, so that a raw value cannot slip into a script."""
    import jinja2

    cache = knowledge.cache_dir()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(knowledge.TEMPLATES)),
        bytecode_cache=_bytecode_cache(cache / "templates", f"{__version__}-{jinja2.__version__}-{shell}") if cache else None,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        finalize=_only_shell_text if shell else None,
    )
    if shell:
        env.filters.update(sh=sh_word, sh_dq=sh_in_dq, sh_default=sh_default, comment=sh_comment, sbatch=sbatch_value)
    else:
        env.filters["oneline"] = lambda s: _one_line(str(s))
        env.filters["md"] = lambda s: _one_line(str(s)).replace("|", "\\|")
        env.filters["code"] = _md_code
    env.globals["version"] = Sh(__version__) if shell else __version__
    return env


def _bytecode_cache(directory: Path, tag: str):
    """Compiled templates in the user's cache (34 ms of a cold start saved).  Unlike jinja2's FileSystemBytecodeCache
    (which unpickles the file), an entry is ``<sha256 of the rest>\\n<template checksum>\\n<marshal>`` and one that
    does not check out is ignored and rewritten."""
    import hashlib
    import marshal

    import jinja2

    class Cache(jinja2.BytecodeCache):
        def _path(self, bucket: Any) -> Path:
            return directory / f"{bucket.key}.{hashlib.sha256(tag.encode()).hexdigest()[:16]}.bc"

        def load_bytecode(self, bucket: Any) -> None:
            try:
                blob = fsio.read_bytes(self._path(bucket), limit=16 << 20)
                digest, _, rest = blob.partition(b"\n")
                checksum, _, code = rest.partition(b"\n")
                if hashlib.sha256(rest).hexdigest().encode() == digest and checksum == bucket.checksum.encode():
                    bucket.code = marshal.loads(code)
            except (OSError, ValueError, EOFError, TypeError):
                bucket.reset()

        def dump_bytecode(self, bucket: Any) -> None:
            rest = bucket.checksum.encode() + b"\n" + marshal.dumps(bucket.code)
            path = self._path(bucket)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_bytes(hashlib.sha256(rest).hexdigest().encode() + b"\n" + rest)
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    return Cache()


def _md_code(v: Any) -> str:
    text = _one_line(v if isinstance(v, str) else repr(v) if not isinstance(v, (int, float, bool, type(None), list, dict)) else _yamlish(v))
    text = text.replace("|", "\\|")
    if len(text) > 80:
        text = text[:77] + "..."
    return "`" + text.replace("`", "'") + "`"


def _yamlish(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# ---------------------------------------------------------------------------------------------- shell scripts
#
# Everything a template pastes into run.sh / sbatch.sh goes through `sh_quote` (shlex.quote: one word that bash reads
# back byte for byte), or `sh_comment` (comment text on one line), or `sbatch_value` (a #SBATCH value, which sbatch
# reads unquoted: only plain characters).  What cannot be written safely is refused before rendering, with a
# diagnostic (`script_problems`), never written half-quoted.


class Sh(str):
    """Text a shell template may paste as is.  Only the functions below make it."""


class UnsafeValue(ValueError):
    """A value that no quoting can carry into a script (raised by the filters: `script_problems` reports it first)."""


_CONTROL = fsio.CONTROL
_SURROGATE = fsio.SURROGATE


def sh_quote(value: str | int) -> str:
    """The one quoting function: ``value`` as ONE shell word (shlex.quote semantics)."""
    s = str(value)
    problem = _unquotable(s)
    if problem:
        raise UnsafeValue(f"{s!r}: {problem}")
    return shlex.quote(s)


def _unquotable(s: str) -> str | None:
    if "\x00" in s:
        return "contains a NUL byte, which no shell word can hold"
    if _SURROGATE.search(s):
        return "has bytes that are not UTF-8"
    return None


def sh_word(value: str | int) -> Sh:
    """One shell word."""
    return Sh(sh_quote(value))


def sh_in_dq(value: str | list, sep: str = " ") -> Sh:
    """Words inside a double-quoted string: plain words as they are, others as a quoted word between a closing and an
    opening double quote (``"usage: <"'$(x)'"|fp16>"``)."""
    parts = []
    for x in value if isinstance(value, (list, tuple)) else [value]:
        s, q = str(x), sh_quote(x)
        parts.append(s if q == s else f'"{q}"')
    return Sh(sep.join(parts))


def sh_default(value: str | list, var: str, sep: str = ",") -> Sh:
    """The right-hand side of ``x=<this>``: ``$var`` when set, else ``value``.  A plain value stays inside double quotes;
    any other is a quoted word in an unquoted expansion, where quotes keep their meaning (inside a double-quoted
    ``${var:-...}`` single quotes are literal characters and ``$(...)`` would run)."""
    if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", var):
        raise UnsafeValue(f"{var!r} is not an environment variable name")
    s = sep.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    q = sh_quote(s)
    return Sh(f'"${{{var}:-{q}}}"' if q == s else f"${{{var}:-{q}}}")


def sh_comment(value: str | list, sep: str = " ") -> Sh:
    """Text for a ``#`` comment: one line (control characters and line separators become spaces), valid UTF-8."""
    s = sep.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return Sh(_SURROGATE.sub("?", _CONTROL.sub(" ", s)))


_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.:,=+/@%-]+$")
_SBATCH_FLAG = re.compile(r"^[a-z][a-z0-9-]*$")


def sbatch_plain(value: str) -> bool:
    """Whether ``value`` can be written after ``#SBATCH --flag=`` as it is (sbatch reads directives unquoted)."""
    return bool(_SBATCH_VALUE.match(value))


def sbatch_value(value: str | int) -> Sh:
    """A #SBATCH flag or value: sbatch reads directives without shell quoting, so only plain characters pass."""
    s = str(value)
    if not _SBATCH_VALUE.match(s):
        raise UnsafeValue(f"{s!r} is not a plain #SBATCH value")
    return Sh(s)


def _only_shell_text(v: Any) -> Any:
    if isinstance(v, Sh) or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise TypeError(f"raw value {v!r} reached a shell template: pass it through a quoting filter (|sh, |sh_dq, |comment, ...)")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# names bash sets or reads itself, and the scripts' own variables: an `export` of them would not reach torchrun intact
# (bash resets $_ and $PWD...) or would change the script (IFS, BASH_ENV, nproc...)
RESERVED_ENV = frozenset("""_ IFS BASH_ENV ENV SHELLOPTS BASHOPTS PS4 EUID UID PPID RANDOM SRANDOM SECONDS LINENO GROUPS FUNCNAME
    BASHPID BASH_SOURCE BASH_LINENO BASH_ARGV BASH_ARGC BASH_VERSINFO BASH_COMMAND EPOCHSECONDS EPOCHREALTIME HISTCMD OPTIND
    OPTARG PWD OLDPWD SHLVL here config nproc nnodes variant hosts head_node port image mounts container""".split())
_SBATCH_FIELDS = {"account", "partition", "time", "mem", "gres", "network", "cpus_per_task", "exclusive"}  # executor fields


def script_problems(ctx: dict[str, Any], sbatch: bool = False) -> Diagnostics:
    """Values of a run.sh / sbatch.sh context that cannot be written safely: one error each (NM900-NM904).

    ``ctx["where"]`` may map a NeMo key (``executor.partition``, ``executor.env_vars.NAME``...) or a config file name
    to the location of the value in the NeMo job (``Provenance.where()``); without it the diagnostic names the key."""
    d = Diagnostics()
    where = ctx.get("where") or {}

    def located(key: str | None) -> dict[str, Any]:
        while key:  # the value's own location, else its parent's (executor.env_vars.X -> executor.env_vars)
            if key in where:
                return where[key]
            key = key.rpartition(".")[0]
        return {}

    def err(code: str, msg: str, key: str | None, hint: str, lookup: str | None = None, **loc: Any) -> None:
        d.error(code, msg, key=key, hint=hint, **{**loc, **located(lookup or key)})

    odd = fsio.odd_text
    if _SURROGATE.search(str(ctx.get("source", ""))):
        err("NM900", f"a file name of the job ({shown(str(ctx['source']))}) has bytes that are not UTF-8: the scripts and configs name "
            "their sources in comments", None, "rename the file (letters, digits and . _ - are safe everywhere)")
    for v in ctx.get("variants", []):
        for what, s in (("config file name", str(v["config"])), ("variant name", str(v["name"]))):
            if odd(s) or not s:
                err("NM900", f"the {what} {shown(s)} has {odd(s) or 'no characters'}: it cannot be written into run.sh or a comment safely", None,
                    "rename the file (letters, digits and . _ - are safe everywhere)", lookup=str(v["config"]), file=fsio.shown(str(v["config"])))
                break
    for k, val in ctx.get("env", []):
        key = f"executor.env_vars.{fsio.shown(str(k))}"
        if not _ENV_NAME.match(str(k)):
            err("NM901", f"environment variable name {shown(str(k))} is not a shell name: `export` cannot set it", key,
                "rename it (letters, digits and _, not starting with a digit), or set it in the job's environment yourself")
        elif str(k) in RESERVED_ENV:
            err("NM901", f"environment variable {k} is set or read by bash or by the script itself: an `export` of it would not "
                "reach training as written", key, "set it in the job's environment yourself, or rename it")
        elif _unquotable(str(val)):
            err("NM902", f"the value of environment variable {k} {_unquotable(str(val))}", key, "fix the value in the NeMo job")
    if not sbatch:
        return d
    for flag, value in ctx.get("sbatch", []):
        if not _SBATCH_FLAG.match(str(flag)) or (value is not None and not _SBATCH_VALUE.match(str(value))):
            text = f"--{flag}" + (f"={value}" if value is not None else "")
            field = fsio.shown(str(flag)).replace("-", "_")
            key = f"executor.{field}" if field in _SBATCH_FIELDS else f"executor.additional_parameters.{field}"
            err("NM903", f"#SBATCH {shown(text)} cannot be written: sbatch reads directives unquoted (a space ends the value, "
                "a newline starts a command)", key,
                "use a plain value (letters, digits, _ . : , = + / @ % -), or convert without it and add the line to sbatch.sh by hand")
    image = ctx.get("image")
    if image is not None and odd(str(image)):
        err("NM902", f"container image {shown(str(image))} has {odd(str(image))}", "executor.container_image",
            "fix container_image in the NeMo job")
    for m in ctx.get("mounts", []):
        bad = "contains ',', which separates mounts in srun --container-mounts" if "," in str(m) else odd(str(m)) and f"has {odd(str(m))}"
        if bad:
            err("NM904", f"container mount {shown(str(m))} {bad}", "executor.container_mounts", "rename the path, or add the mount by hand")
    for a in ctx.get("srun_args", []):
        if _unquotable(str(a)):
            err("NM902", f"srun argument {shown(str(a))} {_unquotable(str(a))}", "executor.srun_args", "fix srun_args in the NeMo job")
    return d


def shown(s: str) -> str:
    """``s`` for a message: quoted, with control characters and undecodable bytes escaped (never a raw newline)."""
    return "'" + fsio.shown(s) + "'"


def _render_script(name: str, ctx: dict[str, Any], sbatch: bool) -> str:
    problems = script_problems(ctx, sbatch=sbatch)
    if problems.has_errors:
        raise MigrateError(problems)
    ctx = {k: v for k, v in ctx.items() if k != "where"}
    return _env(shell=True).get_template(name).render(**ctx)


def render_run_sh(ctx: dict[str, Any]) -> str:
    return _render_script("run.sh.j2", ctx, sbatch=False)


def sbatch_problems(slurm: dict[str, Any]) -> list[str]:
    """What sbatch.sh leaves out (convert warns, NM610): only a job name sbatch cannot read unquoted, which becomes
    'automodel' (it names the job, it does not change it).  Any other unsafe #SBATCH value is refused by
    `render_sbatch_sh` (NM903, an error): a dropped --partition or --time would change where and how long the job runs."""
    name = str(slurm.get("job_name", "automodel"))
    return [] if _SBATCH_VALUE.match(name) else [f"--job-name={fsio.shown(name)}"]


def render_sbatch_sh(ctx: dict[str, Any]) -> str:
    if not _SBATCH_VALUE.match(str(ctx.get("job_name", ""))):
        ctx = dict(ctx, job_name="automodel")
    return _render_script("sbatch.sh.j2", ctx, sbatch=True)


def render_report(ctx: dict[str, Any]) -> str:
    return _env().get_template("migration-report.md.j2").render(**ctx)


_OUTPUT_NAME = re.compile(r"(config(-[^/]+)?\.yaml|run\.sh|sbatch\.sh|migration-report\.md)\Z")
_GENERATED = re.compile(rb"generated by nemo-migrate \d", re.IGNORECASE)


def stale_outputs(out: Path, names) -> list[str]:
    """Files in ``out`` that an earlier convert wrote (an output's name and nemo-migrate's header in the first lines)
    and that this convert, which writes ``names``, would not: e.g. an ``sbatch.sh`` left from a ``--launcher slurm``
    run.  Never deleted: `convert --check` fails on them, `convert -o` names them."""
    try:
        entries = sorted(p for p in out.iterdir() if _OUTPUT_NAME.match(p.name) and p.name not in names)
    except OSError:
        return []
    stale = []
    for p in entries:
        if fsio.not_a_file(p) is not None:
            continue
        try:
            head = fsio.read_bytes(p, limit=1024)
        except OSError:
            continue
        if _GENERATED.search(head[:1024]):
            stale.append(p.name)
    return stale

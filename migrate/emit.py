"""Back ends: the Automodel YAML (ruamel.yaml, a provenance comment on every value), ``run.sh`` and the migration
report (jinja2 templates in templates/).  Output is deterministic: same input, same bytes."""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from typing import Any

from . import __version__, knowledge
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


def dollar_values(targets: dict[str, TargetValue]) -> list[str]:
    """Paths whose string value contains '$': Automodel 0.7's loader expands ${VAR} / $VAR in every string."""
    out = []

    def walk(path: str, v: Any) -> None:
        if isinstance(v, str) and "$" in v:
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
def _env():
    import jinja2

    cache = knowledge.cache_dir()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(knowledge.TEMPLATES)),
        bytecode_cache=jinja2.FileSystemBytecodeCache(str(cache / "templates")) if cache else None,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["shq"] = lambda s: shlex.quote(str(s))
    env.filters["oneline"] = lambda s: _one_line(str(s))
    env.filters["md"] = lambda s: _one_line(str(s)).replace("|", "\\|")
    env.filters["code"] = _md_code
    env.globals["version"] = __version__
    return env


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


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def render_run_sh(ctx: dict[str, Any]) -> str:
    ctx = dict(ctx)
    ctx["env"] = [(k, v) for k, v in ctx.get("env", []) if _ENV_NAME.match(k)]
    return _env().get_template("run.sh.j2").render(**ctx)


_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.:,=+/@%-]+$")
_SBATCH_FLAG = re.compile(r"^[a-z][a-z0-9-]*$")


def sbatch_problems(slurm: dict[str, Any]) -> list[str]:
    """#SBATCH directives that cannot be written safely (sbatch reads them unquoted; a newline would become a command)."""
    bad = []
    for flag, value in slurm.get("sbatch", []):
        if not _SBATCH_FLAG.match(flag) or (value is not None and not _SBATCH_VALUE.match(value)):
            bad.append(f"--{flag}={value}" if value is not None else f"--{flag}")
    if not _SBATCH_VALUE.match(slurm.get("job_name", "automodel")):
        bad.append(f"--job-name={slurm.get('job_name')}")
    return bad


def render_sbatch_sh(ctx: dict[str, Any]) -> str:
    ctx = dict(ctx)
    ctx["env"] = [(k, v) for k, v in ctx.get("env", []) if _ENV_NAME.match(k)]
    ctx["sbatch"] = [(f, v) for f, v in ctx.get("sbatch", []) if _SBATCH_FLAG.match(f) and (v is None or _SBATCH_VALUE.match(v))]
    if not _SBATCH_VALUE.match(ctx.get("job_name", "")):
        ctx["job_name"] = "automodel"
    return _env().get_template("sbatch.sh.j2").render(**ctx)


def render_report(ctx: dict[str, Any]) -> str:
    return _env().get_template("migration-report.md.j2").render(**ctx)

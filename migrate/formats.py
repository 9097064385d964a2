"""Diagnostics in the formats other tools read: ``text`` (``path:line:col: severity[CODE] [key]: message``, as ruff and
compilers print it), ``json``, ``github`` (GitHub Actions workflow commands, shown as annotations on the pull request),
``sarif`` (SARIF 2.1.0 for code scanning) and ``--statistics`` (count per code).

Diagnostics carry the path of their file relative to the job folder (what the report and the emitted comments show, the
same bytes whatever the working directory).  What is printed names the file relative to the working directory (absolute
outside it), so that an editor, a terminal or a CI annotation can open it: :class:`Paths` does that and nothing else.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

from .diagnostics import Diagnostic

FORMATS = ("text", "json", "github", "sarif")
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_LEVEL = {"error": "error", "warning": "warning", "note": "note"}
_GITHUB = {"error": "error", "warning": "warning", "note": "notice"}


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a file to point at
        return False


class Paths:
    """Shows job-relative paths relative to the working directory: a name is looked up under each base folder (the job
    folder(s) a command read) in order, then as given; a name that is no file (a shipped default config) stays as it is."""

    def __init__(self, *bases: Path | None, cwd: Path | None = None):
        self.bases = [b for b in bases if b is not None]
        self.cwd = os.path.abspath(cwd or os.getcwd())

    def show(self, p: Path | str) -> str:
        full = os.path.abspath(p)
        rel = os.path.relpath(full, self.cwd)
        return full if rel == ".." or rel.startswith(".." + os.sep) else rel

    def path(self, name: str | None, base: Path | None = None) -> str | None:
        if not name:
            return name
        for b in ([base] if base is not None else []) + self.bases:
            if _exists(Path(b) / name):
                return self.show(Path(b) / name)
        return self.show(name) if _exists(Path(name)) else name

    def origin_parts(self, text: str | None, base: Path | None = None) -> list[tuple[str, str]]:
        """A provenance list (``config-fp16.yaml:23, recipe default llama31_70b (bf16_mixed)``) as (shown file, the rest)
        pairs; a part that names no file is ("", part)."""
        out = []
        for part in text.split(", ") if text else []:
            m = re.match(r"(.+?)((?::cell \d+)?(?::\d+){1,2}(?: \(.*\))?)\Z", part)
            if m:
                shown = self.path(m.group(1), base)
                if shown != m.group(1) or _exists(Path(m.group(1))):
                    out.append((shown, m.group(2)))
                    continue
            out.append(("", part))
        return out

    def origin(self, text: str | None, base: Path | None = None) -> str:
        return ", ".join(f + rest for f, rest in self.origin_parts(text, base))


def short_names(paths: Iterable[str]) -> dict[str, str]:
    """Each path by its shortest suffix of whole components that no other of ``paths`` ends with
    (``a/nemo2/config.yaml``, ``a/automodel/config.yaml`` -> ``nemo2/config.yaml``, ``automodel/config.yaml``)."""
    ps = sorted(set(paths))
    parts = {p: Path(p).parts for p in ps}
    out = {}
    for p in ps:
        for k in range(1, len(parts[p]) + 1):
            tail = parts[p][-k:]
            if not any(q != p and parts[q][-k:] == tail for q in ps):
                break
        out[p] = str(Path(*parts[p][-k:]))
    return out


Locate = Callable[[Diagnostic], "str | None"]


def text(d: Diagnostic, locate: Locate) -> str:
    """The plain form: the compiler's ``render`` with the file as the terminal shows it."""
    return d.render(locate(d))


# ---------------------------------------------------------------------------------------------- GitHub Actions

def _gh_data(s: str) -> str:  # actions/toolkit packages/core/src/command.ts escapeData
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(s: str) -> str:  # escapeProperty
    return _gh_data(s).replace(":", "%3A").replace(",", "%2C")


def github(items: Iterable[Diagnostic], locate: Locate) -> list[str]:
    """One workflow command per diagnostic: ``::error file=F,line=L,col=C,title=NM201::message``."""
    lines = []
    for d in items:
        props = []
        path = locate(d)
        if path:
            props.append(f"file={_gh_prop(path)}")
            if d.line is not None and d.cell is None:
                props.append(f"line={d.line}")
                if d.col is not None:
                    props.append(f"col={d.col}")
        props.append(f"title={_gh_prop(d.code)}")
        msg = (f"[{d.key}] " if d.key else "") + d.message
        if d.cell is not None:
            msg = f"cell {d.cell}" + (f", line {d.line}" if d.line is not None else "") + f": {msg}"
        if d.hint:
            msg += f"\nhint: {d.hint}"
        lines.append(f"::{_GITHUB[d.severity]} {','.join(props)}::{_gh_data(msg)}")
    return lines


# ---------------------------------------------------------------------------------------------- SARIF 2.1.0

def _uri(path: str) -> str:
    return Path(path).as_uri() if os.path.isabs(path) else quote(path.replace(os.sep, "/"))


def _rule(code: str) -> dict[str, Any]:
    from . import codes

    c = codes.registry().get(code)
    if c is None:
        return {"id": code}
    rule: dict[str, Any] = {"id": code, "shortDescription": {"text": c.title}, "fullDescription": {"text": c.explanation},
                            "help": {"text": f"{c.title}: {c.explanation} (`nemo-migrate explain {code}`)"}}
    if c.severity in _LEVEL:
        rule["defaultConfiguration"] = {"level": _LEVEL[c.severity]}
    return rule


def sarif(items: Iterable[Diagnostic], locate: Locate) -> dict[str, Any]:
    """One run of nemo-migrate: the rules of the codes used (title and help from mappings/diagnostics.yaml) and one
    result per diagnostic, its file as a URI relative to the working directory (a file: URI outside it)."""
    from . import __version__

    items = list(items)
    used = sorted({d.code for d in items})
    index = {c: i for i, c in enumerate(used)}
    results = []
    for d in items:
        msg = (f"[{d.key}] " if d.key else "") + d.message + (f"\nhint: {d.hint}" if d.hint else "")
        res: dict[str, Any] = {"ruleId": d.code, "ruleIndex": index[d.code], "level": _LEVEL[d.severity], "message": {"text": msg}}
        path = locate(d)
        if path:
            phys: dict[str, Any] = {"artifactLocation": {"uri": _uri(path)}}
            if d.cell is not None:  # a notebook's line is within a cell, not the file: say it in the message
                res["message"]["text"] = f"cell {d.cell}" + (f", line {d.line}" if d.line else "") + f": {msg}"
            elif d.line:
                phys["region"] = {"startLine": d.line, **({"startColumn": d.col} if d.col else {})}
            res["locations"] = [{"physicalLocation": phys}]
        results.append(res)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "nemo-migrate", "version": __version__,
                                "rules": [_rule(c) for c in used]}},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }


# ---------------------------------------------------------------------------------------------- --statistics

def statistics(items: Iterable[Diagnostic]) -> list[dict[str, Any]]:
    """Count per code (most frequent first, then by code), with the code's title, as ``ruff --statistics``."""
    from . import codes

    items = list(items)
    count = Counter(d.code for d in items)
    sev = {d.code: d.severity for d in sorted(items, key=lambda d: {"error": 0, "warning": 1, "note": 2}[d.severity], reverse=True)}
    reg = codes.registry()
    return [{"code": c, "count": n, "severity": sev[c], "title": reg[c].title if c in reg else ""}
            for c, n in sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))]


def statistics_lines(rows: list[dict[str, Any]]) -> list[str]:
    return [f"{r['count']:>5}  {r['code']}  {r['severity']:<7}  {r['title']}" for r in rows]

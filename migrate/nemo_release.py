"""The NeMo 2 release a job is read for (`convert --nemo-version`, default the latest, 2.7).

Users run NeMo 2.0 to 2.7; the releases differ in which recipes and class parameters exist
(mappings/nemo2/releases.yaml, generated from the wheels), in some defaults and recipe values, and in behaviour
(mappings/nemo2/versions.yaml).  The release of the conversion in progress is a context variable, set by
``resolve`` for each job, so that the knowledge lookups deep in schema/recipes read it without threading it through
every call.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Any, Iterator

from . import knowledge

_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("nemo_release", default=None)


def releases() -> list[str]:
    return list(knowledge.load("nemo2/releases.yaml")["releases"])


def default() -> str:
    return str(knowledge.load("nemo2/versions.yaml")["default"])


NOT_NEMO2 = "-"  # the job is a NeMo 1.0 / Aligner config lowered into the IR: no NeMo 2 release applies


def current() -> str:
    r = _CURRENT.get()
    return default() if not r or r == NOT_NEMO2 else r


def active() -> bool:
    """Whether release-dependent NeMo 2 knowledge applies to the job being read."""
    return _CURRENT.get() != NOT_NEMO2


def normalize(text: str) -> str | None:
    """'2.5', '2.5.3', 'v2.5' -> '2.5' when it is a release this knowledge covers, else None."""
    t = str(text).strip().lstrip("vV")
    parts = t.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        return None
    minor = f"{int(parts[0])}.{int(parts[1])}"
    return minor if minor in releases() else None


@contextmanager
def using(release: str | None) -> Iterator[None]:
    token = _CURRENT.set(release)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _key(r: str) -> tuple[int, ...]:
    return tuple(int(x) for x in r.split("."))


def at_least(release: str) -> bool:
    return _key(current()) >= _key(release)


def by_release(table: dict[str, Any]) -> Any:
    """The value of a {first release: value} table for the current release (None before its first release)."""
    best = None
    for since, value in sorted(table.items(), key=lambda kv: _key(str(kv[0]))):
        if _key(str(since)) <= _key(current()):
            best = value
    return best


def value(path: str) -> Any:
    """A class default / factory value that differs by release (versions.yaml `values`), or None when it does not."""
    table = (knowledge.load("nemo2/versions.yaml").get("values") or {}).get(path)
    return None if table is None or not active() else by_release(table)


def recipe_overrides(name: str) -> dict[str, Any]:
    table = (knowledge.load("nemo2/versions.yaml").get("recipes") or {}).get(name)
    return dict(by_release(table) or {}) if table and active() else {}


def fact(name: str) -> dict[str, Any]:
    return (knowledge.load("nemo2/versions.yaml").get("facts") or {})[name]


def holds(name: str) -> bool:
    return active() and current() in fact(name)["releases"]


def recipe_span(name: str) -> dict[str, Any] | None:
    """{since, until?, cli_name?} of a finetune recipe module, or None when no release ships it."""
    return (knowledge.load("nemo2/releases.yaml").get("recipes") or {}).get(name)


def recipe_missing(name: str) -> str | None:
    """Why the current release has no `llm.<name>.finetune_recipe`, or None when it has it."""
    span = recipe_span(name)
    if span is None or not active():
        return None  # not a recipe the release table knows (the recipe table decides)
    if _key(current()) < _key(str(span["since"])):
        return f"llm.{name} first ships in NeMo {span['since']}"
    if span.get("until") and _key(current()) > _key(str(span["until"])):
        return f"llm.{name} was removed after NeMo {span['until']}"
    return None


def cli_name(name: str) -> str:
    """The name NeMo-Run's CLI registers for a recipe module (its NAME), e.g. mistral_nemo_12b -> mistral_nemo_base_12b."""
    span = recipe_span(name) or {}
    return str(span.get("cli_name") or name)


def recipe_of_cli_name(cli: str) -> str | None:
    """The recipe module a CLI factory name registers (the reverse of cli_name)."""
    for mod, span in (knowledge.load("nemo2/releases.yaml").get("recipes") or {}).items():
        if (span.get("cli_name") or mod) == cli:
            return mod
    return None


def parameter_missing(cls: str, field: str) -> str | None:
    """Why the current release's class has no such parameter (releases.yaml `fields`), or None when it has it."""
    fields = (knowledge.load("nemo2/releases.yaml").get("fields") or {}).get(cls)
    if not fields or not active():
        return None
    since, until = fields.get("_since"), fields.get("_until")
    if since and _key(current()) < _key(str(since)):
        return f"{cls} first ships in NeMo {since}"
    if until and _key(current()) > _key(str(until)):
        return f"{cls} was removed after NeMo {until}"
    have = fields.get(field)
    if isinstance(have, list) and current() not in [str(x) for x in have]:
        return f"NeMo {current()}'s {cls} has no parameter '{field}' (releases that have it: {', '.join(str(x) for x in have)})"
    return None

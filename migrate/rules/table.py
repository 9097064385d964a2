"""The rule table, mappings/rules.yaml, as typed rows (loaded once).

A row owns NeMo knobs (``sources``), declares every Automodel path or launch fact it writes (``target``) and names
the transform that writes them (``transform``, a function of :mod:`nemo_migrate.rules.transforms`).  Rows are
validated with ``extra="forbid"``: a misspelt key (``defualts:``) is an error naming the row and the key, never a
row that silently does less.
"""

from __future__ import annotations

import fnmatch
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import knowledge
from ..diagnostics import did_you_mean
from ..ir import Status


class RuleTableError(Exception):
    """mappings/rules.yaml is malformed (a bug of the table, caught by tests/test_rules.py)."""


class RuleTest(BaseModel):
    """A row's case for tests/test_rules.py: ``set`` overrides (or ``factory``), then ``expect`` target values
    (``~`` = absent; ``launch.<field>`` = a launch fact) and/or the row's ``status``, or an ``error`` code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factory: str | None = None
    set: list[str] = Field(default_factory=list)
    expect: dict[str, Any] = Field(default_factory=dict)
    status: Status | None = None
    error: str | None = None


class Rule(BaseModel):
    """One row of mappings/rules.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: str
    sources: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    targets: tuple[str, ...] = Field(default=(), alias="target")
    transform: str | None = None
    always: bool = False
    defaults: tuple[str, ...] = ()
    status: Status = "exact"
    reason: str
    fact: str
    case: RuleTest = Field(alias="test")

    @field_validator("targets", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @property
    def test(self) -> dict[str, Any]:
        """The test case as written in the table (plain data: `nemo-migrate explain` prints it)."""
        return self.case.model_dump(exclude_unset=True)

    @property
    def exact_sources(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if "*" not in s)

    @property
    def globs(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if "*" in s)

    def declares(self, path: str) -> bool:
        """Whether ``path`` is one of the row's targets or lies under one (``fp8`` declares ``fp8.enabled``)."""
        return any(path == t or path.startswith(t + ".") for t in self.targets)


_KEYS = sorted({f.alias or name for name, f in Rule.model_fields.items()})
_TEST_KEYS = sorted(RuleTest.model_fields)


def parse(rows: list[dict[str, Any]], where: str = "mappings/rules.yaml") -> tuple[Rule, ...]:
    """Typed rows; a malformed row raises :class:`RuleTableError` naming the row and the key."""
    out: list[Rule] = []
    for i, raw in enumerate(rows):
        rid = raw.get("id", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
        try:
            out.append(Rule.model_validate(raw))
        except ValidationError as e:
            problems = []
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"])
                if err["type"] == "extra_forbidden":
                    leaf = str(err["loc"][-1])
                    hint = did_you_mean(leaf, _TEST_KEYS if len(err["loc"]) > 1 else _KEYS)
                    problems.append(f"unknown key '{loc}'" + (f" ({hint})" if hint else ""))
                else:
                    problems.append(f"'{loc}': {err['msg']}")
            raise RuleTableError(f"{where}: rule {rid}: " + "; ".join(problems)) from None
    ids = [r.id for r in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise RuleTableError(f"{where}: duplicate rule ids {dup}")
    return tuple(out)


@lru_cache(maxsize=None)
def table() -> tuple[Rule, ...]:
    return parse(knowledge.rules())


@lru_cache(maxsize=None)
def by_id() -> dict[str, Rule]:
    return {r.id: r for r in table()}


@lru_cache(maxsize=None)
def _exact_index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for r in table():
        for s in r.exact_sources:
            idx.setdefault(s, r.id)
    return idx


@lru_cache(maxsize=None)
def _glob_list() -> tuple[tuple[int, str, str], ...]:
    out = [(len(g.split("*", 1)[0]), g, r.id) for r in table() for g in r.globs]
    out.sort(key=lambda x: -x[0])
    return tuple(out)


def owner(path: str) -> str | None:
    """The row that owns the knob ``path``: an exact source wins, else the glob with the longest literal prefix."""
    rid = _exact_index().get(path)
    if rid is not None:
        return rid
    for _, g, rid in _glob_list():
        if g.endswith(".*") and (path.startswith(g[:-2] + ".") and fnmatch.fnmatchcase(path, g)):
            return rid
        if not g.endswith(".*") and fnmatch.fnmatchcase(path, g):
            return rid
    return None

"""Which modules Automodel 0.7's LoRA adapts: components/_peft/module_matcher.py, one implementation.

Patterns match full module names (``model.layers.0.self_attn.q_proj``): ``name == pattern`` or the anchored wildcard
regex, with 0.7.0's rule that ``.*`` after a complete dotted segment or a numeric index means "that segment's
children or nothing" (so ``*.layers.1.*`` does not match ``layers.10``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterable


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern:
    """module_matcher.py:34-51 ``_compile_wildcard_pattern``."""
    parts = re.split(r"(\.?\*)", pattern)
    rx = ""
    for i, part in enumerate(parts):
        if i % 2 == 0:
            rx += part
        elif part == ".*" and (parts[i - 1].startswith(".") or (i == 1 and parts[0]) or re.search(r"\.\d+$", parts[i - 1])):
            rx += r"(\..*)?"
        else:
            rx += "(.*)"
    return re.compile("^" + rx + "$")


def wildcard_match(pattern: str, name: str | None) -> bool:
    """module_matcher.py:54-69 ``wildcard_match``."""
    return name is not None and _compile(pattern).match(name) is not None


def matches(pattern: str, name: str) -> bool:
    """One target pattern against a module's full name (ModuleMatcher.match, module_matcher.py:156)."""
    return name == pattern or wildcard_match(pattern, name)


def _as_list(v: Any) -> list:
    return [] if v is None else [v] if isinstance(v, str) else list(v)


def lora_conflicts(peft: dict) -> list[str]:
    """The exclusive LoRA selectors a peft block combines (ModuleMatcher.__post_init__, module_matcher.py:123-130):
    "exclusive" (target_modules with exclude_modules), "match_all_linear" (with either list)."""
    tm, ex = peft.get("target_modules") or [], peft.get("exclude_modules") or []
    out = []
    if tm and ex:
        out.append("exclusive")
    if peft.get("match_all_linear") and (tm or ex):
        out.append("match_all_linear")
    return out


DEFAULT_TARGETS = ("*_proj",)  # module_matcher.py:112: no selector at all -> target_modules='*_proj'


def selectors(target_modules: Any, exclude_modules: Any, match_all_linear: Any) -> tuple[list[str], list[str], bool]:
    """ModuleMatcher.__post_init__'s normal form (module_matcher.py:100-121): None -> [], a string -> [it], and no
    selector at all -> ``*_proj``.  The conflicts of :func:`lora_conflicts` are for the caller to refuse."""
    tm, ex, mal = _as_list(target_modules), _as_list(exclude_modules), bool(match_all_linear)
    if not mal and not tm and not ex:
        tm = list(DEFAULT_TARGETS)
    return tm, ex, mal


def module_matches(name: str, is_linear: bool, target_modules: Iterable[str], exclude_modules: Iterable[str],
                   match_all_linear: bool) -> bool:
    """ModuleMatcher.match (module_matcher.py:143-166) for a module with full name ``name``: match_all_linear takes
    every linear layer; else target_modules (any kind of module); else every linear layer not excluded."""
    if match_all_linear and is_linear:
        return True
    tm, ex = list(target_modules), list(exclude_modules)
    if tm:
        return any(matches(p, name) for p in tm)
    return name not in ex and not any(wildcard_match(p, name) for p in ex) and is_linear


def linear_modules(leaves: Iterable[str], layers: int) -> list[str]:
    """The linear modules of a decoder of ``layers`` blocks whose per-block linears are ``leaves``
    (``self_attn.q_proj``, ...), plus ``lm_head``: the names LoRA patterns are matched against."""
    leaves = list(dict.fromkeys(leaves))
    return [f"model.layers.{i}.{h}" for i in range(layers) for h in leaves] + ["lm_head"]

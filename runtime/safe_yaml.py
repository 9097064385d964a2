"""One safe YAML loader with explicit limits: ``yaml.safe_load``'s values (YAML 1.1, PyYAML's resolver), built from
the event stream without recursion, so that no input can hang it, exhaust memory or overflow the stack.

* parser: libyaml's when PyYAML has it (the pure-Python one otherwise), so large files are read quickly;
* size: at most ``max_bytes`` of input; UTF-8 (a BOM is allowed) or UTF-16 with a BOM; NUL and other control bytes
  are refused by PyYAML's reader;
* aliases: every value is counted with its aliases expanded (a "billion laughs" file stops at ``max_nodes``) and at
  most ``max_aliases`` aliases are allowed;
* depth: at most ``max_depth`` nested collections (aliases included);
* integers wider than 64 bits are refused (a huge octal or sexagesimal literal cannot even be printed);
* tags: any explicit tag (``!!python/object``, ``!!binary``, ``!custom``, even ``!!str``) is refused;
* duplicate keys, complex (collection) keys and several documents in one file are refused (``safe_load`` keeps the
  last duplicate silently; it is almost always a mistake);
* merge keys (``<<: *base``) work as in ``safe_load`` (explicit keys win, then the merged maps in order).

``load(data, file=...)`` returns ``(value, lines)``: ``lines`` maps each dotted key path (``a.b[0].c``) to its
1-based line. Errors are ``YamlError`` (message, line, column, hint); the module needs PyYAML only, so any layer
can use it.
"""

from __future__ import annotations

from typing import Any

MAX_BYTES = 8 * 2**20
MAX_NODES = 200_000
MAX_ALIASES = 1_000
MAX_DEPTH = 64


class YamlError(ValueError):
    def __init__(self, message: str, *, line: int | None = None, column: int | None = None, hint: str | None = None):
        self.message, self.line, self.column, self.hint = message, line, column, hint
        super().__init__(message + (f" (line {line})" if line else ""))


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        enc = "utf-16"
    else:
        enc = "utf-8-sig"
    try:
        return data.decode(enc)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise YamlError(f"not {enc.split('-sig')[0].upper()} text: byte 0x{data[e.start]:02x} cannot be decoded",
                        line=line, hint="is this a YAML file? Save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") \
            from None


class _Coll:
    """A collection being built: its value, where it is, the pending key, its size (aliases expanded), its depth."""

    __slots__ = ("value", "path", "line", "anchor", "key", "key_line", "size", "depth", "merges", "explicit")

    def __init__(self, value, path: str, line: int, anchor: str | None):
        self.value, self.path, self.line, self.anchor = value, path, line, anchor
        self.key, self.key_line, self.size, self.depth = _NOKEY, line, 1, 1
        self.merges: list[dict] = []
        self.explicit: set = set()

    def child(self, key: Any = None) -> str:
        if isinstance(self.value, list):
            return f"{self.path}[{len(self.value)}]"
        return f"{self.path}.{key}" if self.path else str(key)


_NOKEY = object()
_MERGE = "tag:yaml.org,2002:merge"


def load(data: bytes | str, *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES,
         max_aliases: int = MAX_ALIASES, max_depth: int = MAX_DEPTH) -> tuple[Any, dict[str, int]]:
    """``yaml.safe_load(data)`` within the limits above; returns (value, {dotted path: line})."""
    import yaml
    from yaml import events as ev
    from yaml.constructor import SafeConstructor
    from yaml.nodes import ScalarNode
    from yaml.resolver import Resolver

    if len(data) > max_bytes:
        raise YamlError(f"the file is {len(data):,} bytes; YAML configs are limited to {max_bytes:,}",
                        hint="is this the right file?")
    text = _decode(data)
    resolver, constructor = Resolver(), SafeConstructor()
    anchors: dict[str, tuple[Any, int, int]] = {}  # anchor -> (value, size, depth)
    lines: dict[str, int] = {}
    stack: list[_Coll] = []
    root: list[Any] = []
    total = aliases = documents = 0

    def add(value: Any, size: int, depth: int, line: int, col: int | None, *, counted: bool = False) -> None:
        """Put a finished value (scalar, alias or collection) into the collection being built."""
        nonlocal total
        if not counted:
            total += size
            if total > max_nodes:
                raise YamlError(f"the document expands to more than {max_nodes:,} values (aliases expanded)",
                                line=line, column=col,
                                hint="a config needs far fewer values; is this a 'billion laughs' file?")
            if len(stack) + depth > max_depth:
                raise YamlError(f"nested deeper than {max_depth} levels (aliases expanded)", line=line, column=col)
        if not stack:
            root.append(value)
            return
        c = stack[-1]
        c.size += size
        c.depth = max(c.depth, depth + 1)
        if isinstance(c.value, list):
            lines[c.child()] = line
            c.value.append(value)
        elif c.key is _NOKEY:  # this value is a key
            if isinstance(value, (dict, list)):
                raise YamlError("a mapping key must be a plain value, not a list or mapping", line=line, column=col)
            c.key, c.key_line = value, line
        else:
            key, c.key = c.key, _NOKEY
            if key is _MERGE:
                maps = value if isinstance(value, list) else [value]
                if not all(isinstance(m, dict) for m in maps):
                    raise YamlError("a merge key (<<) takes a mapping or a list of mappings", line=line, column=col)
                c.merges.extend(maps)
                return
            if key in c.explicit:
                raise YamlError(f"duplicate key {key!r} (first at line {lines.get(c.child(key))})", line=c.key_line,
                                hint="remove one of them (Automodel 0.7 would silently keep the last)")
            c.explicit.add(key)
            lines[c.child(key)] = c.key_line
            c.value[key] = value

    def define(anchor: str, entry: tuple[Any, int, int], line: int) -> None:
        if anchor in anchors:
            raise YamlError(f"anchor &{anchor} is defined twice", line=line, hint="give each anchor its own name")
        anchors[anchor] = entry

    def refuse_tag(e, line: int, col: int) -> None:
        if e.tag is None:
            return
        written = (e.tag == "!" or not any(e.implicit)) if isinstance(e, ev.ScalarEvent) else not e.implicit
        if written:
            raise YamlError(f"tags are not allowed in a config ({e.tag})", line=line, column=col,
                            hint="write the plain value without the tag")

    try:
        for e in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            line, col = e.start_mark.line + 1, e.start_mark.column + 1
            if isinstance(e, ev.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise YamlError("the file holds more than one YAML document (---)", line=line,
                                    hint="keep one document per config file")
            elif isinstance(e, ev.AliasEvent):
                aliases += 1
                if aliases > max_aliases:
                    raise YamlError(f"more than {max_aliases} aliases (*name)", line=line, column=col)
                if e.anchor not in anchors:
                    raise YamlError(f"alias *{e.anchor} refers to no anchor defined before it", line=line,
                                    column=col)
                add(*anchors[e.anchor], line, col)
            elif isinstance(e, ev.ScalarEvent):
                refuse_tag(e, line, col)
                tag = resolver.resolve(ScalarNode, e.value, e.implicit)
                if tag == _MERGE and stack and isinstance(stack[-1].value, dict) and stack[-1].key is _NOKEY:
                    stack[-1].key, stack[-1].key_line = _MERGE, line
                    continue
                make = constructor.yaml_constructors.get(tag)
                try:
                    value = make(constructor, ScalarNode(tag, e.value, e.start_mark, e.end_mark)) if make else e.value
                except (ValueError, OverflowError) as x:
                    short = e.value[:40] + ("..." if len(e.value) > 40 else "")
                    raise YamlError(f"cannot read the value {short!r} ({x})", line=line, column=col,
                                    hint="quote it to keep it as text") from None
                if isinstance(value, int) and value.bit_length() > 64:
                    raise YamlError("integer wider than 64 bits", line=line, column=col,
                                    hint="no config value needs it; quote it to keep it as text")
                if e.anchor:
                    define(e.anchor, (value, 1, 0), line)
                add(value, 1, 0, line, col)
            elif isinstance(e, (ev.MappingStartEvent, ev.SequenceStartEvent)):
                refuse_tag(e, line, col)
                if len(stack) >= max_depth:
                    raise YamlError(f"nested deeper than {max_depth} levels", line=line, column=col)
                parent = stack[-1] if stack else None
                if parent is not None and isinstance(parent.value, dict) and parent.key is _NOKEY:
                    raise YamlError("a mapping key must be a plain value, not a list or mapping", line=line,
                                    column=col)
                path = "" if parent is None else parent.child(parent.key)
                total += 1
                stack.append(_Coll({} if isinstance(e, ev.MappingStartEvent) else [], path, line, e.anchor))
            elif isinstance(e, (ev.MappingEndEvent, ev.SequenceEndEvent)):
                c = stack.pop()
                if c.merges:  # explicit keys win, then the merged mappings in order (as safe_load)
                    merged: dict = {}
                    for m in c.merges:
                        for k, v in m.items():
                            merged.setdefault(k, v)
                    merged.update(c.value)
                    c.value = merged
                if c.anchor:
                    define(c.anchor, (c.value, c.size, c.depth), c.line)
                add(c.value, c.size, c.depth, c.line, None, counted=True)
    except yaml.YAMLError as x:
        mark = getattr(x, "problem_mark", None)
        if mark is not None:
            raise YamlError(f"not valid YAML: {getattr(x, 'problem', None) or x}", line=mark.line + 1,
                            column=mark.column + 1) from None
        pos = getattr(x, "position", None)  # ReaderError: a character YAML does not allow (binary data)
        if pos is not None:
            raise YamlError(f"not a text file: the character {getattr(x, 'character', '?')!r} is not allowed in YAML",
                            line=text.count("\n", 0, pos) + 1, hint="is this a YAML file?") from None
        raise YamlError(f"not valid YAML: {x}") from None
    return (root[0] if root else None), lines


__all__ = ["load", "YamlError", "MAX_BYTES", "MAX_NODES", "MAX_ALIASES", "MAX_DEPTH"]

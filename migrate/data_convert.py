"""``nemo-migrate convert-data``: NeMo chat JSONL -> the OpenAI ``messages`` JSONL Automodel's ChatDataset reads.

NeMo's chat rows (GPTSFTChatDataset, reference/nemo2-semantics.md §4.5) are ``{"system": ..., "mask": "User",
"conversations": [{"from": "User", "value": ...}, {"from": "Assistant", "value": ...}]}``.  Automodel 0.7 accepts
ShareGPT ``conversations`` only with lower-case roles (human/gpt/user/assistant...) and has no top-level
``system``, so such files fail there.  The converted row is ``{"messages": [{"role": "system", ...}, {"role":
"user", ...}, {"role": "assistant", ...}]}``: turns of the ``mask`` speaker (not trained in NeMo) become ``user``,
the others ``assistant`` (trained), so the same turns carry the loss.  Rows already in ``messages`` form pass
through.  Output is written atomically; an existing file is replaced only with ``--force``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .diagnostics import Diagnostics, MigrateError


def convert_row(row: dict, lineno: int, display: str, diags: Diagnostics) -> dict | None:
    if isinstance(row.get("messages"), list):
        return {"messages": row["messages"], **({"tools": row["tools"]} if "tools" in row else {})}
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        diags.error("NM800", "a chat row needs 'conversations' (NeMo) or 'messages' (OpenAI)", file=display, line=lineno)
        return None
    mask = row.get("mask")
    speakers = [t.get("from") for t in conv if isinstance(t, dict)]
    if mask is None:
        mask = speakers[0] if speakers else None
    msgs = []
    if isinstance(row.get("system"), str) and row["system"]:
        msgs.append({"role": "system", "content": row["system"]})
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or "value" not in t:
            diags.error("NM801", f"turn {i} has no 'value'", file=display, line=lineno)
            return None
        role = "user" if t.get("from") == mask else "assistant"
        msgs.append({"role": role, "content": str(t["value"])})
    if not any(m["role"] == "assistant" for m in msgs):
        diags.warning("NM802", "no turn would be trained (every turn is from the masked speaker)", file=display, line=lineno)
    return {"messages": msgs}


def convert_file(src: Path, dest: Path, force: bool = False) -> tuple[int, Diagnostics]:
    diags = Diagnostics()
    display = str(src)
    if dest.exists() and not force:
        diags.error("NM803", f"{dest} exists", hint="pass --force to replace it")
        raise MigrateError(diags)
    if dest.resolve() == src.resolve():
        diags.error("NM804", "the output would overwrite the input")
        raise MigrateError(diags)
    out_rows: list[str] = []
    try:
        fh = src.open("r", encoding="utf-8")
    except OSError as e:
        diags.error("NM100", f"cannot read {src}: {e.strerror or e}")
        raise MigrateError(diags) from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                diags.error("NM805", f"not JSON: {e.msg}", file=display, line=lineno, col=e.colno)
                continue
            if not isinstance(row, dict):
                diags.error("NM805", "each line must be a JSON object", file=display, line=lineno)
                continue
            new = convert_row(row, lineno, display, diags)
            if new is not None:
                out_rows.append(json.dumps(new, ensure_ascii=False))
    if diags.has_errors:
        raise MigrateError(diags)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("".join(r + "\n" for r in out_rows))
    os.replace(tmp, dest)
    return len(out_rows), diags

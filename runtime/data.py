"""Data: ColumnMappedTextInstructionDataset and ChatDataset semantics on local JSON/JSONL, 0.7's THD sequence
packing, Automodel's mock dataset, the default collater, the distributed sampler and a small stateful loader
(resumable mid-epoch).

Samples are tokenised once at start (batch calls into the fast tokenizer, then 0.7's per-sample packaging), so
batches are built in-process; ``__getitem__`` keeps 0.7's rule of moving on to the next sample when every label of
a sample is masked (the dataset length does not change).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import RunError

PAD_KEY = "___PAD_TOKEN_IDS___"


# ----------------------------------------------------------------------------------------------------------------
# Reading records
# ----------------------------------------------------------------------------------------------------------------

def read_text(path: Path, *, key: str) -> str:
    """A data file's text (UTF-8, as 0.7's JSON loaders read it); a read error or another encoding is a message
    naming the file and line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RunError(f"cannot read data file ({e.strerror or e})", key=key, found=str(path)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RunError(f"line {line} is not UTF-8 text (byte 0x{data[e.start]:02x})", file=str(path), key=key,
                       hint="0.7 reads JSON data as UTF-8: convert the file, e.g. "
                            "iconv -f latin1 -t utf-8 IN > OUT") from None


def _json(text: str):
    """``json.loads`` whose every failure is a ValueError (too deep nesting, a number beyond 4300 digits too)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_records(paths: str | list[str], *, key: str) -> list[dict[str, Any]]:
    """Rows of local JSON/JSONL files, as ``load_dataset('json', data_files=...)`` reads them."""
    rows: list[dict[str, Any]] = []
    for p in [paths] if isinstance(paths, str) else paths:
        path = Path(p)
        text = read_text(path, key=key)
        stripped = text.lstrip()
        parsed = None
        if stripped.startswith("["):
            try:
                parsed = _json(text)
            except ValueError:
                parsed = None
        if isinstance(parsed, list):
            rows.extend(parsed)
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(_json(line))
            except ValueError as e:
                raise RunError(f"line {n} is not valid JSON ({getattr(e, 'msg', e)})", file=str(path), key=key,
                               hint="each line of a .jsonl file must be one JSON object") from None
        if any(not isinstance(r, dict) for r in rows):
            raise RunError("every record must be a JSON object", file=str(path), key=key)
    if not rows:
        raise RunError("the data file(s) contain no records", key=key, found=paths)
    return rows


def mapped_fields(rows: list[dict[str, Any]], column_mapping: dict[str, str], *, key: str,
                  file: str | None = None) -> list[dict[str, Any]]:
    """{role: value} per row through column_mapping (0.7: ``{dest: row[src] for ... if src in row}``)."""
    columns = set().union(*(r.keys() for r in rows[:1000]))
    for role, col in column_mapping.items():
        if col not in columns:
            raise RunError(f"column {col!r} (column_mapping.{role}) is not in the data", file=file,
                           key=f"{key}.column_mapping.{role}", expected=f"one of {sorted(columns)}", found=col)
    out = []
    for i, row in enumerate(rows):
        mapped = {dest: row[src] for dest, src in column_mapping.items() if src in row}
        if mapped.get("answer") is None:
            raise RunError(f"record {i} has no value for the answer column {column_mapping['answer']!r}", file=file,
                           key=f"{key}.column_mapping.answer")
        out.append(mapped)
    return out


def mapped_texts(rows: list[dict[str, Any]], column_mapping: dict[str, str], *, key: str,
                 file: str | None = None) -> list[tuple[str, str]]:
    """(prompt, answer) per row: prompt = ' '.join([context, question, '']) skipping absent roles (0.7)."""
    out = []
    for mapped in mapped_fields(rows, column_mapping, key=key, file=file):
        parts = [mapped.get("context"), mapped.get("question"), ""]
        prompt = " ".join(str(x) for x in parts if x is not None)
        out.append((prompt, str(mapped["answer"])))
    return out


# ----------------------------------------------------------------------------------------------------------------
# ColumnMappedTextInstructionDataset
# ----------------------------------------------------------------------------------------------------------------

def pad_and_eos_ids(tok) -> tuple[int, int]:
    """(pad_token_id, eos_token_id) as 0.7's ColumnMapped dataset computes them (pad falls back to EOS)."""
    eos = getattr(tok, "eos_token_id", 0)
    if getattr(tok, "pad_token", None) is None:
        tok.pad_token = tok.eos_token if getattr(tok, "eos_token", None) is not None else " "
    pad = tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else None
    if pad is None:
        tok.pad_token_id = eos
    return (pad or eos), eos


def package_example(input_ids: list[int], assistant_masks: list[int], *, pad_token_id: int | None,
                    eos_token_id: int | None, seq_length: int | None, padding: Any) -> dict[str, Any]:
    """0.7's ``_package_tokenized_example`` (shifted next-token format)."""
    labels = list(input_ids)
    content = len(input_ids)
    if pad_token_id is not None and content > 0:
        end = content
        while end > 0 and input_ids[end - 1] == pad_token_id:
            end -= 1
        content = min(end + 1, content) if pad_token_id == eos_token_id else end
    ids = list(input_ids[:-1])
    content = max(0, min(content - 1, len(ids)))
    attn = [1] * content + [0] * (len(ids) - content)
    labels = [lab if m else -100 for lab, m in zip(labels, assistant_masks)]
    labels = labels[1:]
    if len(ids) != len(labels):  # only when the prompt mask is longer than the text (0.7 asserts the same)
        labels = (labels + [-100] * len(ids))[: len(ids)]
    if isinstance(seq_length, int) and padding == "max_length":
        ids = ids + [pad_token_id] * (seq_length - len(ids))
        labels = labels + [-100] * (seq_length - len(labels))
    attn = attn + [0] * (len(labels) - len(attn))
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


class ColumnMappedDataset:
    """Tokenised ColumnMappedTextInstructionDataset: the prompt/completion path, or (``chat``: one
    [system=context, user=question, assistant=answer] conversation per row, 0.7's ``use_hf_chat_template`` path with
    a tokenizer that has a chat template) ``format_chat_template``."""

    def __init__(self, pairs: list[tuple[str, str]], tok, *, seq_length: int | None = None,
                 padding: Any = "do_not_pad", truncation: Any = "do_not_truncate", answer_only_loss_mask: bool = True,
                 key: str = "dataset", chat: list[list[dict[str, Any]]] | None = None):
        self.pad_token_id, self.eos_token_id = pad_and_eos_ids(tok)
        if chat is not None:
            from jinja2.exceptions import TemplateError

            self.samples = []
            for i, conv in enumerate(chat):
                try:
                    self.samples.append(format_chat(tok, conv, eos_token_id=self.eos_token_id,
                                                    pad_token_id=self.pad_token_id, seq_length=seq_length,
                                                    padding=padding, truncation=truncation,
                                                    answer_only_loss_mask=answer_only_loss_mask))
                except (ValueError, AssertionError, TypeError, TemplateError) as e:
                    raise RunError(f"record {i}: the chat template cannot format it ({e})", key=key) from None
            self.valid = [any(lab != -100 for lab in s["labels"]) for s in self.samples]
            if not any(self.valid):
                raise RunError("every sample has all labels masked (the answers were truncated away or are empty)",
                               key=key, hint="raise seq_length, or check column_mapping.answer")
            self.num_masked_out = self.valid.count(False)
            return
        # one sample per call in 0.7, so "longest"/True pad nothing; max_length pads each sample
        call_padding = "max_length" if padding == "max_length" else False
        full = [p + a for p, a in pairs]
        saved_side = getattr(tok, "padding_side", None)
        if saved_side is not None:
            tok.padding_side = "right"
        try:
            enc = tok(full, padding=call_padding, truncation=truncation, max_length=seq_length)
        finally:
            if saved_side is not None:
                tok.padding_side = saved_side
        if answer_only_loss_mask:
            bos = [tok.bos_token_id] if getattr(tok, "add_bos_token", False) else []
            plens = [len(bos) + len(x) for x in tok([p for p, _ in pairs], add_special_tokens=False)["input_ids"]]
        else:
            plens = [0] * len(pairs)
        self.samples: list[dict[str, Any]] = []
        self.valid: list[bool] = []
        for i, ids in enumerate(enc["input_ids"]):
            masks = [0] * plens[i] + [1] * (len(ids) - plens[i])
            am = enc.get("attention_mask")
            if am is not None:
                for j in range(min(len(masks), len(am[i]))):
                    if not am[i][j]:
                        masks[j] = 0
            s = package_example(ids, masks, pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id,
                                seq_length=seq_length, padding=padding)
            self.samples.append(s)
            self.valid.append(any(lab != -100 for lab in s["labels"]))
        if not any(self.valid):
            raise RunError("every sample has all labels masked (the answers were truncated away or are empty)",
                           key=key, hint="raise seq_length, or check column_mapping.answer")
        self.num_masked_out = self.valid.count(False)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = len(self.samples)
        for _ in range(n):
            if self.valid[idx]:
                s = self.samples[idx]
                return {**s, PAD_KEY: {"input_ids": self.pad_token_id, "labels": -100, "attention_mask": 0}}
            idx = (idx + 1) % n
        raise AssertionError("unreachable: checked at construction")


# ----------------------------------------------------------------------------------------------------------------
# Chat formatting (0.7's formatting_utils.format_chat_template) and ChatDataset
# ----------------------------------------------------------------------------------------------------------------

GENERATION_RE = re.compile(r"\{%-?\s+generation\s+-?%\}")

# ShareGPT ``from`` -> OpenAI ``role``: 0.7's map, case-sensitive ("Human"/"Assistant" are refused).
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "bot": "assistant"}


def has_chat_template(tok) -> bool:
    return getattr(tok, "chat_template", None) is not None and callable(getattr(tok, "apply_chat_template", None))


def resolve_chat_template(value: str | None) -> str | None:
    """0.7's ``_resolve_chat_template``: a Jinja string as is; else the contents of an existing file (a JSON file's
    ``chat_template`` entry when it has one); else the string itself."""
    if value is None:
        return None
    if "{%" in value or "{{" in value:
        return value
    p = Path(value)
    if p.is_file():
        text = read_text(p, key="chat_template")
        try:
            return _json(text)["chat_template"]
        except (ValueError, KeyError, TypeError):
            return text
    return value


def _template_text(tok) -> str:
    t = tok.chat_template
    if isinstance(t, dict):
        t = t.get("default", next(iter(t.values())))
    return str(t)


def _fold_system(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The single system message merged into the first user turn (0.7's ``_remap_system_role``)."""
    system = next(m for m in conversation if isinstance(m, dict) and m.get("role") == "system")
    out, merged = [], False
    for m in conversation:
        if isinstance(m, dict) and m.get("role") == "system":
            continue
        if not merged and isinstance(m, dict) and m.get("role") == "user":
            out.append({**m, "content": f"{system.get('content', '')}\n{m['content']}"})
            merged = True
        else:
            out.append(m)
    if not merged:
        out.insert(0, {"role": "user", "content": system.get("content", "")})
    return out


def render_chat(tok, conversation: list[dict[str, Any]], **kwargs):
    """``apply_chat_template`` as 0.7's BOS/EOS-enforcing tokenizer calls it: at most one system message, folded into
    the first user turn when the template raises "System role not supported"."""
    n_system = sum(1 for m in conversation if isinstance(m, dict) and m.get("role") == "system")
    if n_system > 1:
        raise ValueError("System role appeared in multiple messages. Only a single system message is supported.")
    if not n_system:
        return tok.apply_chat_template(conversation, **kwargs)
    from jinja2.exceptions import TemplateError

    try:
        return tok.apply_chat_template(conversation, **kwargs)
    except TemplateError as e:
        if "System role not supported" not in str(e):
            raise
        return tok.apply_chat_template(_fold_system(conversation), **kwargs)


def _chat_ids(tok, conversation, *, tools=None, truncation: Any = "do_not_truncate", seq_length: int | None = None,
              **template_kwargs) -> list[int]:
    out = render_chat(tok, conversation, tools=tools, tokenize=True, return_dict=True,
                      return_assistant_tokens_mask=False, padding=False, truncation=truncation, max_length=seq_length,
                      **template_kwargs)
    return list(out.get("input_ids", []))


def _is_render_prefix(prefix: list[int], full: list[int], *, trailing: int | None = None) -> bool:
    """render(messages[:k]) is a prefix of render(messages), allowing a terminator the next turn replaces."""
    if len(prefix) > len(full):
        return False
    if prefix == full[:len(prefix)]:
        return True
    return len(prefix) > 1 and trailing is not None and prefix[-1] == trailing and prefix[:-1] == full[:len(prefix) - 1]


def _assistant_mask_from_prefixes(tok, conv, n_ids: int, *, tools, truncation, seq_length,
                                  full: list[int] | None, cache: dict[int, list[int]] | None) -> list[int]:
    """Every assistant turn spans [len(render(conv[:i])), len(render(conv[:i+1]))) (templates without
    {% generation %}); a prefix render that is not a prefix of the full render is an error (0.7)."""
    mask = [0] * n_ids
    if full is None:
        full = _chat_ids(tok, conv, tools=tools, truncation=truncation, seq_length=seq_length)
    lengths = {len(conv): len(full)}

    def length(k: int) -> int:
        if k not in lengths:
            ids = _chat_ids(tok, conv[:k], tools=tools, truncation=truncation, seq_length=seq_length)
            if not _is_render_prefix(ids, full, trailing=getattr(tok, "eos_token_id", None)):
                raise ValueError(
                    f"Cannot build an answer-only loss mask from conversation prefixes: rendering the first {k} "
                    "message(s) alone does not reproduce a prefix of the fully rendered conversation (the chat "
                    "template rewrites earlier turns based on later ones). Provide a chat template that wraps "
                    "assistant turns in {% generation %}...{% endgeneration %}")
            lengths[k] = len(ids)
            if cache is not None:
                cache[k] = ids
        return lengths[k]

    found = False
    for i, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        found = True
        start, end = length(i), length(i + 1)
        for j in range(min(start, n_ids), min(end, n_ids)):
            mask[j] = 1
    if not found:
        raise AssertionError("At least one assistant message is required when answer_only_loss_mask=True")
    return mask


def _shift_for_left_padding(mask: list[int], tok, attn: list[int] | None) -> list[int]:
    if getattr(tok, "padding_side", "right") != "left" or attn is None:
        return mask
    pad = len(mask) - sum(attn)
    return mask if pad <= 0 else [0] * pad + mask[:len(mask) - pad]


def _truncation_offset(tok, kept: list[int], full: list[int], what: str) -> int:
    cands = [0, len(full) - len(kept)]
    if getattr(tok, "truncation_side", "right") == "left":
        cands.reverse()
    for off in cands:
        if kept == full[off:off + len(kept)]:
            return off
    raise ValueError(f"Cannot mask {what} after truncation because the retained tokens are not a contiguous prefix "
                     "or suffix of the untruncated conversation render.")


def _truncates(truncation: Any, seq_length: int | None, n: int) -> bool:
    return truncation not in (False, None, "do_not_truncate") and (seq_length is None or n >= seq_length)


def _reasoning_mask(tok, conv, n_ids: int, *, tools, truncation, seq_length, full: list[int] | None) -> list[int]:
    """Tokens of each assistant ``reasoning_content``: the span where the full render and a render with only that
    message's reasoning cleared differ (0.7's ``_build_reasoning_mask``)."""
    mask = [0] * n_ids
    if full is None:
        full = _chat_ids(tok, conv, tools=tools, truncation=truncation, seq_length=seq_length)
    cut = _truncates(truncation, seq_length, len(full))
    ref, off = full, 0
    if cut:
        ref = _chat_ids(tok, conv, tools=tools, truncation=False, seq_length=None)
        off = _truncation_offset(tok, full, ref, "reasoning_content")
    for i, m in enumerate(conv):
        if m.get("role") != "assistant" or not m.get("reasoning_content"):
            continue
        cleared = conv[:i] + [{**m, "reasoning_content": ""}] + conv[i + 1:]
        other = _chat_ids(tok, cleared, tools=tools, truncation=False if cut else truncation,
                          seq_length=None if cut else seq_length)
        head = 0
        for a, b in zip(ref, other):
            if a != b:
                break
            head += 1
        tail, most = 0, min(len(ref) - head, len(other) - head)
        while tail < most and ref[-(tail + 1)] == other[-(tail + 1)]:
            tail += 1
        start, end = head, len(ref) - tail
        if end <= start:
            continue  # 0.7 logs a warning: the template does not render this reasoning in a separate block
        for j in range(max(0, start - off), min(len(full), end - off)):
            mask[j] = 1
    return mask


def _generation_prompt_mask(tok, conv, n_ids: int, *, tools, truncation, seq_length, full: list[int] | None,
                            cache: dict[int, list[int]] | None) -> list[int]:
    """Leading tokens of each assistant turn that ``add_generation_prompt`` would supply (role header, empty
    reasoning block), located as 0.7's ``_build_generation_prompt_mask`` does; anything ambiguous stays trained."""
    mask = [0] * n_ids
    if full is None:
        full = _chat_ids(tok, conv, tools=tools, truncation=truncation, seq_length=seq_length)
    cache = {} if cache is None else cache
    cut = _truncates(truncation, seq_length, len(full))
    ref, off = full, 0
    kw: dict[str, Any] = {"tools": tools, "truncation": truncation, "seq_length": seq_length}
    if cut:
        ref = _chat_ids(tok, conv, tools=tools, truncation=False, seq_length=None)
        off = _truncation_offset(tok, full, ref, "the generation prompt")
        kw = {"tools": tools, "truncation": False, "seq_length": None}
        cache = {}
    t = getattr(tok, "chat_template", None)
    text = " ".join(t.values()) if isinstance(t, dict) else str(t or "")
    modes = [{"enable_thinking": True}, {"enable_thinking": False}] if "enable_thinking" in text else [{}]
    for i, m in enumerate(conv):
        if m.get("role") != "assistant":
            continue
        prefix = conv[:i]
        try:
            base = cache.get(i)
            if base is None:
                base = _chat_ids(tok, prefix, **kw)
            if not _is_render_prefix(base, ref):
                continue
            prompts = [_chat_ids(tok, prefix, add_generation_prompt=True, **mode, **kw) for mode in modes]
        except Exception:  # noqa: BLE001
            if i:
                raise
            continue  # a leading assistant turn: templates reading messages[0] cannot render an empty prefix
        turn = ref[len(base):]
        matched = 0
        for ids in prompts:
            if _is_render_prefix(base, ids):
                block = ids[len(base):]
                if block and turn[:len(block)] == block:
                    matched = max(matched, len(block))
        first = len(base) - off
        for j in range(max(first, 0), min(first + matched, n_ids)):
            mask[j] = 1
    return mask


def format_chat(tok, conv: list[dict[str, Any]], *, eos_token_id: int | None, pad_token_id: int | None,
                seq_length: int | None = None, padding: Any = "do_not_pad", truncation: Any = "do_not_truncate",
                tools: list[dict] | None = None, answer_only_loss_mask: bool = True,
                mask_reasoning_content: bool = False, mask_generation_prompt: bool = False) -> dict[str, Any]:
    """0.7's ``format_chat_template`` (shifted next-token format): the trained tokens are the template's
    {% generation %} blocks (``assistant_masks``), or without them every assistant turn located by prefix renders;
    tokenizer padding is never trained; then optionally generation-prompt and reasoning tokens are removed."""
    if not has_chat_template(tok):
        raise ValueError("Tokenizer lacks a usable chat template (chat_template/apply_chat_template)")
    template = _template_text(tok)
    generation = GENERATION_RE.search(template) is not None
    has_reasoning = any(m.get("role") == "assistant" and bool(m.get("reasoning_content")) for m in conv)
    enc = render_chat(tok, conv, tools=tools, tokenize=True, return_dict=True,
                      return_assistant_tokens_mask=generation, padding=padding, truncation=truncation,
                      max_length=seq_length)
    ids = list(enc.get("input_ids"))
    attn = enc.get("attention_mask")
    full = [t for t, k in zip(ids, attn) if k] if attn is not None else None
    cache: dict[int, list[int]] | None = {} if mask_generation_prompt else None
    if generation:
        mask = list(enc["assistant_masks"])
    elif answer_only_loss_mask:
        mask = _assistant_mask_from_prefixes(tok, conv, len(ids), tools=tools, truncation=truncation,
                                             seq_length=seq_length, full=full, cache=cache)
        mask = _shift_for_left_padding(mask, tok, attn)
    else:
        mask = [1] * len(ids)
    if attn is not None:
        for j in range(min(len(mask), len(attn))):
            if not attn[j]:
                mask[j] = 0
    if mask_generation_prompt:
        gp = _generation_prompt_mask(tok, conv, len(ids), tools=tools, truncation=truncation,
                                     seq_length=seq_length, full=full, cache=cache)
        gp = _shift_for_left_padding(gp, tok, attn)
        mask = [k if not d else 0 for k, d in zip(mask, gp)]
    if mask_reasoning_content and has_reasoning:
        rm = _reasoning_mask(tok, conv, len(ids), tools=tools, truncation=truncation, seq_length=seq_length,
                             full=full)
        rm = _shift_for_left_padding(rm, tok, attn)
        mask = [k if not d else 0 for k, d in zip(mask, rm)]
    return package_example(ids, mask, pad_token_id=pad_token_id, eos_token_id=eos_token_id, seq_length=seq_length,
                           padding=padding)


def keep_last_supervised_run(seq: list[int], unsupervised: int) -> None:
    """``mask_history``: keep only the final contiguous supervised run (0.7, applied to the labels)."""
    last = next((i for i in range(len(seq) - 1, -1, -1) if seq[i] != unsupervised), -1)
    if last < 0:
        return
    start = last
    while start > 0 and seq[start - 1] != unsupervised:
        start -= 1
    for i in range(start):
        seq[i] = unsupervised


def _normalize_tool_calls(calls: Any) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise ValueError("assistant message `tool_calls` must be a list")
    out = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise ValueError(f"assistant message `tool_calls[{i}]` must be a dict")
        cid, ctype, fn = call.get("id"), call.get("type"), call.get("function")
        if cid is None or cid == "":
            cid = f"call_{i}"
        elif not isinstance(cid, str):
            raise ValueError(f"assistant message `tool_calls[{i}].id` must be a string when provided")
        if ctype is None or ctype == "":
            ctype = "function"
        elif not isinstance(ctype, str):
            raise ValueError(f"assistant message `tool_calls[{i}].type` must be a string when provided")
        if not isinstance(fn, dict):
            raise ValueError(f"assistant message `tool_calls[{i}].function` must be a dict")
        if not isinstance(fn.get("name"), str) or not fn.get("name"):
            raise ValueError(f"assistant message `tool_calls[{i}].function.name` must be a non-empty string")
        if fn.get("arguments") is None:
            raise ValueError(f"assistant message `tool_calls[{i}].function.arguments` is required")
        fn = dict(fn)
        if not isinstance(fn["arguments"], str):
            fn["arguments"] = json.dumps(fn["arguments"])
        out.append({**call, "id": cid, "type": ctype, "function": fn})
    return out


def normalize_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """0.7's ``_normalize_messages``: roles system/user/assistant/tool, content as a string (text parts joined)."""
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise ValueError(f"each message must be a JSON object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"Unsupported role in messages: {role}")
        n = dict(m)
        c = m.get("content")
        if isinstance(c, list):
            c = " ".join(p["text"] for p in c if isinstance(p, dict) and "text" in p)
        n["content"] = "" if c is None else str(c)
        if role == "assistant":
            if "reasoning_content" in m:
                r = m.get("reasoning_content")
                if r is not None and not isinstance(r, str):
                    raise ValueError("assistant message `reasoning_content` must be a string when provided")
                n["reasoning_content"] = r or ""
            if "tool_calls" in m:
                n["tool_calls"] = _normalize_tool_calls(m.get("tool_calls"))
        if role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str) or not tid:
                raise ValueError("tool message `tool_call_id` must be a non-empty string")
        out.append(n)
    return out


def conversations_to_messages(conversations: Any) -> list[dict[str, Any]]:
    """A ShareGPT ``conversations`` list (``from``/``value``) as OpenAI messages, with 0.7's role map."""
    if not isinstance(conversations, list):
        raise ValueError(f"`conversations` must be a list of turns, got {type(conversations).__name__}")
    out = []
    for turn in conversations:
        if not isinstance(turn, dict):
            raise ValueError(f"Each `conversations` turn must be a dict, got {type(turn).__name__}")
        src = turn.get("from", turn.get("role"))
        role = SHAREGPT_ROLES.get(src) if isinstance(src, str) else None
        if role is None:
            raise ValueError(f"Unsupported ShareGPT role {src!r} in `conversations` (Automodel 0.7's role map is "
                             f"case-sensitive: {', '.join(sorted(SHAREGPT_ROLES))})")
        out.append({"role": role, "content": turn.get("value", turn.get("content", ""))})
    return out


def row_messages(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict] | None]:
    """(normalised messages, tools) of one chat row, as 0.7's ``ChatDataset.__getitem__`` prepares them."""
    messages = row.get("messages")
    if messages is None and row.get("conversations") is not None:
        messages = conversations_to_messages(row["conversations"])
    if not isinstance(messages, list):
        raise ValueError("Each sample must contain a `messages` list (OpenAI format) or a `conversations` list "
                         "(ShareGPT format)")
    messages = normalize_messages(messages)
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = _json(tools)
        except ValueError as e:
            raise ValueError(f"`tools` is a string but not valid JSON: {e}") from None
    if tools is not None and not isinstance(tools, list):
        raise ValueError(f"`tools` must be a list or JSON-encoded list, got {type(tools).__name__}")
    return messages, (tools or None)


class ChatRow:
    """One chat record and where it came from (for messages)."""

    __slots__ = ("row", "file", "line")

    def __init__(self, row: Any, file: str, line: int | None):
        self.row, self.file, self.line = row, file, line

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else "the record"


def read_chat_rows(paths: str | list[str], *, key: str, skip_invalid: bool = False) -> tuple[list[ChatRow], int]:
    """Rows of local chat files as 0.7's ``_load_openai_messages`` reads them: ``.jsonl``/``.ndjson`` line by line
    (blank lines skipped; ``skip_invalid_samples`` skips malformed lines), any other file as one JSON document
    (a list of rows, or one row). Returns (rows, number of skipped lines)."""
    rows: list[ChatRow] = []
    skipped = 0
    for p in [paths] if isinstance(paths, str) else paths:
        path = Path(p)
        text = read_text(path, key=key)
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(ChatRow(_json(line.strip()), str(path), n))
                except ValueError as e:
                    if not skip_invalid:
                        raise RunError(f"line {n} is not valid JSON ({getattr(e, 'msg', e)})", file=str(path), key=key,
                                       hint="fix the line, or set skip_invalid_samples: true to skip bad lines "
                                            "(0.7)") from None
                    skipped += 1
        else:
            try:
                obj = _json(text)
            except ValueError as e:
                raise RunError(f"not valid JSON ({getattr(e, 'msg', e)} at line {getattr(e, 'lineno', '?')})",
                               file=str(path), key=key,
                               hint="0.7 reads files not named .jsonl/.ndjson as one JSON document (a list of "
                                    "rows); name a one-row-per-line file .jsonl") from None
            if isinstance(obj, list):
                rows.extend(ChatRow(r, str(path), None) for r in obj)
            else:
                rows.append(ChatRow(obj, str(path), None))
    if not rows:
        raise RunError("the data file(s) contain no records", key=key, found=paths)
    return rows, skipped


def _chat_row_error(r: ChatRow, key: str, msg: str, *, idx: int) -> RunError:
    where = r.where if r.line is not None else f"record {idx}"
    hint = None
    if "ShareGPT role" in msg:
        hint = ("use OpenAI `messages` rows ({\"role\": \"user\"|\"assistant\"|\"system\", \"content\": ...}) or "
                "lowercase ShareGPT roles; `nemo-migrate convert-data` converts NeMo chat files")
    return RunError(f"{where}: {msg}", file=r.file, key=key, hint=hint)


def chat_conversations(rows: list[ChatRow], *, key: str) -> list[tuple[list[dict[str, Any]], list[dict] | None]]:
    """(messages, tools) of every row; a malformed row is an error naming its file and line."""
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r.row, dict):
            raise _chat_row_error(r, key, "every record must be a JSON object", idx=i)
        try:
            out.append(row_messages(r.row))
        except ValueError as e:
            raise _chat_row_error(r, key, str(e), idx=i) from None
    return out


def chat_texts(rows: list[ChatRow], *, key: str) -> list[str]:
    """Training text for a locally trained tokenizer: each conversation laid out as the local chat template does."""
    from .tokenizer import chat_text

    return [chat_text(m) for m, _ in chat_conversations(rows, key=key)]


class ChatDataset:
    """Tokenised 0.7 ChatDataset: OpenAI ``messages`` (or ShareGPT ``conversations``) rows through the chat template;
    only assistant tokens are labelled. All-masked samples are served as they are (0.7 does not skip them)."""

    def __init__(self, rows: list[ChatRow], tok, *, seq_length: int | None = None, padding: Any = "do_not_pad",
                 truncation: Any = "do_not_truncate", chat_template: str | None = None,
                 mask_reasoning_content: bool = False, mask_history: bool = False,
                 mask_generation_prompt: bool = False, key: str = "dataset"):
        if chat_template is not None:
            tok.chat_template = resolve_chat_template(chat_template)
        if not has_chat_template(tok):
            raise RunError("ChatDataset requires a tokenizer with a chat template, and this one has none", key=key,
                           hint=f"set {key}.chat_template (a Jinja string or a file), or use a tokenizer that has one")
        if padding == "max_length" and getattr(tok, "padding_side", "right") == "left":
            raise RunError("padding: max_length with a left-padding tokenizer is not supported by the bundled runtime "
                           "(batches must be right-padded)", key=f"{key}.padding", found="max_length",
                           hint=f"--set {key}.padding=do_not_pad (the collater pads each batch on the right)")
        from jinja2.exceptions import TemplateError

        eos = getattr(tok, "eos_token_id", 0)
        pad = _add_pad_token(tok)
        self.pad_token_id = pad or eos
        self.eos_token_id = eos
        self.samples: list[dict[str, Any]] = []
        for i, (r, (messages, tools)) in enumerate(zip(rows, chat_conversations(rows, key=key))):
            try:
                s = format_chat(tok, messages, eos_token_id=eos, pad_token_id=self.pad_token_id,
                                seq_length=seq_length, padding=padding, truncation=truncation, tools=tools,
                                mask_reasoning_content=mask_reasoning_content,
                                mask_generation_prompt=mask_generation_prompt)
            except (ValueError, AssertionError, TypeError, TemplateError) as e:
                raise _chat_row_error(r, key, f"the chat template cannot format it ({e})", idx=i) from None
            if mask_history:
                keep_last_supervised_run(s["labels"], -100)
            self.samples.append(s)
        self.num_all_masked = sum(1 for s in self.samples if all(lab == -100 for lab in s["labels"]))
        self.num_masked_out = 0  # 0.7 trains on them as they are (no label tokens), it does not skip them

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return {**self.samples[idx], PAD_KEY: {"input_ids": self.pad_token_id, "labels": -100, "attention_mask": 0}}


def _add_pad_token(tok) -> int | None:
    """0.7's ``_add_pad_token``: the tokenizer's pad id (None when it had none; then pad falls back to EOS)."""
    pad = None
    if getattr(tok, "pad_token_id", None) is None:
        tok.pad_token_id = tok.eos_token_id
    else:
        pad = tok.pad_token_id
    if getattr(tok, "pad_token", None) is None and getattr(tok, "eos_token", None) is not None:
        tok.pad_token = tok.eos_token
    return pad


# ----------------------------------------------------------------------------------------------------------------
# Sequence packing (0.7's THD ``pack_dataset``) and dataset construction
# ----------------------------------------------------------------------------------------------------------------

def pack_samples(samples: Iterable[dict[str, Any]], *, packed_sequence_size: int, max_packs: int | None = None,
                 padding_idx: int = 0, pad_to_multiple_of: int = 1,
                 drop_long_samples: bool = True) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """0.7's greedy ``pack_dataset``: samples (already shifted input_ids/labels) are appended in order; when a pack
    overflows, everything before the last sample becomes a pack (padded to the size: input pad, label -100, position
    ids continuing from the last one, clamped) and the last sample starts the next one. Position ids restart at 0 for
    every sample; samples longer than the pack are dropped; each sample is padded to ``pad_to_multiple_of``.
    Returns (packs, stats) with seq_lens/seq_lens_padded per pack, as 0.7 stores them."""
    size = packed_sequence_size
    if pad_to_multiple_of < 1 or size % pad_to_multiple_of:
        raise ValueError("packed_sequence_size must be divisible by positive pad_to_multiple_of")
    mult = math.lcm(1, pad_to_multiple_of)
    packs: list[dict[str, list[int]]] = []
    stats = {"samples": 0, "dropped": 0}

    def full() -> bool:
        return max_packs is not None and len(packs) == max_packs

    def finish(ids: list[int], labels: list[int], pos: list[int], lens: list[int]) -> None:
        n_pad = size - len(ids)
        if mult > 1:
            padded = [-(-n // mult) * mult for n in lens]
        else:
            padded = list(lens)
        if n_pad > 0 and padded:
            padded[-1] += n_pad
        tail = [min(max(x, 0), size - 1) for x in range(pos[-1] + 1, pos[-1] + n_pad + 1)]
        packs.append({"input_ids": ids + [padding_idx] * n_pad, "labels": labels + [-100] * n_pad,
                      "position_ids": pos + tail, "seq_lens": list(lens), "seq_lens_padded": padded})

    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    lens: list[int] = []
    boundary = 0
    for s in samples:
        stats["samples"] += 1
        s_ids, s_labels = list(s["input_ids"]), list(s["labels"])
        lm = s.get("loss_mask")
        if lm:
            s_labels = [-100 if m == 0 else lab for lab, m in zip(s_labels, lm)] + s_labels[len(lm):]
        n = len(s_ids)
        if n > size:
            if drop_long_samples:
                stats["dropped"] += 1
                continue
            raise ValueError(f"Dataset sample is too long ({n} > {size}). Please increase `packed_sequence_size`.")
        if mult > 1:
            extra = -(-n // mult) * mult - n
            s_ids += [padding_idx] * extra
            s_labels += [-100] * extra
        ids += s_ids
        labels += s_labels
        pos += [x % size for x in range(len(s_ids))]
        lens.append(n)
        while len(ids) > size and not full():
            finish(ids[:boundary], labels[:boundary], pos[:boundary], lens[:-1])
            ids, labels, pos, lens = ids[boundary:], labels[boundary:], pos[boundary:], lens[-1:]
        boundary = len(ids)
        if full():
            break
    if ids and (max_packs is None or len(packs) < max_packs):
        finish(ids, labels, pos, lens)
    if not packs:
        raise ValueError(f"No packs were produced: every sample was longer than packed_sequence_size={size} and was "
                         "dropped, or the dataset was empty")
    stats["packs"] = len(packs)
    stats["packed"] = sum(len(p["seq_lens"]) for p in packs)
    stats["tokens"] = sum(sum(p["seq_lens"]) for p in packs)
    return packs, stats


class PackedDataset:
    """Packs of a tokenised dataset (0.7 THD packing); items carry per-sample ``position_ids`` (restarting at 0),
    from which the model's attention mask keeps every sample to itself (block-diagonal causal)."""

    unit = "packs"

    def __init__(self, base, *, packed_sequence_size: int, max_packs: int | None = None, padding_idx: int = 0,
                 pad_to_multiple_of: int = 1, key: str = "dataset"):
        # 0.7 iterates the dataset in order (ColumnMapped's iterator serves the next sample for an all-masked one)
        try:
            self.packs, self.stats = pack_samples((base[i] for i in range(len(base))),
                                                  packed_sequence_size=packed_sequence_size, max_packs=max_packs,
                                                  padding_idx=padding_idx, pad_to_multiple_of=pad_to_multiple_of)
        except ValueError as e:
            raise RunError(str(e), key="packed_sequence.packed_sequence_size", found=packed_sequence_size,
                           hint="raise packed_sequence_size (or seq_length-truncate the samples)") from None
        self.size = packed_sequence_size
        self.key = key
        self.pad = {"input_ids": padding_idx, "labels": -100, "position_ids": 0}
        self.num_masked_out = getattr(base, "num_masked_out", 0)  # their place in the packs went to the next sample

    def summary(self) -> str:
        st = self.stats
        fill = 100.0 * st["tokens"] / max(1, st["packs"] * self.size)
        out = (f"packing[{self.key}]: {st['packed']} samples into {st['packs']} packs of {self.size} tokens "
               f"({fill:.1f}% real tokens)")
        if st["dropped"]:
            out += f"; {st['dropped']} sample(s) longer than {self.size} dropped (0.7 THD packing)"
        if st["packed"] + st["dropped"] < st["samples"]:
            out += f"; stopped at max_packs, {st['samples'] - st['packed'] - st['dropped']} sample(s) unused"
        return out

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        p = self.packs[idx]
        return {"input_ids": p["input_ids"], "labels": p["labels"], "position_ids": p["position_ids"],
                PAD_KEY: self.pad}


def packed_causal_mask(config, position_ids):
    """The model's own causal mask for full-length ``position_ids`` [B, S]: block-diagonal causal where the position
    ids restart (packed samples), None when nothing is packed (plain causal). transformers builds exactly this from the
    position ids itself; the trainer asks for it explicitly only under sequence parallelism, where the model would
    otherwise size the mask from the sequence-sharded embeddings."""
    import torch
    from transformers.masking_utils import create_causal_mask

    b, n = position_ids.shape
    probe = torch.empty((b, n, 1), dtype=torch.float32, device=position_ids.device)
    return create_causal_mask(config=config, inputs_embeds=probe, attention_mask=None, past_key_values=None,
                              position_ids=position_ids)


def build_dataset(ds, tok, *, key: str, log=print):
    """The tokenised (and, with ``packed_sequence``, packed) dataset of a DatasetSpec; None for the mock dataset."""
    p = ds.params
    if ds.kind == "mock":
        return None
    if ds.kind == "pretokenized":
        d = PretokenizedDataset(p["path_or_dataset_id"], tok, key=key)
    elif ds.kind == "chat":
        rows, skipped = read_chat_rows(p["path_or_dataset_id"], key=f"{key}.path_or_dataset_id",
                                       skip_invalid=bool(p.get("skip_invalid_samples", False)))
        if skipped:
            log(f"note: {key}: skipped {skipped} malformed JSONL line(s) (skip_invalid_samples)")
        d = ChatDataset(rows, tok, seq_length=p.get("seq_length"), padding=p.get("padding", "do_not_pad"),
                        truncation=p.get("truncation", "do_not_truncate"), chat_template=p.get("chat_template"),
                        mask_reasoning_content=bool(p.get("mask_reasoning_content", False)),
                        mask_history=bool(p.get("mask_history", False)),
                        mask_generation_prompt=bool(p.get("mask_generation_prompt", False)), key=key)
        if d.num_all_masked:
            log(f"note: {key}: {d.num_all_masked} chat sample(s) have no assistant token left to train on "
                "(truncated away); 0.7 serves them as they are (they add no label tokens).")
    else:
        rows = read_records(p["path_or_dataset_id"], key=f"{key}.path_or_dataset_id")
        lim = p.get("limit_dataset_samples")
        if lim is not None:
            if lim > len(rows):
                raise RunError(f"limit_dataset_samples ({lim}) is larger than the dataset ({len(rows)} records)",
                               key=f"{key}.limit_dataset_samples", found=lim)
            rows = rows[:lim]
        trunc = p.get("truncation", "do_not_truncate")
        kw = dict(seq_length=p.get("seq_length"), padding=p.get("padding", "do_not_pad"), truncation=trunc,
                  answer_only_loss_mask=p.get("answer_only_loss_mask", True), key=key)
        if p.get("use_hf_chat_template") and has_chat_template(tok):
            convs = []
            for f in mapped_fields(rows, p["column_mapping"], key=key):
                convs.append([{"role": "system", "content": _text(f.get("context"))},
                              {"role": "user", "content": _text(f.get("question"))},
                              {"role": "assistant", "content": _text(f["answer"])}])
            d = ColumnMappedDataset([], tok, chat=convs, **kw)
        else:
            d = ColumnMappedDataset(mapped_texts(rows, p["column_mapping"], key=key), tok, **kw)
    if ds.packing:
        pk = ds.packing
        pad = getattr(tok, "pad_token_id", 0)
        d = PackedDataset(d, packed_sequence_size=pk["packed_sequence_size"], max_packs=pk.get("max_packs"),
                          padding_idx=0 if pad is None else pad, pad_to_multiple_of=pk.get("pad_to_multiple_of", 1),
                          key=key)
        log(d.summary())
    return d


class PretokenizedDataset:
    """Rows already in next-token form ({"input_ids": [...], "labels": [...]}, -100 = not trained), e.g. the samples
    `run --verify` tokenized as NeMo's GPTSFTDataset does."""

    def __init__(self, path: str, tok, *, key: str):
        self.pad_token_id, self.eos_token_id = pad_and_eos_ids(tok) if tok is not None else (0, 0)
        self.samples: list[dict[str, Any]] = []
        text = read_text(Path(path), key=f"{key}.path_or_dataset_id")
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = _json(line)
                ids, labels = list(row["input_ids"]), list(row["labels"])
            except (ValueError, KeyError, TypeError) as e:
                raise RunError(f"{path}:{n}: not a pretokenized row ({e})", key=f"{key}.path_or_dataset_id") from None
            if len(ids) != len(labels):
                raise RunError(f"{path}:{n}: input_ids and labels differ in length", key=f"{key}.path_or_dataset_id")
            self.samples.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
        self.valid = [any(x != -100 for x in s["labels"]) for s in self.samples]
        if not any(self.valid):
            raise RunError("every pretokenized sample has all labels masked", key=key)
        self.num_masked_out = self.valid.count(False)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = len(self.samples)
        for _ in range(n):
            if self.valid[idx]:
                return {**self.samples[idx], PAD_KEY: {"input_ids": self.pad_token_id, "labels": -100, "attention_mask": 0}}
            idx = (idx + 1) % n
        raise AssertionError("unreachable: checked at construction")


def _text(v: Any) -> str:
    return "" if v is None else (v if isinstance(v, str) else str(v))


# ----------------------------------------------------------------------------------------------------------------
# Collater, sampler, loaders
# ----------------------------------------------------------------------------------------------------------------

_DEFAULT_PAD = {"labels": -100, "attention_mask": 0, "loss_mask": 0, "input_ids": 0}


def default_collater(batch: list[dict[str, Any]], pad_seq_len_divisible: int | None = None) -> dict[str, Any]:
    """0.7's ``default_collater``: pad every list field to the longest sample (labels -100, mask 0)."""
    import torch

    pad_ids = batch[0].get(PAD_KEY) or {}
    out = {}
    for key in batch[0]:
        if key == PAD_KEY:
            continue
        values = [b[key] for b in batch]
        if all(isinstance(v, torch.Tensor) for v in values):
            out[key] = torch.cat([v.unsqueeze(0) if v.ndim == 1 else v for v in values], 0)
            continue
        n = max(len(v) for v in values)
        if pad_seq_len_divisible:
            n = math.ceil(n / pad_seq_len_divisible) * pad_seq_len_divisible
        pad = pad_ids.get(key, _DEFAULT_PAD.get(key))
        if pad is None:
            pad = values[0][-1]
        out[key] = torch.tensor([list(v) + [pad] * (n - len(v)) for v in values], dtype=torch.long)
    return out


class DistributedSamplerOrder:
    """The index order of torch's DistributedSampler (== torchdata's StatefulDistributedSampler) with drop_last."""

    def __init__(self, n: int, *, num_replicas: int, rank: int, shuffle: bool, seed: int, drop_last: bool = True):
        self.n, self.r, self.rank, self.shuffle, self.seed = n, num_replicas, rank, shuffle, seed
        if drop_last and n % num_replicas != 0:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total = self.num_samples * num_replicas
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.num_samples

    def indices(self, epoch: int) -> list[int]:
        import torch

        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        if not self.drop_last:
            pad = self.total - len(idx)
            idx += (idx * math.ceil(pad / max(len(idx), 1)))[:pad]
        else:
            idx = idx[: self.total]
        return idx[self.rank: self.total: self.r]


class MapLoader:
    """Batches of a map-style dataset in sampler order; ``state_dict`` records the epoch and batches consumed."""

    def __init__(self, dataset, *, batch_size: int, sampler: DistributedSamplerOrder, drop_last: bool = False,
                 pad_seq_len_divisible: int | None = None, pin_memory: bool = False):
        self.dataset, self.batch_size, self.sampler, self.drop_last = dataset, batch_size, sampler, drop_last
        self.pin_memory = pin_memory
        self.pad_div = pad_seq_len_divisible
        self.epoch = 0
        self.yielded = 0
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        idx = self.sampler.indices(self.epoch)
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        self.yielded = start
        for b in range(start, len(self)):
            chunk = idx[b * self.batch_size:(b + 1) * self.batch_size]
            batch = default_collater([self.dataset[i] for i in chunk], self.pad_div)
            if self.pin_memory:
                batch = {k: v.pin_memory() for k, v in batch.items()}
            self.yielded = b + 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self._resume = (int(s["epoch"]), int(s["yielded"]))
        self.epoch = int(s["epoch"])


class MockLoader:
    """Automodel's MockIterableDataset (pre-batched random tokens, labels shifted, last label -100), resumable."""

    def __init__(self, *, vocab_size: int = 1024, seq_len: int = 1024, num_samples: int = 1000000,
                 batch_size: int = 1, exclude_token_ids=None, seed: int = 42, dp_rank: int = 0):
        import torch

        self.vocab_size, self.seq_len, self.num_samples, self.bs = vocab_size, seq_len, num_samples, batch_size
        self.seed = seed + 1000003 * dp_rank
        self.g = torch.Generator()
        self.g.manual_seed(self.seed)
        excl = sorted(set(int(t) for t in (exclude_token_ids or [])))
        self.allowed = None
        if excl:
            keep = torch.ones(vocab_size, dtype=torch.bool)
            keep[excl] = False
            self.allowed = torch.nonzero(keep).flatten()
        self.epoch = 0
        self.yielded = 0
        self._resume: tuple[int, int, Any] | None = None

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
            self.g.set_state(self._resume[2])
        self._resume = None
        self.yielded = start
        for i in range(start, self.num_samples):
            shape = (self.bs, self.seq_len)
            if self.allowed is None:
                tokens = torch.randint(0, self.vocab_size, shape, generator=self.g)
            else:
                tokens = self.allowed[torch.randint(0, self.allowed.numel(), shape, generator=self.g)]
            labels = torch.cat([tokens[:, 1:], torch.full((self.bs, 1), -100, dtype=tokens.dtype)], 1)
            pos = torch.arange(self.seq_len).unsqueeze(0).expand(self.bs, -1)
            self.yielded = i + 1
            yield {"input_ids": tokens, "labels": labels, "position_ids": pos}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "yielded": self.yielded, "generator": self.g.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self._resume = (int(s["epoch"]), int(s["yielded"]), s["generator"])
        self.epoch = int(s["epoch"])


def count_label_tokens(labels, ignore_index: int = -100) -> int:
    valid = labels != -100
    if ignore_index != -100:
        valid = valid & (labels != ignore_index)
    return int(valid.sum().item())

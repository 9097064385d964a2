"""Data: ColumnMappedTextInstructionDataset semantics on local JSON/JSONL, Automodel's mock dataset, the default
collater, the distributed sampler and a small stateful loader (resumable mid-epoch).

Samples are tokenised once at start (batch calls into the fast tokenizer, then 0.7's per-sample packaging), so
batches are built in-process; ``__getitem__`` keeps 0.7's rule of moving on to the next sample when every label of
a sample is masked (the dataset length does not change).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from .errors import RunError

PAD_KEY = "___PAD_TOKEN_IDS___"


# ----------------------------------------------------------------------------------------------------------------
# Reading records
# ----------------------------------------------------------------------------------------------------------------

def read_records(paths: str | list[str], *, key: str) -> list[dict[str, Any]]:
    """Rows of local JSON/JSONL files, as ``load_dataset('json', data_files=...)`` reads them."""
    rows: list[dict[str, Any]] = []
    for p in [paths] if isinstance(paths, str) else paths:
        path = Path(p)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise RunError(f"cannot read data file ({e.strerror or e})", key=key, found=str(path)) from None
        stripped = text.lstrip()
        parsed = None
        if stripped.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = None
        if isinstance(parsed, list):
            rows.extend(parsed)
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RunError(f"line {n} is not valid JSON ({e.msg})", file=str(path), key=key,
                               hint="each line of a .jsonl file must be one JSON object") from None
        if any(not isinstance(r, dict) for r in rows):
            raise RunError("every record must be a JSON object", file=str(path), key=key)
    if not rows:
        raise RunError("the data file(s) contain no records", key=key, found=paths)
    return rows


def mapped_texts(rows: list[dict[str, Any]], column_mapping: dict[str, str], *, key: str,
                 file: str | None = None) -> list[tuple[str, str]]:
    """(prompt, answer) per row: prompt = ' '.join([context, question, '']) skipping absent roles (0.7)."""
    columns = set().union(*(r.keys() for r in rows[:1000]))
    for role, col in column_mapping.items():
        if col not in columns:
            raise RunError(f"column {col!r} (column_mapping.{role}) is not in the data", file=file,
                           key=f"{key}.column_mapping.{role}", expected=f"one of {sorted(columns)}", found=col)
    out = []
    for i, row in enumerate(rows):
        mapped = {dest: row[src] for dest, src in column_mapping.items() if src in row}
        ans = mapped.get("answer")
        if ans is None:
            raise RunError(f"record {i} has no value for the answer column {column_mapping['answer']!r}", file=file,
                           key=f"{key}.column_mapping.answer")
        parts = [mapped.get("context"), mapped.get("question"), ""]
        prompt = " ".join(str(x) for x in parts if x is not None)
        out.append((prompt, str(ans)))
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
    """Tokenised ColumnMappedTextInstructionDataset (prompt/completion path, no chat template)."""

    def __init__(self, pairs: list[tuple[str, str]], tok, *, seq_length: int | None = None,
                 padding: Any = "do_not_pad", truncation: Any = "do_not_truncate", answer_only_loss_mask: bool = True,
                 key: str = "dataset"):
        self.pad_token_id, self.eos_token_id = pad_and_eos_ids(tok)
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

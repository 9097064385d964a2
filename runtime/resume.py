"""What a checkpoint was trained with, and what differs now.

Every checkpoint's manifest records ``training``: the effective settings that change the math of training, as flat
dotted keys named like the config (``optimizer.lr``, ``peft.dim``, ``dataset.path_or_dataset_id``, the effective LR
schedule, the data files' content). On resume they are compared with the current run's: ``auto`` refuses when any
differs (listing key, old, new); ``changed`` resumes and trains on with the new values; ``never`` starts fresh.
Settings that only change how long or how the job runs (max_steps, checkpoint/validation cadence, compile, logging)
are not recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

_MISSING = "(absent)"
_HASH_LIMIT = 256 * 2**20  # files up to this size are hashed whole; larger ones by size and first/last MiB


def file_digest(path: str | Path) -> str:
    p = Path(path)
    try:
        size = p.stat().st_size
        h = hashlib.sha256()
        with p.open("rb") as f:
            if size <= _HASH_LIMIT:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                return f"sha256:{h.hexdigest()[:16]} ({size} bytes)"
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
            return f"sha256(first+last MiB):{h.hexdigest()[:16]} ({size} bytes)"
    except OSError as e:
        return f"unreadable ({e.strerror})"


def _flat(prefix: str, d: dict[str, Any] | None, out: dict[str, Any]) -> None:
    if d is None:
        out[prefix] = None
        return
    for k, v in d.items():
        if isinstance(v, dict):
            _flat(f"{prefix}.{k}", v, out)
        else:
            out[f"{prefix}.{k}"] = v


def _schedule(lr_scheduler) -> dict[str, Any] | None:
    if lr_scheduler is None:
        return None
    if hasattr(lr_scheduler, "values"):  # nemo_compat.lr_values
        v = json.dumps(lr_scheduler.values)
        return {"lr_values": f"{len(lr_scheduler.values)} values, sha256:{hashlib.sha256(v.encode()).hexdigest()[:16]}"}
    sd = dict(lr_scheduler.state_dict())
    sd.pop("num_steps", None)
    sd["init_lr"] = lr_scheduler.init_lr
    if sd.get("wd_incr_style") == "constant" or sd.get("start_wd") == sd.get("end_wd"):
        sd.pop("wd_incr_steps", None)  # no effect: the weight decay is constant
    if getattr(lr_scheduler, "wsd_decay_steps", None) is not None:
        sd.update(wsd_decay_steps=lr_scheduler.wsd_decay_steps, lr_wsd_decay_style=lr_scheduler.lr_wsd_decay_style)
    return dict(sorted(sd.items()))


def fingerprint(spec, *, lr_scheduler=None, data_digests: list[str] | None = None) -> dict[str, Any]:
    """The effective settings that change what training computes, as {dotted key: JSON value}."""
    s = spec
    fp: dict[str, Any] = {"seed": s.seed}
    _flat("model", asdict(s.model), fp)
    _flat("dataset.tokenizer", asdict(s.tokenizer), fp)
    _flat("peft", asdict(s.peft) if s.peft is not None else None, fp)
    _flat("fp8", asdict(s.fp8) if s.fp8 is not None else None, fp)
    fp["optimizer._target_"] = s.optim.target
    _flat("optimizer", dict(s.optim.kwargs), fp)
    fp["optimizer.param_group_overrides"] = s.optim.param_group_overrides
    _flat("lr_scheduler", _schedule(lr_scheduler), fp)  # effective values (defaults applied)
    fp["clip_grad_norm.max_norm"] = s.max_grad_norm
    fp["loss_fn.ignore_index"], fp["loss_fn.fp32_upcast"] = s.loss_ignore_index, s.loss_fp32_upcast
    for k in ("global_batch_size", "local_batch_size"):
        fp[f"step_scheduler.{k}"] = getattr(s.step, k)
    t = s.train
    fp["dataset.kind"] = t.kind
    _flat("dataset", dict(t.params), fp)
    if data_digests is not None:
        fp["dataset.path_or_dataset_id (content)"] = data_digests
    for k in ("shuffle", "batch_size", "drop_last", "pad_seq_len_divisible"):
        fp[f"dataloader.{k}"] = getattr(t, k)
    _flat("packed_sequence", t.packing, fp)
    d = s.dist
    for k in ("strategy", "world_size", "dp", "tp", "dp_replicate", "sequence_parallel", "param_dtype",
              "reduce_dtype", "output_dtype", "cast_forward_inputs", "autocast_dtype"):
        fp[f"distributed.{k}"] = getattr(d, k)
    c = asdict(s.compat)
    c.pop("init_adapter", None)  # where LoRA started; a resumed run continues from the checkpoint's weights
    c.pop("save_init_adapter", None)
    c.pop("lr_values", None)  # in the effective schedule
    c.pop("frozen_base", None)  # replicated vs sharded LoRA base: the same training (tests/runtime/test_rt_replicate.py)
    _flat("nemo_compat", c, fp)
    return json.loads(json.dumps(fp, default=str))


def data_digests(spec) -> list[str] | None:
    paths = spec.train.params.get("path_or_dataset_id")
    if spec.train.kind == "mock" or paths is None:
        return None
    return [file_digest(p) for p in ([paths] if isinstance(paths, str) else paths)]


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """[(key, value in the checkpoint, value now)] for every key that differs, in the order of ``new``."""
    out = []
    for k in dict.fromkeys(list(new) + list(old)):
        a, b = old.get(k, _MISSING), new.get(k, _MISSING)
        if a != b:
            out.append((k, a, b))
    return out


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def render(diffs: list[tuple[str, Any, Any]], limit: int = 12) -> str:
    parts = [f"{k} {_short(a)} -> {_short(b)}" for k, a, b in diffs[:limit]]
    if len(diffs) > limit:
        parts.append(f"and {len(diffs) - limit} more")
    return "; ".join(parts)


__all__ = ["fingerprint", "data_digests", "changes", "render", "file_digest"]

"""Checkpoints in Automodel 0.7's layout, resumable, and refused clearly when partial or corrupt.

``<checkpoint_dir>/epoch_E_step_S/``::

    config.yaml  losses.json  step_scheduler.pt  lr_scheduler.pt  dataloader/  rng/  optim/ (DCP shards)
    model/   PEFT: adapter_model.safetensors + adapter_config.json (HF PEFT) + automodel_peft_config.json + tokenizer
             full fine-tune: a consolidated HF model dir (config.json, model*.safetensors, tokenizer)
    .nemo_migrate_checkpoint.json   manifest (sizes, sha256 of files <= 256 MiB, model signature), written LAST

``LATEST`` is a symlink published after the manifest. A step dir without a manifest is an interrupted save; one whose
files do not match the manifest is corrupt: resuming from either is refused with a message (0.7 skips them with a
log line). Differences from 0.7: model/ of a full fine-tune is always a consolidated HF dir (0.7 writes DCP shards
plus consolidated/ on the final step); saving is synchronous.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .errors import CheckpointError

MANIFEST = ".nemo_migrate_checkpoint.json"
FORMAT = "nemo-migrate-runtime-checkpoint/1"
_HASH_LIMIT = 256 * 2**20
_STEP_DIR = re.compile(r"^epoch_(\d+)_step_(\d+)$")


def step_dir_name(epoch: int, step: int) -> str:
    return f"epoch_{epoch}_step_{step}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# RNG (weights_only-safe)
# ----------------------------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    import numpy as np

    py = random.getstate()
    npst = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python_version": py[0], "python_state": list(py[1]),
          "python_gauss": py[2], "numpy_key": torch.from_numpy(npst[1].astype("int64")), "numpy_pos": int(npst[2]),
          "numpy_has_gauss": int(npst[3]), "numpy_gauss": float(npst[4])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python_state"]), st["python_gauss"]))
    np.random.set_state(("MT19937", st["numpy_key"].numpy().astype("uint32"), st["numpy_pos"],
                         st["numpy_has_gauss"], st["numpy_gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def seed_all(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextmanager
def scoped_seed(seed: int):
    """Seed every RNG for the block; the state from before it is restored after."""
    saved = rng_state()
    seed_all(seed)
    try:
        yield
    finally:
        set_rng_state(saved)


# ----------------------------------------------------------------------------------------------------------------
# HF exports
# ----------------------------------------------------------------------------------------------------------------

def _plain(t: torch.Tensor) -> torch.Tensor:
    inner = getattr(t, "_tensor", None)  # torchao WeightWithDynamicFloat8CastTensor
    if isinstance(inner, torch.Tensor):
        t = inner
    return t.detach().contiguous()


def save_hf_model(out: Path, config, state_dict: dict[str, torch.Tensor], tokenizer=None, *,
                  max_shard_bytes: int = 5 * 2**30) -> None:
    """A consolidated HF model dir (config.json + safetensors shards + tokenizer) from a full state dict."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    sd = {k.replace("_orig_mod.", ""): _plain(v) for k, v in state_dict.items()}
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" in sd:
        sd.pop("lm_head.weight")
    config.save_pretrained(str(out))
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(sd):
        n = sd[k].numel() * sd[k].element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = sd[k]
        size += n
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
                 "weight_map": {}}
        for i, sh in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(sh, str(out / name), metadata={"format": "pt"})
            index["weight_map"].update({k: name for k in sh})
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)


def save_tokenizer(tokenizer, out: Path) -> None:
    hf = getattr(tokenizer, "hf", tokenizer)
    hf.save_pretrained(str(out))


def load_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("model*.safetensors"))
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def save_adapter(out: Path, tensors: dict[str, torch.Tensor], adapter_cfg: dict[str, Any],
                 extra_cfg: dict[str, Any] | None = None, tokenizer=None) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: _plain(v) for k, v in tensors.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True))
    if extra_cfg is not None:
        (out / "automodel_peft_config.json").write_text(json.dumps(extra_cfg, indent=2, sort_keys=True))
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)


# ----------------------------------------------------------------------------------------------------------------
# Manifest, discovery, verification
# ----------------------------------------------------------------------------------------------------------------

def write_manifest(path: Path, *, epoch: int, step: int, signature: dict[str, Any],
                   training: dict[str, Any] | None = None) -> None:
    files = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            rel = f.relative_to(path).as_posix()
            size = f.stat().st_size
            files[rel] = {"size": size, "sha256": _sha256(f) if size <= _HASH_LIMIT else None}
    doc = {"format": FORMAT, "epoch": epoch, "step": step, "signature": signature, "files": files,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if training is not None:
        doc["training"] = training  # the settings it was trained with (runtime/resume.py)
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path / MANIFEST)


def verify(path: Path) -> dict[str, Any]:
    """The manifest of a complete, intact checkpoint, else CheckpointError."""
    m = path / MANIFEST
    hint = (f"delete {path} (or move it away) to resume from an earlier checkpoint, or set "
            f"checkpoint.restore_from to another epoch_E_step_S dir, or use a fresh checkpoint.checkpoint_dir")
    if not path.is_dir():
        raise CheckpointError("checkpoint directory does not exist", key="checkpoint", found=str(path), hint=hint)
    if not m.is_file():
        raise CheckpointError("checkpoint is incomplete: it has no completion manifest (an interrupted save, or not "
                              "written by this runtime)", key="checkpoint", found=str(path), hint=hint)
    try:
        doc = json.loads(m.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint manifest is unreadable ({e})", key="checkpoint", found=str(m),
                              hint=hint) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError("unknown checkpoint manifest format", key="checkpoint",
                              found=doc.get("format") if isinstance(doc, dict) else type(doc).__name__,
                              expected=FORMAT, hint=hint)
    files = doc.get("files")
    ok = isinstance(files, dict) and isinstance(doc.get("step"), int) and isinstance(doc.get("epoch"), int) and all(
        isinstance(meta, dict) and isinstance(meta.get("size"), int)
        and isinstance(meta.get("sha256"), (str, type(None))) and ".." not in Path(rel).parts and not Path(rel).is_absolute()
        for rel, meta in files.items())
    if not ok or not isinstance(doc.get("signature", {}), dict) or not isinstance(doc.get("training", {}), dict):
        raise CheckpointError("checkpoint manifest is malformed (files, step, epoch, signature)", key="checkpoint",
                              found=str(m), hint=hint)
    for rel, meta in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint is missing {rel}", key="checkpoint", found=str(path), hint=hint)
        size = f.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(f"checkpoint file {rel} is corrupt (size {size} bytes, manifest says "
                                  f"{meta['size']})", key="checkpoint", found=str(path), hint=hint)
        if meta.get("sha256") and _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"checkpoint file {rel} is corrupt (sha256 differs from the manifest)",
                                  key="checkpoint", found=str(path), hint=hint)
    return doc


def list_step_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    out = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and _STEP_DIR.match(p.name)]
    return sorted(out, key=lambda p: (int(_STEP_DIR.match(p.name).group(2)), int(_STEP_DIR.match(p.name).group(1))))


def _step_of(p: Path) -> int:
    m = _STEP_DIR.match(p.name)
    return int(m.group(2)) if m else -1


def find_resume(root: Path, restore_from: str | None) -> tuple[Path | None, list[str], dict | None]:
    """(checkpoint to resume from or None, notes, its manifest). Raises CheckpointError for partial/corrupt ones."""
    notes: list[str] = []
    latest = root / "LATEST"
    if restore_from:
        if restore_from == "LATEST":
            if not latest.exists() and not latest.is_symlink():
                notes.append(f"checkpoint.restore_from=LATEST but {root} has no LATEST; starting fresh.")
                return None, notes, None
            target = _resolve_latest(latest)
        else:
            cand = root / restore_from
            target = cand if cand.exists() else Path(restore_from)
        return target, notes, verify(target)
    if latest.is_symlink() or latest.exists():
        target = _resolve_latest(latest)
        if not target.is_dir():
            raise CheckpointError("LATEST points at a checkpoint that does not exist", key="checkpoint",
                                  found=os.readlink(latest) if latest.is_symlink() else str(latest),
                                  hint=f"remove {latest} or point checkpoint.restore_from at a checkpoint")
        doc = verify(target)
        newer = [p for p in list_step_dirs(root) if _step_of(p) > _step_of(target) and not (p / MANIFEST).is_file()]
        for p in newer:
            notes.append(f"checkpoint {p.name} is incomplete (interrupted save); not used -- resuming from "
                         f"{target.name}, and {p.name} will be overwritten.")
        return target, notes, doc
    dirs = list_step_dirs(root)
    if not dirs:
        return None, notes, None
    return dirs[-1], notes, verify(dirs[-1])


def _resolve_latest(latest: Path) -> Path:
    try:
        return latest.resolve(strict=False)
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise CheckpointError(f"LATEST cannot be followed ({e})", key="checkpoint", found=str(latest),
                              hint=f"remove {latest} or point checkpoint.restore_from at a checkpoint") from None


def has_checkpoints(root: Path) -> bool:
    latest = root / "LATEST"
    return latest.is_symlink() or latest.exists() or bool(list_step_dirs(root))


def fresh_dir(root: Path) -> Path:
    """``root`` itself when it holds no checkpoint, else the first ``<root>-runN`` (N = 2, 3, ...) that is empty."""
    if not has_checkpoints(root):
        return root
    n = 2
    while True:
        cand = root.with_name(f"{root.name}-run{n}")
        if not cand.exists() or (cand.is_dir() and not any(cand.iterdir())):
            return cand
        n += 1


def save_small(obj: Any, path: Path) -> None:
    """``torch.save`` of a small state (RNG, data position, schedulers) through Python's file I/O, so that a full
    disk is an OSError naming the file (torch's own writer only says "file write failed"). Same bytes."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(buf.getvalue())


def agree(message: str | None) -> str | None:
    """Every rank learns whether any rank failed (the first failure's message), so no rank is left waiting in a
    collective after another gave up. One all_gather_object; a no-op on one process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return message
    box: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(box, message)
    return next((m for m in box if m), None)


def publish_latest(root: Path, path: Path) -> None:
    tmp = root / f".LATEST.tmp.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(path.name, tmp)
    os.replace(tmp, root / "LATEST")


def apply_retention(root: Path, keep: int | None) -> list[str]:
    if not keep:
        return []
    try:
        latest = (root / "LATEST").resolve() if (root / "LATEST").exists() else None
    except (OSError, RuntimeError):
        latest = None
    complete = [p for p in list_step_dirs(root) if (p / MANIFEST).is_file()]
    removed = []
    for p in complete[:-keep] if len(complete) > keep else []:
        if latest is not None and p.resolve() == latest:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    return removed


# ----------------------------------------------------------------------------------------------------------------
# Distributed helpers
# ----------------------------------------------------------------------------------------------------------------

PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)  # never turned into a message


def first_line(e: BaseException, n: int = 300) -> str:
    """An exception's first line, at most ``n`` characters (for a one-paragraph message)."""
    text = (str(e).strip().splitlines() or [""])[0]
    return text if len(text) <= n else text[: n - 3] + "..."


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_obj(obj: Any) -> Any:
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def save_optimizer(optimizer, model, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, optimizer)
    dcp.save({"optim": sd}, checkpoint_id=str(path))


def load_optimizer(optimizer, model, path: Path, *, partial: bool = False) -> None:
    """DCP optimizer state into ``optimizer``. ``partial`` (--resume changed): entries the checkpoint lacks (the
    lr_mult/wd_mult an lr_scheduler added since) keep this run's values instead of failing the load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    sd = {"optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(sd, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=partial))
    set_optimizer_state_dict(model, optimizer, sd["optim"])


def gather_full(model, *, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors on rank 0 (every rank must call; other ranks get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if not trainable_only:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        if rank0:
            out[n.replace("_orig_mod.", "")] = t.cpu().clone()
    return out


def load_full(model, sd: dict[str, torch.Tensor], *, broadcast: bool, strict: bool) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    multi = dist.is_initialized() and dist.get_world_size() > 1
    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=strict,
                                                              broadcast_from_rank0=broadcast and multi))

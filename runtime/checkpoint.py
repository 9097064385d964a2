"""Checkpoints in Automodel 0.7.0's layout, resumable, and refused clearly when partial or corrupt.

``<checkpoint_dir>/epoch_E_step_S/`` (0.7: ``recipes/base_recipe.py`` save_checkpoint,
``components/checkpoint/checkpointing.py``)::

    config.yaml  losses.json  step_scheduler.pt
    optim/        DCP of {"optim": flattened optimizer state, "sched": LR scheduler state} (OptimizerState)
    dataloader/dataloader_dp_rank_{dp}.pt   (save_on_dp_ranks: TP rank 0 of each DP rank)
    rng/rng_global_rank_{r}.pt              (save_on_global_ranks; StatefulRNG's dict)
    model/   PEFT: adapter_model.safetensors + adapter_config.json (HF PEFT) + automodel_peft_config.json + tokenizer
             full fine-tune: a consolidated HF model dir (config.json, model*.safetensors, tokenizer)
    .incomplete                             while the save is written (0.7's marker; removed when published)
    .nemo_migrate_checkpoint.json   manifest (sizes, sha256 of files <= 256 MiB, model signature), written LAST

``LATEST`` (and ``LOWEST_VAL`` when validation ran) are relative symlinks published after the manifest;
``training.jsonl`` / ``validation*.jsonl`` sit beside them (metrics.py). A step dir without a manifest is an
interrupted save; one whose files do not match the manifest is corrupt: resuming from either is refused with a
message (0.7 skips them with a log line). Differences from 0.7: model/ of a full fine-tune is always a consolidated
HF dir (0.7 writes DCP shards plus consolidated/ on the final step; its loader reads both); saving is synchronous.
"""

from __future__ import annotations

import hashlib
import json
import math
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
FORMAT = "nemo-migrate-runtime-checkpoint/2"  # /1: the runtime's layout before 0.7's file names
OLD_FORMAT = "nemo-migrate-runtime-checkpoint/1"
INCOMPLETE = ".incomplete"  # 0.7's marker of a save in progress (checkpoint/utils.py); removed when published
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
    """Every RNG's state as Automodel 0.7's ``StatefulRNG.state_dict`` holds it (``components/training/rng.py``
    ``_get_rng_state``: weights_only-safe primitives and tensors), so its ``rng/rng_global_rank_N.pt`` is 0.7's."""
    import numpy as np

    npst = np.random.get_state()
    return {"random_rng_state": random.getstate(), "np_bit_generator": npst[0],
            "np_keys": torch.from_numpy(npst[1].copy()), "np_position": int(npst[2]), "np_has_gauss": int(npst[3]),
            "np_cached_gaussian": float(npst[4]), "torch_rng_state": torch.get_rng_state(),
            "cuda_rng_state": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(st: dict[str, Any]) -> None:
    """The inverse of ``rng_state`` (0.7's ``_restore_rng_state``)."""
    import numpy as np

    version, internal, gauss = st["random_rng_state"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state((st["np_bit_generator"], st["np_keys"].cpu().numpy().astype("uint32"), st["np_position"],
                         st["np_has_gauss"], st["np_cached_gaussian"]))
    torch.set_rng_state(st["torch_rng_state"])
    if st["cuda_rng_state"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda_rng_state"])


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
    """Full tensors of an HF model dir; also 0.7's DCP-sharded ``shard-*-model-*.safetensors`` (read through torch's
    ``HuggingFaceStorageReader``, as 0.7's ``Checkpointer.load_model`` reads them)."""
    from safetensors.torch import load_file

    files = sorted(path.glob("model*.safetensors"))
    if not files and list(path.glob("shard-*.safetensors")):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader

        reader = HuggingFaceStorageReader(str(path))
        md = reader.read_metadata().state_dict_metadata
        sd = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in md.items()}
        dcp.load(sd, storage_reader=reader, no_dist=True)
        return sd
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
        if f.is_file() and f.name not in (MANIFEST, INCOMPLETE):
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


def automodel_written(path: Path) -> bool:
    """A complete step dir Automodel 0.7 wrote: no manifest of ours, no ``.incomplete`` marker, and 0.7's parts."""
    return (not (path / MANIFEST).exists() and not (path / INCOMPLETE).exists() and _STEP_DIR.match(path.name)
            is not None and (path / "optim" / ".metadata").is_file() and (path / "step_scheduler.pt").is_file()
            and (path / "model").is_dir())


def verify(path: Path, *, foreign_ok: bool = False) -> dict[str, Any]:
    """The manifest of a complete, intact checkpoint, else CheckpointError. ``foreign_ok`` (the user named the step
    dir in checkpoint.restore_from): a complete checkpoint Automodel 0.7 wrote is accepted, unverified."""
    m = path / MANIFEST
    hint = (f"delete {path} (or move it away) to resume from an earlier checkpoint, or set "
            f"checkpoint.restore_from to another epoch_E_step_S dir, or use a fresh checkpoint.checkpoint_dir")
    if not path.is_dir():
        raise CheckpointError("checkpoint directory does not exist", key="checkpoint", found=str(path), hint=hint)
    if automodel_written(path):
        if foreign_ok:
            g = _STEP_DIR.match(path.name)
            return {"format": "automodel-0.7", "epoch": int(g.group(1)), "step": int(g.group(2)), "signature": {},
                    "files": {}, "automodel": True}
        hint += (f"; if Automodel 0.7 wrote it, resume it with --set checkpoint.restore_from={path} (its files "
                 "are then not verified)")
    if not m.is_file():
        raise CheckpointError("checkpoint is incomplete: it has no completion manifest (an interrupted save, or not "
                              "written by this runtime)", key="checkpoint", found=str(path), hint=hint)
    try:
        doc = json.loads(m.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint manifest is unreadable ({e})", key="checkpoint", found=str(m),
                              hint=hint) from None
    if isinstance(doc, dict) and doc.get("format") == OLD_FORMAT:
        raise CheckpointError("checkpoint was saved by an earlier nemo-migrate in its own layout (rng_rank_N.pt, "
                              "dataloader_rank_N.pt, lr_scheduler.pt); this runtime reads and writes Automodel 0.7's "
                              "layout only", key="checkpoint", found=str(path),
                              hint="pass --no-resume to start fresh, or finish that run with the nemo-migrate version "
                                   "that saved it")
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
        return target, notes, verify(target, foreign_ok=True)
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


def publish_latest(root: Path, path: Path, name: str = "LATEST") -> None:
    """Point ``root/name`` (LATEST, LOWEST_VAL) at ``path``: a relative symlink, swapped atomically (0.7's
    ``CheckpointLifecycle._update_checkpoint_pointer``)."""
    tmp = root / f".{name}.tmp.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(path.name, tmp)
    os.replace(tmp, root / name)


def pointer_metric(root: Path, name: str = "LOWEST_VAL") -> float | None:
    """The validation loss in losses.json of the checkpoint ``root/name`` points at (0.7's
    ``read_checkpoint_metric``: val_loss, else default), None when there is none."""
    try:
        losses = json.loads(((root / name).resolve() / "losses.json").read_text())
        v = float(losses.get("val_loss", losses.get("default")))
    except (OSError, RuntimeError, ValueError, TypeError, AttributeError):
        return None
    return v if math.isfinite(v) else None


def apply_retention(root: Path, keep: int | None) -> list[str]:
    if not keep:
        return []
    kept = set()
    for name in ("LATEST", "LOWEST_VAL"):  # pointer targets are never pruned (as in 0.7)
        try:
            if (root / name).exists():
                kept.add((root / name).resolve())
        except (OSError, RuntimeError):
            pass
    complete = [p for p in list_step_dirs(root) if (p / MANIFEST).is_file()]
    removed = []
    for p in complete[:-keep] if len(complete) > keep else []:
        if p.resolve() in kept:
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


def _flat_opts():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True)


def save_optimizer(optimizer, model, path: Path, scheduler=None) -> None:
    """``optim/`` as 0.7's ``Checkpointer.save_optimizer`` writes it (``checkpointing.py`` ``OptimizerState``): one
    DCP checkpoint of ``{"optim": <flattened optimizer state>, "sched": <LR scheduler state>}``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd: dict[str, Any] = {"optim": get_optimizer_state_dict(model, optimizer, options=_flat_opts())}
    if scheduler is not None:
        sd["sched"] = scheduler.state_dict()
    dcp.save(sd, checkpoint_id=str(path))


def saved_keys(path: Path) -> set[str]:
    """The top-level entries (``optim``, ``sched``) of a DCP checkpoint, from its ``.metadata``."""
    from torch.distributed.checkpoint import FileSystemReader

    return {k.split(".", 1)[0] for k in FileSystemReader(str(path)).read_metadata().state_dict_metadata}


def load_optimizer(optimizer, model, path: Path, scheduler=None, *, partial: bool = False) -> dict[str, Any] | None:
    """DCP optimizer state into ``optimizer``; returns the saved LR scheduler state (None when ``optim/`` has none),
    which the caller applies. ``partial`` (--resume changed): entries the checkpoint lacks (the lr_mult/wd_mult an
    lr_scheduler added since) keep this run's values instead of failing the load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    sd: dict[str, Any] = {"optim": get_optimizer_state_dict(model, optimizer, options=_flat_opts())}
    has_sched = "sched" in saved_keys(path)
    if scheduler is not None and has_sched:
        sd["sched"] = scheduler.state_dict()
    dcp.load(sd, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=partial))
    set_optimizer_state_dict(model, optimizer, sd["optim"], options=_flat_opts())
    return sd.get("sched")


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

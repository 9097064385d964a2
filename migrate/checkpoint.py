"""``nemo-migrate convert-checkpoint``: NeMo 2 checkpoints and LoRA adapters -> Hugging Face, without NeMo.

A NeMo 2 checkpoint is a directory with ``context/`` (``model.yaml``: the model config; the tokenizer; the generation
config) and ``weights/`` (Megatron's ``torch_dist`` format: a ``torch.distributed.checkpoint`` directory whose tensors
are keyed ``module.<Megatron name>``, layers stacked on axis 0, each stored in chunks as the ranks of the run held
them).  The conversion reads ``model.yaml`` (plain YAML, never the pickled object graph), picks the architecture's
table in ``mappings/checkpoints.yaml`` and streams one stored tensor (one layer of it) at a time: planned
``torch.distributed.checkpoint`` reads of that region only (whatever the tensor-parallel chunking), the table's
transform, then straight into safetensors shards whose layout was planned up front.  ``weights/.metadata`` is
unpickled with an allow-list of the checkpoint-metadata classes and every tensor with ``weights_only``: no code in a
checkpoint ever runs.

Torch is imported only by :func:`convert` (``pip install 'nemo-migrate[runtime]'``); :func:`inspect` is torch-free and
is what ``convert`` (the job migration) uses to decide whether a restore path is a checkpoint it can convert.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Callable

from . import knowledge
from .diagnostics import Diagnostics, MigrateError
from .fsio import shown

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "fp32": "float32",
          "float32": "float32"}
_ST_DTYPE = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}
MAX_SHARD_BYTES = 5 * 10 ** 9  # transformers 4.x save_pretrained's "5GB"
EXACT_NOTE = ("NeMo's fused linear_qkv / linear_fc1 adapters (one A shared by q/k/v and by gate/up) became per-projection "
              "adapters with that A copied and B split by rows: exact for the forward pass (B_x(A h) are the rows of B(A h)); "
              "trained further, the copies of A would drift apart")


class Command(str):
    """A pre-step's text that also carries the command to run (``argv``): run.sh / sbatch.sh run it on opt-in."""

    argv: tuple[str, ...] = ()

    def __new__(cls, text: str, argv: list[str] | tuple[str, ...]):
        s = super().__new__(cls, text)
        s.argv = tuple(argv)
        return s

    def __reduce__(self):
        return (Command, (str(self), self.argv))


# ---------------------------------------------------------------------------------------------- the tables


def _tables() -> dict[str, Any]:
    return knowledge.load("checkpoints.yaml")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def architecture(name: str) -> dict[str, Any]:
    """The table of ``name`` with what it ``extends`` merged in (a null entry removes an inherited one)."""
    archs = _tables()["architectures"]
    spec = archs[name]
    if not spec.get("extends"):
        return dict(spec)
    base = architecture(spec["extends"])
    out = {k: v for k, v in spec.items() if k != "extends"}
    for part in ("expect", "config", "tensors", "lora"):
        out[part] = _merge(base.get(part) or {}, spec.get(part) or {})
    out.setdefault("hf", base.get("hf"))
    return out


def _arch_for(model_target: str) -> str | None:
    for name, spec in _tables()["architectures"].items():
        if model_target in (spec.get("models") or []):
            return name
    return None


def known_models() -> list[str]:
    return sorted(m.rsplit(".", 1)[-1] for s in _tables()["architectures"].values() for m in s.get("models") or [])


# ---------------------------------------------------------------------------------------------- locating (torch-free)


def _is_ckpt(p: Path) -> bool:
    try:
        return (p / "context").is_dir() and ((p / "weights" / ".metadata").is_file() or (p / ".metadata").is_file())
    except OSError:
        return False


def looks_like_checkpoint(path: str | Path) -> bool:
    """A local directory holding a NeMo 2 checkpoint (``context/`` and ``weights/.metadata``)."""
    try:
        p = Path(path).expanduser()
        return p.is_dir() and _is_ckpt(p)
    except (OSError, ValueError):
        return False


@dataclass
class Located:
    root: Path
    weights: Path
    context: Path
    display: str
    notes: list[str] = field(default_factory=list)


def locate(path: Path, diags: Diagnostics, search: bool = True) -> Located | None:
    """The checkpoint directory at ``path``; with ``search``, also the single step folder of a run's checkpoint dir."""
    disp = shown(path)
    try:
        if not path.exists():
            diags.error("NM950", f"{disp}: no such directory", hint="pass the NeMo 2 checkpoint directory (it holds context/ and weights/)")
            return None
        if not path.is_dir():
            hint = ("a .nemo file is a NeMo 1.0 checkpoint: convert it with NeMo's scripts/checkpoint_converters"
                    if path.suffix == ".nemo" else "pass the NeMo 2 checkpoint directory (it holds context/ and weights/)")
            diags.error("NM950", f"{disp} is not a directory; a NeMo 2 checkpoint is a directory with context/ and weights/", hint=hint)
            return None
        if _is_ckpt(path):
            return _located(path, disp)
        if (path / "weights").is_dir() or (path / ".metadata").is_file():
            diags.error("NM952", f"{disp} has weights but no context/ (the model config): this checkpoint was saved without "
                        "NeMo's context", file=disp, hint="convert a checkpoint saved with its context (NeMo saves it with every "
                        "checkpoint unless always_save_context=False), or copy context/ from the checkpoint the run started from "
                        "if the model config is the same")
            return None
        if not search:
            diags.error("NM950", f"{disp} is not a NeMo 2 checkpoint (no context/ and weights/.metadata)")
            return None
        cands = sorted({d for base in (path, path / "checkpoints") if base.is_dir() for d in base.iterdir() if d.is_dir() and _is_ckpt(d)})
    except OSError as e:
        diags.error("NM950", f"{disp}: cannot read: {e.strerror or e}")
        return None
    if len(cands) == 1:
        loc = _located(cands[0], shown(cands[0]))
        loc.notes.append(f"{disp} holds one checkpoint, {shown(cands[0])}: converting it")
        return loc
    if cands:
        names = ", ".join(c.name for c in cands[:8]) + (f" and {len(cands) - 8} more" if len(cands) > 8 else "")
        diags.error("NM951", f"{disp} holds {len(cands)} checkpoints ({names})", file=disp,
                    hint="pass the one to convert (a run's last one ends in -last; NeMo resumes from it)")
        return None
    diags.error("NM950", f"{disp} is not a NeMo 2 checkpoint: no context/ and weights/.metadata in it or in a step folder below it",
                hint="pass the directory NeMo wrote (llm.import_ckpt's output_path, or a run's checkpoints/<name>--...-step=N-.../)")
    return None


def _located(p: Path, disp: str) -> Located:
    weights = p / "weights" if (p / "weights").is_dir() else p
    return Located(root=p, weights=weights, context=p / "context", display=disp)


# ---------------------------------------------------------------------------------------------- the context (torch-free)


@dataclass
class Context:
    loc: Located
    model: dict[str, Any]          # context/model.yaml
    cfg: dict[str, Any]            # its `config`
    lines: dict[str, int]          # dotted key -> line in model.yaml
    yaml_display: str
    arch: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    peft: dict[str, Any] | None = None    # model_transform, for adapter checkpoints
    tokenizer_dir: Path | None = None

    def where(self, key: str) -> dict[str, Any]:
        line = self.lines.get(key)
        return {"file": self.yaml_display, "line": line} if line else {"file": self.yaml_display}


def _target(v: Any) -> Any:
    """``{_target_: x, _call_: false}`` (a callable or dtype in model.yaml) -> ``x``."""
    return v.get("_target_") if isinstance(v, dict) and "_target_" in v else v


def _line_map(node: Any, prefix: str = "", depth: int = 0, out: dict | None = None) -> dict[str, int]:
    from ruamel.yaml.nodes import MappingNode

    out = {} if out is None else out
    if isinstance(node, MappingNode) and depth < 3:
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            _line_map(v, key + ".", depth + 1, out)
    return out


def read_context(loc: Located, diags: Diagnostics) -> Context | None:
    from .sources.yaml_source import compose_file, load_yaml_file

    path = loc.context / "model.yaml"
    disp = shown(path)
    if not path.is_file():
        hint = ("NeMo 2.0 wrote only context/io.json; load the checkpoint once with NeMo >= 2.1 and save it again "
                "(llm.import_ckpt / a training run write model.yaml)" if (loc.context / "io.json").is_file() else
                "the checkpoint's context/ is incomplete")
        diags.error("NM952", f"{disp} is missing: the model config of the checkpoint cannot be read", file=disp, hint=hint)
        return None
    d = Diagnostics()
    model = load_yaml_file(path, disp, d, code="NM952")
    node = compose_file(path, disp, Diagnostics(), code="NM952")
    diags.extend(d.items)
    if d.has_errors:
        return None
    if not isinstance(model, dict) or not isinstance(model.get("config"), dict):
        diags.error("NM952", "model.yaml holds no model config (a mapping with `config:`)", file=disp)
        return None
    ctx = Context(loc=loc, model=model, cfg=model["config"], lines=_line_map(node), yaml_display=disp)
    target = str(model.get("_target_", ""))
    ctx.arch = _arch_for(target)
    if ctx.arch is None:
        refused = _tables().get("refused", {})
        what = refused.get(target)
        name = target.rsplit(".", 1)[-1] or "(no _target_)"
        diags.error("NM953", f"the checkpoint's model is {name}" + (f" ({what})" if what else "") + ": no Hugging Face mapping for it",
                    key="_target_", **ctx.where("_target_"),
                    hint=f"convert-checkpoint knows {', '.join(known_models())}; for another model use NeMo's own "
                         "llm.export_ckpt(path, target='hf') where NeMo is installed")
        return ctx
    ctx.spec = architecture(ctx.arch)
    _check_expect(ctx, diags)
    _check_sizes(ctx, diags)
    mt = model.get("model_transform")
    if isinstance(mt, dict) and mt:
        ctx.peft = dict(mt)
    tok = model.get("tokenizer")
    if isinstance(tok, dict) and str(tok.get("_target_", "")).endswith("AutoTokenizer"):
        name = tok.get("pretrained_model_name")
        cand = loc.context / name if isinstance(name, str) and name else None
        if cand is not None and cand.is_dir() and loc.context.resolve() in cand.resolve().parents:  # never outside context/
            ctx.tokenizer_dir = cand
    return ctx


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return have is want
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return math.isclose(have, want)
    return have == want


def _check_expect(ctx: Context, diags: Diagnostics) -> None:
    for key, want in (ctx.spec.get("expect") or {}).items():
        if want == "any" or key not in ctx.cfg:
            continue
        have = _target(ctx.cfg[key])
        if not _same(have, want):
            diags.error("NM954", f"config.{key} is {have!r}; the {ctx.arch} mapping assumes {want!r}: its Hugging Face model "
                        "would load these weights but compute something else", key=f"config.{key}", **ctx.where(f"config.{key}"),
                        hint="no Hugging Face architecture known to convert-checkpoint computes this model; NeMo's own "
                             "llm.export_ckpt(target='hf') is the way out where it supports it")


def _check_sizes(ctx: Context, diags: Diagnostics) -> None:
    c = ctx.cfg
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
                "vocab_size", "num_moe_experts"):
        v = c.get(key)
        required = key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads")
        if (v is not None or required) and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            diags.error("NM952", f"config.{key} is {v!r}: a positive integer is needed", key=f"config.{key}", **ctx.where(f"config.{key}"))
    heads, groups = c.get("num_attention_heads"), c.get("num_query_groups")
    if isinstance(heads, int) and isinstance(groups, int) and groups > 0 and heads % groups:
        diags.error("NM952", f"config.num_attention_heads {heads} is not a multiple of num_query_groups {groups}",
                    key="config.num_query_groups", **ctx.where("config.num_query_groups"))


def inspect(path: str | Path) -> tuple[Context | None, Diagnostics]:
    """Torch-free: read and check a checkpoint's context (what ``convert`` needs to know before pointing a job at it)."""
    diags = Diagnostics()
    loc = locate(Path(path).expanduser(), diags, search=False)
    ctx = read_context(loc, diags) if loc else None
    return ctx, diags


def shape(ctx: Context) -> tuple[str, dict[str, int]]:
    """The module family (mappings/modules.yaml) and the shape of the checkpoint's model, as the rule table uses them."""
    c = ctx.cfg
    heads = int(c["num_attention_heads"])
    return ctx.spec.get("family", "llama"), {"layers": int(c["num_layers"]), "hidden": int(c["hidden_size"]),
                                             "ffn": int(c["ffn_hidden_size"]), "heads": heads,
                                             "kv_heads": int(c.get("num_query_groups") or heads), "vocab": int(c.get("vocab_size") or 0)}


def default_output(path: str) -> str:
    """Where ``convert`` puts a converted checkpoint: next to it, ``<path>-hf``."""
    return path.rstrip("/") + "-hf"


def command(path: str, out: str) -> Command:
    import shlex

    argv = ["nemo-migrate", "convert-checkpoint", path, "-o", out]
    return Command(" ".join(shlex.quote(a) for a in argv), argv)


# ---------------------------------------------------------------------------------------------- geometry and config


def _geometry(ctx: Context) -> dict[str, int]:
    c = ctx.cfg
    heads = int(c["num_attention_heads"])
    hidden = int(c["hidden_size"])
    groups = int(c.get("num_query_groups") or heads)
    head_dim = int(c.get("kv_channels") or hidden // heads)
    return {"heads": heads, "groups": groups, "head_dim": head_dim, "hidden": hidden, "layers": int(c["num_layers"]),
            "experts": int(c.get("num_moe_experts") or 0)}


def _llama3_rope(c: dict) -> dict | None:
    if c.get("scale_factor") is None:
        return None
    return {"rope_type": "llama3", "factor": c["scale_factor"], "low_freq_factor": c.get("low_freq_factor", 1.0),
            "high_freq_factor": c.get("high_freq_factor", 4.0), "original_max_position_embeddings": c.get("old_context_len", 8192)}


def _window(c: dict) -> int | None:
    w = c.get("window_size")
    return int(w[0]) if isinstance(w, (list, tuple)) and w and w[0] else None


_DERIVED: dict[str, Callable[[dict, dict], Any]] = {
    "kv_heads": lambda c, f: int(c.get("num_query_groups") or c["num_attention_heads"]),
    "head_dim": lambda c, f: int(c.get("kv_channels") or c["hidden_size"] // c["num_attention_heads"]),
    "vocab_size": lambda c, f: f["vocab_size"],
    "dtype": lambda c, f: f["dtype"],
    "bos": lambda c, f: f.get("bos"),
    "eos": lambda c, f: f.get("eos"),
    "pad": lambda c, f: f.get("pad"),
    "llama3_rope": lambda c, f: _llama3_rope(c),
    "window": lambda c, f: _window(c),
}


def hf_config(ctx: Context, facts: dict[str, Any]) -> dict[str, Any]:
    """config.json for the converted model (``facts``: vocab_size, dtype; bos, eos, pad when the tokenizer was read)."""
    out: dict[str, Any] = dict(ctx.spec["hf"])
    for key, src in (ctx.spec.get("config") or {}).items():
        if isinstance(src, dict):
            val = src.get("value")
        elif isinstance(src, str) and src.startswith("$"):
            val = _DERIVED[src[1:]](ctx.cfg, facts)
        else:
            val = _target(ctx.cfg.get(src))
        if val is not None or (src in ("$bos", "$eos", "$pad") and facts.get("tokenizer")):
            out[key] = val  # a special token the tokenizer does not have is written as null (not HF's default id)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------- reading (torch)

_SAFE_GLOBALS = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    *(("pathlib", n) for n in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")),  # StorageMeta.checkpoint_id
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    *(("torch.distributed.checkpoint.planner", n) for n in (
        "SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "LoadPlan", "ReadItem", "LoadItemType")),
}


def _safe_metadata(path: Path) -> Any:
    """``weights/.metadata`` (a pickle) with only the checkpoint-metadata classes and torch dtypes allowed."""
    import pickle

    import torch

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _SAFE_GLOBALS:
                return super().find_class(module, name)
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not checkpoint metadata (refused: it could run code)")

    with open(path, "rb") as f:
        return Restricted(f).load()


class _Sink:
    """The planner side of FileSystemReader.read_data: every read lands in one destination tensor."""

    def __init__(self, dest: Any):
        self.dest = dest

    def resolve_tensor(self, req: Any) -> Any:
        t = self.dest
        for dim, (off, length) in enumerate(zip(req.dest_offsets, req.lengths)):
            t = t.narrow(dim, off, length)
        return t

    def commit_tensor(self, req: Any, tensor: Any) -> None:
        pass

    def load_bytes(self, req: Any, value: Any) -> None:  # never planned
        raise AssertionError("no byte entries are read")


class CheckpointError(Exception):
    pass


class Reader:
    """Planned reads of regions of the stored tensors (one layer / expert at a time)."""

    def __init__(self, weights: Path):
        from torch.distributed.checkpoint import FileSystemReader

        meta = weights / ".metadata"
        try:
            self.md = _safe_metadata(meta)
        except Exception as e:  # noqa: BLE001 - any damage to the file is the user's to fix, not a traceback
            raise CheckpointError(f"{shown(meta)}: cannot read the checkpoint metadata: {e}") from None
        if not hasattr(self.md, "state_dict_metadata") or not hasattr(self.md, "storage_data"):
            raise CheckpointError(f"{shown(meta)} is not torch.distributed.checkpoint metadata")
        self.fs = FileSystemReader(str(weights))
        self.fs.set_up_storage_reader(self.md, True)
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.tensors = {k: v for k, v in self.md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
        self.other = [k for k in self.md.state_dict_metadata if k not in self.tensors]

    def shape(self, fqn: str) -> tuple[int, ...]:
        return tuple(self.tensors[fqn].size)

    def dtype(self, fqn: str) -> Any:
        return self.tensors[fqn].properties.dtype

    def covered(self, fqn: str, axis: int = 0) -> list[int]:
        """Indices along ``axis`` that the stored chunks cover (adapters on some layers only)."""
        idx: set[int] = set()
        for c in self.tensors[fqn].chunks:
            idx.update(range(c.offsets[axis], c.offsets[axis] + c.sizes[axis]))
        return sorted(idx)

    def read(self, fqn: str, lead: tuple[int, ...] = ()) -> Any:
        import torch
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
        from torch.distributed.checkpoint.planner import LoadPlan
        from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

        tmd = self.tensors[fqn]
        size = tuple(tmd.size)
        n = len(lead)
        region = ChunkStorageMetadata(offsets=torch.Size(lead + (0,) * (len(size) - n)), sizes=torch.Size((1,) * n + size[n:]))
        items = create_read_items_for_chunk_list(fqn, tmd, [region])
        if sum(math.prod(i.lengths) for i in items) != math.prod(region.sizes):
            raise CheckpointError(f"{fqn}{list(lead) if lead else ''}: the stored chunks do not cover it (a checkpoint "
                                  "written by only some of the ranks?)")
        try:
            if len(items) == 1 and self._plain(items[0]):
                # one stored chunk holds the region (Megatron stores a chunk per layer and rank): the loaded tensor is
                # the result, without a second copy (the peak stays at one tensor, not two)
                t = self._load(items[0])
                for dim, (off, length) in enumerate(zip(items[0].storage_offsets, items[0].lengths)):
                    t = t.narrow(dim, off, length)
                if tuple(t.shape) != tuple(region.sizes) or t.dtype != tmd.properties.dtype:
                    raise CheckpointError(f"{fqn}: a stored chunk is {list(t.shape)} {t.dtype}, the metadata says "
                                          f"{list(region.sizes)} {tmd.properties.dtype}")
                return t.reshape(size[n:])
            dest = torch.empty(tuple(region.sizes), dtype=tmd.properties.dtype)
            self.fs.read_data(LoadPlan(items), _Sink(dest)).wait()
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - a truncated or damaged .distcp file
            raise CheckpointError(f"{fqn}: cannot read its data: {type(e).__name__}: {e}") from None
        return dest.reshape(size[n:])

    def _plain(self, item: Any) -> bool:
        info = self.fs.storage_data.get(item.storage_index)
        return info is not None and not getattr(info, "transform_descriptors", None) and hasattr(self.fs, "_slice_file")

    def _load(self, item: Any) -> Any:
        """One stored chunk, as FileSystemReader.read_data loads it (torch.load of its byte range, weights_only)."""
        import torch

        info = self.fs.storage_data[item.storage_index]
        with open(Path(self.fs.path) / info.relative_path, "rb") as f:
            return torch.load(self.fs._slice_file(f, info), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------- transforms


def _qkv_parts(t: Any, g: dict[str, int]) -> list[Any]:
    heads, groups, hd = g["heads"], g["groups"], g["head_dim"]
    per = heads // groups
    rest = tuple(t.shape[1:])
    v = t.reshape(groups, per + 2, hd, *rest)
    return [v[:, :per].reshape(heads * hd, *rest), v[:, per].reshape(groups * hd, *rest), v[:, per + 1].reshape(groups * hd, *rest)]


def _apply(transform: str, t: Any, g: dict[str, int], vocab: int) -> list[Any]:
    import torch

    if transform == "copy":
        return [t]
    if transform == "vocab":
        return [t[:vocab]]
    if transform == "halves":
        return list(t.chunk(2, dim=0))
    if transform == "qkv":
        return _qkv_parts(t, g)
    if transform == "qkv_cat":
        return [torch.cat(_qkv_parts(t, g), dim=0)]
    raise KeyError(transform)


def _out_shapes(transform: str, inner: tuple[int, ...], g: dict[str, int], vocab: int, n_out: int) -> list[tuple[int, ...]] | str:
    """Shapes of the outputs, or why the stored shape does not fit the model config."""
    rows, rest = (inner[0], inner[1:]) if inner else (0, ())
    if transform in ("qkv", "qkv_cat"):
        want = (g["heads"] + 2 * g["groups"]) * g["head_dim"]
        if rows != want or g["heads"] % g["groups"]:
            return f"{rows} rows; the config's {g['heads']} heads, {g['groups']} query groups of {g['head_dim']} need {want}"
        if transform == "qkv_cat":
            return [inner]
        return [(g["heads"] * g["head_dim"], *rest), (g["groups"] * g["head_dim"], *rest), (g["groups"] * g["head_dim"], *rest)][:n_out]
    if transform == "halves":
        if rows % 2:
            return f"{rows} rows cannot be split into gate and up halves"
        return [(rows // 2, *rest)] * 2
    if transform == "vocab":
        if rows < vocab:
            return f"{rows} rows, fewer than the vocabulary of {vocab}"
        return [(vocab, *rest)]
    return [inner]


# ---------------------------------------------------------------------------------------------- writing


class ShardWriter:
    """safetensors files written tensor by tensor in a layout planned up front (the safetensors library writes a whole
    dict at once, which would hold a shard in memory).  Format: 8-byte little-endian header length, JSON header
    (name -> dtype, shape, data_offsets), the tensors' bytes back to back."""

    def __init__(self, out: Path, plan: list[tuple[str, str, tuple[int, ...]]], max_bytes: int = MAX_SHARD_BYTES,
                 single_name: str | None = None):
        sizes = [(n, d, s, math.prod(s) * _itemsize(d)) for n, d, s in plan]
        shards: list[list] = [[]]
        acc = 0
        for item in sizes:
            if shards[-1] and acc + item[3] > max_bytes:
                shards.append([])
                acc = 0
            shards[-1].append(item)
            acc += item[3]
        total = len(shards)
        self.files = [single_name if single_name and total == 1 else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
                      for i in range(total)]
        self.out, self.shards, self.total_size = out, shards, sum(x[3] for x in sizes)
        self.order = [(i, n) for i, sh in enumerate(shards) for n, *_ in sh]
        self.pos = 0
        self.fh = None
        self.weight_map = {n: self.files[i] for i, n in self.order}

    def _open(self, i: int) -> None:
        if self.fh:
            self.fh.close()
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        off = 0
        for n, d, s, nb in self.shards[i]:
            header[n] = {"dtype": _ST_DTYPE[d], "shape": list(s), "data_offsets": [off, off + nb]}
            off += nb
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.fh = open(self.out / self.files[i], "wb")
        self.fh.write(len(blob).to_bytes(8, "little") + blob)

    def write(self, name: str, t: Any) -> None:
        i, want = self.order[self.pos]
        if name != want:
            raise AssertionError(f"write order: {name} instead of {want}")
        if self.pos == 0 or self.order[self.pos - 1][0] != i:
            self._open(i)
        self.pos += 1
        import torch

        data = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        self.fh.write(memoryview(data))

    def close(self) -> None:
        if self.fh:
            self.fh.close()
            self.fh = None
        if self.pos != len(self.order):
            raise AssertionError(f"{len(self.order) - self.pos} planned tensors were not written")

    def index(self) -> dict[str, Any]:
        return {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map.items()))}


def _itemsize(dtype: str) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}[dtype]


# ---------------------------------------------------------------------------------------------- converting


@dataclass
class Unit:
    fqn: str
    lead: tuple[int, ...]
    transform: str
    outputs: list[tuple[str, tuple[int, ...]]]


@dataclass
class Result:
    kind: str                   # "model" | "peft"
    arch: str
    source: str
    out: str
    files: list[str]
    tensors: int
    bytes: int
    dtype: str
    notes: list[str]
    diags: Diagnostics

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "architecture": self.arch, "source": self.source, "out": self.out, "files": self.files,
                "tensors": self.tensors, "bytes": self.bytes, "dtype": self.dtype, "notes": self.notes,
                "diagnostics": self.diags.to_json()}


def _ignored(key: str) -> bool:
    t = _tables()
    return key.startswith(tuple(t["ignore_prefixes"])) or any(s in key for s in t["ignore_suffixes"])


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _dtype_name(dt: Any) -> str:
    return str(dt).replace("torch.", "")


def _plan_model(ctx: Context, rd: Reader, vocab: int, diags: Diagnostics) -> list[Unit]:
    g = _geometry(ctx)
    tied = bool(ctx.cfg.get("share_embeddings_and_output_weights"))
    units: list[tuple[tuple, Unit]] = []
    consumed: set[str] = set()
    for order, (meg, entry) in enumerate((ctx.spec.get("tensors") or {}).items()):
        if entry.get("when") == "untied" and tied:
            continue
        names = [f"module.{n}" for n in [meg, *(entry.get("aliases") or [])]]
        found = [n for n in names if n in rd.tensors]
        if not found:
            if not entry.get("optional"):
                diags.error("NM957", f"the checkpoint has no {meg} (the {ctx.arch} model needs it for "
                            f"{entry['hf'] if isinstance(entry['hf'], str) else ', '.join(entry['hf'])})",
                            file=ctx.loc.display, hint="is this a complete model checkpoint (not an adapter-only or "
                            "pipeline-stage checkpoint)? convert the checkpoint the run saved or started from")
            continue
        if len(found) > 1:
            diags.error("NM956", f"the checkpoint stores {meg} twice ({', '.join(found)})", file=ctx.loc.display)
            continue
        fqn = found[0]
        consumed.add(fqn)
        hf = [entry["hf"]] if isinstance(entry["hf"], str) else list(entry["hf"])
        transform = entry.get("transform", "copy")
        shape = rd.shape(fqn)
        axes = [("L", g["layers"])] if "<L>" in hf[0] else []
        if "<E>" in hf[0]:
            axes.append(("E", g["experts"]))
        dt = rd.dtype(fqn)
        if _dtype_name(dt) not in _ST_DTYPE:
            diags.error("NM966", f"{fqn} is stored as {_dtype_name(dt)}: quantized / FP8 weights are not converted",
                        file=ctx.loc.display, hint="convert a checkpoint with bf16/fp16/fp32 weights (FP8 training keeps them)")
            continue
        bad = next((f"axis {i} has {shape[i] if i < len(shape) else 'no'} entries, the config {n}"
                    for i, (_, n) in enumerate(axes) if i >= len(shape) or shape[i] != n), None)
        shapes = _out_shapes(transform, shape[len(axes):], g, vocab, len(hf)) if bad is None else bad
        if isinstance(shapes, str):
            diags.error("NM958", f"{fqn} {list(shape)}: {shapes}", file=ctx.loc.display,
                        hint="model.yaml does not describe these weights (a different model's context/?)")
            continue
        for lead in product(*(range(n) for _, n in axes)):
            subst = dict(zip([a for a, _ in axes], lead))
            outs = [(h.replace("<L>", str(subst.get("L", ""))).replace("<E>", str(subst.get("E", ""))), s) for h, s in zip(hf, shapes)]
            units.append(((1 if axes else 0, lead, order), Unit(fqn, tuple(lead), transform, outs)))
    _unknown(ctx, rd, consumed, diags)
    return [u for _, u in sorted(units, key=lambda x: x[0])]


def _unknown(ctx: Context, rd: Reader, consumed: set[str], diags: Diagnostics, what: str = "model") -> None:
    unknown = sorted(k for k in rd.tensors if k not in consumed and not _ignored(k))
    if unknown:
        shown_ = ", ".join(unknown[:6]) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
        diags.error("NM956", f"{len(unknown)} stored tensor(s) have no place in the Hugging Face {ctx.arch} {what}: {shown_}",
                    file=ctx.loc.display, hint="the model differs from the architecture's table (extra modules, a quantizer, "
                    "a different layer spec); converting without them would be silently wrong")


def _tokenizer_facts(path: Path | None, diags: Diagnostics, where: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        return {"tokenizer": True, "len": len(tok), "bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}
    except Exception as e:  # noqa: BLE001 - a tokenizer transformers cannot read: the files are still copied
        diags.warning("NM961", f"cannot load the tokenizer in {shown(path)} with transformers ({type(e).__name__}: {e}); "
                      "its files are copied, bos/eos ids are left out of config.json", file=where)
        return {}


def _copy_files(src: Path, dest: Path) -> list[str]:
    out = []
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.is_symlink():
            shutil.copyfile(f, dest / f.name)
            out.append(f.name)
    return out


def _convert_model(ctx: Context, rd: Reader, stage: Path, dtype: str | None, tokenizer: Path | None,
                   diags: Diagnostics, notes: list[str], log: Callable[[str], None], max_shard_bytes: int) -> tuple[int, int, str]:
    tok_dir = tokenizer or ctx.tokenizer_dir
    facts_tok = _tokenizer_facts(tok_dir, diags, ctx.yaml_display)
    vocab = ctx.cfg.get("vocab_size") or facts_tok.get("len")
    if not vocab:
        diags.error("NM959", "the vocabulary size is unknown: config.vocab_size is null and the tokenizer cannot be read",
                    **ctx.where("config.vocab_size"), hint="pass --tokenizer DIR (the model's Hugging Face tokenizer)")
        raise MigrateError(diags)
    stored = next((_dtype_name(rd.dtype(f"module.{k}")) for k in (ctx.spec.get("tensors") or {}) if f"module.{k}" in rd.tensors), "float32")
    params = str(_target(ctx.cfg.get("params_dtype")) or "").replace("torch.", "")
    out_dtype = dtype or (params if params in _ST_DTYPE else stored)
    units = _plan_model(ctx, rd, int(vocab), diags)
    if diags.has_errors:
        raise MigrateError(diags)
    g = _geometry(ctx)
    writer = ShardWriter(stage, [(n, out_dtype, s) for u in units for n, s in u.outputs], max_shard_bytes)
    tdt = _torch_dtype(out_dtype)
    for i, u in enumerate(units):
        t = rd.read(u.fqn, u.lead)
        parts = _apply(u.transform, t, g, int(vocab))
        del t
        for (name, shape), p in zip(u.outputs, parts):
            p = p.to(tdt)
            if tuple(p.shape) != shape:
                raise AssertionError(f"{name}: {tuple(p.shape)} vs planned {shape}")
            writer.write(name, p)
        del parts
        if (i + 1) % 64 == 0:
            log(f"  {i + 1}/{len(units)} tensors read")
    writer.close()
    (stage / "model.safetensors.index.json").write_text(json.dumps(writer.index(), indent=2) + "\n")
    facts = {**facts_tok, "vocab_size": int(vocab), "dtype": out_dtype}
    cfg = hf_config(ctx, facts)
    if "head_dim" not in cfg and g["head_dim"] * g["heads"] != g["hidden"]:
        diags.error("NM954", f"kv_channels {g['head_dim']} x {g['heads']} heads != hidden_size {g['hidden']}: Hugging Face "
                    f"{cfg['model_type']} derives the head size from hidden_size", **ctx.where("config.kv_channels"))
        raise MigrateError(diags)
    (stage / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = ctx.loc.context / "artifacts" / "generation_config.json"
    if gen.is_file() and not gen.is_symlink():
        shutil.copyfile(gen, stage / "generation_config.json")
    else:
        (stage / "generation_config.json").write_text(json.dumps({k: v for k, v in (("bos_token_id", facts["bos"]), (
            "eos_token_id", facts["eos"])) if v is not None}, indent=2) + "\n")
    if tok_dir is not None:
        notes.append(f"tokenizer files from {shown(tok_dir)}: {', '.join(_copy_files(tok_dir, stage))}")
    else:
        diags.warning("NM961", "the checkpoint's tokenizer is not a Hugging Face tokenizer directory: none was written",
                      **ctx.where("tokenizer"), hint="pass --tokenizer DIR (the model's Hugging Face tokenizer files)")
    return len(writer.order), writer.total_size, out_dtype


def _alpha(ctx: Context) -> tuple[Any, str]:
    """LoRA alpha: model.yaml, else context/io.json (NeMo-Run records only the arguments given), else NeMo's default."""
    if ctx.peft.get("alpha") is not None:
        return ctx.peft["alpha"], "model.yaml"
    try:
        objs = json.loads((ctx.loc.context / "io.json").read_text())["objects"]
        for obj in objs.values():
            for attr, val in obj.get("items", []) if isinstance(obj, dict) else []:
                if isinstance(val, dict) and "<root>.model.model_transform.alpha" in (val.get("paths") or []):
                    return val["value"], "io.json"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return 32, "NeMo 2.7.3's LoRA default"


_ADAPTER = re.compile(r"module\.decoder\.layers\.(?P<mod>.+?)\.adapter\.(?:(?P<sub>adapter_\w+)\.)?linear_(?P<io>in|out)\.weight")


def _convert_peft(ctx: Context, rd: Reader, stage: Path, dtype: str | None, base_model: str | None,
                  diags: Diagnostics, notes: list[str]) -> tuple[int, int, str]:
    from safetensors.torch import save_file

    kind = str(ctx.peft.get("_target_", "")).rsplit(".", 1)[-1]
    if kind not in ("LoRA", "CanonicalLoRA"):
        diags.error("NM963", f"the adapter is {kind or 'unknown'}: convert-checkpoint converts LoRA and CanonicalLoRA adapters",
                    key="model_transform._target_", **ctx.where("model_transform._target_"),
                    hint="DoRA and other PEFT methods have no converter here; merge the adapter with NeMo and convert the merged model")
        raise MigrateError(diags)
    if ctx.peft.get("dropout") and ctx.peft.get("dropout_position", "pre") != "pre":
        diags.warning("NM964", "LoRA dropout_position='post': Hugging Face PEFT applies dropout to the adapter's input; "
                      "only further training is affected", **ctx.where("model_transform.dropout_position"))
    table = ctx.spec.get("lora") or {}
    g = _geometry(ctx)
    pairs: dict[str, dict[str, str]] = {}
    consumed: set[str] = set()
    base_keys = {f"module.{k}" for k in (ctx.spec.get("tensors") or {})}
    for fqn in rd.tensors:
        m = _ADAPTER.fullmatch(fqn)
        if m is None:
            if fqn in base_keys:
                consumed.add(fqn)
                notes.append(f"{fqn}: a base-model weight in the adapter checkpoint, not converted (convert the base checkpoint)")
            continue
        consumed.add(fqn)
        mod = m["mod"] + (f".{m['sub']}" if m["sub"] else "")
        pairs.setdefault(mod, {})[m["io"]] = fqn
    _unknown(ctx, rd, consumed, diags, "adapter")
    for mod, io in sorted(pairs.items()):
        entry = table.get(mod)
        if entry is None:
            diags.error("NM963", f"a LoRA adapter on {mod}: the Hugging Face {ctx.arch} model has no module it maps to",
                        file=ctx.loc.display, hint="convert-checkpoint maps adapters on " + ", ".join(sorted(table)))
        elif set(io) != {"in", "out"}:
            diags.error("NM957", f"the adapter on {mod} has no linear_{'out' if 'in' in io else 'in'} weight", file=ctx.loc.display)
    if not pairs:
        diags.error("NM957", "the adapter checkpoint holds no LoRA weights", file=ctx.loc.display)
    if diags.has_errors:
        raise MigrateError(diags)
    out: dict[str, Any] = {}
    modules: dict[str, set[int]] = {}
    rank = None
    for mod, io in sorted(pairs.items()):
        entry = table[mod]
        hf = [entry["hf"]] if isinstance(entry["hf"], str) else list(entry["hf"])
        layers = rd.covered(io["in"])
        for layer in layers:
            a = rd.read(io["in"], (layer,))
            b = rd.read(io["out"], (layer,))
            rank = rank or a.shape[0]
            if a.shape[0] != rank or b.shape[1] != rank:
                diags.error("NM958", f"{mod}: adapter rank {a.shape[0]} / {b.shape[1]} differs from {rank}", file=ctx.loc.display)
                raise MigrateError(diags)
            transform = entry.get("B", "copy")
            shapes = _out_shapes(transform, tuple(b.shape), g, 0, len(hf))
            if isinstance(shapes, str):
                diags.error("NM958", f"{io['out']} {list(b.shape)}: {shapes}", file=ctx.loc.display)
                raise MigrateError(diags)
            for name, part in zip(hf, _apply(transform, b, g, 0)):
                prefix = f"base_model.model.model.layers.{layer}.{name}"
                out[f"{prefix}.lora_A.weight"] = a.clone()
                out[f"{prefix}.lora_B.weight"] = part.contiguous()
                modules.setdefault(name, set()).add(layer)
    out_dtype = dtype or _dtype_name(next(iter(out.values())).dtype)
    out = {k: v.to(_torch_dtype(out_dtype)) for k, v in sorted(out.items())}
    save_file(out, str(stage / "adapter_model.safetensors"), metadata={"format": "pt"})
    every = all(len(ls) == g["layers"] for ls in modules.values())
    targets = sorted({n.rsplit(".", 1)[-1] for n in modules}) if every else sorted(
        f"model.layers.{layer}.{n}" for n, ls in modules.items() for layer in ls)
    dim = ctx.peft.get("dim")
    if dim is not None and dim != rank:
        diags.warning("NM958", f"model_transform.dim is {dim} but the stored adapters have rank {rank}: rank {rank} written",
                      **ctx.where("model_transform.dim"))
    alpha, alpha_from = _alpha(ctx)
    if alpha_from != "model.yaml":
        notes.append(f"lora_alpha {alpha} from {alpha_from}")
    meta = {}
    with_meta = ctx.loc.weights / "adapter_metadata.json"
    if with_meta.is_file():
        try:
            meta = json.loads(with_meta.read_text())
        except (OSError, ValueError):
            meta = {}
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
           "lora_dropout": float(ctx.peft.get("dropout") or 0.0), "target_modules": targets, "bias": "none",
           "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
           "modules_to_save": None, "base_model_name_or_path": base_model}
    (stage / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if meta.get("model_ckpt_path"):
        notes.append(f"base model of the adapter (adapter_metadata.json): {meta['model_ckpt_path']}; convert it with "
                     "convert-checkpoint too and load the adapter on that")
    if any(len(table[m]["hf"] if isinstance(table[m]["hf"], list) else [1]) > 1 for m in pairs):
        notes.append(EXACT_NOTE)
    return len(out), sum(v.numel() * v.element_size() for v in out.values()), out_dtype


def convert(src: Path, out: Path, *, dtype: str | None = None, tokenizer: Path | None = None, base_model: str | None = None,
            force: bool = False, log: Callable[[str], None] = lambda m: None, max_shard_bytes: int = MAX_SHARD_BYTES) -> Result:
    """Convert the NeMo 2 checkpoint (or adapter checkpoint) at ``src`` into an HF model (adapter) directory ``out``."""
    diags = Diagnostics()
    if dtype is not None and dtype not in DTYPES:
        diags.error("NM965", f"--dtype {dtype!r}: expected bf16, fp16 or fp32")
        raise MigrateError(diags)
    loc = locate(src, diags)
    ctx = read_context(loc, diags) if loc else None
    if tokenizer is not None and not (tokenizer.is_dir() and any(tokenizer.iterdir())):
        diags.error("NM961", f"--tokenizer {shown(tokenizer)} is not a directory with tokenizer files")
    _check_out(out, src, force, diags)
    diags.raise_if_errors()
    assert loc is not None and ctx is not None
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("torch", "safetensors", "transformers")):
        diags.error("NM962", "convert-checkpoint needs torch (and safetensors, transformers)", hint="pip install 'nemo-migrate[runtime]'")
        raise MigrateError(diags)
    notes = list(loc.notes)
    stage = out.parent / f".{out.name}.nemo-migrate-{os.getpid()}"
    try:
        return _convert_into(loc, ctx, stage, out, dtype, tokenizer, base_model, notes, diags, log, max_shard_bytes)
    except OSError as e:
        diags.error("NM960", f"cannot write {shown(out)}: {e.strerror or e}", hint="check the free space and permissions of -o's disk")
        raise MigrateError(diags) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _convert_into(loc: Located, ctx: Context, stage: Path, out: Path, dtype: str | None, tokenizer: Path | None,
                  base_model: str | None, notes: list[str], diags: Diagnostics, log: Callable[[str], None],
                  max_shard_bytes: int) -> Result:
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        rd = Reader(loc.weights)
    except CheckpointError as e:
        diags.error("NM955", str(e), file=loc.display, hint="the checkpoint is damaged or not a torch_dist checkpoint")
        raise MigrateError(diags) from None
    skipped = [k for k in rd.tensors if _ignored(k)]
    if skipped:
        notes.append(f"{len(skipped)} stored tensors that are not model weights were skipped (optimizer state, "
                     "TE extra state)")
    try:
        if ctx.peft is not None:
            n, nbytes, out_dtype = _convert_peft(ctx, rd, stage, DTYPES.get(dtype or ""), base_model, diags, notes)
        else:
            n, nbytes, out_dtype = _convert_model(ctx, rd, stage, DTYPES.get(dtype or ""), tokenizer, diags, notes, log,
                                                  max_shard_bytes)
    except CheckpointError as e:
        diags.error("NM969", str(e), file=loc.display, hint="the checkpoint is damaged or incomplete")
        raise MigrateError(diags) from None
    files = sorted(p.name for p in stage.iterdir())
    _install(stage, out)
    return Result(kind="peft" if ctx.peft is not None else "model", arch=str(ctx.arch), source=loc.display, out=shown(out),
                  files=files, tensors=n, bytes=nbytes, dtype=out_dtype, notes=notes, diags=diags)


def _check_out(out: Path, src: Path, force: bool, diags: Diagnostics) -> None:
    try:
        if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
            diags.error("NM960", f"-o {shown(out)} is inside the checkpoint {shown(src)}", hint="write the HF directory elsewhere")
        elif out.exists() and not out.is_dir():
            diags.error("NM960", f"-o {shown(out)} exists and is not a directory")
        elif out.is_dir() and any(out.iterdir()) and not force:
            diags.error("NM960", f"-o {shown(out)} exists and is not empty", hint="pass --force to replace it")
        elif not out.parent.is_dir():
            diags.error("NM960", f"the parent of -o {shown(out)} does not exist")
    except OSError as e:
        diags.error("NM960", f"-o {shown(out)}: {e.strerror or e}")


def _install(stage: Path, out: Path) -> None:
    """Move the finished directory into place (the old one, with --force, only once the new one is complete)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.nemo-migrate-old-{os.getpid()}"
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

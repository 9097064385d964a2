"""``dataset``, ``validation_dataset*``, their dataloaders and ``packed_sequence``: local JSON/JSONL
(ColumnMapped, Chat), the mock dataset and pretokenized verify samples."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...automodel.schema import dataset_fields, section_keys
from .check import FAILED, MAX_TOKENS, _Ctx, _bool, _d, _int, _path, _target_name, _unknown
from .types import DatasetSpec

_COLUMN_MAPPED = ("ColumnMappedTextInstructionDataset", "ColumnMappedTextInstructionDatasetConfig")
_MOCK = ("MockIterableDataset", "MockIterableDatasetConfig")
_CHAT = ("ChatDataset", "ChatDatasetConfig")
_PRETOKENIZED = ("nemo_migrate.pretokenized", "pretokenized")  # run --verify: samples tokenized as NeMo does
_HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def _data(cfg: dict, ctx: _Ctx, *, lbs: int, attn: str | None, check_files: bool
          ) -> tuple[DatasetSpec, dict[str, DatasetSpec]]:
    """The training dataset and every validation dataset, each with its dataloader (all checked)."""
    ds = cfg.get("dataset")
    dl = cfg.get("dataloader") if isinstance(cfg.get("dataloader"), dict) else {}
    if ds is None and isinstance(dl.get("dataset"), dict):
        ctx.note("dataloader.dataset is deprecated in 0.7; use a top-level dataset section.")
        ds = dl["dataset"]
    dl = {k: v for k, v in dl.items() if k != "dataset"}
    if ds is None:
        raise ctx.err("dataset", "this section is required")
    packing = ctx.section(_packing, cfg, ctx)
    packing = None if packing is FAILED else packing
    train = ctx.section(_dataset, ds, dl, ctx, "dataset", "dataloader", lbs=lbs, check_files=check_files,
                        packing=packing)
    vdl = cfg.get("validation_dataloader")
    validation: dict[str, DatasetSpec] = {}
    for key in sorted((k for k in cfg if str(k).startswith("validation_dataset")), key=str):
        if cfg[key] is None:
            continue
        vname = key.replace("validation_dataset", "")
        vname = vname[1:] if len(vname) > 1 and vname[0] in "_-." else vname
        validation[vname or "default"] = ctx.section(_dataset, cfg[key], vdl, ctx, key, "validation_dataloader",
                                                     lbs=lbs, check_files=check_files, packing=packing)
    if FAILED in (train, *validation.values()):
        return FAILED
    if packing is not None and attn == "flash_attention_2":
        bad = [(n, d) for n, d in [("dataloader", train)] + [("validation_dataloader", v) for v in validation.values()]
               if (d.batch_size or 1) > 1]
        if bad:
            raise ctx.err(f"{bad[0][0]}.batch_size", "packed sequences with attn_implementation flash_attention_2 need "
                          "a batch of one pack: transformers' flash-attention path separates the packed samples (from "
                          "their position_ids) only for a single row", found=bad[0][1].batch_size,
                          hint="step_scheduler.local_batch_size: 1 (and validation_dataloader.batch_size: 1), or "
                               "model.attn_implementation: sdpa")
    return train, validation


def _data_paths(params: dict, ctx: _Ctx, name: str, *, check_files: bool) -> None:
    paths = params["path_or_dataset_id"]
    plist = [paths] if isinstance(paths, str) else paths
    if not isinstance(plist, list) or not plist or not all(isinstance(x, str) for x in plist):
        raise ctx.err(f"{name}.path_or_dataset_id", "must be a path or a list of paths", found=paths)
    if check_files:
        for p in plist:
            _path(p, ctx, f"{name}.path_or_dataset_id")
            if not Path(p).exists():
                kind = ("looks like a Hugging Face Hub dataset id, and the bundled runtime reads local JSON/JSONL "
                        "only (no network)") if _HUB_ID.match(p) else "data file not found"
                raise ctx.err(f"{name}.path_or_dataset_id", kind, found=p,
                              hint=f"--set {name}.path_or_dataset_id=/path/to/file.jsonl")
            if Path(p).is_dir():
                raise ctx.err(f"{name}.path_or_dataset_id", "is a directory; give JSON/JSONL file(s)", found=p)
            if not Path(p).is_file():
                raise ctx.err(f"{name}.path_or_dataset_id", "is not a regular file (a FIFO or device would be read "
                              "forever)", found=p, hint="give JSON/JSONL file(s)")
            if Path(p).suffix.lower() == ".parquet":
                raise ctx.err(f"{name}.path_or_dataset_id", "Parquet files are not read by the bundled runtime "
                              "(local JSON/JSONL only)", found=p, hint="convert the rows to JSONL")


def _chat_params(params: dict, ctx: _Ctx, name: str, *, check_files: bool) -> None:
    """ChatDatasetConfig (0.7.0): its fields only; what the runtime cannot do fails here."""
    if "answer_only_loss_mask" in params:
        raise ctx.err(f"{name}.answer_only_loss_mask", f"unknown key in `{name}`: ChatDatasetConfig has no such "
                      "field (0.7 raises TypeError); ChatDataset always trains on the assistant tokens only",
                      found=params["answer_only_loss_mask"], hint=f"remove {name}.answer_only_loss_mask")
    _unknown(params, dataset_fields("ChatDataset"), ctx, name, what="a ChatDatasetConfig field")
    if "path_or_dataset_id" not in params:
        raise ctx.err(f"{name}.path_or_dataset_id", "is required by ChatDataset")
    _data_paths(params, ctx, name, check_files=check_files)
    if params.get("seq_length") is not None:
        _int(params["seq_length"], ctx, f"{name}.seq_length", minimum=1, maximum=MAX_TOKENS)
    if params.get("padding") == "max_length" and params.get("seq_length") is None:
        raise ctx.err(f"{name}.padding", "padding: max_length needs seq_length (the tokenizer would pad to its "
                      "model_max_length)", found="max_length", hint=f"set {name}.seq_length")
    for k in ("mask_reasoning_content", "mask_history", "unshifted", "skip_invalid_samples", "mask_generation_prompt"):
        if k in params:
            _bool(params[k], ctx, f"{name}.{k}")
    if params.get("unshifted"):
        raise ctx.err(f"{name}.unshifted", "unshifted: true makes ChatDataset return a loss_mask instead of labels "
                      "(the diffusion-LM format); the next-token fine-tune recipe needs labels", found=True,
                      hint=f"remove {name}.unshifted")
    t = params.get("chat_template")
    if t is not None:
        if not isinstance(t, str):
            raise ctx.err(f"{name}.chat_template", "must be a Jinja template string or a path to a template file",
                          found=t)
        if "{%" not in t and "{{" not in t and check_files and ("\0" in t or len(t) > 4096 or not Path(t).is_file()):
            raise ctx.err(f"{name}.chat_template", "is neither a Jinja template nor an existing file (0.7 would use "
                          "the string itself as the template, rendering every conversation as that constant text)",
                          found=t, hint="give the template text, or the path of a .jinja / tokenizer_config.json file")
    if params.get("start_of_turn_token") is not None:
        ctx.note(f"{name}.start_of_turn_token: stored but never read by 0.7's ChatDataset (no effect).")
    for k in ("split", "shuffle_seed", "name"):
        if params.get(k) is not None:
            ctx.note(f"{name}.{k}: 0.7 applies it to Hub/Parquet datasets only; local JSON/JSONL files are read whole "
                     "and in order.")


def _packing(cfg: dict, ctx: _Ctx) -> dict[str, Any] | None:
    """``packed_sequence:`` as 0.7 resolves it (``make_packing_config``): THD packing when packed_sequence_size > 0."""
    ps = cfg.get("packed_sequence")
    if ps is None:
        return None
    if not isinstance(ps, dict):
        raise ctx.err("packed_sequence", "must be a mapping", found=ps)
    _unknown(ps, section_keys("packed_sequence"), ctx, "packed_sequence", what="a packed_sequence field")
    k = "packed_sequence."
    size = _int(ps.get("packed_sequence_size", _d(k + "packed_sequence_size")), ctx, k + "packed_sequence_size",
                maximum=MAX_TOKENS)
    if size <= 0:
        return None
    strategy = ps.get("packing_strategy", _d(k + "packing_strategy"))
    if strategy != "thd":
        raise ctx.err(k + "packing_strategy", "only THD packing (0.7's default) is implemented by the bundled runtime",
                      expected="thd", found=strategy, hint=f"--set {k}packing_strategy=thd")
    max_packs = _int(ps.get("max_packs"), ctx, k + "max_packs", minimum=1, allow_none=True)
    mult = _int(ps.get("pad_to_multiple_of", _d(k + "pad_to_multiple_of")), ctx, k + "pad_to_multiple_of", minimum=1)
    if size % mult:
        raise ctx.err(k + "pad_to_multiple_of", f"packed_sequence_size ({size}) must be divisible by it (0.7 "
                      "ValueError)", found=mult)
    if ps.get("num_proc") is not None:
        _int(ps["num_proc"], ctx, k + "num_proc", minimum=1)
    if "drop_long_samples" in ps:
        ctx.note("packed_sequence.drop_long_samples is a NEAT-packing field; 0.7's THD packing ignores it and always "
                 "drops samples longer than packed_sequence_size.")
    if "split_across_pack" in ps:
        ctx.note("packed_sequence.split_across_pack is no longer read by 0.7 (no effect).")
    if _bool(ps.get("prepacked", _d(k + "prepacked")), ctx, k + "prepacked"):
        ctx.note("packed_sequence.prepacked: true: 0.7 skips loader-side packing and uses the default collater, so "
                 "the samples train unpacked.")
        return None
    return {"packed_sequence_size": size, "max_packs": max_packs, "pad_to_multiple_of": mult}


def _dataset(node: Any, loader: Any, ctx: _Ctx, name: str, loader_name: str, *, lbs: int,
             check_files: bool, packing: dict[str, Any] | None = None) -> DatasetSpec:
    if not isinstance(node, dict):
        raise ctx.err(name, "must be a mapping", found=node)
    if "_target_" not in node:
        raise ctx.err(f"{name}._target_", "is required")
    tname = _target_name(node["_target_"])
    params = {k: v for k, v in node.items() if k not in ("_target_", "tokenizer")}
    if tname in _COLUMN_MAPPED:
        _unknown(params, dataset_fields("ColumnMappedTextInstructionDataset"), ctx, name,
                 what="a ColumnMappedTextInstructionDatasetConfig field")
        for req in ("path_or_dataset_id", "column_mapping"):
            if req not in params:
                raise ctx.err(f"{name}.{req}", "is required by ColumnMappedTextInstructionDataset")
        cm = params["column_mapping"]
        if not isinstance(cm, dict) or "answer" not in cm:
            raise ctx.err(f"{name}.column_mapping", "needs an `answer` column", found=cm)
        roles = set(cm)
        for role, col in cm.items():
            if not isinstance(col, str):
                raise ctx.err(f"{name}.column_mapping.{role}", "must be a column name (a string)", found=col)
        if not roles <= {"context", "question", "answer"} or len(cm) not in (2, 3):
            raise ctx.err(f"{name}.column_mapping", "roles must be answer plus context and/or question",
                          found=sorted(roles))
        _data_paths(params, ctx, name, check_files=check_files)
        for k in ("seq_length", "limit_dataset_samples"):
            if params.get(k) is not None:
                _int(params[k], ctx, f"{name}.{k}", minimum=1, maximum=MAX_TOKENS if k == "seq_length" else None)
        if params.get("padding") == "max_length" and params.get("seq_length") is None:
            raise ctx.err(f"{name}.padding", "padding: max_length needs seq_length (the tokenizer would pad to its "
                          "model_max_length)", found="max_length", hint=f"set {name}.seq_length")
        if params.get("use_hf_chat_template"):
            ctx.note(f"{name}.use_hf_chat_template: rows are formatted with the tokenizer's chat template when it has "
                     "one (system=context, user=question, assistant=answer), else as prompt/completion text (0.7).")
        kind = "column_mapped"
    elif tname in _CHAT:
        _chat_params(params, ctx, name, check_files=check_files)
        kind = "chat"
    elif tname in _MOCK:
        _unknown(params, dataset_fields("MockIterableDataset"), ctx, name, what="a MockIterableDatasetConfig field")
        for k, top in (("vocab_size", 2**24), ("seq_len", MAX_TOKENS), ("num_samples", None), ("batch_size", 2**16)):
            if params.get(k) is not None:
                _int(params[k], ctx, f"{name}.{k}", minimum=1, maximum=top)
        ex = params.get("exclude_token_ids")
        if ex is not None and not (isinstance(ex, list) and all(isinstance(t, int) and not isinstance(t, bool) and
                                                                0 <= t < params.get("vocab_size", 1024) for t in ex)):
            raise ctx.err(f"{name}.exclude_token_ids", "must be a list of token ids below vocab_size", found=ex)
        kind = "mock"
    elif tname in _PRETOKENIZED:
        _unknown(params, {"path_or_dataset_id"}, ctx, name, what="a pretokenized dataset field")
        if not Path(str(params.get("path_or_dataset_id", ""))).is_file():
            raise ctx.err(f"{name}.path_or_dataset_id", "no such file (JSONL of input_ids/labels rows)",
                          found=params.get("path_or_dataset_id"))
        kind = "pretokenized"
    else:
        raise ctx.err(f"{name}._target_", "this dataset is not implemented by the bundled runtime",
                      found=node["_target_"],
                      expected="ColumnMappedTextInstructionDataset or ChatDataset (local JSON/JSONL), or "
                               "MockIterableDataset",
                      hint="convert the data to JSONL and use ColumnMappedTextInstructionDataset")
    loader = loader or {}
    if not isinstance(loader, dict):
        raise ctx.err(loader_name, "must be a mapping", found=loader)
    _unknown(loader, section_keys("dataloader"), ctx, loader_name, what="a DataloaderConfig field")
    lt = loader.get("_target_")
    if lt not in (None, "torch.utils.data.DataLoader", "torchdata.stateful_dataloader.StatefulDataLoader"):
        raise ctx.err(f"{loader_name}._target_", "unsupported dataloader target", found=lt,
                      expected="torch.utils.data.DataLoader or torchdata.stateful_dataloader.StatefulDataLoader")
    if loader.get("group_by_length"):
        raise ctx.err(f"{loader_name}.group_by_length", "length-grouped sampling is not implemented by the bundled "
                      "runtime", found=True, hint=f"--set {loader_name}.group_by_length=false")
    if loader.get("dataloader_type") is not None:
        raise ctx.err(f"{loader_name}.dataloader_type", "only for Megatron datasets", found=loader["dataloader_type"])
    pad_div = None
    cf = loader.get("collate_fn")
    if cf is not None and cf != "default":
        tgt, kw = (cf.get("_target_"), {k: v for k, v in cf.items() if k != "_target_"}) if isinstance(cf, dict) \
            else (cf, {})
        if _target_name(tgt) != "default_collater":
            raise ctx.err(f"{loader_name}.collate_fn", "only the default collater is implemented", found=cf)
        bad = set(kw) - {"pad_seq_len_divisible"}
        if bad:
            raise ctx.err(f"{loader_name}.collate_fn", "unknown default_collater argument", found=sorted(bad))
        pad_div = kw.get("pad_seq_len_divisible")
    if loader.get("num_workers"):
        ctx.note(f"{loader_name}.num_workers: data is tokenised once at start, so batches are built in-process "
                 "(workers would only add start-up time).")
    bs = loader.get("batch_size", "__default__")
    if bs == "__default__":
        bs = lbs
    if kind != "mock" and bs is None:
        raise ctx.err(f"{loader_name}.batch_size", "batch_size=None only works for pre-batched (iterable) datasets")
    if packing is not None and kind == "mock":
        raise ctx.err("packed_sequence.packed_sequence_size", "packing needs a text dataset (ColumnMapped or Chat); "
                      f"`{name}` is the mock dataset, which yields ready-made batches",
                      found=packing["packed_sequence_size"], hint="--set packed_sequence.packed_sequence_size=0")
    if packing is not None and cf is not None and cf != "default":
        ctx.note(f"{loader_name}.collate_fn is replaced by the packed-sequence collater while packing (0.7).")
        pad_div = None
    return DatasetSpec(kind=kind, params=params, shuffle=loader.get("shuffle"),
                       batch_size=None if bs is None else _int(bs, ctx, f"{loader_name}.batch_size", minimum=1),
                       drop_last=bool(loader.get("drop_last", False)), pin_memory=bool(loader.get("pin_memory", False)),
                       pad_seq_len_divisible=pad_div, packing=None if kind == "mock" else packing)

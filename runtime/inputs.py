"""The run's inputs, as the Trainer's setup builds them: the tokenizer, and the training and validation loaders
(the datasets of ``data.py`` in 0.7's DistributedSampler order, one loader per validation set; the mock dataset's own
loader)."""

from __future__ import annotations

import math
from typing import Callable

from .checkpoint import first_line
from .data import DistributedSamplerOrder, MapLoader, MockLoader
from .errors import RunError


def build_tokenizer(spec, path: str | None, *, announce: bool, log: Callable[[str], None]):
    """The tokenizer at ``path`` with 0.7's BOS/EOS enforcement, or None (mock data)."""
    from .tokenizer import load_tokenizer

    if path is None:
        return None
    t = spec.tokenizer
    try:
        tok = load_tokenizer(path, add_bos_token=t.add_bos_token, add_eos_token=t.add_eos_token,
                             trust_remote_code=spec.model.trust_remote_code)
    except RunError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the tokenizer files make transformers raise
        raise RunError(f"cannot load the tokenizer from {path} ({type(e).__name__}: {first_line(e)})",
                       key="dataset.tokenizer.pretrained_model_name_or_path",
                       hint="the tokenizer files are damaged or not a Hugging Face tokenizer; point "
                            "dataset.tokenizer.pretrained_model_name_or_path at a good one") from None
    if announce:
        log(f"tokenizer: {path}")
    return tok



def build_loaders(spec, tok, meshes, env, *, log: Callable[[str], None]):
    """(training loader, {name: validation loader}); every dataset is read and tokenised now."""
    from .data import build_dataset

    if tok is None and (spec.train.kind != "mock" or any(v.kind != "mock" for v in spec.validation.values())):
        raise RunError("a tokenizer is required for text datasets")
    train_ds = build_dataset(spec.train, tok, key="dataset", log=log)
    if train_ds is not None and train_ds.num_masked_out and env.is_main:
        log(f"note: {train_ds.num_masked_out} training sample(s) have every label masked (answer truncated "
            "away); 0.7 serves the next sample in their place.")
    train = _loader(spec, spec.train, train_ds, meshes, env, train=True, log=log)
    if isinstance(train, MapLoader) and len(train) == 0:
        raise RunError(f"an epoch has no batch: {len(train.sampler)} training sample(s) per rank, fewer "
                       f"than one batch of {train.batch_size} with drop_last",
                       key="dataloader.drop_last", hint="use more data, a smaller step_scheduler.local_batch_size, "
                                                       "or dataloader.drop_last: false")
    val = {}
    for name, v in spec.validation.items():
        key = "validation_dataset" if name == "default" else f"validation_dataset_{name}"
        val[name] = _loader(spec, v, build_dataset(v, tok, key=key, log=log), meshes, env, train=False, log=log)
    if train_ds is not None:
        sizes = ", ".join(f"{k}={len(v.sampler.indices(0))}" for k, v in val.items() if isinstance(v, MapLoader))
        log(f"data: {len(train_ds)} training {getattr(train_ds, 'unit', 'samples')}, {len(train)} "
            f"micro-batches per epoch per rank; validation: {sizes or 'none'}")
    return train, val


def _loader(spec, ds_spec, dataset, meshes, env, *, train: bool, log: Callable[[str], None]):
    d = spec.dist
    if ds_spec.kind == "mock":
        p = ds_spec.params
        if d.sequence_parallel and p.get("seq_len", 1024) % d.tp:
            raise RunError("with sequence parallelism the mock seq_len must be divisible by tp_size",
                           key="dataset.seq_len", found=p.get("seq_len"))
        if ds_spec.batch_size is not None and train:
            log("note: the mock dataset yields batches of its own batch_size; dataloader.batch_size ignored.")
        return MockLoader(vocab_size=p.get("vocab_size", 1024), seq_len=p.get("seq_len", 1024),
                          num_samples=p.get("num_samples", 1000000), batch_size=p.get("batch_size", 1),
                          exclude_token_ids=p.get("exclude_token_ids"), seed=spec.seed + (0 if train else 7),
                          dp_rank=meshes.dp_rank)
    pad_div = ds_spec.pad_seq_len_divisible
    if spec.fp8 is not None and not ds_spec.packing:
        # float8 GEMMs need the token dim divisible by 16 (torch._scaled_mm); padded positions carry label -100
        pad_div = math.lcm(pad_div or 1, 16)
    if d.sequence_parallel and d.tp > 1:
        # sequence parallelism shards the sequence dim evenly: pad batches to a multiple of tp (labels -100)
        pad_div = math.lcm(pad_div or 1, d.tp)
    shuffle = True if ds_spec.shuffle is None else bool(ds_spec.shuffle)
    sampler = DistributedSamplerOrder(len(dataset), num_replicas=meshes.dp.size(), rank=meshes.dp_rank,
                                      shuffle=shuffle, seed=spec.seed, drop_last=True)
    return MapLoader(dataset, batch_size=ds_spec.batch_size, sampler=sampler, drop_last=ds_spec.drop_last,
                     pad_seq_len_divisible=pad_div, pin_memory=ds_spec.pin_memory and env.device.type == "cuda")

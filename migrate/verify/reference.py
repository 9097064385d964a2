"""The NeMo side of ``run --verify``: what the NeMo 2 job means, as the reference leg's runtime config.

Lowered from the resolved job (the IR) here, not by the rule table, so that it checks the rules:

- LoRA on NeMo's targets, as fused adapters (one A shared by q/k/v and by gate/up) where NeMo fuses them;
- the learning rate at every step from NeMo's own formula (``CosineAnnealing`` with warmup ``(s+1)/(W+1)``);
- NeMo's loss reduction (mean of per-micro-batch token means), fp32 master copies of the trainable parameters with
  bf16 compute, no weight decay on 1-D parameters (Megatron);
- the samples tokenized as NeMo's ``GPTSFTDataset`` does (template pieces tokenized separately, EOS appended,
  truncation from ``truncation_field``), fed to the runtime pre-tokenized.

A value the job leaves unset is NeMo's class default (mappings/nemo2/classes.yaml, through ``Job.value``); where the
job holds None for it, the default of the class named here is used, never a literal.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .. import knowledge, schema


def nemo_value(job, path: str, cls: str) -> Any:
    """The job's value at ``path``; where it is None (its parent not built, or set to None), the default NeMo's class
    ``cls`` gives that field (mappings/nemo2/classes.yaml)."""
    v = job.value(path)
    return schema.spec(cls).fields[path.rsplit(".", 1)[-1]].default if v is None else v


def nemo_lr(step: int, *, lr: float, warmup: int, max_steps: int, min_lr: float, constant_steps: int = 0) -> float:
    """NeMo 2's CosineAnnealingScheduler (nemo/core/optim/lr_scheduler.py) at optimizer step ``step`` (0-based).

    Warmup ``lr*(s+1)/(W+1)`` for ``s <= W``; then cosine from lr to min_lr over ``max_steps - W`` steps (the
    Megatron-style hold variant when constant_steps > 0); ``min_lr`` after ``max_steps``."""
    if warmup > 0 and step <= warmup:
        # with constant_steps > 0 NeMo's _linear_warmup_with_cosine_annealing starts from 0: lr * s / W
        return lr * step / warmup if constant_steps > 0 else lr * (step + 1) / (warmup + 1)
    if step > max_steps:
        return min_lr
    if constant_steps > 0:  # WarmupHoldPolicy / CosineAnnealing with hold: decay over max - W - C, then hold at min
        decay_steps = max(max_steps - warmup - constant_steps, 1)
        s = step - warmup
        if s > decay_steps:
            return min_lr
        return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * s / decay_steps))
    span = max(max_steps - warmup, 1)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / span))


def nemo_lr_values(job, steps: int) -> list[float]:
    """The learning rate NeMo applies at each of the first ``steps`` optimizer steps (constant without a scheduler;
    a scheduler's warmup / hold / min_lr set to None means none, as in NeMo's schedulers)."""
    n = max(steps, 1)
    peak = float(job.value("optim.config.lr"))
    if job.value("optim.lr_scheduler") is None:  # MegatronOptimizerModule without a scheduler: a constant rate
        return [peak] * n
    warm = int(job.value("optim.lr_scheduler.warmup_steps") or 0)
    max_steps = job.value("optim.lr_scheduler.max_steps")
    max_steps = int(job.value("trainer.max_steps") if max_steps is None else max_steps)
    min_lr = float(job.value("optim.lr_scheduler.min_lr") or 0.0)
    const = int(job.value("optim.lr_scheduler.constant_steps") or 0)
    return [nemo_lr(s, lr=peak, warmup=warm, max_steps=max_steps, min_lr=min_lr, constant_steps=const) for s in range(n)]


def nemo_tokenize(row: dict, tok: Any, *, template: str, label_key: str, truncation_fields: list[str], seq_length: int,
                  add_bos: bool, add_eos: bool, add_sep: bool, answer_only_loss: bool, truncation_method: str = "right",
                  sep_id: int | None = None) -> dict[str, Any]:
    """One record as NeMo 2's GPTSFTDataset builds it (nemo/collections/llm/gpt/data/core.py, reference §4.3).

    NeMo's HF tokenizer wrapper tokenizes each template piece on its own without special tokens and has no
    ``space_sensitive`` attribute, so a piece's leading space is dropped.  Returns the runtime's next-token form:
    ``input_ids = ids[:-1]``, ``labels = ids[1:]`` with -100 where NeMo's loss mask is 0."""
    template = template.encode("utf-8").decode("unicode_escape")
    keys = re.findall(r"{(.*?)}", template)
    values = [str(row.get(k, "")).strip(" ") for k in keys]
    ph = {f"{{{k}}}": v for k, v in zip(keys, values)}
    phk = {f"{{{k}}}": k for k in keys}
    pieces = [s for s in re.split("( *?{.+?})", template) if s]
    pieces = [s[1:] if s[0] == " " else s for s in pieces]
    strings, skeys = [], []
    for t in pieces:
        p = t.lstrip(" ")
        strings.append(" " * (len(t) - len(p)) + ph.get(p, p))
        skeys.append(phk.get(p, "<template>"))
    ids = [tok.convert_tokens_to_ids(tok.tokenize(s)) if s else [] for s in strings]
    total = sum(len(x) for x in ids[:-1]) + len(ids[-1]) + add_bos + add_sep + add_eos
    if total > seq_length:
        over = total - seq_length
        n = len(truncation_fields)
        if n:
            per = [over // n + (1 if i < over % n else 0) for i in range(n)[::-1]]
            for i, (x, k) in enumerate(zip(ids, skeys)):
                if k in truncation_fields:
                    cut = min(per.pop(), len(x))
                    over -= cut
                    keep = len(x) - cut
                    ids[i] = (x[:keep] if truncation_method == "right" else x[len(x) - keep:]) if keep else []
        if over > 0:
            lens = [len(x) for x in ids]
            order = range(len(ids) - 1, -1, -1) if truncation_method == "right" else range(len(ids))
            for i in order:
                if lens[i] >= over:
                    lens[i] -= over
                    ids[i] = (ids[i][:lens[i]] if truncation_method == "right" else ids[i][len(ids[i]) - lens[i]:]) if lens[i] else []
                    break
                over -= lens[i]
                lens[i] = 0
                ids[i] = []
    context = [i for x in ids[:-1] for i in x]
    answer = ids[-1]
    if add_bos:
        context = [tok.bos_token_id] + context
    if add_sep and sep_id is not None:
        context = context + [sep_id]
    full = context + answer + ([tok.eos_token_id] if add_eos else [])
    mask = [1 if (i >= len(context) or not answer_only_loss) else 0 for i in range(len(full))]
    return {"input_ids": full[:-1], "labels": [t if m else -100 for t, m in zip(full[1:], mask[1:])],
            "full": full, "context_len": len(context)}


def sft_settings(job) -> dict[str, Any]:
    """``nemo_tokenize``'s keyword arguments from the job's ``data.dataset_kwargs`` (GPTSFTDataset's defaults where
    unset: the ``dict`` class of classes.yaml)."""
    def g(k: str) -> Any:
        return nemo_value(job, f"data.dataset_kwargs.{k}", "dict")

    return {
        "template": g("prompt_template"), "label_key": g("label_key"),
        "truncation_fields": [x for x in str(g("truncation_field") or "").split(",") if x],
        "add_bos": bool(g("add_bos")), "add_eos": bool(g("add_eos")), "add_sep": bool(g("add_sep")),
        "answer_only_loss": bool(g("answer_only_loss")), "truncation_method": g("truncation_method"),
    }


def seq_length(job) -> int:
    return int(nemo_value(job, "data.seq_length", "FineTuningDataModule"))


def seed(job, migrated: dict) -> Any:
    """The seed both legs use (same data order): the migrated config's, else the NeMo job's data seed."""
    return migrated.get("seed", nemo_value(job, "data.seed", "FineTuningDataModule"))


def hf_targets(job, family: str) -> tuple[list[str], bool]:
    """NeMo LoRA targets -> HF wildcard patterns, and whether NeMo fuses (shares A) any of them."""
    fam = knowledge.modules()["families"].get(family) or knowledge.modules()["families"]["llama"]
    peft = job.get("peft")
    targets = nemo_value(job, "peft.target_modules", peft.cls) or []
    pats, fused = [], False
    for t in targets:
        leaf = str(t).split(".")[-1]
        entry = fam.get(leaf)
        if entry is None or "." in str(t).replace("*.", "", 1).rstrip("*"):
            return [], False  # layer-selective or unknown: the caller falls back to the migrated patterns
        fused |= bool(entry.get("shared_a")) and peft.cls == "LoRA"
        for h in entry["hf"]:
            p = f"*.{h.rsplit('.', 1)[-1]}"
            if p not in pats:
                pats.append(p)
    return pats, fused


LORA_CLASSES = ("LoRA", "CanonicalLoRA", "DoRA")


def reference_config(job, migrated: dict, env: dict[str, Any], lr_values: list[float], pretok: Path | None,
                     family: str) -> tuple[dict, list[str]]:
    """The NeMo job's meaning as a runtime config, lowered from the IR (not from the rule table), and notes on it."""
    notes: list[str] = []

    def opt(k: str) -> Any:
        return nemo_value(job, f"optim.config.{k}", "OptimizerConfig")

    cfg: dict[str, Any] = {
        "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
        "seed": seed(job, migrated),
        "step_scheduler": {"global_batch_size": int(job.value("data.global_batch_size")), "local_batch_size": int(job.value("data.micro_batch_size")),
                           "max_steps": int(job.value("trainer.max_steps")), "val_every_steps": 10 ** 9, "ckpt_every_steps": 10 ** 9},
        "model": dict(migrated["model"]),
        "distributed": dict(migrated.get("distributed") or {}),
        "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": float(job.value("optim.config.lr")),
                      "betas": [float(opt("adam_beta1")), float(opt("adam_beta2"))], "eps": float(opt("adam_eps")),
                      "weight_decay": float(opt("weight_decay"))},
        "clip_grad_norm": {"max_norm": opt("clip_grad")},
        "checkpoint": {"enabled": False},
        "nemo_compat": {"loss_reduction": "nemo", "master_weights": "fp32", "no_decay_1d": True, "lr_values": lr_values},
    }
    cfg["model"]["dtype"] = "bfloat16"
    cfg["distributed"]["mp_policy"] = {"param_dtype": "bfloat16", "reduce_dtype": "float32", "output_dtype": "bfloat16"}
    peft = job.get("peft")
    if peft is not None and getattr(peft, "cls", None) in LORA_CLASSES:
        def lora(k: str) -> Any:
            return nemo_value(job, f"peft.{k}", peft.cls)

        pats, fused = hf_targets(job, family)
        if not pats:
            pats = list(migrated.get("peft", {}).get("target_modules") or [])
            notes.append("LoRA targets are layer-selective or not in the module map: the reference uses the migrated patterns")
        cfg["peft"] = {"_target_": "nemo_automodel.components._peft.lora.PeftConfig", "target_modules": pats,
                       "dim": int(lora("dim")), "alpha": float(lora("alpha")), "dropout": float(lora("dropout")),
                       "dropout_position": str(lora("dropout_position")),
                       "lora_A_init": "xavier" if str(lora("lora_A_init_method")) == "xavier" else "kaiming"}
        cfg["nemo_compat"]["lora_tied_a"] = bool(fused)
        if peft.cls == "DoRA":
            notes.append("DoRA: the runtime trains LoRA (DoRA is not implemented); both legs alike")
    cfg["distributed"] = {**cfg["distributed"], **env["distributed"]}
    if pretok is not None:
        cfg["dataset"] = {"_target_": "nemo_migrate.pretokenized", "path_or_dataset_id": str(pretok),
                          "tokenizer": dict(env["dataset"]["tokenizer"])}
    else:
        cfg["dataset"] = dict(env["dataset"])
    return cfg, notes

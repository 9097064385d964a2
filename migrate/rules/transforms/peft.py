"""PEFT rows (PEFT*): LoRA as Automodel's PeftConfig, Megatron module names translated to HF names."""

from __future__ import annotations

from typing import Any

from ... import knowledge
from ...ir import Node
from ..context import Ctx, Registry, Result, nemo_default
from .model import model_info

transform = Registry()

PEFT_TARGET = "nemo_automodel.components._peft.lora.PeftConfig"


@transform
def peft_scheme(ctx: Ctx) -> Result | None:
    peft = ctx.node("peft")
    if peft is None:
        return Result("exact", "full fine-tuning (no PEFT) in both: no peft section")
    if peft.cls not in _LORA_CLASSES:
        ctx.diags.error("NM533", f"PEFT method {peft.cls} has no Automodel equivalent (Automodel 0.7 trains LoRA/DoRA only)",
                        key="peft", **peft.prov.where())
        return Result("unsupported", f"PEFT method {peft.cls} has no Automodel equivalent")
    ctx.set("peft._target_", PEFT_TARGET, "peft._target_")
    if peft.cls == "DoRA":
        ctx.set("peft.use_dora", True, "peft._target_")
        return Result("approximate", "DoRA: Automodel's use_dora (nn.Linear only) recomputes the magnitude normalisation its own way; "
                      "NeMo's DoRA also applies a dropout correction term")
    if peft.cls == "CanonicalLoRA":
        return Result("exact", "CanonicalLoRA trains one adapter per HF projection, as Automodel")
    if peft.cls != "LoRA":
        return Result("unsupported", f"PEFT method {peft.cls} has no Automodel equivalent")
    return None

_LORA_CLASSES = ("LoRA", "DoRA", "CanonicalLoRA")


def _lora(ctx: Ctx) -> Node | None:
    peft = ctx.node("peft")
    return peft if peft is not None and peft.cls in _LORA_CLASSES else None


def _family_map(ctx: Ctx) -> dict[str, Any]:
    fam = model_info(ctx)["family"]
    return knowledge.modules()["families"].get(fam) or knowledge.modules()["families"]["llama"]


def translate_targets(ctx: Ctx, targets: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Megatron patterns -> (HF patterns, fused Megatron names with a shared A, untranslatable patterns)."""
    fmap = _family_map(ctx)
    seg = knowledge.modules()["segments"]
    out: list[str] = []
    seen: set[str] = set()
    shared: list[str] = []
    bad: list[str] = []
    parents: dict[str, set[str]] = {}
    for e in fmap.values():
        for h in e["hf"]:
            hp, _, hl = h.rpartition(".")
            parents.setdefault(hl, set()).add(hp)
    names: dict[str, list[str]] = {}  # Megatron leaf -> the HF names its patterns end with
    for leaf, entry in fmap.items():
        for h in entry["hf"]:
            hparent, hleaf = h.rsplit(".", 1) if "." in h else ("", h)
            qualified = len(parents.get(hleaf, ())) > 1
            names.setdefault(leaf, []).append(f"{hparent}.{hleaf}" if qualified and hparent else hleaf)
    for t in targets:
        parts = t.split(".")
        leaf = parts[-1]
        entry = fmap.get(leaf)
        if entry is None:
            bad.append(t)
            continue
        if entry.get("shared_a") and len(entry["hf"]) > 1:
            shared.append(t)
        head = ".".join(seg.get(p, p) for p in parts[:-1])
        if head and not head.startswith("*"):
            head = "*" + head if head.startswith(".") else head if head.startswith("model.") else "*." + head
        for name in names[leaf]:
            pat = f"{head}.{name}" if head else "*." + name
            if pat not in seen:
                seen.add(pat)
                out.append(pat)
    return out, shared, bad


def lora_params(ctx: Ctx, targets: list[str], fused: bool) -> int | None:
    """Trainable LoRA parameters on a Llama-shaped model (NeMo fused adapters when fused=True)."""
    shape = model_info(ctx)["shape"]
    if shape is None or model_info(ctx)["family"] != "llama":
        return None
    r = int(ctx.v("peft.dim", nemo_default("LoRA.dim")))
    h, f, L = shape["hidden"], shape["ffn"], shape["layers"]
    kv = shape["kv_heads"] * (h // shape["heads"])
    per = 0
    leaves = {t.split(".")[-1] for t in targets}
    if "linear_qkv" in leaves:
        per += (r * h + r * (h + 2 * kv)) if fused else 3 * r * h + r * (h + 2 * kv)
    for q, out_dim in (("linear_q", h), ("linear_k", kv), ("linear_v", kv)):
        if q in leaves:
            per += r * h + r * out_dim
    if "linear_proj" in leaves:
        per += r * h + r * h
    if "linear_fc1" in leaves:
        per += (r * h + r * 2 * f) if fused else 2 * r * h + r * 2 * f
    for q in ("linear_fc1_gate", "linear_fc1_up"):
        if q in leaves:
            per += r * h + r * f
    if "linear_fc2" in leaves:
        per += r * f + r * h
    if any("layers." in t for t in targets):
        return None
    return per * L


@transform
def lora_targets(ctx: Ctx) -> Result | None:
    peft = _lora(ctx)
    if peft is None:
        return Result("dropped", "no PEFT") if ctx.node("peft") is None else Result("unsupported", "not a LoRA method (see PEFT001)")
    targets = list(ctx.v("peft.target_modules") or [])
    excl = list(ctx.v("peft.exclude_modules") or [])
    canonical = list(knowledge.modules()["canonical_targets"])
    note = None
    if not targets and excl:
        targets = [t for t in canonical if t not in excl]
        note = f"exclude_modules={excl}: the other linear layers of the transformer blocks"
    if not targets:
        ctx.diags.error("NM530", "LoRA has no target modules", key="peft.target_modules")
        return Result("unsupported", "no targets")
    if peft.cls == "CanonicalLoRA":
        bad_fused = [t for t in targets if t.split(".")[-1] in ("linear_qkv", "linear_fc1")]
        if bad_fused:
            ctx.diags.error("NM531", f"CanonicalLoRA rejects fused targets {bad_fused} (NeMo asserts)", key="peft.target_modules")
    pats, shared, bad = translate_targets(ctx, targets)
    kn = ctx.k("peft.target_modules")
    if bad:
        ctx.diags.warning("NM532", f"LoRA targets {bad} have no known HF name for the {model_info(ctx)['family']} family; they are not migrated",
                          key="peft.target_modules", **(kn.prov.where() if kn else {}))
    ctx.set("peft.target_modules", pats, "peft.target_modules", note=note)
    if bad:
        return Result("unsupported", f"untranslatable targets {bad}")
    if shared and peft.cls in ("LoRA", "DoRA"):
        nemo_n, hf_n = lora_params(ctx, targets, True), lora_params(ctx, targets, False)
        counts = f" ({nemo_n:,} vs {hf_n:,} trainable parameters on {model_info(ctx)['id']})" if nemo_n and hf_n else ""
        return Result("approximate", f"NeMo's LoRA on the fused {', '.join(t.split('.')[-1] for t in shared)} shares one A matrix across "
                      f"q/k/v (gate/up); Automodel trains a separate A per projection{counts}, so the trajectory differs "
                      "(`nemo-migrate run --verify` measures it; its runtime has a tied-A mode)")
    if note:
        return Result("approximate", note + "; NeMo's exclude semantics are approximated on the four canonical targets")
    return None


@transform
def lora_init(ctx: Ctx) -> Result | None:
    if _lora(ctx) is None:
        return Result("dropped", "no PEFT") if ctx.node("peft") is None else Result("unsupported", "not a LoRA method (see PEFT001)")
    a = ctx.v("peft.lora_A_init_method", nemo_default("LoRA.lora_A_init_method"))
    b = ctx.v("peft.lora_B_init_method", nemo_default("LoRA.lora_B_init_method"))
    if a == "xavier":
        ctx.set("peft.lora_A_init", "xavier", "peft.lora_A_init_method")
    elif a == "kaiming":
        ctx.set("peft.lora_A_init", "kaiming", "peft.lora_A_init_method", note="kaiming_uniform(a=sqrt(5))")
    else:
        ctx.set("peft.lora_A_init", "xavier", "peft.lora_A_init_method")
        return Result("unsupported", f"lora_A_init_method={a!r}: Automodel initialises A with xavier_normal or kaiming_uniform only")
    if b != "zero":
        return Result("unsupported", f"lora_B_init_method={b!r}: Automodel always starts B at zero")
    return None


@transform
def lora_dtype(ctx: Ctx) -> Result | None:
    v = ctx.v("peft.lora_dtype")
    if v is None or _lora(ctx) is None:
        return None
    name = str(v).replace("torch.", "")
    name = {"float": "float32", "half": "float16", "bf16": "bfloat16"}.get(name, name)
    if name not in ("float32", "float16", "bfloat16"):
        return Result("unsupported", f"lora_dtype={v!r}")
    ctx.set("peft.lora_dtype", name, "peft.lora_dtype")
    return None

"""LoRA with Automodel 0.7 semantics, hand-written (no peft injection), plus a NeMo-style tied-A fused mode.

* Matching: 0.7's ``ModuleMatcher`` on full module FQNs (:mod:`nemo_migrate.automodel.match`, the one matcher
  ``diff`` uses too); only ``nn.Linear`` modules (torchao ``Float8Linear`` included) are patched.
* A patched linear keeps its class's forward for the base path (so a Float8Linear base stays FP8) and adds
  ``lora_B(lora_A(x) * scale)`` with ``scale = alpha / dim``; dropout on x (``pre``) or on the LoRA output
  (``post``); ``lora_A`` init xavier_normal_ for ``xavier`` else kaiming_uniform_(a=sqrt(5)); ``lora_B`` zero;
  ``lora_dtype`` (None -> base weight dtype). The base weight/bias keep their FQNs and are frozen.
* Tied-A (``nemo_compat.lora_tied_a``): within one attention block the targeted q/k/v projections share one A, and
  gate/up share one A, as NeMo's fused adapters on linear_qkv/linear_fc1 (A: r x hidden, B stacked). The shared
  ``A(dropout(x))`` is computed once per input (one dropout mask for the group, as NeMo's fused adapter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..automodel.match import module_matches

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = Replicate = Shard = None

# ----------------------------------------------------------------------------------------------------------------
# Matching (0.7.0 module_matcher semantics)
# ----------------------------------------------------------------------------------------------------------------


def is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear)


def matches(spec, module: nn.Module, name: str) -> bool:
    """0.7's ModuleMatcher.match for one module FQN."""
    return module_matches(name, is_linear(module), spec.target_modules, spec.exclude_modules, spec.match_all_linear)


def find_targets(model: nn.Module, spec) -> list[str]:
    return [n for n, m in model.named_modules() if n and is_linear(m) and matches(spec, m, n)]


# ----------------------------------------------------------------------------------------------------------------
# The LoRA linear
# ----------------------------------------------------------------------------------------------------------------


class TiedA:
    """Shared-A group bookkeeping: computes ``A(dropout(x))`` once per input and hands it to every member."""

    def __init__(self, owner: nn.Module, members: list[str]):
        self.owner = owner  # the member module that registers the shared lora_A
        self.members = members
        self._x = None
        self._a = None
        self._left = 0

    def compute(self, x: torch.Tensor, fn) -> torch.Tensor:
        if self._x is not None and self._x is x and self._left > 0:
            self._left -= 1
            a = self._a
            if self._left == 0:
                self._x = self._a = None
            return a
        a = fn(x)
        self._left = len(self.members) - 1
        self._x, self._a = (x, a) if self._left > 0 else (None, None)
        return a


class LoRAMixin:
    """Mixed in front of the base linear class (nn.Linear or Float8Linear) by ``__class__`` swap."""

    lora_dim: int
    lora_scale: float
    lora_dropout_p: float
    lora_dropout_position: str
    lora_tied: TiedA | None

    def lora_A_module(self) -> nn.Linear:
        tied = self.__dict__.get("lora_tied")
        return tied.owner.lora_A if tied is not None else self.lora_A

    def _lora_a(self, x: torch.Tensor) -> torch.Tensor:
        A = self.lora_A_module().weight
        if self.lora_dropout_position == "pre":
            x = F.dropout(x, p=self.lora_dropout_p, training=self.training)
        if x.dtype != A.dtype:
            x = x.to(A.dtype)
        a = F.linear(x, A)
        if _is_dtensor(a) and any(isinstance(pl, Shard) for pl in a.placements):
            # TP column-parallel: lora_A is sharded on the rank dim; gather the small r-dim output
            a = a.redistribute(placements=[Replicate()])
        return a

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        res = super().forward(x)
        tied = self.__dict__.get("lora_tied")
        a = tied.compute(x, self._lora_a) if tied is not None else self._lora_a(x)
        lora = F.linear(a * self.lora_scale, self.lora_B.weight)
        if self.lora_dropout_position == "post":
            lora = F.dropout(lora, p=self.lora_dropout_p, training=self.training)
        if lora.dtype != res.dtype:
            lora = lora.to(res.dtype)
        return res + lora

    def extra_repr(self) -> str:  # noqa: D401
        base = super().extra_repr()
        tied = " tied_A" if self.__dict__.get("lora_tied") is not None else ""
        return f"{base}, lora_dim={self.lora_dim}, lora_scale={self.lora_scale}{tied}"


def _is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


_CLASSES: dict[type, type] = {}


def _lora_class(base: type) -> type:
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(f"LoRA{base.__name__}", (LoRAMixin, base), {})
        _CLASSES[base] = cls
    return cls


def is_lora(m: nn.Module) -> bool:
    return isinstance(m, LoRAMixin)


@torch.no_grad()
def init_lora_A(weight: torch.Tensor, method: str) -> None:
    if method == "xavier":
        nn.init.xavier_normal_(weight)
    else:
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def patch_linear(module: nn.Linear, *, dim: int, alpha: float, dropout: float, dropout_position: str,
                 lora_A_init: str, lora_dtype: torch.dtype | None, shared_A: nn.Linear | None = None) -> nn.Module:
    """Turn ``module`` into a LoRA linear in place (base frozen, FQNs of weight/bias unchanged)."""
    assert isinstance(module, nn.Linear) and not is_lora(module)
    dev = module.weight.device
    dtype = lora_dtype or module.weight.dtype
    module.weight.requires_grad_(False)
    if module.bias is not None:
        module.bias.requires_grad_(False)
    module.__class__ = _lora_class(type(module))
    module.lora_dim = dim
    module.lora_scale = alpha / dim
    module.lora_dropout_p = float(dropout)
    module.lora_dropout_position = dropout_position
    module.__dict__["lora_tied"] = None
    if shared_A is None:
        module.lora_A = nn.Linear(module.in_features, dim, bias=False, device=dev, dtype=dtype)
        init_lora_A(module.lora_A.weight, lora_A_init)
    module.lora_B = nn.Linear(dim, module.out_features, bias=False, device=dev, dtype=dtype)
    with torch.no_grad():
        module.lora_B.weight.zero_()
    return module


# NeMo's fused adapters: linear_qkv = {q,k,v}_proj, linear_fc1 = {gate,up}_proj (HF Llama-family names).
TIED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass
class LoraInfo:
    targets: list[str]
    tied_groups: list[list[str]]
    dim: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.dim


def apply_lora(model: nn.Module, spec, *, targets: list[str] | None = None, tied_a: bool = False,
               lora_dtype: torch.dtype | None = None) -> LoraInfo:
    """Freeze ``model`` and patch the matched linears (``targets`` if already computed before an FP8 swap)."""
    for p in model.parameters():
        p.requires_grad_(False)
    if targets is None:
        targets = find_targets(model, spec)
    mods = dict(model.named_modules())
    groups: list[list[str]] = []
    done: set[str] = set()
    kw = dict(dim=spec.dim, alpha=spec.alpha, dropout=spec.dropout, dropout_position=spec.dropout_position,
              lora_A_init=spec.lora_A_init, lora_dtype=lora_dtype)
    if tied_a:
        by_parent: dict[str, dict[str, str]] = {}
        for t in targets:
            parent, _, leaf = t.rpartition(".")
            by_parent.setdefault(parent, {})[leaf] = t
        for parent, leaves in by_parent.items():
            for group in TIED_GROUPS:
                members = [leaves[g] for g in group if g in leaves]
                if len(members) < 2:
                    continue
                widths = {mods[m].in_features for m in members}
                if len(widths) != 1:
                    continue
                owner = patch_linear(mods[members[0]], **kw)
                tied = TiedA(owner, members)
                owner.__dict__["lora_tied"] = tied
                for m in members[1:]:
                    patch_linear(mods[m], shared_A=owner.lora_A, **kw)
                    mods[m].__dict__["lora_tied"] = tied
                groups.append(members)
                done.update(members)
    for t in targets:
        if t not in done:
            patch_linear(mods[t], **kw)
    return LoraInfo(targets=list(targets), tied_groups=groups, dim=spec.dim, alpha=spec.alpha)


# ----------------------------------------------------------------------------------------------------------------
# HF PEFT export / import / merge
# ----------------------------------------------------------------------------------------------------------------


def adapter_tensors(full_sd: dict[str, torch.Tensor], info: LoraInfo) -> dict[str, torch.Tensor]:
    """HF PEFT keys from a full (unsharded) model state dict; tied A duplicated into every member."""
    out = {}
    owner_of = {}
    for g in info.tied_groups:
        for m in g:
            owner_of[m] = g[0]
    for t in info.targets:
        a_src = owner_of.get(t, t)
        out[f"base_model.model.{t}.lora_A.weight"] = full_sd[f"{a_src}.lora_A.weight"].detach().clone()
        out[f"base_model.model.{t}.lora_B.weight"] = full_sd[f"{t}.lora_B.weight"].detach().clone()
    return out


def trainable_keys_from_adapter(adapter: dict[str, torch.Tensor], info: LoraInfo) -> dict[str, torch.Tensor]:
    """Inverse of ``adapter_tensors``: model state-dict keys of the trainable LoRA params (owner A only)."""
    out = {}
    owners = {g[0] for g in info.tied_groups}
    members = {m for g in info.tied_groups for m in g}
    for t in info.targets:
        a = adapter.get(f"base_model.model.{t}.lora_A.weight")
        b = adapter.get(f"base_model.model.{t}.lora_B.weight")
        if a is None or b is None:
            raise KeyError(t)
        if t not in members or t in owners:
            out[f"{t}.lora_A.weight"] = a
        out[f"{t}.lora_B.weight"] = b
    return out


def adapter_config(info: LoraInfo, spec, *, base_model: str, dropout: float) -> dict[str, Any]:
    """``adapter_config.json`` as peft writes it: peft's own ``LoraConfig`` (every field with this peft's defaults and
    its ``peft_version``), serialised as ``LoraConfig.save_pretrained`` does but with sets sorted (peft writes
    ``list(set)``, whose order changes from process to process)."""
    from peft import LoraConfig

    cfg = LoraConfig(task_type="CAUSAL_LM", r=info.dim, lora_alpha=info.alpha, lora_dropout=dropout,
                     target_modules=sorted(info.targets), bias="none", use_dora=False, use_rslora=False,
                     fan_in_fan_out=False, init_lora_weights=True, inference_mode=True,
                     base_model_name_or_path=base_model)
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in cfg.to_dict().items()}


def merged_state_dict(full_sd: dict[str, torch.Tensor], info: LoraInfo) -> dict[str, torch.Tensor]:
    """Base weights with ``W + scale * B @ A`` folded in; adapter keys dropped."""
    adapters = adapter_tensors(full_sd, info)
    out = {k: v for k, v in full_sd.items() if ".lora_A." not in k and ".lora_B." not in k}
    for t in info.targets:
        A = adapters[f"base_model.model.{t}.lora_A.weight"].float()
        B = adapters[f"base_model.model.{t}.lora_B.weight"].float()
        w = out[f"{t}.weight"]
        out[f"{t}.weight"] = (w.float() + info.scale * (B @ A)).to(w.dtype)
    return out

"""Are the trainable weights finite? The check the loop runs after every optimizer update and a checkpoint runs
before it saves anything (issue 15: a NaN/inf weight stops the run, and is never written).

``flag()`` is one fused ``torch._foreach_norm`` over this rank's trainable shards, left on the device (no host sync;
the loop reduces it with the loss). Its fp32 sum of squares also overflows for weights beyond ~1e19, so a flagged
step is confirmed tensor by tensor (``bad()``, a collective) before the run is stopped.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .errors import RunError


def canonical(name: str) -> str:
    """A parameter's name without the wrappers' prefixes (torch.compile, activation checkpointing)."""
    return name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")


def local(p: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds for a parameter (a DTensor's shard; torchao's float8 wrapper's inner tensor)."""
    t = p.detach()
    t = getattr(t, "_local_tensor", t)
    inner = getattr(t, "_tensor", None)
    return inner if isinstance(inner, torch.Tensor) else t


class WeightGuard:
    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device
        self._trainable: list[tuple[str, torch.Tensor]] | None = None

    def trainable(self) -> list[tuple[str, torch.Tensor]]:
        if self._trainable is None:
            self._trainable = [(canonical(n), p) for n, p in self.model.named_parameters() if p.requires_grad]
        return self._trainable

    @torch.no_grad()
    def flag(self) -> torch.Tensor:
        """1.0 when a trainable weight on this rank is NaN/inf (or beyond ~1e19), else 0.0; a device tensor."""
        ts = [t for t in (local(p) for _, p in self.trainable()) if t.numel()]
        if not ts:
            return torch.zeros((), dtype=torch.float32, device=self.device)
        norms = torch._foreach_norm(ts, 2.0)
        total = torch.stack([n.float() for n in norms]).sum()
        return (~torch.isfinite(total)).float().to(self.device)

    @torch.no_grad()
    def bad(self) -> list[tuple[str, int]]:
        """(name, number of NaN/inf elements) of every trainable weight that has any, over all ranks (collective)."""
        named = self.trainable()
        counts = torch.tensor([int((~torch.isfinite(local(p))).sum()) if local(p).is_floating_point() else 0
                               for _, p in named] or [0], dtype=torch.float64, device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)
        return [(n, int(c)) for (n, _), c in zip(named, counts.tolist()) if c > 0]

    def error(self, bad: list[tuple[str, int]], *, when: str, lr: float, saved: str) -> RunError:
        """The message that stops the run; ``saved`` says where the last finite weights are."""
        names = ", ".join(n for n, _ in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        return RunError(f"the trainable weights are not finite {when}: {len(bad)} of {len(self.trainable())} tensors "
                        f"hold NaN/inf ({names}). The run stopped without saving them; {saved}",
                        hint=f"the learning rate applied was {lr:g}: lower it (optimizer.lr, lr_scheduler.max_lr), "
                             "check optimizer.eps / weight_decay, or train in bf16/fp32 instead of fp16")

"""Masked cross-entropy and the two loss reductions.

* ``automodel`` (0.7): each micro-batch's CE is summed over its label tokens and divided by the label-token count
  of the whole optimizer step (all micro-batches, all DP ranks); backward runs on that times the DP size, which the
  DP gradient average cancels. The step loss is the global per-token mean.
* ``nemo`` (``nemo_compat.loss_reduction: nemo``, NeMo 2 / Megatron): each micro-batch's loss is its own token
  mean; backward runs on it divided by the number of micro-batches, and the DP average makes the step loss the
  mean over micro-batches and DP ranks of the per-micro-batch token means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_ce_sum(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100,
                  fp32_upcast: bool = True) -> torch.Tensor:
    """Sum of token CE over labels != ignore_index (0.7 MaskedCrossEntropy with reduction='sum')."""
    if labels.device != logits.device:
        labels = labels.to(logits.device)
    logits = logits.reshape(-1, logits.size(-1))
    if fp32_upcast:
        logits = logits.float()
    try:
        from torch.distributed.tensor import DTensor

        if isinstance(logits, DTensor):
            logits = logits.full_tensor()
    except ImportError:  # pragma: no cover
        pass
    labels = labels.reshape(-1)
    if ignore_index != -100:
        labels = labels.masked_fill(labels == -100, ignore_index)
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")


def microbatch_loss(ce_sum: torch.Tensor, *, mode: str, mb_tokens: int, step_tokens: int, num_microbatches: int,
                    dp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tensor to backward, detached contribution to the reported step loss before the DP sum)."""
    if mode == "nemo":
        mean = ce_sum / max(mb_tokens, 1)
        return mean / num_microbatches, (mean / (num_microbatches * dp_size)).detach()
    if step_tokens == 0:
        z = ce_sum * 0.0
        return z, z.detach()
    local = ce_sum / step_tokens
    return local * dp_size, local.detach()

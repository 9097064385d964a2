"""Validate an effective Automodel 0.7 config and resolve it into a normalised ``Spec`` -- before any training.

Every section is checked the way 0.7 checks it (strict dataclass sections reject unknown keys; lenient ones warn
here instead of ignoring silently), plus the runtime's own limits (what it does not implement fails clearly).
Which keys a section takes and what an absent key means are Automodel 0.7's schema and defaults
(:mod:`nemo_migrate.automodel.schema`, from mappings/automodel/*.yaml; the runtime's own ``nemo_compat`` section is
declared there too).  Every problem of a config is reported together: one RunError listing each with its
``file:line`` and key (:class:`ConfigErrors`), as the compiler reports its diagnostics.
Nothing here imports torch at module import; a few checks import it lazily (optimizer signatures).

The pipeline, one module a step: ``types`` (the normalised dataclasses), ``check`` (the validation context and the
value checkers every reader uses), the section readers ``model`` (model, tokenizer, peft, fp8), ``dist``
(distributed, dist_env), ``data`` (datasets, dataloaders, packing) and ``train`` (seed, step_scheduler, loss,
optimizer, lr_scheduler, clip_grad_norm, checkpoint, nemo_compat, compile), and ``pipeline`` (``resolve``: the
readers in order).
"""

from __future__ import annotations

from .check import FAILED, MAX_TOKENS, ConfigErrors
from .model import has_tokenizer_files, has_weights
from .pipeline import resolve
from .types import CkptSpec, CompatSpec, CompileSpec, DatasetSpec, DistSpec, Fp8Spec, ModelSpec, OptimSpec, PeftSpec, \
    Spec, StepSpec, TokenizerSpec

__all__ = ["CkptSpec", "CompatSpec", "CompileSpec", "ConfigErrors", "DatasetSpec", "DistSpec", "FAILED", "Fp8Spec",
           "MAX_TOKENS", "ModelSpec", "OptimSpec", "PeftSpec", "Spec", "StepSpec", "TokenizerSpec",
           "has_tokenizer_files", "has_weights", "resolve"]

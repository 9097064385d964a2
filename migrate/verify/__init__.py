"""``nemo-migrate run --verify``: train the NeMo 2 job's meaning and its migration side by side, and measure.

No NeMo or Megatron can run here, so the source's meaning is executed by the bundled runtime in NeMo-compatible
modes (``nemo_compat``).  Both legs use the same data file, seed, initial weights and initial LoRA A/B (the reference
leg's adapters at step 0 are loaded into the migrated leg; split q/k/v adapters start from the shared A).

- reference.py: the NeMo side, i.e. the reference leg lowered from the resolved job (NeMo's LR formula, tokenization,
  fused LoRA, loss reduction, fp32 master weights; NeMo's defaults from its class tables), not from the rule table;
- legs.py: the migrated leg (the emitted Automodel YAML as the runtime, Automodel 0.7 semantics, runs it), the
  attribution legs (one admitted approximation removed each; "all removed" must match the reference within the
  standard envelope, which is what the rows marked exact promise) and running them;
- checks.py: tokenization parity and the LR at every step, before training;
- automodel.py: ``--against automodel`` (GPU only): the migrated YAML also trained by the real nemo_automodel 0.7.0
  recipe from the same weights, data and initial adapters, and compared with the migrated leg (a check of the runtime);
- report.py: the typed report (verify-report.json) and Automodel CI's envelopes;
- run.py: ``run_verify``, the orchestration.
"""

from .legs import APPROXIMATIONS, VerifyError, migrated_config
from .reference import nemo_lr, nemo_tokenize, reference_config
from .report import ENVELOPES, VerifyReport, envelope_of
from .run import VerifyOptions, run_verify

__all__ = ["APPROXIMATIONS", "ENVELOPES", "VerifyError", "VerifyOptions", "VerifyReport", "envelope_of", "migrated_config", "nemo_lr",
           "nemo_tokenize", "reference_config", "run_verify"]

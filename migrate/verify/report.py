"""What ``run --verify`` found, as typed models, and how it is written (verify-report.json, loss-curves.png).

The report is built once, from these models, and read by attribute.  Its JSON is the layout verify has always written
(the recorded bench/verify/*/verify-report.json read back into these models and out again unchanged): a key that only
some reports carry is a field with a default, and it is written only when it was set (``exclude_unset``) -- e.g.
``rejected`` only when the migrated config does not run (and then no ``against_automodel``), a tokenization ``error``
only when the check could not run.  Envelopes are Automodel CI's resume tolerance profiles
(``atol + rtol * max(|a|, |b|)``; reference/anchors-and-pitfalls.md §1.2).
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict

ENVELOPES = {  # name: (atol first step, rtol first step, atol later, rtol later)
    "strict": (1e-6, 0.0, 1e-6, 0.0),
    "standard": (1e-5, 0.002, 5e-3, 0.002),
    "relaxed": (1e-4, 0.0075, 1e-2, 0.0075),
}
EXACT = ("strict", "standard")  # the envelopes in which rows marked exact hold

Number = Union[int, float]  # a count or a value as the legs logged it (ints stay ints, floats floats)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------- comparisons

class StepDiff(Model):
    step: int
    a: float
    b: float
    abs_diff: float
    envelope: str


def envelope_of(a: list[float], b: list[float]) -> tuple[str, list[StepDiff]]:
    """The tightest envelope the two series stay in, and the per-step differences."""
    rows = []
    best = "strict"
    order = list(ENVELOPES)
    for i, (x, y) in enumerate(zip(a, b)):
        d = abs(x - y)
        scale = max(abs(x), abs(y))
        fits = []
        for name, (a0, r0, a1, r1) in ENVELOPES.items():
            atol, rtol = (a0, r0) if i == 0 else (a1, r1)
            if d <= atol + rtol * scale or (math.isnan(x) and math.isnan(y)):
                fits.append(name)
        tightest = fits[0] if fits else "beyond"
        rows.append(StepDiff(step=i, a=x, b=y, abs_diff=d, envelope=tightest))
        if tightest == "beyond" or (best != "beyond" and order.index(tightest) > order.index(best)):
            best = tightest
    return best, rows


class Comparison(Model):
    """A leg against the reference leg, step by step."""
    loss_envelope: str
    grad_norm_envelope: str
    max_abs_loss_diff: float
    final_abs_loss_diff: Optional[float]
    per_step: list[StepDiff]

    @classmethod
    def of(cls, reference: LegRun, leg: LegRun) -> Comparison:
        env_loss, rows = envelope_of(reference.series("loss"), leg.series("loss"))
        env_gn, _ = envelope_of(reference.series("grad_norm"), leg.series("grad_norm"))
        return cls(loss_envelope=env_loss, grad_norm_envelope=env_gn, max_abs_loss_diff=max((r.abs_diff for r in rows), default=0.0),
                   final_abs_loss_diff=rows[-1].abs_diff if rows else None, per_step=rows)


# ---------------------------------------------------------------------------------------------- checks before training

class TokenSample(Model):
    sample: int
    same: bool
    nemo_len: int
    automodel_len: int
    first_diff_at: Optional[int]
    nemo_label_tokens: int
    automodel_label_tokens: int
    nemo_eos_at: Optional[int]
    automodel_eos_at: Optional[int]
    nemo_at_diff: list[Optional[str]]
    automodel_at_diff: list[Optional[str]]


class TokenizationParity(Model):
    same: bool
    error: Optional[str] = None  # the migrated dataset could not tokenize the samples
    samples: list[TokenSample]


class LRCheck(Model):
    migrated: list[float]
    nemo: list[float]
    max_rel_diff: float
    worst_step: Optional[int]


class Checks(Model):
    tokenization: TokenizationParity
    lr: LRCheck
    trainable_parameters: dict[str, Optional[Number]]
    # per leg; absent when the migrated config did not run
    tokens_per_step: Optional[dict[str, list[Optional[Number]]]] = None
    label_tokens_per_step: Optional[dict[str, list[Optional[Number]]]] = None
    micro_batches_per_step: Optional[dict[str, Optional[Number]]] = None


# ---------------------------------------------------------------------------------------------- legs

class LegRun(Model):
    """One trained leg as it ran (in memory): its metrics rows and the runtime's (or Automodel's) summary."""
    name: str
    dir: str
    config: str
    command: list[str]
    seconds: float
    steps: list[dict[str, Any]]  # the leg's metrics.jsonl train rows (Automodel's training.jsonl for its legs)
    summary: dict[str, Any]  # the runtime's summary.json as written
    automodel: Optional[AutomodelLegInfo] = None  # Automodel legs: what the leg recorded inside Automodel
    reused_from: Optional[str] = None  # the leg (variant/name) whose result this is: the same effective runtime config

    def series(self, key: str) -> list[float]:
        return [float(s[key]) if s.get(key) is not None else float("nan") for s in self.steps]

    def column(self, key: str, n: int | None = None) -> list[Any]:
        return [s.get(key) for s in self.steps[:n]]

    def report(self) -> LegReport:
        reused = {"reused_from": self.reused_from} if self.reused_from else {}  # the key only in reports that reuse a leg
        return LegReport(config=self.config, command=self.command, seconds=self.seconds, summary=self.summary,
                         loss=self.series("loss"), grad_norm=self.series("grad_norm"), lr=self.series("lr_applied"), **reused)


class LegReport(Model):
    config: str
    command: list[str]
    seconds: float
    summary: dict[str, Any]
    loss: list[float]
    grad_norm: list[float]
    lr: list[float]
    reused_from: Optional[str] = None  # not run: the result of this leg (same effective runtime config)


class Attribution(Model):
    """One admitted approximation, measured by removing it alone."""
    approximation: str
    rule: str
    rules_bucket: str
    removed_means: str
    max_abs_loss_diff_with_it: float
    max_abs_loss_diff_without_it: float
    effect: float


# ---------------------------------------------------------------------------------------------- --against automodel

class AutomodelSetup(Model):
    """What Automodel's build_model returned (recorded inside the Automodel leg); empty when it never got there."""
    lora_modules: Optional[int] = None
    lora_module_kinds: Optional[dict[str, int]] = None
    float8_modules: Optional[int] = None
    float8_examples: Optional[list[str]] = None
    trainable_params: Optional[int] = None
    total_params: Optional[int] = None
    trainable_examples: Optional[list[str]] = None


class AutomodelAdapters(Model):
    copied: int
    not_in_automodel: list[str]
    not_in_adapter: list[str]


class AutomodelTrained(Model):
    adapters_total: int
    adapters_with_gradient: int
    adapters_moved: int
    adapters_finite: bool
    steps: int


class AutomodelLegInfo(Model):
    """The Automodel leg's own record (automodel-leg.json, written by ``nemo_migrate.verify.automodel`` under torchrun)."""
    automodel_version: str
    torch: str
    setup: Optional[AutomodelSetup] = None
    adapters: Optional[AutomodelAdapters] = None
    trained: Optional[AutomodelTrained] = None


class LabelTokens(Model):
    runtime: list[Optional[Number]]
    automodel: list[Optional[Number]]


class PairComparison(Model):
    """The runtime's migrated leg against the real Automodel recipe on the same config."""
    steps: int
    loss_envelope: str
    grad_norm_envelope: str
    max_abs_loss_diff: float
    lr_max_rel_diff: float
    label_tokens_equal: bool
    label_tokens: LabelTokens
    per_step: list[StepDiff]


class AgainstAutomodel(Model):
    verdict: str  # match | differs | failed
    findings: list[str]
    error: Optional[str] = None  # failed: why
    decided_by: Optional[str] = None  # match / differs: the pair that decides (dropout0 when the config has dropout)
    automodel_output: Optional[str] = None  # failed in Automodel: its output file
    pairs: dict[str, PairComparison]
    automodel_setup: Optional[AutomodelSetup] = None
    automodel_adapters: Optional[AutomodelAdapters] = None
    automodel_trained: Optional[AutomodelTrained] = None


# ---------------------------------------------------------------------------------------------- the report

class VariantResult(Model):
    variant: str
    config: str
    verdict: str  # pass | fail
    exact_rows_envelope: str
    migrated_vs_reference: str
    rejected: Optional[str] = None  # only when the migrated config does not run
    notes: list[str]
    admitted_approximations: dict[str, Optional[str]]
    unflagged_differences: list[str]
    checks: Checks
    comparisons: dict[str, Comparison]
    attribution: list[Attribution]
    against_automodel: Optional[AgainstAutomodel] = None  # written (null without --against) when the migrated leg ran
    legs: dict[str, LegReport]
    plot: Optional[str]


class VerifyReport(Model):
    tool: str
    source: str
    steps: int
    command: Optional[str]
    device: str
    versions: dict[str, str]
    variants: list[VariantResult]
    timing: Optional[dict[str, Any]] = None  # where the wall time went (seconds)

    @property
    def exit_code(self) -> int:
        """0: every variant's exact rows hold within the standard envelope; 2: they do not."""
        return 0 if all(v.verdict == "pass" for v in self.variants) else 2


LegRun.model_rebuild()  # its Automodel record is declared below it


# ---------------------------------------------------------------------------------------------- where it ran, the plot

def device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001
        pass
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for m in ("torch", "transformers", "torchao", "peft", "nemo-automodel"):
        try:
            out[m] = version(m)  # metadata only: importing torchao on a CPU build prints kernel-load warnings
        except PackageNotFoundError:
            out[m] = "not installed"
    from .. import __version__

    out["nemo-migrate"] = __version__
    return out


_FIXED = {"reference": "black", "migrated": "tab:red", "automodel": "tab:blue"}


def _colours(names: list[str]) -> dict[str, Any]:
    """One colour a leg: black reference, red migrated, blue Automodel; the rest tab10's other colours, then tab20's
    light ones (no red or blue among them)."""
    import matplotlib

    pool = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i not in (0, 3)]
    pool += [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i % 2 and i not in (1, 7)]
    out: dict[str, Any] = {}
    for n in names:
        out[n] = _FIXED.get(n) or pool[len([m for m in out if m not in _FIXED]) % len(pool)]
    return out


def draw(legs: dict[str, LegRun], title: str) -> Any:
    """The loss curves as a matplotlib Figure: each leg its own colour, the standard envelope (Automodel CI's tolerance)
    as a band around the reference, and the migrated leg drawn last, dashed with markers, so it stays visible where
    it lies on the reference."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    colours = _colours(list(legs))
    ref = legs.get("reference")
    if ref is not None and ref.steps:
        a0, r0, a1, r1 = ENVELOPES["standard"]
        xs = [s["step"] for s in ref.steps]
        ys = ref.series("loss")
        tol = [(a0 + r0 * abs(y)) if i == 0 else (a1 + r1 * abs(y)) for i, y in enumerate(ys)]
        ax.fill_between(xs, [y - t for y, t in zip(ys, tol)], [y + t for y, t in zip(ys, tol)], color="0.6", alpha=0.3, lw=0,
                        zorder=1, label="standard envelope around the reference")
    for name, leg in legs.items():
        if name == "reference":
            style = dict(lw=2.6, zorder=4)
        elif name == "migrated":
            style = dict(lw=1.8, ls="--", marker="o", ms=3.5, zorder=10)
        elif name.startswith("automodel"):
            style = dict(lw=1.6, ls=":", marker="x", ms=4, zorder=8)
        else:
            style = dict(lw=1.2, ls="-.", zorder=5, alpha=0.9)
        label = name + (f" (= {leg.reused_from})" if leg.reused_from else "")
        ax.plot([s["step"] for s in leg.steps], leg.series("loss"), label=label, color=colours[name], **style)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"nemo-migrate run --verify: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot(legs: dict[str, LegRun], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - no matplotlib: the JSON report has every number
        return None
    fig = draw(legs, title)
    fig.savefig(path)
    plt.close(fig)
    return path

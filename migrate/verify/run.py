"""``run_verify``: convert the NeMo job, then per variant check, train the legs, compare, and write the report."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..convert import Options, Variant, convert
from .checks import lr_check, tokenization_parity
from .legs import APPROXIMATIONS, LegRunner, LegServers, Progress, VerifyError, data_files, environment, migrated_config, read_jsonl, without, yaml_load
from .reference import nemo_lr_values, nemo_tokenize, reference_config, seed, seq_length, sft_settings
from .report import (EXACT, Attribution, Checks, Comparison, LegRun, LRCheck, TokenizationParity, VariantResult, VerifyReport, device, plot,
                     versions)


@dataclass
class VerifyOptions:
    source: Path
    recipe: Path | None = None
    factory: str | None = None
    sets: list[str] = field(default_factory=list)
    steps: int = 20
    proxy_model: str | None = None
    model_path: Path | None = None
    data: Path | None = None
    nproc_per_node: int = 1
    out: Path | None = None
    against: str | None = None
    seq_length: int | None = None  # run with a shorter seq_length than the job's (stated in the report)
    migrated: Path | None = None  # an Automodel YAML to verify instead of convert's output (e.g. a hand-written one)
    samples: int = 8  # tokenization-parity samples
    jobs: int = 1  # attribution legs run at once (they are independent; on one GPU they share it)


def run_verify(opts: VerifyOptions, log: Callable[[str], Any] = print) -> tuple[int, VerifyReport]:
    """Returns (exit code, report).  0: the exact rows hold within the standard envelope; 2: they do not."""
    if opts.against is not None:
        if opts.against != "automodel":
            raise VerifyError(f"--against {opts.against!r}: the only target is 'automodel' (the real nemo_automodel 0.7.0 recipe)")
        from .automodel import unavailable

        why = unavailable()
        if why:
            raise VerifyError(f"--against automodel: {why}")
    t0 = time.time()
    conv = convert(Options(source=opts.source, recipe=opts.recipe, factory=opts.factory, sets=list(opts.sets)))
    out = Path(opts.out or "verify")
    out.mkdir(parents=True, exist_ok=True)
    # one-process legs run in long-lived runtime processes, the first started now (its imports overlap the checks)
    # (NEMO_MIGRATE_VERIFY_PROCESS_PER_LEG=1: every leg its own `nemo-migrate run` process, as before)
    shared = opts.nproc_per_node == 1 and os.environ.get("NEMO_MIGRATE_VERIFY_PROCESS_PER_LEG", "") in ("", "0")
    servers = LegServers(opts.jobs, out / "legservers") if shared else None
    try:
        if servers is not None:
            servers.prewarm()
        report = VerifyReport(tool="nemo-migrate run --verify", source=str(opts.source), steps=opts.steps,
                              command=" ".join(shlex.quote(a) for a in sys.argv) if sys.argv else None, device=device(),
                              versions=versions(), variants=[])
        progress = _verify_all(conv, opts, out, report, len(conv.variants) > 1, servers, log)
    finally:
        if servers is not None:
            servers.close()
    report.timing = _timing(t0, progress, report, servers)
    t = report.timing
    starts = t.get("runtime_process_start_s")
    progress.say(f"time: {t['total_s']} s in all: checks before the first leg {t['checks_s']} s; {t['legs_trained']} leg(s) trained "
                 f"({t['legs_reused']} reused) in {t['legs_s']} s by {t['runtime_processes']} runtime process(es)"
                 + (f" (each started in {', '.join(map(str, starts))} s: imports, paid once)" if starts else ""))
    report.write(out / "verify-report.json")
    return report.exit_code, report


def _timing(t0: float, progress: Progress, report: VerifyReport, servers: LegServers | None) -> dict[str, Any]:
    """Where the wall time went: the checks before the first leg (convert, tokenizer, NeMo's tokenization), the
    runtime processes' start (imports; the first overlaps the checks), the legs, and all of it."""
    legs = [leg for v in report.variants for leg in v.legs.values()]
    out: dict[str, Any] = {"total_s": round(time.time() - t0, 1), "checks_s": round(progress.t0 - t0, 1),
                           "legs_s": round(time.time() - progress.t0, 1),
                           "legs_trained": sum(1 for leg in legs if not getattr(leg, "reused_from", None)),
                           "legs_reused": sum(1 for leg in legs if getattr(leg, "reused_from", None))}
    if servers is not None:
        out["runtime_processes"] = len(servers.start_seconds)
        out["runtime_process_start_s"] = servers.start_seconds
    else:
        out["runtime_processes"] = out["legs_trained"]
    return out


def _verify_all(conv, opts: VerifyOptions, out: Path, report: VerifyReport, several: bool, servers: LegServers | None, log) -> Progress:
    planned = []  # every variant's checks first (they are quick and find bad data before any leg trains)
    for v in conv.variants:
        vdir = out / (v.name or v.label) if several else out
        vdir.mkdir(parents=True, exist_ok=True)
        s = _setup(v, opts, vdir)
        planned.append((v, vdir, s, _plan(s)))
    (out / "verify.log").write_text("")
    progress = Progress(sum(len(p) for *_, p in planned), log, out / "verify.log")
    done: dict = {}  # legs run so far, by effective runtime config: the same leg of another variant is not run again
    for v, vdir, s, plan in planned:
        report.variants.append(_verify_variant(v, s, vdir, plan, progress, done, f"{v.name or v.label}/" if several else "", log, servers))
    return progress


def _migrated_yaml(v: Variant, opts: VerifyOptions) -> dict:
    """convert's output for the variant, or the ``--migrated`` YAML given instead."""
    if opts.migrated is None:
        return yaml_load(v.text)
    mp = Path(opts.migrated)
    if mp.is_dir():
        mp = mp / v.output
    if not mp.is_file():
        raise VerifyError(f"--migrated: {mp} does not exist")
    migrated = yaml_load(mp.read_text())
    if not isinstance(migrated, dict):
        raise VerifyError(f"--migrated: {mp} is not an Automodel YAML mapping")
    return migrated


def _tokenizer_dir(opts: VerifyOptions, vdir: Path, rows: list[dict], template: str, notes: list[str]) -> Path:
    """One tokenizer for both legs: the model's own, or one trained here on the training text."""
    if opts.model_path and (Path(opts.model_path) / "tokenizer_config.json").is_file():
        return Path(opts.model_path)
    from nemo_migrate.runtime.tokenizer import train_local_tokenizer

    tok_dir = vdir / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        texts = [" ".join(str(r.get(k, "")) for k in re.findall(r"{(.*?)}", template)) for r in rows]
        train_local_tokenizer(texts, tok_dir, vocab_size=1024 if len(texts) < 20000 else 8192)
    notes.append(f"tokenizer trained locally on the training text ({tok_dir}); the model's own was not given")
    return tok_dir


def _admitted(v: Variant, migrated: dict, parity_same: bool, lr_same: bool) -> tuple[dict[str, str], list[str]]:
    """The approximations the rule table admitted for this job (to be removed in the exactness check), and the
    differences the checks found that the rules did not admit (measured, but NOT removed from it)."""
    status = {o.rule: o.status for o in v.outcomes}
    admitted = {n: status.get(a.rule) for n, a in APPROXIMATIONS.items() if status.get(a.rule) in ("approximate", "unsupported")}
    if not (migrated.get("fp8") or {}).get("enabled"):
        admitted.pop("fp8_scaling", None)  # nothing to remove: the migrated leg runs BF16 like the reference
    unflagged = [n for n, found in (("tokenization", not parity_same), ("lr_schedule", not lr_same)) if found and n not in admitted]
    if parity_same:
        admitted.pop("tokenization", None)
    if lr_same:
        admitted.pop("lr_schedule", None)
    return admitted, unflagged


@dataclass
class _Setup:
    """What the legs of one variant start from, and what the checks before training found."""
    opts: VerifyOptions  # with the saved proxy as model_path under --against automodel
    migrated: dict  # the Automodel YAML verified
    env: dict[str, Any]  # this machine's data, tokenizer and process count
    reference: dict  # the reference leg's config
    parity: TokenizationParity
    lr: LRCheck
    admitted: dict[str, str]
    unflagged: list[str]
    notes: list[str]


def _setup(v: Variant, opts: VerifyOptions, vdir: Path) -> _Setup:
    job = v.job
    migrated = _migrated_yaml(v, opts)
    train, _val = data_files(job, opts.data)
    sft = sft_settings(job)
    rows = read_jsonl(train, need=tuple(dict.fromkeys(re.findall(r"{(.*?)}", str(sft["template"] or "")))))
    seq_len = opts.seq_length or seq_length(job)
    notes: list[str] = []
    if opts.seq_length:
        notes.append(f"seq_length {opts.seq_length} instead of the job's {job.value('data.seq_length')} (both legs)")
    tok_dir = _tokenizer_dir(opts, vdir, rows, sft["template"], notes)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    if opts.against == "automodel" and opts.model_path is None:
        # Automodel loads weights from disk: save the proxy once and let every leg (runtime and Automodel) load it
        from nemo_migrate.runtime.models import save_proxy

        mdir = vdir / "proxy-model"
        if not (mdir / "config.json").is_file():
            save_proxy(opts.proxy_model or "tiny", str((migrated.get("model") or {}).get("pretrained_model_name_or_path") or ""),
                       tok, mdir, seed=int(seed(job, migrated)))
        notes.append(f"--against automodel: the proxy ({opts.proxy_model or 'tiny'}, random weights) was saved to {mdir}; "
                     "every leg loads those weights")
        opts = replace(opts, model_path=mdir, proxy_model=None)
    # NeMo's tokenization of every training record, fed to the reference leg pre-tokenized
    pretok = vdir / "reference-tokenized.jsonl"
    nemo_samples = [nemo_tokenize(r, tok, seq_length=seq_len, **sft) for r in rows]
    if not any(x != -100 for smp in nemo_samples for x in smp["labels"]):
        raise VerifyError(f"{train}: no row has a token to train on (every '{sft['label_key']}' is empty, or seq_length {seq_len} "
                          "leaves no room for the answer): give data with answers, or a larger --seq-length")
    with pretok.open("w") as fh:
        for s in nemo_samples:
            fh.write(json.dumps({"input_ids": s["input_ids"], "labels": s["labels"]}) + "\n")
    env, env_notes = environment(migrated, nproc=opts.nproc_per_node, seq_length=opts.seq_length, tok_dir=tok_dir, train=train)
    lr_values = nemo_lr_values(job, opts.steps)
    ref_cfg, ref_notes = reference_config(job, migrated, env, lr_values, pretok, family="llama")
    notes += env_notes + ref_notes
    if any(o.path.startswith("trainer.plugins.fp8") and o.value not in (None, False) for o in v.outcomes):
        notes.append("the NeMo job trains in FP8 with Transformer Engine delayed scaling (amax history): that cannot be "
                     "reproduced here, so the reference leg is BF16; the migrated config's fp8 section is run as it stands")
    parity = tokenization_parity(rows[: opts.samples], tok, migrated, nemo_samples[: opts.samples], seq_len)
    lr = lr_check(migrated, lr_values, opts.steps)
    admitted, unflagged = _admitted(v, migrated, parity.same, lr.max_rel_diff <= 1e-6)
    return _Setup(opts, migrated, env, ref_cfg, parity, lr, admitted, unflagged, notes)


def _measured(s: _Setup) -> tuple[list[str], list[str]]:
    """The admitted approximations removed in the "all removed" leg, and every difference measured alone."""
    names = [n for n in APPROXIMATIONS if n in s.admitted]
    return names, names + s.unflagged


def _plan(s: _Setup) -> list[str]:
    """The legs a variant trains, in order (for the progress count; a migrated leg that does not run ends it early)."""
    names, measured = _measured(s)
    legs = ["reference", "migrated"]
    if len(measured) > 1 or s.unflagged:
        legs += [f"migrated-without-{n}" for n in measured]
    if names:
        legs.append("migrated-all-removed")
    if s.opts.against == "automodel":
        legs.append("automodel")
        if (s.migrated.get("peft") or {}).get("dropout"):
            legs += ["migrated-dropout0", "automodel-dropout0"]
    return legs


def _verify_variant(v: Variant, s: _Setup, vdir: Path, plan: list[str], progress: Progress, done: dict, prefix: str, log,
                    servers: LegServers | None = None) -> VariantResult:
    opts = s.opts
    runner = LegRunner(work=vdir / "legs", steps=opts.steps, nproc=opts.nproc_per_node, model_path=opts.model_path,
                       proxy_model=opts.proxy_model, log=log, jobs=opts.jobs, progress=progress, prefix=prefix, done=done,
                       servers=servers)
    legs = {"reference": runner.run("reference", {**s.reference, "nemo_compat": {**s.reference["nemo_compat"], "save_init_adapter": True}})}
    init = Path(legs["reference"].dir) / "run" / "initial_adapter.safetensors"
    init = init if init.is_file() else None
    base = migrated_config(s.migrated, s.env, init)
    common = dict(variant=v.name or v.label, config=v.output, notes=s.notes, admitted_approximations=s.admitted,
                  unflagged_differences=s.unflagged)
    # attribution: each measured difference removed alone (when there is more than one), then every admitted one
    names, measured = _measured(s)
    todo = {f"migrated-without-{n}": without(base, s.reference, [n]) for n in measured} if len(measured) > 1 or s.unflagged else {}
    if names:
        todo["migrated-all-removed"] = without(base, s.reference, names)
    dropout0 = None
    if opts.against == "automodel" and (base.get("peft") or {}).get("dropout"):
        # LoRA dropout masks come from each framework's own RNG stream: a dropout-0 pair decides the runtime check
        dropout0 = json.loads(json.dumps(base))
        dropout0["peft"]["dropout"] = 0.0
        todo["migrated-dropout0"] = dropout0
    # with --jobs > 1 the migrated leg runs together with the attribution legs (all they share is the initial adapter,
    # written by the reference leg); one at a time, the migrated leg goes first and the others only if it runs
    together = opts.jobs > 1 and bool(todo)
    try:
        if together:
            legs.update(runner.run_all({"migrated": base, **todo}))
        else:
            legs["migrated"] = runner.run("migrated", base)
    except VerifyError as e:  # the migrated config does not run: that is the finding (another leg's failure is not)
        rec = runner.done.get(runner.key(base))
        if rec is None or rec.error is None:
            raise
        e = rec.error
        if not together:
            progress.total -= len(plan) - 2
        progress.say(f"{prefix}migrated does not run: the {len(plan) - 2} other leg(s) of {v.name or v.label} are not "
                     + ("compared" if together else "trained"))
        res = VariantResult(**common, verdict="fail", exact_rows_envelope="beyond", migrated_vs_reference="the migrated config does not run",
                            rejected=str(e), checks=Checks(tokenization=s.parity, lr=s.lr, trainable_parameters={}), comparisons={},
                            attribution=[], legs={"reference": legs["reference"].report()}, plot=None)
        _note_reused(res, legs)
        res.write(vdir / "verify-report.json")
        return res
    if not together:
        legs.update(runner.run_all(todo))
    against = None
    if opts.against == "automodel":
        from .automodel import against_automodel

        against = against_automodel(base, dropout0, legs, init, work=runner.work, model_dir=Path(opts.model_path), steps=opts.steps,
                                    nproc=opts.nproc_per_node, log=progress.record, progress=progress, prefix=prefix,
                                    done=runner.done, memo=runner.memo)
    comparisons = {name: Comparison.of(legs["reference"], leg) for name, leg in legs.items() if name != "reference"}
    exact_env = comparisons["migrated-all-removed" if names else "migrated"].loss_envelope
    res = VariantResult(
        **common, verdict="pass" if exact_env in EXACT and (against is None or against.verdict == "match") else "fail",
        exact_rows_envelope=exact_env, migrated_vs_reference=comparisons["migrated"].loss_envelope,
        checks=_checks(s.parity, s.lr, legs), comparisons=comparisons, attribution=_attribution(measured, s.admitted, comparisons),
        against_automodel=against, legs={n: leg.report() for n, leg in legs.items()}, plot=None)
    _note_reused(res, legs)
    p = plot(legs, vdir / "loss-curves.png", v.name or v.label)
    res.plot = str(p) if p else None
    res.write(vdir / "verify-report.json")
    return res


def _note_reused(res: VariantResult, legs: dict[str, LegRun]) -> None:
    reused = {n: leg.reused_from for n, leg in legs.items() if leg.reused_from}
    if not reused:
        return
    variants = {src.rsplit("/", 1)[0] for src in reused.values() if "/" in src}
    if len(variants) == 1 and all(src.endswith("/" + n) for n, src in reused.items()):
        which = f"{', '.join(reused)}: the same effective runtime config as {variants.pop()}'s legs of those names"
    else:
        which = ", ".join(f"{n} (= {src})" for n, src in reused.items())
    res.notes = [*res.notes, f"not run again, their results are reused (legs.<name>.reused_from): {which}"]


def _attribution(measured: list[str], admitted: dict[str, str], comparisons: dict[str, Comparison]) -> list[Attribution]:
    with_all = comparisons["migrated"].max_abs_loss_diff
    out = []
    for n in measured:
        alone = comparisons[f"migrated-without-{n}" if f"migrated-without-{n}" in comparisons else "migrated-all-removed"]
        out.append(Attribution(approximation=n, rule=APPROXIMATIONS[n].rule, rules_bucket=admitted.get(n, "exact (not flagged by the rules)"),
                               removed_means=APPROXIMATIONS[n].removed_means, max_abs_loss_diff_with_it=with_all,
                               max_abs_loss_diff_without_it=alone.max_abs_loss_diff, effect=with_all - alone.max_abs_loss_diff))
    return out


def _checks(parity: TokenizationParity, lr: LRCheck, legs: dict[str, LegRun]) -> Checks:
    return Checks(tokenization=parity, lr=lr,
                  trainable_parameters={n: leg.summary.get("trainable_params") for n, leg in legs.items()},
                  tokens_per_step={n: leg.column("num_tokens", 3) for n, leg in legs.items()},
                  label_tokens_per_step={n: leg.column("num_label_tokens", 3) for n, leg in legs.items()},
                  micro_batches_per_step={n: leg.summary.get("grad_acc_steps") for n, leg in legs.items()})

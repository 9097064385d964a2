"""``nemo-migrate convert``: discover the job's files, run the pipeline per YAML variant, and write the outputs.

Pipeline per variant:  front ends (recipe.py, run.sh, YAML)  ->  resolve (effective job, NeMo validation)
->  rules (mappings/rules.yaml)  ->  emit (Automodel YAML).  Then one run.sh and one report for all variants.
Nothing is written until every variant converted; files are written atomically; an existing file that differs
is replaced only with ``--force``; the NeMo inputs are never overwritten.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, emit, rules
from .diagnostics import Diagnostics, MigrateError
from .ir import STATUSES, KnobOutcome, TargetValue
from .resolve import Inputs, Job, resolve
from .sources.launch import Launch, expand_positional, parse_run_sh, variant_of
from .sources.recipe_py import parse_recipe_py


@dataclass
class Options:
    source: Path
    out: Path | None = None
    recipe: Path | None = None
    factory: str | None = None
    nproc_per_node: int | None = None
    nnodes: int | None = None
    sets: list[str] = field(default_factory=list)
    model: str | None = None
    run_sh: Path | None = None
    launcher: str = "auto"  # auto: sbatch.sh too when recipe.py has a SlurmExecutor; slurm: always; local: run.sh only


@dataclass
class Variant:
    name: str | None
    label: str
    output: str
    job: Job
    targets: dict[str, TargetValue]
    outcomes: list[KnobOutcome]
    notes: list[rules.Note]
    nproc: int
    nnodes: int
    text: str
    slurm: dict[str, Any] | None = None  # sbatch.sh settings from the job's SlurmExecutor (rules LCH002-LCH004)
    env: list[tuple[str, str]] = field(default_factory=list)  # exports from a LocalExecutor's env_vars

    def counts(self) -> dict[str, int]:
        c = {s: 0 for s in STATUSES}
        for o in self.outcomes:
            c[o.status] += 1
        return c

    def findings(self) -> list[dict[str, Any]]:
        """Approximate and unsupported rows, one line per rule and reason."""
        grouped: dict[tuple[str, str, str], list[str]] = {}
        for o in self.outcomes:
            if o.status in ("approximate", "unsupported"):
                grouped.setdefault((o.rule, o.status, o.reason), []).append(o.path)
        out = []
        for (rule, status, reason), paths in grouped.items():
            out.append({"rule": rule, "status": status, "reason": reason, "knobs": ", ".join(paths)})
        out.sort(key=lambda f: (f["status"] != "unsupported", f["rule"]))
        return out


@dataclass
class Conversion:
    variants: list[Variant]
    files: dict[str, str]
    diags: Diagnostics
    source: str
    inputs: list[Path]

    def to_json(self, written: list[str] | None = None, status: str = "ok") -> dict[str, Any]:
        return {
            "tool": "nemo-migrate",
            "version": __version__,
            "status": status,
            "source": self.source,
            "files": sorted(self.files),
            "written": written or [],
            "variants": [
                {
                    "name": v.name,
                    "label": v.label,
                    "output": v.output,
                    "factory": v.job.factory,
                    "recipe": v.job.recipe,
                    "launch": {"nproc_per_node": v.nproc, "nnodes": v.nnodes},
                    "counts": v.counts(),
                    "knobs": [
                        {"path": o.path, "value": o.value, "from": str(o.prov), "status": o.status, "rule": o.rule,
                         "targets": o.targets, "reason": o.reason}
                        for o in v.outcomes
                    ],
                    "targets": {p: {"value": t.value, "rule": t.rule, "status": t.status, "from": [str(x) for x in t.provs]}
                                for p, t in v.targets.items()},
                    "notes": [{"rule": n.rule, "kind": n.kind, "text": n.text} for n in v.notes],
                }
                for v in self.variants
            ],
            "diagnostics": self.diags.to_json(),
        }


# ---------------------------------------------------------------------------------------------- discovery

_CONFIG_NAME = re.compile(r"^config-(.+)\.ya?ml\Z")


def _rel(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)


def discover(opts: Options, diags: Diagnostics) -> tuple[list[Inputs], Launch | None, Path]:
    src = opts.source
    if not src.exists():
        diags.error("NM001", f"no such file or directory: {src}")
        raise MigrateError(diags)
    base = src if src.is_dir() else src.parent
    recipe = opts.recipe
    launch_path = opts.run_sh
    yamls: list[Path] = []
    if src.is_dir():
        if recipe is None:
            cands = [src / "recipe.py"] if (src / "recipe.py").is_file() else sorted(p for p in src.glob("*.py") if _looks_like_recipe(p))
            if len(cands) > 1:
                diags.error("NM002", f"several recipe files in {src}: {', '.join(p.name for p in cands)}", hint="pick one with --recipe")
                raise MigrateError(diags)
            recipe = cands[0] if cands else None
        if launch_path is None:
            cands = [src / "run.sh"] if (src / "run.sh").is_file() else sorted(p for p in src.glob("*.sh") if "torchrun" in _head(p) or "recipe.py" in _head(p))
            launch_path = cands[0] if cands else None
        yamls = sorted(p for p in src.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    else:
        if src.suffix not in (".yaml", ".yml"):
            if src.suffix == ".py" and recipe is None:
                recipe = src
            else:
                diags.error("NM003", f"expected a directory, a NeMo 2 YAML or a recipe.py, got {src.name}")
                raise MigrateError(diags)
        else:
            yamls = [src]
        if recipe is None and (src.parent / "recipe.py").is_file() and src.suffix in (".yaml", ".yml") and not _is_nemo1(src):
            diags.note("NM004", f"using {src.parent / 'recipe.py'} next to the YAML (pass --recipe to choose another)")
            recipe = src.parent / "recipe.py"
    launch = parse_run_sh(launch_path, _rel(launch_path, base), diags) if launch_path is not None else None
    if diags.has_errors:
        raise MigrateError(diags)
    pairs: list[tuple[str | None, Path | None]] = []
    pattern = launch.yaml_pattern() if launch else None
    if src.is_dir() and launch is not None and launch.config_name:
        name = launch.config_name if launch.config_name.endswith((".yaml", ".yml")) else launch.config_name + ".yaml"
        y = src / (launch.config_path or ".") / name
        if not y.is_file():
            diags.error("NM006", f"the launcher's --config-name {launch.config_name} ({y}) is not in {src}", file=launch.file, line=launch.line)
        else:
            pairs.append((None, y))
    elif src.is_dir():
        if pattern:
            for y in yamls:
                v = variant_of(pattern, y.name)
                if v is not None:
                    pairs.append((v, y))
                else:
                    diags.note("NM005", f"{y.name} does not match the launcher's --yaml {pattern.replace('{}', '${1}')}; not converted",
                               file=_rel(y, base))
            if not pairs:
                diags.error("NM006", f"no YAML in {src} matches the launcher's --yaml {pattern.replace('{}', '${1}')}")
        elif launch is not None and launch.yaml_args:
            name = launch.yaml_args[0][0]
            y = (src / name)
            if not y.is_file():
                diags.error("NM006", f"the launcher's --yaml {name} is not in {src}", **launch.yaml_args[0][1].where())
            else:
                pairs.append((None, y))
        else:
            for y in yamls:
                m = _CONFIG_NAME.match(y.name)
                pairs.append((m.group(1) if m else (y.stem if len(yamls) > 1 else None), y))
            if not pairs:
                pairs.append((None, None))
    else:
        if yamls:
            m = _CONFIG_NAME.match(yamls[0].name)
            pairs.append((m.group(1) if m else None, yamls[0]))
        else:
            pairs.append((None, None))
    if recipe is None and not opts.factory and not (launch and launch.factory) and not any(_is_nemo1(y) for _, y in pairs if y):
        diags.error("NM007", "no recipe.py found and no --factory given", hint="pass --recipe recipe.py, or --factory <NeMo recipe name> (e.g. llama3_8b)")
    if diags.has_errors:
        raise MigrateError(diags)
    inputs = []
    for variant, y in pairs:
        label = y.stem if y is not None else "config"
        inputs.append(Inputs(
            recipe=recipe,
            recipe_display=_rel(recipe, base) if recipe else None,
            yamls=[(y, _rel(y, base))] if y is not None else [],
            launch=launch,
            factory=opts.factory,
            sets=list(opts.sets),
            nproc_per_node=opts.nproc_per_node,
            nnodes=opts.nnodes,
            model=opts.model,
            label=label,
            variant=variant,
            job_dir=base,
        ))
    return inputs, launch, base


def _is_nemo1(p: Path) -> bool:
    from .sources.nemo1 import detect
    from .sources.yaml_source import load_yaml_outline

    return detect(load_yaml_outline(p, p.name, Diagnostics())) is not None


def _looks_like_recipe(p: Path) -> bool:
    head = _head(p, 200_000)
    return "finetune_recipe" in head or "run.cli.main" in head or "run.Partial" in head


def _head(p: Path, n: int = 20_000) -> str:
    try:
        with p.open("r", encoding="utf-8", errors="replace") as fh:
            return fh.read(n)
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------- pipeline

def convert(opts: Options) -> Conversion:
    diags = Diagnostics()
    inputs, launch, base = discover(opts, diags)
    module = None
    if inputs and inputs[0].recipe is not None:
        module = parse_recipe_py(inputs[0].recipe, inputs[0].recipe_display or "recipe.py", diags)
        if module is None:
            raise MigrateError(diags)
    variants: list[Variant] = []
    failed = False
    for inp in inputs:
        vd = Diagnostics()
        try:
            job = resolve(inp, vd, module=module)
            targets, outcomes, notes, ctx = rules.apply(job, vd)
        except MigrateError:
            diags.extend(vd.items)
            failed = True
            continue
        diags.extend(vd.items)
        if vd.has_errors:
            failed = True
            continue
        for p in emit.dollar_values(targets):
            diags.warning("NM600", f"'{p}' contains '$': Automodel 0.7 expands ${{VAR}} and $VAR in every YAML string when it loads the file",
                          hint="rename the path, or make sure the variable is set when the job starts")
        launch_sz = ctx.cache.get("launch", {"nproc_per_node": 1, "nnodes": 1})
        out_name = inp.yamls[0][0].name if inp.yamls else f"{inp.label}.yaml"
        header = _header(inp, job, launch is not None)
        text = emit.render_config(targets, header)
        variants.append(Variant(inp.variant, inp.label, out_name, job, targets, outcomes, notes,
                                launch_sz["nproc_per_node"], launch_sz["nnodes"], text, ctx.cache.get("slurm"), list(ctx.cache.get("env", []))))
    if failed or diags.has_errors:
        raise MigrateError(diags)
    names = [v.output for v in variants]
    if len(set(names)) != len(names):
        diags.error("NM008", f"two variants would write the same file: {names}")
        raise MigrateError(diags)
    files = {v.output: v.text for v in variants}
    source = _source_label(opts, inputs, launch)
    files["run.sh"] = _run_sh(variants, launch, source)
    slurm = next((v.slurm for v in variants if v.slurm is not None), None)
    if opts.launcher == "slurm" or (slurm is not None and opts.launcher == "auto"):
        if slurm is not None:
            for bad in emit.sbatch_problems(slurm):
                diags.warning("NM610", f"#SBATCH {bad} is left out of sbatch.sh: sbatch reads directives unquoted",
                              hint="use plain values (letters, digits, _ . : , = + / @ % -) or add the line by hand")
        files["sbatch.sh"] = _sbatch_sh(variants, launch, slurm or {}, source)
    files["migration-report.md"] = _report(variants, diags, _source_label(opts, inputs, launch))
    srcs = [p for inp in inputs for p, _ in inp.yamls] + ([inputs[0].recipe] if inputs and inputs[0].recipe else [])
    if launch is not None:
        srcs.append(base / launch.file)
    return Conversion(variants, files, diags, _source_label(opts, inputs, launch), srcs)


def _source_label(opts: Options, inputs: list[Inputs], launch: Launch | None) -> str:
    parts = []
    if inputs and inputs[0].recipe_display:
        parts.append(inputs[0].recipe_display)
    parts += [d for inp in inputs for _, d in inp.yamls]
    if launch is not None:
        parts.append(launch.file)
    return ", ".join(parts) or str(opts.source)


def _header(inp: Inputs, job: Job, has_launch: bool) -> list[str]:
    src = ", ".join([d for _, d in inp.yamls] + ([inp.recipe_display] if inp.recipe_display else []))
    lines = [
        f"NeMo Automodel 0.7 config generated by nemo-migrate {__version__} from {src or 'the factory'}",
        f"(factory {job.factory}{', recipe llm.' + job.recipe if job.recipe else ''}).",
        f"Run: bash run.sh{' ' + inp.variant if inp.variant else ''}    Report: migration-report.md",
        "Comments: the rule that wrote the value ('~' approximate, '!' unsupported; `nemo-migrate explain RULE`),",
        "then where the value came from.",
    ]
    return lines


def _run_sh(variants: list[Variant], launch: Launch | None, source: str) -> str:
    env = _env_of(variants, launch)
    pre: list[str] = []
    for v in variants:
        for n in v.notes:
            if n.kind == "pre-step" and n.text not in pre:
                pre.append(n.text)
    vs = [{"name": v.name or v.label, "config": v.output, "nproc": v.nproc, "nnodes": v.nnodes} for v in variants]
    return emit.render_run_sh({"variants": vs, "env": env, "pre_steps": pre, "source": source})


def _env_of(variants: list[Variant], launch: Launch | None) -> list[tuple[str, str]]:
    env = dict(launch.env) if launch else {}
    for v in variants:
        env.update(v.env)
    return sorted(env.items())


def _sbatch_sh(variants: list[Variant], launch: Launch | None, slurm: dict[str, Any], source: str) -> str:
    pre: list[str] = []
    for v in variants:
        for n in v.notes:
            if n.kind == "pre-step" and n.text not in pre:
                pre.append(n.text)
    vs = [{"name": v.name or v.label, "config": v.output, "nproc": v.nproc, "nnodes": v.nnodes} for v in variants]
    env = dict(_env_of(variants, launch))
    env.update(slurm.get("env", []))
    return emit.render_sbatch_sh({
        "variants": vs, "pre_steps": pre, "source": source,
        "env": sorted(env.items()),
        "job_name": slurm.get("job_name", "automodel"),
        "nodes": max(v.nnodes for v in variants),
        "gpus_per_node": slurm.get("gpus_per_node") or max(v.nproc for v in variants),
        "sbatch": slurm.get("sbatch", []),
        "image": slurm.get("image"), "mounts": slurm.get("mounts", []), "srun_args": slurm.get("srun_args", []),
    })


def _report(variants: list[Variant], diags: Diagnostics, source: str) -> str:
    pre: list[str] = []
    warns: list[str] = []
    for v in variants:
        for n in v.notes:
            target = pre if n.kind == "pre-step" else warns
            text = f"[{n.rule}] {n.text}"
            if text not in target:
                target.append(text)
    ctx = {
        "source": source,
        "variants": [
            {
                "name": v.name or v.label,
                "label": v.label,
                "output": v.output,
                "counts": v.counts(),
                "findings": v.findings(),
                "knobs": [{"path": o.path, "value": o.value, "prov": str(o.prov), "status": o.status, "rule": o.rule,
                           "targets": o.targets} for o in v.outcomes],
                "nproc": v.nproc,
                "nnodes": v.nnodes,
            }
            for v in variants
        ],
        "pre_steps": pre,
        "warnings": warns,
        "diagnostics": [d.render().replace("\n", " ") for d in diags.sorted() if d.severity != "note"],
    }
    return emit.render_report(ctx)


# ---------------------------------------------------------------------------------------------- writing

@dataclass
class WriteResult:
    written: list[str]
    unchanged: list[str]
    differing: list[str]  # --check: files that would change; otherwise files refused without --force
    diffs: dict[str, str]


def plan_write(conv: Conversion, out: Path) -> WriteResult:
    res = WriteResult([], [], [], {})
    for name, text in sorted(conv.files.items()):
        dest = out / name
        if dest.is_file():
            try:
                old = dest.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                old = None
            if old == text:
                res.unchanged.append(name)
                continue
            res.differing.append(name)
            res.diffs[name] = "".join(difflib.unified_diff(
                (old or "").splitlines(keepends=True), text.splitlines(keepends=True), f"{name} (on disk)", f"{name} (new)", n=1))
        else:
            res.differing.append(name)
            res.diffs[name] = f"{name}: does not exist yet\n"
    return res


def write(conv: Conversion, out: Path, force: bool) -> WriteResult:
    diags = conv.diags
    inputs = {p.resolve() for p in conv.inputs}
    for name in conv.files:
        if (out / name).resolve() in inputs:
            diags.error("NM010", f"writing {out / name} would overwrite a NeMo input file", hint="choose another output directory with -o")
            raise MigrateError(diags)
    if out.exists() and not out.is_dir():
        diags.error("NM011", f"output path {out} exists and is not a directory")
        raise MigrateError(diags)
    plan = plan_write(conv, out)
    existing_diff = [n for n in plan.differing if (out / n).exists()]
    if existing_diff and not force:
        diags.error("NM012", f"refusing to overwrite {len(existing_diff)} file(s) in {out} that differ: {', '.join(existing_diff)}",
                    hint="review them (nemo-migrate convert ... --check shows the diff) and pass --force to replace them")
        raise MigrateError(diags)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        diags.error("NM013", f"cannot create {out}: {e.strerror or e}")
        raise MigrateError(diags) from None
    temps: list[tuple[Path, Path]] = []
    try:
        for name in plan.differing:
            dest = out / name
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(conv.files[name])
            os.chmod(tmp, 0o755 if name.endswith(".sh") else 0o644)
            temps.append((Path(tmp), dest))
        for tmp, dest in temps:
            os.replace(tmp, dest)
    except OSError as e:
        for tmp, _ in temps:
            try:
                tmp.unlink()
            except OSError:
                pass
        diags.error("NM014", f"cannot write to {out}: {e.strerror or e}")
        raise MigrateError(diags) from None
    plan.written = list(plan.differing)
    return plan

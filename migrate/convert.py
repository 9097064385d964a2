"""``nemo-migrate convert``: discover the job's files, run the pipeline per YAML variant, and write the outputs.

Pipeline per variant:  front ends (recipe.py, run.sh, YAML)  ->  resolve (effective job, NeMo validation)
->  rules (mappings/rules.yaml)  ->  emit (Automodel YAML).  Then one run.sh and one report for all variants.
Nothing is written until every variant converted; files are written atomically; an existing file that differs
is replaced only with ``--force``; the NeMo inputs are never overwritten.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, automodel_rules, emit, fsio, nemo_release, rules
from .detect import NEMO_CONFIGS, SELF_CONTAINED, YAML_SUFFIXES, Kind, detect, launches, looks_like_recipe
from .diagnostics import Diagnostics, MigrateError
from .ir import STATUSES, KnobOutcome, LaunchPlan, Node, TargetValue
from .resolve import Inputs, Job, resolve
from .sources.overrides import override_key
from .sources.launch import Launch, looks_like_launcher, notebook_launch, parse_run_sh, variant_of
from .sources.recipe_py import RecipeModule, parse_recipe_py


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
    launch_line: int | None = None  # the launcher's command to migrate when it runs several
    nemo_version: str | None = None  # the NeMo 2 release the job is read for (default: the latest)


@dataclass
class Variant:
    name: str | None
    label: str
    output: str
    job: Job
    targets: dict[str, TargetValue]
    outcomes: list[KnobOutcome]
    notes: list[rules.Note]
    text: str
    launch: LaunchPlan = field(default_factory=LaunchPlan)  # run.sh / sbatch.sh facts (rules PAR008, LCH001-LCH004)

    @property
    def nproc(self) -> int:
        return self.launch.nproc_per_node

    @property
    def nnodes(self) -> int:
        return self.launch.nnodes

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
    nemo_version: str = ""

    def to_json(self, written: list[str] | None = None, status: str = "ok") -> dict[str, Any]:
        return {
            "tool": "nemo-migrate",
            "version": __version__,
            "status": status,
            "source": self.source,
            "nemo_version": self.nemo_version,
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
        return os.path.normpath(str(p))


def discover(opts: Options, diags: Diagnostics) -> tuple[list[Inputs], Launch | None, Path, RecipeModule | None]:
    """What the job is made of: the recipe/script/notebook, the launcher and the YAML variants (and, for a notebook, the
    interpreted module, since its shell cells may be the launcher)."""
    src = opts.source
    kind = detect(src, diags)
    if kind is Kind.UNKNOWN and diags.has_errors:  # NM001: missing or not readable
        raise MigrateError(diags)
    for given in (opts.recipe, opts.run_sh):
        if given is not None and _not_a_file(given):
            diags.error("NM001", f"{given} is {_not_a_file(given)}, not a file nemo-migrate can read")
            raise MigrateError(diags)
    base = src if src.is_dir() else src.parent
    recipe = opts.recipe
    launch_path = opts.run_sh
    yamls: list[Path] = []
    job_dir = src.is_dir()  # the job is a folder: its YAMLs are the variants
    if kind in (Kind.NEMO2_DIR, Kind.AUTOMODEL_DIR):  # a folder is read as a job folder: it says what it lacks
        recipe = recipe or _find_recipe(src, diags)
        launch_path = launch_path or _find_launcher(src)
        yamls = _dir_yamls(src, diags)
    elif kind in (Kind.RECIPE, Kind.NOTEBOOK):
        recipe = recipe or src
    elif kind in NEMO_CONFIGS or kind is Kind.YAML or (kind is Kind.AUTOMODEL_YAML and src.suffix in YAML_SUFFIXES):
        yamls = [src]  # an Automodel YAML is read as a NeMo 2 one: its keys are then reported at their lines
        if recipe is None and kind not in SELF_CONTAINED and (src.parent / "recipe.py").is_file():
            diags.note("NM004", f"using {src.parent / 'recipe.py'} next to the YAML (pass --recipe to choose another)")
            recipe = src.parent / "recipe.py"
    elif kind is Kind.LAUNCHER:  # run.sh, an sbatch script: the job is what it launches, from its folder
        launch_path = launch_path or src
        job_dir = True
    else:
        diags.error("NM003", f"expected a job folder, a launcher script (run.sh / sbatch), a recipe .py script, a .ipynb notebook, "
                    f"a YAML job or a NeMo-Run export, got {src.name}")
        raise MigrateError(diags)
    set_keys = {override_key(x) for x in opts.sets}

    def is_recipe(script: str) -> bool | None:
        return True if recipe is not None and Path(script).name == recipe.name else None

    launch = parse_run_sh(launch_path, _rel(launch_path, base), diags, is_recipe=is_recipe, set_keys=set_keys,
                          launch_line=opts.launch_line) if launch_path is not None else None
    if launch is not None and launch.kind == "pretrain":
        raise MigrateError(diags)
    if recipe is None and launch is not None and launch.script and launch.launcher in ("torchrun", "python") \
            and not _hydra_script(launch) and (base / launch.script).suffix == ".py" and (base / launch.script).is_file():
        recipe = base / launch.script  # the script the launcher runs
    module = None
    if recipe is not None and recipe.suffix == ".ipynb" and launch is None:
        module, launch = _notebook(recipe, _rel(recipe, base), base, set_keys, diags)
        if launch is not None and launch.kind == "pretrain":
            raise MigrateError(diags)
        if launch is not None and (launch.launcher == "nemo-cli" or _hydra_script(launch) or launch.config_name):
            recipe, module = None, None  # the notebook's shell cells run NeMo's CLI or a NeMo 1 / Aligner script
    if diags.has_errors:
        raise MigrateError(diags)
    if launch is not None and job_dir and not src.is_dir() and (launch.yaml_args or launch.config_name):
        yamls = _dir_yamls(base, diags)  # a launcher given alone: the YAMLs it names are in its folder
    pairs: list[tuple[str | None, Path | None]] = []
    pattern = launch.yaml_pattern() if launch else None
    if launch is not None and (launch.config_name or _hydra_script(launch)):
        # NeMo 1.0 / Aligner (Hydra): the --config-name YAML of the job, or the script's shipped default config
        from .sources.nemo1 import locate_config

        y = locate_config(base, launch, diags)
        if y is None:
            raise MigrateError(diags)
        pairs.append((None, y))
        for other in (p for p in yamls if p.resolve() != y.resolve()):
            diags.note("NM248", f"{other.name} is not read: the launcher runs {Path(launch.script or '?').name} with "
                       f"{'--config-name ' + launch.config_name if launch.config_name else 'its own default config'}", file=_rel(other, base))
    elif job_dir:
        if pattern:
            for y in yamls:
                v = variant_of(pattern, y.name)
                if v is not None:
                    pairs.append((v, y))
                else:
                    diags.note("NM005", f"{y.name} does not match the launcher's --yaml {pattern.replace('{}', '${1}')}; not converted",
                               file=_rel(y, base))
            if not pairs:
                diags.error("NM006", f"no YAML in {base} matches the launcher's --yaml {pattern.replace('{}', '${1}')}")
        elif launch is not None and launch.yaml_args:
            name = launch.yaml_args[0][0]
            y = (base / name)
            if not y.is_file():
                diags.error("NM006", f"the launcher's --yaml {name} is not in {base}", **launch.yaml_args[0][1].where())
            else:
                pairs.append((None, y))
        elif src.is_dir():
            for y in yamls:
                m = _CONFIG_NAME.match(y.name)
                pairs.append((m.group(1) if m else (y.stem if len(yamls) > 1 else None), y))
        if not pairs and not diags.has_errors:
            pairs.append((None, None))
    else:
        if yamls:
            m = _CONFIG_NAME.match(yamls[0].name)
            pairs.append((m.group(1) if m else None, yamls[0]))
        else:
            pairs.append((None, None))
    if recipe is None and not opts.factory and not (launch and launch.factory) and not any(detect(y, Diagnostics()) in SELF_CONTAINED for _, y in pairs if y):
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
    return inputs, launch, base, module


def _find_recipe(src: Path, diags: Diagnostics) -> Path | None:
    if (src / "recipe.py").is_file():
        return src / "recipe.py"
    cands = sorted(p for p in list(src.glob("*.py")) + list(src.glob("*.ipynb")) if p.is_file() and looks_like_recipe(p))
    if len(cands) > 1:  # helper modules build parts of the job; the script is the one that launches it
        cands = [p for p in cands if launches(p)] or cands
    if len(cands) > 1:
        diags.error("NM002", f"several recipe files in {src}: {', '.join(p.name for p in cands)}", hint="pick one with --recipe")
        raise MigrateError(diags)
    return cands[0] if cands else None


def _find_launcher(src: Path) -> Path | None:
    if (src / "run.sh").is_file():
        return src / "run.sh"
    cands = sorted(p for p in src.iterdir() if p.is_file() and looks_like_launcher(p))
    return cands[0] if len(cands) == 1 else None


def _dir_yamls(src: Path, diags: Diagnostics) -> list[Path]:
    out = []
    for p in sorted(src.iterdir()):
        if p.suffix not in (".yaml", ".yml"):
            continue
        kind = _not_a_file(p)
        if kind:
            diags.error("NM009", f"{p.name} is {kind}, not a config file; it would silently be left out",
                        file=p.name, hint="remove or rename it, or convert the files you mean one by one")
            continue
        out.append(p)
    return out


def _notebook(path: Path, display: str, base: Path, set_keys: set[str], diags: Diagnostics) -> tuple[RecipeModule | None, Launch | None]:
    """A notebook: its Python cells interpreted; when they launch nothing, its shell cells may hold the launch."""
    module = parse_recipe_py(path, display, diags)
    if module is None:
        raise MigrateError(diags)
    if module.launches:
        return module, None
    return module, notebook_launch(module.source.shell, display, diags, base=base, set_keys=set_keys)


def _not_a_file(p: Path) -> str | None:
    """What a path is when it is not a regular file that can be read ('a directory', 'a broken symbolic link'...)."""
    return fsio.not_a_file(p)


def _hydra_script(launch: Launch) -> bool:
    from .sources.nemo1 import hydra_scripts

    return bool(launch.script) and Path(launch.script).name in hydra_scripts()


# ---------------------------------------------------------------------------------------------- pipeline

def convert(opts: Options) -> Conversion:
    diags = Diagnostics()
    release = nemo_release.default()
    if opts.nemo_version is not None:
        release = nemo_release.normalize(opts.nemo_version) or ""
        if not release:
            diags.error("NM016", f"--nemo-version {opts.nemo_version!r}: not a NeMo 2 release this compiler knows",
                        hint=f"one of {', '.join(nemo_release.releases())} (NeMo 3.0 removed nemo.collections.llm)")
            raise MigrateError(diags)
    with nemo_release.using(release):
        return _convert(opts, diags, release)


def _convert(opts: Options, diags: Diagnostics, release: str) -> Conversion:
    inputs, launch, base, module = discover(opts, diags)
    if module is None and inputs and inputs[0].recipe is not None:
        argv = launch.script_args if launch is not None and launch.script and Path(launch.script).name == inputs[0].recipe.name else None
        module = parse_recipe_py(inputs[0].recipe, inputs[0].recipe_display or "recipe.py", diags, argv=argv)
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
        rejected = automodel_rules.check_targets(targets, world_size=ctx.launch.nproc_per_node * ctx.launch.nnodes)
        if rejected:  # never write a config Automodel 0.7 rejects (AM300-AM349, at the NeMo source line)
            diags.extend(rejected)
            failed = True
            continue
        out_name = inp.yamls[0][0].name if inp.yamls else f"{inp.label}.yaml"
        header = _header(inp, job, launch is not None)
        text = emit.render_config(targets, header)
        variants.append(Variant(inp.variant, inp.label, out_name, job, targets, outcomes, notes, text, ctx.launch))
    if failed or diags.has_errors:
        raise MigrateError(diags)
    names = [v.output for v in variants]
    if len(set(names)) != len(names):
        diags.error("NM008", f"two variants would write the same file: {names}")
        raise MigrateError(diags)
    files = {v.output: v.text for v in variants}
    source = _source_label(opts, inputs, launch)
    slurm = next((v.launch for v in variants if v.launch.executor == "slurm"), None)
    try:  # a value that cannot be written into a script safely is refused (NM900-NM904) with everything else found
        files["run.sh"] = _run_sh(variants, launch, source)
        if opts.launcher == "slurm" or (slurm is not None and opts.launcher == "auto"):
            if slurm is not None:
                for bad in emit.sbatch_problems({"job_name": slurm.job_name}):
                    diags.warning("NM610", f"#SBATCH {bad} is left out of sbatch.sh: sbatch reads directives unquoted",
                                  hint="use plain values (letters, digits, _ . : , = + / @ % -) or add the line by hand")
            files["sbatch.sh"] = _sbatch_sh(variants, launch, slurm or LaunchPlan(), source)
    except MigrateError as e:
        diags.extend(e.diags.items)
        raise MigrateError(diags) from None
    files["migration-report.md"] = _report(variants, diags, _source_label(opts, inputs, launch),
                                           release if any(_nemo2(v.job) for v in variants) else None, sbatch="sbatch.sh" in files)
    srcs = [p for inp in inputs for p, _ in inp.yamls] + ([inputs[0].recipe] if inputs and inputs[0].recipe else [])
    if launch is not None:
        srcs.append(base / launch.file)
    return Conversion(variants, files, diags, _source_label(opts, inputs, launch), srcs, release)


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
        f"(factory {job.factory}{', recipe llm.' + job.recipe if job.recipe else ''}"
        f"{'; read as NeMo ' + nemo_release.current() if _nemo2(job) else ''}).",
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
    return emit.render_run_sh({"variants": vs, "env": env, "pre_steps": pre, "source": source, "where": _script_where(variants)})


def _script_where(variants: list[Variant]) -> dict[str, dict[str, Any]]:
    """Where each executor value a script writes came from (``executor.partition`` -> file/line, recorded by the rows
    that wrote the launch plan), so a value that cannot be written safely is refused at its source line, and where
    each config file name came from."""
    where: dict[str, dict[str, Any]] = {}
    for v in variants:
        for key, prov in v.launch.where.items():
            where.setdefault(key, prov.where())
        where.setdefault(v.output, v.job.tree.prov.where())
    return where


def _env_of(variants: list[Variant], launch: Launch | None) -> list[tuple[str, str]]:
    """The launcher's exports, then a local executor's env_vars (a Slurm executor's go into sbatch.sh only)."""
    env = dict(launch.env) if launch else {}
    for v in variants:
        if v.launch.executor == "local":
            env.update(v.launch.env)
    return sorted(env.items())


def _sbatch_sh(variants: list[Variant], launch: Launch | None, slurm: LaunchPlan, source: str) -> str:
    pre: list[str] = []
    for v in variants:
        for n in v.notes:
            if n.kind == "pre-step" and n.text not in pre:
                pre.append(n.text)
    vs = [{"name": v.name or v.label, "config": v.output, "nproc": v.nproc, "nnodes": v.nnodes} for v in variants]
    env = dict(_env_of(variants, launch))
    if slurm.executor == "slurm":
        env.update(slurm.env)
    return emit.render_sbatch_sh({
        "variants": vs, "pre_steps": pre, "source": source,
        "env": sorted(env.items()),
        "job_name": slurm.job_name,
        "nodes": max(v.nnodes for v in variants),
        "gpus_per_node": slurm.gpus_per_node or max(v.nproc for v in variants),
        "sbatch": slurm.sbatch_lines(),
        "default_output": not any(flag == "output" for flag, _ in slurm.sbatch_lines()),  # the job's own --output wins
        "image": slurm.image, "mounts": slurm.mounts, "srun_args": slurm.srun_args,
        "where": _script_where(variants),
    })


def _nemo2(job: Job) -> bool:
    """A NeMo 2 job (not a NeMo 1.0 / Aligner config lowered into the IR): its meaning depends on the NeMo 2 release."""
    return not isinstance(job.tree.get("nemo1"), Node)


def _report(variants: list[Variant], diags: Diagnostics, source: str, release: str | None = None, sbatch: bool = False) -> str:
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
        "sbatch": sbatch,
        "warnings": warns,
        "diagnostics": [d.render().replace("\n", " ") for d in diags.sorted() if d.severity != "note"],
        "release_note": f" Read as NeMo {release} (`--nemo-version`: NeMo 2.0-2.7 differ in recipes, defaults and what they "
                        "accept)." if release else "",
    }
    return emit.render_report(ctx)


# ---------------------------------------------------------------------------------------------- writing
#
# OUT is written all or nothing, under a lock on OUT (filelock; flock, released by the kernel if the process dies):
#   1. under the lock, finish what an interrupted run left (below), then plan: what another run wrote meanwhile
#      counts, and a file that differs is replaced only with --force;
#   2. stage every new file in a fresh directory inside OUT (.nemo-migrate-staging-*), fsync'd;
#   3. write the manifest (name and sha256 of each staged file): the commit point;
#   4. rename each staged file over its destination, fsync OUT, remove the staging directory and the lock file.
# A run killed before 3 leaves a staging directory without a manifest: the next run removes it (OUT untouched).
# A run killed during 4 leaves its manifest: the next run completes the renames (roll forward) and says so.
# SIGINT/SIGTERM/SIGHUP during 2 stop the write and remove the staging directory; during 4 they wait for the renames.

STAGING_PREFIX = ".nemo-migrate-staging-"
LOCK_NAME = ".nemo-nemo_migrate.lock"
MANIFEST = "manifest.json"
LOCK_TIMEOUT_S = 60.0  # NEMO_MIGRATE_LOCK_TIMEOUT overrides


@dataclass
class WriteResult:
    written: list[str]
    unchanged: list[str]
    differing: list[str]  # --check: files that would change; otherwise files refused without --force
    diffs: dict[str, str]
    not_files: dict[str, str] = field(default_factory=dict)  # name -> what is there instead ('a directory', ...)


def plan_write(conv: Conversion, out: Path) -> WriteResult:
    """What writing ``conv`` into ``out`` would change (reads OUT, writes nothing).  An interrupted write found in OUT
    is reported (NM917): the next ``convert -o`` completes it."""
    res = WriteResult([], [], [], {})
    for name in conv.files:
        _encoded(conv, name)
    for name, text in sorted(conv.files.items()):
        dest = out / name
        kind = fsio.not_a_file(dest)
        if kind == "missing":
            res.differing.append(name)
            res.diffs[name] = f"{name}: does not exist yet\n"
            continue
        if kind is not None:
            res.differing.append(name)
            res.not_files[name] = kind
            res.diffs[name] = f"{name}: is {kind}, not a file\n"
            continue
        new = _encoded(conv, name)
        try:
            old = fsio.read_bytes(dest, limit=len(new) + 1)
        except OSError:
            old = None
        if old == new:
            res.unchanged.append(name)
            continue
        res.differing.append(name)
        res.diffs[name] = "".join(difflib.unified_diff(
            (old or b"").decode("utf-8", "replace").splitlines(keepends=True), text.splitlines(keepends=True),
            f"{name} (on disk)", f"{name} (new)", n=1))
    left = _staging_dirs(out)
    if left:
        conv.diags.warning("NM917", f"{fsio.shown(out)} holds a write that was interrupted ({', '.join(p.name for p in left)})",
                           hint="the next `nemo-migrate convert ... -o OUT` completes or removes it before writing")
    return res


def _encoded(conv: Conversion, name: str) -> bytes:
    """A file's bytes (UTF-8).  Text that cannot be encoded came from a command-line value or a file name with bytes
    that are not UTF-8 (os.fsdecode's surrogates): NM918, never a crash."""
    try:
        return conv.files[name].encode("utf-8")
    except UnicodeEncodeError as e:
        text = conv.files[name]
        line = text.count("\n", 0, e.start) + 1
        snippet = fsio.shown(text[max(0, e.start - 20):e.end + 20])
        conv.diags.error("NM918", f"{name} would hold text that is not UTF-8 (line {line}: ...{snippet}...): a command-line value "
                         "or a file name of the job has bytes that are not UTF-8", hint="pass UTF-8 text (check the terminal's "
                         "locale, LANG) and give the job's files UTF-8 names")
        raise MigrateError(conv.diags) from None


def write(conv: Conversion, out: Path, force: bool) -> WriteResult:
    """Write the conversion into ``out``: all files or none, never a differing file without ``force``."""
    diags = conv.diags
    _check_out(conv, out, diags)
    created = _make_out(out, diags)
    try:
        with _out_lock(out, diags):
            _recover(out, diags)
            plan = plan_write(conv, out)
            for name, kind in plan.not_files.items():
                diags.error("NM914", f"{fsio.shown(out / name)} is {kind}, not a file: it is not replaced, even with --force",
                            hint="move it away and convert again")
            existing = [n for n in plan.differing if n not in plan.not_files and fsio.not_a_file(out / n) != "missing"]
            if existing and not force:
                diags.error("NM012", f"refusing to overwrite {len(existing)} file(s) in {fsio.shown(out)} that differ: {', '.join(existing)}",
                            hint="review them (nemo-migrate convert ... --check shows the diff) and pass --force to replace them")
            if diags.has_errors:
                raise MigrateError(diags)
            _commit(out, {n: conv.files[n] for n in plan.differing}, diags)
    except BaseException as e:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: OUT is as it was
        if isinstance(e, OSError):  # finishing an interrupted write, or reading OUT
            diags.error("NM014", f"cannot write to {fsio.shown(out)}: {e.strerror or e}", hint="check that OUT is writable, or choose another -o")
            raise MigrateError(diags) from None
        raise
    plan.written = list(plan.differing)
    return plan


def _check_out(conv: Conversion, out: Path, diags: Diagnostics) -> None:
    odd = fsio.odd_text(str(out.absolute()))
    if odd:
        diags.error("NM913", f"the output path {fsio.shown(out.absolute())} has {odd}: run.sh finds its configs through its own "
                    "directory, which `$(dirname ...)` cannot pass back intact", hint="choose a plain output directory with -o")
        raise MigrateError(diags)
    kind = fsio.not_a_file(out)
    if kind == "a symbolic link loop" or (kind or "").startswith("unreadable"):
        diags.error("NM913", f"the output path {out} is {kind}", hint="remove the link or choose another output directory with -o")
        raise MigrateError(diags)
    if kind not in ("a directory", "missing", "a broken symbolic link"):
        diags.error("NM011", f"output path {out} exists and is not a directory" + (f" ({kind})" if kind else ""),
                    hint="choose another output directory with -o")
        raise MigrateError(diags)
    inputs = {_resolved(p) for p in conv.inputs} - {None}
    for name in conv.files:
        if _resolved(out / name) in inputs:
            diags.error("NM010", f"writing {out / name} would overwrite a NeMo input file", hint="choose another output directory with -o")
            raise MigrateError(diags)


def _resolved(p: Path) -> Path | None:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None


def _make_out(out: Path, diags: Diagnostics) -> bool:
    """Create OUT (and its parents) if needed; True when this run created it."""
    if out.is_dir():
        return False
    try:
        out.mkdir(parents=True)
        return True
    except FileExistsError:
        if out.is_dir():
            return False
        diags.error("NM013", f"cannot create {out}: a file or a broken symbolic link is in the way")
    except OSError as e:
        diags.error("NM013", f"cannot create {out}: {e.strerror or e}", hint="check the path and its permissions, or choose another -o")
    raise MigrateError(diags)


@contextlib.contextmanager
def _out_lock(out: Path, diags: Diagnostics):
    """Hold OUT's lock: a second convert into the same OUT waits (NEMO_MIGRATE_LOCK_TIMEOUT seconds), then plans
    against what the first one wrote.  The lock file is removed while still held (filelock retries a lock taken on a
    removed file), so OUT keeps only the converted files."""
    import filelock

    path = out / LOCK_NAME
    if path.is_symlink() or fsio.not_a_file(path) not in (None, "missing"):
        diags.error("NM914", f"{fsio.shown(path)} is {'a symbolic link' if path.is_symlink() else fsio.not_a_file(path)}, not the "
                    "lock file nemo-migrate makes; nothing written", hint="remove it (no nemo-migrate made it) and convert again")
        raise MigrateError(diags)
    try:
        timeout = float(os.environ.get("NEMO_MIGRATE_LOCK_TIMEOUT", LOCK_TIMEOUT_S))
    except ValueError:
        timeout = LOCK_TIMEOUT_S
    lock = filelock.FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        diags.error("NM910", f"another nemo-migrate has been writing into {fsio.shown(out)} for {timeout:g} s (it holds {LOCK_NAME}); nothing written",
                    hint="wait for it to finish and convert again (set NEMO_MIGRATE_LOCK_TIMEOUT to wait longer)")
        raise MigrateError(diags) from None
    except OSError as e:
        diags.error("NM014", f"cannot write to {fsio.shown(out)}: {e.strerror or e}", hint="check that OUT is writable, or choose another -o")
        raise MigrateError(diags) from None
    try:
        yield
    finally:
        if int(filelock.__version__.split(".")[0]) >= 4:  # filelock 3.x removes it on release itself
            with contextlib.suppress(OSError):
                path.unlink()
        lock.release()


def _staging_dirs(out: Path) -> list[Path]:
    """Staging directories a run of this user left in OUT (mkdtemp makes them 0700; any other is not ours to trust)."""
    try:
        found = []
        for p in sorted(out.iterdir()):
            if p.name.startswith(STAGING_PREFIX) and not p.is_symlink() and p.is_dir():
                st = p.stat()
                if st.st_uid == os.geteuid() and not st.st_mode & 0o077:
                    found.append(p)
        return found
    except OSError:
        return []


def _commit(out: Path, files: dict[str, str], diags: Diagnostics) -> None:
    """Stage ``files`` inside OUT, record the manifest, then rename them into place (steps 2-4 above)."""
    if not files:
        return
    stage: Path | None = None
    renamed = 0
    try:
        with fsio.interruptible():
            _test_hook("locked")
            stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
            manifest = {}
            for name, text in sorted(files.items()):
                data = text.encode("utf-8")  # checked by plan_write (NM918)
                _write_file(stage / name, data, 0o755 if name.endswith(".sh") else 0o644)
                manifest[name] = hashlib.sha256(data).hexdigest()
                _test_hook("staged-one")
            record = json.dumps({"tool": "nemo-migrate", "version": __version__, "files": manifest}, indent=1, sort_keys=True)
            _write_file(stage / (MANIFEST + ".tmp"), record.encode(), 0o644)
            _test_hook("staged")
            os.replace(stage / (MANIFEST + ".tmp"), stage / MANIFEST)  # the commit point
            _fsync_dir(stage)
        with fsio.deferred_signals() as signals:  # past the commit point: the renames finish first
            _test_hook("committed")
            for name in sorted(files):
                os.replace(stage / name, out / name)
                renamed += 1
                _test_hook("renamed-one")
            _fsync_dir(out)
            _remove_stage(stage)
            stage = None
        if signals:
            diags.note("NM915", f"a signal ({', '.join(signal_name(s) for s in signals)}) arrived while the files were being "
                       "renamed into place: the write was completed first")
    except fsio.Interrupted as e:
        diags.error("NM915", f"interrupted ({e}) while writing into {fsio.shown(out)}: nothing was changed there",
                    hint="convert again to write the files")
        raise MigrateError(diags) from None
    except OSError as e:
        state = ("nothing was changed there" if stage is None or not (stage / MANIFEST).exists() else
                 f"{renamed} of {len(files)} files were replaced; the next convert into it completes the write")
        diags.error("NM014", f"cannot write to {fsio.shown(out)}: {e.strerror or e}; {state}",
                    hint="free some space or fix the permissions, and convert again")
        raise MigrateError(diags) from None
    finally:
        if stage is not None and not (stage / MANIFEST).exists():
            _remove_stage(stage)  # before the commit point: OUT untouched, leave nothing behind


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(fd)


def _remove_stage(stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)


def _recover(out: Path, diags: Diagnostics) -> None:
    """Finish what an interrupted write left in OUT: roll a committed one forward, remove an uncommitted one."""
    for stage in _staging_dirs(out):
        man = stage / MANIFEST
        if not man.exists():
            _remove_stage(stage)
            diags.note("NM916", f"removed {fsio.shown(stage.name)}, left by a write into {fsio.shown(out)} that was interrupted "
                       "before it changed anything")
            continue
        try:
            files = json.loads(fsio.read_bytes(man, limit=1 << 20))["files"]
            assert isinstance(files, dict) and all(isinstance(k, str) and "/" not in k and k not in ("", ".", "..") for k in files)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            diags.error("NM912", f"{fsio.shown(stage)} holds an unreadable manifest of an interrupted write", file=fsio.shown(man),
                        hint=f"check the files in {fsio.shown(out)}, remove {fsio.shown(stage.name)} and convert again with --force")
            raise MigrateError(diags) from None
        done, broken = [], []
        for name, digest in sorted(files.items()):
            staged, dest = stage / name, out / name
            if _sha256(staged) == digest:
                os.replace(staged, dest)
                done.append(name)
            elif _sha256(dest) != digest:
                broken.append(name)
        if broken:
            diags.error("NM912", f"a write into {fsio.shown(out)} was interrupted and cannot be completed: "
                        f"{', '.join(map(fsio.shown, broken))} changed since", hint=f"check the files in {fsio.shown(out)}, remove "
                        f"{fsio.shown(stage.name)} and convert again with --force")
            raise MigrateError(diags)
        _fsync_dir(out)
        _remove_stage(stage)
        diags.warning("NM911", f"completed a write into {fsio.shown(out)} that was interrupted after its commit point "
                      f"({len(files)} files, {len(done)} renamed now)", hint="what follows compares with those files")


def _sha256(p: Path) -> str | None:
    try:
        return hashlib.sha256(fsio.read_bytes(p)).hexdigest()
    except OSError:
        return None


def _test_hook(point: str) -> None:
    """For tests only: NEMO_MIGRATE_TEST_HOOK="point=SECONDS,point=errno:N" pauses (after saying so on stderr) or fails
    with an OSError at a point of the write (locked, staged-one, staged, committed, renamed-one)."""
    spec = os.environ.get("NEMO_MIGRATE_TEST_HOOK")
    if not spec:
        return
    for item in spec.split(","):
        name, _, action = item.partition("=")
        if name.strip() != point:
            continue
        sys.stderr.write(f"nemo-migrate test hook: {point}\n")
        sys.stderr.flush()
        if action.startswith("errno:"):
            code = int(action[len("errno:"):])
            raise OSError(code, os.strerror(code))
        time.sleep(float(action or 0))

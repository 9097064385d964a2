"""The ``nemo-migrate`` command line (typer).  Exit codes: 0 ok (warnings allowed), 1 error, 2 difference found."""

from __future__ import annotations

import atexit
import copy
import gc
import os
import sys
from pathlib import Path
from typing import List, Optional

# pydantic scans every installed distribution for plugins at the first model build (importlib.metadata, ~25 ms of a
# cold start); the IR needs none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer  # noqa: E402

app = typer.Typer(
    name="nemo-migrate",
    help="Compile NeMo 2 fine-tuning jobs (recipe.py + YAML + torchrun) into NeMo Automodel 0.7 jobs.",
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, powershell)
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    suggest_commands=False,  # click 8.5 suggests already: one "Did you mean" (typer would add a second)
)


def _keep_argument_help() -> None:
    """typer 0.24 stores an Argument's help before calling click 8.5's Argument.__init__, which resets it to None:
    `convert --help` showed `SOURCE [required]` without the help text.  Store it again afterwards (typer lists the
    arguments itself, so click's own "Positional arguments" section is left out)."""
    from typer.core import TyperArgument, TyperCommand

    if hasattr(TyperCommand, "format_arguments"):
        TyperCommand.format_arguments = lambda self, ctx, formatter: None

    init = TyperArgument.__init__
    if getattr(init, "_keeps_help", False):
        return

    def __init__(self, *args, help=None, **kwargs):  # noqa: A002 - click's name
        init(self, *args, help=help, **kwargs)
        self.help = help

    __init__._keeps_help = True
    TyperArgument.__init__ = __init__


_keep_argument_help()


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    from . import nemo_release

    try:
        mine = version("nemo-migrate")
    except PackageNotFoundError:  # a source tree that is not installed
        from . import __version__ as mine
    rel = nemo_release.releases()
    print(f"nemo-migrate {mine}\n  writes: NeMo Automodel 0.7 (0.7.0) jobs\n"
          f"  reads:  NeMo 2 {rel[0]}-{rel[-1]} (default {nemo_release.default()}; checked against NeMo 2.7.3 + NeMo-Run 0.11.1), "
          "NeMo 1.0, NeMo-Aligner")
    raise typer.Exit(0)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print the version and the Automodel / NeMo versions it targets.")) -> None:
    """Compile NeMo 2 fine-tuning jobs (recipe.py + YAML + torchrun) into NeMo Automodel 0.7 jobs."""


_FORMAT_HELP = ("How diagnostics are printed: text (file:line:col: severity[CODE], paths relative to the working directory), json "
                "(as --json), github (GitHub Actions annotations) or sarif (SARIF 2.1.0, for code scanning).")


def _out():
    from . import console

    return console


@app.command()
def convert(
    source: Path = typer.Argument(..., help="A NeMo job: a folder (recipe.py, run.sh, config-*.yaml), a launcher script (run.sh, "
                                  "sbatch), a recipe/script .py, a .ipynb notebook, a NeMo 2 / NeMo 1.0 / Aligner YAML, or a NeMo-Run export (--to-yaml)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output directory. Without it nothing is written (a plan is printed)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="recipe.py with the factory (default: recipe.py next to SOURCE)."),
    factory: Optional[str] = typer.Option(None, "--factory", help="Factory to start from, e.g. 'migration_recipe()' or llama3_8b (beats run.sh's)."),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", min=1, help="GPUs per node (sets trainer.devices)."),
    nnodes: Optional[int] = typer.Option(None, "--nnodes", min=1, help="Nodes (sets trainer.num_nodes)."),
    set_: List[str] = typer.Option([], "--set", help="A NeMo-Run dotted override applied last, e.g. --set trainer.max_steps=100 (repeatable)."),
    model: Optional[str] = typer.Option(None, "--model", help="HF model id or local HF directory to train (replaces the restore path)."),
    run_sh: Optional[Path] = typer.Option(None, "--run-sh", help="The launcher script: run.sh / an sbatch script (default: the one in SOURCE)."),
    launch_line: Optional[int] = typer.Option(None, "--launch-line", min=1, help="The line of the launcher's command to migrate when it runs several."),
    nemo_version: Optional[str] = typer.Option(None, "--nemo-version", help="The NeMo 2 release the job ran on (2.0 .. 2.7; default 2.7): recipes, defaults and what NeMo accepts differ."),
    launcher: str = typer.Option("auto", "--launcher", help="auto: also sbatch.sh when recipe.py launches on a SlurmExecutor; slurm: always write sbatch.sh; local: run.sh only."),
    check: bool = typer.Option(False, "--check", help="Compare with what is in OUT and write nothing: exit 0 same, 2 differs."),
    force: bool = typer.Option(False, "--force", help="Overwrite files in OUT that differ."),
    json_: bool = typer.Option(False, "--json", help="Print the machine-readable report on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only errors and the summary line."),
    output_format: str = typer.Option("text", "--output-format", metavar="text|json|github|sarif", help=_FORMAT_HELP),
    statistics: bool = typer.Option(False, "--statistics", help="Count the diagnostics per code (count, code, title) instead of listing them."),
) -> None:
    """Convert a NeMo 2 job into an Automodel 0.7 config per YAML, a run.sh and a migration report."""
    from .convert import Options, convert as do_convert, plan_write, write
    from .diagnostics import MigrateError

    c = _out()
    fmt = c.output_format(output_format, json_, statistics)
    if fmt is None:
        raise typer.Exit(1)
    json_, fo = fmt == "json", {"fmt": fmt, "locate": c.locator(source if source.is_dir() else source.parent), "stats": statistics}
    opts = Options(source=source, out=out, recipe=recipe, factory=factory, nproc_per_node=nproc_per_node, nnodes=nnodes,
                   sets=list(set_), model=model, run_sh=run_sh, launcher=launcher, launch_line=launch_line, nemo_version=nemo_version)
    if launcher not in ("auto", "slurm", "local"):
        c.error_line(f"--launcher {launcher!r}: expected auto, slurm or local")
        raise typer.Exit(1)
    try:
        conv = do_convert(opts)
    except MigrateError as e:
        c.fail(e.diags, json_mode=json_, quiet=quiet, **fo)
        raise typer.Exit(1)
    if check:
        if out is None:
            c.error_line("--check needs -o OUT to compare with")
            raise typer.Exit(1)
        try:
            plan = plan_write(conv, out)
        except MigrateError as e:
            c.fail(e.diags, json_mode=json_, quiet=quiet, **fo)
            raise typer.Exit(1)
        from .emit import stale_outputs

        stale = stale_outputs(out, conv.files)
        if json_:
            c.report_json(conv.diags, fo, conv.to_json(status="differs" if plan.differing or stale else "same") | {"differs": plan.differing, "stale": stale})
        else:
            c.report(conv, quiet=quiet, **fo)
            if plan.differing or not stale:
                c.check_result(plan, out, show_diffs=fmt == "text")
            for name in stale:
                c.info_line(f"{out / name}: written by an earlier convert, not by this one (stale): remove it if it is not yours")
        raise typer.Exit(2 if plan.differing or stale else 0)
    if out is None:
        if json_:
            c.report_json(conv.diags, fo, conv.to_json(status="plan"))
        else:
            c.report(conv, quiet=quiet, **fo)
            c.info_line("nothing written (no -o OUT given)")
        raise typer.Exit(0)
    try:
        res = write(conv, out, force=force)
    except MigrateError as e:
        c.fail(e.diags, json_mode=json_, quiet=quiet, **fo)
        raise typer.Exit(1)
    from .emit import stale_outputs

    stale = stale_outputs(out, conv.files)
    if json_:
        c.report_json(conv.diags, fo, conv.to_json(written=res.written) | ({"stale": stale} if stale else {}))
    else:
        c.report(conv, quiet=quiet, **fo)
        c.write_result(res, out)
        for name in stale:
            c.info_line(f"warning: {out / name} was written by an earlier convert and not by this one; it is left as it is: "
                        f"remove it (rm {out / name}) unless you still use it")


@app.command()
def diff(
    left: Path = typer.Argument(..., help="A NeMo 2 job (directory or YAML) or an Automodel YAML / directory."),
    right: Path = typer.Argument(..., help="The job to compare it with (directories pair their configs by file name)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="recipe.py for a NeMo 2 YAML (default: recipe.py next to it)."),
    set_: List[str] = typer.Option([], "--set", help="A dotted override for the NeMo 2 side, as in convert."),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", min=1, help="GPUs per node, when a side does not say."),
    nnodes: Optional[int] = typer.Option(None, "--nnodes", min=1, help="Nodes, when a side does not say."),
    model: Optional[str] = typer.Option(None, "--model", help="HF model for the NeMo 2 side (as convert --model)."),
    all_: bool = typer.Option(False, "--all", help="Also list the facts that are the same."),
    json_: bool = typer.Option(False, "--json", help="Machine-readable output."),
    output_format: str = typer.Option("text", "--output-format", metavar="text|json|github|sarif", help=_FORMAT_HELP),
    statistics: bool = typer.Option(False, "--statistics", help="Count the findings and differences per code (count, code, title) instead of listing them."),
) -> None:
    """Compare what two jobs will actually do (effective values, defaults included): exit 0 same, 2 differs, 1 error."""
    from .diagnostics import MigrateError
    from .diff import run_diff, to_json

    c = _out()
    fmt = c.output_format(output_format, json_, statistics)
    if fmt is None:
        raise typer.Exit(1)
    json_, fo = fmt == "json", {"fmt": fmt, "stats": statistics}
    bad = _unreadable_inputs([left, right, recipe])
    if bad.has_errors:
        c.fail(bad, json_mode=json_, **fo)
        raise typer.Exit(1)
    bases = c.diff_bases(left, right)
    try:
        results = run_diff(left, right, recipe=recipe, sets=list(set_), nproc=nproc_per_node, nnodes=nnodes, model=model)
    except MigrateError as e:
        c.fail(e.diags, json_mode=json_, locate=c.diff_locator(bases), **fo)
        raise typer.Exit(1)
    c.diff_output(results, to_json, show_all=all_, bases=bases, **fo)
    raise typer.Exit(2 if any(r.different for r in results) else 0)


@app.command(context_settings={"allow_extra_args": False})
def run(
    config: Path = typer.Argument(..., help="An Automodel 0.7 YAML (e.g. one that `convert` wrote); with --verify, the NeMo 2 job (directory or YAML)."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Processes (GPUs) on this node; >1 starts torchrun."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override step_scheduler.max_steps."),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1, help="Stop after N optimizer steps of the configured schedule (max_steps and the LR schedule unchanged)."),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help="A local HF model directory (weights + tokenizer)."),
    proxy_model: Optional[str] = typer.Option(None, "--proxy-model", help="Random-weight stand-in of the config's architecture: tiny, llama-1b, llama-8b, ..."),
    set_: List[str] = typer.Option([], "--set", help="Override any key, as Automodel's --section.key value: --set dataset.path_or_dataset_id=/data/t.jsonl (with --verify: a NeMo-Run override of the source job)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory: metrics.jsonl, loss.png and checkpoints/ (default: runs/<config name>); with --verify, VERIFY_DIR (default: verify/)."),
    checkpoint_dir: Optional[str] = typer.Option(None, "--checkpoint-dir", metavar="config|DIR", help="Where checkpoints go and are resumed from (default: OUT/checkpoints, so runs with different --out never share one); `config` uses the config's checkpoint.checkpoint_dir (as does --set checkpoint.checkpoint_dir=DIR)."),
    merge: bool = typer.Option(False, "--merge", help="After a LoRA run, also write the merged model (HF safetensors)."),
    verify: bool = typer.Option(False, "--verify", help="Convert the NeMo 2 job, then train its NeMo meaning and its migration side by side and compare."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="--verify: recipe.py with the factory (default: next to the source)."),
    factory: Optional[str] = typer.Option(None, "--factory", help="--verify: the factory to start from."),
    steps: int = typer.Option(20, "--steps", min=1, help="--verify: optimizer steps per leg."),
    data: Optional[Path] = typer.Option(None, "--data", help="--verify: directory with training.jsonl (default: the job's dataset_root)."),
    seq_length: Optional[int] = typer.Option(None, "--seq-length", min=8, help="--verify: run both legs with this seq_length (stated in the report)."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="--verify: attribution legs run at once (independent runs; on one GPU they share it)."),
    migrated: Optional[Path] = typer.Option(None, "--migrated", help="--verify: an Automodel YAML (or directory) to verify instead of convert's output."),
    json_: bool = typer.Option(False, "--json", help="--verify: print verify-report.json on stdout."),
    against: Optional[str] = typer.Option(None, "--against", metavar="automodel", help="--verify: also train the migrated YAML with the real nemo_automodel 0.7.0 recipe (GPU) and compare it with the runtime's migrated leg."),
    resume: Optional[str] = typer.Option(None, "--resume", metavar="changed", help="Resume a checkpoint saved with other training settings and train on with the new values (default: refuse, listing them)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start fresh (into <checkpoint_dir>-runN when it holds checkpoints)."),
) -> None:
    """Train an Automodel 0.7 config with the bundled runtime (FSDP2, LoRA, FP8); needs `pip install nemo-migrate[runtime]`.

    With --verify: prove that the migrated job trains like the NeMo 2 job (exit 0 within tolerance, 2 beyond, 1 error)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        _out().error_line("the runtime needs torch: pip install 'nemo-migrate[runtime]'")
        raise typer.Exit(1)
    if against is not None and not verify:
        _out().error_line("--against needs --verify (it compares the runtime's migrated leg with real Automodel)")
        raise typer.Exit(1)
    if resume not in (None, "changed"):
        _out().error_line("--resume takes: changed")
        raise typer.Exit(1)
    if resume and no_resume:
        _out().error_line("--resume changed and --no-resume exclude each other")
        raise typer.Exit(1)
    if not verify:
        from .detect import NEMO_CONFIGS, Kind, detect as detect_kind
        from .diagnostics import Diagnostics

        kind = detect_kind(config, Diagnostics())
        if kind in NEMO_CONFIGS or kind in (Kind.NEMO2_DIR, Kind.RECIPE, Kind.LAUNCHER, Kind.NOTEBOOK):
            _out().error_line(f"{config} is a NeMo job ({kind.value}), not an Automodel 0.7 config: run trains "
                              f"Automodel YAMLs. Convert it first: nemo-migrate convert {config} -o OUT, then "
                              f"nemo-migrate run OUT/<config>.yaml; or check the migration end to end: "
                              f"nemo-migrate run --verify {config}")
            raise typer.Exit(1)
    if verify:
        from .diagnostics import MigrateError
        from .verify import VerifyError, VerifyOptions, run_verify

        c = _out()
        vopts = VerifyOptions(source=config, recipe=recipe, factory=factory, sets=list(set_), steps=steps, proxy_model=proxy_model,
                              model_path=model_path, data=data, nproc_per_node=nproc_per_node, out=out, seq_length=seq_length, jobs=jobs,
                              migrated=migrated, against=against)
        try:
            code, report = run_verify(vopts, log=(lambda m: None) if json_ else c.info_line)
        except MigrateError as e:
            c.fail(e.diags, json_mode=json_)
            raise typer.Exit(1)
        except VerifyError as e:
            c.error_line(f"verify: {e}")
            raise typer.Exit(1)
        if json_:
            c.print_json(report.to_json())
        else:
            c.verify_report(report.to_json(), out or Path("verify"))
        raise typer.Exit(code)
    from nemo_migrate.runtime.api import RunOptions, run_main  # lazily: convert/diff never import torch

    code = run_main(RunOptions(config=config, nproc_per_node=nproc_per_node, max_steps=max_steps, model_path=model_path,
                               proxy_model=proxy_model, overrides=list(set_), out=out, merge=merge, stop_after=stop_after,
                               resume="never" if no_resume else ("changed" if resume else "auto"),
                               checkpoint_dir=checkpoint_dir))
    raise typer.Exit(code)


@app.command(name="convert-data")
def convert_data(
    src: Path = typer.Argument(..., help="A NeMo chat JSONL (conversations / system / mask)."),
    dest: str = typer.Argument(..., help="Where to write the OpenAI-messages JSONL for Automodel's ChatDataset; - writes to stdout "
                                "(once every row converted; ./- for a file named -)."),
    force: bool = typer.Option(False, "--force", help="Replace DEST if it exists."),
) -> None:
    """Convert NeMo chat data to the OpenAI `messages` JSONL that Automodel 0.7's ChatDataset reads."""
    from .data_convert import convert_file
    from .diagnostics import MigrateError

    to_stdout = dest == "-"  # a str: Path("./-") would be "-" too
    try:
        n, diags = convert_file(src, None if to_stdout else Path(dest), force=force)
    except MigrateError as e:
        _out().fail(e.diags)
        raise typer.Exit(1)
    from .fsio import shown

    _out().diagnostics(diags)
    _out().info_line(f"wrote {n} rows to {'stdout' if to_stdout else shown(Path(dest))}")


@app.command(name="convert-checkpoint")
def convert_checkpoint(
    src: Path = typer.Argument(..., help="A NeMo 2 checkpoint directory (context/ + weights/): a model or a LoRA adapter checkpoint, "
                               "or a run's checkpoints/ folder holding one."),
    out: Path = typer.Option(..., "-o", "--out", help="The Hugging Face directory to write (a model, or a PEFT adapter)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: the checkpoint's params_dtype)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Hugging Face tokenizer files to write (default: the checkpoint's context/nemo_tokenizer)."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Adapters: base_model_name_or_path for adapter_config.json (the converted base)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    json_: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Convert a NeMo 2 checkpoint (or LoRA adapter checkpoint) to Hugging Face format, without NeMo; needs torch."""
    from .checkpoint import convert as do_convert
    from .diagnostics import MigrateError

    c = _out()
    try:
        res = do_convert(src, out, dtype=dtype, tokenizer=tokenizer, base_model=base_model, force=force,
                         log=(lambda m: None) if json_ else c.info_line)
    except MigrateError as e:
        c.fail(e.diags, json_mode=json_)
        raise typer.Exit(1)
    if json_:
        c.print_json(res.to_json())
        return
    c.diagnostics(res.diags)
    what = "PEFT adapter" if res.kind == "peft" else "model"
    c.info_line(f"converted the {res.arch} {what} {res.source} -> {res.out}: {res.tensors} tensors, {res.bytes / 2**20:.1f} MiB "
                f"{res.dtype} ({', '.join(res.files)})")
    for n in res.notes:
        c.info_line(f"  note: {n}")


_JOB_FILES = (".yaml", ".yml", ".json", ".toml", ".py", ".ipynb", ".sh", ".sbatch")


def _unreadable_inputs(paths: list[Optional[Path]]):
    """NM001 for an input (or a job file in an input folder) that is not a regular file: a FIFO or a device would make
    the read wait forever, a directory or a symlink loop would crash it."""
    from .diagnostics import Diagnostics
    from .fsio import not_a_file, shown

    diags = Diagnostics()
    for p in paths:
        if p is None:
            continue
        kind = not_a_file(p)
        if kind == "a directory":
            try:
                entries = sorted(x for x in p.iterdir() if x.suffix in _JOB_FILES)
            except OSError as e:
                diags.error("NM001", f"cannot list {shown(p)}: {e.strerror or e}")
                continue
            for x in entries:
                k = not_a_file(x)
                if k not in (None, "a directory", "a broken symbolic link", "missing"):
                    diags.error("NM001", f"{shown(x)} is {k}, not a file nemo-migrate can read", file=shown(x),
                                hint="remove or rename it, or compare the files you mean one by one")
        elif kind not in (None, "missing"):
            diags.error("NM001", f"{shown(p)} is {kind}, not a file nemo-migrate can read")
    return diags


def _buckets(rule) -> list[str]:
    """The buckets a row can put its knobs in: the row's own, then those its transform may decide for a job (the bucket
    names in the transform's source and in the module's functions it calls: `Result("unsupported", ...)`)."""
    import ast
    import inspect

    from .ir import STATUSES
    from .rules.transforms import TRANSFORMS

    found = {rule.status}
    fn = TRANSFORMS.get(rule.transform or "")
    try:
        tree = ast.parse(inspect.getsource(inspect.getmodule(fn))) if fn else None
    except (OSError, TypeError, SyntaxError):  # no source shipped: the row's bucket only
        tree = None
    if tree is not None:
        funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        seen, todo = set(), [fn.__name__]
        while todo:
            name = todo.pop()
            if name in seen or name not in funcs:
                continue
            seen.add(name)
            for n in ast.walk(funcs[name]):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                    todo.append(n.func.id)
                elif isinstance(n, ast.Constant) and n.value in STATUSES:
                    found.add(n.value)
    return [rule.status] + [b for b in STATUSES if b in found and b != rule.status]


@app.command()
def explain(rule: str = typer.Argument(..., help="A rule id such as PEFT006, or a diagnostic code such as NM213.")) -> None:
    """Explain a rule of the mapping table, e.g. PEFT006 (what it owns, where it writes, its bucket and the fact it
    cites), or a diagnostic code, e.g. NM213 (what it means, why, and the way out)."""
    from . import codes, rules
    from .diagnostics import did_you_mean

    key = rule.strip().upper()
    r = rules.by_id().get(key)
    if r is not None:
        _out().explain(r, _buckets(r))
        return
    if key in codes.registry():
        import textwrap

        head, _, body = codes.render(key, width=10**6).rpartition("\n")
        print(head + "\n" + textwrap.fill(body.strip(), width=100, initial_indent="  ", subsequent_indent="  ",
                                          break_on_hyphens=False, break_long_words=False))  # URLs stay whole
        return
    hint = did_you_mean(key, [*rules.by_id(), *codes.registry()])
    _out().error_line(f"no rule or diagnostic code {rule!r}" + (f"; {hint}" if hint else "") + "  (`nemo-migrate rules` lists the rules)")
    raise typer.Exit(1)


@app.command(name="rules")
def list_rules(
    filter_: Optional[str] = typer.Argument(None, metavar="[FILTER]", help="Only rows whose id, a source or a target contains this text "
                                            "(case-insensitive), e.g. PEFT, lr_scheduler, trainer.plugins."),
    status: Optional[str] = typer.Option(None, "--status", help="Only rows that can put a knob in this bucket (their own, or one their "
                                         "transform may decide per job): exact, approximate, dropped or unsupported."),
    json_: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
) -> None:
    """List the mapping table (mappings/rules.yaml): rule id, default bucket, NeMo sources, Automodel targets."""
    from . import rules
    from .ir import STATUSES

    if status is not None and status not in STATUSES:
        _out().error_line(f"--status {status!r}: expected one of {', '.join(STATUSES)}")
        raise typer.Exit(1)
    needle = (filter_ or "").lower()
    buckets = {r.id: _buckets(r) for r in rules.table()}
    rows = [r for r in rules.table() if (status is None or status in buckets[r.id])
            and (not needle or any(needle in x.lower() for x in (r.id, *r.sources, *r.targets)))]
    if not rows:
        _out().error_line("no rule matches" + (f" {filter_!r}" if filter_ else "") + (f" with --status {status}" if status else ""))
        raise typer.Exit(1)
    _out().rule_table(rows, buckets, as_json=json_)


def _app_for(argv: list[str]) -> typer.Typer:
    """The app to run for ``argv``: when it starts with a command's name, an app holding only that command (typer
    builds the click options of every registered command before click reads the arguments, ~5 ms of a cold start);
    otherwise the whole app (its help, --version, shell completion, click's "Did you mean" for a misspelt command).
    A command's own parsing, help and errors do not depend on its siblings."""
    from typer.main import get_command_name

    name = argv[0] if argv else None
    infos = [c for c in app.registered_commands
             if c.callback is not None and (c.name or get_command_name(c.callback.__name__)) == name]
    if len(infos) != 1:
        return app
    lean = copy.copy(app)
    lean.registered_commands = infos
    return lean


def _import_convert() -> None:
    """Import what `convert` runs with the cyclic garbage collector paused, then move those objects out of its reach.

    A cold convert imports some 48,000 long-lived objects (pydantic and the IR models, the front ends, the rules; a
    few hundred are garbage): the collector's passes over them while importing, and the interpreter's own collections
    at exit, took ~45 ms of a ~0.3 s convert (bench/convert_speed.py).  The conversion itself runs with the collector
    on.  At exit the objects it made are frozen too, after the atexit handlers registered later (filelock's,
    logging's) have run: nothing on this path needs a cycle collected to flush or release anything (files are
    written and closed explicitly, the lock is released by `with`)."""
    gc.disable()
    try:
        from . import convert  # noqa: F401 - the command imports it again, from sys.modules
    finally:
        gc.freeze()
        gc.enable()
    atexit.register(gc.freeze)


def main() -> None:
    import click

    argv = sys.argv[1:]
    try:
        if argv[:1] == ["convert"]:
            _import_convert()
        rv = _app_for(argv)(standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except click.ClickException as e:  # bad usage: exit 1 (2 means "difference found")
        e.show()
        sys.exit(1)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - never a traceback for a user
        if os.environ.get("NEMO_MIGRATE_DEBUG"):
            raise
        print(f"nemo-migrate: internal error: {type(e).__name__}: {e}\n"
              "  hint: this is a bug in nemo-migrate; rerun with NEMO_MIGRATE_DEBUG=1 for the traceback and report it",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

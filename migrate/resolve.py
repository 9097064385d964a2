"""The effective source job: what NeMo would actually train.

Precedence (reference/nemo2-semantics.md §7.2): recipe factory defaults (mappings/) < statements of the factory
in recipe.py < each ``--yaml`` file < dotted CLI overrides (run.sh, then ``nemo-migrate --set``).  YAML and CLI
overrides are merged the way NeMo-Run merges them (one ordered dict: top-level assignments first, a later
duplicate wins).  Then NeMo's own silent adjustments (§1.8) and ``llm.api._validate_config``'s checks run,
each error pointing at the file and line of the values involved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import knowledge, nemo_release, recipes, schema
from .detect import Kind, detect
from .diagnostics import Diagnostics, MigrateError, did_you_mean
from .ir import Knob, Node, Provenance, find_cycle
from .sources.launch import Launch, sbatch_node
from .sources.overrides import parse_override
from .sources.recipe_py import FactoryInterpreter, RecipeModule, parse_recipe_py, pick_launch
from .sources.yaml_source import NodeSpec, Override, read_nemo_yaml

_FACTORY = re.compile(r"^([\w\.]+)(?:\((.*)\))?$", re.S)


class Job(BaseModel):
    """The effective NeMo 2 job (the IR handed to the rules)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    label: str  # e.g. "config-fp8"
    variant: str | None = None
    tree: Node
    factory: str
    factory_prov: Provenance
    recipe: str | None = None  # the NeMo recipe module the tree came from, if any
    launch_file: str | None = None
    launch_line: int | None = None
    launch_env: dict[str, str] = Field(default_factory=dict)
    standalone: bool = True
    inputs: list[str] = Field(default_factory=list)
    model_override: str | None = None
    main_names: list[str] = Field(default_factory=list)
    data_dir: str | None = None  # where a relative dataset_root resolves (the job directory)

    def get(self, path: str) -> Knob | Node | None:
        return schema.get(self.tree, path)

    def value(self, path: str, fallback: Any = None) -> Any:
        return schema.value(self.tree, path, fallback)

    def knob(self, path: str) -> Knob | None:
        k = self.get(path)
        return k if isinstance(k, Knob) else None

    @property
    def recipe_info(self) -> dict[str, Any] | None:
        return recipes.info(self.recipe) if self.recipe else None


@dataclass
class Inputs:
    """What one conversion reads."""

    recipe: Path | None
    recipe_display: str | None
    yamls: list[tuple[Path, str]]
    launch: Launch | None = None
    factory: str | None = None  # nemo-migrate --factory (beats run.sh's)
    sets: list[str] = field(default_factory=list)
    nproc_per_node: int | None = None
    nnodes: int | None = None
    model: str | None = None
    label: str = "job"
    variant: str | None = None
    job_dir: Path | None = None


def resolve(inp: Inputs, diags: Diagnostics, module: RecipeModule | None = None) -> Job:
    """Build the effective job or raise MigrateError (every problem found is in ``diags``)."""
    job = _resolve(inp, diags, module)
    _attach_sbatch(job, inp.launch)
    return job


def _attach_sbatch(job: Job, launch: Launch | None) -> None:
    """An sbatch script that launches the job: its #SBATCH header is the allocation, the IR's ``sbatch`` node (rules
    LCH007-LCH009), unless recipe.py's NeMo-Run executor decides the launch; --set sbatch.<option>=... wins over it."""
    allocation = sbatch_node(launch.sbatch) if launch is not None and "executor" not in job.tree.fields else None
    if allocation is None:
        return
    given = job.tree.fields.get("sbatch")
    allocation.fields.update(given.fields if isinstance(given, Node) else {})
    job.tree.fields["sbatch"] = allocation


def _resolve(inp: Inputs, diags: Diagnostics, module: RecipeModule | None) -> Job:
    kind = detect(inp.yamls[0][0], Diagnostics()) if len(inp.yamls) == 1 else None
    if kind is Kind.NEMORUN_EXPORT:
        return _resolve_export(inp, diags)
    if kind in (Kind.NEMO1, Kind.ALIGNER):
        return _resolve_nemo1(inp, kind.value, diags)
    if module is None and inp.recipe is not None:
        module = parse_recipe_py(inp.recipe, inp.recipe_display or str(inp.recipe), diags)
        if module is None:
            raise MigrateError(diags)
    yaml_sets = []
    for path, display in inp.yamls:
        y = read_nemo_yaml(path, display, diags)
        if y is not None:
            yaml_sets.append(y)
    if diags.has_errors:
        raise MigrateError(diags)

    # 1. the job: a factory (YAML run.factory > nemo-migrate --factory > the launch line's --factory > run.cli.main's
    #    default_factory), or, for a script that launches with run.run / run.Experiment / llm.finetune(...), the
    #    fine-tune it launches.
    fac_text, fac_prov = None, None
    for y in yaml_sets:
        if y.factory is not None:
            fac_text, fac_prov = str(y.factory.value), y.factory.prov
    if fac_text is None and inp.factory:
        fac_text, fac_prov = inp.factory, Provenance(kind="cli", detail=f"--factory {inp.factory}")
    if fac_text is None and inp.launch is not None and inp.launch.factory is not None and \
            (module is None or module.cli is not None or not module.launches):
        fac_text, fac_prov = str(inp.launch.factory.value), inp.launch.factory.prov
        if module is not None and module.cli is None and inp.launch.launcher != "nemo-cli":
            diags.warning("NM356", f"{module.file} has no run.cli.main and launches nothing, so `{inp.launch.script} --factory "
                          f"{fac_text}` runs nothing in NeMo; converted as if run.cli.main(llm.finetune) read the launch line",
                          hint="add `run.cli.main(llm.finetune)` under `if __name__ == \"__main__\":` so that NeMo runs the job you migrate",
                          **fac_prov.where())
    if fac_text is None and module is not None and module.cli is not None and module.default_factory is not None:
        name, line = module.default_factory
        fac_text, fac_prov = name, Provenance(kind="recipe.py", file=module.file, line=line, detail="default_factory",
                                              cell=module.cli.prov.cell)
    launched = None
    if fac_text is None and module is not None and module.launches:
        launched = pick_launch(module, diags)
        tree, recipe_name = launched.task, launched.task.origin
        fac_text, fac_prov = launched.factory or f"the job launched at {launched.prov}", launched.prov
        if yaml_sets:
            diags.warning("NM351", f"the script launches the job itself ({launched.prov}); the YAML file(s) "
                          f"{', '.join(y.file for y in yaml_sets)} are not read by it and are not applied",
                          hint="a YAML applies to a NeMo-Run CLI launch (run.cli.main / --factory / --yaml)")
            yaml_sets = []
        if inp.launch is not None and (inp.launch.overrides or inp.launch.yaml_args or inp.launch.factory is not None):
            diags.warning("NM352", "the launch line passes NeMo-Run arguments (--factory / --yaml / overrides), but the script does not use "
                          "NeMo-Run's CLI (no run.cli.main); they are not applied", file=inp.launch.file, line=inp.launch.line)
    if fac_text is None:
        cands = module.factory_names() if module else []
        diags.error(
            "NM140",
            "no factory to start from: neither --factory, a YAML `run.factory`, nor run.cli.main(default_factory=...)",
            hint=("factories in recipe.py: " + ", ".join(cands)) if cands else "pass --factory 'my_recipe()' or --factory llama3_8b",
            **({"file": module.file} if module else {}),
        )
        raise MigrateError(diags)
    if launched is None:
        tree, recipe_name = _run_factory(fac_text, fac_prov, module, diags)

    # 2. YAML then CLI overrides, merged as NeMo-Run merges them
    overrides: list[Override] = []
    for y in yaml_sets:
        overrides.extend(y.overrides)
    if inp.launch is not None and launched is None:
        overrides.extend(inp.launch.overrides)
    for s in inp.sets:
        ov = parse_override(s, Provenance(kind="cli", detail=s), diags)
        if ov is not None:
            overrides.append(ov)
    if inp.nproc_per_node is not None:
        overrides.append(Override("trainer.devices", "=", inp.nproc_per_node, Provenance(kind="cli", detail=f"--nproc-per-node {inp.nproc_per_node}")))
    if inp.nnodes is not None:
        overrides.append(Override("trainer.num_nodes", "=", inp.nnodes, Provenance(kind="cli", detail=f"--nnodes {inp.nnodes}")))
    main_names = module.names() if module else []
    _peft_overrides_by_release(overrides, diags)
    _apply_overrides(tree, overrides, diags, main_names)
    cyc = find_cycle(tree)
    if cyc is not None:
        diags.error("NM226", f"'{cyc[0]}' contains the object it belongs to (a job cannot contain itself)", key=cyc[0], **cyc[1].where(),
                    hint="assign a new run.Config(...) there instead of the recipe or one of its parents")
        raise MigrateError(diags)
    if module is not None and module.interp is not None:
        module.interp.check_job(tree, diags)
    if launched is not None:
        module.executors = [launched.executor] if launched.executor is not None else []
    if module is not None and module.executors:
        _attach_executor(tree, module, diags)
    if diags.has_errors:
        raise MigrateError(diags)

    job = _job(inp, tree, fac_text, fac_prov, recipe_name or _guess_recipe(tree),
               [d for _, d in inp.yamls] + ([inp.recipe_display] if inp.recipe_display else []), main_names)
    _check_launch(job, inp.launch, diags)
    adjust(job, diags)
    validate(job, diags)
    if diags.has_errors:
        raise MigrateError(diags)
    return job


def _peft_overrides_by_release(overrides: list[Override], diags: Diagnostics) -> None:
    """NeMo >= 2.6 rejects peft.* values from --yaml / the command line (versions.yaml `peft_values_from_cli`)."""
    if not nemo_release.holds("peft_values_from_cli"):
        return
    peft = [o for o in overrides if o.path.startswith("peft.") and o.prov.file]
    if peft:
        o = peft[0]
        last = [r for r in nemo_release.releases() if r not in nemo_release.fact("peft_values_from_cli")["releases"]][-1]
        diags.warning("NM117", f"this job's peft.* values from --yaml / the command line ({', '.join(x.path for x in peft[:4])}"
                      f"{', ...' if len(peft) > 4 else ''}) are rejected by NeMo {nemo_release.current()}: "
                      f"{nemo_release.fact('peft_values_from_cli')['what']}; the job runs on NeMo <= {last}",
                      key=o.path, hint=f"if it ran on NeMo {last} or earlier, pass --nemo-version {last}: the migration is "
                      "the same training either way", **o.prov.where())


def _job(inp: Inputs, tree: Node, factory: str, factory_prov: Provenance, recipe: str | None, inputs: list[str],
         main_names: list[str] | None = None) -> Job:
    """The IR of one variant: the tree and what the launcher adds (file, line, environment, standalone)."""
    launch = inp.launch
    return Job(
        label=inp.label, variant=inp.variant, tree=tree, factory=factory, factory_prov=factory_prov, recipe=recipe,
        launch_file=launch.file if launch else None, launch_line=launch.line if launch else None,
        launch_env=dict(launch.env) if launch else {}, standalone=launch.standalone if launch else True,
        inputs=inputs + ([launch.file] if launch else []), model_override=inp.model, main_names=list(main_names or []),
        data_dir=str(inp.job_dir) if inp.job_dir else None,
    )


def _attach_executor(tree: Node, module: RecipeModule, diags: Diagnostics) -> None:
    """The NeMo-Run executor recipe.py launches with (the Slurm one when there are several) as the IR's `executor` node."""
    ex = next((e for e in module.executors if e.kind == "SlurmExecutor"), module.executors[0])
    node = Node(cls=ex.kind, prov=Provenance(kind="recipe.py", file=module.file, line=ex.line, detail=f"run.{ex.kind}(...)"))
    for name, (value, line) in sorted(ex.kwargs.items()):
        fs = schema.spec(ex.kind).fields.get(name) if schema.spec(ex.kind) else None
        if fs is not None and name not in ex.unknown:
            try:
                value = schema.coerce(value, fs)
            except schema.CoerceError as e:
                diags.error("NM331", f"run.{ex.kind}({name}={value!r}): {e}", file=module.file, line=line)
                continue
        node.fields[name] = Knob(value=value, prov=Provenance(kind="recipe.py", file=module.file, line=line, detail=f"{ex.kind}.{name}"))
    for name in ex.unknown:
        if name in ("nodes", "ntasks_per_node", "gpus_per_node", "container_image", "account", "partition"):
            diags.warning("NM332", f"run.{ex.kind}({name}=...) is computed at run time; nemo-migrate cannot read it statically",
                          file=module.file, line=ex.kwargs.get(name, (None, ex.line))[1],
                          hint="write the value as a literal (or a module constant / function default), or edit sbatch.sh")
    tree.fields["executor"] = node


def _resolve_nemo1(inp: Inputs, fmt: str, diags: Diagnostics) -> Job:
    """A NeMo 1.0 / NeMo-Aligner config: lowered into the NeMo 2 IR (same adjustments and checks afterwards)."""
    with nemo_release.using(nemo_release.NOT_NEMO2):
        return _lower_nemo1(inp, fmt, diags)


def _lower_nemo1(inp: Inputs, fmt: str, diags: Diagnostics) -> Job:
    from .sources import nemo1

    path, display = inp.yamls[0]
    if nemo1.shipped_display(path):  # the script's own default config (no YAML in the job): name it, not where it is installed
        display = nemo1.shipped_display(path)
        inp.yamls[0] = (path, display)
    hydra = list(inp.launch.hydra) if inp.launch else []
    if inp.launch is not None and inp.launch.overrides:
        hydra += [(o.raw or f"{o.path}={o.value}", o.prov) for o in inp.launch.overrides]
    hydra += [(s, Provenance(kind="cli", detail=s)) for s in inp.sets]
    script = inp.launch.script if inp.launch is not None else None  # the script decides the defaults (mappings/nemo1/scripts.yaml)
    tree, fmt = nemo1.lower(path, display, hydra, diags, fmt, base=inp.job_dir, script=script)
    for value, key, flag in ((inp.nproc_per_node, "trainer.devices", "--nproc-per-node"), (inp.nnodes, "trainer.num_nodes", "--nnodes")):
        if value is not None:
            schema.set_path(tree, key, Knob(value=value, prov=Provenance(kind="cli", detail=f"{flag} {value}")), diags, {})
    label = "NeMo 1.0 SFT/PEFT config" if fmt == "nemo1" else "NeMo-Aligner SFT config"
    job = _job(inp, tree, f"{label} {display}", Provenance(kind="yaml", file=display, line=1), None, [display])
    _check_launch(job, inp.launch, diags)
    adjust(job, diags)
    sched = tree.get("optim.lr_scheduler")
    if isinstance(sched, Node) and isinstance(sched.fields.get("max_steps"), Knob) and sched.fields["max_steps"].value is None:
        del sched.fields["max_steps"]  # an epoch-driven Aligner run whose data is not readable: no step count to copy (rule N1013)
    validate(job, diags)
    if diags.has_errors:
        raise MigrateError(diags)
    return job


def _resolve_export(inp: Inputs, diags: Diagnostics) -> Job:
    """NeMo-Run's own export of the built job (``--to-yaml``): the tree as NeMo built it; ``--set`` still applies."""
    from .sources import nemorun_export

    path, display = inp.yamls[0]
    tree = nemorun_export.read_export(path, display, diags)
    if tree is None or diags.has_errors:
        raise MigrateError(diags)
    overrides = [ov for s in inp.sets if (ov := parse_override(s, Provenance(kind="cli", detail=s), diags)) is not None]
    for value, key, flag in ((inp.nproc_per_node, "trainer.devices", "--nproc-per-node"), (inp.nnodes, "trainer.num_nodes", "--nnodes")):
        if value is not None:
            overrides.append(Override(key, "=", value, Provenance(kind="cli", detail=f"{flag} {value}")))
    _apply_overrides(tree, overrides, diags, [])
    if diags.has_errors:
        raise MigrateError(diags)
    job = _job(inp, tree, f"NeMo-Run export {display}", Provenance(kind="yaml", file=display, line=1),
               nemorun_export.guess_recipe(tree) or _guess_recipe(tree), [display])
    _check_launch(job, inp.launch, diags)
    adjust(job, diags)
    validate(job, diags)
    if diags.has_errors:
        raise MigrateError(diags)
    return job


def _run_factory(text: str, prov: Provenance, module: RecipeModule | None, diags: Diagnostics) -> tuple[Node, str | None]:
    m = _FACTORY.match(text.strip())
    if not m:
        diags.error("NM141", f"cannot parse factory {text!r}", hint="form: name or name(key=value, ...)", **prov.where())
        raise MigrateError(diags)
    name, argtext = m.group(1), m.group(2)
    kwargs: dict[str, Knob] = {}
    if argtext and argtext.strip():
        # NeMo-Run splits on every comma (no nesting awareness) and parses each key=value like an override
        for part in argtext.split(","):
            if not part.strip():
                continue
            k, eq, v = part.partition("=")
            if not eq:
                diags.error("NM141", f"factory argument {part.strip()!r} must be key=value", **prov.where())
                raise MigrateError(diags)
            kwargs[k.strip()] = Knob(value=schema.coerce(v.strip(), None), prov=prov)
    leaf = name.rsplit(".", 1)[-1]
    # lookup order: dotted import path -> registry (recipes, @run.cli.factory) -> attribute of __main__
    recipe_leaf = None
    if "." in name:
        parts = name.split(".")
        if parts[-1] == "finetune_recipe" and len(parts) >= 2:
            recipe_leaf = parts[-2]
        elif recipes.info(parts[-1]) is not None:
            recipe_leaf = parts[-1]
    elif not (module and name in module.functions):
        # NeMo-Run's registry holds each recipe under the NAME it registers (mistral_nemo_12b -> mistral_nemo_base_12b);
        # a launch line must use that name, nemo-migrate's own --factory also takes the module name
        registered = nemo_release.recipe_of_cli_name(name)
        if registered is not None and recipes.info(registered) is not None:
            recipe_leaf = registered
        elif recipes.info(name) is not None:
            if prov.file and nemo_release.cli_name(name) != name:
                diags.error("NM144", f"No matching factory for '{name}': NeMo-Run registers llm.{name} as "
                            f"'{nemo_release.cli_name(name)}'", hint=f"--factory {nemo_release.cli_name(name)}", **prov.where())
                raise MigrateError(diags)
            recipe_leaf = name
    if recipe_leaf is not None:
        if module is not None and recipe_leaf in module.registered:
            pass
        else:
            kwargs = {k: Knob(value=_coerce_recipe_arg(k, v.value), prov=v.prov) for k, v in kwargs.items()}
            return recipes.expand(recipe_leaf, kwargs, prov, diags, prov.where()), recipe_leaf
    if module is not None and (leaf in module.functions or leaf in module.registered):
        interp = FactoryInterpreter(module, diags)
        fn = module.functions[module.registered.get(leaf, leaf)]
        anns = {a.arg: _annotation(a) for a in fn.args.args + fn.args.kwonlyargs}
        kwargs = {k: Knob(value=_coerce_ann(v.value, anns.get(k)), prov=v.prov) for k, v in kwargs.items()}
        tree = interp.run_factory(leaf, kwargs, prov)
        if diags.has_errors:
            raise MigrateError(diags)
        return tree, tree.origin
    cands = (module.factory_names() if module else []) + recipes.supported()
    hint = did_you_mean(leaf, cands)
    diags.error(
        "NM142",
        f"factory '{name}' not found in recipe.py nor among NeMo's recipes",
        hint=hint or ("factories in recipe.py: " + ", ".join(module.factory_names()) if module and module.factory_names() else None),
        **prov.where(),
    )
    raise MigrateError(diags)


_RECIPE_ARG_TYPES = {"num_nodes": "?int", "num_gpus_per_node": "int", "seq_length": "?int", "packed_sequence": "?bool",
                     "performance_mode": "bool", "dir": "?str", "name": "str", "peft_scheme": "?str"}


def _coerce_recipe_arg(k: str, v: Any) -> Any:
    t = _RECIPE_ARG_TYPES.get(k)
    if t is None:
        return v
    fs = schema.FieldSpec(k, t.lstrip("?"), t.startswith("?"), False, None)
    try:
        return schema.coerce(v, fs)
    except schema.CoerceError:
        return v


def _annotation(arg: Any) -> str | None:
    import ast

    a = arg.annotation
    if a is None:
        return None
    try:
        return ast.unparse(a)
    except Exception:  # noqa: BLE001
        return None


def _coerce_ann(v: Any, ann: str | None) -> Any:
    if not ann:
        return v
    opt = ann.startswith("Optional[") or "None" in ann
    base = ann.replace("Optional[", "").rstrip("]").split("|")[0].strip()
    if base in ("int", "float", "bool", "str"):
        try:
            return schema.coerce(v, schema.FieldSpec("arg", base, opt, False, None))
        except schema.CoerceError:
            return v
    return v


def _guess_recipe(tree: Node) -> str | None:
    """For trees built without a NeMo recipe call: find the recipe whose model config class matches."""
    cfg = tree.get("model.config")
    if isinstance(cfg, Node) and cfg.prov.detail:
        m = re.search(r"run\.Config\((\w+)\)", cfg.prov.detail)
        cls = m.group(1) if m else None
        if cls:
            for name, r in knowledge.recipes().items():
                if r.get("config_class") == cls:
                    return name
    return None


def _apply_overrides(tree: Node, overrides: list[Override], diags: Diagnostics, main_names: list[str]) -> None:
    merged: dict[str, Override] = {}
    for ov in overrides:
        if ov.path in merged:
            prev = merged[ov.path]
            if ov.prov.kind == "yaml" and prev.prov.kind == "yaml" and ov.prov.file == prev.prov.file:
                pass
            merged[ov.path] = Override(ov.path, ov.op, ov.value, ov.prov, ov.raw)
            # keep dict order of first occurrence, value of the last (NeMo-Run re-nests into one dict)
        else:
            merged[ov.path] = ov
    ordered = [o for o in merged.values() if "." not in o.path] + [o for o in merged.values() if "." in o.path]
    registered = {n for n, f in knowledge.factories().items() if f.get("registered")}
    for ov in ordered:
        where = ov.prov.where()
        val = ov.value
        if isinstance(val, NodeSpec):
            if val.factory:
                try:
                    new = schema.call_factory(val.factory.rsplit(".", 1)[-1], {}, ov.prov)
                except schema.FactoryError as e:
                    diags.error("NM143", f"'{ov.path}': {e}", key=ov.path, **where)
                    continue
            else:
                cls, known = schema.node_class(str(val.target or ""))
                if not known:
                    diags.warning("NM320", f"class '{val.target}' is not known to this compiler; its settings are carried but not checked",
                                  key=ov.path, **where)
                new = Node(cls=cls, known=known, partial=val.partial, prov=ov.prov)
            schema.set_path(tree, ov.path, new, diags, where)
            continue
        if isinstance(val, str):
            stripped = val.strip()
            leaf = stripped.rsplit(".", 1)[-1]
            fac = knowledge.factories().get(stripped)
            if fac is not None and fac.get("short_name_rejected") and ov.prov.kind in ("cli", "yaml"):
                dotted = fac["doc"].split("::")[0].removesuffix(".py").replace("/", ".") + "." + stripped
                diags.error("NM145", f"'{ov.path}={stripped}': NeMo-Run 0.11 does not resolve the short name of this factory here "
                            f"(it is registered for run.Config[MegatronMixedPrecision], not for {ov.path}'s type): NeMo rejects "
                            "the command", key=ov.path, hint=f"write the dotted path: {ov.path}={dotted}", **where)
                continue
            if stripped in registered or ("." in stripped and leaf in knowledge.factories() and stripped.startswith("nemo.")):
                new = schema.call_factory(leaf, {}, ov.prov)
                schema.set_path(tree, ov.path, new, diags, where)
                continue
            if stripped in main_names:
                diags.warning(
                    "NM150",
                    f"'{ov.path}={stripped}': NeMo-Run first tries every value as a factory or an attribute of __main__, "
                    f"and recipe.py defines '{stripped}', so NeMo would use that object instead of the text",
                    key=ov.path, hint="rename the value or the recipe.py name", **where,
                )
        if isinstance(val, dict):
            # a mapping value without _target_ reaching here is an empty {} (plain dict)
            pass
        schema.set_path(tree, ov.path, Knob(value=val, prov=ov.prov), diags, where, op=ov.op)


def _check_launch(job: Job, launch: Launch | None, diags: Diagnostics) -> None:
    if launch is None:
        return
    devices = job.knob("trainer.devices")
    if launch.nproc_per_node is not None and devices is not None and isinstance(devices.value, int) and not (devices.prov.detail or "").startswith("--nproc"):
        if devices.value != launch.nproc_per_node:
            diags.warning(
                "NM151",
                f"torchrun starts {launch.nproc_per_node} processes per node but the recipe sets trainer.devices={devices.value} ({devices.prov}); "
                "Lightning rejects the mismatch",
                **(launch.nproc_prov.where() if launch.nproc_prov else {}),
                hint="the migration uses trainer.devices; pass --nproc-per-node to choose",
            )
    nodes = job.knob("trainer.num_nodes")
    if launch.nnodes is not None and nodes is not None and nodes.value != launch.nnodes:
        diags.warning("NM151", f"torchrun --nnodes={launch.nnodes} but trainer.num_nodes={nodes.value} ({nodes.prov})",
                      **(launch.nnodes_prov.where() if launch.nnodes_prov else {}))


# ----------------------------------------------------------------------------------------------------------
# NeMo's silent adjustments (nemo/collections/llm/api.py::_validate_config, MegatronStrategy.setup)


def _set_adjusted(job: Job, path: str, value: Any, why: str) -> None:
    d = Diagnostics()
    schema.set_path(job.tree, path, Knob(value=value, prov=Provenance(kind="nemo-adjust", detail=why)), d, {})


# llm.finetune(optim=None) trains with the model's optimizer: GPTModel.__init__ sets `optim or
# MegatronOptimizerModule(config=OptimizerConfig(lr=1e-4, use_distributed_optimizer=True))` and no LR scheduler
# (NVIDIA/NeMo nemo/collections/llm/gpt/model/base.py:587 @ 8cfedd72; api.finetune: "If not provided, the default
# optimizer from the model will be used").
_MODEL_DEFAULT_OPTIM = {"_target_": "MegatronOptimizerModule",
                        "config": {"_target_": "OptimizerConfig", "lr": 1.0e-4, "use_distributed_optimizer": True}}


def adjust(job: Job, diags: Diagnostics) -> None:
    if job.tree.cls == "finetune" and not isinstance(job.tree.fields.get("optim"), Node):
        model_optim = job.get("model.optim")
        if isinstance(model_optim, Node):
            job.tree.fields["optim"] = model_optim
        else:
            prov = Provenance(kind="nemo-default", detail="GPTModel default optimizer when llm.finetune gets optim=None")
            job.tree.fields["optim"] = schema.build(_MODEL_DEFAULT_OPTIM, {}, prov)
    tp = job.value("trainer.strategy.tensor_model_parallel_size", 1)
    pp = job.value("trainer.strategy.pipeline_model_parallel_size", 1)
    sp = job.knob("trainer.strategy.sequence_parallel")
    if isinstance(job.get("trainer.strategy"), Node):
        if tp == 1 and sp is not None and sp.value:
            diags.warning("NM160", "sequence_parallel=True with tensor parallel size 1: NeMo forces it to False", key="trainer.strategy.sequence_parallel",
                          **sp.prov.where())
            _set_adjusted(job, "trainer.strategy.sequence_parallel", False, "sequence_parallel forced False when TP == 1 (api._validate_config)")
        if pp == 1:
            vpp = job.knob("trainer.strategy.virtual_pipeline_model_parallel_size")
            if vpp is not None and vpp.value is not None:
                diags.warning("NM160", "virtual pipeline size with PP == 1: NeMo forces it to None", key="trainer.strategy.virtual_pipeline_model_parallel_size",
                              **vpp.prov.where())
                _set_adjusted(job, "trainer.strategy.virtual_pipeline_model_parallel_size", None, "VPP forced None when PP == 1")
            # (_validate_config sets pipeline_dtype to None when PP == 1, but MegatronStrategy then takes the precision
            # plugin's dtype back (megatron_strategy.py:452-473, NeMo 2.7.3), so the job ends with the plugin's value)
    sched = job.get("optim.lr_scheduler")
    ms = job.knob("trainer.max_steps")
    nemo2 = not isinstance(job.get("nemo1"), Node)
    if isinstance(sched, Node) and ms is not None and (nemo_release.holds("scheduler_max_steps") or not nemo2):
        old = sched.fields.get("max_steps")
        if not (isinstance(old, Knob) and old.value == ms.value and old.prov == ms.prov):
            who = ("ModelPT.setup_optimization passes trainer.max_steps ({}) to the LR scheduler (NeMo 1.0)" if isinstance(job.get("nemo1"), Node)
                   else "MegatronStrategy.setup copies trainer.max_steps ({}) into the LR scheduler (NeMo >= 2.1.0)")
            _set_adjusted(job, "optim.lr_scheduler.max_steps", ms.value, who.format(ms.prov))


def validate(job: Job, diags: Diagnostics) -> None:
    t = job
    data = t.get("data")
    if not isinstance(data, Node):
        diags.error("NM200", "the job has no data module (`data`)", hint="set data to run.Config(llm.FineTuningDataModule, dataset_root=...)")
        return
    meta = _data_module(data, diags)
    spec = schema.spec(data.cls)
    if spec is not None and meta is not None:
        for fname, fs in spec.fields.items():
            if fs.required and fname not in data.fields:
                diags.error("NM210", f"{data.cls} is missing 1 required positional argument: '{fname}' (data.{fname})",
                            key=f"data.{fname}", hint=f"set data.{fname} in the YAML or on the command line", **data.prov.where())
    for sect in ("trainer", "optim"):
        if not isinstance(t.get(sect), Node):
            diags.error("NM200", f"the job has no '{sect}' section this compiler can read")
    if diags.has_errors:
        return
    strategy = t.get("trainer.strategy")
    if not isinstance(strategy, Node) or strategy.cls != "MegatronStrategy":
        diags.error("NM211", "trainer.strategy is not a MegatronStrategy; only Megatron-based NeMo 2 jobs are migrated",
                    **(strategy.prov.where() if isinstance(strategy, (Node, Knob)) else {}))
        return

    def k(path: str) -> Knob:
        v = t.knob(path)
        if v is None:  # e.g. data replaced by something that is not a data module
            parent = t.get(path.rsplit(".", 1)[0])
            what = f"{parent.cls}" if isinstance(parent, Node) else type(getattr(parent, "value", parent)).__name__
            diags.error("NM225", f"'{path}' is missing: {path.rsplit('.', 1)[0]} is a {what}, which has no '{path.rsplit('.', 1)[1]}'",
                        key=path, hint="data must be a NeMo data module (llm.FineTuningDataModule, llm.SquadDataModule, ...)",
                        **(parent.prov.where() if isinstance(parent, (Node, Knob)) else {}))
            raise MigrateError(diags)
        return v

    def w(*knobs: Knob) -> dict:
        for kn in knobs:
            if kn.prov.file:
                return kn.prov.where()
        return {}

    def prov_list(*knobs: Knob) -> str:
        return "; ".join(f"{p.split('.')[-1]}={kn.value} ({kn.prov})" for p, kn in knobs)  # type: ignore[misc]

    devices, nodes = k("trainer.devices"), k("trainer.num_nodes")
    tp, pp, cp = k("trainer.strategy.tensor_model_parallel_size"), k("trainer.strategy.pipeline_model_parallel_size"), k("trainer.strategy.context_parallel_size")
    gbs, mbs = k("data.global_batch_size"), k("data.micro_batch_size")
    for kn, name in ((devices, "trainer.devices"), (nodes, "trainer.num_nodes"), (tp, "TP"), (pp, "PP"), (cp, "CP"), (gbs, "global_batch_size"), (mbs, "micro_batch_size")):
        if not isinstance(kn.value, int) or isinstance(kn.value, bool) or kn.value < 1:
            diags.error("NM212", f"{name} must be a positive integer, found {kn.value!r} ({kn.prov})", **w(kn),
                        hint="trainer.devices='auto' cannot be migrated; pass --nproc-per-node N" if name == "trainer.devices" else None)
    if diags.has_errors:
        return
    world = devices.value * nodes.value
    model_par = tp.value * pp.value * cp.value
    if world % model_par:
        diags.error(
            "NM213",
            f"Number of GPUs must be divisible by the product of all parallelism sizes for data parallel: world {world} "
            f"(devices {devices.value} ({devices.prov}) x nodes {nodes.value}) vs TP {tp.value} ({tp.prov}) x PP {pp.value} x CP {cp.value}",
            hint=f"lower trainer.strategy.tensor_model_parallel_size to a divisor of {world // (pp.value * cp.value) if world % (pp.value * cp.value) == 0 else world}, "
                 "or raise the GPU count",
            **w(tp, devices),
        )
        return
    dp = world // model_par
    if gbs.value % mbs.value:
        diags.error("NM214", f"global_batch_size {gbs.value} ({gbs.prov}) is not divisible by micro_batch_size {mbs.value} ({mbs.prov})", **w(gbs, mbs))
    elif gbs.value % (mbs.value * dp):
        diags.error("NM214", f"global_batch_size {gbs.value} ({gbs.prov}) is not divisible by micro_batch_size x data-parallel size = "
                    f"{mbs.value} x {dp} (DP = {world} GPUs / (TP {tp.value} x PP {pp.value} x CP {cp.value}))", **w(gbs, mbs))
    seq = t.knob("data.seq_length")
    if cp.value > 1 and seq is not None and isinstance(seq.value, int) and seq.value % (2 * cp.value):
        diags.error("NM215", f"with context parallel {cp.value}, seq_length {seq.value} ({seq.prov}) must be divisible by 2 x CP", **w(seq, cp))
    if cp.value > 1 and meta.get("finetuning") and not t.value("model.config.calculate_per_token_loss"):
        ptl = t.knob("model.config.calculate_per_token_loss")
        diags.error("NM215", f"context parallel {cp.value} ({cp.prov}) with {data.cls} needs model.config.calculate_per_token_loss=True "
                    "(NeMo's _validate_config asserts it)", hint="set model.config.calculate_per_token_loss=True", **w(cp, *( [ptl] if ptl else [])))
    if pp.value > 1 and t.value("trainer.strategy.pipeline_dtype") is None:
        diags.error("NM216", "pipeline parallelism needs trainer.strategy.pipeline_dtype", **w(pp))
    ep = k("trainer.strategy.expert_model_parallel_size")
    experts = t.value("model.config.num_moe_experts")
    if isinstance(ep.value, int) and ep.value > 1 and isinstance(experts, int) and experts % ep.value:
        diags.error("NM217", f"num_moe_experts {experts} is not divisible by expert parallel size {ep.value} ({ep.prov})", **w(ep))
    specs = t.get("data.packed_sequence_specs")
    if isinstance(specs, Node):
        size = schema.value(specs, "packed_sequence_size", -1)
        if isinstance(size, int) and size > 0 and mbs.value != 1:
            diags.error("NM218", f"packed sequences require micro_batch_size 1, found {mbs.value} ({mbs.prov})",
                        hint=f"NeMo suggests micro_batch_size=1 and global_batch_size={gbs.value // mbs.value}", **w(mbs))
    _validate_template(t, diags)
    if meta.get("kind") == "megatron":
        _validate_megatron(t, data, diags)
    tm = t.knob("peft.target_modules")
    if tm is not None and not (isinstance(tm.value, list) and all(isinstance(x, str) for x in tm.value)):
        diags.error("NM227", f"peft.target_modules must be a list of module names, found {tm.value!r} ({tm.prov})", key="peft.target_modules",
                    hint="e.g. ['linear_qkv', 'linear_proj', 'linear_fc1', 'linear_fc2']", **w(tm))
    mcs = t.knob("model.config.seq_length")
    if seq is not None and mcs is not None and mcs.value != seq.value and mcs.prov.kind != "nemo-default":
        diags.warning(
            "NM219",
            f"model.config.seq_length {mcs.value} ({mcs.prov}) differs from data.seq_length {seq.value} ({seq.prov}); "
            "the data module's length is what trains (replacing recipe.data does not touch the model config)",
            key="model.config.seq_length", **w(seq, mcs),
        )
    ms = t.knob("trainer.max_steps")
    if ms is not None and isinstance(ms.value, int) and ms.value <= 0:
        diags.error("NM220", f"trainer.max_steps={ms.value} ({ms.prov}): NeMo's fine-tuning data module sizes the train set from "
                    "max_steps, so a step count is required", **w(ms))


_DATA_HINT = ("convert the data to JSONL ({\"input\": ..., \"output\": ...} per line; training.jsonl and validation.jsonl in one "
              "folder) and use run.Config(llm.FineTuningDataModule, dataset_root=<folder>), or write the Automodel dataset: "
              "section by hand")


def _data_module(data: Node, diags: Diagnostics) -> dict | None:
    """How the rule table maps the job's data module (its `data:` entry in mappings/nemo2/classes.yaml), or None after
    an error: a class the table does not know (a user's own DataModule, whose data cannot be known without running
    it) or a NeMo data module that cannot be migrated."""
    meta = (knowledge.classes().get(data.cls) or {}).get("data") if data.known else None
    where = data.prov.where()
    if meta is None:
        what = (f"'{data.cls}' is not a data module this compiler knows (your own class, or one NeMo does not ship): what "
                "data it produces cannot be known without running it" if not data.known else
                f"data is a {data.cls}, which is not a data module")
        diags.error("NM260", f"{what}; the job cannot be migrated", key="data._target_", hint=_DATA_HINT, **where)
        return None
    if meta.get("refuse"):
        diags.error("NM261", f"{data.cls} cannot be migrated to Automodel 0.7: {meta['refuse']}", key="data._target_",
                    hint=meta.get("hint") or _DATA_HINT, **where)
        return None
    return meta


def _validate_megatron(t: Job, data: Node, diags: Diagnostics) -> None:
    """PreTrainingDataModule.__init__/build's own checks (NeMo 2.7.3 gpt/data/pre_training.py)."""
    paths = t.knob("data.paths")
    where = (paths.prov.where() if paths is not None else {}) or data.prov.where()

    def prefixes(v: Any) -> list:  # the dataset prefixes of a path, a list (weights dropped) or a dict of them
        if isinstance(v, dict):
            return [p for x in v.values() for p in prefixes(x)]
        if isinstance(v, (list, tuple)):
            weighted = len(v) % 2 == 0 and all(isinstance(w, (int, float)) or _is_number(w) for w in v[::2])
            return list(v[1::2] if weighted and v else v)
        return [v]

    found = prefixes(paths.value) if paths is not None else None
    bad = [p for p in found or [] if not isinstance(p, str)]
    if found is not None and (bad or not found):
        what = f"{bad[0]!r} is not a path: NeMo raises 'Expected path to be of string or Path type' (pre_training.py:86-87)" if bad \
            else "no dataset prefix to read"
        diags.error("NM262", f"PreTrainingDataModule paths={paths.value!r} ({paths.prov}): {what}", key="data.paths",
                    hint="dataset prefixes as strings, optionally preceded by weights: ['30', '/data/a_text_document', '70', '/data/b_text_document']",
                    **where)
        return
    if paths is not None and isinstance(paths.value, dict):
        missing = [k for k in ("train", "validation", "test") if k not in paths.value]
        if missing:
            diags.error("NM262", f"PreTrainingDataModule paths={paths.value!r} ({paths.prov}) has no {', '.join(map(repr, missing))} key: "
                        "NeMo reads paths['train'], paths['validation'] and paths['test'] (pre_training.py:217-221)",
                        key="data.paths", hint="give all three splits, or a list of (weight, prefix) entries with data.split", **where)
        return
    lvb = t.knob("trainer.limit_val_batches")
    v = 1.0 if lvb is None or lvb.value is None else lvb.value
    if isinstance(v, float) and 0.0 < v <= 1.0:
        shown = f"{v} ({lvb.prov})" if lvb is not None and lvb.value is not None else "None (Lightning's 1.0)"
        diags.error("NM263", f"PreTrainingDataModule with one blend of paths and trainer.limit_val_batches={shown}: NeMo's "
                    "PreTrainingDataModule.build asserts that a fraction <= 1.0 is only used with separate train/validation/test "
                    "paths (pre_training.py:310-324), so the NeMo job fails", key="trainer.limit_val_batches",
                    hint="set trainer.limit_val_batches to a number of batches (NeMo's pretrain recipes use 32), or give paths as a "
                         "dict with train, validation and test", **((lvb.prov.where() if lvb is not None else {}) or where))
    nts, ms, gbs = t.knob("data.num_train_samples"), t.knob("trainer.max_steps"), t.knob("data.global_batch_size")
    if nts is not None and isinstance(nts.value, int) and ms is not None and gbs is not None and \
            isinstance(ms.value, int) and isinstance(gbs.value, int) and nts.value < ms.value * gbs.value:
        diags.error("NM264", f"num_train_samples={nts.value} ({nts.prov}) is below max_steps x global_batch_size = {ms.value} x {gbs.value}: "
                    "NeMo's PreTrainingDataModule.build asserts it is not (pre_training.py:288-291)", key="data.num_train_samples",
                    **(nts.prov.where() or where))


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _validate_template(t: Job, diags: Diagnostics) -> None:
    dk = t.get("data.dataset_kwargs")
    data = t.get("data")
    meta = (knowledge.classes().get(data.cls) or {}).get("data") or {} if isinstance(data, Node) else {}
    if not isinstance(data, Node) or meta.get("kind") not in ("sft", "squad", "files") or schema.value(data, "chat", False):
        return
    vals: dict[str, Knob] = {}
    for name in ("prompt_template", "label_key", "truncation_field"):
        kn = dk.fields.get(name) if isinstance(dk, Node) else None
        if kn is None and isinstance(dk, Knob) and isinstance(dk.value, dict) and name in dk.value:
            kn = Knob(value=dk.value[name], prov=dk.prov)
        if kn is None:
            kn = schema.default_knob(Node(cls="dict", prov=Provenance(kind="nemo-default")), name)
            kn = Knob(value=kn.value, prov=Provenance(kind="nemo-default", detail=f"create_sft_dataset.{name}"))
        vals[name] = kn
    tmpl, label, trunc = vals["prompt_template"], vals["label_key"], vals["truncation_field"]
    if not isinstance(tmpl.value, str) or not isinstance(label.value, str):
        return
    keys = re.findall(r"{(\w+)}", tmpl.value)
    where = tmpl.prov.where() or label.prov.where()
    if not tmpl.value.endswith("{" + label.value + "}"):
        diags.error(
            "NM221",
            f"prompt_template {tmpl.value!r} ({tmpl.prov}) must end with the label placeholder {{{label.value}}} "
            f"(label_key={label.value!r}, {label.prov}); GPTSFTDataset asserts this",
            hint=f"set data.dataset_kwargs.label_key to the last placeholder ({keys[-1]!r})" if keys else None,
            key="data.dataset_kwargs.prompt_template", **where,
        )
    if isinstance(trunc.value, str):
        for f in [x.strip() for x in trunc.value.split(",") if x.strip()]:
            if f not in keys:
                diags.error("NM222", f"truncation_field {f!r} ({trunc.prov}) is not a placeholder of prompt_template {tmpl.value!r}",
                            hint=did_you_mean(f, keys), key="data.dataset_kwargs.truncation_field", **(trunc.prov.where() or where))

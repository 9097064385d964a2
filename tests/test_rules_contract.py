"""The rule contract: rows are typed (a misspelt key is an error naming the row), a transform writes only the paths
its row declares, launch facts are typed values with rule and provenance, transforms come from one registry, and
NeMo's defaults have one home (mappings/nemo2/classes.yaml)."""
from __future__ import annotations

import copy

import pytest

from nemo_migrate import knowledge, rules
from nemo_migrate.diagnostics import Diagnostics
from nemo_migrate.ir import Knob, LaunchPlan, Node, Provenance
from nemo_migrate.rules import engine
from nemo_migrate.rules.table import RuleTableError, parse
from nemo_migrate.rules.context import Ctx, Registry, RuleBug
from nemo_migrate.rules.transforms import TRANSFORMS, home

import test_rules

ROW = {"id": "TST001", "sources": ["a.b"], "target": ["x.y", "launch.nnodes"], "status": "exact", "reason": "r", "fact": "f",
       "test": {"expect": {"x.y": 1}}}


def _row(**changes):
    r = copy.deepcopy(ROW)
    r.update(changes)
    return r


def test_a_misspelt_key_names_the_row_and_the_key():
    bad = _row(defualts=["a.b"])
    with pytest.raises(RuleTableError, match=r"rule TST001: unknown key 'defualts' \(did you mean 'defaults'\?\)"):
        parse([bad])
    with pytest.raises(RuleTableError, match=r"rule TST001: unknown key 'test.expcet'"):
        parse([_row(test={"expcet": {"x.y": 1}})])
    with pytest.raises(RuleTableError, match=r"rule TST001: 'status'"):
        parse([_row(status="exactly")])
    with pytest.raises(RuleTableError, match="duplicate rule ids"):
        parse([ROW, ROW])


def test_the_shipped_table_parses_and_keeps_what_rows_say():
    raw = {r["id"]: r for r in knowledge.rules()}
    for r in rules.table():
        t = raw[r.id].get("target") or []
        assert r.targets == tuple([t] if isinstance(t, str) else t)
        assert r.test == raw[r.id]["test"], r.id  # `explain` prints the case as written
    assert parse([_row(target="x.y")])[0].targets == ("x.y",)


def _ctx(rule_row: dict) -> Ctx:
    job = type("Job", (), {"tree": Node(cls="finetune", prov=Provenance(kind="recipe.py", file="recipe.py", line=1)),
                            "model_override": None, "launch_env": {}, "data_dir": None, "recipe_info": None})()
    ctx = Ctx(job=job, knobs={"a.b": Knob(value=4, prov=Provenance(kind="yaml", file="c.yaml", line=3))}, diags=Diagnostics())
    ctx.rule = parse([rule_row])[0]
    return ctx


def test_set_refuses_a_path_the_row_does_not_declare():
    ctx = _ctx(ROW)
    ctx.set("x.y", 1, "a.b")
    ctx.set("x.y.z", 2, "a.b")  # under a declared path
    assert ctx.targets["x.y"].rule == "TST001" and str(ctx.targets["x.y"].provs[0]) == "c.yaml:3"
    with pytest.raises(RuleBug, match=r"rule TST001 writes x\.q, which its target column .* does not declare"):
        ctx.set("x.q", 1)
    with pytest.raises(RuleBug, match="TST001 writes x"):
        ctx.unset("x")  # removing is writing too
    with pytest.raises(RuleBug, match="launch.nproc_per_node"):
        ctx.set("launch.nproc_per_node", 8)


def test_launch_facts_are_typed_values_with_rule_and_provenance():
    ctx = _ctx(_row(target=["launch.nnodes", "launch.bogus", "launch.sbatch"]))
    ctx.set("launch.nnodes", 4, "a.b")
    assert ctx.launch.nnodes == 4 and ctx.launch.origin["nnodes"].rule == "TST001"
    assert [str(p) for p in ctx.launch.origin["nnodes"].provs] == ["c.yaml:3"] and ctx.launch.where["a.b"].line == 3
    assert ctx.written == ["run.sh"]  # the knob's outcome names the script the fact lands in
    with pytest.raises(RuleBug, match="launch.bogus, which is not a launch fact"):
        ctx.set("launch.bogus", 1)
    with pytest.raises(Exception):  # pydantic refuses a value of the wrong type
        ctx.set("launch.sbatch", "--partition=x")
    plan = LaunchPlan(executor="slurm", cpus_per_task=8, sbatch=[("partition", "batch")])
    assert plan.sbatch_lines() == [("cpus-per-task", "8"), ("partition", "batch")]
    assert plan.script("env") == "sbatch.sh" and plan.script("nnodes") == "run.sh" and "c10d" in plan.rendezvous
    assert LaunchPlan().rendezvous == "standalone"


def test_one_registry_of_transforms():
    assert {r.transform for r in rules.table() if r.transform} <= set(TRANSFORMS)
    assert home("weight_decay") == "nemo_migrate/rules/transforms/optim.py"
    reg = Registry()
    reg(test_one_registry_of_transforms)
    with pytest.raises(RuleBug, match="registered twice"):
        reg(test_one_registry_of_transforms)


def test_nemo_defaults_come_from_the_class_tables():
    assert rules.nemo_default("OptimizerConfig.weight_decay") == 0.01  # megatron/core/optimizer/optimizer_config.py:162
    assert rules.nemo_default("OptimizerConfig.adam_eps") == 1e-8
    assert rules.nemo_default("LoRA.dim") == 32
    with pytest.raises(RuleBug, match="no NeMo default for OptimizerConfig.adam_epsilon"):
        rules.nemo_default("OptimizerConfig.adam_epsilon")
    # a custom optimizer config has no NeMo default of its own: the placeholder AdamW gets NeMo's OptimizerConfig one
    conv = test_rules.run_case({"set": ["optim.config=Config[mypkg.MyOptimizerConfig]", "optim.config.foo=1"]})
    assert conv.variants[0].targets["optimizer.weight_decay"].value == 0.01


def test_nemo1_defaults_live_in_the_lowering_table():
    defaults = knowledge.load("nemo1/lowering.yaml")["defaults"]
    conv = test_rules.run_case({"factory": "nemo1"})
    t = conv.variants[0].targets
    assert t["optimizer.eps"].value == defaults["optim.config.adam_eps"]["value"]
    assert str(t["optimizer.eps"].provs[0]) == f"NeMo default ({defaults['optim.config.adam_eps']['why']})"


def _row_fails(row_id: str) -> None:
    row = rules.by_id()[row_id]
    with pytest.raises((AssertionError, RuleBug)):
        test_rules.test_rule_row(row)


def test_par008s_case_fails_without_par008(monkeypatch):
    fns = dict(engine.transforms())
    fns["PAR008"] = lambda ctx: None  # PAR008 writes nothing: the launch plan keeps its defaults
    monkeypatch.setattr(engine, "transforms", lambda: fns)
    _row_fails("PAR008")


def test_a_row_that_writes_an_undeclared_path_fails_its_case(monkeypatch):
    shrunk = tuple(r.model_copy(update={"targets": tuple(t for t in r.targets if t != "dataloader.shuffle")}) if r.id == "DAT010" else r
                   for r in rules.table())
    monkeypatch.setattr(engine, "table", lambda: shrunk)
    _row_fails("DAT010")

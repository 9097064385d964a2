"""NeMo 1.0's Hydra overrides and OmegaConf interpolations are read by Hydra's and OmegaConf's own code (issue 17,
item 9), each value keeping its provenance; the real libraries are the oracle here. Resolvers never run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from nemo_migrate.diagnostics import Diagnostics
from nemo_migrate.ir import Provenance
from nemo_migrate.sources import nemo1
from nemo_migrate.sources.overrides import override_key, parse_hydra_override

ROOT = Path(__file__).resolve().parents[1]
BASE = {"name": "run", "model": {"optim": {"lr": 1e-4, "sched": {"name": "Cos", "warmup": 10}}, "peft": {"dim": 8},
                                 "n": None, "m": "???", "e": {}, "files": ["/a.jsonl"]},
        "trainer": {"max_steps": 10, "devices": 1}}
YAML = Provenance(kind="yaml", file="job.yaml", line=7)


def _leaves(tree: dict) -> dict[str, nemo1.Leaf]:
    return nemo1._flatten(tree, lambda p: YAML.model_copy(update={"detail": p}))


def _tree(leaves: dict[str, nemo1.Leaf]) -> dict:
    out: dict = {}
    for path, lf in leaves.items():
        *parents, last = path.split(".")
        node = out
        for q in parents:
            node = node.setdefault(q, {})
        node[last] = lf.value
    return out


def _hydra(overrides: list[str]) -> dict | str:
    """What Hydra 1.3 itself makes of the overrides on BASE (a struct config, as Hydra composes it)."""
    cfg = OmegaConf.create(BASE)
    OmegaConf.set_struct(cfg, True)
    try:
        ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(overrides), cfg)
    except Exception as e:  # noqa: BLE001 - Hydra's refusal, compared with ours
        return f"error: {type(e).__name__}"
    return OmegaConf.to_container(cfg)


def _ours(overrides: list[str]) -> tuple[dict | str, dict[str, nemo1.Leaf]]:
    leaves = _leaves(BASE)
    d = Diagnostics()
    cli = Provenance(kind="cli", file="run.sh", line=3)
    nemo1.apply_hydra(leaves, [(o, cli) for o in overrides], d)
    return ("error: " + d.errors[0].code if d.errors else _tree(leaves)), leaves


CASES = [
    ["model.optim.lr=3e-4"], ["trainer.max_steps=yes"], ["trainer.max_steps=on"], ["trainer.max_steps="],
    ["trainer.max_steps=1_000"], ["trainer.max_steps=.5"], ["name='1e-4'"], ["name=\"a b\""], ["name=a\\,b"],
    ["model.files=[/x.jsonl,/y.jsonl]"], ["model.optim={lr:3}"], ["model.optim={lr:3,newk:1}"], ["model.e={x:1}"],
    ["model.n={x:1}"], ["+model.optim={lr:5}"], ["+model.optim.lr=5"], ["model.optim.lr={a:1}"], ["model={}"],
    ["~model.n"], ["~model.m"], ["+model.m=3"], ["model.m=3"], ["+model.n=3"], ["~model.optim.lr=1e-4"],
    ["~model.optim.lr=2"], ["~model.optim.sched"], ["~model.peft=null"], ["++x.y.z=1"], ["trainer.max_steps.x=1"],
    ["+trainer.max_steps.x=1"], ["++trainer.max_steps.x=1"], ["model.optim.sched=null"], ["+model.optim.sched.new=1"],
    ["~model.optim.sched={name:Cos,warmup:10}"], ["nope=1"], ["+nope=1", "nope=2"], ["~nope"], ["model.optim.lr=1,2"],
    ["model.optim.lr=choice(1,2)"], ["model@pkg=1"], ["grp/opt=1"], ["name=http://h:80/p?q=1"], ["name=x#y"],
    ["name=int(3.5)"], ["name=${model.optim.lr}"], ["name=[1,{a:2}]"], ["name"], ["model.optim.sched={warmup:{x:1}}"],
    ["model.optim=[1,2]"], ["model.files={a:1}"], ["+model.files=[3]"], ["++model.optim=null"], ["model.e={}"],
    ["+model.e={}"], ["model.optim.sched={}"], ["~model.e"], ["model.peft.dim=16", "~model.peft.dim=16"],
    ["~model.peft.dim", "+model.peft.r=4"], ["~model.peft.dim", "model.peft={r:4}"], ["model.optim=5"], ["model.files=3"],
    ["model.e=[1]"], ["++model.optim=[1]"], ["++model.files={a:1}"], ["model.m={a:1}"], ["model.m=[1]"],
    ["model.optim.sched=null", "model.optim.sched={a:1}"], ["model.optim={sched:[1]}"], ["++model.optim={sched:{a:1}}"],
]


@pytest.mark.parametrize("overrides", CASES, ids=[" ".join(c) for c in CASES])
def test_hydra_overrides_give_what_hydra_gives(overrides):
    theirs = _hydra(overrides)
    ours, _ = _ours(overrides)
    if isinstance(theirs, str):
        assert isinstance(ours, str) and ours.startswith("error: NM"), (ours, theirs)
    else:
        assert ours == theirs


def test_hydra_values_keep_their_provenance():
    _, leaves = _ours(["model.optim.lr=3e-4", "+model.optim.sched.new=1", "model.optim={lr:7}"])
    lr, new, warm = leaves["model.optim.lr"], leaves["model.optim.sched.new"], leaves["model.optim.sched.warmup"]
    assert lr.value == 7 and (lr.prov.file, lr.prov.line, lr.prov.detail) == ("run.sh", 3, "model.optim={lr:7}")
    assert new.prov.detail == "+model.optim.sched.new=1"
    assert warm.prov == YAML.model_copy(update={"detail": "model.optim.sched.warmup"})  # untouched by the merge


def test_hydra_refusals_are_located_with_the_way_out():
    d = Diagnostics()
    prov = Provenance(kind="cli", file="run.sh", line=9)
    assert parse_hydra_override("model.optim.lr=1e-4,3e-4", prov, d) is None
    assert parse_hydra_override("name=http://h/p?q=1", prov, d) is None
    assert parse_hydra_override("model@pkg=x", prov, d) is None
    assert [e.code for e in d.errors] == ["NM120"] * 3
    assert all(e.file == "run.sh" and e.line == 9 and e.hint for e in d.errors)
    assert "sweep" in d.errors[0].message and "'a,b'" in d.errors[0].hint
    ov = parse_hydra_override("~model.peft", prov, d)
    assert (ov.op, ov.key, ov.has_value) == ("delete", "model.peft", False)


# ------------------------------------------------------------------------------------------------ interpolation

INTERP = {
    "name": "llama", "seq": 2048, "flag": True, "m": "???",
    "model": {"seq": "${seq}", "rel": "${.seq}", "up": "${..seq}", "text": "/r/${name}-${seq}-${flag}",
              "files": ["${name}.jsonl", 3, "${model.seq}"], "nested": "${model.${key}}", "esc": "\\${name}",
              "chain": "${model.seq}", "tree": "${trainer}"},
    "key": "seq", "trainer": {"a": 1, "b": "${seq}"},
}


def _warnings(d: Diagnostics) -> list:
    return [x for x in d.items if x.severity == "warning"]


def _resolved(tree: dict):
    leaves = _leaves(tree)
    d = Diagnostics()
    nemo1.resolve_interpolations(leaves, d, "job.yaml")
    return leaves, d


def test_interpolations_resolve_as_omegaconf_resolves_them():
    leaves, d = _resolved(INTERP)
    assert not d.errors and not _warnings(d)
    expected = OmegaConf.to_container(OmegaConf.create(INTERP), resolve=True)
    got = _tree({p: lf for p, lf in leaves.items() if p != "m"})
    del expected["m"]
    assert got == expected
    assert leaves["model.esc"].value == "${name}" and leaves["model.files"].value == ["llama.jsonl", 3, 2048]
    assert leaves["model.up"].value == 2048 and leaves["model.nested"].value == 2048


def test_a_whole_interpolation_keeps_the_provenance_of_what_it_points_at():
    leaves, _ = _resolved(INTERP)
    seq = YAML.model_copy(update={"detail": "seq"})
    for p in ("model.seq", "model.rel", "model.chain"):
        assert leaves[p].prov == seq, p
    assert leaves["model.tree.a"].prov.detail == "trainer.a" and leaves["model.tree.b"].value == 2048
    assert leaves["model.text"].prov.detail == "model.text"  # built from several values: its own line


def test_a_value_from_the_command_line_says_which_interpolation_carried_it():
    cli = Provenance(kind="cli", file="run.sh", line=2)
    leaves = {"a": nemo1.Leaf(5, cli), "b": nemo1.Leaf("${a}", YAML), "c": nemo1.Leaf("${b}", YAML)}
    nemo1.resolve_interpolations(leaves, Diagnostics(), "job.yaml")
    assert leaves["c"].value == 5 and leaves["c"].prov.file == "run.sh" and leaves["c"].prov.detail == "via ${b} at c"


def test_interpolation_errors_are_located():
    for bad, word in (({"a": "${nope}"}, "nope"), ({"a": "${b}", "b": "${a}"}, "cycle"), ({"a": "${b"}, "not an"),
                      ({"m": "???", "a": "x${m}"}, "mandatory")):
        leaves, d = _resolved(bad)
        assert [e.code for e in d.errors][:1] == ["NM233"] and word in d.errors[0].message, (bad, d.errors)
        assert d.errors[0].file == "job.yaml" and d.errors[0].line == 7
    leaves, d = _resolved({"m": "???", "a": "${m}"})
    assert not d.errors and leaves["a"].value == nemo1.MANDATORY  # reported later as NM230, like the value it names


def test_odd_inputs_are_diagnostics_not_tracebacks():
    leaves = {f"k{i}": nemo1.Leaf("${k%d}" % (i + 1), YAML) for i in range(2500)}
    leaves["k2500"] = nemo1.Leaf(1, YAML)
    d = Diagnostics()
    nemo1.resolve_interpolations(leaves, d, "job.yaml")  # deeper than Python's recursion limit, in linear time
    assert not d.errors and leaves["k0"].value == 1 and leaves["k0"].prov == YAML
    d = Diagnostics()
    for text in ("", "=", "~", "++", "a=b=c", "a=${", "a=\x00", "é=1", "a=[1,", "a={b:}", "a=' ", "~a=b=c"):
        leaves = _leaves(BASE)
        nemo1.apply_hydra(leaves, [(text, Provenance(kind="cli", file="run.sh", line=1))], d)
    assert d.errors and {e.code for e in d.errors} <= {"NM120", "NM231"}


def test_resolvers_never_read_this_machines_environment(monkeypatch):
    monkeypatch.setenv("NM_TEST_SECRET", "leaked")
    tree = {"a": "${oc.env:NM_TEST_SECRET}", "b": "${a}", "c": "x-${oc.env:NM_TEST_SECRET,d}", "n": 1,
            "e": "${oc.decode:'1'}"}
    leaves, d = _resolved(tree)
    assert not d.errors and sorted(w.key for w in _warnings(d)) == ["a", "c", "e"]
    assert all(w.code == "NM232" for w in _warnings(d))
    assert leaves["a"].value == "${oc.env:NM_TEST_SECRET}" and leaves["b"].value == "${oc.env:NM_TEST_SECRET}"
    assert leaves["c"].value == "x-${oc.env:NM_TEST_SECRET,d}"
    assert not any("leaked" in str(lf.value) for lf in leaves.values())


def test_hydra_and_omegaconf_load_only_for_nemo1_jobs():
    code = ("import sys; from pathlib import Path; from nemo_migrate.convert import convert, Options; "
            "convert(Options(source=Path('golden/seed/input'))); "
            "bad = [m for m in ('hydra', 'omegaconf', 'antlr4') if m in sys.modules]; assert not bad, bad; "
            "convert(Options(source=Path('golden/nemo1-lora-hydra/input'))); "
            "assert 'hydra' in sys.modules and 'omegaconf' in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_typing_fixes_against_the_old_yaml_reading():
    """What Hydra's grammar types differently from YAML 1.1 (the hand-written reader this replaced)."""
    d = Diagnostics()
    prov = Provenance(kind="cli", file="run.sh", line=1)
    vals = {t: parse_hydra_override(f"k={t}", prov, d).value for t in ("yes", "on", "2020-01-01", "", "1e-4", "nan")}
    assert vals["yes"] == "yes" and vals["on"] == "on" and vals["2020-01-01"] == "2020-01-01" and vals[""] == ""
    assert vals["1e-4"] == 1e-4 and math.isnan(vals["nan"]) and not d.errors


def test_override_key_of_every_form():
    forms = ("a.b=1", "a.b+=1", "a.b*=2", "+a.b=1", "++a.b=1", "~a.b", "~a.b=3", "a.b=$X", "a.b = 1")
    assert {override_key(f) for f in forms} == {"a.b"}

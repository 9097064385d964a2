"""NeMo-Run's own export of a built job (`--to-yaml`) as a source format, checked against real NeMo 2.7.3.

The fixtures under tests/fixtures/nemorun_export/ were written by real nemo-toolkit 2.7.3 + nemo-run 0.11.1 through
NeMo-Run's CLI code path (tools/nemo_oracle/make_fixtures.py; each COMMAND file holds the command and versions).
(i) detection and reading, malformed files; (ii) every golden NeMo 2 job: converting NeMo's export gives the same
Automodel values as converting the job itself; (iii) plain `nemo llm finetune --factory X` exports against
`nemo-migrate convert --factory X --set ...`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_migrate.convert import Options, convert
from nemo_migrate.diagnostics import Diagnostics, MigrateError
from nemo_migrate.ir import Knob, Node, plain
from nemo_migrate.sources.nemorun_export import guess_recipe, is_export, read_export

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "nemorun_export"
SEED_EXPORT = FIX / "seed-fp16" / "job.yaml"

# fixture -> (golden case, variant, extra `nemo-migrate convert` arguments from golden/<case>/args)
GOLDEN = {
    "seed-fp16": ("seed", "fp16", []),
    "seed-fp8": ("seed", "fp8", []),
    "llama3-8b-full-ft": ("llama3-8b-full-ft", None, []),
    "llama31-70b-pp-cp": ("llama31-70b-pp-cp", None, []),
    "llama32-1b-squad-packed-dora": ("llama32-1b-squad-packed-dora", None, []),
    "phi3-lora-fp8-partial": ("phi3-lora-fp8-partial", None, []),
    "qwen25-7b-cli-overrides": ("qwen25-7b-cli-overrides", None, ["data.global_batch_size=32"]),
    "slurm-chat-qwen": ("slurm-chat-qwen", None, []),
}
# `nemo llm finetune --factory NAME ARGS` (the same table as tools/nemo_oracle/make_fixtures.py)
PLAIN = {
    "llama3_8b": [],
    "llama31_8b": ["peft=none"],
    "llama32_1b": ["trainer.max_steps=100"],
    "llama31_70b": [],
    "qwen25_7b": ["peft=none"],
    "mistral_7b": [],
    "gemma2_9b": [],
    "phi3_mini_4k_instruct": ["peft=none"],
    "mixtral_8x7b": [],
    "nemotron3_8b": [],
}
# comparisons where this compiler's NeMo knowledge and real NeMo 2.7.3 disagree (none left: `peft=none` is None, as in
# nemo_run/cli/cli_parser.py, since the schema reads 'none'/'null' case-insensitively)
XFAIL: dict[str, str] = {}
# golden jobs whose command real NeMo 2.7.3 refuses (COMMAND records NeMo's message): convert names it (NM117)
_PEFT_STR = ("NeMo 2.7.3's llm/peft/lora.py has `from __future__ import annotations`, so NeMo-Run 0.11.1 sees the string "
             "annotation 'int' / 'list[str]' and rejects every peft.* value from --yaml or the command line "
             "(`Failed to parse '8' as int: Unsupported type: int`); nemo-migrate accepts them")
REFUSED = {"seed-fp16": _PEFT_STR, "seed-fp8": _PEFT_STR, "qwen25-7b-cli-overrides": _PEFT_STR}


def _targets(opts: Options, variant: str | None = None) -> dict:
    conv = convert(opts)
    vs = [v for v in conv.to_json()["variants"] if variant is None or v["name"] == variant]
    assert len(vs) == 1, [v["name"] for v in conv.to_json()["variants"]]
    return json.loads(json.dumps({p: t["value"] for p, t in vs[0]["targets"].items()}, default=str))


def _differences(a: dict, b: dict) -> list[str]:
    return [f"{k}: {a.get(k, '<absent>')!r} != {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _read(text: str, tmp_path: Path, name: str = "job.yaml") -> tuple[Node | None, Diagnostics]:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    d = Diagnostics()
    return read_export(p, name, d), d


def _errors(d: Diagnostics) -> list:
    return [x for x in d.items if x.severity == "error"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_migrate.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


HEAD = "_partial_: true\n_target_: nemo.collections.llm.api.finetune\n"


# ---------------------------------------------------------------------------------------------- (i) detection


def test_detects_exports_and_nothing_else(tmp_path):
    assert is_export(SEED_EXPORT)
    assert not is_export(ROOT / "golden/seed/input/config-fp16.yaml")  # a --yaml handed to a factory
    assert not is_export(ROOT / "golden/nemo1-lora-hydra/input/conf/megatron_gpt_finetuning_config.yaml") \
        if (ROOT / "golden/nemo1-lora-hydra/input/conf/megatron_gpt_finetuning_config.yaml").exists() else True
    for text in ("", "- a\n", "a: [1\n", "_target_: [1]\n", "\x00\x01binary"):
        p = tmp_path / "x.yaml"
        p.write_text(text, encoding="utf-8")
        assert not is_export(p), text
    assert not is_export(tmp_path / "missing.yaml")
    section = tmp_path / "model.yaml"
    section.write_text("_target_: nemo.collections.llm.gpt.model.llama.LlamaModel\n", encoding="utf-8")
    assert is_export(section)  # routed to the export reader, which says it is a section


def test_json_and_toml_forms(tmp_path):
    fmt = FIX / "llama32_1b-formats"
    for name in ("job.json", "job.toml"):
        assert is_export(fmt / name), name
    d = Diagnostics()
    y = read_export(fmt / "job.yaml", "job.yaml", d)
    j = read_export(fmt / "job.json", "job.json", d)
    t = read_export(fmt / "job.toml", "job.toml", d)
    assert not _errors(d), d.items
    assert [(x.code, x.file) for x in d.items] == [("NM192", "job.toml")]  # TOML drops None: said once

    def leaves(n: Node) -> dict:
        return {p: plain(k.value) for p, k in n.walk() if isinstance(k, Knob)}

    assert leaves(y) == leaves(j)
    # TOML cannot hold None: toml.dumps drops those keys, everything else is the same
    ly, lt = leaves(y), leaves(t)
    assert {k: v for k, v in ly.items() if v is not None} == lt
    assert t.get("trainer.max_steps").prov.line is not None and t.get("trainer.max_steps").prov.file == "job.toml"
    assert j.get("trainer.max_steps").prov.line > 1


def test_reads_the_seed_export_into_the_ir():
    d = Diagnostics()
    tree = read_export(SEED_EXPORT, "job.yaml", d)
    assert not _errors(d), d.items
    assert tree.cls == "finetune" and tree.partial
    assert tree.get("model").cls == "LlamaModel" and tree.get("model.config").cls in ("ModelConfig", "Llama31Config70B")
    assert tree.get("model.config").known and tree.get("model.config").prov.detail == "run.Config(Llama31Config70B)"
    assert tree.get("data").cls == "FineTuningDataModule" and tree.get("data.dataset_kwargs").cls == "dict"
    assert tree.get("peft").cls == "LoRA" and tree.get("peft.dim").value == 8
    assert tree.get("trainer.plugins.params_dtype").value == "torch.bfloat16"  # {_target_: torch.bfloat16, _call_: false}
    min_lr = tree.get("optim.lr_scheduler.min_lr")
    assert min_lr.value == 0.0 and isinstance(min_lr.value, float)  # written `0`, typed by CosineAnnealingScheduler
    cbs = tree.get("trainer.callbacks").value
    assert [c.cls for c in cbs] == ["TimingCallback"]
    lines = SEED_EXPORT.read_text().splitlines()
    for path, knob in tree.walk():
        if isinstance(knob, Knob):
            assert knob.prov.kind == "yaml" and knob.prov.file == "job.yaml" and knob.prov.line, path
            assert lines[knob.prov.line - 1].strip().startswith(path.rsplit(".", 1)[-1] + ":"), path
    assert guess_recipe(tree) == "llama31_70b"


def test_aliases_are_expanded(tmp_path):
    tree, d = _read(HEAD + "data: &d\n  _target_: nemo.collections.llm.gpt.data.squad.SquadDataModule\n  seq_length: 512\n"
                    "log:\n  _target_: nemo.lightning.nemo_logger.NeMoLogger\n  extra_loggers: [*d]\n", tmp_path)
    assert not _errors(d)
    assert tree.get("log.extra_loggers").value[0].cls == "SquadDataModule"


BAD = {
    # name: (text, code, line of the error)
    "pretrain": ("_partial_: true\n_target_: nemo.collections.llm.api.pretrain\n", "NM193", 2),
    "section": ("_target_: nemo.collections.llm.gpt.model.llama.LlamaModel\nconfig:\n  _target_: x.Llama3Config8B\n", "NM194", 1),
    "lazy": ("_factory_: llama32_1b\n_target_: llm finetune llama32_1b job.yaml\npeft: none\n", "NM194", 2),
    "not-partial": ("_target_: nemo.collections.llm.api.finetune\n", "NM191", 1),
    "unknown-data": (HEAD + "data:\n  _target_: my.pkg.MyDataModule\n  seq_length: 8\n", "NM196", 4),
    "unknown-peft": (HEAD + "peft:\n  _target_: my.pkg.MyAdapter\n", "NM196", 4),
    "unknown-param": (HEAD + "trainer:\n  _target_: nemo.lightning.pytorch.trainer.Trainer\n  max_stepz: 3\n", "NM198", 5),
    "bad-type": (HEAD + "trainer:\n  _target_: nemo.lightning.pytorch.trainer.Trainer\n  max_steps: many\n", "NM199", 5),
    "call-true": (HEAD + "trainer:\n  _target_: nemo.lightning.pytorch.trainer.Trainer\n  plugins:\n    _target_: "
                  "nemo.lightning.pytorch.plugins.mixed_precision.MegatronMixedPrecision\n    params_dtype: {_target_: torch.bfloat16, _call_: true}\n",
                  "NM195", 7),
    "target-not-str": (HEAD + "data:\n  _target_: [1, 2]\n", "NM195", 4),
    "python-tag": (HEAD + "trainer: !!python/object:os.system {}\n", "NM190", 3),
    "duplicate": (HEAD + "peft: null\npeft: null\n", "NM190", 4),
    "syntax": (HEAD + "data: [1,\n", "NM190", None),
    "top-list": ("- 1\n", "NM191", 1),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_exports_give_located_errors(name, tmp_path):
    text, code, line = BAD[name]
    tree, d = _read(text, tmp_path)
    errs = _errors(d)
    assert errs and tree is None or any(e.code == code for e in errs), d.items
    e = next(e for e in errs if e.code == code)
    assert e.file == "job.yaml"
    if line is not None:
        assert e.line == line, e
    else:
        assert e.line is not None
    assert e.hint or code in ("NM190", "NM198", "NM199", "NM195")


def test_unknown_class_outside_the_training_is_a_warning(tmp_path):
    tree, d = _read(HEAD + "trainer:\n  _target_: nemo.lightning.pytorch.trainer.Trainer\n  callbacks:\n"
                    "  - _target_: my.pkg.ProgressPrinter\n    every: 5\n", tmp_path)
    assert not _errors(d) and [x.code for x in d.items] == ["NM197"] and d.items[0].line == 6
    assert tree.get("trainer.callbacks").value[0].known is False


def test_toml_syntax_error_and_alias_bomb_are_located(tmp_path):
    _, d = _read('_target_ = "nemo.collections.llm.api.finetune"\n_partial_ = true\n[trainer\n', tmp_path, "job.toml")
    assert _errors(d)[0].line == 3 and _errors(d)[0].file == "job.toml"
    bomb = HEAD + "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
                                                              for p, c in zip("abcdefg", "bcdefgh"))
    _, d = _read(bomb, tmp_path)
    assert _errors(d) and _errors(d)[0].code == "NM190" and _errors(d)[0].line


@pytest.mark.parametrize("name", ["pretrain", "section", "unknown-data", "python-tag", "syntax"])
def test_cli_reports_malformed_exports_without_traceback(name, tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(BAD[name][0], encoding="utf-8")
    r = _cli("convert", p)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout and "internal error" not in (r.stderr + r.stdout).lower()
    assert f"job.yaml:" in r.stderr + r.stdout and BAD[name][1] in r.stderr + r.stdout


def test_set_applies_on_top_of_an_export(tmp_path):
    base = _targets(Options(source=SEED_EXPORT))
    edited = _targets(Options(source=SEED_EXPORT, sets=["trainer.max_steps=77"]))
    assert base["step_scheduler.max_steps"] == 30 and edited["step_scheduler.max_steps"] == 77


def test_export_needs_no_recipe(tmp_path):
    d = tmp_path / "job"
    d.mkdir()
    (d / "job.yaml").write_text(SEED_EXPORT.read_text(), encoding="utf-8")
    r = _cli("convert", d, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["variants"][0]["factory"] == "NeMo-Run export job.yaml" and out["variants"][0]["recipe"] == "llama31_70b"


# ---------------------------------------------------------------------------------------------- (ii) golden jobs


def _mark(case: str):
    return pytest.param(case, marks=pytest.mark.xfail(strict=True, reason=XFAIL[case])) if case in XFAIL else case


@pytest.mark.parametrize("case", [_mark(c) for c in GOLDEN])
def test_golden_export_converts_like_the_job(case):
    gdir, variant, sets = GOLDEN[case]
    job = FIX / case / "job.yaml"
    assert job.is_file(), f"{job}: run tools/nemo_oracle/make_fixtures.py {case}"
    ours = _targets(Options(source=ROOT / "golden" / gdir / "input", sets=sets), variant)
    nemo = _targets(Options(source=job, sets=sets))
    assert _differences(ours, nemo) == []


# ---------------------------------------------------------------------------------------------- (iii) plain recipes


@pytest.mark.parametrize("name", [_mark(n) for n in PLAIN])
def test_plain_recipe_export_converts_like_the_factory(name, tmp_path):
    job = FIX / name / "job.yaml"
    assert job.is_file(), f"{job}: run tools/nemo_oracle/make_fixtures.py {name}"
    try:
        nemo = _targets(Options(source=job))
    except MigrateError as e:  # a refusal must be located in the export
        errs = [x for x in e.diags.items if x.severity == "error"]
        assert errs and all(x.file == "job.yaml" and x.line for x in errs), [x.render() for x in errs]
        with pytest.raises(MigrateError):
            _targets(Options(source=tmp_path, factory=name, sets=PLAIN[name]))
        return
    ours = _targets(Options(source=tmp_path, factory=name, sets=PLAIN[name]))
    assert _differences(ours, nemo) == []


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_jobs_real_nemo_refuses_are_named_for_that_release(case):
    """Real NeMo 2.7.3 refuses these commands (peft.* values from --yaml/CLI, NeMo >= 2.6): convert says so at the value
    (NM117, with the release they run on), and reading the job as NeMo 2.5 raises nothing."""
    assert "real NeMo 2.7.3 refuses this command" in (FIX / case / "COMMAND").read_text()
    gdir, variant, sets = GOLDEN[case]
    conv = convert(Options(source=ROOT / "golden" / gdir / "input", sets=sets))
    warned = [d for d in conv.diags.items if d.code == "NM117"]
    assert warned and warned[0].key.startswith("peft.") and warned[0].file and "2.5" in warned[0].hint
    conv = convert(Options(source=ROOT / "golden" / gdir / "input", sets=sets, nemo_version="2.5"))
    assert not [d for d in conv.diags.items if d.code == "NM117"]


def test_refusals_recorded_by_the_oracle_are_listed():
    recorded = sorted(p.parent.name for p in FIX.glob("*/COMMAND") if "real NeMo 2.7.3 refuses" in p.read_text())
    assert recorded == sorted(REFUSED)


def test_mutated_exports_never_crash(tmp_path):
    """Random edits of real exports: read and convert end in diagnostics, never an exception."""
    import random

    rnd = random.Random(7)
    tokens = ["null", "[", "]", "{", "}", ":", "- ", "&a ", "*a", "!!set ", "_target_: ", "_call_: false", "_partial_: 1",
              "\t", "'", '"', "1e999", "x.y.Z", "\n  ", "~", "0x1", "= ", "[[a]]\n"]
    bases = [(SEED_EXPORT.read_text(), "job.yaml"), ((FIX / "llama32_1b-formats/job.toml").read_text(), "job.toml"),
             ((FIX / "llama32_1b-formats/job.json").read_text(), "job.yaml")]
    for i in range(90):
        text, name = bases[i % 3]
        lines = text.splitlines()
        for _ in range(rnd.randint(1, 4)):
            j = rnd.randrange(len(lines))
            k = rnd.randrange(len(lines[j]) + 1)
            lines[j] = lines[j][:k] + rnd.choice(tokens) + lines[j][k:]
        p = tmp_path / name
        p.write_text("\n".join(lines), encoding="utf-8")
        is_export(p)
        d = Diagnostics()
        tree = read_export(p, name, d)
        assert tree is not None or _errors(d)
        assert all(e.file == name for e in _errors(d))
        if name.endswith(".yaml"):
            try:
                convert(Options(source=p))
            except MigrateError:
                pass

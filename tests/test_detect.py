"""One answer to "what is this input?" (migrate/detect.py), used by convert, resolve and diff.

The three former copies (convert.discover, resolve.resolve, diff._kind_of) disagreed on directories (diff looked
only for recipe.py, a Hydra run.sh and *.yaml), on files with other names, and on .json/.toml; these cases pin the
unified answer, and that every stored job (goldens, real-world corpus, NeMo-Run exports) is read as it was."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nemo_migrate.convert import Options, convert
from nemo_migrate.detect import Kind, detect
from nemo_migrate.diagnostics import Diagnostics, MigrateError

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
SEED = GOLDEN / "seed" / "input"
SEED_OUT = GOLDEN / "seed" / "expected"
EXPORTS = ROOT / "tests" / "fixtures" / "nemorun_export"
CORPUS = ROOT / "tests" / "realworld"


def kind(p: Path) -> Kind:
    d = Diagnostics()
    k = detect(p, d)
    assert not d.has_errors, d.errors
    return k


@pytest.mark.parametrize("path,expected", [
    (SEED, Kind.NEMO2_DIR),
    (SEED / "recipe.py", Kind.RECIPE),
    (SEED / "config-fp16.yaml", Kind.NEMO2_YAML),
    (SEED / "run.sh", Kind.LAUNCHER),
    (SEED_OUT, Kind.AUTOMODEL_DIR),  # run.sh (Automodel's torchrun), config-*.yaml, the report
    (SEED_OUT / "config-fp16.yaml", Kind.AUTOMODEL_YAML),
    (SEED_OUT / "run.sh", Kind.UNKNOWN),  # Automodel's launcher is not a NeMo job's
    (SEED_OUT / "migration-report.md", Kind.UNKNOWN),
    (GOLDEN / "nemo1-lora-hydra" / "input", Kind.NEMO2_DIR),
    (GOLDEN / "nemo1-lora-hydra" / "input" / "conf" / "llama2_lora.yaml", Kind.NEMO1),
    (GOLDEN / "aligner-sft-chat" / "input" / "sft_chat.yaml", Kind.ALIGNER),
    (EXPORTS / "llama32_1b-formats" / "job.yaml", Kind.NEMORUN_EXPORT),
    (EXPORTS / "llama32_1b-formats" / "job.json", Kind.NEMORUN_EXPORT),
    (EXPORTS / "llama32_1b-formats" / "job.toml", Kind.NEMORUN_EXPORT),
    (ROOT / "tests" / "fixtures" / "guide", Kind.AUTOMODEL_DIR),  # the guide's hand-written Automodel job
    (CORPUS / "nemo2-tutorial-peft-llama3-8b-squad" / "input" / "nemo2-peft.ipynb", Kind.NOTEBOOK),
    (CORPUS / "aligner-docs-sft-dolly-slurm" / "input" / "sft.sbatch", Kind.LAUNCHER),
])
def test_stored_inputs(path, expected):
    assert kind(path) is expected


def test_every_golden_and_real_world_job_is_a_nemo_input_and_every_output_automodel():
    for case in sorted(p for p in GOLDEN.iterdir() if (p / "expected" / "run.sh").is_file()):
        assert kind(case / "input") is Kind.NEMO2_DIR, case.name
        assert kind(case / "expected") is Kind.AUTOMODEL_DIR, case.name
        for f in (case / "expected").glob("*.yaml"):
            assert kind(f) is Kind.AUTOMODEL_YAML, f
    nemo = {Kind.NEMO2_DIR, Kind.RECIPE, Kind.NOTEBOOK, Kind.LAUNCHER} | {Kind.NEMO2_YAML, Kind.NEMORUN_EXPORT, Kind.NEMO1, Kind.ALIGNER}
    seen = 0
    for case in sorted(p for p in CORPUS.iterdir() if (p / "case.yaml").is_file()):
        c = yaml.safe_load((case / "case.yaml").read_text())
        argv = shlex.split(c["command"])
        paths = [case / a for a in argv[1:] if a.startswith("input")]
        kinds = [kind(p) for p in paths]
        if argv[0] == "convert":
            assert kinds[0] in nemo, (case.name, kinds)
        elif "automodel" in case.name.split("-vs-")[-1]:  # diff cases name their sides: ...-vs-automodel-...
            assert kinds[-1] is Kind.AUTOMODEL_YAML, (case.name, kinds)
        seen += 1
    assert seen >= 30


@pytest.mark.parametrize("files,expected", [
    # where diff's old copy said "automodel": a recipe not named recipe.py, a .yml config, an sbatch launcher
    ({"finetune.py": "import nemo_run as run\nrun.cli.main(llm.finetune, default_factory=f)\n"}, Kind.NEMO2_DIR),
    ({"config-a.yml": "trainer:\n  max_steps: 5\n"}, Kind.NEMO2_DIR),
    ({"job.sbatch": "#!/bin/bash\n#SBATCH -N 1\nsrun nemo llm finetune --factory llama3_8b\n"}, Kind.NEMO2_DIR),
    # NeMo's side wins: a migrated config next to the NeMo job does not make it an Automodel folder
    ({"config-fp16.yaml": (SEED / "config-fp16.yaml").read_text(), "migrated.yaml": (SEED_OUT / "config-fp16.yaml").read_text()},
     Kind.NEMO2_DIR),
    ({"migrated.yaml": (SEED_OUT / "config-fp16.yaml").read_text(), "notes.txt": "x"}, Kind.AUTOMODEL_DIR),
    ({}, Kind.NEMO2_DIR),  # nothing recognisable: convert says what is missing (NM007)
])
def test_directories(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert kind(tmp_path) is expected


def test_files_by_content(tmp_path):
    cases = {
        "broken.yaml": ("a: [1, 2\n", Kind.YAML),  # each command's reader reports where it breaks
        "list.yaml": ("- 1\n- 2\n", Kind.YAML),
        "data.json": ('{"trainer": {}}', Kind.UNKNOWN),  # .json / .toml: NeMo-Run's export or nothing
        "automodel-cfg": ((SEED_OUT / "config-fp16.yaml").read_text(), Kind.AUTOMODEL_YAML),  # Automodel reads -c of any name
        "nemo-cfg": ((SEED / "config-fp16.yaml").read_text(), Kind.UNKNOWN),
        "notes.txt": ("hello\n", Kind.UNKNOWN),
    }
    for name, (text, _) in cases.items():
        (tmp_path / name).write_text(text)
    assert {n: kind(tmp_path / n) for n in cases} == {n: k for n, (_, k) in cases.items()}


def test_unreadable_paths_are_nm001(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    for name, says in (("missing", "no such file or directory"), ("dangling", "no such file or directory"),
                       ("loop", "no such file or directory"), ("fifo", "is a FIFO (named pipe), not a file")):
        d = Diagnostics()
        assert detect(tmp_path / name, d) is Kind.UNKNOWN
        assert [e.code for e in d.errors] == ["NM001"] and says in d.errors[0].message, (name, d.errors)


def _convert_error(src: Path) -> list[str]:
    with pytest.raises(MigrateError) as e:
        convert(Options(source=src))
    return [f"{d.code}: {d.message}" for d in e.value.diags.errors]


def test_convert_reads_inputs_by_their_kind(tmp_path):
    (tmp_path / "automodel-cfg").write_text((SEED_OUT / "config-fp16.yaml").read_text())
    (tmp_path / "data.json").write_text('{"trainer": {}}')
    for name in ("automodel-cfg", "data.json"):
        errs = _convert_error(tmp_path / name)
        assert errs[0].startswith("NM003: expected a job folder") and name in errs[0], errs
    assert _convert_error(tmp_path / "missing.yaml") == [f"NM001: no such file or directory: {tmp_path / 'missing.yaml'}"]
    # a NeMo 2 YAML next to recipe.py uses it (NM004); NeMo-Run's export does not need it
    (tmp_path / "recipe.py").write_text((SEED / "recipe.py").read_text())
    (tmp_path / "config-fp16.yaml").write_text((SEED / "config-fp16.yaml").read_text())
    (tmp_path / "job.yaml").write_text((EXPORTS / "seed-fp16" / "job.yaml").read_text())
    conv = convert(Options(source=tmp_path / "config-fp16.yaml", factory="migration_recipe()"))
    assert any(d.code == "NM004" for d in conv.diags.items)
    conv = convert(Options(source=tmp_path / "job.yaml"))
    assert not any(d.code == "NM004" for d in conv.diags.items) and conv.variants[0].job.factory


def test_cli_exit_1_without_traceback_on_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo.yaml")
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert", str(tmp_path / "fifo.yaml")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "NM001" in r.stderr + r.stdout and "Traceback" not in r.stderr

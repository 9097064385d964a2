"""An sbatch script in, an sbatch.sh out (issue 17, H21): the #SBATCH header's allocation and bookkeeping options are
carried into sbatch.sh with their source lines (LCH007), the size comes from the trainer and conflicting options are
left out with why (LCH008), other options are reported (LCH009); --launcher local / slurm keep their meaning."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from nemo_migrate.convert import Options, convert
from nemo_migrate.sources.launch import sbatch_header

ROOT = Path(__file__).resolve().parent.parent
KAUST = ROOT / "tests" / "realworld" / "nemo2-cli-sbatch-kaust-llama31-8b-lora-2gpu" / "input" / "2_gpus.slurm"
SEED = ROOT / "golden" / "seed" / "input"
CANARY = "PWNED_CANARY"


def _job(tmp_path: Path, header: list[str]) -> Path:
    """The KAUST workshop job (2 GPUs, `nemo llm finetune` under srun) with its #SBATCH header replaced."""
    lines = KAUST.read_text().splitlines()
    body = [ln for ln in lines[1:] if not ln.startswith("#SBATCH")]
    d = tmp_path / "job"
    d.mkdir(exist_ok=True)
    p = d / "job.slurm"
    p.write_text("\n".join([lines[0], *header, *body]) + "\n")
    return p


def _sbatch_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]


def test_header_is_read_as_sbatch_reads_it():
    text = ("#!/bin/bash\n#SBATCH -A acct -p <<YOUR PARTITION>>\n#SBATCH --output %x_%j.out   # a comment\n"
            "#SBATCH --exclusive\n#SBATCH -t4:00:00\n#SBATCH --partition=   # fill in\n#SBATCH --time --qos\necho hi\n#SBATCH --mem=1G\n")
    got = [(o.name, o.value, o.prov.line) for o in sbatch_header(text, "j.sh")]
    assert got == [("account", "acct", 2), ("partition", "<<YOUR PARTITION>>", 2), ("output", "%x_%j.out", 3),
                   ("exclusive", None, 4), ("time", "4:00:00", 5), ("partition", "", 6),
                   ("time", "", 7), ("qos", "", 7)]  # nothing after the first command


def test_auto_writes_sbatch_sh_with_the_scripts_options_and_their_lines():
    conv = convert(Options(source=KAUST))
    assert {"run.sh", "sbatch.sh"} <= set(conv.files)
    assert _sbatch_lines(conv.files["sbatch.sh"]) == [
        "#SBATCH --job-name=l-lo-2g", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=4", "#SBATCH --time=01:00:00", "#SBATCH --reservation=distributedDL",
        "#SBATCH --constraint=a100,4gpus", "#SBATCH --mem=256G", "#SBATCH --output=logs/%x-%j.out"]  # its own --output only
    v = conv.variants[0]
    out = {o.path: o for o in v.outcomes if o.path.startswith("sbatch.")}
    assert (out["sbatch.time"].rule, out["sbatch.time"].prov.line, out["sbatch.time"].targets) == ("LCH007", 7, ["sbatch.sh"])
    assert (out["sbatch.reservation"].prov.file, out["sbatch.reservation"].prov.line) == ("2_gpus.slurm", 8)
    assert v.launch.origin["sbatch"].rule == "LCH007" and v.launch.origin["job_name"].rule == "LCH007"
    assert v.launch.where["sbatch.mem"].line == 10
    report = conv.files["migration-report.md"]
    assert "| `sbatch.constraint` | `a100,4gpus` | 2_gpus.slurm:9 | exact | LCH007 | sbatch.sh |" in report
    assert "#SBATCH --ntasks-per-node=2 (2_gpus.slurm:4) is left out of sbatch.sh" in report


def test_conflicting_size_options_are_left_out_with_why(tmp_path):
    src = _job(tmp_path, ["#SBATCH --job-name=j", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=2", "#SBATCH --gres=gpu:a100:4",
                          "#SBATCH --gpus=4", "#SBATCH --gpus-per-node=2", "#SBATCH --qos=high", "#SBATCH --overcommit",
                          "#SBATCH --exclusive", "#SBATCH --partition=   # fill in"])
    conv = convert(Options(source=src))
    lines = _sbatch_lines(conv.files["sbatch.sh"])
    assert "#SBATCH --gpus-per-node=2" in lines and "#SBATCH --ntasks-per-node=1" in lines and "#SBATCH --qos=high" in lines
    assert "#SBATCH --exclusive" in lines and not [ln for ln in lines if "partition" in ln]  # a flag; an empty value
    assert not [ln for ln in lines if "gres" in ln or "--gpus=" in ln or "overcommit" in ln or "ntasks-per-node=2" in ln]
    report = conv.files["migration-report.md"]
    assert "#SBATCH --gres=gpu:a100:4 (job.slurm:5) is left out of sbatch.sh: it asks for 4 GPUs per node, the job trains on 2" in report
    assert "#SBATCH --gpus=4 (job.slurm:6) is left out of sbatch.sh" in report
    assert "#SBATCH --partition is empty at job.slurm:11: sbatch.sh leaves it out" in report
    assert [d for d in conv.diags.items if d.code == "NM410" and "sbatch.overcommit" in d.message]  # not carried: said
    status = {o.path: o.status for o in conv.variants[0].outcomes}
    assert status["sbatch.gres"] == "exact" and status["sbatch.overcommit"] == "unsupported"


def test_a_gres_that_agrees_is_carried_and_a_node_count_that_disagrees_is_approximate(tmp_path):
    conv = convert(Options(source=_job(tmp_path, ["#SBATCH --nodes=2", "#SBATCH --gpus-per-node=2", "#SBATCH --gres=gpu:a100:2"])))
    assert "#SBATCH --gres=gpu:a100:2" in conv.files["sbatch.sh"] and "#SBATCH --nodes=1" in conv.files["sbatch.sh"]
    nodes = next(o for o in conv.variants[0].outcomes if o.path == "sbatch.nodes")
    assert nodes.status == "approximate" and "trainer.num_nodes=1" in nodes.reason


def test_local_writes_run_sh_only_and_slurm_without_a_header_keeps_todays_sbatch_sh():
    assert "sbatch.sh" not in convert(Options(source=KAUST, launcher="local")).files
    assert "sbatch.sh" in convert(Options(source=KAUST, launcher="slurm")).files
    seed = convert(Options(source=SEED, launcher="slurm"))
    assert not [o for o in seed.variants[0].outcomes if o.path.startswith("sbatch.")]
    assert _sbatch_lines(seed.files["sbatch.sh"]) == ["#SBATCH --job-name=automodel", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                                                      f"#SBATCH --gpus-per-node={seed.variants[0].nproc}", "#SBATCH --output=%x_%j.out"]
    assert "sbatch.sh" not in convert(Options(source=SEED)).files  # auto, no sbatch input: run.sh only, as before


def _fake_bin(tmp: Path) -> Path:
    b = tmp / "bin"
    b.mkdir()
    for name in ("torchrun", "srun"):  # record argv, NUL-separated; srun then runs torchrun
        (b / name).write_text('#!/usr/bin/env bash\nprintf \'%s\\0\' "$@" > "$LOG_DIR/' + name + '.argv"\n'
                              + ('while [ $# -gt 0 ] && [ "$1" != torchrun ]; do shift; done; exec "$@"\n' if name == "srun" else ""))
        (b / name).chmod(0o755)
    (b / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n")
    (b / "scontrol").chmod(0o755)
    return b


def test_hostile_header_values_stay_inert(tmp_path):
    header = [f"#SBATCH --job-name=$(touch {CANARY})", f"#SBATCH --partition=\"a; touch {CANARY}\"",
              "#SBATCH -A <<YOUR ACCOUNT>>", f"#SBATCH --comment=`touch {CANARY}`", "#SBATCH --time=01:00:00",
              f"#SBATCH --output=x$(touch {CANARY}).out", "#SBATCH --gpus-per-node=2"]
    conv = convert(Options(source=_job(tmp_path, header)))
    text = conv.files["sbatch.sh"]
    assert _sbatch_lines(text) == ["#SBATCH --job-name=automodel", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                                   "#SBATCH --gpus-per-node=2", "#SBATCH --time=01:00:00",
                                   "#SBATCH --output=%x_%j.out"]
    left = sorted((d.code, d.line) for d in conv.diags.items if d.code in ("NM610", "NM611"))
    assert left == [("NM610", None), ("NM611", 3), ("NM611", 4), ("NM611", 7)]  # partition, account, output; the name
    assert [d for d in conv.diags.items if d.code == "NM410" and "sbatch.comment" in d.message]
    assert "#SBATCH --account=<<YOUR ACCOUNT>> (job.slurm:4) is left out of sbatch.sh" in conv.files["migration-report.md"]
    # what is left out is reported as dropped, knob by knob; what sbatch.sh carries stays exact
    st = {o.path: o.status for o in conv.variants[0].outcomes if o.path.startswith("sbatch.")}
    assert {p: st[p] for p in ("sbatch.partition", "sbatch.account", "sbatch.output", "sbatch.time")} == {
        "sbatch.partition": "dropped", "sbatch.account": "dropped", "sbatch.output": "dropped", "sbatch.time": "exact"}
    script = tmp_path / "out" / "sbatch.sh"
    script.parent.mkdir()
    script.write_text(text)
    (tmp_path / "cwd").mkdir()
    (tmp_path / "logs").mkdir()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {"PATH": f"{_fake_bin(tmp_path)}:{os.environ['PATH']}", "LOG_DIR": str(tmp_path / "logs"), "HOME": str(tmp_path),
           "SLURM_SUBMIT_DIR": str(script.parent), "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node-a", "SLURM_JOB_ID": "7"}
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path / "cwd", timeout=30)
    assert r.returncode == 0, r.stderr
    argv = (tmp_path / "logs" / "torchrun.argv").read_text().split("\0")[:-1]
    assert argv[-2:] == ["-c", str(script.parent / "config.yaml")]
    assert not [p for p in tmp_path.rglob(f"*{CANARY}*")], "a #SBATCH value ran"

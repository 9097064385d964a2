"""Launch scripts: run.sh everywhere, sbatch.sh for jobs that ran on a NeMo-Run SlurmExecutor (or --launcher slurm).

The scripts are executed here against stand-ins for srun / scontrol / torchrun that record their arguments."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_migrate.convert import Options, convert
from nemo_migrate.diagnostics import MigrateError

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
FIX = ROOT / "tests" / "fixtures" / "rules"
SCRIPTS = sorted(p for p in GOLDEN.glob("*/expected/*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(p.relative_to(GOLDEN)) for p in SCRIPTS])
def test_generated_scripts_are_valid_bash(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _fake_bin(tmp_path: Path) -> Path:
    b = tmp_path / "bin"
    b.mkdir()
    log = tmp_path / "calls.log"
    for name in ("srun", "torchrun"):
        (b / name).write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "{name}" "$@" "--" >> {log}\n'
                              + ('shift_to=""; while [ $# -gt 0 ] && [ "$1" != torchrun ]; do shift; done; exec "$@"\n' if name == "srun" else ""))
        (b / name).chmod(0o755)
    (b / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n")
    (b / "scontrol").chmod(0o755)
    return b


def _calls(tmp_path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in (tmp_path / "calls.log").read_text().splitlines():
        if line == "--" and cur:
            out[cur[0]] = cur[1:]
            cur = []
        else:
            cur.append(line)
    return out


def test_sbatch_script_starts_one_torchrun_per_node_with_rendezvous_on_the_first(tmp_path):
    conv = convert(Options(source=GOLDEN / "slurm-chat-qwen" / "input"))
    script = tmp_path / "job" / "sbatch.sh"
    script.parent.mkdir()
    script.write_text(conv.files["sbatch.sh"])
    env = dict(os.environ, PATH=f"{_fake_bin(tmp_path)}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(script.parent),
               SLURM_NNODES="2", SLURM_JOB_NODELIST="node-[a-b]", SLURM_JOB_ID="4242")
    r = subprocess.run(["bash", str(script), "--step_scheduler.max_steps", "5"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    calls = _calls(tmp_path)
    srun, torchrun = calls["srun"], calls["torchrun"]
    assert "--nodes=2" in srun and "--ntasks-per-node=1" in srun
    assert "--container-image=nvcr.io/nvidia/nemo:25.04" in srun
    assert "--container-mounts=/lustre/data:/lustre/data,/lustre/results:/lustre/results" in srun
    assert f"--container-workdir={script.parent}" in srun
    assert "--nnodes=2" in torchrun and "--nproc-per-node=8" in torchrun
    assert "--rdzv-endpoint=node-a:29500" in torchrun and "--rdzv-id=4242" in torchrun
    i = torchrun.index("-c")
    assert torchrun[i + 1] == str(script.parent / "config.yaml")
    assert torchrun[i + 2:] == ["--step_scheduler.max_steps", "5"]
    # the executor's environment, safely quoted (a value with a space stays one value)
    assert "export HF_HOME='/lustre/hf cache'" in conv.files["sbatch.sh"]


def test_sbatch_script_refuses_a_smaller_allocation(tmp_path):
    conv = convert(Options(source=GOLDEN / "slurm-chat-qwen" / "input"))
    script = tmp_path / "sbatch.sh"
    script.write_text(conv.files["sbatch.sh"])
    env = dict(os.environ, PATH=f"{_fake_bin(tmp_path)}:{os.environ['PATH']}", SLURM_NNODES="1", SLURM_JOB_NODELIST="node-a")
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "needs 2 nodes" in r.stderr
    assert not (tmp_path / "calls.log").exists()


def test_launcher_option(tmp_path):
    seed = GOLDEN / "seed" / "input"
    conv = convert(Options(source=seed, launcher="slurm"))
    text = conv.files["sbatch.sh"]
    assert "#SBATCH --nodes=1" in text and "#SBATCH --gpus-per-node=4" in text and "--container-image" in text
    assert "case \"$variant\" in" in text  # the seed job has two variants (fp16, fp8)
    assert "sbatch.sh" not in convert(Options(source=seed)).files
    assert "sbatch.sh" not in convert(Options(source=GOLDEN / "slurm-chat-qwen" / "input", launcher="local")).files
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert", str(seed), "--launcher", "pbs"], capture_output=True, text=True)
    assert r.returncode == 1 and "expected auto, slurm or local" in r.stderr


def test_unsafe_sbatch_values_are_refused_and_env_values_quoted(tmp_path):
    src = (FIX / "slurm.py").read_text().replace('partition="batch"', 'partition="batch\\nrm -rf $HOME"')
    (tmp_path / "recipe.py").write_text(src)
    with pytest.raises(MigrateError) as e:
        convert(Options(source=tmp_path / "recipe.py"))
    assert [(d.code, d.key) for d in e.value.diags.errors] == [("NM903", "executor.partition")]
    assert e.value.diags.errors[0].file == "recipe.py" and e.value.diags.errors[0].line
    src = (FIX / "slurm.py").read_text().replace('"NCCL_DEBUG": "WARN"', '"NCCL_DEBUG": "$(touch /tmp/pwned)"')
    (tmp_path / "recipe.py").write_text(src)
    text = convert(Options(source=tmp_path / "recipe.py")).files["sbatch.sh"]
    assert "export NCCL_DEBUG='$(touch /tmp/pwned)'" in text
    assert subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0

def test_executor_size_mismatch_follows_the_trainer(tmp_path):
    src = (FIX / "slurm.py").read_text().replace("def slurm_executor(nodes: int = 2", "def slurm_executor(nodes: int = 4")
    (tmp_path / "recipe.py").write_text(src)
    conv = convert(Options(source=tmp_path / "recipe.py"))
    v = conv.variants[0]
    assert v.launch.nnodes == 2
    lch = [o for o in v.outcomes if o.rule == "LCH002"]
    assert {o.status for o in lch} == {"approximate"} and "4 nodes but trainer.num_nodes=2" in lch[0].reason


def test_local_executor_in_an_experiment_feeds_run_sh(tmp_path):
    (tmp_path / "recipe.py").write_text('''
import nemo_run as run
from nemo.collections import llm


def job() -> run.Partial:
    recipe = llm.llama3_8b.finetune_recipe(dir="/results", name="exp", num_nodes=1, num_gpus_per_node=2, peft_scheme="lora")
    recipe.trainer.max_steps = 10
    return recipe


if __name__ == "__main__":
    executor = run.LocalExecutor(ntasks_per_node=2, launcher="torchrun", env_vars={"NCCL_P2P_DISABLE": "1"})
    with run.Experiment("exp") as exp:
        exp.add(job(), executor=executor, name="exp")
        exp.run(sequential=True)
''')
    conv = convert(Options(source=tmp_path / "recipe.py"))
    assert "sbatch.sh" not in conv.files
    text = conv.files["run.sh"]
    assert "export NCCL_P2P_DISABLE=1" in text and "nproc=2" in text
    assert {o.status for o in conv.variants[0].outcomes if o.path.startswith("executor.")} == {"exact"}

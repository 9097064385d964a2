"""Launch commands as real shell / sbatch scripts write them (migrate/sources/launch.py).

Each test feeds a small script (written here) to the static reader and checks the command it picks, what it made of
the words, and the diagnostics.  Nothing is executed."""
from __future__ import annotations

import textwrap
from pathlib import Path

from hypothesis import given, settings, strategies as st

from nemo_migrate.diagnostics import Diagnostics
from nemo_migrate.sources.launch import (
    HYDRA_SCRIPTS, looks_like_launcher, parse_run_sh, parse_shell_text, scan_shell_text, variant_of,
)


def parse(text: str, **kw):
    d = Diagnostics()
    launch = parse_shell_text(textwrap.dedent(text), "run.sh", d, **kw)
    return launch, d


def codes(d: Diagnostics, severity: str | None = None) -> list[str]:
    return [x.code for x in d.items if severity is None or x.severity == severity]


def ovs(launch) -> dict:
    return {o.path: o.value for o in launch.overrides}


def diag(d: Diagnostics, code: str):
    return next(x for x in d.items if x.code == code)


# ------------------------------------------------------------------------------------------ NeMo's own CLI

def test_nemo_llm_finetune_is_the_job():
    l, d = parse("nemo llm finetune --factory llama31_8b -y trainer.max_steps=250 peft=none 'optim.config.lr=1e-4'\n")
    assert not d.has_errors
    assert (l.launcher, l.kind, l.script) == ("nemo-cli", "finetune", None)
    assert l.factory.value == "llama31_8b"
    assert ovs(l) == {"trainer.max_steps": "250", "peft": "none", "optim.config.lr": "1e-4"}


def test_nemo_llm_pretrain_is_classified_out_of_scope():
    l, d = parse("nemo llm pretrain --factory llama3_8b -y trainer.max_steps=10\n")
    assert l.kind == "pretrain"
    assert diag(d, "NM174").severity == "error" and diag(d, "NM174").line == 1


def test_a_pretraining_recipe_script_next_to_the_launcher_is_pretrain(tmp_path):
    (tmp_path / "pretrain.py").write_text("import nemo_run as run\nfrom nemo.collections import llm\n"
                                          "recipe = llm.llama3_8b.pretrain_recipe(num_nodes=1)\nrun.run(recipe)\n")
    (tmp_path / "run.sh").write_text("torchrun --nproc_per_node=8 pretrain.py\n")
    d = Diagnostics()
    assert parse_run_sh(tmp_path / "run.sh", "run.sh", d).kind == "pretrain" and "NM174" in codes(d)


def test_other_nemo_llm_commands_are_not_the_job():
    l, d = parse("""\
        nemo llm import -y llama3_8b hf://meta-llama/Meta-Llama-3-8B
        nemo llm finetune -f llama3_8b --yes trainer.max_steps=5
        nemo llm export --yes path=ckpt target=hf output_path=out
    """)
    assert l.line == 2 and ovs(l) == {"trainer.max_steps": "5"}
    l, d = parse("nemo llm import -y llama3_8b hf://meta-llama/Meta-Llama-3-8B\n")
    assert l is None and diag(d, "NM133").line == 1 and "nemo llm import" in diag(d, "NM133").message


def test_nemorun_cli_grammar():
    # click: -fVALUE, --opt=value, clustered flags; --rich-exceptions is a flag (it must not eat the next word)
    l, d = parse("python recipe.py -fmy_recipe -vy --rich-exceptions trainer.max_steps=5 --to-yaml=job.yaml -- data.seq_length=512\n")
    assert l.factory.value == "my_recipe" and l.verbose
    assert ovs(l) == {"trainer.max_steps": "5", "data.seq_length": "512"}
    assert l.export == ("yaml", "job.yaml") and not d.has_errors


def test_run_arguments_configure_nemorun_not_the_job():
    l, d = parse("python recipe.py --yes run.executor=slurm trainer.max_steps=5\n")
    assert ovs(l) == {"trainer.max_steps": "5"} and [a for a, _ in l.run_args] == ["run.executor=slurm"]
    assert diag(d, "NM177").severity == "warning"
    _, d = parse("python recipe.py --yes runner.x=1\n")
    assert diag(d, "NM177").severity == "error"  # NeMo-Run: "Run overwrites must start with 'run.'"


def test_dash_y_before_a_yaml_is_still_the_yes_flag():
    _, d = parse("nemo llm finetune -f llama3_8b -y cfg.yaml\n")
    assert "NM138" in codes(d, "error")


# ------------------------------------------------------------------------------------------ wrappers

def test_srun_with_pyxis_options():
    l, d = parse("srun -N2 --ntasks-per-no=8 --container-image=nvcr.io/nvidia/nemo:25.04 --container-mounts /d:/d "
                 "--no-container-mount-home -l torchrun --nproc-per-node 8 recipe.py --yes\n")
    assert not d.items, [x.render() for x in d.items]
    assert l.wrappers == ["srun"] and l.script == "recipe.py" and l.nproc_per_node == 8


def test_container_wrappers_find_the_command():
    for line, wrapper in [
        ("singularity exec --nv -B /a:/b --env A=1 nemo.sif torchrun recipe.py --yes", "singularity exec"),
        ("apptainer --silent exec --containall img.sif python recipe.py --yes", "apptainer exec"),
        ("enroot start --rw --mount /a:/b -e A=1 nemo torchrun recipe.py --yes", "enroot start"),
        ("enroot exec 1234 torchrun recipe.py --yes", "enroot exec"),
        ("docker run --rm -it --gpus all --shm-size=16g -v $PWD:/w -w /w nvcr.io/nvidia/nemo:25.04 torchrun recipe.py --yes",
         "docker run"),
        ("docker container run --ipc=host img python recipe.py --yes", "docker run"),
    ]:
        l, d = parse(line + "\n")
        assert l is not None and l.wrappers == [wrapper] and l.script == "recipe.py", (line, [x.render() for x in d.items])
        assert "NM173" not in codes(d), line


def test_tool_wrappers_find_the_command():
    l, d = parse("nsys profile -t cuda,nvtx -o prof --capture-range=cudaProfilerApi numactl --cpunodebind=0 --membind=0 "
                 "timeout -s INT 2h env NCCL_DEBUG=INFO stdbuf -oL nice -n 5 time -p nohup python -u -m torch.distributed.run "
                 "--nproc-per-node=4 recipe.py --yes\n")
    assert l.wrappers == ["nsys profile", "numactl", "timeout", "env", "stdbuf", "nice", "time", "nohup"]
    assert l.launcher == "torchrun" and l.nproc_per_node == 4 and l.env == {"NCCL_DEBUG": "INFO"}
    l, _ = parse("exec torchrun --standalone --nproc_per_node=2 recipe.py --yes\n")
    assert l.wrappers == ["exec"] and l.standalone


def test_an_unknown_wrapper_option_is_a_warning_that_names_it():
    l, d = parse("srun --frobnicate torchrun recipe.py --yes\n")
    w = diag(d, "NM173")
    assert w.severity == "warning" and "--frobnicate" in w.message and l.script == "recipe.py"


def test_docker_does_not_pass_the_host_environment():
    l, d = parse("""\
        export STEPS=100 NCCL_DEBUG=WARN
        docker run -e HF_HOME=/hf img bash -c 'torchrun recipe.py --yes trainer.max_steps=$STEPS'
    """)
    assert l.env == {"HF_HOME": "/hf"}
    e = diag(d, "NM170")
    assert "STEPS" in e.message and "docker run" in e.message


def test_bash_c_with_a_literal_or_a_variable():
    l, _ = parse("sh -c 'torchrun recipe.py --yes trainer.max_steps=3'\n")
    assert l.wrappers == ["sh -c"] and ovs(l) == {"trainer.max_steps": "3"}
    l, _ = parse("""\
        CMD="torchrun recipe.py --yes trainer.max_steps=4"
        srun bash -lc "$CMD"
    """)
    assert l.wrappers == ["srun", "bash -c"] and ovs(l) == {"trainer.max_steps": "4"}


def test_here_document_into_a_variable_keeps_its_lines():
    l, d = parse("""\
        STEPS=250
        read -r -d '' CMD <<EOF || true
        python megatron_gpt_finetuning.py --config-path=conf --config-name=lora \\
            trainer.max_steps=${STEPS} \\
            model.optim.lr=1e-4
        EOF
        srun --container-image=img bash -c "${CMD}"
    """)
    assert not d.has_errors and l.line == 3 and l.config_name == "lora"
    hydra = dict(l.hydra)
    prov = hydra["trainer.max_steps=250"]
    assert (prov.file, prov.line) == ("run.sh", 3) and "STEPS from run.sh:1" in prov.detail


def test_cat_heredoc_in_command_substitution_and_eval():
    l, _ = parse("""\
        CMD=$(cat <<'EOF'
        torchrun --nproc_per_node=2 recipe.py --yes \\
          trainer.max_steps=7
        EOF
        )
        eval "$CMD"
    """)
    assert l.line == 2 and ovs(l) == {"trainer.max_steps": "7"} and l.nproc_per_node == 2


def test_a_job_file_written_by_a_heredoc_and_run():
    l, d = parse("""\
        GPUS=8
        cat > job.sh <<EOF
        #!/bin/bash
        torchrun --nproc_per_node=$GPUS recipe.py --yes trainer.max_steps=\\${MAX_STEPS}
        EOF
        srun singularity exec nemo.sif bash job.sh
    """)
    assert l.wrappers == ["srun", "singularity exec", "bash"] and l.line == 4 and l.nproc_per_node == 8
    assert "GPUS from run.sh:1" in l.nproc_prov.detail
    e = diag(d, "NM170")  # \${MAX_STEPS} stays for job.sh, which never sets it
    assert e.key == "trainer.max_steps" and "MAX_STEPS" in e.message and e.line == 4


def test_lists_pipelines_and_background():
    l, d = parse("mkdir -p logs && pip install -q foo; torchrun recipe.py --yes 2>&1 | tee logs/out.txt &\nwait\n")
    assert l.script == "recipe.py" and not d.has_errors


# ------------------------------------------------------------------------------------------ variables

def test_variables_expand_with_provenance():
    l, d = parse("""\
        #!/bin/bash
        set -euo pipefail

        NPROC=4
        STEPS=250
        export NCCL_DEBUG=INFO
        readonly LR="2e-4"
        declare -x HF_HOME=/data/hf
        SCRIPT=recipe.py
        torchrun --nproc_per_node=${NPROC} ${SCRIPT} --yes trainer.max_steps=${STEPS} optim.config.lr=$LR
    """)
    assert not d.items
    assert l.script == "recipe.py" and l.nproc_per_node == 4 and l.env == {"NCCL_DEBUG": "INFO", "HF_HOME": "/data/hf"}
    steps = next(o for o in l.overrides if o.path == "trainer.max_steps")
    assert steps.value == "250" and (steps.prov.file, steps.prov.line) == ("run.sh", 10)
    assert steps.prov.detail == "trainer.max_steps=250 (STEPS from run.sh:5)"
    assert l.env_prov["NCCL_DEBUG"].line == 6


def test_parameter_expansions_and_quoting():
    l, d = parse("""\
        A=x
        EMPTY=
        CFG=conf/base.yaml
        torchrun recipe.py --yes a.b=${UNSET:-1} a.c=${EMPTY:-2} a.d=${EMPTY-3} a.e=${NEW:=4} a.f=$NEW a.g='$A' a.h="$A" \\
            a.i=${A:+y} a.j=${#CFG} a.k=${CFG%.yaml} a.l=${CFG##*/} a.m=${A^^} a.n=$((2*3+1)) a.o=$'t\\x41b' a.p="\\$A"
    """)
    got = ovs(l)
    assert got["a.b"] == "1" and got["a.c"] == "2" and got["a.e"] == "4" and got["a.f"] == "4"
    assert (got["a.g"], got["a.h"], got["a.i"], got["a.j"]) == ("$A", "x", "y", "14")
    assert (got["a.k"], got["a.l"], got["a.m"], got["a.n"], got["a.o"], got["a.p"]) == ("conf/base", "base.yaml", "X", "7", "tAb", "$A")
    assert "NM120" in codes(d)  # a.d=${EMPTY-3} is "a.d=": NeMo-Run rejects empty values


def test_arrays_expand_to_their_elements_with_their_lines():
    l, _ = parse("""\
        ARGS=(
          trainer.max_steps=10
          "optim.config.lr=1e-5"
        )
        torchrun recipe.py --yes "${ARGS[@]}"
    """)
    assert ovs(l) == {"trainer.max_steps": "10", "optim.config.lr": "1e-5"}
    assert [o.prov.line for o in l.overrides] == [2, 3]


def test_unknown_variable_in_an_override_is_an_error_that_names_it():
    l, d = parse("""\
        NODES=$(scontrol show hostnames | wc -l)
        torchrun recipe.py --yes trainer.num_nodes=${NODES} trainer.devices=$SLURM_GPUS_ON_NODE trainer.max_steps=$STEPS
    """)
    errs = [x for x in d.items if x.code == "NM170"]
    assert [e.key for e in errs] == ["trainer.num_nodes", "trainer.devices", "trainer.max_steps"]
    assert all(e.severity == "error" and e.hint == f"pass --set {e.key}=VALUE to nemo-migrate" for e in errs)
    assert "NODES" in errs[0].message and "SLURM_GPUS_ON_NODE" in errs[1].message and "STEPS" in errs[2].message
    assert {n for n, _ in l.unresolved} == {"NODES", "SLURM_GPUS_ON_NODE", "STEPS"}
    assert not l.overrides
    _, d = parse("torchrun recipe.py --yes trainer.max_steps=$STEPS\n", set_keys={"trainer.max_steps"})
    assert not d.has_errors and diag(d, "NM170").severity == "note"


def test_unknown_process_counts_are_warnings_that_name_the_variable():
    l, d = parse("torchrun --nnodes=$SLURM_NNODES --nproc_per_node=${GPUS_PER_NODE} recipe.py --yes\n")
    msgs = [x.message for x in d.items if x.code == "NM135"]
    assert len(msgs) == 2 and "SLURM_NNODES" in msgs[0] and "GPUS_PER_NODE" in msgs[1]
    assert l.nproc_per_node is None and l.nnodes is None


def test_sbatch_header_fixes_the_slurm_variables():
    l, d = parse("""\
        #!/bin/bash
        #SBATCH --nodes=2
        #SBATCH --gpus-per-node=8   # eight per node
        srun nemo llm finetune --factory llama3_8b -y trainer.num_nodes=$SLURM_NNODES trainer.devices="${SLURM_GPUS_PER_NODE}"
    """)
    assert not d.has_errors and ovs(l) == {"trainer.num_nodes": "2", "trainer.devices": "8"}
    dev = next(o for o in l.overrides if o.path == "trainer.devices")
    assert "SLURM_GPUS_PER_NODE from run.sh:3" in dev.prov.detail and "#SBATCH --gpus-per-node=8" in dev.prov.detail


def test_positional_parameters_keep_the_variant_pattern():
    l, d = parse("torchrun recipe.py --yes --yaml config-${1}.yaml\n")
    assert l.yaml_pattern() == "config-{}.yaml" and not d.items
    assert variant_of(l.yaml_pattern(), "config-fp8.yaml") == "fp8"


def test_branches_and_loops():
    l, d = parse("""\
        MODE=lora
        if [ "$MODE" = "lora" ]; then PEFT=lora; else PEFT=none; fi
        for i in 1 2; do echo $i; done
        if [ -z "$SKIP_TRAIN" ]; then
          torchrun recipe.py --yes peft=$PEFT
        fi
    """)
    assert ovs(l) == {"peft": "lora"} and not d.items  # both conditions are known
    l, d = parse("""\
        case "$1" in
          full) PEFT=none ;;
          *) PEFT=lora ;;
        esac
        if [ "$1" != dry ]; then torchrun recipe.py --yes peft=$PEFT; fi
    """)
    assert diag(d, "NM175").severity == "note" and "if at run.sh:5" in diag(d, "NM175").message
    assert "PEFT" in diag(d, "NM170").message and "case at run.sh:1" in diag(d, "NM170").message


def test_functions_receive_their_arguments():
    l, d = parse("""\
        train() {
          local steps=$1
          torchrun recipe.py --yes trainer.max_steps=$steps "${@:2}"
        }
        train 30 data.seq_length=512
    """)
    assert ovs(l) == {"trainer.max_steps": "30", "data.seq_length": "512"} and not d.items
    assert [o.prov.line for o in l.overrides] == [3, 5]


def test_what_the_script_cannot_know_is_named():
    l, d = parse("""\
        CFG=$(ls configs | head -1)
        torchrun recipe.py --yes --yaml "$CFG" tag=`date +%s` "$@"
        bash missing_step.sh
    """)
    assert "CFG" in diag(d, "NM171").message and diag(d, "NM171").severity == "warning"
    assert diag(d, "NM170").key == "tag" and "date +%s" in diag(d, "NM170").message
    assert diag(d, "NM178").severity == "warning"  # "$@": run.sh's own arguments
    assert "missing_step.sh" in diag(d, "NM181").message and diag(d, "NM181").line == 3


# ------------------------------------------------------------------------------------------ several commands

def test_two_different_finetune_commands_are_an_error():
    l, d = parse("""\
        torchrun recipe.py --yes trainer.max_steps=10
        torchrun recipe.py --yes trainer.max_steps=20
    """)
    e = diag(d, "NM132")
    assert l is None and e.severity == "error" and "run.sh:1" in e.message and "run.sh:2" in e.message
    assert "--launch-line" in e.hint
    l, d = parse("torchrun recipe.py --yes trainer.max_steps=10\ntorchrun recipe.py --yes trainer.max_steps=20\n", launch_line=2)
    assert ovs(l) == {"trainer.max_steps": "20"} and not d.has_errors


def test_identical_repeated_commands_are_one_job():
    l, d = parse("""\
        S=10
        torchrun recipe.py --yes trainer.max_steps=$S
        torchrun recipe.py --yes trainer.max_steps=10
    """)
    assert l.line == 2 and not d.has_errors


def test_post_job_analysis_is_not_picked(tmp_path):
    (tmp_path / "recipe.py").write_text("import nemo_run as run\n\nif __name__ == '__main__':\n    run.cli.main(llm.finetune)\n")
    (tmp_path / "analyze.py").write_text("import json\nprint(json.load(open('metrics.json')))\n")
    (tmp_path / "run.sh").write_text("torchrun --nproc_per_node=2 recipe.py --yes\npython analyze.py --log out.log\n"
                                     "python plot_loss.py out.log\n")
    d = Diagnostics()
    cands = scan_shell_text((tmp_path / "run.sh").read_text(), "run.sh", d, base=tmp_path)
    assert [c.kind for c in cands] == ["finetune", "other", "other"]
    l = parse_run_sh(tmp_path / "run.sh", "run.sh", d)
    assert l.script == "recipe.py" and not d.has_errors


def test_the_caller_decides_which_script_is_a_recipe():
    text = "python train.py --yes trainer.max_steps=5\npython eval.py --yes\n"
    l, d = parse(text, is_recipe=lambda s: s == "train.py")
    assert l.script == "train.py" and not d.has_errors
    l, d = parse(text, is_recipe=lambda s: "pretrain" if s == "train.py" else False)
    assert l.kind == "pretrain"


def test_an_argparse_script_keeps_its_arguments(tmp_path):
    (tmp_path / "finetune.py").write_text("import argparse\nimport nemo_run as run\np = argparse.ArgumentParser()\n")
    (tmp_path / "run.sh").write_text("python finetune.py --model llama31_8b --max_steps 100\n")
    d = Diagnostics()
    l = parse_run_sh(tmp_path / "run.sh", "run.sh", d)
    assert not d.items and not l.overrides
    assert [a for a, _ in l.script_args] == ["--model", "llama31_8b", "--max_steps", "100"]


def test_a_missing_line_continuation_is_reported_where_it_is():
    _, d = parse("""\
        read -r -d '' cmd <<EOF
        python -u /opt/NeMo-Aligner/examples/nlp/gpt/train_gpt_sft.py
           trainer.precision=bf16 \\
           trainer.devices=8
        EOF
        srun bash -c "${cmd}"
    """)
    e = diag(d, "NM183")
    assert e.severity == "error" and e.line == 3 and "backslash" in e.message


def test_unreadable_lines_are_skipped_and_reported():
    l, d = parse("""\
        CONTAINER=<<<CONTAINER>>>
        torchrun recipe.py --yes trainer.max_steps=3
    """)
    assert diag(d, "NM131").line == 1 and ovs(l) == {"trainer.max_steps": "3"}
    _, d = parse("torchrun recipe.py --yes trainer.max_steps=3 )))\n")
    assert diag(d, "NM176").severity == "error"


def test_hydra_multirun_is_refused():
    _, d = parse("python megatron_gpt_finetuning.py -m model.optim.lr=1e-4,2e-4\n")
    assert "NM179" in codes(d, "error")
    assert "megatron_gpt_finetuning.py" in HYDRA_SCRIPTS


# ------------------------------------------------------------------------------------------ API and realistic scripts

def test_notebook_cells_keep_their_lines():
    l, _ = parse("torchrun recipe.py --yes \\\n  trainer.max_steps=3\n", first_line=41)
    assert l.line == 41 and l.overrides[0].prov.line == 42  # the override's own line, as the user sees it


def test_looks_like_launcher(tmp_path):
    job = "torchrun --nproc_per_node=8 recipe.py --yes\n"
    cases = {"run.sh": job, "train.sbatch": job, "job.slurm": job, "submit": "#!/usr/bin/env bash\n" + job,
             "slurmjob": "#SBATCH -N 1\n" + job, "notes.sh": "echo hello\n", "job.py": job, "README": job,
             "steer.sh": "python /opt/NeMo-Aligner/examples/nlp/gpt/train_steerlm2.py trainer.num_nodes=1\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    got = {name: looks_like_launcher(tmp_path / name) for name in cases}
    assert got == {"run.sh": True, "train.sbatch": True, "job.slurm": True, "submit": True, "slurmjob": True,
                   "notes.sh": False, "job.py": False, "README": False, "steer.sh": True}  # recognised, refused later


SBATCH_PYXIS = """\
#!/bin/bash
#SBATCH --job-name=llama-lora
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive

set -euo pipefail
IMAGE=nvcr.io/nvidia/nemo:25.04
WORKDIR=/lustre/$USER/llama-lora
STEPS=${STEPS:-500}
export NCCL_DEBUG=WARN
export TORCH_NCCL_AVOID_RECORD_STREAMS=1
export PYTHONPATH=$WORKDIR:${PYTHONPATH:-}

mkdir -p "$WORKDIR/logs"
srun --container-image="$IMAGE" \\
     --container-mounts=/lustre:/lustre \\
     --container-workdir="$WORKDIR" \\
     --no-container-mount-home \\
     python recipe.py --factory 'lora_recipe()' --yes \\
        trainer.num_nodes=$SLURM_NNODES \\
        trainer.devices=$SLURM_NTASKS_PER_NODE \\
        trainer.max_steps=$STEPS \\
        log.log_dir="$WORKDIR/logs"

python summarize.py "$WORKDIR/logs" > "$WORKDIR/summary.txt"
"""


def test_realistic_pyxis_sbatch():
    l, d = parse(SBATCH_PYXIS)
    assert l.wrappers == ["srun"] and l.line == 17 and l.factory.value == "lora_recipe()"
    assert ovs(l) == {"trainer.num_nodes": "2", "trainer.devices": "8", "trainer.max_steps": "500"}
    assert codes(d, "error") == ["NM170"]
    assert l.env == {"NCCL_DEBUG": "WARN", "TORCH_NCCL_AVOID_RECORD_STREAMS": "1"}
    assert "PYTHONPATH" in diag(d, "NM172").message  # $USER is known only when the job runs
    assert {n for n, _ in l.unresolved} == {"WORKDIR"}  # named where it is used; its value depends on $USER
    e = diag(d, "NM170")
    assert e.key == "log.log_dir" and "WORKDIR" in e.message and "USER" in e.message and "log.log_dir" not in ovs(l)


SBATCH_SINGULARITY_HEREDOC = """\
#!/bin/bash
#SBATCH -N 1
#SBATCH --gres=gpu:4
module load singularity
SIF=/shared/images/nemo_24.07.sif
CONF_DIR=$PWD/conf
read -r -d '' CMD << 'EOF'
torchrun --nproc_per_node=4 /opt/NeMo/examples/nlp/language_modeling/tuning/megatron_gpt_finetuning.py \\
    --config-path=${CONF_DIR} --config-name=llama3_8b_lora \\
    trainer.num_nodes=1 trainer.devices=4 \\
    model.peft.peft_scheme=lora \\
    ++model.mcore_gpt=True
EOF
export CONF_DIR
srun singularity exec --nv -B /shared:/shared "$SIF" bash -c "$CMD"
"""


def test_realistic_singularity_sbatch_with_a_quoted_heredoc():
    l, d = parse(SBATCH_SINGULARITY_HEREDOC)
    assert l.wrappers == ["srun", "singularity exec", "bash -c"] and l.line == 8 and l.nproc_per_node == 4
    assert l.config_name == "llama3_8b_lora" and l.config_path == "${PWD}/conf"
    assert [h for h, _ in l.hydra] == ["trainer.num_nodes=1", "trainer.devices=4", "model.peft.peft_scheme=lora",
                                       "++model.mcore_gpt=True"]
    assert not d.has_errors


SCRIPT_WITH_FUNCTIONS = """\
#!/usr/bin/env bash
# fine-tune then evaluate; MODE picks the PEFT scheme
MODE=${MODE:-lora}
NGPUS=$(nvidia-smi -L | wc -l)

finetune() {
  NCCL_DEBUG=INFO torchrun --standalone --nproc_per_node=$NGPUS recipe.py \\
      --factory "llama3_8b(peft_scheme='$MODE')" --yes "$@"
}

nemo llm import -y llama3_8b hf://meta-llama/Meta-Llama-3-8B
finetune trainer.max_steps=200 data.global_batch_size=32 || { echo failed; exit 1; }
python -m my_eval --ckpt results/ > eval.json
"""


def test_realistic_script_with_a_function_and_unknown_gpu_count():
    l, d = parse(SCRIPT_WITH_FUNCTIONS)
    assert l.line == 7 and l.factory.value == "llama3_8b(peft_scheme='lora')"
    assert "MODE unset: default at run.sh:3" in l.factory.prov.detail
    assert ovs(l) == {"trainer.max_steps": "200", "data.global_batch_size": "32"} and l.env == {"NCCL_DEBUG": "INFO"}
    w = diag(d, "NM135")
    assert "NGPUS" in w.message and not d.has_errors


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(list("torchun pyf-=$'\"\\{}()[]<>|&;#\n\t!*?~`@:%/.,+12AZ_") + [
    "torchrun ", "python ", "recipe.py ", "nemo llm finetune ", "srun ", "bash -c ", "<<EOF\n", "\nEOF\n", "${A:-", "$((",
    "export ", "if ", "then ", "fi\n", "case ", "esac", "for ", "do ", "done", "cat > j.sh ", "read -r -d '' C ", "eval "]),
    max_size=120).map("".join))
def test_any_text_gives_diagnostics_not_exceptions(text):
    d = Diagnostics()
    parse_shell_text(text, "run.sh", d)
    scan_shell_text(text, "run.sh", d, first_line=3)

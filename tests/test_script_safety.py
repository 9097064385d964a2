"""run.sh and sbatch.sh never run injected text (hypothesis).

Hostile values in every field that reaches a script (config file names, variant names, the directory the script lies
in, container image, mounts, environment values, srun arguments, pre-step and source comments, the overrides given at
run time) are rendered, checked with `bash -n`, then the script is run with stand-ins for torchrun / srun / scontrol
that record their argv and environment NUL-separated.  Each value must arrive as ONE intact argument (or as the exact
environment value) and the canary file that the payloads try to create must never appear.  Values that no quoting
can carry (a newline in a file name, a #SBATCH value with a space, a NUL) are refused with a diagnostic instead.

Size: SCRIPT_EXAMPLES per property (default 60), derandomized like tests/test_fuzz.py (FUZZ_RANDOM=1 for fresh ones).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nemo_migrate import emit  # noqa: E402
from nemo_migrate.convert import Options, convert, write  # noqa: E402
from nemo_migrate.diagnostics import MigrateError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
N = int(os.environ.get("SCRIPT_EXAMPLES", "60"))
SAFE = settings(max_examples=N, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") is None, database=None,
                suppress_health_check=list(HealthCheck))
CANARY = "PWNED_CANARY"

# what shells, comments and the templates' own quoting care about, plus payloads that create the canary if run
_META = list(" $`'\"\\;|&()<>*?[]{}~#!%=,:@^-+./") + ["\u00e9", "\u2603", "\U0001f600", "--", "-c", "$HOME", "${IFS}"]
_PAYLOADS = [f"$(touch {CANARY})", f"`touch {CANARY}`", f"'; touch {CANARY}; '", f"\"; touch {CANARY}; \"",
             f"$'\\x41'; touch {CANARY}", f"}}; touch {CANARY}; {{", f"\\'; touch {CANARY} #", f"a\ntouch {CANARY}\n"]


def _text(newlines: bool) -> st.SearchStrategy[str]:
    """Shell-hostile text; with ``newlines`` also control characters (values may hold them, names may not)."""
    pieces = st.one_of(st.sampled_from(_META + _PAYLOADS + ["\n", "\t", "\r", "\x1b[31m"] if newlines else
                                       _META + [p for p in _PAYLOADS if "\n" not in p]),
                       st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=4))
    return st.lists(pieces, min_size=1, max_size=6).map("".join)


_name = _text(newlines=False).filter(lambda s: "/" not in s and s not in ("", ".", "..") and len(s.encode()) < 120)
_value = _text(newlines=True)
_env_name = st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,8}\Z")


def _bin(tmp: Path) -> Path:
    """torchrun / srun record argv and the environment (NUL-separated); scontrol names two nodes."""
    b = tmp / "bin"
    b.mkdir()
    for name in ("torchrun", "srun"):
        (b / name).write_text('#!/usr/bin/env bash\nprintf \'%s\\0\' "$@" > "$LOG_DIR/' + name + '.argv"\n'
                              'env -0 > "$LOG_DIR/' + name + '.env"\n')
        (b / name).chmod(0o755)
    (b / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n")
    (b / "scontrol").chmod(0o755)
    return b


def _argv(path: Path) -> list[str]:
    data = path.read_bytes().decode("utf-8", "surrogateescape")
    return data.split("\0")[:-1]


def _env_of(path: Path) -> dict[str, str]:
    out = {}
    for item in path.read_bytes().decode("utf-8", "surrogateescape").split("\0"):
        k, sep, v = item.partition("=")
        if sep:
            out[k] = v
    return out


def _run(script: Path, args: list[str], tmp: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    env = {"PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", "LOG_DIR": str(logs), "HOME": str(tmp), "LANG": "C.UTF-8"}
    env.update(extra_env or {})
    return subprocess.run(["bash", str(script), *args], capture_output=True, env=env, cwd=tmp / "cwd", timeout=30)


def _no_canary(tmp: Path) -> None:
    found = [p for p in tmp.rglob("*") if CANARY in p.name and p.is_file() and p.stat().st_size == 0]
    assert not found, f"injected command ran: {found}"
    assert not any((tmp / "cwd").iterdir()), list((tmp / "cwd").iterdir())


@st.composite
def _variants(draw, max_n: int = 3) -> list[dict]:
    n = draw(st.integers(1, max_n))
    names = draw(st.lists(_name, min_size=n, max_size=n, unique=True))
    return [{"name": nm, "config": draw(_name) + ".yaml", "nproc": draw(st.integers(1, 8)), "nnodes": 1} for nm in names]


@st.composite
def _common(draw) -> dict:
    return {
        "variants": draw(_variants()),
        "env": sorted(draw(st.dictionaries(_env_name.filter(lambda k: k not in emit.RESERVED_ENV | {"PATH", "LOG_DIR", "HOME", "LANG"}),
                                           _value, max_size=3)).items()),
        "pre_steps": draw(st.lists(_value, max_size=2)),
        "source": draw(_value),
    }


@SAFE
@given(ctx=_common(), outdir=_name, overrides=st.lists(_value, max_size=3), which=st.integers(0, 2))
def test_run_sh_carries_every_value_intact(ctx, outdir, overrides, which):
    text = emit.render_run_sh(ctx)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        _bin(tmp)
        (tmp / "cwd").mkdir()
        out = tmp / "out" / outdir
        out.mkdir(parents=True)
        script = out / "run.sh"
        script.write_text(text, encoding="utf-8")
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, text
        variants = ctx["variants"]
        v = variants[which % len(variants)]
        args = ([v["name"]] if len(variants) > 1 else []) + overrides
        r = _run(script, args, tmp)
        assert r.returncode == 0, (r.stderr.decode(errors="replace"), text)
        argv = _argv(tmp / "logs" / "torchrun.argv")
        assert argv == ["--standalone", "--nnodes=1", f"--nproc-per-node={v['nproc']}", "-m", "nemo_automodel.recipes.llm.train_ft",
                        "-c", f"{out.resolve()}/{v['config']}", *overrides], text
        env = _env_of(tmp / "logs" / "torchrun.env")
        for k, val in ctx["env"]:
            assert env.get(k) == val, (k, val, text)
        if len(variants) > 1:  # no or an unknown variant: the usage names every variant literally
            r = _run(script, [], tmp)
            assert r.returncode == 2
            names = "|".join(x["name"] for x in variants)
            assert r.stderr.decode() == f"usage: bash run.sh <{names}> [--section.key value ...]\n", text
        _no_canary(tmp)


@SAFE
@given(ctx=_common(), image=st.one_of(st.none(), _name), mounts=st.lists(_name.filter(lambda s: "," not in s), max_size=3),
       srun_args=st.lists(_value, max_size=3), overrides=st.lists(_value, max_size=2), override_image=st.one_of(st.none(), _value),
       job=st.from_regex(r"\A[A-Za-z0-9_.:=+/@%-]{1,20}\Z"))
def test_sbatch_sh_carries_every_value_intact(ctx, image, mounts, srun_args, overrides, override_image, job):
    for v in ctx["variants"]:
        v["nnodes"] = 2
    ctx = dict(ctx, job_name=job, nodes=2, gpus_per_node=8, sbatch=[("partition", "batch"), ("exclusive", None)],
               image=image, mounts=mounts, srun_args=srun_args)
    text = emit.render_sbatch_sh(ctx)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        _bin(tmp)
        (tmp / "cwd").mkdir()
        script = tmp / "sbatch.sh"
        script.write_text(text, encoding="utf-8")
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, text
        assert f"#SBATCH --job-name={job}\n" in text
        v = ctx["variants"][0]
        args = ([v["name"]] if len(ctx["variants"]) > 1 else []) + overrides
        submit = tmp / "submit dir"
        slurm = {"SLURM_SUBMIT_DIR": str(submit), "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_JOB_ID": "7"}
        if override_image is not None:
            slurm["CONTAINER_IMAGE"] = override_image
        r = _run(script, args, tmp, slurm)
        assert r.returncode == 0, (r.stderr.decode(errors="replace"), text)
        argv = _argv(tmp / "logs" / "srun.argv")
        img = override_image if override_image else image
        container = []
        if image is not None:
            container = [f"--container-image={img}", f"--container-workdir={submit}", "--no-container-mount-home"]
            container += [f"--container-mounts={','.join(mounts)}"] if mounts else []
        elif override_image:
            container = [f"--container-image={img}", f"--container-workdir={submit}", "--no-container-mount-home"]
        assert argv == ["--nodes=2", "--ntasks-per-node=1", "--export=ALL", *container, *srun_args,
                        "torchrun", "--nnodes=2", f"--nproc-per-node={v['nproc']}", "--rdzv-backend=c10d",
                        "--rdzv-endpoint=node-a:29500", "--rdzv-id=7", "-m", "nemo_automodel.recipes.llm.train_ft",
                        "-c", f"{submit}/{v['config']}", *overrides], text
        env = _env_of(tmp / "logs" / "srun.env")
        for k, val in ctx["env"]:
            assert env.get(k) == val, (k, val, text)
        _no_canary(tmp)


@SAFE
@given(ctx=_common(), comment=_value)
def test_comments_never_carry_a_raw_newline(ctx, comment):
    hostile = dict(ctx, env=[], pre_steps=[comment, "a\nb\rc\u2028d\x1b[2J"], source=comment + "\n" + comment)
    plain = dict(ctx, env=[], pre_steps=["x", "y"], source="z")
    text = emit.render_run_sh(hostile)
    assert len(text.split("\n")) == len(emit.render_run_sh(plain).split("\n")), text
    assert not any(c in text for c in "\r\x1b\u2028")
    assert [line for line in text.split("\n") if line.startswith("# Before the first run: ")] == \
        [f"# Before the first run: {emit.sh_comment(s)}" for s in hostile["pre_steps"]]


# ---------------------------------------------------------------------------------------------- refusals


def _ctx(**kw) -> dict:
    base = {"variants": [{"name": "fp16", "config": "config-fp16.yaml", "nproc": 8, "nnodes": 1}], "env": [], "pre_steps": [],
            "source": "recipe.py", "job_name": "job", "nodes": 1, "gpus_per_node": 8, "sbatch": [], "image": None, "mounts": [],
            "srun_args": []}
    base.update(kw)
    return base


@pytest.mark.parametrize("kw, code, sbatch", [
    ({"variants": [{"name": "a\nb", "config": "config-a\nb.yaml", "nproc": 1, "nnodes": 1}]}, "NM900", False),
    ({"variants": [{"name": "x\udce9", "config": "config-x\udce9.yaml", "nproc": 1, "nnodes": 1}]}, "NM900", False),
    ({"env": [("NOT-A-NAME", "1")]}, "NM901", False),
    ({"env": [("A", "nul\x00byte")]}, "NM902", False),
    ({"env": [("_", "x")]}, "NM901", False),
    ({"env": [("nproc", "64")]}, "NM901", True),
    ({"sbatch": [("partition", "batch\nrm -rf ~")]}, "NM903", True),
    ({"sbatch": [("account", "a b")]}, "NM903", True),
    ({"image": "img\n$(x)"}, "NM902", True),
    ({"image": "nvcr.io/x", "mounts": ["/a,b:/c"]}, "NM904", True),
    ({"srun_args": ["a\x00b"]}, "NM902", True),
])
def test_values_no_quoting_can_carry_are_refused(kw, code, sbatch):
    render = emit.render_sbatch_sh if sbatch else emit.render_run_sh
    with pytest.raises(MigrateError) as e:
        render(_ctx(**kw))
    assert [d.code for d in e.value.diags.errors] == [code]
    assert all("\n" not in d.message for d in e.value.diags.errors)


def test_refusals_are_located_where_the_caller_says():
    where = {"executor.partition": {"file": "recipe.py", "line": 12, "col": 9}, "executor.env_vars": {"file": "recipe.py", "line": 20}}
    with pytest.raises(MigrateError) as e:
        emit.render_sbatch_sh(_ctx(sbatch=[("partition", "a b")], env=[("BAD-NAME", "1")], where=where))
    assert sorted((d.code, d.file, d.line) for d in e.value.diags.errors) == [("NM901", "recipe.py", 20), ("NM903", "recipe.py", 12)]


def test_an_unsafe_job_name_becomes_automodel_with_a_warning():
    assert emit.sbatch_problems({"job_name": "my job\n$(x)"}) == ["--job-name=my job\\n$(x)"]
    assert "#SBATCH --job-name=automodel\n" in emit.render_sbatch_sh(_ctx(job_name="my job\n$(x)"))
    assert emit.sbatch_problems({"job_name": "team-qwen_chat_lora"}) == []


def test_a_raw_value_cannot_reach_a_shell_template():
    env = emit._env(shell=True)
    with pytest.raises(TypeError, match="quoting filter"):
        env.from_string("echo {{ x }}").render(x="$(touch pwned)")
    assert env.from_string("echo {{ x|sh }} {{ n }}").render(x="$(touch pwned)", n=3) == "echo '$(touch pwned)' 3"


def test_quoting_keeps_plain_values_byte_identical():
    assert emit.sh_word("config-fp16.yaml") == "config-fp16.yaml"
    assert emit.sh_in_dq(["fp16", "fp8"], "|") == "fp16|fp8"
    assert emit.sh_default("nvcr.io/nvidia/nemo:25.04", "CONTAINER_IMAGE") == '"${CONTAINER_IMAGE:-nvcr.io/nvidia/nemo:25.04}"'
    assert emit.sh_default("a b", "CONTAINER_IMAGE") == "${CONTAINER_IMAGE:-'a b'}"


# ---------------------------------------------------------------------------------------------- whole conversions


@pytest.mark.parametrize("name", ["$(touch PWNED_CANARY)", "a'b", 'a"b', "`touch PWNED_CANARY`", "sp ace", "caf\u00e9", "x;y|z&"])
def test_hostile_config_file_names_through_convert_and_run_sh(tmp_path, name):
    job = tmp_path / "job"
    shutil.copytree(SEED, job)
    (job / "config-fp8.yaml").rename(job / f"config-{name}.yaml")
    out = tmp_path / "out dir $(touch PWNED_CANARY)"
    conv = convert(Options(source=job))
    write(conv, out, force=False)
    _bin(tmp_path)
    (tmp_path / "cwd").mkdir()
    script = out / "run.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    r = _run(script, [name, "--step_scheduler.max_steps", "$(touch PWNED_CANARY)"], tmp_path)
    assert r.returncode == 0, r.stderr
    argv = _argv(tmp_path / "logs" / "torchrun.argv")
    assert argv[argv.index("-c") + 1:] == [f"{out.resolve()}/config-{name}.yaml", "--step_scheduler.max_steps", "$(touch PWNED_CANARY)"]
    r = _run(script, ["nope"], tmp_path)
    assert r.returncode == 2 and name in r.stderr.decode()
    _no_canary(tmp_path)


def test_a_newline_in_a_config_file_name_is_refused_at_its_file(tmp_path):
    job = tmp_path / "job"
    shutil.copytree(SEED, job)
    (job / "config-fp8.yaml").rename(job / "config-a\ntouch PWNED.yaml")
    with pytest.raises(MigrateError) as e:
        convert(Options(source=job))
    [d] = [d for d in e.value.diags.errors]
    assert d.code == "NM900" and d.file == "config-a\\ntouch PWNED.yaml" and "\n" not in d.render().splitlines()[0]


def test_an_out_path_with_a_newline_is_refused(tmp_path):
    conv = convert(Options(source=SEED))
    with pytest.raises(MigrateError) as e:
        write(conv, tmp_path / "out\n", force=False)
    assert [d.code for d in e.value.diags.errors] == ["NM913"]
    assert not (tmp_path / "out\n").exists()

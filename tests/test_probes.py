"""Probes, as an attacker and as an unlucky user would try them (issue 15): every emitted script stays inert, OUT is
never left half-written or overwritten behind the user's back (more in tests/test_out_atomic.py), and no input hangs,
crashes or ends in "internal error": each gets a located diagnostic, or converts.

Each probe runs the command line the way a user does (in-process `nemo_migrate.cli.main`, or a subprocess with a timeout
where a hang is the risk) and checks the exit code, the diagnostic code, that no traceback or "internal error"
appears, and that no canary file appears.  `PROBES` is the count the README cites.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
EXPECTED = ROOT / "golden" / "seed" / "expected"
SLURM = ROOT / "tests" / "fixtures" / "rules" / "slurm.py"
CANARY = "PWNED_CANARY"


# ---------------------------------------------------------------------------------------------- harness


class Result:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def ok(self, code: int, diag: str | None = None) -> "Result":
        assert "Traceback" not in self.err and "internal error" not in self.err, self.err
        assert self.code == code, (self.code, self.err[-2000:])
        if diag:
            assert f"[{diag}]" in self.err or f'"code": "{diag}"' in self.out, self.err[-2000:]
        return self


def cli(*args, capsys=None) -> Result:
    """The command line in this process (main(): what a user's shell runs, internal-error handler included)."""
    import importlib

    import nemo_migrate.cli as m
    import nemo_migrate.console

    importlib.reload(nemo_migrate.console)  # its functions bind sys.stderr at import: rebind to this test's capture
    old = sys.argv
    sys.argv = ["nemo-migrate", *map(str, args)]
    code = 0
    try:
        m.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return Result(code, out, err)


def sub(*args, timeout: float = 60, env: dict | None = None) -> Result:
    """The command line in a subprocess: for what could hang (the timeout fails the probe) or needs a fresh process."""
    e = dict(os.environ)
    e.update(env or {})
    try:
        r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                           env=e, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"hung: nemo-migrate {' '.join(map(str, args))}") from None
    return Result(r.returncode, r.stdout, r.stderr)


def job(tmp: Path, **replace: str) -> Path:
    """A copy of the seed job; ``replace`` maps a file name to (old, new) text edits in 'old=>new' form."""
    d = tmp / "job"
    shutil.copytree(SEED, d)
    for name, edit in replace.items():
        old, new = edit.split("=>", 1)
        p = d / name.replace("_", "-").replace("-yaml", ".yaml").replace("recipe-py", "recipe.py").replace("run-sh", "run.sh")
        text = p.read_text()
        assert old in text, (name, old)
        p.write_text(text.replace(old, new, 1))
    return d


def slurm_job(tmp: Path, old: str, new: str) -> Path:
    text = SLURM.read_text()
    assert old in text, old
    (tmp / "recipe.py").write_text(text.replace(old, new, 1))
    return tmp / "recipe.py"


def fake_bin(tmp: Path) -> dict[str, str]:
    """torchrun / srun that record argv NUL-separated; scontrol naming two nodes."""
    b = tmp / "bin"
    b.mkdir(exist_ok=True)
    for name in ("torchrun", "srun"):
        (b / name).write_text(f'#!/usr/bin/env bash\nprintf \'%s\\0\' "$@" > "{tmp}/{name}.argv"\nenv -0 > "{tmp}/{name}.env"\n')
        (b / name).chmod(0o755)
    (b / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'node-a\\nnode-b\\n'\n")
    (b / "scontrol").chmod(0o755)
    return {"PATH": f"{b}:{os.environ['PATH']}", "HOME": str(tmp)}


def run_script(script: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=30)


def argv(path: Path) -> list[str]:
    return path.read_bytes().decode().split("\0")[:-1]


def no_canary(*dirs: Path) -> None:
    for d in dirs:
        assert not [p for p in d.rglob(CANARY + "*")], f"injected command ran in {d}"


def fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


# ---------------------------------------------------------------------------------------------- shell injection


def probe_config_name_command_substitution(tmp, capsys):
    d = job(tmp)
    (d / "config-fp8.yaml").rename(d / f"config-$(touch {CANARY}).yaml")
    cli("convert", d, "-o", tmp / "out", capsys=capsys).ok(0)
    env = fake_bin(tmp)
    for args in ([], ["nope"], [f"$(touch {CANARY})"]):
        run_script(tmp / "out" / "run.sh", *args, env=env, cwd=tmp)
    assert argv(tmp / "torchrun.argv")[6] == f"{(tmp / 'out').resolve()}/config-$(touch {CANARY}).yaml"
    no_canary(tmp, ROOT)


def probe_config_name_double_quote(tmp, capsys):
    d = job(tmp)
    (d / "config-fp8.yaml").rename(d / 'config-a"b.yaml')
    cli("convert", d, "-o", tmp / "out", capsys=capsys).ok(0)
    r = run_script(tmp / "out" / "run.sh", 'a"b', env=fake_bin(tmp), cwd=tmp)
    assert r.returncode == 0 and argv(tmp / "torchrun.argv")[6].endswith('/config-a"b.yaml')


def probe_config_name_newline(tmp, capsys):
    d = job(tmp)
    (d / "config-fp8.yaml").rename(d / f"config-x\ntouch {CANARY}.yaml")
    r = cli("convert", d, "-o", tmp / "out", capsys=capsys).ok(1, "NM900")
    assert "config-x\\ntouch" in r.err and not (tmp / "out").exists()


def probe_config_name_not_utf8(tmp, capsys):
    d = job(tmp)
    os.rename(d / "config-fp8.yaml", os.fsencode(d) + b"/config-caf\xe9.yaml")
    cli("convert", d, "-o", tmp / "out", capsys=capsys).ok(1, "NM900")
    cli("convert", d, "--json", capsys=capsys).ok(1, "NM900")


def probe_config_name_terminal_escape(tmp, capsys):
    d = job(tmp)
    (d / "config-fp8.yaml").rename(d / "config-\x1b]0;owned\x07.yaml")
    r = cli("convert", d, "-o", tmp / "out", capsys=capsys).ok(1, "NM900")
    assert "\x1b" not in r.err and "\x07" not in r.err


def probe_sbatch_image_command_substitution(tmp, capsys):
    recipe = slurm_job(tmp, 'container_image="nvcr.io/nvidia/nemo:25.04"', f'container_image="nvcr.io/x:1$(touch {CANARY})`touch {CANARY}2`"')
    cli("convert", recipe, "-o", tmp / "out", capsys=capsys).ok(0)
    env = dict(fake_bin(tmp), SLURM_SUBMIT_DIR=str(tmp / "out"), SLURM_NNODES="2", SLURM_JOB_NODELIST="n[1-2]")
    r = run_script(tmp / "out" / "sbatch.sh", env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert f"--container-image=nvcr.io/x:1$(touch {CANARY})`touch {CANARY}2`" in argv(tmp / "srun.argv")
    no_canary(tmp, ROOT)


def probe_sbatch_mount_with_a_space(tmp, capsys):
    recipe = slurm_job(tmp, '"/lustre/data:/data"', '"/lustre/my data:/data"')
    cli("convert", recipe, "-o", tmp / "out", capsys=capsys).ok(0)
    env = dict(fake_bin(tmp), SLURM_SUBMIT_DIR=str(tmp / "out"), SLURM_NNODES="2", SLURM_JOB_NODELIST="n[1-2]")
    assert run_script(tmp / "out" / "sbatch.sh", env=env, cwd=tmp).returncode == 0
    assert "--container-mounts=/lustre/my data:/data,/lustre/results:/results" in argv(tmp / "srun.argv")


def probe_sbatch_mount_with_a_comma(tmp, capsys):
    recipe = slurm_job(tmp, '"/lustre/data:/data"', '"/lustre/a,b:/data"')
    cli("convert", recipe, "-o", tmp / "out", capsys=capsys).ok(1, "NM904")


def probe_sbatch_env_values(tmp, capsys):
    recipe = slurm_job(tmp, '"NCCL_DEBUG": "WARN"', f'"NCCL_DEBUG": "$(touch {CANARY})\\n\'; touch {CANARY}; \'"')
    cli("convert", recipe, "-o", tmp / "out", capsys=capsys).ok(0)
    env = dict(fake_bin(tmp), SLURM_SUBMIT_DIR=str(tmp / "out"), SLURM_NNODES="2", SLURM_JOB_NODELIST="n[1-2]")
    assert run_script(tmp / "out" / "sbatch.sh", env=env, cwd=tmp).returncode == 0
    got = dict(x.split("=", 1) for x in (tmp / "srun.env").read_bytes().decode().split("\0") if "=" in x)
    assert got["NCCL_DEBUG"] == f"$(touch {CANARY})\n'; touch {CANARY}; '"
    no_canary(tmp, ROOT)


def probe_sbatch_env_name_not_a_shell_name(tmp, capsys):
    recipe = slurm_job(tmp, '"NCCL_DEBUG": "WARN"', '"NCCL-DEBUG; touch x": "WARN"')
    cli("convert", recipe, "-o", tmp / "out", capsys=capsys).ok(1, "NM901")


def probe_sbatch_srun_args(tmp, capsys):
    recipe = slurm_job(tmp, 'exclusive=True,', f'exclusive=True, srun_args=["--mpi=pmix", "--comment=a b; touch {CANARY}"],')
    cli("convert", recipe, "-o", tmp / "out", capsys=capsys).ok(0)
    env = dict(fake_bin(tmp), SLURM_SUBMIT_DIR=str(tmp / "out"), SLURM_NNODES="2", SLURM_JOB_NODELIST="n[1-2]")
    assert run_script(tmp / "out" / "sbatch.sh", env=env, cwd=tmp).returncode == 0
    a = argv(tmp / "srun.argv")
    assert a[a.index("--mpi=pmix") + 1] == f"--comment=a b; touch {CANARY}"
    no_canary(tmp, ROOT)


def probe_sbatch_partition_with_a_newline(tmp, capsys):
    recipe = slurm_job(tmp, 'partition="batch"', 'partition="batch\\nrm -rf $HOME"')
    r = cli("convert", recipe, "-o", tmp / "out", capsys=capsys).ok(1, "NM903")
    assert "[executor.partition]" in r.err and not (tmp / "out").exists()


def probe_sbatch_account_with_a_space(tmp, capsys):
    recipe = slurm_job(tmp, 'ACCOUNT = "my_account"', 'ACCOUNT = "my account"')
    cli("convert", recipe, "-o", tmp / "out", capsys=capsys).ok(1, "NM903")


def probe_sbatch_job_name_with_a_space(tmp, capsys):
    recipe = slurm_job(tmp, 'name="slurm", num_nodes', 'name="my run $(x)", num_nodes')
    cli("convert", recipe, "-o", tmp / "out", capsys=capsys).ok(0, "NM610")
    assert "#SBATCH --job-name=automodel\n" in (tmp / "out" / "sbatch.sh").read_text()


def probe_run_time_overrides(tmp, capsys):
    cli("convert", SEED, "-o", tmp / "out", capsys=capsys).ok(0)
    over = ["--step_scheduler.max_steps", f"$(touch {CANARY})", "a b", "", "*", "--x=`touch {CANARY}`"]
    assert run_script(tmp / "out" / "run.sh", "fp16", *over, env=fake_bin(tmp), cwd=tmp).returncode == 0
    assert argv(tmp / "torchrun.argv")[7:] == over
    no_canary(tmp, ROOT)


def probe_out_path_with_a_trailing_newline(tmp, capsys):
    cli("convert", SEED, "-o", str(tmp / "out") + "\n", capsys=capsys).ok(1, "NM913")


def probe_out_path_with_shell_characters(tmp, capsys):
    out = tmp / f"o $(touch {CANARY}) 'q' \"d\""
    cli("convert", SEED, "-o", out, capsys=capsys).ok(0)
    assert run_script(out / "run.sh", "fp8", env=fake_bin(tmp), cwd=tmp).returncode == 0
    assert argv(tmp / "torchrun.argv")[6] == f"{out.resolve()}/config-fp8.yaml"
    no_canary(tmp, ROOT)


# ---------------------------------------------------------------------------------------------- OUT


def probe_out_symlink_loop(tmp, capsys):
    (tmp / "a").symlink_to(tmp / "b")
    (tmp / "b").symlink_to(tmp / "a")
    cli("convert", SEED, "-o", tmp / "a", capsys=capsys).ok(1, "NM913")


def probe_out_is_a_file(tmp, capsys):
    (tmp / "out").write_text("x")
    cli("convert", SEED, "-o", tmp / "out", capsys=capsys).ok(1, "NM011")


def probe_out_parent_is_a_file(tmp, capsys):
    (tmp / "f").write_text("x")
    cli("convert", SEED, "-o", tmp / "f" / "out", capsys=capsys).ok(1, "NM013")


def probe_out_file_is_a_directory(tmp, capsys):
    (tmp / "out" / "run.sh").mkdir(parents=True)
    cli("convert", SEED, "-o", tmp / "out", "--force", capsys=capsys).ok(1, "NM914")
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["run.sh"]


def probe_out_file_is_a_fifo(tmp, capsys):
    (tmp / "out").mkdir()
    fifo(tmp / "out" / "config-fp8.yaml")
    sub("convert", SEED, "-o", tmp / "out", "--force").ok(1, "NM914")
    sub("convert", SEED, "-o", tmp / "out", "--check").ok(2)


def probe_out_file_links_to_an_input(tmp, capsys):
    d = job(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "config-fp8.yaml").symlink_to(d / "config-fp8.yaml")
    before = (d / "config-fp8.yaml").read_text()
    cli("convert", d, "-o", tmp / "out", "--force", capsys=capsys).ok(1, "NM010")
    assert (d / "config-fp8.yaml").read_text() == before


def probe_out_file_links_elsewhere(tmp, capsys):
    (tmp / "out").mkdir()
    (tmp / "elsewhere").write_text("keep\n")
    (tmp / "out" / "run.sh").symlink_to(tmp / "elsewhere")
    cli("convert", SEED, "-o", tmp / "out", "--force", capsys=capsys).ok(0)
    assert (tmp / "elsewhere").read_text() == "keep\n" and not (tmp / "out" / "run.sh").is_symlink()


def probe_out_huge_existing_file(tmp, capsys):
    (tmp / "out").mkdir()
    with open(tmp / "out" / "migration-report.md", "wb") as fh:
        fh.truncate(2 << 30)  # sparse 2 GiB: never read whole
    cli("convert", SEED, "-o", tmp / "out", capsys=capsys).ok(1, "NM012")


def probe_out_planted_lock_symlink(tmp, capsys):
    (tmp / "out").mkdir()
    (tmp / "victim").write_text("keep\n")
    (tmp / "out" / ".nemo-nemo_migrate.lock").symlink_to(tmp / "victim")
    cli("convert", SEED, "-o", tmp / "out", capsys=capsys).ok(1, "NM914")
    assert (tmp / "victim").read_text() == "keep\n"


def probe_out_planted_staging_directory(tmp, capsys):
    """A staging directory this user's run did not make (group/world-writable) is never rolled forward into OUT."""
    stage = tmp / "out" / ".nemo-migrate-staging-evil"
    stage.mkdir(parents=True)
    (stage / "run.sh").write_text(f"touch {CANARY}\n")
    import hashlib

    (stage / "manifest.json").write_text(json.dumps({"files": {"run.sh": hashlib.sha256((stage / "run.sh").read_bytes()).hexdigest()}}))
    stage.chmod(0o777)
    cli("convert", SEED, "-o", tmp / "out", capsys=capsys).ok(0)
    assert (tmp / "out" / "run.sh").read_bytes() == (EXPECTED / "run.sh").read_bytes()


def probe_out_path_too_long(tmp, capsys):
    cli("convert", SEED, "-o", tmp.joinpath(*["d" * 200] * 30), capsys=capsys).ok(1, "NM913")


def probe_launcher_export_with_command_text(tmp, capsys):
    d = job(tmp, run_sh=f"set -ex=>set -ex\nexport NCCL_DEBUG='$(touch {CANARY})'")
    cli("convert", d, "-o", tmp / "out", capsys=capsys).ok(0)
    assert run_script(tmp / "out" / "run.sh", "fp16", env=fake_bin(tmp), cwd=tmp).returncode == 0
    got = dict(x.split("=", 1) for x in (tmp / "torchrun.env").read_bytes().decode().split("\0") if "=" in x)
    assert got["NCCL_DEBUG"] == f"$(touch {CANARY})"
    no_canary(tmp, ROOT)


def probe_cli_value_not_utf8(tmp, capsys):
    cli("convert", SEED, "-o", tmp / "out", "--model", os.fsdecode(b"/models/caf\xe9"), capsys=capsys).ok(1, "NM918")
    assert not (tmp / "out").exists()


def probe_recipe_file_name_not_utf8(tmp, capsys):
    recipe = _recipe_only(tmp, "")
    bad = Path(os.fsdecode(os.fsencode(tmp) + b"/recipe-\xe9.py"))
    recipe.rename(bad)
    cli("convert", bad, "-o", tmp / "out", capsys=capsys).ok(1, "NM900")


# ---------------------------------------------------------------------------------------------- inputs that hang


def probe_diff_dev_zero(tmp, capsys):
    sub("diff", "/dev/zero", tmp / "x", timeout=20).ok(1, "NM001")


def probe_diff_fifo(tmp, capsys):
    sub("diff", fifo(tmp / "a.yaml"), EXPECTED / "config-fp16.yaml", timeout=20).ok(1, "NM001")


def probe_diff_folder_with_a_fifo(tmp, capsys):
    (tmp / "d").mkdir()
    fifo(tmp / "d" / "config-fp16.yaml")
    sub("diff", SEED, tmp / "d", timeout=20).ok(1, "NM001")


def probe_convert_fifo_config(tmp, capsys):
    sub("convert", fifo(tmp / "config.yaml"), timeout=20).ok(1, "NM001")


def probe_convert_dev_zero(tmp, capsys):
    sub("convert", "/dev/zero", timeout=20).ok(1, "NM001")


def probe_convert_fifo_recipe(tmp, capsys):
    sub("convert", SEED / "config-fp16.yaml", "--recipe", fifo(tmp / "recipe.py"), timeout=20).ok(1, "NM001")


def probe_convert_fifo_launcher(tmp, capsys):
    sub("convert", SEED, "--run-sh", fifo(tmp / "run.sh"), timeout=20).ok(1, "NM001")


def probe_convert_folder_with_a_fifo_config(tmp, capsys):
    d = job(tmp)
    fifo(d / "config-extra.yaml")
    sub("convert", d, timeout=20).ok(1, "NM009")


def probe_convert_data_fifo_source(tmp, capsys):
    sub("convert-data", fifo(tmp / "chat.jsonl"), tmp / "o.jsonl", timeout=20).ok(1, "NM001")


def probe_convert_data_dev_zero_source(tmp, capsys):
    sub("convert-data", "/dev/zero", tmp / "o.jsonl", timeout=20).ok(1, "NM001")


def probe_convert_data_fifo_destination(tmp, capsys):
    dest = fifo(tmp / "o.jsonl")
    sub("convert-data", chat(tmp), dest, "--force", timeout=20).ok(1, "NM923")
    assert dest.is_fifo()  # never replaced, not even with --force


# ---------------------------------------------------------------------------------------------- convert-data


def chat(tmp: Path, text: str | bytes | None = None) -> Path:
    p = tmp / "chat.jsonl"
    row = {"conversations": [{"from": "User", "value": "hi"}, {"from": "Assistant", "value": "hello"}]}
    data = text if text is not None else json.dumps(row) + "\n"
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


def probe_convert_data_latin1(tmp, capsys):
    src = chat(tmp, '{"conversations": [{"from": "User", "value": "caf\xe9"}]}\n'.encode("latin-1"))
    r = cli("convert-data", src, tmp / "o.jsonl", capsys=capsys).ok(1, "NM920")
    assert "chat.jsonl:1:" in r.err and "iconv" in r.err and not (tmp / "o.jsonl").exists()


def probe_convert_data_deep_json(tmp, capsys):
    cli("convert-data", chat(tmp, "[" * 100_000 + "]" * 100_000 + "\n"), tmp / "o.jsonl", capsys=capsys).ok(1, "NM921")


def probe_convert_data_huge_int(tmp, capsys):
    cli("convert-data", chat(tmp, '{"conversations": [{"from": "User", "value": ' + "9" * 5000 + "}]}\n"), tmp / "o.jsonl",
        capsys=capsys).ok(1, "NM921")


def probe_convert_data_overflowing_float(tmp, capsys):
    cli("convert-data", chat(tmp, '{"conversations": [{"from": "User", "value": 1e400}]}\n'), tmp / "o.jsonl", capsys=capsys).ok(1, "NM921")


def probe_convert_data_nan(tmp, capsys):
    cli("convert-data", chat(tmp, '{"conversations": [{"from": "User", "value": NaN}]}\n'), tmp / "o.jsonl", capsys=capsys).ok(1, "NM921")


def probe_convert_data_lone_surrogate(tmp, capsys):
    cli("convert-data", chat(tmp, '{"conversations": [{"from": "User", "value": "\\ud800"}, {"from": "A", "value": "x"}]}\n'),
        tmp / "o.jsonl", capsys=capsys).ok(1, "NM921")
    assert [p.name for p in tmp.iterdir()] == ["chat.jsonl"]  # no temporary file left


def probe_convert_data_destination_is_a_directory(tmp, capsys):
    (tmp / "d").mkdir()
    cli("convert-data", chat(tmp), tmp / "d", "--force", capsys=capsys).ok(1, "NM923")


def probe_convert_data_destination_parent_is_a_file(tmp, capsys):
    (tmp / "f").write_text("x")
    cli("convert-data", chat(tmp), tmp / "f" / "o.jsonl", capsys=capsys).ok(1, "NM923")


def probe_convert_data_destination_symlink_loop(tmp, capsys):
    (tmp / "a").symlink_to(tmp / "b")
    (tmp / "b").symlink_to(tmp / "a")
    cli("convert-data", chat(tmp), tmp / "a", "--force", capsys=capsys).ok(1, "NM923")


def probe_convert_data_destination_is_the_source(tmp, capsys):
    src = chat(tmp)
    os.link(src, tmp / "hard.jsonl")
    cli("convert-data", src, tmp / "hard.jsonl", "--force", capsys=capsys).ok(1, "NM804")


def probe_convert_data_read_only_destination(tmp, capsys, monkeypatch):
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    cli("convert-data", chat(tmp), tmp / "o.jsonl", capsys=capsys).ok(1, "NM923")


def probe_convert_data_full_disk(tmp, capsys, monkeypatch):
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    r = cli("convert-data", chat(tmp), tmp / "o.jsonl", capsys=capsys).ok(1, "NM923")
    assert "No space left" in r.err and [p.name for p in tmp.iterdir()] == ["chat.jsonl"]


def probe_convert_data_interrupted(tmp, capsys, monkeypatch):
    from nemo_migrate import data_convert, fsio

    def interrupt(*a, **k):
        raise fsio.Interrupted(2)

    monkeypatch.setattr(data_convert, "convert_row", interrupt)
    cli("convert-data", chat(tmp), tmp / "o.jsonl", capsys=capsys).ok(1, "NM915")
    assert [p.name for p in tmp.iterdir()] == ["chat.jsonl"]


# ---------------------------------------------------------------------------------------------- YAML and numbers


def _lr(tmp: Path, value: str, key: str = "lr") -> Path:
    return job(tmp, config_fp16_yaml=f"    lr: 0.0001=>    {key}: {value}")


def probe_yaml_huge_decimal_int(tmp, capsys):
    r = cli("convert", _lr(tmp, "9" * 5000), capsys=capsys).ok(1, "NM101")
    assert "config-fp16.yaml:38:9:" in r.err


def probe_yaml_huge_octal_int(tmp, capsys):
    cli("convert", _lr(tmp, "0" + "7" * 6000), capsys=capsys).ok(1, "NM101")


def probe_yaml_huge_hex_int(tmp, capsys):
    cli("convert", _lr(tmp, "0x" + "f" * 300), capsys=capsys).ok(1, "NM101")


def probe_yaml_huge_sexagesimal_int(tmp, capsys):
    cli("convert", _lr(tmp, "1" + ":59" * 300), capsys=capsys).ok(1, "NM101")


def probe_yaml_int_beyond_float_range(tmp, capsys):
    cli("convert", _lr(tmp, "1" + "0" * 400), capsys=capsys).ok(1, "NM101")


def probe_yaml_deep_flow_nesting(tmp, capsys):
    d = job(tmp)
    (d / "config-fp16.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    sub("convert", d).ok(1, "NM101")  # a subprocess: this was a segmentation fault


def probe_yaml_deep_block_nesting(tmp, capsys):
    d = job(tmp)
    (d / "config-fp16.yaml").write_text("\n".join(" " * i + f"k{i}:" for i in range(3000)) + " 1\n")
    sub("convert", d).ok(1, "NM101")


def probe_export_deep_json(tmp, capsys):
    (tmp / "job.json").write_text('{"_target_": "nemo.collections.llm.api.finetune", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    sub("convert", tmp / "job.json").ok(1)


def probe_yaml_binary(tmp, capsys):
    d = job(tmp)
    (d / "config-fp16.yaml").write_bytes(bytes(range(256)) * 8)
    cli("convert", d, capsys=capsys).ok(1, "NM101")


def probe_yaml_billion_laughs(tmp, capsys):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    d = job(tmp)
    (d / "config-fp16.yaml").write_text("\n".join(lines) + "\n")
    sub("convert", d, timeout=60).ok(1, "NM101")


def probe_yaml_python_tag(tmp, capsys):
    cli("convert", _lr(tmp, f"!!python/object/apply:os.system ['touch {CANARY}']"), capsys=capsys).ok(1, "NM101")
    no_canary(tmp, ROOT)


# ---------------------------------------------------------------------------------------------- non-finite numbers


def probe_yaml_lr_nan(tmp, capsys):
    r = cli("convert", _lr(tmp, ".nan"), capsys=capsys).ok(1, "AM300")
    assert "config-fp16.yaml:38:" in r.err


def probe_yaml_lr_inf(tmp, capsys):
    cli("convert", _lr(tmp, ".inf"), capsys=capsys).ok(1, "AM300")


def probe_yaml_lr_1e400(tmp, capsys):
    cli("convert", _lr(tmp, "1e400"), capsys=capsys).ok(1, "AM300")


def probe_yaml_weight_decay_1e400(tmp, capsys):
    cli("convert", _lr(tmp, "0.0001\n    weight_decay: 1e400"), capsys=capsys).ok(1, "AM300")


def probe_cli_lr_1e400(tmp, capsys):
    cli("convert", SEED, "--set", "optim.config.lr=1e400", capsys=capsys).ok(1, "AM300")


def probe_cli_lr_nan(tmp, capsys):
    cli("convert", SEED, "--set", "optim.config.lr=.nan", capsys=capsys).ok(1, "NM202")


def _recipe_only(tmp: Path, line: str, header: str | None = None) -> Path:
    text = (SEED / "recipe.py").read_text().replace("seq_length=4096,", "seq_length=4096, dataset_root='/data',")
    text = text.replace("num_gpus_per_node=4", "num_gpus_per_node=8")
    text = text.replace("    recipe.log.tensorboard = None\n", f"    recipe.log.tensorboard = None\n{line}\n")
    if header:
        text = text.replace("def migration_recipe() -> run.Partial:", header)
    (tmp / "recipe.py").write_text(text)
    return tmp / "recipe.py"


def probe_recipe_lr_float_inf(tmp, capsys):
    recipe = _recipe_only(tmp, "    recipe.optim.config.lr = float('inf')")
    r = cli("convert", recipe, capsys=capsys).ok(1, "AM300")
    line = recipe.read_text().splitlines().index("    recipe.optim.config.lr = float('inf')") + 1
    assert f"recipe.py:{line}:5: error[AM300]" in r.err


def probe_recipe_weight_decay_nan(tmp, capsys):
    cli("convert", _recipe_only(tmp, "    recipe.optim.config.weight_decay = float('nan')"), capsys=capsys).ok(1, "AM300")


def probe_recipe_default_argument_calls_open(tmp, capsys):
    recipe = _recipe_only(tmp, "    recipe.log.name = x", header=f"def migration_recipe(x=open('{tmp}/{CANARY}', 'w')) -> run.Partial:")
    r = cli("convert", recipe, capsys=capsys)
    assert r.code in (0, 1) and "internal error" not in r.err and "Traceback" not in r.err
    no_canary(tmp)


def probe_recipe_argparse_default_calls_open(tmp, capsys):
    recipe = _recipe_only(tmp, "    recipe.optim.config.lr = lr", header="def migration_recipe(lr: float = open('/etc/hostname')) -> run.Partial:")
    cli("convert", recipe, capsys=capsys).ok(1, "NM340")


def probe_recipe_int_beyond_float_range(tmp, capsys):
    cli("convert", _recipe_only(tmp, "    recipe.optim.config.lr = 0x" + "f" * 300), capsys=capsys).ok(1)


def probe_recipe_int_over_4300_digits(tmp, capsys):
    cli("convert", _recipe_only(tmp, "    recipe.trainer.max_steps = 0x" + "f" * 5000), capsys=capsys).ok(1)


# ---------------------------------------------------------------------------------------------- the cache


def _cache_probe(tmp: Path, spoil) -> None:
    cache = tmp / "cache"
    env = {"NEMO_MIGRATE_CACHE": str(cache)}
    sub("convert", SEED, "--json", env=env).ok(0)
    for p in (cache / "nemo-migrate").rglob("*"):
        if p.is_file():
            spoil(p)
    sub("convert", SEED, "-o", tmp / "out", env=env, timeout=60).ok(0)
    assert {p.name: p.read_bytes() for p in (tmp / "out").iterdir()} == {p.name: p.read_bytes() for p in EXPECTED.iterdir()}


def probe_cache_garbage(tmp, capsys):
    _cache_probe(tmp, lambda p: p.write_bytes(os.urandom(300)))


def probe_cache_valid_json_of_another_shape(tmp, capsys):
    _cache_probe(tmp, lambda p: p.write_text("null" if p.suffix == ".json" else "{}"))


def probe_cache_truncated(tmp, capsys):
    _cache_probe(tmp, lambda p: p.write_bytes(p.read_bytes()[:90]))


def probe_cache_fifo(tmp, capsys):
    _cache_probe(tmp, lambda p: (p.unlink(), os.mkfifo(p)))


def probe_cache_dir_is_a_file(tmp, capsys):
    (tmp / "cache").write_text("x")
    sub("convert", SEED, "--json", env={"NEMO_MIGRATE_CACHE": str(tmp / "cache")}).ok(0)


# ---------------------------------------------------------------------------------------------- the table

PROBES = {name[len("probe_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("probe_")}


@pytest.mark.parametrize("name", [pytest.param(n, marks=getattr(fn, "pytestmark", [])) for n, fn in PROBES.items()])
def test_probe(name, tmp_path, capsys, monkeypatch):
    fn = PROBES[name]
    kwargs = {"monkeypatch": monkeypatch} if "monkeypatch" in fn.__code__.co_varnames[:fn.__code__.co_argcount] else {}
    fn(tmp_path, capsys, **kwargs)


def test_probe_count():
    assert len(PROBES) == 83, len(PROBES)  # the README's reliability section cites this number

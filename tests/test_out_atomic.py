"""OUT is all or nothing, under a lock, and never overwritten behind the user's back.

Real processes: two converts race into one OUT (one slowed before its renames through NEMO_MIGRATE_TEST_HOOK), a
convert is SIGKILLed between its renames or while staging and then run again, SIGINT/SIGTERM arrive while it writes,
the disk is full (`ulimit -f`, or an injected ENOSPC), OUT is read-only."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nemo_migrate.convert import LOCK_NAME, STAGING_PREFIX, Options, convert, write
from nemo_migrate.diagnostics import MigrateError

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
EXPECTED = ROOT / "golden" / "seed" / "expected"
FOUR = ["config-fp16.yaml", "config-fp8.yaml", "migration-report.md", "run.sh"]


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nemo_migrate.cli", "convert", str(SEED), "-o", str(out), *extra]


def _env(**kw: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NEMO_MIGRATE_TEST_HOOK", None)
    env.update(kw)
    return env


def _start(out: Path, hook: str, *extra: str) -> subprocess.Popen:
    """A convert that stops at a hook point; returns once it got there (it said so on stderr)."""
    p = subprocess.Popen(_cmd(out, *extra), env=_env(NEMO_MIGRATE_TEST_HOOK=hook), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         text=True, cwd=ROOT)
    point = hook.split("=")[0]
    deadline = time.monotonic() + 120
    for line in p.stderr:
        if f"test hook: {point}" in line:
            return p
        assert time.monotonic() < deadline
    p.wait()
    raise AssertionError(f"the convert ended (exit {p.returncode}) before reaching {point}")


def _run(out: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out, *extra), env=_env(**env), capture_output=True, text=True, cwd=ROOT, timeout=300)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _golden() -> dict[str, bytes]:
    return {n: (EXPECTED / n).read_bytes() for n in FOUR}


def test_a_slowed_convert_and_a_second_one_never_both_win(tmp_path):
    out = tmp_path / "out"
    first = _start(out, "staged=3")  # everything staged, renames not started
    second = _run(out, "--set", "trainer.max_steps=7")  # another job into the same OUT
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert second.returncode == 1 and "NM012" in second.stderr, second.stderr
    assert _files(out) == _golden()  # the first one's files, whole


def test_the_same_job_twice_at_once_writes_once(tmp_path):
    out = tmp_path / "out"
    first = _start(out, "committed=2")
    second = _run(out)
    assert first.wait(timeout=120) == 0
    assert second.returncode == 0 and f"unchanged: {', '.join(FOUR)}" in second.stderr, second.stderr  # it waited, then found them
    assert _files(out) == _golden()


def test_plain_races_leave_one_whole_job(tmp_path):
    """Six converts of two different jobs at once: OUT holds exactly one job's files, and every convert that exited 0
    wrote or found exactly those."""
    out = tmp_path / "out"
    jobs = [(), ("--set", "trainer.max_steps=7")] * 3
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda extra: _run(out, *extra), jobs))
    final = _files(out)
    assert sorted(final) == FOUR
    winners = {extra for extra, r in zip(jobs, results) if r.returncode == 0}
    assert len(winners) == 1, [(x, r.returncode, r.stderr[-300:]) for x, r in zip(jobs, results)]
    assert all(r.returncode in (0, 1) for r in results)
    assert all("NM012" in r.stderr for r in results if r.returncode == 1)
    if winners == {()}:
        assert final == _golden()


def test_sigkill_between_renames_is_completed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    p = _start(out, "renamed-one=60")
    p.kill()
    p.wait()
    left = [x.name for x in out.iterdir()]
    assert any(n.startswith(STAGING_PREFIX) for n in left) and "config-fp16.yaml" in left and "run.sh" not in left
    check = _run(out, "--check")
    assert check.returncode == 2 and "NM917" in check.stderr  # reported, nothing touched
    r = _run(out)
    assert r.returncode == 0 and "NM911" in r.stderr, r.stderr
    assert _files(out) == _golden()  # no staging directory, no lock file


def test_sigkill_while_staging_leaves_out_untouched_and_is_cleaned(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.sh").write_text("mine\n")
    p = _start(out, "staged-one=60", "--force")
    p.kill()
    p.wait()
    assert (out / "run.sh").read_text() == "mine\n"
    r = _run(out, "--force")
    assert r.returncode == 0 and "NM916" in r.stderr, r.stderr
    assert _files(out) == _golden()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_staging_removes_the_temporary_files(tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.sh").write_text("mine\n")
    p = _start(out, "staged-one=60", "--force")
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "NM915" in err and "Traceback" not in err, err
    assert _files(out) == {"run.sh": b"mine\n"}


def test_a_signal_after_the_commit_point_waits_for_the_renames(tmp_path):
    out = tmp_path / "out"
    p = _start(out, "renamed-one=1")
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 0
    assert _files(out) == _golden()


def test_a_full_disk_leaves_nothing_behind(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run(["bash", "-c", 'ulimit -f 16 && exec "$@"', "bash", *_cmd(out)], env=_env(), capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "NM014" in r.stderr and "File too large" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _files(out) == {}
    r = _run(tmp_path / "new", NEMO_MIGRATE_TEST_HOOK="staged-one=errno:28")
    assert r.returncode == 1 and "No space left on device" in r.stderr
    assert not (tmp_path / "new").exists()  # it created OUT, so it removed it again


def test_a_read_only_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = _run(out, NEMO_MIGRATE_TEST_HOOK="locked=errno:30")  # EROFS where the first file would be created
    assert r.returncode == 1 and "NM014" in r.stderr and "Read-only file system" in r.stderr
    assert _files(out) == {}
    if os.geteuid() != 0:  # root writes anyway
        out.chmod(0o555)
        try:
            r = _run(out)
            assert r.returncode == 1 and "NM014" in r.stderr and "Traceback" not in r.stderr, r.stderr
        finally:
            out.chmod(0o755)


def test_a_read_only_out_in_process(tmp_path, monkeypatch):
    import filelock

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    with pytest.raises(MigrateError) as e:
        write(convert(Options(source=SEED)), tmp_path / "out", force=False)
    assert [d.code for d in e.value.diags.errors] == ["NM014"]


def test_a_held_lock_times_out_cleanly(tmp_path):
    import filelock

    out = tmp_path / "out"
    out.mkdir()
    with filelock.FileLock(str(out / LOCK_NAME)):
        r = _run(out, NEMO_MIGRATE_LOCK_TIMEOUT="0.5")
    assert r.returncode == 1 and "NM910" in r.stderr
    assert [p.name for p in out.iterdir()] in ([], [LOCK_NAME])


@pytest.mark.parametrize("make, code", [
    (lambda out: (out.parent / "loop").symlink_to(out) or out.symlink_to(out.parent / "loop"), "NM913"),
    (lambda out: out.write_text("a file"), "NM011"),
    (lambda out: (out.parent / "f").write_text("x"), "NM013"),
    (lambda out: (out.mkdir(), (out / "run.sh").mkdir()), "NM914"),
    (lambda out: (out.mkdir(), os.mkfifo(out / "run.sh")), "NM914"),
])
def test_unusable_outputs_are_refused_with_a_message(tmp_path, make, code):
    out = tmp_path / "out"
    make(out)
    target = tmp_path / "f" / "sub" if code == "NM013" else out
    r = _run(target, "--force")
    assert r.returncode == 1 and f"error[{code}]" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_interrupted_write_whose_files_changed_since_is_reported(tmp_path):
    out = tmp_path / "out"
    p = _start(out, "renamed-one=60")
    p.kill()
    p.wait()
    (out / "config-fp16.yaml").write_text("edited by hand\n")
    stage = next(out.glob(STAGING_PREFIX + "*"))
    (stage / "run.sh").unlink()
    r = _run(out, "--force")
    assert r.returncode == 1 and "NM912" in r.stderr and "config-fp16.yaml" in r.stderr, r.stderr
    assert (out / "config-fp16.yaml").read_text() == "edited by hand\n"

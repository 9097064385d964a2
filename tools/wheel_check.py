"""What an installed user gets: build the wheel, install it in a fresh venv (outside this checkout), and run every
golden case through the installed `nemo-migrate` command; every output must equal golden/<case>/expected byte for byte.

    python tools/wheel_check.py [--keep DIR]     (make wheel-check; part of make test)
"""
from __future__ import annotations

import argparse
import filecmp
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temporary folder)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="wheel-check-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    r = sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", work / "dist", ROOT)
    if r.returncode:
        print(r.stdout + r.stderr)
        return 1
    wheel = max((work / "dist").glob("nemo_migrate-*.whl"), key=lambda p: p.stat().st_mtime)
    venv = work / "venv"
    for cmd in ([sys.executable, "-m", "venv", "--clear", venv], [venv / "bin/python", "-m", "pip", "install", "-q", wheel]):
        r = sh(*cmd, cwd=work)
        if r.returncode:
            print(r.stdout + r.stderr)
            return 1
    print(f"wheel-check: {wheel.name} installed in a fresh venv ({time.time() - t0:.0f} s)")
    exe = venv / "bin" / "nemo-migrate"
    failed = 0
    for case in sorted(p for p in (ROOT / "golden").iterdir() if (p / "input").is_dir()):
        out = work / "out" / case.name
        extra = []
        if (case / "args").is_file():
            extra = [a for line in (case / "args").read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")
                     for a in shlex.split(line)]
        if (case / "diff").is_file():
            left, right = (case / "diff").read_text().split()[:2]
            # the CLI runs (its terminal output names files relative to the working directory), and the installed
            # package's own diff renders the golden text byte for byte (paths relative to the case, as golden.py does)
            r = sh(exe, "diff", left, right, "--all", cwd=case / "input")
            ok = r.returncode in (0, 2)
            code = ("import sys; from pathlib import Path; from nemo_migrate.golden import render; "
                    "sys.stdout.write(render(Path(sys.argv[1]))['diff.txt'])")
            g = sh(venv / "bin" / "python", "-c", code, case, cwd=work)
            out.mkdir(parents=True, exist_ok=True)
            (out / "diff.txt").write_text(g.stdout)
            ok = ok and g.returncode == 0 and g.stdout == (case / "expected" / "diff.txt").read_text()
            r = r if g.returncode == 0 else g
        else:
            r = sh(exe, "convert", ".", *extra, "-o", out, "--force", cwd=case / "input")
            want = sorted(p.name for p in (case / "expected").iterdir())
            got = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
            ok = r.returncode == 0 and got == want and all(filecmp.cmp(out / n, case / "expected" / n, shallow=False) for n in want)
        print(f"  {'ok  ' if ok else 'FAIL'} {case.name}")
        if not ok:
            failed += 1
            print("    " + (r.stdout + r.stderr)[-2000:].replace("\n", "\n    "))
    n = len(list((ROOT / "golden").iterdir()))
    print(f"wheel-check: {n - failed}/{n} golden cases from the installed wheel ({time.time() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Golden programs: ``golden/<case>/input`` (a NeMo 2 job), optional ``golden/<case>/args`` (extra ``convert`` arguments,
one per line), and ``golden/<case>/expected`` (what ``nemo-migrate convert`` must write).  A case with a ``diff`` file
(``LEFT RIGHT`` paths under input/) is a ``nemo-migrate diff`` case: expected/diff.txt and expected/diff.json.

``python -m nemo_migrate.golden check`` fails on any drift (``make golden``); ``python -m nemo_migrate.golden update`` regenerates
(``make golden-update``).
"""

from __future__ import annotations

import difflib
import shlex
import sys
from pathlib import Path

from .convert import Options, convert
from .diagnostics import MigrateError

ROOT = Path(__file__).resolve().parent.parent / "golden"


def cases(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "input").is_dir())


def options_for(case: Path) -> Options:
    args = []
    if (case / "args").is_file():
        for line in (case / "args").read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                args += shlex.split(line)
    opts = Options(source=case / "input")
    it = iter(args)
    for a in it:
        if a == "--set":
            opts.sets.append(next(it))
        elif a in ("--nproc-per-node", "--nnodes"):
            setattr(opts, a[2:].replace("-", "_"), int(next(it)))
        elif a in ("--model", "--factory", "--launcher"):
            setattr(opts, a[2:], next(it))
        elif a == "--source":
            opts.source = case / "input" / next(it)
        elif a == "--recipe":
            opts.recipe = case / "input" / next(it)
        else:
            raise SystemExit(f"{case / 'args'}: unsupported argument {a!r}")
    return opts


def render(case: Path) -> dict[str, str]:
    if (case / "diff").is_file():
        import json

        from .diff import render_plain, run_diff, to_json

        left, right = (case / "diff").read_text().split()[:2]
        results = run_diff(case / "input" / left, case / "input" / right)
        relabel = lambda t: t.replace(str(case / "input") + "/", "")  # noqa: E731
        return {"diff.txt": relabel(render_plain(results, show_all=True)),
                "diff.json": relabel(json.dumps(to_json(results), indent=2, ensure_ascii=False) + "\n")}
    return convert(options_for(case)).files


def check(root: Path = ROOT) -> int:
    bad = 0
    for case in cases(root):
        try:
            files = render(case)
        except MigrateError as e:
            print(f"FAIL {case.name}: conversion failed\n{e.diags.render()}")
            bad += 1
            continue
        exp = case / "expected"
        want = {p.name: p.read_text(encoding="utf-8") for p in sorted(exp.iterdir())} if exp.is_dir() else {}
        if set(want) != set(files):
            print(f"FAIL {case.name}: files {sorted(files)} != expected {sorted(want)}")
            bad += 1
            continue
        drift = [n for n in files if files[n] != want[n]]
        for n in drift:
            diff = difflib.unified_diff(want[n].splitlines(True), files[n].splitlines(True), f"expected/{n}", f"now/{n}", n=1)
            sys.stdout.writelines(list(diff)[:60])
        if drift:
            print(f"FAIL {case.name}: {', '.join(drift)} drifted")
            bad += 1
        else:
            print(f"ok   {case.name} ({len(files)} files)")
    print(f"{len(cases(root)) - bad}/{len(cases(root))} golden cases match")
    return 1 if bad else 0


def update(root: Path = ROOT) -> int:
    for case in cases(root):
        files = render(case)
        exp = case / "expected"
        exp.mkdir(exist_ok=True)
        for old in exp.iterdir():
            if old.name not in files:
                old.unlink()
        for n, text in files.items():
            (exp / n).write_text(text, encoding="utf-8")
        print(f"updated {case.name}")
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "check"
    sys.exit({"check": check, "update": update}[cmd]())

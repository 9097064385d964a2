"""What a terminal shows: the CLI's own rich console forced into terminal mode (colours on, a fixed width), for
convert's errors and warnings and for diff.  Keys, paths and values are the user's: `[...]`, `[bold]` and `\\` in
them must reach the screen as written (rich markup would eat them), and diff must stay compact at 80-160 columns."""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from nemo_migrate import console
from nemo_migrate.cli import app

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
GUIDE = ROOT / "golden" / "diff-guide" / "input"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tty(monkeypatch, width: int, *args: str):
    """Run the CLI with its console in terminal mode at ``width`` columns; (exit code, screen text without colours)."""
    made = []

    def rich(stream=None):
        c = Console(file=stream or sys.stdout, force_terminal=True, color_system="truecolor", width=width,
                    highlight=False, soft_wrap=False)
        made.append(c)
        return c

    monkeypatch.setattr(console, "_tty", lambda stream=None: True)
    monkeypatch.setattr(console, "_rich", rich)
    r = CliRunner().invoke(app, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert made, "nothing went through the terminal console"
    raw = r.stdout + r.stderr
    assert "\x1b[" in raw  # it really rendered for a terminal
    return r.exit_code, ANSI.sub("", raw)


@pytest.fixture
def job(tmp_path, monkeypatch):
    """The seed job in a folder whose name holds markup and a backslash, with a variant file named like markup, and
    keys rich would read as tags; the working directory is tmp_path."""
    d = tmp_path / "jobs" / "my[bold]job\\x"
    shutil.copytree(SEED, d)
    text = (d / "config-fp16.yaml").read_text()
    text = text.replace("  max_steps: 30", "  max_stpes: 30\n  '[red]x\\y': 1")
    (d / "config-fp16.yaml").write_text(text)
    (d / "config-[b]o\\ld.yaml").write_text((SEED / "config-fp16.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return d


def test_convert_errors_keep_keys_paths_and_markup(job, monkeypatch):
    code, screen = tty(monkeypatch, 200, "convert", str(job))
    assert code == 1
    where = "jobs/my[bold]job\\x/config-fp16.yaml"  # relative to the working directory, as written
    assert f"{where}:13:3: error[NM201] [trainer.max_stpes]: No parameter named 'max_stpes'" in screen, screen
    assert "[trainer.[red]x\\y]" in screen, screen
    assert "hint: did you mean 'max_steps'" in screen
    assert screen.count("did you mean 'max_steps'") == 1
    # errors first; the other variants' warnings are counted, not printed over them
    first_warning = screen.find("warning[")
    assert first_warning == -1 or first_warning > screen.rfind("error[")
    assert "config-fp8.yaml" not in screen and "config-[b]o\\ld.yaml:" not in screen
    assert re.search(r"2 errors; nothing written \(\d+ warnings? not shown, in files without errors", screen), screen


def test_convert_quiet_prints_errors_and_the_summary_only(job, monkeypatch):
    code, screen = tty(monkeypatch, 200, "convert", str(job), "-q")
    lines = [x for x in screen.splitlines() if x.strip()]
    assert code == 1
    assert [x for x in lines if "warning[" in x] == []
    assert lines[-1].startswith("nemo-migrate: 2 errors; nothing written (") and "-q" in lines[-1]


def test_convert_warnings_and_tables_keep_markup(tmp_path, monkeypatch):
    d = tmp_path / "j[i]ob"
    shutil.copytree(SEED, d)
    (d / "config-[b]o\\ld.yaml").write_text((SEED / "config-fp8.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    code, screen = tty(monkeypatch, 160, "convert", str(d))
    assert code == 0, screen
    assert "j[i]ob/config-fp8.yaml:24:5: warning[NM410] [trainer.plugins.fp8]: cannot be expressed in Automodel 0.7 [FP8001]" in screen
    assert "j[i]ob/config-[b]o\\ld.yaml:24:5: warning[NM410] [trainer.plugins.fp8]" in screen
    assert "[b]o\\ld" in screen.split("knobs per bucket")[1]  # the variant's name in the table


def test_convert_quiet_success_says_how_many_warnings_it_did_not_show(monkeypatch):
    code, screen = tty(monkeypatch, 160, "convert", str(SEED), "-q")
    assert code == 0 and "warning[" not in screen
    assert re.search(r"nemo-migrate: \d+ warnings(, \d+ notes?)? not shown \(-q\)", screen), screen


@pytest.mark.parametrize("width", [80, 120, 160])
def test_diff_is_compact_and_keeps_every_fact(width, monkeypatch):
    monkeypatch.chdir(ROOT)
    left, right = "golden/diff-guide/input/nemo2/config-fp16.yaml", "golden/diff-guide/input/automodel/config-fp16.yaml"
    code, screen = tty(monkeypatch, width, "diff", left, right)
    assert code == 2
    lines = screen.splitlines()
    assert max(len(x) for x in lines) <= width
    assert f"nemo2 {left}  vs  automodel {right}" in screen or width < len(left) + len(right) + 20
    facts = [x.split()[1] for x in lines if x[:1] in "~≈+-" and len(x.split()) > 1]
    assert len(facts) == 27 and "optimizer.lr" in facts and "lr.schedule" in facts
    assert len(lines) <= {80: 190, 120: 120, 160: 90}[width], len(lines)  # the rich table took ~190 lines at 160
    # origins are file:line under the name the header gives (the shortest distinct suffix), lines of a file together
    at = next(i for i, x in enumerate(lines) if x.startswith("~ optimizer.lr"))
    row = lines[at] if width >= 110 else lines[at + 1]  # narrow: the values on the line below the fact
    assert "0.0001  nemo2/config-fp16.yaml:38" in row and "1e-05  automodel/config-fp16.yaml:86" in row, row
    assert "nemo2/config-fp16.yaml:36,38" in screen  # lines of one file together
    assert ".../" not in screen and "…" not in screen
    # findings in the one diagnostics format, path relative to the working directory
    assert f"{right}:33:3: error[AM210] [peft.match_all_linear]:" in screen.replace("\n", "") or width < 100


def test_diff_keeps_markup_in_keys_values_and_file_names(tmp_path, monkeypatch):
    d = tmp_path / "am[bold]\\x"
    d.mkdir()
    text = (ROOT / "golden/seed/expected/config-fp16.yaml").read_text()
    text = text.replace("  dim: 8", "  '[red]dim\\z': 8").replace("checkpoint_dir: ", "checkpoint_dir: /ck/[bold]\\")
    (d / "config-fp16.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    code, screen = tty(monkeypatch, 400, "diff", str(ROOT / "golden/seed/expected/config-fp16.yaml"), "am[bold]\\x/config-fp16.yaml")
    assert code == 2, screen
    assert "am[bold]\\x/config-fp16.yaml" in screen.splitlines()[0]
    assert "[peft.[red]dim\\z]" in screen, screen
    assert "/ck/[bold]\\" in screen, screen

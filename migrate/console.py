"""Terminal output: rich on a terminal, plain text when piped (``NO_COLOR``/``TERM=dumb`` respected), and the
--output-format of convert and diff (json, github, sarif, --statistics: :mod:`nemo_migrate.formats`).  Everything the
user wrote (keys, values, file names) reaches rich as ``Text``, never as markup.  Diagnostics print in one format,
``path:line:col: severity[CODE] [key]: message``, the path relative to the working directory.  rich is imported only
when a terminal is attached, so piped runs start fast."""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .diagnostics import Diagnostic, Diagnostics, dump_json


def _tty(stream=None) -> bool:
    stream = stream or sys.stdout
    return stream.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ


def _rich(stream=None):
    from rich.console import Console

    return Console(file=stream or sys.stdout, highlight=False, soft_wrap=False)


_SEV_STYLE = {"error": "bold red", "warning": "yellow", "note": "cyan"}


def locator(*bases: Path | None):
    """file -> the file as printed: relative to the working directory (absolute outside it), looked up under ``bases``
    (the job folder the diagnostics' paths are relative to)."""
    from .formats import Paths

    paths = Paths(*bases)
    return lambda d: paths.path(d.file)


def _plain_locate(d: Diagnostic) -> str | None:
    return d.file


def _rich_diag(d: Diagnostic, path: str | None):
    """One diagnostic as rich Text (never markup: keys, values and file names are the user's and may hold `[...]`)."""
    from rich.text import Text

    t = Text()
    loc = d.location(path)
    if loc:
        t.append(loc + ": ", style="bold")
    t.append(f"{d.severity}[{d.code}]", style=_SEV_STYLE[d.severity])
    if d.key:
        t.append(f" [{d.key}]", style="bold")
    t.append(": " + d.message)
    if d.hint:
        t.append("\n  hint: ", style="dim")
        t.append(d.hint)
    return t


def _select(items: list[Diagnostic], quiet: bool) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """(shown, not shown).  Errors come first.  -q shows errors only.  When there are errors, the warnings and notes
    of the files that hold none (another variant's config) are counted, not shown: they would bury the errors."""
    errs = [d for d in items if d.severity == "error"]
    rest = [d for d in items if d.severity != "error"]
    if quiet:
        return errs, rest
    if not errs:
        return rest, []
    files = {d.file for d in errs}
    return errs + [d for d in rest if d.file in files], [d for d in rest if d.file not in files]


def _counted(items: list[Diagnostic]) -> str:
    n = Counter(d.severity for d in items)
    return ", ".join(f"{n[s]} {s}{'s' if n[s] != 1 else ''}" for s in ("error", "warning", "note") if n[s])


def diagnostics(diags: Diagnostics | list[Diagnostic], stream=None, quiet: bool = False, locate=None,
                every: bool = False) -> list[Diagnostic]:
    """Print diagnostics, the one format of every command: ``path:line:col: severity[CODE] [key]: message`` and
    ``  hint: ...``, the path relative to the working directory.  Returns those left out (see :func:`_select`)."""
    stream = stream or sys.stderr
    locate = locate or _plain_locate
    items = (diags if isinstance(diags, Diagnostics) else Diagnostics(list(diags))).sorted()
    shown, hidden = (items, []) if every else _select(items, quiet)
    if shown and _tty(stream):
        con = _rich(stream)
        for d in shown:
            con.print(_rich_diag(d, locate(d)))
    else:
        for d in shown:
            print(d.render(locate(d)), file=stream)
    return hidden


def _hidden_note(hidden: list[Diagnostic], quiet: bool) -> str:
    if not hidden:
        return ""
    why = "-q" if quiet else "in files without errors"
    return f" ({_counted(hidden)} not shown, {why}: --output-format json lists every diagnostic)"


def json_diagnostics(items: list[Diagnostic], locate=None) -> list[dict]:
    """The JSON form of diagnostics: the report's fields (file relative to the job) and, for tools, ``path``: the file
    relative to the working directory."""
    locate = locate or _plain_locate
    return [d.to_json() | ({"path": locate(d)} if d.file and locate(d) else {}) for d in items]


def machine(items: list[Diagnostic], fmt: str, locate=None) -> None:
    """github / sarif on stdout."""
    from . import formats

    locate = locate or _plain_locate
    if fmt == "github":
        for line in formats.github(items, locate):
            sys.stdout.write(line + "\n")
    else:
        print_json(formats.sarif(items, locate))


def statistics(items: list[Diagnostic], stream=None) -> None:
    from .formats import statistics as stats, statistics_lines

    for line in statistics_lines(stats(items)):
        print(line, file=stream or sys.stderr)


def print_diagnostics(items: list[Diagnostic], fmt: str = "text", locate=None, quiet: bool = False, stats: bool = False) -> list[Diagnostic]:
    """Diagnostics in the --output-format the user chose (json is printed by the caller, with its report); returns
    those not shown."""
    if fmt in ("github", "sarif"):
        machine(items, fmt, locate)
        return []
    if stats:
        statistics(items)
        return []
    return diagnostics(items, quiet=quiet, locate=locate)


def fail(diags: Diagnostics, json_mode: bool = False, *, fmt: str = "text", locate=None, quiet: bool = False,
         stats: bool = False) -> None:
    if json_mode or fmt == "json":
        doc = {"tool": "nemo-migrate", "status": "error", "diagnostics": json_diagnostics(diags.sorted(), locate)}
        if stats:
            from .formats import statistics as st

            doc["statistics"] = st(diags.items)
        print_json(doc)
        return
    hidden = print_diagnostics(diags.sorted(), fmt, locate, quiet, stats)
    n = len(diags.errors)
    print(f"nemo-migrate: {n} error{'s' if n != 1 else ''}; nothing written{_hidden_note(hidden, quiet)}", file=sys.stderr)


def print_json(obj: Any) -> None:
    sys.stdout.write(dump_json(obj) + "\n")


def error_line(text: str) -> None:
    print(f"nemo-migrate: error: {text}", file=sys.stderr)


def info_line(text: str) -> None:
    print(text, file=sys.stderr)


def report_json(diags: Diagnostics, fo: dict, doc: dict) -> None:
    """convert's --json report, its diagnostics with their ``path`` (and ``statistics`` with --statistics); ``fo``:
    the output options (locate, stats)."""
    locate, stats = fo.get("locate"), fo.get("stats")
    doc = dict(doc, diagnostics=json_diagnostics(diags.sorted(), locate))
    if stats:
        from .formats import statistics as st

        doc["statistics"] = st(diags.items)
    print_json(doc)


def report(conv, quiet: bool = False, *, fmt: str = "text", locate=None, stats: bool = False) -> None:
    hidden = print_diagnostics(conv.diags.sorted(), fmt, locate, quiet, stats)
    if hidden:
        print(f"nemo-migrate: {_counted(hidden)} not shown (-q)", file=sys.stderr)
    if fmt in ("github", "sarif"):  # stdout is the tool's; the summary goes to stderr
        for v in conv.variants:
            c = v.counts()
            print(f"{v.label} -> {v.output}: {c['exact']} exact, {c['approximate']} approximate, {c['dropped']} dropped, "
                  f"{c['unsupported']} unsupported", file=sys.stderr)
        return
    if _tty():
        from rich.table import Table
        from rich.text import Text

        con = _rich()
        t = Table(title="nemo-migrate: knobs per bucket", show_lines=False)
        for col in ("job", "output", "exact", "approximate", "dropped", "unsupported"):
            t.add_column(col, justify="right" if col not in ("job", "output") else "left")
        for v in conv.variants:
            c = v.counts()
            t.add_row(Text(v.label), Text(v.output), str(c["exact"]), Text(str(c["approximate"]), style="yellow"), str(c["dropped"]),
                      Text(str(c["unsupported"]), style="red") if c["unsupported"] else "0")
        con.print(t)
        if not quiet:
            for v in conv.variants:
                fs = v.findings()
                if not fs:
                    continue
                ft = Table(title=Text(f"{v.label}: approximations and unsupported settings"), show_lines=True, expand=True)
                ft.add_column("rule", no_wrap=True)
                ft.add_column("bucket", no_wrap=True)
                ft.add_column("knobs", ratio=1)
                ft.add_column("reason", ratio=3)
                for f in fs:
                    style = "red" if f["status"] == "unsupported" else "yellow"
                    ft.add_row(Text(f["rule"]), Text(f["status"], style=style), Text(f["knobs"]), Text(f["reason"]))
                con.print(ft)
        return
    for v in conv.variants:
        c = v.counts()
        print(f"{v.label} -> {v.output}: {c['exact']} exact, {c['approximate']} approximate, {c['dropped']} dropped, "
              f"{c['unsupported']} unsupported")
        if not quiet:
            for f in v.findings():
                print(f"  {f['status']:<11} {f['rule']:<8} {f['knobs']}: {f['reason']}")


def write_result(res, out) -> None:
    for n in res.written:
        print(f"wrote {out / n}", file=sys.stderr)
    if res.unchanged:
        print(f"unchanged: {', '.join(res.unchanged)}", file=sys.stderr)


def check_result(plan, out, show_diffs: bool = True) -> None:
    """--check: the unified diff of each stale file on stdout (not in github/sarif mode: stdout is the tool's there)."""
    if not plan.differing:
        print(f"{out}: up to date", file=sys.stderr)
        return
    for n in plan.differing if show_diffs else []:
        sys.stdout.write(plan.diffs.get(n, ""))
    print(f"{out}: {len(plan.differing)} file(s) differ: {', '.join(plan.differing)}", file=sys.stderr)


def explain(r, buckets: list[str]) -> None:
    """A rule row: what it owns and writes, its bucket and every bucket its transform may decide for a job
    (``buckets``: the row's first), and the fact it cites."""
    lines = [f"{r.id}: {r.reason}", f"  sources: {', '.join(r.sources) or '-'}"]
    if r.reads:
        lines.append(f"  reads:   {', '.join(r.reads)}")
    lines.append(f"  writes:  {', '.join(r.targets) or '-'}")
    per_job = [b for b in buckets if b != r.status]
    if r.transform:
        from .rules.transforms import home

        lines.append(f"  transform: {home(r.transform)}::{r.transform}")
    if per_job:
        lines.append(f"  bucket:  {r.status} (the row's, with the reason above) when the transform does not decide; per job "
                     f"it may decide {' / '.join(per_job)} from the job's values (`nemo-migrate convert` and "
                     "migration-report.md say which, with the reason)")
    else:
        lines.append(f"  bucket:  {r.status} (for every job)")
    facts = [f.strip() for f in r.fact.split("; ")]
    lines.append(f"  fact:    {facts[0]}")
    lines += [f"           {f}" for f in facts[1:]]
    if r.test:
        lines.append(f"  test:    {json.dumps(r.test)}")
    print("\n".join(lines))


def rule_table(table, buckets: dict[str, list[str]], as_json: bool = False) -> None:
    if as_json:
        print_json([{"id": r.id, "status": r.status, "buckets": buckets[r.id], "sources": list(r.sources),
                     "targets": list(r.targets), "transform": r.transform, "reason": r.reason, "fact": r.fact} for r in table])
        return
    if _tty():
        from rich.markup import escape
        from rich.table import Table

        t = Table(show_lines=False)
        for col in ("id", "bucket (per job)", "sources", "writes"):
            t.add_column(col)
        for r in table:
            t.add_row(r.id, " / ".join(buckets[r.id]), escape(", ".join(r.sources)[:70]), escape(", ".join(r.targets)[:50]))
        _rich().print(t)
        return
    for r in table:
        print(f"{r.id:<8} {'/'.join(buckets[r.id]):<24} {', '.join(r.sources)[:70]} -> {', '.join(r.targets)}")


def output_format(fmt: str, json_flag: bool, stats: bool) -> str | None:
    """The --output-format (--json is json), or None after saying what is wrong."""
    from .formats import FORMATS

    if json_flag and fmt not in ("text", "json"):
        error_line(f"--json is --output-format json; it cannot go with --output-format {fmt}")
        return None
    fmt = "json" if json_flag else fmt
    if fmt not in FORMATS:
        error_line(f"--output-format {fmt!r}: expected one of {', '.join(FORMATS)}")
        return None
    if stats and fmt not in ("text", "json"):
        error_line(f"--statistics prints a table (text) or JSON; it cannot go with --output-format {fmt}")
        return None
    return fmt


def diff_bases(left: Path, right: Path) -> tuple[tuple[Path | None, bool], tuple[Path | None, bool]]:
    """For each side of a diff: the folder its names are relative to (a NeMo job's folder; an Automodel folder, whose
    configs are named by file name; none for one Automodel file, named as given), and whether it is read as Automodel
    (as ``diff`` decides it)."""
    from .detect import Kind, detect

    def base(p: Path) -> tuple[Path | None, bool]:
        kind = detect(p, Diagnostics())
        am = kind.automodel or kind in (Kind.YAML, Kind.UNKNOWN)
        return (p if p.is_dir() else None if am else p.parent), am

    return base(left), base(right)


def diff_locator(bases):
    """Where a diff's diagnostic points: an AM code (Automodel's reader and checks) under the Automodel side first."""
    from .formats import Paths

    (lb, lam), (rb, ram) = bases
    am, nemo = ([lb] if lam else []) + ([rb] if ram else []), ([lb] if not lam else []) + ([rb] if not ram else [])
    return lambda d: Paths(*(am + nemo if d.code.startswith("AM") else nemo + am)).path(d.file)


def diff_output(results, to_json, show_all: bool = False, bases=((None, False), (None, True)), *, fmt: str = "text",
                locate=None, stats: bool = False) -> None:
    """diff's result in the --output-format chosen."""
    from .formats import Paths, statistics as st

    b = (bases[0][0], bases[1][0])
    if fmt == "text" and not stats:
        diff_report(results, show_all=show_all, bases=b)
        return
    items, base_of = diff_findings(results, b)
    paths = Paths()
    where = lambda d: paths.path(d.file, base_of.get(id(d)))  # noqa: E731
    if fmt == "json":
        doc = to_json(results)
        for pair, r in zip(doc["pairs"], results):
            pair["findings"] = json_diagnostics(r.findings, where)
        if stats:
            doc["statistics"] = st(items)
        print_json(doc)
    elif fmt in ("github", "sarif"):
        machine(items, fmt, where)
        from .diff import summary_line

        for r in results:
            print(summary_line(r), file=sys.stderr)
    else:
        from .diff import summary_line

        statistics(items, stream=sys.stdout)
        for r in results:
            print(summary_line(r))


def diff_findings(results, bases) -> tuple[list[Diagnostic], dict[int, Path | None]]:
    """The diagnostics of a diff, for --output-format github/sarif and --statistics: the Automodel-side findings, and
    NM702 for each fact that differs (a warning) or is approximate (a note), at the Automodel side's line where it
    has one."""
    from .formats import Paths

    paths = Paths()
    items: list[Diagnostic] = []
    base_of: dict[int, Path | None] = {}
    for r in results:
        (lb, rb) = bases
        for f in r.findings:
            items.append(f)
            base_of[id(f)] = rb if f in r.right.findings else lb
        for row in r.rows:
            if row.verdict == "same":
                continue
            where, base = {}, None
            for fact, b in ((row.right, rb), (row.left, lb)):
                m = fact is not None and re.match(r"(.+?):(\d+)(?:,|\Z)", fact.origin or "")
                if m:
                    where, base = {"file": m.group(1), "line": int(m.group(2))}, b
                    break
            side = lambda f, s, b: f"not set ({s.kind})" if f is None else f"{f.shown} ({s.kind} {paths.origin(f.origin, b)})"  # noqa: E731
            msg = f"{row.verdict}: {side(row.left, r.left, lb)} vs {side(row.right, r.right, rb)}"
            d = Diagnostic("note" if row.verdict == "approximate" else "warning", "NM702", msg, key=row.fact,
                           hint=row.note or None, **where)
            items.append(d)
            base_of[id(d)] = base
    return items, base_of


def diff_report(results, show_all: bool = False, bases: tuple[Path | None, Path | None] = (None, None)) -> None:
    from .diff import summary_line
    from .formats import Paths

    paths = Paths()
    lb, rb = bases
    side_base = lambda r, d: rb if d in r.right.findings else lb  # noqa: E731
    tty = _tty()
    for r in results:
        rows = [row for row in r.rows if show_all or row.verdict != "same"]
        if tty:
            _diff_pair_tty(r, rows, paths, lb, rb)
        else:
            print(f"--- {r.left.kind}: {paths.path(r.left.label, lb)}")
            print(f"+++ {r.right.kind}: {paths.path(r.right.label, rb)}")
            for row in rows:
                print(f"{row.marker} {row.fact}  ({row.verdict})")
                if row.left is not None:
                    print(f"    - {row.left.shown}    [{paths.origin(row.left.origin, lb)}]")
                if row.right is not None:
                    print(f"    + {row.right.shown}    [{paths.origin(row.right.origin, rb)}]")
                if row.note:
                    print(f"      {row.note}")
        sys.stdout.flush()
        diagnostics(r.findings, stream=sys.stdout, every=True, locate=lambda d, r=r: paths.path(d.file, side_base(r, d)))
        if tty:
            from rich.text import Text

            _rich().print(Text(summary_line(r), style="bold"))
        else:
            print(summary_line(r) + "\n")


_VERDICT_STYLE = {"same": "dim", "differs": "bold red", "approximate": "yellow", "only-left": "magenta", "only-right": "magenta"}


def _diff_pair_tty(r, rows, paths, lb, rb) -> None:
    """One line per fact where it fits: marker, fact, each side's value and origin (files by their shortest distinct
    suffix; the header names them in full, relative to the working directory), long values folded in their column;
    a row's note (why it is approximate, what Automodel rejects) on the lines below it."""
    from rich.text import Text

    from .formats import short_names

    con = _rich()
    width = max(con.width, 60)
    parts = {id(row): (paths.origin_parts(row.left.origin if row.left else None, lb),
                       paths.origin_parts(row.right.origin if row.right else None, rb)) for row in rows}
    left, right = paths.path(r.left.label, lb), paths.path(r.right.label, rb)
    names = short_names([left, right] + [f for lp, rp in parts.values() for f, _ in lp + rp if f])
    head = Text()
    head.append(f"{r.left.kind} {left}", style="bold")
    head.append("  vs  ")
    head.append(f"{r.right.kind} {right}", style="bold")
    con.print(head)
    if not rows:
        return
    stacked = width < 110  # narrow: the fact on its own line, the two sides below it at half the width each
    fw = 2 if stacked else min(max(len(row.fact) for row in rows), 24)
    cw = max((width - fw - 6) // 2, 12)
    con.print(Text(f"  {'' if stacked else 'fact':<{fw}}  {names[left]:<{cw}}  {names[right]}"[:width], style="dim"))

    def cell(fact, ps) -> Text:
        t = Text()
        if fact is None:
            t.append("(not set)", style="dim")
            return t
        t.append(fact.shown)
        shown: list[list[str]] = []  # lines of one file together: nemo2/config.yaml:36,38
        for f, rest in ps:
            if f and shown and shown[-1][0] == f and re.fullmatch(r":\d+", rest):
                shown[-1][1] += "," + rest[1:]
            else:
                shown.append([f, (names[f] if f else "") + rest])
        if shown:
            t.append("  " + ", ".join(x for _, x in shown), style="dim")
        return t

    for row in rows:
        lp, rp = parts[id(row)]
        if stacked:
            con.print(Text(row.marker, style=_VERDICT_STYLE[row.verdict]) + Text(" " + row.fact, style="bold"))
        cols = [(Text("" if stacked else row.fact), fw), (cell(row.left, lp), cw), (cell(row.right, rp), cw)]
        wrapped = [t.wrap(con, w, overflow="fold") for t, w in cols]
        for i in range(max(len(w) for w in wrapped)):
            line = Text(row.marker if i == 0 and not stacked else " ", style=_VERDICT_STYLE[row.verdict])
            for (w, (_, cwid)) in zip(wrapped, cols):
                seg = w[i].copy() if i < len(w) else Text()
                seg.rstrip()
                seg.pad_right(max(cwid - seg.cell_len, 0))
                line.append("  " if line.cell_len > 1 else " ")
                line.append_text(seg)
            line.rstrip()
            con.print(line)
        if row.note:
            note = Text(f"{row.verdict}: {row.note}", style=_VERDICT_STYLE[row.verdict] if row.verdict != "approximate" else "dim")
            for seg in note.wrap(con, width - 4, overflow="fold"):
                con.print(Text("    ") + seg)


def verify_lines(report: dict) -> list[str]:
    """The verify report as plain lines (also what a terminal without rich shows)."""
    out: list[str] = []
    for v in report["variants"]:
        out.append(f"== {v['variant']} ({v['config']}): {v['verdict'].upper()} - rows marked exact stay within the "
                   f"'{v['exact_rows_envelope']}' envelope; migrated vs reference: '{v['migrated_vs_reference']}'")
        for n in v["notes"]:
            out.append(f"   note: {n}")
        if v.get("rejected"):
            out.append(f"   the migrated config does not run: {v['rejected']}")
        for n in v.get("unflagged_differences", []):
            out.append(f"   NOT FLAGGED BY THE RULES: {n} differs from the NeMo job where the rule table says exact")
        tokp = v["checks"]["tokenization"]
        if tokp.get("same"):
            out.append(f"   tokenization: the first {len(tokp['samples'])} samples are identical (ids, labels, EOS)")
        else:
            for s in tokp.get("samples", []):
                if not s["same"]:
                    n_diff = sum(1 for x in tokp["samples"] if not x["same"])
                    out.append(f"   tokenization: {n_diff} of {len(tokp['samples'])} samples differ; sample {s['sample']} at token "
                               f"{s['first_diff_at']}: NeMo {s['nemo_at_diff']} vs Automodel {s['automodel_at_diff']}; label tokens "
                               f"{s['nemo_label_tokens']} vs {s['automodel_label_tokens']}; EOS at {s['nemo_eos_at']} vs {s['automodel_eos_at']}")
                    break
            if tokp.get("error"):
                out.append(f"   tokenization: {tokp['error']}")
        lr = v["checks"]["lr"]
        out.append(f"   lr: max relative difference to NeMo's formula {lr['max_rel_diff']:.2e}"
                   + (f" (step {lr['worst_step']}: {lr['migrated'][lr['worst_step']]:.4e} vs {lr['nemo'][lr['worst_step']]:.4e})" if lr["max_rel_diff"] > 1e-9 else ""))
        tp = v["checks"].get("trainable_parameters") or {}
        out.append("   trainable parameters: " + ", ".join(f"{k} {val:,}" if isinstance(val, int) else f"{k} ?" for k, val in tp.items()))
        out.append(f"   {'leg':<34} {'loss@0':>10} {'loss@end':>10} {'max |dloss|':>12}  envelope")
        for name, leg in v["legs"].items():
            cmp = v["comparisons"].get(name)
            loss = leg["loss"]
            out.append(f"   {name:<34} {loss[0] if loss else float('nan'):>10.5f} {loss[-1] if loss else float('nan'):>10.5f} "
                       f"{(cmp['max_abs_loss_diff'] if cmp else 0.0):>12.2e}  {cmp['loss_envelope'] if cmp else '(reference)'}"
                       + (f"  (not run: = {leg['reused_from']})" if leg.get("reused_from") else ""))
        for a in v["attribution"]:
            out.append(f"   attribution {a['approximation']} [{a['rule']}, {a['rules_bucket']}]: max |dloss| {a['max_abs_loss_diff_with_it']:.2e} "
                       f"with it, {a['max_abs_loss_diff_without_it']:.2e} without ({a['removed_means']})")
        am = v.get("against_automodel")
        if am:
            out.append(f"   against Automodel 0.7.0 (real recipe): {am['verdict'].upper()}"
                       + (f" (decided by the {am['decided_by']} pair)" if am.get("decided_by") else ""))
            st = am.get("automodel_setup") or {}
            if st:
                out.append(f"      Automodel after setup(): {st.get('lora_modules')} LoRA-adapted modules, {st.get('float8_modules')} "
                           f"Float8Linear modules, {st.get('trainable_params', 0):,} trainable parameters")
            for key, pr in (am.get("pairs") or {}).items():
                out.append(f"      {key}: loss '{pr['loss_envelope']}' (max |dloss| {pr['max_abs_loss_diff']:.2e}), grad norm "
                           f"'{pr['grad_norm_envelope']}', lr max rel diff {pr['lr_max_rel_diff']:.1e}, label tokens "
                           f"{'equal' if pr['label_tokens_equal'] else 'DIFFER'} over {pr['steps']} steps")
            for f in am.get("findings") or []:
                out.append(f"      finding: {f}")
        if v.get("plot"):
            out.append(f"   plot: {v['plot']}")
    return out


def verify_report(report: dict, out_dir) -> None:
    lines = verify_lines(report)
    if _tty():
        from rich.markup import escape

        con = _rich()
        for line in lines:
            style = "bold green" if " PASS " in line else "bold red" if " FAIL " in line else ""
            con.print(f"[{style}]{escape(line)}[/]" if style else escape(line))
    else:
        for line in lines:
            print(line)
    print(f"report: {out_dir}/verify-report.json (each leg's command line and timing: {out_dir}/verify.log)", file=sys.stderr)

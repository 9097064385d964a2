"""Terminal output: rich tables on a terminal, plain text when piped (``NO_COLOR``/``TERM=dumb`` respected), JSON on
request.  rich is imported only when a terminal is attached, so piped runs start fast."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from .diagnostics import Diagnostics, dump_json


def _tty(stream=sys.stdout) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ


def _rich(stream=sys.stdout):
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=False)


_SEV_STYLE = {"error": "bold red", "warning": "yellow", "note": "cyan"}


def diagnostics(diags: Diagnostics, stream=sys.stderr, quiet: bool = False) -> None:
    items = [d for d in diags.sorted() if not (quiet and d.severity != "error")]
    if not items:
        return
    if _tty(stream):
        from rich.markup import escape

        con = _rich(stream)
        for d in items:
            loc = d.location()
            key = f" [{escape(d.key)}]" if d.key else ""
            con.print(f"{escape(loc) + ': ' if loc else ''}[{_SEV_STYLE[d.severity]}]{d.severity}\\[{d.code}][/]{key}: {escape(d.message)}")
            if d.hint:
                con.print(f"  [dim]hint:[/] {escape(d.hint)}")
    else:
        for d in items:
            print(d.render(), file=stream)


def fail(diags: Diagnostics, json_mode: bool = False) -> None:
    if json_mode:
        print_json({"tool": "nemo-migrate", "status": "error", "diagnostics": diags.to_json()})
        return
    diagnostics(diags)
    n = len(diags.errors)
    print(f"nemo-migrate: {n} error{'s' if n != 1 else ''}; nothing written", file=sys.stderr)


def print_json(obj: Any) -> None:
    sys.stdout.write(dump_json(obj) + "\n")


def error_line(text: str) -> None:
    print(f"nemo-migrate: error: {text}", file=sys.stderr)


def info_line(text: str) -> None:
    print(text, file=sys.stderr)


def report(conv, quiet: bool = False) -> None:
    diagnostics(conv.diags, quiet=quiet)
    if _tty():
        from rich.table import Table

        con = _rich()
        t = Table(title="nemo-migrate: knobs per bucket", show_lines=False)
        for col in ("job", "output", "exact", "approximate", "dropped", "unsupported"):
            t.add_column(col, justify="right" if col not in ("job", "output") else "left")
        for v in conv.variants:
            c = v.counts()
            t.add_row(v.label, v.output, str(c["exact"]), f"[yellow]{c['approximate']}[/]", str(c["dropped"]),
                      f"[red]{c['unsupported']}[/]" if c["unsupported"] else "0")
        con.print(t)
        if not quiet:
            for v in conv.variants:
                fs = v.findings()
                if not fs:
                    continue
                ft = Table(title=f"{v.label}: approximations and unsupported settings", show_lines=True, expand=True)
                ft.add_column("rule", no_wrap=True)
                ft.add_column("bucket", no_wrap=True)
                ft.add_column("knobs", ratio=1)
                ft.add_column("reason", ratio=3)
                for f in fs:
                    style = "red" if f["status"] == "unsupported" else "yellow"
                    ft.add_row(f["rule"], f"[{style}]{f['status']}[/]", f["knobs"], f["reason"])
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


def check_result(plan, out) -> None:
    if not plan.differing:
        print(f"{out}: up to date", file=sys.stderr)
        return
    for n in plan.differing:
        sys.stdout.write(plan.diffs.get(n, ""))
    print(f"{out}: {len(plan.differing)} file(s) differ: {', '.join(plan.differing)}", file=sys.stderr)


def explain(r) -> None:
    lines = [
        f"{r.id}: {r.status} — {r.reason}",
        f"  sources: {', '.join(r.sources) or '-'}",
    ]
    if r.reads:
        lines.append(f"  reads:   {', '.join(r.reads)}")
    lines.append(f"  writes:  {', '.join(r.targets) or '-'}")
    if r.transform:
        from .rules.transforms import home

        lines.append(f"  transform: {home(r.transform)}::{r.transform} (may refine the bucket per job)")
    lines.append(f"  fact:    {r.fact}")
    if r.test:
        lines.append(f"  test:    {json.dumps(r.test)}")
    print("\n".join(lines))


def rule_table(table) -> None:
    if _tty():
        from rich.table import Table

        t = Table(show_lines=False)
        for col in ("id", "default bucket", "sources", "writes"):
            t.add_column(col)
        for r in table:
            t.add_row(r.id, r.status, ", ".join(r.sources)[:70], ", ".join(r.targets)[:50])
        _rich().print(t)
        return
    for r in table:
        print(f"{r.id:<8} {r.status:<11} {', '.join(r.sources)[:70]} -> {', '.join(r.targets)}")


def diff_report(results, show_all: bool = False) -> None:
    from .diff import render_plain, summary_line

    if not _tty():
        sys.stdout.write(render_plain(results, show_all))
        return
    from rich.markup import escape
    from rich.table import Table

    con = _rich()
    style = {"same": "dim", "differs": "bold red", "approximate": "yellow", "only-left": "magenta", "only-right": "magenta"}
    for r in results:
        t = Table(title=f"{r.left.kind} {r.left.label}  vs  {r.right.kind} {r.right.label}", show_lines=True, expand=True)
        t.add_column("", no_wrap=True)
        t.add_column("fact", no_wrap=True)
        t.add_column(r.left.label, ratio=2)
        t.add_column(r.right.label, ratio=2)
        t.add_column("verdict", ratio=1)
        for row in r.rows:
            if row.verdict == "same" and not show_all:
                continue
            cell = lambda f: "" if f is None else f"{escape(f.shown)}\n[dim]{escape(f.origin)}[/]"  # noqa: E731
            t.add_row(row.marker, row.fact, cell(row.left), cell(row.right),
                      f"[{style[row.verdict]}]{row.verdict}[/]" + (f"\n[dim]{escape(row.note)}[/]" if row.note else ""))
        con.print(t)
        for f in r.findings:
            con.print(f"[{_SEV_STYLE[f.severity]}]{f.severity}[{f.code}][/] {escape(f.location())}: {escape(f.message)}"
                      + (f"\n  [dim]hint:[/] {escape(f.hint)}" if f.hint else ""))
        con.print(summary_line(r))


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
                       f"{(cmp['max_abs_loss_diff'] if cmp else 0.0):>12.2e}  {cmp['loss_envelope'] if cmp else '(reference)'}")
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
    print(f"report: {out_dir}/verify-report.json", file=sys.stderr)

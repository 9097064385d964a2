"""Write NeMo-Run's own export of a built NeMo 2 job (``--to-yaml``/``--to-json``/``--to-toml``), launching nothing.

Run it with the oracle venv's python (requirements/nemo-oracle.txt), never with the product's:

    .nemo-venv/bin/python tools/nemo_oracle/export_job.py recipe golden/seed/input/recipe.py \\
        --factory 'migration_recipe()' --yaml config-fp16.yaml --to-yaml /tmp/job.yaml
    .nemo-venv/bin/python tools/nemo_oracle/export_job.py nemo llm finetune --factory llama3_8b peft=none \\
        --to-yaml /tmp/job.yaml

``recipe FILE ARGS...`` is ``python FILE ARGS...`` run in FILE's directory: the file runs as ``__main__`` and its own
``run.cli.main(...)`` parses ARGS (NeMo-Run's CLI code path, factory + ``--yaml`` + dotted overrides).
``recipe --entry llm.finetune FILE ARGS...`` is for a recipe file whose main block does not call ``run.cli.main``
(it calls ``run.run`` itself, or has no main block): the file is loaded as ``__main__`` WITHOUT running its main block
and ``run.cli.main(<entry>)`` is called with ARGS, so that ``--factory name`` finds the file's functions as NeMo-Run
does (it looks names up in ``sys.modules['__main__']``).  ``nemo ARGS...`` is the ``nemo`` console script
(``nemo_run.__main__:app``; ``nemo llm finetune`` is NeMo's ``nemo_run.cli`` entry point ``llm``).

Guards: ARGS must hold an export flag (else NeMo-Run would launch the job) and ``run.run``/``run.Experiment`` are
replaced by functions that raise before anything runs.

Workarounds (driver-side only, no NeMo file is edited; each is opt-in, named first on the command line, and
tools/nemo_oracle/make_fixtures.py records in COMMAND when one was needed and what real NeMo said without it):

* ``--entry FN`` (above): a recipe file that does not call ``run.cli.main`` has no CLI at all;
* ``--eval-str-annotations``: NeMo 2.7.3 rejects every ``peft.*`` value from ``--yaml``/the command line
  (string annotations in ``llm/peft/lora.py``); the signature is read with ``eval_str=True`` instead;
* ``--enum-values``: NeMo-Run 0.11.1 cannot write an ``enum.Enum`` (``RepresenterError``); it is written as its value.

Transformer Engine's absence needed nothing: an export never instantiates a model.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys
import types
from pathlib import Path


def _refuse(*_a, **_k):
    raise SystemExit("export_job.py: refusing to launch a job (an export flag was not honoured)")


def _guard(args: list[str]) -> None:
    if not any(a.startswith(("--to-yaml", "--to-json", "--to-toml")) for a in args):
        raise SystemExit("export_job.py: pass --to-yaml FILE (or --to-json/--to-toml); without it NeMo-Run launches the job")
    import nemo_run as run

    run.run = _refuse
    run.Experiment = _refuse  # type: ignore[assignment]


def _eval_str_annotations() -> None:
    """Workaround ``--eval-str-annotations``: NeMo-Run 0.11.1 reads parameter annotations with a plain
    ``inspect.signature``; modules written with ``from __future__ import annotations`` (NeMo >= 2.6's
    ``llm/peft/lora.py``) then give the string ``'int'`` and every CLI/--yaml value for them is rejected
    (``Failed to parse '8' as int: Unsupported type: int``).  With this flag the signature is read with
    ``eval_str=True`` (what the annotation means), to export what the job means; without it the failure is real
    NeMo 2.7.3 behaviour."""
    import inspect

    from nemo_run.cli import cli_parser

    orig = cli_parser._signature

    def _signature(fn):
        try:
            if fn is not dict:
                return inspect.signature(fn, eval_str=True)
        except Exception:  # noqa: BLE001 - an annotation that does not evaluate: NeMo-Run's own reading
            pass
        return orig(fn)

    cli_parser._signature = _signature
    real = inspect.signature

    def signature(obj, *a, **k):
        if not k.get("eval_str"):
            try:
                return real(obj, *a, eval_str=True, **k)
            except Exception:  # noqa: BLE001
                pass
        return real(obj, *a, **k)

    cli_parser.inspect = types.SimpleNamespace(**{n: getattr(inspect, n) for n in dir(inspect) if not n.startswith("__")})
    cli_parser.inspect.signature = signature


def _enum_values() -> None:
    """Workaround ``--enum-values``: NeMo-Run 0.11.1's exporter (``yaml.safe_dump`` with representers for
    Config/Partial/functions/classes/torch.dtype only) cannot write an ``enum.Enum`` and fails with
    ``RepresenterError: cannot represent an object`` (e.g. ``StrictHandling.LOG_ALL``).  With this flag an enum is
    written as its ``.value``, which NeMo-Run's CLI parser would turn back into the member."""
    import enum

    import yaml

    yaml.SafeDumper.add_multi_representer(enum.Enum, lambda d, e: d.represent_data(e.value))


_WORKAROUNDS = {"--eval-str-annotations": _eval_str_annotations, "--enum-values": _enum_values}


def _absolute_exports(args: list[str], cwd: Path) -> list[str]:
    """Export paths relative to the caller's directory (the recipe runs in its own directory)."""
    out, it = [], iter(args)
    for a in it:
        if a in ("--to-yaml", "--to-json", "--to-toml"):
            out += [a, str((cwd / next(it)).resolve())]
        elif a.startswith(("--to-yaml=", "--to-json=", "--to-toml=")):
            flag, _, p = a.partition("=")
            out.append(f"{flag}={(cwd / p).resolve()}")
        else:
            out.append(a)
    return out


def _workarounds(args: list[str]) -> list[str]:
    while args and args[0] in _WORKAROUNDS:
        _WORKAROUNDS[args.pop(0)]()
    return args


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("recipe", "nemo"):
        raise SystemExit(__doc__)
    if argv[0] == "nemo":
        args = _workarounds(argv[1:])
        _guard(args)
        sys.argv = ["nemo", *args]
        from nemo_run.__main__ import app

        app()
        return
    rest = _workarounds(argv[1:])
    entry = None
    if rest[:1] == ["--entry"]:
        entry, rest = rest[1], rest[2:]
    recipe = Path(rest[0]).resolve()
    args = _absolute_exports(rest[1:], Path.cwd())
    _guard(args)
    os.chdir(recipe.parent)
    sys.path.insert(0, str(recipe.parent))
    sys.argv = [recipe.name, *args]
    if entry is None:
        runpy.run_path(str(recipe), run_name="__main__")
        return
    mod = types.ModuleType("__main__")
    mod.__file__ = str(recipe)
    code = compile(recipe.read_text(encoding="utf-8"), str(recipe), "exec")
    mod.__dict__["__name__"] = "__nemo_oracle_recipe__"  # the file's `if __name__ == "__main__":` block does not run
    exec(code, mod.__dict__)
    mod.__dict__["__name__"] = "__main__"
    sys.modules["__main__"] = mod
    import nemo_run as run

    modname, _, attr = entry.rpartition(".")
    fn = getattr(importlib.import_module("nemo.collections." + modname if modname == "llm" else modname), attr)
    run.cli.main(fn)


if __name__ == "__main__":
    main(sys.argv[1:])

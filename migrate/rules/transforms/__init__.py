"""The named transforms of mappings/rules.yaml, one module per section of the table.

Each function receives the rule context (:class:`~nemo_migrate.rules.context.Ctx`), writes Automodel values and launch
facts with ``ctx.set`` (only to paths its row declares) and may refine the row's bucket by returning a
:class:`~nemo_migrate.rules.context.Result`.  Facts are cited in the rows.  A module registers its transforms with
``@transform``; :data:`TRANSFORMS` is the one registry the engine reads (a row names a function by its key)."""

from __future__ import annotations

from ..context import RuleBug, Transform
from . import checkpoint, common, data, launch, model, nemo1, optim, parallel, peft, precision, schedule

MODULES = (common, model, parallel, launch, schedule, optim, peft, precision, data, checkpoint, nemo1)


def _merge() -> dict[str, Transform]:
    out: dict[str, Transform] = {}
    for m in MODULES:
        for name, fn in m.transform.items():
            if name in out:
                raise RuleBug(f"transform {name} is defined in two modules ({m.__name__})")
            out[name] = fn
    return out


TRANSFORMS: dict[str, Transform] = _merge()


def home(name: str) -> str | None:
    """The file that defines the transform ``name`` (``nemo_migrate/rules/transforms/optim.py``), for `nemo-migrate explain`."""
    fn = TRANSFORMS.get(name)
    return f"nemo_migrate/rules/transforms/{fn.__module__.rsplit('.', 1)[-1]}.py" if fn else None

"""The rule table (mappings/rules.yaml) and its engine.

    table.py       the rows as typed data (loaded once; a misspelt key is an error naming the row)
    context.py     Ctx (what a transform reads and writes), Result, Note, the transform Registry
    engine.py      knobs of the job -> owning row -> transform -> target values, launch facts and buckets
    transforms/    the named functions rows point at, one module per section of the table
"""

from .context import Ctx, Note, Result, RuleBug, nemo_default
from .engine import apply, collect_knobs
from .table import Rule, RuleTableError, by_id, owner, table

__all__ = ["Ctx", "Note", "Result", "Rule", "RuleBug", "RuleTableError", "apply", "by_id", "collect_knobs", "nemo_default",
           "owner", "table"]

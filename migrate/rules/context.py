"""What a transform sees and writes: :class:`Ctx` (the job's knobs, the target values, the launch plan, notes),
:class:`Result` (a refined bucket), :class:`Note`, and the :class:`Registry` each transforms module fills.

``Ctx.set`` is the only way a row writes: the path must be one the row declares in its ``target`` column (anything
else is a bug of ours, caught by the row's own test), and every value keeps the rule that wrote it and where it came
from.  ``launch.<field>`` paths write the typed :class:`~nemo_migrate.ir.LaunchPlan` (run.sh / sbatch.sh)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .. import schema
from ..diagnostics import Diagnostics
from ..ir import Knob, LaunchPlan, Node, Provenance, Status, TargetValue
from .table import Rule


class RuleBug(AssertionError):
    """A row broke the rule contract (wrote a path it does not declare, two rows disagree): a bug of nemo-migrate."""


class JobView(Protocol):
    """What the rules read of the effective job (:class:`nemo_migrate.resolve.Job`)."""

    tree: Node
    model_override: str | None
    launch_env: dict[str, str]
    data_dir: str | None

    @property
    def recipe_info(self) -> dict[str, Any] | None: ...


@dataclass
class Result:
    status: Status | None = None
    reason: str | None = None


@dataclass
class Note:
    rule: str
    kind: str  # "pre-step" | "warning" | "info"
    text: str


def nemo_default(ref: str) -> Any:
    """NeMo's default of ``Class.field`` (``OptimizerConfig.weight_decay``) for the release being read: the one home
    of NeMo's defaults is mappings/nemo2/classes.yaml (and versions.yaml for those that changed between releases)."""
    cls, _, name = ref.partition(".")
    kn = schema.default_knob(Node(cls=cls, prov=Provenance(kind="nemo-default")), name) if schema.spec(cls) else None
    if kn is None:
        raise RuleBug(f"no NeMo default for {ref} in mappings/nemo2/classes.yaml")
    return kn.value


@dataclass
class Ctx:
    job: JobView
    knobs: dict[str, Knob]
    diags: Diagnostics
    targets: dict[str, TargetValue] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    rule: Rule | None = None
    written: list[str] = field(default_factory=list)  # what the row wrote (its knobs' outcomes name these)
    owned: dict[str, list[str]] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)
    launch: LaunchPlan = field(default_factory=LaunchPlan)
    launched: list[str] = field(default_factory=list)  # the launch fields the current row wrote
    settled: dict[str, tuple[str, str]] = field(default_factory=dict)  # one knob of the row settled otherwise: (status, reason)
    facts: dict[str, Any] = field(default_factory=dict)  # per-job facts transforms compute once (the model: model_info)

    def owned_by(self, rule_id: str) -> list[str]:
        return self.owned.get(rule_id, [])

    # reading the source
    def k(self, path: str) -> Knob | None:
        if path in self.knobs:
            return self.knobs[path]
        got = schema.get(self.job.tree, path)
        if isinstance(got, Knob):
            return got
        return None

    def v(self, path: str, default: Any = None) -> Any:
        kn = self.k(path)
        return default if kn is None else kn.value

    def node(self, path: str) -> Node | None:
        n = self.job.tree.get(path) if path else self.job.tree
        return n if isinstance(n, Node) else None

    def has(self, path: str) -> bool:
        return path in self.knobs

    def provs(self, *paths: str) -> list[Provenance]:
        """Where the values at ``paths`` came from (class defaults only when nothing was set explicitly)."""
        out: list[Provenance] = []
        for p in paths:
            kn = self.k(p)
            if kn is not None and kn.prov not in out and (p in self.knobs or kn.prov.kind != "nemo-default"):
                out.append(kn.prov)
        explicit = [x for x in out if x.kind != "nemo-default"]
        return explicit or out

    # writing the target
    def _declared(self, path: str) -> Rule:
        if self.rule is None:
            raise RuleBug(f"{path} written outside a rule")
        if not self.rule.declares(path):
            raise RuleBug(f"rule {self.rule.id} writes {path}, which its target column in mappings/rules.yaml does not declare "
                          f"({', '.join(self.rule.targets) or 'none'})")
        return self.rule

    def set(self, path: str, value: Any, *from_paths: str, note: str | None = None, provs: list[Provenance] | None = None,
            status: Status | None = None) -> None:
        """Write a target value; ``status`` pins this value's bucket (otherwise it gets the row's final bucket)."""
        rule = self._declared(path)
        ps = list(provs or []) + self.provs(*from_paths)
        if path.startswith("launch."):
            self._set_launch(path.removeprefix("launch."), value, ps, from_paths, note)
            return
        prev = self.targets.get(path)
        if prev is not None and prev.rule != rule.id and prev.value != value:
            raise RuleBug(f"rules {prev.rule} and {rule.id} both write {path}")
        self.targets[path] = TargetValue(value=value, rule=rule.id, status=status or rule.status, provs=ps, note=note)
        if status is None:
            self.written.append(path)
        else:
            self.pinned.append(path)

    def _set_launch(self, name: str, value: Any, ps: list[Provenance], from_paths: tuple[str, ...], note: str | None) -> None:
        assert self.rule is not None
        if name not in LaunchPlan.model_fields or name in ("origin", "where"):
            raise RuleBug(f"rule {self.rule.id} writes launch.{name}, which is not a launch fact ({', '.join(LaunchPlan.model_fields)})")
        prev = self.launch.origin.get(name)
        if prev is not None and prev.rule != self.rule.id and prev.value != value:
            raise RuleBug(f"rules {prev.rule} and {self.rule.id} both write launch.{name}")
        setattr(self.launch, name, value)
        self.launch.origin[name] = TargetValue(value=getattr(self.launch, name), rule=self.rule.id, status=self.rule.status,
                                               provs=ps, note=note)
        for p in from_paths:  # where each NeMo value a script writes came from (a node's _target_ locates the node)
            kn = self.k(p)
            if kn is not None:
                self.launch.where.setdefault(p, kn.prov)
                if p.endswith("._target_"):
                    self.launch.where.setdefault(p.removesuffix("._target_"), kn.prov)
        self.launched.append(name)
        self.written.append(self.launch.script(name))

    def unset(self, path: str) -> None:
        self._declared(path)
        for p in [t for t in self.targets if t == path or t.startswith(path + ".")]:
            del self.targets[p]

    def settle(self, path: str, status: str, reason: str) -> None:
        """This one knob of the current row gets ``status`` and ``reason`` in the report, not the row's (e.g. one
        #SBATCH option of the header that could not be carried over)."""
        assert self.rule is not None and path in self.owned_by(self.rule.id), path
        self.settled[path] = (status, reason)

    def note(self, kind: str, text: str) -> None:
        assert self.rule is not None
        n = Note(self.rule.id, kind, text)
        if n not in self.notes:
            self.notes.append(n)

    # facts about the job
    @property
    def lora(self) -> bool:
        return isinstance(self.job.tree.get("peft"), Node)

    @property
    def world(self) -> int:
        return int(self.v("trainer.devices", 1)) * int(self.v("trainer.num_nodes", 1))

    @property
    def dp(self) -> int:
        mp = int(self.v("trainer.strategy.tensor_model_parallel_size", 1)) * int(self.v("trainer.strategy.pipeline_model_parallel_size", 1)) * int(
            self.v("trainer.strategy.context_parallel_size", 1))
        return max(self.world // mp, 1)


Transform = Callable[[Ctx], "Result | None"]


class Registry(dict):
    """The transforms of one module by name; ``@transform`` registers a function (the rows' ``transform`` column)."""

    def __call__(self, fn: Transform) -> Transform:
        if fn.__name__ in self:
            raise RuleBug(f"transform {fn.__name__} registered twice")
        self[fn.__name__] = fn
        return fn

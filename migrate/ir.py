"""The intermediate representation.

Source side: a NeMo 2 job is a tree of ``run.Config``/``run.Partial`` nodes (:class:`Node`) whose leaves are
:class:`Knob` values.  Every knob carries its :class:`Provenance` (``config-fp8.yaml:39``, ``recipe.py:18``,
``recipe default llama31_70b (LoRA branch)``, ``NeMo default (LoRA.dropout_position)``, ``--set ...``) and the
values it replaced, so that the report, the emitted comments, ``diff`` and every error message can say where a
value came from.

Target side: :class:`TargetValue` is one value of the emitted Automodel YAML, with the rule that produced it.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

ProvKind = Literal[
    "yaml",  # a --yaml file handed to the factory
    "recipe.py",  # a statement in the user's factory
    "recipe-default",  # what a NeMo recipe factory sets (knowledge in mappings/nemo2/recipes.yaml)
    "nemo-default",  # a NeMo/Lightning class default (mappings/nemo2/classes.yaml)
    "cli",  # a dotted override: nemo-migrate --set, or the torchrun line in run.sh
    "launch",  # the torchrun line itself (nproc, nnodes)
    "derived",  # computed by the compiler from other knobs
    "nemo-adjust",  # NeMo's own silent adjustment at run time (api._validate_config, MegatronStrategy.setup)
    "automodel-default",  # an Automodel 0.7 default (diff)
    "automodel-yaml",  # a value read from an Automodel YAML (diff)
]


class Provenance(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ProvKind
    file: str | None = None
    line: int | None = None
    col: int | None = None
    detail: str | None = None
    cell: int | None = None  # a notebook's cell (1-based over all cells); line is then within the cell

    def __str__(self) -> str:
        if self.kind in ("yaml", "recipe.py", "automodel-yaml", "launch") or (self.kind == "cli" and self.file):
            loc = self.file or "?"
            if self.cell is not None:
                loc += f":cell {self.cell}"
            if self.line is not None:
                loc += f":{self.line}"
            if self.kind == "cli" and self.detail:
                loc += f" ({self.detail})"
            return loc
        if self.kind == "cli":
            return f"--set {self.detail}" if self.detail else "--set"
        if self.kind == "recipe-default":
            return f"recipe default {self.detail}" if self.detail else "recipe default"
        if self.kind == "nemo-default":
            return f"NeMo default ({self.detail})" if self.detail else "NeMo default"
        if self.kind == "automodel-default":
            return f"Automodel default ({self.detail})" if self.detail else "Automodel default"
        if self.kind == "nemo-adjust":
            return f"NeMo adjusts: {self.detail}" if self.detail else "NeMo adjustment"
        return f"derived: {self.detail}" if self.detail else "derived"

    def where(self) -> dict:
        """Keyword arguments for a Diagnostic pointing at this value."""
        out: dict[str, Any] = {}
        if self.file:
            out["file"] = self.file
            if self.cell is not None:
                out["cell"] = self.cell
            if self.line is not None:
                out["line"] = self.line
            if self.col is not None:
                out["col"] = self.col
        return out


class Knob(BaseModel):
    """A leaf value of the source tree."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    value: Any = None
    prov: Provenance
    replaced: list["Knob"] = Field(default_factory=list)

    def with_value(self, value: Any, prov: Provenance) -> "Knob":
        return Knob(value=value, prov=prov, replaced=[*self.replaced, Knob(value=self.value, prov=self.prov)])


class Node(BaseModel):
    """A ``run.Config(cls, ...)`` / ``run.Partial(fn, ...)`` of the source job."""

    cls: str
    partial: bool = False
    known: bool = True
    prov: Provenance
    fields: dict[str, Union["Node", Knob]] = Field(default_factory=dict)
    origin: str | None = None  # e.g. "llama31_70b" when a NeMo recipe factory built this tree

    def get(self, path: str) -> Union["Node", Knob, None]:
        cur: Node | Knob | None = self
        for part in path.split(".") if path else []:
            if not isinstance(cur, Node):
                return None
            cur = cur.fields.get(part)
        return cur

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Union["Node", Knob]]]:
        for name, child in self.fields.items():
            path = f"{prefix}.{name}" if prefix else name
            yield path, child
            if isinstance(child, Node):
                yield from child.walk(path)


Knob.model_rebuild()
Node.model_rebuild()


def find_cycle(root: Node) -> tuple[str, Provenance] | None:
    """A path at which the tree contains one of its own ancestors (``recipe.data = recipe``), or None.

    Iterative, so that it is safe on any input; everything else that walks the tree may assume no cycle."""
    stack: list[tuple[Any, str, frozenset[int], Provenance]] = [(root, "", frozenset(), root.prov)]
    while stack:
        obj, path, above, prov = stack.pop()
        if isinstance(obj, Node):
            if id(obj) in above:
                return path or "<root>", prov
            inner = above | {id(obj)}
            for name, child in obj.fields.items():
                sub = f"{path}.{name}" if path else name
                stack.append((child, sub, inner, child.prov if isinstance(child, (Node, Knob)) else prov))
        elif isinstance(obj, Knob):
            stack.append((obj.value, path, above, obj.prov))
        elif isinstance(obj, (list, tuple)):
            for i, x in enumerate(obj):
                stack.append((x, f"{path}[{i}]", above, prov))
        elif isinstance(obj, dict):
            for k, x in obj.items():
                stack.append((x, f"{path}.{k}", above, prov))
    return None


def leaf_knobs(root: Node) -> dict[str, Knob]:
    """Every leaf of the tree as ``dotted.path -> Knob`` in tree order."""
    return {p: k for p, k in root.walk() if isinstance(k, Knob)}


def plain(value: Any) -> Any:
    """A knob value with any nested Node turned into a readable dict (for reports and JSON)."""
    if isinstance(value, Node):
        out: dict[str, Any] = {"_target_": value.cls}
        for k, v in value.fields.items():
            out[k] = plain(v.value if isinstance(v, Knob) else v)
        return out
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


Status = Literal["exact", "approximate", "dropped", "unsupported"]
STATUSES: tuple[Status, ...] = ("exact", "approximate", "dropped", "unsupported")


class TargetValue(BaseModel):
    """One value of the emitted Automodel config and why it is there."""

    value: Any
    rule: str
    status: Status
    provs: list[Provenance] = Field(default_factory=list)
    note: str | None = None  # a short end-of-line comment


class KnobOutcome(BaseModel):
    """Where one knob of the effective source job ended up: exactly one bucket per knob."""

    path: str
    value: Any
    prov: Provenance
    rule: str
    status: Status
    targets: list[str] = Field(default_factory=list)
    reason: str


class LaunchPlan(BaseModel):
    """How the migrated job is started: the facts run.sh and sbatch.sh are rendered from.

    Rows write them like any target value, ``ctx.set("launch.nproc_per_node", 8, "trainer.devices")`` (PAR008 and
    LCH*), and each written field keeps the rule and provenance that set it in ``origin``; ``where`` locates every
    NeMo value a script writes (``executor.partition`` -> recipe.py:12), so that a value that cannot be written into
    a script safely is refused at its source line."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    executor: Literal["local", "slurm"] = "local"  # local: run.sh starts torchrun; slurm: sbatch.sh too (one torchrun per node)
    nproc_per_node: int = 1
    nnodes: int = 1
    gpus_per_node: int | None = None  # Slurm --gpus-per-node (None: nproc_per_node)
    cpus_per_task: int | None = None  # Slurm --cpus-per-task
    job_name: str = "automodel"
    image: str | None = None  # container image (pyxis --container-image)
    mounts: list[str] = Field(default_factory=list)  # --container-mounts
    srun_args: list[str] = Field(default_factory=list)
    sbatch: list[tuple[str, str | None]] = Field(default_factory=list)  # further #SBATCH --flag[=value] lines, in order (an own --output replaces %x_%j.out)
    env: list[tuple[str, str]] = Field(default_factory=list)  # exported before torchrun (the executor's env_vars)
    origin: dict[str, TargetValue] = Field(default_factory=dict)  # field -> the rule that wrote it, its bucket and sources
    where: dict[str, Provenance] = Field(default_factory=dict)  # NeMo key -> where the value came from

    @property
    def rendezvous(self) -> str:
        """How the processes find each other: c10d on the first node of the allocation (sbatch.sh), else torchrun
        --standalone on one node or c10d at MASTER_ADDR (run.sh)."""
        if self.executor == "slurm":
            return "c10d (first node of the allocation)"
        return "standalone" if self.nnodes == 1 else "c10d (MASTER_ADDR)"

    def script(self, name: str) -> str:
        """The launcher a fact lands in (what a knob's outcome names): process counts in run.sh, the rest in the
        executor's script."""
        if name in ("nproc_per_node", "nnodes"):
            return "run.sh"
        return "sbatch.sh" if self.executor == "slurm" else "run.sh"

    def sbatch_lines(self) -> list[tuple[str, str | None]]:
        """The extra #SBATCH directives in order: --cpus-per-task (LCH002 / LCH007), then the executor options (LCH004)
        or the source sbatch script's own #SBATCH options (LCH007), in its order."""
        head = [("cpus-per-task", str(self.cpus_per_task))] if self.cpus_per_task is not None else []
        return head + list(self.sbatch)

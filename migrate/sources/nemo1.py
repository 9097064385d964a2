"""Front end for NeMo 1.0 SFT/PEFT YAML (megatron_gpt_finetuning.py) and NeMo-Aligner SFT YAML (train_gpt_sft.py).

The user's file is merged over its format's defaults (mappings/nemo1/), Hydra command-line overrides are applied
(``key=value``, ``+key=value``, ``++key=value``, ``~key``), OmegaConf interpolations are resolved (``${a.b}``,
relative ``${.x}``/``${..x}``, inside strings too), and every leaf is lowered into the NeMo 2 IR by the table in
mappings/nemo1/lowering.yaml, keeping its file:line (or ``NeMo 1.0 default``).  Settings with no NeMo 2 meaning are
kept as ``nemo1.<path>`` knobs that rows N1xx of the rule table bucket.  Nothing is executed.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import knowledge, schema
from ..diagnostics import Diagnostics, MigrateError, did_you_mean
from ..ir import Knob, Node, Provenance
from .yaml_source import YamlError, _Builder, _mark, compose_file

MANDATORY = "~~~"
_INTERP = re.compile(r"\$\{([^{}]*)\}")


@dataclass
class Leaf:
    value: Any
    prov: Provenance


def detect(data: Any) -> str | None:
    """'nemo1' (megatron_gpt_finetuning), 'aligner' (NeMo-Aligner SFT), or None."""
    if not isinstance(data, dict):
        return None
    trainer, model = data.get("trainer"), data.get("model")
    if isinstance(trainer, dict) and isinstance(trainer.get("sft"), dict):
        return "aligner"
    if isinstance(model, dict) and ("restore_from_path" in model or isinstance(model.get("data"), dict) or isinstance(model.get("peft"), dict)):
        return "nemo1"
    if "exp_manager" in data:
        return "nemo1"
    return None


# ---------------------------------------------------------------------------------------------- trees

def _flatten(tree: Any, prov: Callable[[str], Provenance], prefix: str = "") -> dict[str, Leaf]:
    out: dict[str, Leaf] = {}
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            out.update(_flatten(v, prov, p))
    else:
        out[prefix] = Leaf(tree, prov(prefix))
    return out


def _user_leaves(path: Path, display: str, diags: Diagnostics) -> dict[str, Leaf] | None:
    from ruamel.yaml.nodes import MappingNode

    root = compose_file(path, display, diags)
    if root is None:
        return None if diags.has_errors else {}
    if not isinstance(root, MappingNode):
        diags.error("NM102", "top level must be a mapping", file=display)
        return None
    b = _Builder()
    out: dict[str, Leaf] = {}

    def walk(node: Any, prefix: str, key_mark: tuple) -> None:
        if isinstance(node, MappingNode) and node.value:
            for key, kn, vnode in b.pairs3(node):
                walk(vnode, f"{prefix}.{key}" if prefix else key, _mark(kn))
        else:
            line, col = key_mark
            value = b.value(node)
            if getattr(node, "style", None) is None:  # a plain (unquoted) scalar
                value = _omegaconf_float(value)
            out[prefix] = Leaf(value, Provenance(kind="yaml", file=display, line=line, col=col))

    try:
        walk(root, "", (None, None))
    except YamlError as e:
        diags.error("NM101", str(e), file=display, line=e.line, col=e.col)
        return None
    return out


def _hydra_value(text: str) -> Any:
    """A Hydra command-line value: YAML-like scalars and [lists]."""
    from ruamel.yaml import YAML

    import warnings

    try:
        y = YAML(typ="safe", pure=True)
        y.version = (1, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = y.load(text)
    except Exception:  # noqa: BLE001 - an unparsable value stays text, as Hydra's grammar falls back to strings
        return text
    return _omegaconf_float(value)


# OmegaConf (and Hydra's override grammar) read 1e-4 as a float; YAML 1.1 alone would keep it a string
_OC_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$")


def _omegaconf_float(value: Any) -> Any:
    return float(value.replace("_", "")) if isinstance(value, str) and _OC_FLOAT.match(value) else value


def apply_hydra(leaves: dict[str, Leaf], overrides: list[tuple[str, Provenance]], diags: Diagnostics) -> None:
    for text, prov in overrides:
        raw = text
        op = "="
        if text.startswith("~"):
            key = text[1:].split("=", 1)[0]
            for p in [p for p in leaves if p == key or p.startswith(key + ".")]:
                del leaves[p]
            continue
        force = text.startswith("++")
        add = text.startswith("+") and not force
        text = text.lstrip("+")
        if "=" not in text:
            diags.error("NM120", f"invalid Hydra override {raw!r}", hint="key=value, +key=value, ++key=value or ~key", **prov.where())
            continue
        key, value = text.split("=", 1)
        exists = key in leaves or any(p.startswith(key + ".") for p in leaves)
        if not exists and not (add or force):
            diags.error("NM231", f"Hydra override {raw!r}: key '{key}' is not in the config (Hydra: 'Could not override')",
                        hint=(did_you_mean(key, leaves) or "") + f" use +{key}=... to add a key", **prov.where())
            continue
        if add and exists:
            diags.error("NM231", f"Hydra override {raw!r}: '{key}' already exists (use ++ to override)", **prov.where())
            continue
        for p in [p for p in leaves if p.startswith(key + ".")]:
            del leaves[p]
        val = _hydra_value(value)
        if isinstance(val, dict):
            for p, lf in _flatten(val, lambda _p: prov, key).items():
                leaves[p] = lf
        else:
            leaves[key] = Leaf(val, prov.model_copy(update={"detail": raw}))


def resolve_interpolations(leaves: dict[str, Leaf], diags: Diagnostics, label: str) -> None:
    """OmegaConf interpolations, resolved over the merged tree, keeping the referenced value's provenance."""
    resolving: set[str] = set()

    def target_of(ref: str, at: str) -> str:
        if ref.startswith("."):
            depth = len(ref) - len(ref.lstrip("."))
            base = at.split(".")[:-depth]
            return ".".join(base + [ref.lstrip(".")]) if ref.lstrip(".") else ".".join(base)
        return ref

    def resolve(path: str) -> Leaf:
        lf = leaves[path]
        if not (isinstance(lf.value, str) and "${" in lf.value):
            return lf
        if path in resolving:
            raise ValueError(f"interpolation cycle at '{path}'")
        resolving.add(path)
        try:
            text = lf.value
            whole = _INTERP.fullmatch(text)
            if whole:
                ref = whole.group(1).strip()
                if ref.startswith("oc.env:") or ":" in ref:
                    diags.warning("NM232", f"'{path}' uses the resolver {ref!r}, which depends on the run-time environment; kept as text",
                                  key=path, **lf.prov.where())
                    return lf
                tgt = target_of(ref, path)
                if tgt not in leaves:
                    raise KeyError(f"'{path}' refers to '{tgt}', which is not in the config")
                src = resolve(tgt)
                new = Leaf(src.value, src.prov.model_copy(update={"detail": f"via ${{{ref}}} at {path}"}) if src.prov.kind != "yaml" else src.prov)
                leaves[path] = new
                return new

            def sub(m: re.Match) -> str:
                ref = m.group(1).strip()
                tgt = target_of(ref, path)
                if tgt not in leaves:
                    raise KeyError(f"'{path}' refers to '{tgt}', which is not in the config")
                return str(resolve(tgt).value)

            new = Leaf(_INTERP.sub(sub, text), lf.prov)
            leaves[path] = new
            return new
        finally:
            resolving.discard(path)

    for p in list(leaves):
        try:
            resolve(p)
        except (KeyError, ValueError) as e:
            msg = e.args[0] if e.args else str(e)
            diags.error("NM233", f"cannot resolve an interpolation: {msg}", key=p, **leaves[p].prov.where())


# ---------------------------------------------------------------------------------------------- lowering

def lower(yaml_path: Path, display: str, hydra: list[tuple[str, Provenance]], diags: Diagnostics, fmt: str | None = None,
          base: Path | None = None) -> tuple[Node, str]:
    """The NeMo 2 IR tree a NeMo 1.0 / Aligner config means."""
    from .yaml_source import load_yaml_file

    data = load_yaml_file(yaml_path, display, diags)
    if diags.has_errors:
        raise MigrateError(diags)
    fmt = fmt or detect(data) or "nemo1"
    table = knowledge.load("nemo1/lowering.yaml")
    spec = table["formats"][fmt]
    dname = spec["defaults"]
    default_tree = knowledge.load(f"nemo1/{dname}")
    dprov = Provenance(kind="nemo-default", detail=f"{spec['label'].split(' (')[0]} default ({dname.replace('.yaml', '')})")
    leaves = _flatten(default_tree, lambda _p: dprov)
    user = _user_leaves(yaml_path, display, diags)
    if user is None:
        raise MigrateError(diags)
    for p, lf in user.items():
        for q in [q for q in leaves if q.startswith(p + ".")]:
            del leaves[q]  # a user value replaces the whole default subtree under it
        parent = p.rsplit(".", 1)[0] if "." in p else None
        if parent in leaves:
            del leaves[parent]
        leaves[p] = lf
    apply_hydra(leaves, hydra, diags)
    resolve_interpolations(leaves, diags, display)
    for p, lf in leaves.items():
        if lf.value in (MANDATORY, "???") and not p.startswith(("model.data.test_ds", "model.peft.p_tuning")):
            diags.error("NM230", f"'{p}' is mandatory ('???' in the {spec['label']} config) and has no value", key=p,
                        hint=f"set {p} in the YAML or as {p}=... on the command line", file=display)
    if diags.has_errors:
        raise MigrateError(diags)
    tree = _skeleton(fmt, leaves)
    ctx = _Lowering(fmt, leaves, tree, diags, display, base or yaml_path.parent)
    rows = table["rows"]
    for path in list(leaves):
        row = _match(rows, path, fmt)
        ctx.apply(row, path)
    ctx.finish()
    if diags.has_errors:
        raise MigrateError(diags)
    tree.origin = None
    return tree, fmt


def _match(rows: list[dict], path: str, fmt: str) -> dict:
    for r in rows:
        if r.get("only") and r["only"] != fmt:
            continue
        pat = r["from"]
        if pat == path or (pat.endswith(".*") and path.startswith(pat[:-2] + ".")) or (pat == "*"):
            return r
    return {"from": "*", "extra": True}


def _skeleton(fmt: str, leaves: dict[str, Leaf]) -> Node:
    p = Provenance(kind="nemo-default", detail="NeMo 1.0 job structure" if fmt == "nemo1" else "NeMo-Aligner job structure")
    build = lambda spec: schema.build(spec, {}, p)  # noqa: E731
    return build({
        "_target_": "finetune", "_partial_": True,
        "model": {"_target_": "GPTModel", "config": {"_target_": "ModelConfig"}},
        "trainer": {"_target_": "Trainer", "strategy": {"_target_": "MegatronStrategy"},
                    "plugins": {"_target_": "MegatronMixedPrecision", "precision": "16-mixed"}},
        "data": {"_target_": "SFTFileDataModule", "dataset_kwargs": {"_target_": "dict"}},
        "optim": {"_target_": "MegatronOptimizerModule", "config": {"_target_": "OptimizerConfig"}},
        "resume": {"_target_": "AutoResume", "restore_config": {"_target_": "RestoreConfig", "path": ""}},
        "log": {"_target_": "NeMoLogger", "ckpt": {"_target_": "ModelCheckpoint"}},
        "nemo1": {"_target_": "NeMo1Settings"},
        "tokenizer": "model",
    })  # type: ignore[return-value]


class _Lowering:
    def __init__(self, fmt: str, leaves: dict[str, Leaf], tree: Node, diags: Diagnostics, display: str, base: Path):
        self.fmt, self.leaves, self.tree, self.diags, self.display, self.base = fmt, leaves, tree, diags, display, base
        self.internal = Diagnostics()

    def v(self, path: str, default: Any = None) -> Any:
        lf = self.leaves.get(path)
        return default if lf is None else lf.value

    def set(self, path: str, value: Any, prov: Provenance) -> None:
        if isinstance(value, (Node, Knob)):
            schema.set_path(self.tree, path, value, self.diags, prov.where())
        else:
            schema.set_path(self.tree, path, Knob(value=value, prov=prov), self.diags, prov.where())

    def extra(self, path: str, lf: Leaf) -> None:
        node = self.tree.fields["nemo1"]
        assert isinstance(node, Node)
        node.fields[path] = Knob(value=lf.value, prov=lf.prov)

    def apply(self, row: dict, path: str) -> None:
        lf = self.leaves[path]
        if row.get("extra"):
            self.extra(path, lf)
            return
        fn = row.get("fn")
        if fn:
            getattr(self, f"fn_{fn}")(row, path, lf)
            return
        to = row["to"]
        if to.endswith(".*"):
            to = to[:-2] + path[len(row["from"]) - 2:]
        if to.startswith("peft.") and not isinstance(self.tree.get("peft"), Node):
            self.extra(path, lf)  # LoRA settings of a job that trains without LoRA
            return
        value = lf.value
        if "values" in row:
            key = str(value)
            if key not in row["values"]:
                self.diags.error("NM234", f"'{path}'={value!r} is not one of {sorted(row['values'])}", key=path, **lf.prov.where())
                return
            value = row["values"][key]
        self.set(to, value, lf.prov)

    # -- the small functions the table points at -----------------------------------------------------------
    def fn_aligner_max_steps(self, row: dict, path: str, lf: Leaf) -> None:
        if isinstance(lf.value, int) and lf.value > 0:
            self.set("trainer.max_steps", lf.value, lf.prov)
            return
        self.pending_max_steps = lf  # -1 = epoch-based: computed in finish() from the data if it is on disk

    def fn_wandb(self, row: dict, path: str, lf: Leaf) -> None:
        if lf.value:
            node = schema.build({"_target_": "WandbLogger", "project": self.v("exp_manager.wandb_logger_kwargs.project"),
                                 "name": self.v("exp_manager.wandb_logger_kwargs.name")}, {}, lf.prov)
            self.set("log.wandb", node, lf.prov)
        self.extra(path, lf)

    def fn_checkpoint_callback(self, row: dict, path: str, lf: Leaf) -> None:
        if lf.value is False:
            self.set("trainer.enable_checkpointing", False, lf.prov)
        self.extra(path, lf)

    def fn_amp_o2(self, row: dict, path: str, lf: Leaf) -> None:
        self.extra(path, lf)

    def fn_peft_scheme(self, row: dict, path: str, lf: Leaf) -> None:
        scheme = str(lf.value).lower() if lf.value is not None else "none"
        if scheme in ("none", "null", ""):
            self.set("peft", None, lf.prov)
            return
        if scheme != "lora":
            self.diags.error("NM235", f"peft_scheme {lf.value!r} ({self.fmt}) has no Automodel equivalent: Automodel 0.7 trains LoRA "
                             "(and DoRA) adapters only", key=path, hint="switch the job to peft_scheme: lora, or none for full fine-tuning",
                             **lf.prov.where())
            return
        variant = self.v("model.peft.lora_tuning.variant", "nemo")
        cls = "CanonicalLoRA" if variant == "canonical" else "LoRA"
        self.set("peft", Node(cls=cls, prov=lf.prov), lf.prov)
        self.set("peft.dropout_position", "post", Provenance(kind="nemo-default", detail="NeMo 1.0 LoRA adds dropout after the adapter"))
        if self.fmt == "aligner" or "model.peft.lora_tuning.alpha" not in self.leaves:
            dim = self.leaves.get("model.peft.lora_tuning.adapter_dim")
            if dim is not None:
                self.set("peft.alpha", dim.value, dim.prov.model_copy(update={"detail": "alpha defaults to adapter_dim"})
                         if dim.prov.kind != "yaml" else dim.prov)

    def fn_lora_targets(self, row: dict, path: str, lf: Leaf) -> None:
        if not isinstance(self.tree.get("peft"), Node):
            self.extra(path, lf)
            return
        names = lf.value if isinstance(lf.value, list) else [lf.value]
        canonical = isinstance(self.tree.get("peft"), Node) and self.tree.get("peft").cls == "CanonicalLoRA"
        m = {"attention_qkv": ["linear_qkv"], "attention_dense": ["linear_proj"], "mlp_fc1": ["linear_fc1"], "mlp_fc2": ["linear_fc2"],
             "attention": ["linear_qkv", "linear_proj"], "mlp": ["linear_fc1", "linear_fc2"], "all": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]}
        if canonical:
            split = {"linear_qkv": ["linear_q", "linear_k", "linear_v"], "linear_fc1": ["linear_fc1_up", "linear_fc1_gate"]}
        out: list[str] = []
        for n in names:
            if n not in m:
                self.diags.error("NM236", f"LoRA target {n!r} is not a NeMo 1.0 target name", key=path,
                                 hint=did_you_mean(str(n), m) or f"one of {sorted(m)}", **lf.prov.where())
                continue
            for t in m[n]:
                for x in (split.get(t, [t]) if canonical else [t]):
                    if x not in out:
                        out.append(x)
        layers = self.v("model.peft.lora_tuning.layer_selection")
        if layers:
            out = [f"*.layers.{int(i) - 1}.*.{t}" for i in layers for t in out]
        self.set("peft.target_modules", out, lf.prov)

    def fn_chat(self, row: dict, path: str, lf: Leaf) -> None:
        self.set("data.chat", bool(lf.value), lf.prov)

    def fn_file_list(self, row: dict, path: str, lf: Leaf) -> None:
        v = lf.value
        files = [v] if isinstance(v, str) else list(v or [])
        self.set(row["to"], files, lf.prov)

    def fn_optimizer(self, row: dict, path: str, lf: Leaf) -> None:
        name = str(lf.value)
        known = {"fused_adam": ("adam", False), "distributed_fused_adam": ("adam", True), "adam": ("adam", False), "adamw": ("adam", False),
                 "sgd": ("sgd", False)}
        if name not in known:
            self.diags.error("NM237", f"optimizer {name!r} has no mapping", key=path, hint=f"one of {sorted(known)}", **lf.prov.where())
            return
        opt, dist = known[name]
        self.set("optim.config.optimizer", opt, lf.prov)
        self.set("optim.config.use_distributed_optimizer", dist, lf.prov)
        self.set("optim.config.adam_eps", 1e-8, Provenance(kind="nemo-default", detail="Apex FusedAdam eps=1e-8 (NeMo 1.0 optimizer)"))
        prec = self.v("trainer.precision")
        bf16 = str(prec) in ("bf16", "bf16-mixed")
        self.set("optim.config.bf16", bf16, lf.prov)
        self.set("optim.config.fp16", str(prec) in ("16", "16-mixed", "fp16"), lf.prov)

    def fn_betas(self, row: dict, path: str, lf: Leaf) -> None:
        b = lf.value
        if not (isinstance(b, list) and len(b) == 2):
            self.diags.error("NM238", f"optim.betas must be two numbers, found {b!r}", key=path, **lf.prov.where())
            return
        self.set("optim.config.adam_beta1", float(b[0]), lf.prov)
        self.set("optim.config.adam_beta2", float(b[1]), lf.prov)

    def fn_scheduler(self, row: dict, path: str, lf: Leaf) -> None:
        if lf.value in (None, "None"):
            self.set("optim.lr_scheduler", None, lf.prov)
            return
        if lf.value != "CosineAnnealing":
            self.diags.warning("NM239", f"scheduler {lf.value!r}: only CosineAnnealing has a mapping", key=path, **lf.prov.where())
        node = schema.build({"_target_": "CosineAnnealingScheduler"}, {}, lf.prov)
        self.set("optim.lr_scheduler", node, lf.prov)

    def finish(self) -> None:
        """Values NeMo derives from others."""
        vci = self.leaves.get("trainer.sft.val_check_interval" if self.fmt == "aligner" else "trainer.val_check_interval")
        if self.fmt == "nemo1" and vci is not None and isinstance(vci.value, int):
            # exp_manager's checkpoint callback saves when validation runs
            self.set("log.ckpt.every_n_train_steps", vci.value, vci.prov.model_copy(update={"detail": "checkpoints are saved at each validation"})
                     if vci.prov.kind != "yaml" else vci.prov)
        self.set("log.ckpt.save_last", True, Provenance(kind="nemo-default", detail="exp_manager ModelCheckpoint(save_last=True)"))
        if self.fmt == "aligner":
            self.set("data.dataset_kwargs.answer_only_loss", True,
                     Provenance(kind="nemo-default", detail="train_gpt_sft.py builds the datasets with answer_only_loss=True"))
        pending = getattr(self, "pending_max_steps", None)
        if pending is not None:
            steps = self._epochs_to_steps()
            if steps is None:
                self.diags.error("NM240", "trainer.sft.max_steps=-1 trains for max_epochs epochs of the data, whose size is not known here",
                                 key="trainer.sft.max_steps", hint="pass --set trainer.sft.max_steps=N (N = epochs x samples / global batch), "
                                 "or run convert where the training file exists", **pending.prov.where())
            else:
                self.set("trainer.max_steps", steps[0], pending.prov.model_copy(update={"kind": "derived", "file": None, "line": None, "col": None,
                                                                                       "detail": steps[1]}))

    def _epochs_to_steps(self) -> tuple[int, str] | None:
        files = self.v("model.data.train_ds.file_path") or self.v("model.data.train_ds.file_names")
        files = [files] if isinstance(files, str) else list(files or [])
        gbs = self.v("model.data.train_ds.global_batch_size")
        epochs = self.v("trainer.sft.max_epochs", 1)
        n = 0
        for f in files:
            p = Path(f) if Path(f).is_absolute() else self.base / f
            if not p.is_file():
                return None
            with p.open("rb") as fh:
                n += sum(1 for line in fh if line.strip())
        if not isinstance(gbs, int) or gbs <= 0 or not n:
            return None
        per_epoch = n // gbs  # drop_last=True
        return per_epoch * int(epochs), f"max_epochs {epochs} x ({n} samples // global batch {gbs}) = {per_epoch * int(epochs)} steps"

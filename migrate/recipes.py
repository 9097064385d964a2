"""Expansion of ``llm.<recipe>.finetune_recipe(**kw)`` from the knowledge in mappings/nemo2/recipes.yaml.

Mirrors the common body of NeMo's per-model recipes (reference/nemo2-semantics.md §1.6):
packed default, seq_length default, num_nodes per branch, ``default_finetune_recipe(...)``, the LoRA/DoRA or
full fine-tune branch, ``model.config.seq_length = data.seq_length = seq_length``, packed-sequence settings,
and ``finetune_performance_optimizations`` where it is modelled.
"""

from __future__ import annotations

from typing import Any

from . import knowledge, nemo_release, schema
from .diagnostics import Diagnostics, MigrateError, did_you_mean
from .ir import Knob, Node, Provenance

SIGNATURE = ("dir", "name", "num_nodes", "num_gpus_per_node", "peft_scheme", "seq_length", "packed_sequence", "performance_mode")


def known() -> list[str]:
    return sorted(knowledge.recipes())


def supported() -> list[str]:
    return sorted(n for n, r in knowledge.recipes().items() if r.get("supported", True))


def info(name: str) -> dict[str, Any] | None:
    return knowledge.recipes().get(name)


def signature(name: str) -> list[str]:
    """The parameters of ``llm.<name>.finetune_recipe`` in order (mappings/nemo2/recipes.yaml ``args``, read from the source)."""
    r = info(name) or {}
    return list(r.get("args") or SIGNATURE)


def _kv(kwargs: dict[str, Knob], key: str, default: Any) -> Any:
    return kwargs[key].value if key in kwargs else default


def expand(name: str, kwargs: dict[str, Knob], call_prov: Provenance, diags: Diagnostics, where: dict) -> Node:
    """The run.Partial tree ``llm.<name>.finetune_recipe(**kwargs)`` returns."""
    r = info(name)
    if r is None:
        hint = did_you_mean(name, known())
        diags.error(
            "NM110",
            f"unknown NeMo recipe 'llm.{name}'",
            hint=(hint + " " if hint else "") + "known recipes: " + ", ".join(supported()),
            **where,
        )
        raise MigrateError(diags)
    missing = nemo_release.recipe_missing(name)
    if missing:
        diags.error("NM115", f"{missing}: this job cannot have run on NeMo {nemo_release.current()}",
                    hint="pass --nemo-version with the release the job ran on", **where)
        raise MigrateError(diags)
    r = {**r, **{k: v for k, v in nemo_release.recipe_overrides(name).items() if k != "lora"}, **(
        {"lora": {**(r.get("lora") or {}), **nemo_release.recipe_overrides(name)["lora"]}} if "lora" in nemo_release.recipe_overrides(name) else {})}
    if r.get("supported") is False:
        diags.error(
            "NM111",
            f"recipe 'llm.{name}' cannot be migrated to Automodel's LLM fine-tune recipe: {r['why']}",
            hint="supported recipes: " + ", ".join(supported()),
            **where,
        )
        raise MigrateError(diags)
    sig = signature(name)
    for k, default in (r.get("extra_args") or {}).items():  # parameters whose other values this knowledge does not model
        if k in kwargs and kwargs[k].value != default:
            diags.error("NM116", f"llm.{name}.finetune_recipe({k}={kwargs[k].value!r}) is not modelled (only {k}={default!r} is)",
                        hint="export the built job with NeMo-Run's --to-yaml and convert that file", **(kwargs[k].prov.where() or where))
    for k in kwargs:
        if k not in sig:
            hint = did_you_mean(k, sig)
            diags.error(
                "NM112",
                f"llm.{name}.finetune_recipe() got an unexpected keyword argument '{k}'",
                hint=hint or f"its parameters are: {', '.join(sig)}",
                **(kwargs[k].prov.where() or where),
            )
    if diags.has_errors:
        raise MigrateError(diags)

    def rd(detail: str) -> Provenance:
        return Provenance(kind="recipe-default", detail=f"{name} ({detail})")

    performance_mode = bool(_kv(kwargs, "performance_mode", False))
    packed = _kv(kwargs, "packed_sequence", None)
    if packed is None:
        packed = performance_mode if "performance_mode" in signature(name) and r.get("perf_packs", True) else False
    packed = bool(packed)
    seq_arg = "seq_length" in signature(name)  # recipes without a seq_length parameter keep default_finetune_recipe's data
    seq_length = _kv(kwargs, "seq_length", None)
    seq_prov = kwargs["seq_length"].prov if "seq_length" in kwargs and seq_length is not None else rd("seq_length default")
    if seq_length is None:
        seq_length = r.get("packed_seq_length", 4096) if packed else 2048
    scheme = _kv(kwargs, "peft_scheme", r.get("peft_scheme"))
    scheme_l = "none" if scheme is None else str(scheme).lower()
    if scheme_l not in ("none", "lora", "dora"):
        diags.error(
            "NM113",
            f"llm.{name}.finetune_recipe(peft_scheme={scheme!r}): NeMo raises ValueError('Unrecognized peft scheme')",
            hint="use 'lora', 'dora', or None / 'none' for full fine-tuning",
            **(kwargs["peft_scheme"].prov.where() if "peft_scheme" in kwargs else where),
        )
        raise MigrateError(diags)
    branch = "full" if scheme_l == "none" else "lora"
    branch_label = {"none": "full fine-tune branch", "lora": "LoRA branch", "dora": "DoRA branch"}[scheme_l]

    num_nodes = kwargs.get("num_nodes")
    if num_nodes is None or num_nodes.value is None:
        # not given: the signature default; given as None (or a None default): the recipe's per-branch choice
        nn = r.get("num_nodes") if num_nodes is None else None
        if nn is None:
            nn = (r.get("num_nodes_if_none") or {}).get(branch, 1)
        num_nodes = Knob(value=nn, prov=rd(f"num_nodes for the {branch_label}"))
    gpus = kwargs.get("num_gpus_per_node") or Knob(value=r.get("num_gpus_per_node", 8), prov=rd("num_gpus_per_node"))
    resume_path = kwargs.get(r.get("resume_arg") or "") or Knob(value=r["hf_id"], prov=rd("HF id"))

    base_prov = Provenance(kind="recipe-default", detail=name)
    model = Node(
        cls=schema.node_class(r.get("model_class") or "GPTModel")[0],
        prov=rd("model()"),
        fields={"config": Node(cls=r.get("config_class") or "ModelConfig", prov=rd("model()"))},
    )
    fac_kwargs: dict[str, Any] = {
        "model": model,
        "resume_path": resume_path,
        "num_nodes": num_nodes,
        "num_gpus_per_node": gpus,
        "packed_sequence": Knob(value=packed, prov=rd("packed_sequence")),
    }
    if "dir" in kwargs:
        fac_kwargs["dir"] = kwargs["dir"]
    if "name" in kwargs:
        fac_kwargs["name"] = kwargs["name"]
    tree = schema.call_factory("default_finetune_recipe", fac_kwargs, base_prov, root=name)
    assert isinstance(tree, Node)
    tree.origin = name
    fdef = knowledge.factories()["default_finetune_recipe"]
    internal = Diagnostics()
    if packed:
        for path, v in (fdef.get("when_packed") or {}).items():
            schema.set_path(tree, path, schema.build(v, {}, rd("packed_sequence")), internal, {})
    if branch == "lora":
        peft_cls = "DoRA" if scheme_l == "dora" else "LoRA"
        tree.fields["peft"] = Node(cls=peft_cls, prov=rd(branch_label))
    for path, v in (r.get(branch) or {}).items():
        schema.set_path(tree, path, _spec_value(v, rd(branch_label)), internal, {})
    for path, v in (r.get("always") or {}).items():
        schema.set_path(tree, path, _spec_value(v, rd("recipe body")), internal, {})
    if not seq_arg:
        if r.get("config_seq_length"):
            cfg_prov = Provenance(kind="nemo-default", detail=f"{r.get('config_class')}.seq_length")
            schema.set_path(tree, "model.config.seq_length", Knob(value=r["config_seq_length"], prov=cfg_prov), internal, {})
    else:
        schema.set_path(tree, "model.config.seq_length", Knob(value=seq_length, prov=seq_prov), internal, {})
        schema.set_path(tree, "data.seq_length", Knob(value=seq_length, prov=seq_prov), internal, {})
    if packed and seq_arg:
        pprov = rd("packed_sequence")
        schema.set_path(tree, "data.dataset_kwargs", Knob(value={"pad_to_max_length": True}, prov=pprov), internal, {})
        specs = schema.build({"_target_": "PackedSequenceSpecs", "packed_sequence_size": seq_length}, {}, pprov)
        schema.set_path(tree, "data.packed_sequence_specs", specs, internal, {})
    if performance_mode:
        perf = r.get("performance_mode")
        if perf is None:
            diags.warning(
                "NM114",
                f"performance_mode=True for llm.{name}: its finetune_performance_optimizations() are not modelled "
                "(only the packed-sequence default it implies is); set the values you rely on explicitly",
                **(kwargs["performance_mode"].prov.where() if "performance_mode" in kwargs else where),
            )
        else:
            for path, v in (perf.get(branch) or {}).items():
                schema.set_path(tree, path, _spec_value(v, rd("performance_mode")), internal, {})
    if internal.has_errors:  # knowledge bug, not a user error
        raise AssertionError("mappings/nemo2 recipe knowledge does not fit classes.yaml:\n" + internal.render())
    return tree


def _spec_value(v: Any, prov: Provenance) -> Node | Knob:
    if (isinstance(v, dict) and "_target_" in v) or (isinstance(v, list) and any(isinstance(x, dict) and "_target_" in x for x in v)):
        return schema.build(v, {}, prov)  # run.Config values (a DDP config, a list of callbacks) become nodes
    return Knob(value=v, prov=prov)

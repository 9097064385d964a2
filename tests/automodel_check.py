"""Check an emitted Automodel YAML config against the REAL nemo-automodel 0.7.0 package.

Every stage calls Automodel's own config-level code (the same functions
``TrainFinetuneRecipeForNextTokenPrediction.setup()`` calls on each section), but
stops short of anything that needs a GPU, a download, a dataset on disk or a real
process group:

  load          nemo_automodel.components.config.loader.load_yaml_config
  recipe        nemo_automodel.cli.utils.load_yaml + resolve_recipe_name (the `automodel`
                CLI's lookup) + components.launcher.interactive.resolve_recipe_cls, then
                recipe_cls(cfg) whose __init__ wraps the config in recipes._typed_config.RecipeConfig
  typed         every typed view of RecipeConfig the LLM recipe reads (step_scheduler,
                lr_scheduler, optimizer, loss_fn (+ .build()), checkpoint, dataloader /
                validation_dataloaders (dataset typed config via make_dataset_config, with
                `tokenizer` popped, collate_fn, packed_sequence), wandb, mlflow, comet,
                prewarm, mfu, embedding_row_repair, domain_mixture, freeze_config),
                compile via build_compile_config, model dtype via shared.utils.dtype_from_str
  distributed   recipes._dist_utils.parse_distributed_section, then
                create_distributed_setup_from_config(cfg, world_size=tp*cp*pp*dp) exactly as the
                recipe does, on a fake (in-process, no-network) torch.distributed process group so
                the device mesh really gets built
  peft          cfg.peft.instantiate() -> PeftConfig, then
                components._peft.lora.apply_lora_to_linear_modules on a tiny HF model built
                from a config (no weights); per-pattern matching with _peft.module_matcher.ModuleMatcher
  fp8           components.quantization.fp8.build_fp8_config, torchao Float8LinearConfig the way
                apply_fp8_to_model builds it, and fp8._module_filter_fn on every LoRA-adapted module
  lr_scheduler  StepSchedulerConfig.build (dp size from the mesh via BaseRecipe._get_dp_group_size),
                the config's optimizer built by OptimizerConfig.build on the tiny model, then
                LRSchedulerConfig.build, stepped through every step up to max_steps
  ignored       top-level keys the recipe/CLI never read, and `distributed` keys that
                parse_distributed_section drops silently

``check_config(path)`` returns a list of human-readable problems (empty = accepted) and
never raises: every exception from Automodel's code becomes a problem string
``"[<stage>] <ExceptionType>: <message>"``.  ``run_checks(path)`` returns the same problems plus
an ``info`` dict (LoRA counts, learning rates, world size, ...).

This module imports nemo_automodel at import time; import it only where nemo_automodel is
installed (tests/test_automodel_real.py skips otherwise).  It never imports ``migrate``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import inspect
import logging
import re
import signal
import traceback
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nemo_automodel
import torch
import torch.nn as nn
from nemo_automodel.cli.utils import load_yaml as cli_load_yaml
from nemo_automodel.cli.utils import resolve_recipe_name
from nemo_automodel.components._peft.lora import LinearLoRA, PeftConfig, apply_lora_to_linear_modules
from nemo_automodel.components._peft.module_matcher import ModuleMatcher
from nemo_automodel.components.config.loader import ConfigNode, load_yaml_config
from nemo_automodel.components.launcher.interactive import resolve_recipe_cls
from nemo_automodel.components.quantization import fp8 as am_fp8
from nemo_automodel.recipes import _dist_utils
from nemo_automodel.recipes._typed_config import RecipeConfig
from nemo_automodel.recipes.base_recipe import BaseRecipe

AUTOMODEL_VERSION = getattr(nemo_automodel, "__version__", None)
if AUTOMODEL_VERSION is None:  # pragma: no cover - depends on the installed package layout
    from nemo_automodel import package_info

    AUTOMODEL_VERSION = package_info.__version__

# Tiny model used for the LoRA / FP8 stages (all Linear dims divisible by 16, like the real
# models, so the FP8 module filter's divisibility rule never hides a LoRA-adapted module).
TINY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=128,
    # Some families (Phi-3) default to token ids beyond a 256-token vocabulary.
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# Model-family choice for the tiny model, keyed on the (lower-cased) model id.  Llama is the
# default; families whose projection names differ from Llama's need their own HF class (Phi-3 fuses
# qkv_proj and gate_up_proj), so a '*.qkv_proj' pattern is checked against a model that has one.
_FAMILIES: list[tuple[str, str, str]] = [
    # (substring of model id, transformers config class, transformers model class)
    ("phi-3", "Phi3Config", "Phi3ForCausalLM"),
    ("phi3", "Phi3Config", "Phi3ForCausalLM"),
    ("qwen3", "Qwen3Config", "Qwen3ForCausalLM"),
    ("qwen2", "Qwen2Config", "Qwen2ForCausalLM"),
    ("mistral", "MistralConfig", "MistralForCausalLM"),
]
_DEFAULT_FAMILY = ("llama", "LlamaConfig", "LlamaForCausalLM")
# Families whose HF model is remote code (trust_remote_code), not a transformers class: no tiny model can be built
# here, so LoRA patterns are only instantiated, not matched against module names (the report says so).
_REMOTE_CODE = ("baichuan", "chatglm")


@dataclass
class CheckReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, stage: str, message: str) -> None:
        self.problems.append(f"[{stage}] {message}")

    def add_exc(self, stage: str, what: str, exc: BaseException) -> None:
        msg = str(exc).strip()
        if not msg:
            # A bare `assert` in Automodel's code: name the failing statement instead.
            frames = traceback.extract_tb(exc.__traceback__)
            if frames:
                last = frames[-1]
                msg = f"{(last.line or '').strip()}  ({Path(last.filename).name}:{last.lineno})"
            else:
                msg = repr(exc)
        # Keep problems one-screen readable (Automodel's messages can list every recipe class).
        msg = " ".join(msg.split())
        if len(msg) > 600:
            msg = msg[:600] + " ..."
        prefix = f"{what}: " if what else ""
        self.problems.append(f"[{stage}] {prefix}{type(exc).__name__}: {msg}")


@contextlib.contextmanager
def _stage(report: CheckReport, stage: str, what: str = ""):
    """Turn any exception (AssertionError included) raised inside into a problem."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the checker must never raise
        report.add_exc(stage, what, exc)


def _plain(obj: Any) -> Any:
    """ConfigNode / wrapped lists -> plain dicts / lists (values stay as the loader translated them)."""
    if obj is None:
        return None
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


# --------------------------------------------------------------------------- recipe lookup


def _check_recipe(report: CheckReport, path: Path):
    """The `automodel` CLI's own lookup of `recipe:` (nemo_automodel.cli.app.main)."""
    stage = "recipe"
    recipe_cls = None
    with _stage(report, stage):
        raw_cfg = cli_load_yaml(path)
        section = raw_cfg.get("recipe") if isinstance(raw_cfg, dict) else None
        if isinstance(section, str) and section.strip():
            raw_target = section.strip()
        elif isinstance(section, dict) and "_target_" in section:
            raw_target = section["_target_"]
        else:
            report.add(
                stage, "no top-level `recipe:`; the automodel CLI exits with 'YAML config must specify a recipe target'"
            )
            return None
        target = resolve_recipe_name(raw_target)
        cls = resolve_recipe_cls(target)
        if not (inspect.isclass(cls) and issubclass(cls, BaseRecipe)):
            report.add(stage, f"recipe {raw_target!r} resolves to {cls!r}, which is not a BaseRecipe subclass")
            return None
        report.info["recipe"] = f"{cls.__module__}.{cls.__qualname__}"
        recipe_cls = cls
    return recipe_cls


# --------------------------------------------------------------------------- typed sections


def _check_typed(report: CheckReport, cfg: ConfigNode, rc: RecipeConfig) -> None:
    stage = "typed"
    # Strict sections: each property builds the component config dataclass exactly as the recipe does.
    simple = [
        "step_scheduler",
        "lr_scheduler",
        "checkpoint",
        "wandb",
        "mlflow",
        "comet",
        "prewarm",
        "mfu",
        "embedding_row_repair",
        "domain_mixture",
        "freeze_config",
    ]
    for name in simple:
        if name == "mfu" or name in cfg:  # mfu is always built (MFUConfig() by default)
            with _stage(report, stage, name):
                getattr(rc, name)

    if "optimizer" not in cfg:
        report.add(stage, "optimizer: section missing; train_ft calls self.cfg.optimizer.build(...) unconditionally")
    else:
        with _stage(report, stage, "optimizer"):
            opt_cfg = rc.optimizer
            report.info["optimizer_config"] = type(opt_cfg).__name__

    if "loss_fn" not in cfg:
        report.add(stage, "loss_fn: section missing; train_ft calls self.cfg.loss_fn.build() unconditionally")
    else:
        with _stage(report, stage, "loss_fn"):
            loss_cfg = rc.loss_fn
            loss = loss_cfg.build()
            report.info["loss_fn"] = type(loss).__name__

    if "dataset" not in cfg:
        report.add(stage, "dataset: section missing")
    else:
        with _stage(report, stage, "dataset/dataloader/packed_sequence"):
            dl = rc.dataloader
            report.info["dataset_config"] = type(dl.dataset_config).__name__
    with _stage(report, stage, "validation_dataset/validation_dataloader"):
        vals = rc.validation_dataloaders
        report.info["validation_datasets"] = {k: type(v.dataset_config).__name__ for k, v in vals.items()}

    if "clip_grad_norm" in cfg:
        with _stage(report, stage, "clip_grad_norm"):
            max_norm = cfg.get("clip_grad_norm.max_norm", None)
            if max_norm is not None:
                float(max_norm)  # train_ft: self.max_grad_norm = float(self.cfg.clip_grad_norm.max_norm)

    if cfg.get("compile", None) is not None:
        from nemo_automodel.components.utils.compile_utils import build_compile_config

        with _stage(report, stage, "compile"):
            build_compile_config(cfg.get("compile"))

    if "model" not in cfg:
        report.add(stage, "model: section missing")
    else:
        with _stage(report, stage, "model"):
            _check_model_section(report, cfg)


def _check_model_section(report: CheckReport, cfg: ConfigNode) -> None:
    from nemo_automodel.shared.utils import dtype_from_str

    model = cfg.model
    target = model.get("_target_", None)
    if target is None:
        raise ValueError("model has no _target_; train_ft builds it with cfg.model.instantiate(...)")
    if not callable(target):
        raise TypeError(f"model._target_ resolved to a non-callable {target!r}")
    for key in ("dtype", "torch_dtype"):
        val = model.get(key, None)
        if isinstance(val, str) and val != "auto":
            dtype_from_str(val)  # what NeMoAutoModel*.from_pretrained/from_config do with a dtype string
    reserved = [
        k
        for k in (
            "peft_config",
            "fp8_config",
            "compile_config",
            "quantization_config",
            "qat_config",
            "distributed_setup",
        )
        if k in model
    ]
    if reserved:
        raise ValueError(f"model sets keys the recipe passes itself at instantiate time: {reserved}")


# --------------------------------------------------------------------------- distributed


@contextlib.contextmanager
def _fake_process_group(world_size: int):
    """An in-process 'fake' torch.distributed backend: meshes build, nothing communicates."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():  # someone else owns the default group; do not touch it
        yield False
        return
    dist.init_process_group(backend="fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield True
    finally:
        dist.destroy_process_group()


def _int_or(value: Any, default: int) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _check_distributed(report: CheckReport, cfg: ConfigNode, exit_stack: contextlib.ExitStack):
    """Returns (device_mesh, dp_size)."""
    stage = "distributed"
    section = cfg.get("distributed", None)
    dist_dict = _plain(section) if section is not None else {}
    if not isinstance(dist_dict, dict):
        report.add(stage, f"`distributed` must be a mapping, got {type(dist_dict).__name__}")
        return None, 1
    parsed = None
    with _stage(report, stage, "parse_distributed_section"):
        parsed = _dist_utils.parse_distributed_section(dict(dist_dict))
    if parsed is None:
        return None, 1

    tp, cp, pp = parsed["tp_size"], parsed["cp_size"], parsed["pp_size"]
    non_dp = _int_or(tp, 1) * _int_or(cp, 1) * _int_or(pp, 1)
    report.info["strategy_config"] = type(parsed["strategy_config"]).__name__

    # Keys parse_distributed_section accepted without using them (e.g. a legacy `_target_`).
    consumed = {"strategy", "pipeline", "moe", "activation_checkpointing", *_dist_utils._PARALLELISM_DEFAULTS}
    if dataclasses.is_dataclass(parsed["strategy_config"]):
        consumed |= {f.name for f in dataclasses.fields(parsed["strategy_config"])}
    dropped = sorted(k for k in dist_dict if k not in consumed)
    for key in dropped:
        hint = " (use `strategy:` instead)" if key == "_target_" else ""
        report.add(
            "ignored",
            f"distributed.{key} is silently dropped by parse_distributed_section{hint}",
        )

    # dp_size: null means "world / (tp*cp*pp)", fixed only at launch; try the smallest dp for which
    # Automodel's own mesh construction succeeds (dp=1 first), as the brief's "some valid dp".
    explicit_dp = _int_or(parsed["dp_size"], 0)
    candidates = [explicit_dp] if explicit_dp else list(range(1, 17))
    mesh = None
    dp = candidates[0]
    first_error: tuple[int, BaseException] | None = None
    for cand in candidates:
        world_size = non_dp * cand
        attempt = contextlib.ExitStack()
        try:
            owns = attempt.enter_context(_fake_process_group(world_size))
            if not owns:
                attempt.close()
                report.info["device_mesh"] = "skipped: torch.distributed already initialised"
                return None, cand
            setup = _dist_utils.create_distributed_setup_from_config(cfg, world_size=world_size)
        except KeyboardInterrupt:
            attempt.close()
            raise
        except BaseException as exc:  # noqa: BLE001
            attempt.close()
            if first_error is None:
                first_error = (world_size, exc)
            continue
        exit_stack.push(attempt.pop_all())  # keep this process group until the checks end
        mesh = setup.mesh_context.device_mesh
        dp = cand
        report.info["world_size"] = world_size
        report.info["device_mesh"] = repr(mesh)
        break
    if mesh is None and first_error is not None:
        ws, exc = first_error
        tried = f"world_size={ws}" + ("" if explicit_dp else f" (and dp=1..{candidates[-1]})")
        report.add_exc(stage, f"create_distributed_setup_from_config({tried})", exc)
        return None, dp
    dp_size = dp
    if mesh is not None:
        with _stage(report, stage, "dp group size"):
            # BaseRecipe._get_dp_group_size reads the flattened 'dp' mesh the recipe uses for grad-acc.
            dp_size = BaseRecipe._get_dp_group_size(types.SimpleNamespace(device_mesh=mesh))
    report.info["dp_size"] = dp_size
    return mesh, dp_size


# --------------------------------------------------------------------------- tiny model


def _model_id(cfg: ConfigNode) -> str:
    model = cfg.get("model", None)
    if model is None:
        return ""
    name = model.get("pretrained_model_name_or_path", None)
    if name is None:
        conf = model.get("config", None)
        if isinstance(conf, str):
            name = conf
        elif conf is not None:
            name = conf.get("pretrained_model_name_or_path", None)
    return str(name or "")


def tiny_model_family(model_id: str) -> tuple[str, str, str]:
    low = model_id.lower()
    for key, conf_cls, model_cls in _FAMILIES:
        if key in low:
            return key, conf_cls, model_cls
    return _DEFAULT_FAMILY


def build_tiny_model(model_id: str = "", layers: int | None = None) -> nn.Module:
    """A randomly initialised tiny HF causal LM of the config's model family (no download)."""
    import transformers

    _, conf_name, model_name = tiny_model_family(model_id)
    conf_cls = getattr(transformers, conf_name)
    model_cls = getattr(transformers, model_name)
    config = conf_cls(**(TINY_DIMS | ({"num_hidden_layers": layers} if layers else {})))
    config.architectures = [model_name]
    torch.manual_seed(0)
    return model_cls(config)


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def expected_lora_count(model: nn.Module, target_modules: list[str]) -> int:
    """nn.Linear modules whose leaf name is the last dotted component of some target pattern."""
    leaves = [p.rsplit(".", 1)[-1] for p in target_modules]
    return sum(
        1 for n in _linear_names(model) if any(fnmatch.fnmatchcase(n.rsplit(".", 1)[-1], leaf) for leaf in leaves)
    )


# --------------------------------------------------------------------------- peft


def _check_peft(report: CheckReport, cfg: ConfigNode, tp_size: int):
    """Returns (lora_model or None, adapted module names)."""
    stage = "peft"
    model_id = _model_id(cfg)
    family = tiny_model_family(model_id)[0]
    report.info["tiny_model_family"] = family
    if cfg.get("peft", None) is None:
        return None, []

    peft_cfg = None
    with _stage(report, stage, "cfg.peft.instantiate()"):
        peft_cfg = cfg.peft.instantiate()
        if not isinstance(peft_cfg, PeftConfig):
            raise TypeError(f"peft._target_ built {type(peft_cfg).__name__}, not PeftConfig")
    if peft_cfg is None:
        return None, []

    targets = [str(p) for p in _as_list(peft_cfg.target_modules)]
    if any(k in model_id.lower() for k in _REMOTE_CODE):
        report.info["lora_check_skipped"] = f"{model_id} is remote code, not a transformers class: module names not checked"
        return None, []

    # enough layers for every layer a pattern names (NeMo's layer_selection becomes '*.layers.N.*' patterns)
    named = [int(m) for p in targets for m in re.findall(r"layers\.(\d+)\.", p)]
    layers = min(max(named) + 1, 64) if named and max(named) + 1 > TINY_DIMS["num_hidden_layers"] else None
    base = model = None
    with _stage(report, stage, f"building a tiny {family} model"):
        base = build_tiny_model(model_id, layers)
        model = build_tiny_model(model_id, layers)
    if base is None or model is None:
        return None, []

    # Each target pattern on its own, with Automodel's matcher, against the untouched tiny model.
    for pattern in targets:
        with _stage(report, stage, f"target_modules pattern {pattern!r}"):
            matcher = ModuleMatcher([pattern], [], False, True)
            hits = [n for n, m in base.named_modules() if isinstance(m, nn.Linear) and matcher.match(m, n)]
            if not hits:
                report.add(
                    stage,
                    f"target_modules pattern {pattern!r} matches no module of a tiny {family} model "
                    f"(Automodel matches the full module name, e.g. 'model.layers.0.self_attn.q_proj')",
                )

    adapted: list[str] = []
    with _stage(report, stage, "apply_lora_to_linear_modules"):
        if tp_size > 1:  # _transformers.infrastructure._apply_peft_and_lower_precision does this
            peft_cfg.use_triton = False
        n = apply_lora_to_linear_modules(model, peft_cfg, quantization_config=None, skip_freeze=True)
        adapted = [name for name, m in model.named_modules() if isinstance(m, LinearLoRA)]
        report.info["lora_applied"] = n
        report.info["lora_modules"] = adapted
        if n != len(adapted):
            report.add(stage, f"apply_lora_to_linear_modules reported {n} modules but {len(adapted)} are LinearLoRA")
        if n == 0:
            report.add(stage, f"LoRA adapted no module of a tiny {family} model (target_modules={targets})")
        if targets and not peft_cfg.match_all_linear:
            expected = expected_lora_count(base, targets)
            report.info["lora_expected"] = expected
            if expected != n:
                report.add(
                    stage,
                    f"LoRA adapted {n} modules of a tiny {family} model, expected {expected} "
                    f"(nn.Linear whose leaf name is the last component of {targets})",
                )
        elif peft_cfg.match_all_linear:
            report.info["lora_expected"] = len(_linear_names(base))
    return (model if adapted else None), adapted


# --------------------------------------------------------------------------- fp8


def _check_fp8(report: CheckReport, cfg: ConfigNode, lora_model: nn.Module | None, adapted: list[str]) -> None:
    stage = "fp8"
    section = cfg.get("fp8", None)
    if section is None:
        return
    fp8_cfg = None
    with _stage(report, stage, "build_fp8_config"):
        fp8_cfg = am_fp8.build_fp8_config(section)  # what train_ft.build_model passes to the model
        report.info["fp8_enabled"] = bool(fp8_cfg.enabled)
    if fp8_cfg is None:
        return
    with _stage(report, stage, "Float8LinearConfig"):
        if not am_fp8.HAVE_TORCHAO:
            raise ImportError("torchao is not installed; apply_fp8_to_model would raise")
        # Same branch as apply_fp8_to_model (without converting anything).
        if fp8_cfg.recipe_name is not None and fp8_cfg.recipe_name != "tensorwise":
            am_fp8.Float8LinearConfig.from_recipe_name(fp8_cfg.recipe_name)
        else:
            am_fp8.Float8LinearConfig(
                enable_fsdp_float8_all_gather=fp8_cfg.enable_fsdp_float8_all_gather,
                force_recompute_fp8_weight_in_bwd=fp8_cfg.force_recompute_fp8_weight_in_bwd,
                emulate=fp8_cfg.emulate,
            )
    if lora_model is None or not adapted:
        return
    left: list[str] = []
    with _stage(report, stage, "_module_filter_fn"):
        filter_fqns = list(fp8_cfg.filter_fqns or [])
        modules = dict(lora_model.named_modules())
        left = [n for n in adapted if am_fp8._module_filter_fn(modules[n], n, filter_fqns=filter_fqns)]
    report.info["lora_modules_left_to_fp8"] = left
    if left and fp8_cfg.enabled:
        shown = ", ".join(left[:6]) + (f", ... ({len(left)} in all)" if len(left) > 6 else "")
        report.add(
            stage,
            f"fp8 is enabled and fp8._module_filter_fn (filter_fqns={list(fp8_cfg.filter_fqns)}) accepts "
            f"LoRA-adapted modules, which torchao would swap to Float8Linear, dropping the adapter: {shown}",
        )


# --------------------------------------------------------------------------- lr scheduler


def _check_lr(report: CheckReport, cfg: ConfigNode, rc: RecipeConfig, dp_size: int, device_mesh, model) -> None:
    stage = "lr_scheduler"
    try:
        ss_cfg = rc.step_scheduler
        lr_cfg = rc.lr_scheduler
    except Exception:  # noqa: BLE001 - already reported by the typed stage
        return
    step_sched = None
    with _stage(report, stage, "StepSchedulerConfig.build"):
        local_bs = cfg.get("step_scheduler.local_batch_size", 1)
        # dataloader=None: no dataset to measure, so total steps come from max_steps (as for an
        # iterable dataset), which is what we want to check against.  Without max_steps the run
        # length depends on the dataset size; stand in an epoch of 100 optimizer steps.
        dataloader = None
        if ss_cfg.max_steps is None:
            try:
                grad_acc = max(int(ss_cfg.global_batch_size) // (int(local_bs) * int(dp_size)), 1)
            except (TypeError, ValueError, ZeroDivisionError):
                grad_acc = 1
            dataloader = range(100 * grad_acc)
            report.info["assumed_epoch_len"] = 100
        step_sched = ss_cfg.build(dataloader, dp_size, local_bs)
    if step_sched is None:
        return
    try:
        report.info["grad_acc_steps"] = step_sched.grad_acc_steps
        report.info["max_steps"] = step_sched.max_steps
        if lr_cfg is None:
            report.info["lr"] = "constant (no lr_scheduler section)"
            return
        optimizers = None
        with _stage(report, stage, "optimizer.build"):
            if model is None:
                model = build_tiny_model(_model_id(cfg))
            optimizers = rc.optimizer.build(model, device_mesh=device_mesh, is_peft=cfg.get("peft", None) is not None)
        if optimizers is None:
            # Still run the scheduler's own assertions on a plain optimizer with the config's lr/wd.
            lr = float(cfg.get("optimizer.lr", 1e-3))
            wd = float(cfg.get("optimizer.weight_decay", 0.0))
            optimizers = [torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, weight_decay=wd)]
        with _stage(report, stage, "LRSchedulerConfig.build"):
            scheds = lr_cfg.build(optimizers, step_sched)
            sched = scheds[0]
            opt = optimizers[0]
            total = int(step_sched.max_steps)
            if step_sched.epoch_len is not None:
                total = min(total, int(step_sched.num_epochs) * int(step_sched.epoch_len))
            last = max(total - 1, 0)
            lrs = {0: opt.param_groups[0]["lr"]}
            for step in range(1, last + 1):
                sched.step(1)  # what the recipe does after every optimizer step
                if step == 1 or step == last:
                    lrs[step] = opt.param_groups[0]["lr"]
            report.info["lr"] = lrs
            report.info["lr_scheduler"] = {
                "init_lr": sched.init_lr,
                "max_lr": sched.max_lr,
                "min_lr": sched.min_lr,
                "lr_warmup_steps": sched.lr_warmup_steps,
                "lr_decay_steps": sched.lr_decay_steps,
                "lr_decay_style": sched.lr_decay_style,
            }
    finally:
        handler = getattr(step_sched, "sig_handler", None)
        if handler is not None:
            with contextlib.suppress(Exception):
                handler.release()


# --------------------------------------------------------------------------- ignored top-level keys

_KEY_PATTERNS = [
    r"""cfg\.get\(\s*["']([A-Za-z_]\w*)""",
    r"""cfg\.([A-Za-z_]\w*)""",
    r"""_raw\.get\(\s*["']([A-Za-z_]\w*)""",
    r"""_key\s*(?::\s*str\s*)?=\s*["']([A-Za-z_]\w*)["']""",
    r"""config\.(?:get|pop)\(\s*["']([A-Za-z_]\w*)""",
]
_PREFIX_PATTERN = r"""startswith\(\s*["']([A-Za-z_]\w*)["']"""


def recipe_read_keys(recipe_cls: type | None) -> tuple[set[str], set[str]]:
    """Top-level YAML keys (and key prefixes) that the recipe, its base classes, RecipeConfig and
    the automodel CLI read, scanned from the installed sources."""
    import nemo_automodel.cli.app as cli_app
    import nemo_automodel.recipes._typed_config as typed_mod

    files: set[str] = {inspect.getsourcefile(typed_mod), inspect.getsourcefile(cli_app)}
    for klass in getattr(recipe_cls, "__mro__", ()):
        if klass.__module__.startswith("nemo_automodel"):
            with contextlib.suppress(TypeError, OSError):
                files.add(inspect.getsourcefile(klass))
    keys: set[str] = set()
    prefixes: set[str] = set()
    for f in files:
        src = Path(f).read_text()
        for pat in _KEY_PATTERNS:
            keys.update(re.findall(pat, src))
        prefixes.update(p for p in re.findall(_PREFIX_PATTERN, src) if len(p) > 2)
    # RecipeConfig's typed sections are read through attribute access on it.
    keys.update(n for n, v in vars(RecipeConfig).items() if not n.startswith("_"))
    return keys, prefixes


def _check_ignored(report: CheckReport, cfg: ConfigNode, recipe_cls: type | None) -> None:
    with _stage(report, "ignored"):
        if recipe_cls is None:  # no usable `recipe:`; judge against the LLM fine-tune recipe
            from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction as recipe_cls
        keys, prefixes = recipe_read_keys(recipe_cls)
        raw = cfg.to_dict()
        for key in raw:
            if key in keys or any(key.startswith(p) for p in prefixes):
                continue
            report.add(
                "ignored",
                f"top-level key {key!r} is never read by {recipe_cls.__name__} or the automodel CLI; "
                f"its settings have no effect",
            )


# --------------------------------------------------------------------------- entry points


def run_checks(path: Path | str) -> CheckReport:
    path = Path(path)
    report = CheckReport(path=path)
    report.info["automodel_version"] = AUTOMODEL_VERSION
    old_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            warnings.simplefilter("ignore")
            _run(report, path, stack)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - never raise (bug in this checker itself)
        report.add_exc("checker", "internal", exc)
    finally:
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGTERM, old_sigterm)
    return report


def _missing_dependencies(path: Path) -> list[str]:
    """After a failed load: `_target_`s that fail because a third-party module is missing.

    The loader turns such an import failure into "cannot resolve attribute", which reads like a
    config error; this names the missing package so environment and config problems stay apart."""
    import importlib

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and (k == "_target_" or str(k).endswith("_fn")) and "." in v and ":" not in v:
                    probe(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    def probe(dotted: str) -> None:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            name = ".".join(parts[:i])
            try:
                importlib.import_module(name)
                return
            except ModuleNotFoundError as exc:
                if exc.name and not dotted.startswith(exc.name):
                    msg = (
                        f"{dotted!r} cannot be imported: Python module {exc.name!r} is not installed "
                        f"(an environment problem, not a config problem)"
                    )
                    if msg not in found:
                        found.append(msg)
                    return
            except Exception:  # noqa: BLE001 - only a diagnostic
                return

    with contextlib.suppress(Exception):
        walk(cli_load_yaml(path))
    return found


def _run(report: CheckReport, path: Path, stack: contextlib.ExitStack) -> None:
    cfg = None
    with _stage(report, "load", "load_yaml_config"):
        cfg = load_yaml_config(path)
    if cfg is None:
        for msg in _missing_dependencies(path):
            report.add("load", msg)
        return

    recipe_cls = _check_recipe(report, path)
    rc = None
    if recipe_cls is not None:
        with _stage(report, "recipe", f"{recipe_cls.__name__}(cfg)"):
            rc = recipe_cls(cfg).cfg  # the recipe's own typed view
    if not isinstance(rc, RecipeConfig):
        rc = RecipeConfig(cfg)

    _check_typed(report, cfg, rc)
    mesh, dp_size = _check_distributed(report, cfg, stack)
    tp_size = _int_or(cfg.get("distributed.tp_size", 1), 1)
    lora_model, adapted = _check_peft(report, cfg, tp_size)
    _check_fp8(report, cfg, lora_model, adapted)
    opt_model = copy.deepcopy(lora_model) if lora_model is not None else None
    _check_lr(report, cfg, rc, dp_size, mesh, opt_model)
    _check_ignored(report, cfg, recipe_cls)


def check_config(path: Path | str) -> list[str]:
    """Problems Automodel 0.7's own config code finds in ``path`` (empty list = accepted)."""
    return run_checks(path).problems


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/automodel_check.py cfg.yaml ...
    import json
    import sys

    logging.basicConfig(level=logging.WARNING)
    rc_ = 0
    for arg in sys.argv[1:]:
        rep = run_checks(arg)
        print(f"== {arg}: {len(rep.problems)} problem(s)")
        for p in rep.problems:
            print("  -", p)
        print(json.dumps(rep.info, indent=1, default=str))
        rc_ |= bool(rep.problems)
    sys.exit(rc_)

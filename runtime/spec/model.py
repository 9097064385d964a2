"""What is trained: ``model`` (a local HF dir, a local config or a proxy; never the hub), the tokenizer
(``dataset.tokenizer``), ``peft`` (LoRA through PeftConfig) and ``fp8`` (torchao float8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...automodel.match import lora_conflicts
from ...automodel.schema import MISSING, section_keys
from ..errors import RunError
from .check import _Ctx, _bool, _d, _dtype, _float, _int, _path, _section, _target_name, _unknown
from .types import Fp8Spec, ModelSpec, PeftSpec, TokenizerSpec

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json")


def has_tokenizer_files(path: str | Path | None) -> bool:
    return path is not None and Path(path).is_dir() and any((Path(path) / f).is_file() for f in _TOKENIZER_FILES)


def has_weights(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any(any(p.glob(g)) for g in _WEIGHT_GLOBS)


def _model(cfg: dict, ctx: _Ctx, opts) -> ModelSpec:
    sec = _section(cfg, "model", ctx, required=True)
    if "_target_" not in sec:
        raise ctx.err("model._target_", "is required", hint="_target_: nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained")
    extra = sorted(str(k) for k in sec if k not in section_keys("model"))
    if extra:
        ctx.note(f"model: key(s) {', '.join(extra)} are passed to the model in Automodel; the bundled runtime "
                 "ignores them.")
    target = str(sec["_target_"])
    from_config = target.endswith("from_config")
    key = "model.dtype" if "dtype" in sec else "model.torch_dtype"
    dtype = ctx.value(_dtype, sec.get(key.split(".")[1], _d("model.dtype")), key, "auto", allow_auto=True) or "auto"
    attn = sec.get("attn_implementation") or "sdpa"
    if attn not in ("sdpa", "eager", "flash_attention_2"):
        ctx.note(f"model.attn_implementation {attn!r} is not available in the bundled runtime; using sdpa.")
        attn = "sdpa"
    name = sec.get("pretrained_model_name_or_path")
    conf = sec.get("config")
    if isinstance(conf, dict):
        conf = conf.get("pretrained_model_name_or_path")
    if name is not None:
        _path(str(name), ctx, "model.pretrained_model_name_or_path")
    if conf is not None:
        _path(str(conf), ctx, "model.config")
    trust = bool(sec.get("trust_remote_code", False))
    liger = ctx.value(_bool, sec.get("use_liger_kernel", True), "model.use_liger_kernel", True)
    if opts.model_path is not None:
        p = Path(opts.model_path)
        if not (p / "config.json").is_file():
            raise RunError("--model-path is not a Hugging Face model directory (no config.json)", key="--model-path",
                           found=str(p), hint="point it at a local dir with config.json + *.safetensors")
        if not has_weights(p):
            raise RunError("--model-path has no weights (*.safetensors / pytorch_model*.bin)", key="--model-path",
                           found=str(p), hint="use --proxy-model to train random weights of this shape instead")
        return ModelSpec("pretrained", str(name or conf or p), str(p), None, dtype, attn, trust, liger)
    if opts.proxy_model:
        return ModelSpec("proxy", str(name or conf or ""), None, str(opts.proxy_model), dtype, attn, trust, liger)
    if from_config:
        if conf is None:
            raise ctx.err("model.config", "from_config needs `config:` (a local config dir or config.json)")
        cp = Path(str(conf))
        if cp.is_file() or (cp / "config.json").is_file():
            return ModelSpec("config", str(conf), str(cp.parent if cp.is_file() else cp), None, dtype, attn, trust, liger)
        raise ctx.err("model.config", "is not a local config (the bundled runtime has no hub access)", found=conf,
                      hint="--proxy-model tiny|llama-1b|llama-8b, or --set model.config=/path/to/config_dir")
    if name is None:
        raise ctx.err("model.pretrained_model_name_or_path", "is required for from_pretrained",
                      hint="--model-path DIR or --proxy-model tiny")
    p = Path(str(name))
    if p.is_dir():
        if not (p / "config.json").is_file() or not has_weights(p):
            raise ctx.err("model.pretrained_model_name_or_path", "local directory has no config.json/weights",
                          found=str(p), hint="--proxy-model tiny to run random weights of this shape")
        return ModelSpec("pretrained", str(name), str(p), None, dtype, attn, trust, liger)
    raise ctx.err("model.pretrained_model_name_or_path",
                  "the model is not on this machine and the runtime never downloads (no hub access)", found=str(name),
                  hint="pass --model-path /local/hf/dir, or --proxy-model tiny|llama-1b|llama-8b for random weights "
                       "of the same architecture family")


def _tokenizer(cfg: dict, ctx: _Ctx, model: ModelSpec) -> TokenizerSpec:
    ds = cfg.get("dataset") if isinstance(cfg.get("dataset"), dict) else {}
    tok = ds.get("tokenizer")
    add_bos = add_eos = False
    tpath = None
    if tok is not None:
        if not isinstance(tok, dict):
            raise ctx.err("dataset.tokenizer", "must be a mapping", found=tok)
        add_bos = bool(tok.get("add_bos_token", False))
        add_eos = bool(tok.get("add_eos_token", False))
        tpath = tok.get("pretrained_model_name_or_path")
        if tpath is not None:
            tpath = str(_path(tpath, ctx, "dataset.tokenizer.pretrained_model_name_or_path"))
        if tpath is None and "_target_" not in tok:
            raise ctx.err("dataset.tokenizer.pretrained_model_name_or_path",
                          "is required when dataset.tokenizer has no _target_")
    candidates = [tpath, model.path if model.source == "pretrained" else None,
                  model.path if model.source == "config" else None,
                  model.name if model.source == "proxy" else None]
    for c in candidates:
        if c and has_tokenizer_files(c):
            return TokenizerSpec(str(c), add_bos, add_eos)
    return TokenizerSpec(None, add_bos, add_eos)


def _peft(cfg: dict, ctx: _Ctx) -> PeftSpec | None:
    sec = cfg.get("peft")
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ctx.err("peft", "must be a mapping", found=sec)
    _unknown(sec, section_keys("peft"), ctx, "peft", what="a PeftConfig field")
    if "_target_" not in sec:
        raise ctx.err("peft._target_", "is required (0.7 builds the section with .instantiate())",
                      hint="_target_: nemo_automodel.components._peft.lora.PeftConfig")
    if _target_name(sec["_target_"]) != "PeftConfig":
        raise ctx.err("peft._target_", "the bundled runtime implements LoRA through PeftConfig only",
                      found=sec["_target_"], expected="nemo_automodel.components._peft.lora.PeftConfig")

    def as_list(v, c, key):
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return list(v)
        raise c.err(key, "must be a string or a list of strings", found=v)

    def val(key: str, fn: Callable[..., Any], fallback: Any = MISSING, **kw: Any) -> Any:
        d = _d(f"peft.{key}")
        return ctx.value(fn, sec.get(key, d), f"peft.{key}", d if fallback is MISSING else fallback, **kw)

    tm = ctx.value(as_list, sec.get("target_modules"), "peft.target_modules", [])
    ex = ctx.value(as_list, sec.get("exclude_modules"), "peft.exclude_modules", [])
    mal = val("match_all_linear", _bool)
    conflicts = lora_conflicts({"target_modules": tm, "exclude_modules": ex, "match_all_linear": mal})
    if not mal and not tm and not ex:
        ctx.note("peft: no target_modules/exclude_modules/match_all_linear given; using target_modules='*_proj' "
                 "(Automodel 0.7's default).")
        tm = ["*_proj"]
    if "exclusive" in conflicts:
        ctx.add(ctx.err("peft.exclude_modules", "target_modules and exclude_modules are mutually exclusive in 0.7",
                        found=ex, hint="keep only one of them"))
    if "match_all_linear" in conflicts:
        ctx.add(ctx.err("peft.match_all_linear", "match_all_linear: true together with target_modules/exclude_modules "
                        "is a ValueError in Automodel 0.7", found=True, hint="drop target_modules or match_all_linear"))
    if sec.get("use_dora"):
        ctx.add(ctx.err("peft.use_dora", "DoRA is not implemented by the bundled runtime", found=True,
                        hint="--set peft.use_dora=false"))
    if sec.get("moe_rank_scaling"):
        ctx.note("peft.moe_rank_scaling is ignored (no MoE experts in the bundled runtime).")
    pos = sec.get("dropout_position", _d("peft.dropout_position"))
    if pos not in ("pre", "post"):
        ctx.add(ctx.err("peft.dropout_position", "must be pre or post", found=pos))
    dim = val("dim", _int, minimum=1, maximum=65536)  # no layer is wider
    alpha = val("alpha", _float)
    dropout = val("dropout", _float)
    if not 0.0 <= dropout < 1.0:
        ctx.add(ctx.err("peft.dropout", "must be in [0, 1)", found=dropout))
    return PeftSpec(target_modules=tm, exclude_modules=ex, match_all_linear=mal, dim=dim, alpha=alpha,
                    dropout=dropout, dropout_position=pos, lora_A_init=str(sec.get("lora_A_init", _d("peft.lora_A_init"))),
                    lora_dtype=ctx.value(_dtype, sec.get("lora_dtype"), "peft.lora_dtype", None))


def _fp8(cfg: dict, ctx: _Ctx) -> Fp8Spec | None:
    sec = cfg.get("fp8")
    if sec is None:
        return None
    if not isinstance(sec, dict):
        raise ctx.err("fp8", "must be a mapping", found=sec)
    extra = sorted(str(k) for k in sec if k not in section_keys("fp8"))  # 0.7 reads fp8 with dict.get
    if extra:
        ctx.note(f"fp8: unknown key(s) {', '.join(extra)} ignored (0.7 reads fp8 with dict.get).")
    if not sec.get("enabled", False):
        return None
    recipe = sec.get("recipe_name")
    if recipe not in (None, "tensorwise", "rowwise", "rowwise_with_gw_hp"):
        raise ctx.err("fp8.recipe_name", "not a torchao float8 recipe", found=recipe,
                      expected="tensorwise, rowwise or rowwise_with_gw_hp")
    ff = sec.get("filter_fqns") or []
    if isinstance(ff, str):
        ff = [ff]
    if not isinstance(ff, list) or not all(isinstance(x, str) for x in ff):
        raise ctx.err("fp8.filter_fqns", "must be a module name or a list of module names", found=ff,
                      hint="e.g. fp8.filter_fqns: [lm_head]")
    return Fp8Spec(recipe_name=recipe,
                   enable_fsdp_float8_all_gather=bool(sec.get("enable_fsdp_float8_all_gather", False)),
                   precompute_float8_dynamic_scale_for_fsdp=bool(sec.get("precompute_float8_dynamic_scale_for_fsdp",
                                                                         False)),
                   force_recompute_fp8_weight_in_bwd=bool(sec.get("force_recompute_fp8_weight_in_bwd", False)),
                   filter_fqns=[str(x) for x in ff], emulate=bool(sec.get("emulate", False)))

"""Models: HF ``AutoModelForCausalLM`` from a local dir, from a local config (random init), or a proxy.

A proxy is the config's architecture family (llama, qwen2, qwen3, mistral, phi3, gemma...) at a named size with
random weights: ``tiny`` (hidden 64, 2 layers; tests), ``small`` (hidden 256, 4 layers), ``llama-1b`` / ``1b``
(Llama-3.2-1B shape), ``llama-8b`` / ``8b`` (Llama-3.1-8B shape), ``<family>-<size>``, or a path to a config.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import RunError

PROXY_DIR = Path(__file__).resolve().parent / "proxies"

_FAMILIES = [  # (regex on the model id/path, HF model_type)
    (r"qwen3", "qwen3"), (r"qwen2|qwen-?2", "qwen2"), (r"qwen", "qwen2"), (r"phi-?3|phi-?4", "phi3"),
    (r"mistral|mixtral|ministral", "mistral"), (r"gemma-?2", "gemma2"), (r"gemma", "gemma"),
    (r"llama|meta-llama|codellama|vicuna|tinyllama", "llama"),
]
_SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, vocab_size=None,
                 tie_word_embeddings=False, rope_theta=10000.0),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=32, max_position_embeddings=4096, vocab_size=None,
                  tie_word_embeddings=False, rope_theta=10000.0),
}
_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "max_position_embeddings", "vocab_size", "tie_word_embeddings", "rope_theta")


def _read_json(path: Path, *, key: str) -> dict[str, Any]:
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise RunError(f"{path} is not a readable JSON file ({_first_line(e)})", key=key,
                       hint="the file is damaged; restore it (download or export the model again)") from None
    if not isinstance(d, dict):
        raise RunError(f"{path} does not hold a JSON object", key=key, found=type(d).__name__)
    return d


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text[:300]


def detect_family(name: str | None, path: str | None = None) -> str:
    if path and (Path(path) / "config.json").is_file():
        mt = _read_json(Path(path) / "config.json", key="model.pretrained_model_name_or_path").get("model_type")
        if isinstance(mt, str) and mt:
            return mt
    low = (name or "").lower()
    for rx, fam in _FAMILIES:
        if re.search(rx, low):
            return fam
    return "llama"


def proxy_config_dict(proxy: str, family: str, *, tokenizer_vocab: int | None) -> tuple[dict[str, Any], str]:
    """(HF config kwargs incl. model_type, description) for ``--proxy-model``."""
    p = Path(proxy)
    if p.suffix == ".json" and p.is_file() or (p / "config.json").is_file():
        d = _read_json(p if p.suffix == ".json" else p / "config.json", key="--proxy-model")
        return d, f"config {p}"
    low = proxy.lower()
    fam, size = family, low
    m = re.fullmatch(r"([a-z0-9.]+?)-(tiny|small|1b|8b)", low)
    if m:
        fam, size = m.group(1), m.group(2)
        fam = {"llama3": "llama", "llama2": "llama", "qwen": "qwen2", "qwen2.5": "qwen2", "phi": "phi3"}.get(fam, fam)
    if size in ("1b", "8b"):
        d = json.loads((PROXY_DIR / f"llama-{size}.json").read_text())
        if fam != "llama":
            d = {k: d[k] for k in _SHAPE_KEYS if k in d}
            d["model_type"] = fam
    elif size in _SIZES:
        d = dict(_SIZES[size])
        d["model_type"] = fam
    else:
        raise RunError("unknown proxy model", key="--proxy-model", found=proxy,
                       expected="tiny, small, 1b, 8b, llama-1b, llama-8b, <family>-<size> or a config.json path")
    if d.get("vocab_size") is None:
        v = max(tokenizer_vocab or 256, 256)
        d["vocab_size"] = int(-(-v // 64) * 64)
    return d, f"{fam} {size}"


def hf_config(d: dict[str, Any], attn: str):
    from transformers import AutoConfig

    d = dict(d)
    mt = d.pop("model_type", "llama")
    for k in ("architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path"):
        d.pop(k, None)
    try:
        cfg = AutoConfig.for_model(mt, **d)
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"transformers has no model family {mt!r} ({e})", key="--proxy-model") from None
    cfg._attn_implementation = attn
    cfg.use_cache = False
    return cfg


def resolve_dtype(spec_dtype: str, hf_cfg=None):
    """0.7: ``auto`` -> the config's torch_dtype, falling back to bf16 (from_config: bf16)."""
    import torch

    if spec_dtype != "auto":
        return getattr(torch, spec_dtype)
    if hf_cfg is not None:
        d = getattr(hf_cfg, "dtype", None) or getattr(hf_cfg, "torch_dtype", None)
        if isinstance(d, str):
            d = getattr(torch, d, None)
        if isinstance(d, torch.dtype) and d.is_floating_point:
            return d
    return torch.bfloat16


def _special_ids(d: dict[str, Any], special: dict[str, int | None] | None) -> dict[str, Any]:
    """Proxy configs take the tokenizer's special ids (family defaults such as Phi-3's pad 32000 may not exist)."""
    d = dict(d)
    v = d.get("vocab_size")
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        val = (special or {}).get(k)
        if val is None and isinstance(d.get(k), int) and v is not None and d[k] < v:
            val = d[k]
        d[k] = val if (val is None or v is None or val < v) else None
    return d


def proxy_hf_config(proxy: str, name: str | None, *, tokenizer_vocab: int | None, special_ids: dict[str, int | None] | None,
                    attn: str):
    """(HF config, description) of ``--proxy-model`` for the model family ``name`` points at."""
    family = detect_family(name, name if name and Path(name).is_dir() else None)
    d, what = proxy_config_dict(proxy, family, tokenizer_vocab=tokenizer_vocab)
    return hf_config(_special_ids(d, special_ids), attn), what


def _check_vocab(vocab: int | None, tokenizer_vocab: int | None, what: str, *, key: str, hint: str) -> None:
    if tokenizer_vocab is not None and vocab and vocab < tokenizer_vocab:
        raise RunError(f"the tokenizer has {tokenizer_vocab} tokens but {what} {vocab}", key=key, hint=hint)


def build_model(mspec, *, tokenizer_vocab: int | None, device,
                special_ids: dict[str, int | None] | None = None) -> tuple[Any, str, bool]:
    """Return (model, description, random_weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if mspec.source == "pretrained":
        cfg = _load(lambda: AutoConfig.from_pretrained(mspec.path, trust_remote_code=mspec.trust_remote_code,
                                                       local_files_only=True), mspec.path, "config.json")
        dtype = resolve_dtype(mspec.dtype, cfg)
        _check_vocab(getattr(cfg, "vocab_size", None), tokenizer_vocab, f"the model at {mspec.path} has a vocabulary of",
                     key="model.pretrained_model_name_or_path",
                     hint="use the model's own tokenizer (dataset.tokenizer.pretrained_model_name_or_path)")
        check_weight_files(mspec.path)
        model = _load(lambda: AutoModelForCausalLM.from_pretrained(
            mspec.path, dtype=dtype, attn_implementation=mspec.attn_implementation, local_files_only=True,
            trust_remote_code=mspec.trust_remote_code, device_map={"": device} if device.type == "cuda" else None),
            mspec.path, "weights")
        check_finite_weights(model, mspec.path)
        model.config.use_cache = False
        return model, f"{mspec.path} (pretrained weights, {str(dtype).replace('torch.', '')})", False
    if mspec.source == "config":
        cfg = _load(lambda: AutoConfig.from_pretrained(mspec.path, trust_remote_code=mspec.trust_remote_code,
                                                       local_files_only=True), mspec.path, "config.json")
        cfg._attn_implementation = mspec.attn_implementation
        cfg.use_cache = False
        dtype = resolve_dtype(mspec.dtype if mspec.dtype != "auto" else "bfloat16")
        desc = f"{cfg.model_type} from config {mspec.path}"
    else:
        cfg, what = proxy_hf_config(mspec.proxy, mspec.name, tokenizer_vocab=tokenizer_vocab, special_ids=special_ids,
                                    attn=mspec.attn_implementation)
        dtype = resolve_dtype(mspec.dtype if mspec.dtype != "auto" else "bfloat16")
        desc = f"proxy {what} ({cfg.model_type}, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers)"
    _check_vocab(cfg.vocab_size, tokenizer_vocab, "the model vocabulary is", key="--proxy-model",
                 hint="use a proxy whose vocab covers the tokenizer")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, trust_remote_code=mspec.trust_remote_code)
    return model, f"{desc}, random weights, {str(dtype).replace('torch.', '')}", True


def _load(fn, path: str, what: str):
    """Run a transformers loader on the user's model directory; whatever its files make it raise is a message
    naming the directory (out-of-memory and interrupts pass through)."""
    import torch

    try:
        return fn()
    except (RunError, torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - damaged/foreign files raise anything from OSError to KeyError
        raise RunError(f"cannot load the model's {what} from {path} ({type(e).__name__}: {_first_line(e)})",
                       key="model.pretrained_model_name_or_path",
                       hint="the model files are damaged or not a Hugging Face model: download or export them again, "
                            "or use --proxy-model to train random weights of this shape") from None


def check_weight_files(path: str | Path) -> None:
    """Every ``*.safetensors`` file of a model dir has a readable header (cheap: the header only, no tensor data)."""
    from safetensors import safe_open

    for f in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt") as h:
                h.keys()
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ...
            raise RunError(f"the weights file {f} is not valid safetensors ({_first_line(e)})",
                           key="model.pretrained_model_name_or_path",
                           hint="the file is damaged or truncated: download or export the model again") from None


def check_finite_weights(model, path: str | Path) -> None:
    """The loaded weights hold no NaN/inf (one fused norm; a tensor-by-tensor pass only when it finds some)."""
    import torch

    ps = [p.detach() for p in model.parameters() if p.is_floating_point() and p.numel()]
    if not ps:
        return
    with torch.no_grad():
        total = torch.stack([n.float() for n in torch._foreach_norm(ps, 2.0)]).sum()
        if bool(torch.isfinite(total)):
            return
        bad = [n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise RunError(f"the model weights in {path} hold NaN/inf in {len(bad)} tensor(s) (e.g. {bad[0]}): training "
                       "on them gives a NaN loss", key="model.pretrained_model_name_or_path",
                       hint="the checkpoint is damaged or was saved from a diverged run; use an intact copy")


def decoder_layers(model) -> list:
    """The transformer blocks (HF: model.model.layers)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None) if inner is not None else None
    if layers is None:
        raise RunError(f"cannot find the decoder layers of {type(model).__name__} (expected model.model.layers)")
    return list(layers)


def count_params(model) -> tuple[int, int]:
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def save_proxy(proxy: str, name: str, tokenizer, out_dir: Path, *, seed: int, attn: str = "sdpa") -> Path:
    """Write a proxy (random weights, bf16) as a HF model directory, so that loaders that read weights from disk
    (Automodel's ``from_pretrained``) and the runtime start from the same weights."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    special = {k: getattr(tokenizer, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    cfg, _ = proxy_hf_config(proxy, name, tokenizer_vocab=len(tokenizer), special_ids=special, attn=attn)
    _check_vocab(cfg.vocab_size, len(tokenizer), "the proxy vocabulary is", key="--proxy-model",
                 hint="use a proxy whose vocab covers the tokenizer")
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")  # written aside, then renamed: never a half-written model dir
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    if out_dir.exists():
        raise RunError(f"{out_dir} already exists", hint="remove it or pick another --out")
    tmp.rename(out_dir)
    return out_dir


def model_types() -> list[str]:
    """The HF model types of the proxy families (their modeling modules are what a long-lived process preloads)."""
    return list(dict.fromkeys(t for _, t in _FAMILIES))

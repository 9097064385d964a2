"""Regenerate tests/fixtures/nemo2_ckpt/ with REAL NeMo 2.7.3 (the reference for `nemo-migrate convert-checkpoint`).

    .nemo-venv/bin/python tools/nemo_oracle/make_ckpt_fixtures.py [CASE ...]     # from the repository root
    make ckpt-fixtures                                                           # the same (make nemo-check runs it)

For each case a tiny random Hugging Face model (a tokenizer trained here, norms and biases made non-trivial) is
imported with NeMo's own ``llm.import_ckpt`` (-> ``<case>/ckpt``: ``context/`` + ``weights/`` as NeMo writes them)
and exported back with NeMo's own ``llm.export_ckpt(target="hf")`` (-> ``<case>/nemo-export``).  LoRA cases also
write an adapter checkpoint through NeMo's PEFT checkpoint path (``WrappedAdapterIO``: adapter weights only and
``adapter_metadata.json``; ``<case>/lora-ckpt``) with non-zero A and B, and NeMo's ``target="hf-peft"`` export of it
(``<case>/nemo-export-peft``).  ``<case>/MANIFEST.json`` records the versions, what NeMo was asked and what the
driver checked (NeMo's export equals the HF model it imported, tensor by tensor).

Real NeMo needs these runtime patches on a CPU machine without Transformer Engine (no NeMo file is edited):
- ``apply_rope_fusion`` / ``persist_layer_norm`` / ``moe_permute_fusion`` off before ``TransformerConfig.__post_init__``
  (NeMo's configs ask for TE fusions);
- Megatron's torch norm refuses ``layernorm_zero_centered_gamma`` (Gemma, Nemotron): it is built without it (the
  stored weights are the same; only the forward of TE's norm adds the 1);
- ``ckpt_async_save=False`` (the async writer needs a CUDA device), ``torch.cuda.current_device`` -> cpu,
  ``torch.cuda.synchronize`` a no-op, ``torch.cuda.Stream``/``stream`` no-ops, NeMo's ``_fix_tensors_device`` the identity;
- the TE-free Megatron layer names its norms ``input_layernorm`` / ``pre_mlp_layernorm`` in the module (it maps them
  to the TE names ``self_attention.linear_qkv.layer_norm_weight`` / ``mlp.linear_fc1.layer_norm_weight`` only in the
  sharded checkpoint), so NeMo's importers and exporters, which name the TE parameters, would silently skip the
  norms: ``apply_transforms`` gets its mapping renamed to the module's names, and the norms of a NeMo model it
  writes are cast to ``params_dtype`` as TE's fused norms are;
- the PEFT utilities are told ``HAVE_TE=False`` and LoRA gets a ``te`` stand-in (they test TE classes that do not
  exist here).

Each case runs in its own interpreter (``--one CASE``); the patches never leave this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("NEMO2_CKPT_FIXTURES") or ROOT / "tests" / "fixtures" / "nemo2_ckpt")  # the checked-in fixtures unless set
PY = ROOT / ".nemo-venv" / "bin" / "python"

_WORDS = ("the a quick brown fox jumps over lazy dog hello world nemo model train data one two three four five six seven "
          "eight nine ten red green blue cat sat on mat").split()

# nemo / nemo_config pick NeMo's importer (it builds the config from the HF model); hf / hf_kwargs: the tiny HF model
_SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256)
CASES: dict[str, dict] = {
    "llama-gqa-fp32": dict(nemo="LlamaModel", nemo_config="Llama3Config8B", hf="LlamaConfig", dtype="float32",
                           hf_kwargs=dict(_SMALL, rope_theta=500000.0, rms_norm_eps=1e-5),
                           lora=dict(dim=4, alpha=8, target_modules=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"])),
    "llama-gqa-bf16": dict(nemo="LlamaModel", nemo_config="Llama3Config8B", hf="LlamaConfig", dtype="bfloat16",
                           hf_kwargs=dict(_SMALL, rope_theta=500000.0, rms_norm_eps=1e-5),
                           # NeMo 2.7.3's CanonicalLoRA sizes the q adapter hidden x hidden (right only when heads x
                           # head_dim == hidden) and cannot save one that adapts only some of q/k/v
                           lora=dict(cls="CanonicalLoRA", dim=4, alpha=16,
                                     target_modules=["linear_q", "linear_k", "linear_v", "linear_fc1_up", "linear_fc1_gate"])),
    "llama32-tied-rope": dict(nemo="LlamaModel", nemo_config="Llama32Config1B", hf="LlamaConfig", dtype="float32",
                              hf_kwargs=dict(_SMALL, tie_word_embeddings=True, rope_theta=500000.0, head_dim=16,
                                             rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                                               high_freq_factor=4.0, original_max_position_embeddings=8192)),
                              lora=dict(dim=8, alpha=16, target_modules=["linear_qkv", "linear_fc1", "linear_fc2"])),
    "qwen2-bias": dict(nemo="Qwen2Model", nemo_config="Qwen25Config500M", hf="Qwen2Config", dtype="float32",
                       hf_kwargs=dict(_SMALL, num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                                      rms_norm_eps=1e-6, tie_word_embeddings=False)),
    "mistral": dict(nemo="MistralModel", nemo_config="MistralConfig7B", hf="MistralConfig", dtype="float32",
                    hf_kwargs=dict(_SMALL, head_dim=16, sliding_window=None, rope_theta=1000000.0)),  # head_dim x heads != hidden
    "mixtral-moe": dict(nemo="MixtralModel", nemo_config="MixtralConfig8x7B", hf="MixtralConfig", dtype="float32",
                        hf_kwargs=dict(_SMALL, intermediate_size=32, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                                       rope_theta=1000000.0)),
    "gemma": dict(nemo="GemmaModel", nemo_config="GemmaConfig2B", hf="GemmaConfig", dtype="float32",
                  hf_kwargs=dict(_SMALL, num_attention_heads=1, num_key_value_heads=1, head_dim=256)),  # NeMo: kv_channels 256
    # Gemma 2: NeMo 2.7.3's layer spec is built of Transformer Engine modules (TELayerNormColumnParallelLinear,
    # TERowParallelLinearLayerNorm), so its importer cannot run without TE; tests/test_checkpoint.py covers its table
    # with a checkpoint written by torch.distributed.checkpoint in NeMo's layout.
    "nemotron": dict(nemo="NemotronModel", nemo_config="Nemotron3Config4B", hf="NemotronConfig", dtype="float32",
                     hf_kwargs=dict(_SMALL, head_dim=8, partial_rotary_factor=0.5)),
    "phi3": dict(nemo="Phi3Model", nemo_config="Phi3ConfigMini", hf="Phi3Config", dtype="float32",
                 hf_kwargs=dict(_SMALL, num_key_value_heads=4)),
}


# ---------------------------------------------------------------------------------------------- driver (parent)

def _versions() -> dict:
    code = ("import importlib.metadata as m, json, platform; print(json.dumps({p: m.version(p) for p in "
            "('nemo-toolkit','nemo-run','megatron-core','lightning','torch','transformers','peft')} | {'python': platform.python_version()}))")
    return json.loads(subprocess.run([str(PY), "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="*", help=f"cases to regenerate (default: all of {', '.join(CASES)})")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--keep-going", action="store_true", help="record a case NeMo refuses and go on")
    a = ap.parse_args()
    if a.one:
        return _one(a.one)
    names = a.cases or list(CASES)
    bad = [n for n in names if n not in CASES]
    if bad:
        print(f"unknown case(s) {bad}; known: {list(CASES)}", file=sys.stderr)
        return 1
    versions = _versions()
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        r = subprocess.run([sys.executable, __file__, "--one", name], cwd=ROOT)
        if r.returncode != 0:
            failed.append(name)
            if not a.keep_going:
                break
            continue
        m = json.loads((OUT / name / "MANIFEST.json").read_text())
        m["versions"] = versions
        (OUT / name / "MANIFEST.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- one case (child)

def _patch_nemo() -> None:
    import torch

    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.Stream = lambda *a, **k: None
    torch.cuda.stream = lambda s: contextlib.nullcontext()

    from megatron.core.transformer import transformer_config as tc

    post = tc.TransformerConfig.__post_init__

    def _post_init(self):
        self.apply_rope_fusion = False
        self.persist_layer_norm = False
        self.moe_permute_fusion = False
        self.gradient_accumulation_fusion = False
        post(self)

    tc.TransformerConfig.__post_init__ = _post_init

    import copy

    from megatron.core.transformer import torch_norm

    new_norm = torch_norm.WrappedTorchNorm.__new__

    def _norm_new(cls, config, *a, **k):
        if config.layernorm_zero_centered_gamma:  # stored weights are the same; only TE's forward adds the 1
            config = copy.copy(config)
            config.layernorm_zero_centered_gamma = False
        return new_norm(cls, config, *a, **k)

    torch_norm.WrappedTorchNorm.__new__ = _norm_new

    from nemo.lightning.pytorch.strategies import megatron_strategy as ms

    init = ms.MegatronStrategy.__init__

    def _strategy_init(self, *a, **k):
        k["ckpt_async_save"] = False
        init(self, *a, **k)

    ms.MegatronStrategy.__init__ = _strategy_init

    import nemo.lightning.io.pl as nemo_pl

    nemo_pl._fix_tensors_device = lambda ckpt: ckpt

    import nemo.lightning.io as nemo_io
    import nemo.lightning.io.state as nemo_state

    apply = nemo_state.apply_transforms
    te_names = {".self_attention.linear_qkv.layer_norm_weight": ".input_layernorm.weight",
                ".self_attention.linear_qkv.layer_norm_bias": ".input_layernorm.bias",
                ".mlp.linear_fc1.layer_norm_weight": ".pre_mlp_layernorm.weight",
                ".mlp.linear_fc1.layer_norm_bias": ".pre_mlp_layernorm.bias"}

    def _inner(m):
        from megatron.core.transformer.module import MegatronModule

        return m.module if hasattr(m, "module") and isinstance(m.module, MegatronModule) else m

    def _keys(m):
        inner = _inner(m)
        return set(inner.state_dict().keys()) if hasattr(inner, "state_dict") else set()

    def _norms_in_model_dtype(m):
        inner, cfg = _inner(m), getattr(m, "config", None)
        dtype = getattr(cfg, "params_dtype", None)
        if dtype is None or not hasattr(inner, "named_parameters"):
            return
        for n, p in inner.named_parameters():
            if "norm" in n and p.dtype != dtype:  # TE keeps its fused norms in params_dtype; the local ones stay fp32
                p.data = p.data.to(dtype)

    def _rename(pattern: str, keys: set[str]) -> str:
        probe = pattern.replace("*", "0")
        if probe in keys:
            return pattern
        for te, local in te_names.items():
            if te in pattern and probe.replace(te, local) in keys:
                return pattern.replace(te, local)
        return pattern

    def _apply_transforms(source, target, mapping, transforms=[], *a, **k):  # noqa: B006 - NeMo's signature
        _norms_in_model_dtype(source)
        _norms_in_model_dtype(target)
        sk, tk = _keys(source), _keys(target)
        mapping = {_rename(s, sk): _rename(t, tk) for s, t in mapping.items()}
        return apply(source, target, mapping, transforms, *a, **k)

    nemo_state.apply_transforms = _apply_transforms
    nemo_io.apply_transforms = _apply_transforms

    import nemo.collections.llm.peft.utils as peft_utils

    peft_utils.HAVE_TE = False
    import nemo.collections.llm.peft.lora as peft_lora

    peft_lora.te = types.SimpleNamespace(Linear=type("NoTransformerEngineLinear", (), {}))


def _tokenizer(out: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(_WORDS)] * 3, trainer=trainers.WordLevelTrainer(
        vocab_size=256, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    hf.save_pretrained(str(out))
    return hf


def _hf_model(case: dict, out: Path):
    import torch
    import transformers

    tok = _tokenizer(out)
    cfg_cls = getattr(transformers, case["hf"])
    cfg = cfg_cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, **case["hf_kwargs"])
    torch.manual_seed(1234)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=getattr(torch, case["dtype"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:  # norms and biases off their init values, so that a dropped one shows
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    model.generation_config = transformers.GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                                            do_sample=True, temperature=0.6, top_p=0.9)
    model.save_pretrained(str(out))
    return model


def _tensors(d: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _compare(a: dict, b: dict, what: str, skip: tuple[str, ...] = ()) -> dict:
    a = {k: v for k, v in a.items() if not k.endswith(skip)} if skip else a
    b = {k: v for k, v in b.items() if not k.endswith(skip)} if skip else b
    if set(a) != set(b):
        raise SystemExit(f"{what}: names differ: only first {sorted(set(a) - set(b))}, only second {sorted(set(b) - set(a))}")
    diff = {k: float((a[k].float() - b[k].float()).abs().max()) for k in sorted(a)}
    dtypes = {k: (str(a[k].dtype), str(b[k].dtype)) for k in a if a[k].dtype != b[k].dtype}
    worst = max(diff.values())
    if worst != 0.0 or dtypes:
        raise SystemExit(f"{what}: not equal (max abs diff {worst}, dtype differences {dtypes})")
    return {"tensors": len(a), "max_abs_diff": worst}


def _lora_ckpt(base: Path, out: Path, lora_kw: dict) -> None:
    """An adapter checkpoint the way a NeMo 2 PEFT run writes one: the base loaded as NeMo's exporter loads it, LoRA
    applied, A and B set to random non-zero values, saved through NeMo's WrappedAdapterIO (adapter weights only)."""
    import torch
    from nemo.collections import llm
    from nemo.lightning import MegatronStrategy, Trainer, _strategy_lib
    from nemo.lightning.io.api import load_context
    from nemo.lightning.ckpt_utils import ckpt_to_context_subdir
    from nemo.lightning.io.pl import TrainerContext
    from nemo.lightning.pytorch.callbacks.peft import WrappedAdapterIO
    from nemo.lightning.pytorch.strategies.utils import create_checkpoint_io

    model = load_context(str(base), subpath="model")
    model.config.perform_initialization = False
    trainer = Trainer(devices=1, accelerator="cpu", strategy=MegatronStrategy(ddp="pytorch", setup_optimizers=False, ckpt_save_optimizer=False,
                                                                            always_save_context=True))
    trainer.strategy.connect(model)
    trainer.strategy.setup_environment()
    with _strategy_lib.megatron_cpu_init_context(model.config):
        model.configure_model()
    trainer.strategy.setup(trainer)
    trainer.strategy.load_checkpoint(base)  # the base weights, as nemo_load does
    kw = dict(lora_kw)
    lora = getattr(llm.peft, kw.pop("cls", "LoRA"))(**kw)
    model.trainer = trainer
    trainer.state.fn = "fit"  # as in a fine-tuning run: the adapters stay trainable
    lora(model)
    lora.set_params_to_save(trainer)
    torch.manual_seed(99)
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter." in name:
                p.copy_(0.1 * torch.randn_like(p))
                n += 1
    if not n:
        raise SystemExit("LoRA added no adapter")
    from nemo.collections.llm.api import _set_with_io

    _set_with_io(model, "model_transform", lora)  # as llm.finetune's _setup does: the context records the LoRA config
    wrapped = create_checkpoint_io(wrapping_ckpt_io=lambda io: WrappedAdapterIO(io, peft=lora), async_save=False)
    wrapped.model_ckpt_path = base
    trainer.strategy._checkpoint_io = wrapped
    trainer.strategy._setup_optimizers = False
    trainer.strategy._init_model_parallel = False
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(out)
    TrainerContext.from_trainer(trainer).io_dump(ckpt_to_context_subdir(out), yaml_attrs=["model"])


def _one(name: str) -> int:
    os.environ.setdefault("NEMO_HOME", tempfile.mkdtemp(prefix="nemo-home-"))
    _patch_nemo()
    from nemo.collections import llm

    case = CASES[name]
    dest = OUT / name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    manifest: dict = {"case": name, "hf_config": case["hf"], "hf_kwargs": case["hf_kwargs"], "dtype": case["dtype"],
                      "made_by": "tools/nemo_oracle/make_ckpt_fixtures.py " + name, "checks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        _hf_model(case, hf_dir)
        cfg_cls = getattr(llm, case["nemo_config"])
        model = getattr(llm, case["nemo"])(cfg_cls())
        ckpt = dest / "ckpt"
        llm.import_ckpt(model=model, source=f"hf://{hf_dir}", output_path=ckpt, overwrite=True)
        manifest["nemo_calls"] = [f"llm.import_ckpt(model=llm.{case['nemo']}(llm.{case['nemo_config']}()), source='hf://<tiny random HF model>', "
                                  "output_path='ckpt')", "llm.export_ckpt(path='ckpt', target='hf', output_path='nemo-export')"]
        export = dest / "nemo-export"
        llm.export_ckpt(path=ckpt, target="hf", output_path=export, overwrite=True)
        original, exported = _tensors(hf_dir), _tensors(export)
        if "lm_head.weight" in exported and "lm_head.weight" not in original:
            # Gemma: NeMo's exporter builds the HF model with no_init_weights and never fills the tied head, so the
            # file holds uninitialised memory under lm_head.weight; transformers ties it to embed_tokens when loading
            exported.pop("lm_head.weight")
            manifest["notes"] = ["nemo-export/model.safetensors holds an lm_head.weight of uninitialised memory (tied "
                                 "embeddings; NeMo's exporter never fills it, transformers ignores it when loading)"]
        manifest["checks"]["nemo-export == imported HF model"] = _compare(
            original, exported, "NeMo's export vs the HF model it imported", skip=("rotary_emb.inv_freq",))
        if case.get("lora"):
            lora_ckpt = dest / "lora-ckpt"
            _lora_ckpt(ckpt, lora_ckpt, case["lora"])
            llm.export_ckpt(path=lora_ckpt, target="hf-peft", output_path=dest / "nemo-export-peft", overwrite=True)
            manifest["nemo_calls"] += [f"llm.peft.{case['lora'].get('cls', 'LoRA')}(**{ {k: v for k, v in case['lora'].items() if k != 'cls'} }) applied to the loaded base, A/B random, saved with WrappedAdapterIO "
                                       "-> 'lora-ckpt'", "llm.export_ckpt(path='lora-ckpt', target='hf-peft', output_path='nemo-export-peft')"]
    (dest / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

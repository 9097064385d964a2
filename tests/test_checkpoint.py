"""`nemo-migrate convert-checkpoint` against REAL NeMo 2.7.3 (issue 19).

tests/fixtures/nemo2_ckpt/<case>/ckpt was written by NeMo's own llm.import_ckpt, <case>/nemo-export by NeMo's own
llm.export_ckpt(target="hf") (and lora-ckpt / nemo-export-peft by NeMo's PEFT checkpoint path and target="hf-peft"):
tools/nemo_oracle/make_ckpt_fixtures.py, `make ckpt-fixtures`.  Every converted tensor must equal NeMo's export and the
logits on fixed inputs must be equal (transformers on CPU; PeftModel for adapters).  Training-run layouts (step folders,
optimizer state, _extra_state bytes, tensor-parallel chunks, a padded vocabulary), which NeMo cannot produce on CPU, are
written here with torch.distributed.checkpoint in Megatron's layout from the NeMo-written tensors.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the checked-in fixtures; make nemo-check points this at a fresh set real NeMo 2.7.3 has just written
FIX = Path(os.environ.get("NEMO2_CKPT_FIXTURES") or ROOT / "tests" / "fixtures" / "nemo2_ckpt")
MODELS = ["llama-gqa-fp32", "llama-gqa-bf16", "llama32-tied-rope", "qwen2-bias", "mistral", "mixtral-moe", "gemma", "nemotron", "phi3"]
ADAPTERS = ["llama-gqa-fp32", "llama-gqa-bf16", "llama32-tied-rope"]
IDS = [[1, 5, 9, 12, 20, 3, 7, 30, 2, 17, 25, 4]]
FORWARD_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "rms_norm_eps", "norm_eps", "rope_theta", "rope_scaling", "vocab_size", "hidden_act", "partial_rotary_factor",
                "num_local_experts", "num_experts_per_tok", "tie_word_embeddings")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")


def cli(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "nemo_migrate.cli", *map(str, args)], capture_output=True, text=True, env=e)


def convert(src, out, **kw):
    """In-process (the CLI's own path is covered by the tests that run `nemo-migrate convert-checkpoint`)."""
    from nemo_migrate.checkpoint import convert as do_convert

    return do_convert(Path(src), Path(out), **kw)


def tensors(d: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def logits(model_dir: Path, config=None):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model_dir), config=config).eval()
    with torch.no_grad():
        return m(torch.tensor(IDS)).logits


def nemo_reference(case: str, tmp: Path) -> Path:
    """NeMo's export as transformers 5 reads it: null config values dropped (NeMo writes max_position_embeddings: null
    for Mistral), Gemma's tied head as transformers 4.57 (NeMo's environment) tied it, and the lm_head.weight NeMo's
    Gemma exporter leaves uninitialised (MANIFEST.json notes) left out."""
    src = FIX / case / "nemo-export"
    dest = tmp / f"ref-{case}"
    shutil.copytree(src, dest)
    cfg = {k: v for k, v in json.loads((src / "config.json").read_text()).items() if v is not None}
    if cfg["model_type"] == "gemma":
        cfg.setdefault("tie_word_embeddings", True)
    (dest / "config.json").write_text(json.dumps(cfg))
    if cfg.get("tie_word_embeddings"):
        from safetensors.torch import save_file

        t = tensors(src)
        t.pop("lm_head.weight", None)
        for f in dest.glob("*.safetensors"):
            f.unlink()
        save_file(t, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


# ---------------------------------------------------------------------------------------------- real NeMo checkpoints


@pytest.mark.parametrize("case", MODELS)
def test_model_equals_nemo_export(case, tmp_path):
    out = tmp_path / "hf"
    convert(FIX / case / "ckpt", out)
    ours, ref_dir = tensors(out), nemo_reference(case, tmp_path)
    ref = tensors(ref_dir)
    assert sorted(ours) == sorted(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and torch.equal(ours[k], ref[k]), k
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].keys() == ours.keys()
    from transformers import AutoConfig

    a, b = AutoConfig.from_pretrained(str(out)), AutoConfig.from_pretrained(str(ref_dir))
    for key in FORWARD_KEYS:
        assert getattr(a, key, None) == getattr(b, key, None), key
    la, lb = logits(out), logits(ref_dir)
    assert torch.equal(la, lb)
    assert la.abs().max() > 0
    # the tokenizer and generation config come along
    tok_files = {p.name for p in (FIX / case / "ckpt/context/nemo_tokenizer").iterdir()}
    assert tok_files <= {p.name for p in out.iterdir()}
    assert (out / "generation_config.json").is_file()


def test_fixtures_are_nemo_written_and_small():
    total = sum(p.stat().st_size for p in FIX.rglob("*") if p.is_file())
    assert total < 6 * 2 ** 20, total
    for case in MODELS:
        m = json.loads((FIX / case / "MANIFEST.json").read_text())
        assert m["versions"]["nemo-toolkit"] == "2.7.3" and m["checks"]["nemo-export == imported HF model"]["max_abs_diff"] == 0.0
        assert (FIX / case / "ckpt/weights/.metadata").is_file() and (FIX / case / "ckpt/context/model.yaml").is_file()


@pytest.mark.parametrize("case", ADAPTERS)
def test_adapter_equals_nemo_hf_peft_export(case, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    convert(FIX / case / "ckpt", base)
    r = cli("convert-checkpoint", FIX / case / "lora-ckpt", "-o", adapter, "--base-model", base)
    assert r.returncode == 0, r.stderr
    ours, ref = tensors(adapter), tensors(FIX / case / "nemo-export-peft")
    assert sorted(ours) == sorted(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and torch.equal(ours[k], ref[k]), k
    a = json.loads((adapter / "adapter_config.json").read_text())
    b = json.loads((FIX / case / "nemo-export-peft/adapter_config.json").read_text())
    assert (a["r"], a["lora_alpha"], sorted(a["target_modules"])) == (b["r"], b["lora_alpha"], sorted(b["target_modules"]))
    assert a["base_model_name_or_path"] == str(base)
    fused = "linear_qkv" in (FIX / case / "lora-ckpt/context/model.yaml").read_text().split("target_modules:")[1]
    assert ("exact for the forward pass" in r.stderr) == fused

    def peft_logits(adapter_dir):
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter_dir)).eval()
        with torch.no_grad():
            return m(torch.tensor(IDS)).logits

    la, lb = peft_logits(adapter), peft_logits(FIX / case / "nemo-export-peft")
    assert torch.equal(la, lb)
    assert (la - logits(base)).abs().max() > 1e-2  # the adapters are not zero: the comparison means something


def test_fused_lora_split_is_exact_for_the_forward(tmp_path):
    """Independent of NeMo's exporter: W + (alpha/r) B A computed in Megatron's fused layout, then converted like a base
    weight, equals the HF model with the converted adapter merged in (per projection, B's rows with the one shared A)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nemo_migrate.checkpoint import Reader

    case = "llama-gqa-fp32"
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    convert(FIX / case / "ckpt", base)
    convert(FIX / case / "lora-ckpt", adapter)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter)).merge_and_unload().state_dict()
    heads, groups, hd = 4, 2, 8  # the fixture's model.yaml

    def split_qkv(t):  # NeMo's TransformFns.split_qkv, written out
        per, total = heads // groups, heads + 2 * groups
        t = t.reshape(total, hd, -1)
        q = torch.cat([torch.arange((per + 2) * i, (per + 2) * i + per) for i in range(groups)])
        return [t[q].reshape(-1, t.shape[-1]), t[torch.arange(per, total, per + 2)].reshape(-1, t.shape[-1]),
                t[torch.arange(per + 1, total, per + 2)].reshape(-1, t.shape[-1])]

    w, ad = Reader(FIX / case / "ckpt/weights"), Reader(FIX / case / "lora-ckpt/weights")
    scale = 8 / 4  # the fixture's LoRA: alpha 8, dim 4
    for layer in range(2):
        pre = "module.decoder.layers.self_attention.linear_qkv"
        fused = w.read(f"{pre}.weight", (layer,)) + scale * ad.read(f"{pre}.adapter.linear_out.weight", (layer,)) @ ad.read(
            f"{pre}.adapter.linear_in.weight", (layer,))
        for name, part in zip("qkv", split_qkv(fused)):
            assert torch.allclose(merged[f"model.layers.{layer}.self_attn.{name}_proj.weight"], part, atol=1e-6)
        pre = "module.decoder.layers.mlp.linear_fc1"
        fused = w.read(f"{pre}.weight", (layer,)) + scale * ad.read(f"{pre}.adapter.linear_out.weight", (layer,)) @ ad.read(
            f"{pre}.adapter.linear_in.weight", (layer,))
        gate, up = fused.chunk(2)
        assert torch.allclose(merged[f"model.layers.{layer}.mlp.gate_proj.weight"], gate, atol=1e-6)
        assert torch.allclose(merged[f"model.layers.{layer}.mlp.up_proj.weight"], up, atol=1e-6)


# ---------------------------------------------------------------------------------------------- Megatron's layout, written here


def write_megatron(path: Path, spec: dict, blobs: dict | None = None) -> None:
    """A torch_dist checkpoint as Megatron writes one: every tensor in the chunks ``spec`` names
    (fqn -> (global shape, dtype, [(offsets, sizes)], fetch(offsets, sizes) -> tensor)), the chunks produced one at a time
    when the writer asks for them (a model larger than memory can be written), plus byte entries."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

    class ChunkPlanner(DefaultSavePlanner):
        def __init__(self):
            super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

        def create_local_plan(self):
            items = [WriteItem(index=MetadataIndex(fqn, torch.Size(off)), type=WriteItemType.SHARD,
                               tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(off), torch.Size(size)),
                                                           properties=TensorProperties(dtype=dt), size=torch.Size(shape)))
                     for fqn, (shape, dt, chunks, _) in spec.items() for off, size in chunks]
            items += [WriteItem(index=MetadataIndex(k), type=WriteItemType.BYTE_IO) for k in blobs or {}]
            self.plan = SavePlan(items)
            return self.plan

        def resolve_data(self, wi):
            if wi.type == WriteItemType.BYTE_IO:
                return io.BytesIO(blobs[wi.index.fqn])
            shape, dt, _, fetch = spec[wi.index.fqn]
            return fetch(tuple(wi.tensor_data.chunk.offsets), tuple(wi.tensor_data.chunk.sizes)).to(dt).contiguous()

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({}, storage_writer=dcp.FileSystemWriter(str(path)), planner=ChunkPlanner(), no_dist=True)
    (path / "metadata.json").write_text('{"sharded_backend": "torch_dist", "sharded_backend_version": 1, '
                                        '"common_backend": "torch", "common_backend_version": 1}')


def _chunks(fqn: str, shape: tuple, tp: int) -> list:
    """Megatron's chunking under tensor parallelism tp: one chunk per layer and rank; column-parallel layers split
    rows (fc1 as [gate shards; up shards]), row-parallel ones columns, the vocabulary rows; norms replicated."""
    stacked = ".layers." in fqn
    lead = [((layer,), (1,)) for layer in range(shape[0])] if stacked else [((), ())]
    inner = shape[1:] if stacked else shape
    if "layer_norm" in fqn or "layernorm" in fqn or len(inner) == 1 and "bias" not in fqn:
        dim, parts = 0, 1
    elif "linear_proj" in fqn or "linear_fc2" in fqn:
        dim, parts = len(inner) - 1, tp
    else:
        dim, parts = 0, tp * (2 if "linear_fc1" in fqn else 1)
    step = inner[dim] // parts
    out = []
    for off, size in lead:
        for p in range(parts):
            o = [0] * len(inner)
            s = list(inner)
            o[dim], s[dim] = p * step, step
            out.append((off + tuple(o), size + tuple(s)))
    return out


def training_run(tmp: Path, case: str = "llama-gqa-fp32", tp: int = 2, pad_vocab: int = 40) -> Path:
    """<run>/checkpoints/<name>--val_loss=...-step=99-consumed_samples=800.0-last/ as a NeMo 2 fine-tuning run leaves it:
    the model weights in TP chunks (vocabulary padded), Adam moments and fp32 master weights, TE _extra_state bytes."""
    from nemo_migrate.checkpoint import Reader

    rd = Reader(FIX / case / "ckpt/weights")
    full = {k: rd.read(k) for k in rd.tensors}
    for k in ("module.embedding.word_embeddings.weight", "module.output_layer.weight"):
        if k in full:
            full[k] = torch.cat([full[k], torch.zeros(pad_vocab - full[k].shape[0], full[k].shape[1], dtype=full[k].dtype)])
    g = torch.Generator().manual_seed(0)
    spec, blobs = {}, {}

    def fetcher(t):
        return lambda off, size: t[tuple(slice(o, o + s) for o, s in zip(off, size))].clone()

    for k, t in full.items():
        spec[k] = (tuple(t.shape), t.dtype, _chunks(k, tuple(t.shape), tp), fetcher(t))
        for state in ("exp_avg", "exp_avg_sq", "fp32_param"):
            r = torch.randn(t.shape, generator=g)
            spec[f"optimizer.state.{state}.{k}"] = (tuple(t.shape), torch.float32, _chunks(k, tuple(t.shape), tp), fetcher(r))
        if k.endswith(".weight") and ".layers." in k:
            for rank in range(tp):
                blobs[f"{k[:-len('.weight')]}._extra_state/shard_{rank}_{tp}"] = pickle.dumps(None)
    step = tmp / "run" / "checkpoints" / "nemo_llama--val_loss=1.2345-step=99-consumed_samples=800.0-last"
    (step / "weights").mkdir(parents=True)
    shutil.copytree(FIX / case / "ckpt/context", step / "context")
    write_megatron(step / "weights", spec, blobs)
    torch.save({"global_step": 99, "optimizer_states": [{"param_groups": [{"lr": 1e-4}]}], "state_dict": {}}, step / "weights/common.pt")
    return step


def test_training_run_layout_converts_to_the_same_model(tmp_path):
    step = training_run(tmp_path)
    from nemo_migrate.checkpoint import Reader

    rd = Reader(step / "weights")
    qkv = rd.tensors["module.decoder.layers.self_attention.linear_qkv.weight"]
    assert len(qkv.chunks) == 4 and any(k.startswith("optimizer.state.") for k in rd.tensors) and rd.other  # TP=2 x 2 layers
    ref, out = tmp_path / "ref", tmp_path / "hf"
    convert(FIX / "llama-gqa-fp32/ckpt", ref)
    r = convert(step, out)
    assert any("skipped" in n and "optimizer" in n for n in r.notes)
    a, b = tensors(out), tensors(ref)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert a["model.embed_tokens.weight"].shape[0] == 36  # the padded rows are gone
    # the run directory holding one step folder is accepted too; several need a choice
    convert(tmp_path / "run", tmp_path / "hf2")
    assert all(torch.equal(x, y) for x, y in zip(tensors(tmp_path / "hf2").values(), a.values()))
    shutil.copytree(step, step.parent / "nemo_llama--val_loss=1.3000-step=49-consumed_samples=400.0")
    r = cli("convert-checkpoint", tmp_path / "run", "-o", tmp_path / "hf3")
    assert r.returncode == 1 and "NM951" in r.stderr and "-last" in r.stderr and not (tmp_path / "hf3").exists()


def test_bf16_output_and_sharding(tmp_path):
    out = tmp_path / "hf"
    convert(FIX / "qwen2-bias/ckpt", out, dtype="bf16")
    t = tensors(out)
    assert {v.dtype for v in t.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ref = tensors(FIX / "qwen2-bias/nemo-export")
    assert all(torch.equal(t[k], ref[k].to(torch.bfloat16)) for k in ref)
    # several shards + index, loadable by transformers
    from nemo_migrate import checkpoint

    many = tmp_path / "many"
    checkpoint.convert(FIX / "qwen2-bias/ckpt", many, max_shard_bytes=20_000)
    files = sorted(p.name for p in many.glob("*.safetensors"))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == files
    plain = tmp_path / "plain"
    convert(FIX / "qwen2-bias/ckpt", plain)
    assert torch.equal(logits(many), logits(plain))


def test_gemma2_in_nemo_layout(tmp_path):
    """Gemma 2 (NeMo cannot import it without Transformer Engine): a random HF Gemma 2 written in Megatron's layout the
    way NeMo's HFGemma2Importer maps it (merge_qkv per query group, [gate; up], the post-norms on linear_proj/linear_fc2),
    converted back: the same logits as the HF model."""
    import transformers

    cfg = transformers.Gemma2Config(vocab_size=36, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, max_position_embeddings=256,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.copy_((1 + 0.2 * torch.randn_like(p)) if "norm" in n else 0.05 * torch.randn_like(p))
    sd = hf.state_dict()
    L, heads, groups, hd = 2, 4, 2, 16

    def merge_qkv(q, k, v):  # NeMo's TransformFns.merge_qkv, written out
        q, k, v = q.view(heads, hd, -1), k.view(groups, hd, -1), v.view(groups, hd, -1)
        per = heads // groups
        rows = [t for i in range(groups) for t in (q[i * per:(i + 1) * per], k[i:i + 1], v[i:i + 1])]
        return torch.cat(rows).reshape(-1, q.shape[-1])

    def stack(fn):
        return torch.stack([fn(i) for i in range(L)])

    p = "model.layers.{}."
    w = {
        "module.embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
        "module.decoder.final_layernorm.weight": sd["model.norm.weight"],
        "module.decoder.layers.self_attention.linear_qkv.weight": stack(lambda i: merge_qkv(*(sd[p.format(i) + f"self_attn.{x}_proj.weight"] for x in "qkv"))),
        "module.decoder.layers.self_attention.linear_qkv.layer_norm_weight": stack(lambda i: sd[p.format(i) + "input_layernorm.weight"]),
        "module.decoder.layers.self_attention.linear_proj.weight": stack(lambda i: sd[p.format(i) + "self_attn.o_proj.weight"]),
        "module.decoder.layers.self_attention.linear_proj.post_layernorm.weight": stack(lambda i: sd[p.format(i) + "post_attention_layernorm.weight"]),
        "module.decoder.layers.mlp.linear_fc1.layer_norm_weight": stack(lambda i: sd[p.format(i) + "pre_feedforward_layernorm.weight"]),
        "module.decoder.layers.mlp.linear_fc1.weight": stack(lambda i: torch.cat([sd[p.format(i) + "mlp.gate_proj.weight"], sd[p.format(i) + "mlp.up_proj.weight"]])),
        "module.decoder.layers.mlp.linear_fc2.weight": stack(lambda i: sd[p.format(i) + "mlp.down_proj.weight"]),
        "module.decoder.layers.mlp.linear_fc2.post_layernorm.weight": stack(lambda i: sd[p.format(i) + "post_feedforward_layernorm.weight"]),
    }
    ckpt = tmp_path / "gemma2"
    (ckpt / "weights").mkdir(parents=True)
    shutil.copytree(FIX / "gemma/ckpt/context", ckpt / "context")
    text = (ckpt / "context/model.yaml").read_text()
    for key, val in {"num_layers": 2, "hidden_size": 32, "ffn_hidden_size": 48, "num_attention_heads": 4, "num_query_groups": 2,
                     "kv_channels": 16, "seq_length": 256, "vocab_size": 36}.items():
        text = re.sub(rf"(?m)^  {key}: .*$", f"  {key}: {val}", text)
    text = text.replace("gpt.model.gemma.GemmaModel", "gpt.model.gemma2.Gemma2Model").replace("gpt.model.gemma.GemmaConfig", "gpt.model.gemma2.Gemma2Config")
    text = text.replace("  window_size: null", "  window_size:\n  - 4\n  - 0\n  query_pre_attn_scalar: 16\n  attn_logit_softcapping: 50.0\n  final_logit_softcapping: 30.0")
    (ckpt / "context/model.yaml").write_text(text)
    write_megatron(ckpt / "weights", {k: (tuple(t.shape), t.dtype, _chunks(k, tuple(t.shape), 1), lambda o, s, t=t: t[tuple(slice(a, a + b) for a, b in zip(o, s))].clone())
                                      for k, t in w.items()})
    out = tmp_path / "hf"
    convert(ckpt, out)
    got = json.loads((out / "config.json").read_text())
    assert (got["model_type"], got["sliding_window"], got["query_pre_attn_scalar"]) == ("gemma2", 4, 16)
    with torch.no_grad():
        assert torch.equal(logits(out), hf(torch.tensor(IDS)).logits)


# ---------------------------------------------------------------------------------------------- refusals


def _copy(case: str, tmp: Path, what: str = "ckpt") -> Path:
    dest = tmp / f"{case}-{what}"
    shutil.copytree(FIX / case / what, dest)
    return dest


def _yaml_edit(ckpt: Path, old: str, new: str) -> int:
    p = ckpt / "context/model.yaml"
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new, 1))
    return text[: text.index(old)].count("\n") + 1


def test_unknown_architecture_is_refused_by_name(tmp_path):
    ckpt = _copy("llama-gqa-fp32", tmp_path)
    line = _yaml_edit(ckpt, "_target_: nemo.collections.llm.gpt.model.llama.LlamaModel", "_target_: nemo.collections.llm.gpt.model.qwen3.Qwen3Model")
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"model.yaml:{line}" in r.stderr and "NM953" in r.stderr and "Qwen3Model (Qwen 3" in r.stderr and "LlamaModel" in r.stderr
    assert not (tmp_path / "hf").exists()


def test_config_the_table_does_not_cover_is_an_error_at_its_line(tmp_path):
    ckpt = _copy("llama-gqa-fp32", tmp_path)
    line = _yaml_edit(ckpt, "  qk_layernorm: false", "  qk_layernorm: true")
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")
    assert r.returncode == 1 and f"model.yaml:{line}:" in r.stderr and "NM954" in r.stderr and "config.qk_layernorm" in r.stderr


def test_unknown_and_missing_tensors_are_errors(tmp_path):
    from nemo_migrate.checkpoint import Reader

    rd = Reader(FIX / "llama-gqa-fp32/ckpt/weights")
    full = {k: rd.read(k) for k in rd.tensors if "linear_fc2" not in k}
    full["module.decoder.layers.self_attention.linear_qkv.weight_quantizer._amax"] = torch.ones(2, 1)
    ckpt = tmp_path / "odd"
    (ckpt / "weights").mkdir(parents=True)
    shutil.copytree(FIX / "llama-gqa-fp32/ckpt/context", ckpt / "context")
    write_megatron(ckpt / "weights", {k: (tuple(t.shape), t.dtype, [((0,) * t.dim(), tuple(t.shape))], lambda o, s, t=t: t) for k, t in full.items()})
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")
    assert r.returncode == 1 and "NM956" in r.stderr and "weight_quantizer._amax" in r.stderr
    assert "NM957" in r.stderr and "linear_fc2.weight" in r.stderr and not (tmp_path / "hf").exists()


def test_metadata_pickle_cannot_run_code(tmp_path):
    ckpt = _copy("llama-gqa-fp32", tmp_path)
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (ckpt / "weights/.metadata").write_bytes(pickle.dumps(Evil()))
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")
    assert r.returncode == 1 and "NM955" in r.stderr and "posix.system" in r.stderr.replace("os.system", "posix.system")
    assert not marker.exists()


def test_damaged_checkpoints_are_errors_not_tracebacks(tmp_path):
    ckpt = _copy("qwen2-bias", tmp_path)
    f = ckpt / "weights/__0_1.distcp"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")
    assert r.returncode == 1 and "NM969" in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "hf").exists()
    assert not list(tmp_path.glob(".hf.nemo-migrate-*"))  # the staging directory is gone
    ckpt = _copy("mistral", tmp_path)
    (ckpt / "context/model.yaml").write_text("config: {num_layers: [unclosed\n")
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")
    assert r.returncode == 1 and "NM952" in r.stderr and "model.yaml:" in r.stderr and "Traceback" not in r.stderr
    ckpt = _copy("phi3", tmp_path)
    line = _yaml_edit(ckpt, "  num_layers: 2", "  num_layers: two")
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")
    assert r.returncode == 1 and f"model.yaml:{line}:" in r.stderr and "config.num_layers is 'two'" in r.stderr
    (ckpt / "context/model.yaml").unlink()
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")
    assert r.returncode == 1 and "NM952" in r.stderr and "missing" in r.stderr


def test_not_a_checkpoint_and_output_rules(tmp_path):
    r = cli("convert-checkpoint", tmp_path / "nope", "-o", tmp_path / "hf")
    assert r.returncode == 1 and "NM950" in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("convert-checkpoint", tmp_path / "empty", "-o", tmp_path / "hf")
    assert r.returncode == 1 and "NM950" in r.stderr
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    r = cli("convert-checkpoint", FIX / "mistral/ckpt", "-o", out)
    assert r.returncode == 1 and "NM960" in r.stderr and "--force" in r.stderr and (out / "mine.txt").read_text() == "keep"
    convert(FIX / "mistral/ckpt", out, force=True)
    assert not (out / "mine.txt").exists() and (out / "config.json").is_file()
    r = cli("convert-checkpoint", FIX / "mistral/ckpt", "-o", tmp_path / "x", "--dtype", "int8")
    assert r.returncode == 1 and "NM965" in r.stderr
    r = cli("convert-checkpoint", FIX / "mistral/ckpt", "-o", FIX / "mistral/ckpt/hf")
    assert r.returncode == 1 and "NM960" in r.stderr and not (FIX / "mistral/ckpt/hf").exists()


def test_dora_and_unmapped_adapters_are_refused(tmp_path):
    ckpt = _copy("llama-gqa-fp32", tmp_path, "lora-ckpt")
    line = _yaml_edit(ckpt, "_target_: nemo.collections.llm.peft.lora.LoRA", "_target_: nemo.collections.llm.peft.dora.DoRA")
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")
    assert r.returncode == 1 and "NM963" in r.stderr and "DoRA" in r.stderr and f"model.yaml:{line}" in r.stderr
    ckpt = _copy("llama-gqa-fp32", tmp_path / "m", "lora-ckpt")
    _yaml_edit(ckpt, "_target_: nemo.collections.llm.gpt.model.llama.LlamaModel", "_target_: nemo.collections.llm.gpt.model.mixtral.MixtralModel")
    r = cli("convert-checkpoint", ckpt, "-o", tmp_path / "hf")  # Mixtral's table maps no adapter on the MLP
    assert r.returncode == 1 and ("NM963" in r.stderr or "NM954" in r.stderr)


def test_lora_alpha_from_io_json_when_model_yaml_lacks_it(tmp_path):
    ckpt = _copy("llama-gqa-fp32", tmp_path, "lora-ckpt")
    _yaml_edit(ckpt, "  alpha: 8\n", "")
    r = convert(ckpt, tmp_path / "a")
    assert json.loads((tmp_path / "a/adapter_config.json").read_text())["lora_alpha"] == 8 and "lora_alpha 8 from io.json" in r.notes
    (ckpt / "context/io.json").write_text("{}")
    r = convert(ckpt, tmp_path / "b")
    assert json.loads((tmp_path / "b/adapter_config.json").read_text())["lora_alpha"] == 32  # NeMo's LoRA default


def test_json_output(tmp_path):
    r = cli("convert-checkpoint", FIX / "llama-gqa-fp32/lora-ckpt", "-o", tmp_path / "a", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["kind"] == "peft" and j["architecture"] == "llama" and "adapter_config.json" in j["files"]
    assert any("exact for the forward pass" in n for n in j["notes"])


# the seed recipe is a 70B: a tiny checkpoint under it is a job NeMo cannot run (NM504), so size the recipe's model to it
SIZED = [a for s in ("num_layers=2", "hidden_size=32", "ffn_hidden_size=48", "num_attention_heads=4", "num_query_groups=2")
         for a in ("--set", "model.config." + s)]


def test_inspect_and_convert_with_a_local_checkpoint_do_not_import_torch(tmp_path):
    code = ("import sys; from nemo_migrate import checkpoint; c, d = checkpoint.inspect(sys.argv[1]); assert c.arch == 'llama' and not d.has_errors\n"
            "from nemo_migrate.cli import main; sys.argv = ['nemo-migrate', 'convert', sys.argv[2], '--set', 'resume.restore_config.path=' + sys.argv[1]] + "
            f"{SIZED!r}\n"
            "try: main()\nexcept SystemExit as e: assert e.code == 0, e.code\n"
            "bad = [m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code, str(FIX / "llama-gqa-fp32/ckpt"), str(ROOT / "golden/seed/input")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "ckpt-hf" in r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------- convert uses it


FAKE = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
"""


def test_convert_points_the_job_at_the_converted_checkpoint(tmp_path):
    ckpt = tmp_path / "models" / "my model's ckpt"  # a path that needs quoting in run.sh
    shutil.copytree(FIX / "llama-gqa-fp32/ckpt", ckpt)
    out = tmp_path / "job"
    r = cli("convert", ROOT / "golden/seed/input", "--set", f"resume.restore_config.path={ckpt}", *SIZED, "-o", out)
    assert r.returncode == 0, r.stderr
    from ruamel.yaml import YAML

    cfg = YAML(typ="safe").load((out / "config-fp16.yaml").read_text())
    assert cfg["model"]["pretrained_model_name_or_path"] == f"{ckpt}-hf"
    report = (out / "migration-report.md").read_text()
    assert "- [MOD001] convert the NeMo 2 checkpoint to Hugging Face format (once; no NeMo needed" in report and "NM502" not in report
    run_sh = (out / "run.sh").read_text()
    assert "CONVERT_CHECKPOINT" in run_sh
    # the pre-step runs only on opt-in, with the path as one word
    b = tmp_path / "bin"
    b.mkdir()
    for tool in ("nemo-migrate", "torchrun"):
        (b / tool).write_text(FAKE)
        (b / tool).chmod(0o755)
    env = {"PATH": f"{b}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls")}
    subprocess.run(["bash", out / "run.sh", "fp16"], env={**os.environ, **env}, check=True, capture_output=True)
    assert (tmp_path / "calls").read_text().startswith("torchrun ")
    (tmp_path / "calls").unlink()
    subprocess.run(["bash", out / "run.sh", "fp16"], env={**os.environ, **env, "CONVERT_CHECKPOINT": "1"}, check=True, capture_output=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == f"nemo-migrate convert-checkpoint {ckpt} -o {ckpt}-hf" and calls[1].startswith("torchrun ")
    # --model still wins
    r = cli("convert", ROOT / "golden/seed/input", "--set", f"resume.restore_config.path={ckpt}", "--model", "meta-llama/Llama-3.2-1B", "-o", tmp_path / "j2")
    assert r.returncode == 0 and "pretrained_model_name_or_path: meta-llama/Llama-3.2-1B" in (tmp_path / "j2/config-fp16.yaml").read_text()
    assert "CONVERT_CHECKPOINT" not in (tmp_path / "j2/run.sh").read_text()


def test_convert_keeps_the_guess_when_the_checkpoint_is_elsewhere(tmp_path):
    r = cli("convert", ROOT / "golden/seed/input", "-o", tmp_path / "job")
    assert r.returncode == 0
    report = (tmp_path / "job/migration-report.md").read_text()
    assert "not converted: not a NeMo 2 checkpoint directory on this machine" in report
    assert "nemo-migrate convert-checkpoint /mount/models/llama-3_3-70b-instruct_v0.0.1 -o /mount/models/llama-3_3-70b-instruct_v0.0.1-hf" in report
    assert "CONVERT_CHECKPOINT" not in (tmp_path / "job/run.sh").read_text()
    ckpt = _copy("llama-gqa-fp32", tmp_path)
    _yaml_edit(ckpt, "  qk_layernorm: false", "  qk_layernorm: true")
    r = cli("convert", ROOT / "golden/seed/input", "--set", f"resume.restore_config.path={ckpt}", "-o", tmp_path / "j3")
    assert r.returncode == 0 and "convert-checkpoint cannot convert it: config.qk_layernorm" in (tmp_path / "j3/migration-report.md").read_text()


def test_sbatch_pre_step(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIX / "llama-gqa-fp32/ckpt", ckpt)
    out = tmp_path / "job"
    r = cli("convert", ROOT / "golden/seed/input", "--set", f"resume.restore_config.path={ckpt}", *SIZED, "--launcher", "slurm", "-o", out)
    assert r.returncode == 0, r.stderr
    text = (out / "sbatch.sh").read_text()
    head, _, body = text.partition("set -euo pipefail")
    assert "if [" not in head and "#SBATCH" not in body  # the #SBATCH header stays first
    assert f"  nemo-migrate convert-checkpoint {ckpt} -o {ckpt}-hf" in body


# ---------------------------------------------------------------------------------------------- memory (not in CI)


LLAMA3_8B = {"num_layers": 32, "hidden_size": 4096, "ffn_hidden_size": 14336, "num_attention_heads": 32, "num_query_groups": 8,
             "kv_channels": 128, "vocab_size": 128256}


@pytest.mark.skipif(not os.environ.get("CKPT_MEMORY_RECORD"), reason="set CKPT_MEMORY_RECORD=bench/results/ckpt-memory-<date>.json")
def test_memory_8b_shaped(tmp_path_factory):
    """An 8B-shaped random bf16 checkpoint in Megatron's layout (per-layer chunks), converted in a child process: peak
    RSS against the largest tensor.  CKPT_MEMORY_DIR picks a disk with ~35 GB free."""
    base = Path(os.environ.get("CKPT_MEMORY_DIR") or tmp_path_factory.mktemp("mem"))
    ckpt, out = base / "llama8b-ckpt", base / "llama8b-hf"
    shutil.rmtree(ckpt, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    (ckpt / "weights").mkdir(parents=True)
    shutil.copytree(FIX / "llama-gqa-bf16/ckpt/context", ckpt / "context")
    text = (ckpt / "context/model.yaml").read_text()
    for key, val in LLAMA3_8B.items():
        text = re.sub(rf"(?m)^  {key}: .*$", f"  {key}: {val}", text)
    (ckpt / "context/model.yaml").write_text(text)
    c = LLAMA3_8B
    L, h, f, v = c["num_layers"], c["hidden_size"], c["ffn_hidden_size"], c["vocab_size"]
    qkv = (c["num_attention_heads"] + 2 * c["num_query_groups"]) * c["kv_channels"]
    shapes = {"module.embedding.word_embeddings.weight": (v, h), "module.output_layer.weight": (v, h),
              "module.decoder.final_layernorm.weight": (h,),
              "module.decoder.layers.self_attention.linear_qkv.layer_norm_weight": (L, h),
              "module.decoder.layers.self_attention.linear_qkv.weight": (L, qkv, h),
              "module.decoder.layers.self_attention.linear_proj.weight": (L, h, h),
              "module.decoder.layers.mlp.linear_fc1.layer_norm_weight": (L, h),
              "module.decoder.layers.mlp.linear_fc1.weight": (L, 2 * f, h),
              "module.decoder.layers.mlp.linear_fc2.weight": (L, h, f)}

    def rand(off, size):
        g = torch.Generator().manual_seed(hash(off) % 2 ** 31)
        return torch.randn(size, generator=g, dtype=torch.float32).to(torch.bfloat16)

    t0 = time.time()
    write_megatron(ckpt / "weights", {k: (s, torch.bfloat16, _chunks(k, s, 1), rand) for k, s in shapes.items()})
    t_write = time.time() - t0
    ckpt_bytes = sum(p.stat().st_size for p in (ckpt / "weights").iterdir())

    def child(args):
        # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak over fork + exec)
        code = ("import re, sys, time; from nemo_migrate.cli import main; t=time.time()\n"
                "try: main()\nexcept SystemExit as e: rc = e.code\n"
                "hwm = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
                "print('PEAK', hwm, 'SECONDS', time.time() - t, 'RC', rc, file=sys.stderr)")
        r = subprocess.run([sys.executable, "-c", code, "convert-checkpoint", *map(str, args)], capture_output=True, text=True, cwd=ROOT)
        m = re.search(r"PEAK (\d+) SECONDS ([\d.]+) RC (\S+)", r.stderr)
        assert m and m.group(3) in ("0", "None"), r.stderr[-3000:]
        return int(m.group(1)) * 1024, float(m.group(2))

    small_peak, _ = child([FIX / "llama-gqa-bf16/ckpt", "-o", base / "tiny-hf", "--force"])
    peak, seconds = child([ckpt, "-o", out])
    largest = v * h * 2
    hf_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    # spot check: layer 7's k_proj is rows [q heads of each group..] of the stored qkv chunk
    from safetensors import safe_open

    stored = rand((7, 0, 0), (1, qkv, h))[0].view(c["num_query_groups"], -1, c["kv_channels"], h)
    per = c["num_attention_heads"] // c["num_query_groups"]
    idx = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]["model.layers.7.self_attn.k_proj.weight"]
    with safe_open(str(out / idx), "pt") as fh:
        assert torch.equal(fh.get_tensor("model.layers.7.self_attn.k_proj.weight"), stored[:, per].reshape(-1, h))
    record = {
        "what": "convert-checkpoint of an 8B-shaped (Llama 3 8B) random bf16 NeMo 2 checkpoint in Megatron's torch_dist "
                "layout (one chunk per layer), peak RSS of the converting process",
        "command": "CKPT_MEMORY_RECORD=<this file> [CKPT_MEMORY_DIR=<disk with 35 GB>] .venv/bin/python -m pytest "
                   "tests/test_checkpoint.py -k memory_8b -p no:cacheprovider",
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
        "torch": torch.__version__, "checkpoint_bytes": ckpt_bytes, "hf_safetensors_bytes": hf_bytes, "write_seconds": round(t_write, 1),
        "convert_seconds": round(seconds, 1), "largest_tensor_bytes": largest, "largest_tensor": "embedding / lm_head [128256, 4096] bf16",
        "peak_rss_bytes": peak, "fixed_overhead_bytes": small_peak,
        "fixed_overhead": "peak RSS converting the tiny llama-gqa-bf16 fixture (interpreter, torch, transformers, tokenizer)",
        "peak_minus_overhead_over_largest": round((peak - small_peak) / largest, 3),
        "bound": "peak < 2 x largest tensor + fixed overhead",
    }
    Path(os.environ["CKPT_MEMORY_RECORD"]).write_text(json.dumps(record, indent=2) + "\n")
    assert peak < 2 * largest + small_peak, record
    if not os.environ.get("CKPT_MEMORY_DIR"):
        shutil.rmtree(ckpt)
        shutil.rmtree(out)

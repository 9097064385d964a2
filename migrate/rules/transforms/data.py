"""Data rows (DAT*): the data module as an Automodel dataset, its template, tokens, order and loader."""

from __future__ import annotations

import posixpath
import re
from typing import Any

from ... import knowledge, schema
from ..context import Ctx, Registry, Result, nemo_default

transform = Registry()

COLUMN_MAPPED = "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset"
SQUAD = "nemo_automodel.components.datasets.llm.squad.make_squad_dataset"
CHAT = "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset"
MEGATRON = "nemo_automodel.components.datasets.llm.megatron_dataset.MegatronPretraining"
_HUB_LIKE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+\Z")


def _jsonl(root: str, name: str) -> str:
    p = posixpath.join(root, name)
    if not posixpath.isabs(p) and _HUB_LIKE.match(p):
        p = "./" + p  # a relative 'dir/file.jsonl' would be taken for a Hub id (schema §6.2)
    return p


def _file_arg(files: list[str]) -> Any:
    fixed = [("./" + f if not posixpath.isabs(f) and _HUB_LIKE.match(f) else f) for f in files]
    return fixed[0] if len(fixed) == 1 else fixed


def _converted(path: str) -> str:
    base, ext = posixpath.splitext(path)
    return f"{base}.messages{ext or '.jsonl'}"


def _chat(ctx: Ctx, train: list[str], val: list[str], src: tuple[str, ...]) -> Result:
    ctx.set("dataset._target_", CHAT, *src)
    ctx.set("dataset.path_or_dataset_id", _file_arg([_converted(f) for f in train]), *src)
    if val:
        ctx.set("validation_dataset._target_", CHAT, *src)
        ctx.set("validation_dataset.path_or_dataset_id", _file_arg([_converted(f) for f in val]), *src)
    for f in train + val:
        ctx.note("pre-step", f"convert NeMo chat data to OpenAI messages: nemo-migrate convert-data {shlex_quote(f)} {shlex_quote(_converted(f))}")
    hf_template = bool(ctx.v("data.use_hf_tokenizer_chat_template") or ctx.v("data.dataset_kwargs.use_hf_tokenizer_chat_template"))
    return Result("approximate", "NeMo chat data (ShareGPT 'conversations' with from: User/Assistant and a top-level 'system', which "
                  "Automodel 0.7's case-sensitive role map rejects) is converted to OpenAI 'messages' by the pre-step; "
                  + ("both format the turns with the tokenizer's chat template" if hf_template else
                     "NeMo wraps turns in its own special tokens (<extra_id_0/1/2>), Automodel applies the tokenizer's chat template")
                  + "; loss on assistant turns in both")


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _data_meta(ctx: Ctx) -> dict[str, Any]:
    """The `data:` entry of the data module's class in mappings/nemo2/classes.yaml (how the rules map it)."""
    data = ctx.node("data")
    return dict((knowledge.classes().get(data.cls) or {}).get("data") or {}) if data is not None else {}


def _data_kind(ctx: Ctx) -> str | None:
    """sft | squad | chat | files | megatron; a SquadDataModule given a dataset_root reads its files: 'sft'."""
    kind = _data_meta(ctx).get("kind")
    if kind == "squad" and ctx.v("data.dataset_root") is not None:
        return "sft"
    return kind


def _files_mapped(ctx: Ctx) -> bool:
    """The data module becomes ColumnMappedTextInstructionDataset over JSONL files (prompt template and all)."""
    return _data_kind(ctx) in ("sft", "files") and not ctx.v("data.chat")

ENV_NOTE = "Automodel expands NEMO_DATASETS_CACHE when it loads the file, as NeMo"  # an intended ${VAR,default} (see NM600)


def _nemo_datasets_cache(ctx: Ctx) -> str:
    """NeMo's NEMO_DATASETS_CACHE (nemo/lightning/base.py:26-29) as an Automodel 0.7 YAML string: the job's own
    environment (run.sh, then the executor's env_vars) when it sets one, else Automodel's ${VAR,default}
    interpolation (components/config/loader.py resolve_yaml_env_vars) over NeMo's default ~/.cache/nemo/datasets."""
    env = dict(ctx.job.launch_env)
    ex = ctx.v("executor.env_vars")
    if isinstance(ex, dict):
        env.update({str(k): str(v) for k, v in ex.items()})
    if env.get("NEMO_DATASETS_CACHE"):
        return env["NEMO_DATASETS_CACHE"].rstrip("/")
    home = env["NEMO_HOME"].rstrip("/") if env.get("NEMO_HOME") else "$HOME/.cache/nemo"
    return "${NEMO_DATASETS_CACHE," + home + "/datasets}"


def _sft_root(ctx: Ctx) -> tuple[str, tuple[str, ...]]:
    cache = _data_meta(ctx).get("cache")
    if ctx.v("data.dataset_root") is None and cache:
        return f"{_nemo_datasets_cache(ctx)}/{cache}", ("data._target_",)
    return str(ctx.v("data.dataset_root")), ("data.dataset_root",)


@transform
def dataset_source(ctx: Ctx) -> Result | None:
    data = ctx.node("data")
    cls = data.cls if data else None
    meta, kind = _data_meta(ctx), _data_kind(ctx)
    if kind == "sft":
        root, src = _sft_root(ctx)
        note = ENV_NOTE if "${" in root else None
        ctx.set("dataset._target_", COLUMN_MAPPED, "data._target_")
        ctx.set("dataset.path_or_dataset_id", _jsonl(root, "training.jsonl"), *src, note=note)
        ctx.set("validation_dataset._target_", COLUMN_MAPPED, "data._target_")
        ctx.set("validation_dataset.path_or_dataset_id", _jsonl(root, "validation.jsonl"), *src, note=note)
        if src == ("data._target_",):
            ctx.note("pre-step", meta["prestep"].replace("{root}", root))
            return Result(meta.get("status", "approximate"), meta["reason"])
        if cls == "SquadDataModule":
            return Result("exact", f"SquadDataModule(dataset_root={root!r}) reads training.jsonl and validation.jsonl there and downloads "
                          "SQuAD only when training.jsonl is missing (squad.py:72, 87-91); ColumnMappedTextInstructionDataset reads the same files")
        if not posixpath.isabs(root):
            return Result("exact", f"relative dataset_root {root!r}: both resolve it against the directory the job is launched from")
        return None
    if kind == "files":
        train = [str(x) for x in (ctx.v("data.train_files") or [])]
        val = [str(x) for x in (ctx.v("data.validation_files") or [])]
        if ctx.v("data.chat"):
            return _chat(ctx, train, val, ("data.train_files", "data.validation_files", "data.chat"))
        npy = [f for f in train + val if f.endswith(".npy")]
        ctx.set("dataset._target_", COLUMN_MAPPED, "data._target_")
        ctx.set("dataset.path_or_dataset_id", _file_arg(train), "data.train_files")
        if val:
            ctx.set("validation_dataset._target_", COLUMN_MAPPED, "data._target_")
            ctx.set("validation_dataset.path_or_dataset_id", _file_arg(val), "data.validation_files")
        if npy:
            return Result("unsupported", f"pre-packed .npy files {npy} cannot be read by Automodel; point at the JSONL they were packed from "
                          "and let packed_sequence pack them")
        if len(train) > 1:
            return Result("exact", f"{len(train)} training files are read as one dataset in both (sampling ratios: DAT013)")
        return None
    if kind == "squad":
        ctx.set("dataset._target_", SQUAD, "data._target_")
        ctx.set("dataset.dataset_name", "rajpurkar/squad", "data._target_")
        ctx.set("dataset.split", "train", "data._target_")
        ctx.set("validation_dataset._target_", SQUAD, "data._target_")
        ctx.set("validation_dataset.dataset_name", "rajpurkar/squad", "data._target_")
        ctx.set("validation_dataset.split", "validation", "data._target_")
        return Result("approximate", "SQuAD from the Hub: NeMo validates on 5% held out of the train split, Automodel on the validation split; "
                      "both prompt 'Context: ... Question: ... Answer: ' (Automodel applies a chat template when the tokenizer has one)")
    if kind == "chat":
        root = str(ctx.v("data.dataset_root"))
        return _chat(ctx, [_jsonl(root, "training.jsonl")], [_jsonl(root, "validation.jsonl")], ("data._target_", "data.dataset_root"))
    if kind == "megatron":
        for sect, split in (("dataset", "train"), ("validation_dataset", "validation")):
            ctx.set(f"{sect}._target_", MEGATRON, "data._target_")
            ctx.set(f"{sect}.splits_to_build", split, "data._target_")
        ctx.note("pre-step", "Automodel builds its Megatron dataset helpers from C++ source at the first run "
                 "(components/datasets/llm/megatron/megatron_utils.py compile_helper): the container needs a C++ compiler and ninja")
        return Result("approximate", "PreTrainingDataModule and Automodel's MegatronPretraining build the train and validation splits "
                      "of the same Megatron .bin/.idx blend with the same algorithm: GPTDataset's document, sample and shuffle indices "
                      "(_build_document_index, _build_shuffle_index, build_sample_idx) and the blending of BlendedMegatronDatasetBuilder "
                      "are the same code in megatron-core 0.16.1 (NeMo 2.7.3) and Automodel 0.7.0's vendored copy "
                      "(components/datasets/llm/megatron/), and both train on every token (measured on a two-prefix blend: identical "
                      "input_ids, labels and loss masks for all 640 train and 240 validation samples); they differ in which labels "
                      "are masked as padding when the tokenizer's pad id occurs inside the documents (megatron-core: every such "
                      "label; Automodel: the trailing pad run only) and in the loss reduction (MOD007)")
    return Result("unsupported", f"data module {cls} has no mapping")


@transform
def sampling_probabilities(ctx: Ctx) -> Result | None:
    probs = ctx.v("data.concat_sampling_probabilities")
    files = ctx.v("data.train_files") or []
    if not probs or len(files) <= 1:
        return None
    return Result("approximate", f"NeMo samples the {len(files)} files with probabilities {probs} (a blended dataset); Automodel concatenates "
                  "them, so each file weighs by its size: the mix matches only if the probabilities are proportional to the file sizes")


@transform
def column_mapping(ctx: Ctx) -> Result | None:
    if not _files_mapped(ctx):
        return Result("dropped", "no column mapping for this data module")
    tmpl = ctx.v("data.dataset_kwargs.prompt_template", nemo_default("dict.prompt_template"))  # dataset_kwargs: the `dict` entry
    label = ctx.v("data.dataset_kwargs.label_key", nemo_default("dict.label_key"))
    if not isinstance(tmpl, str) or not isinstance(label, str):
        return Result("unsupported", "prompt_template/label_key are not strings")
    tmpl = tmpl.encode().decode("unicode_escape") if "\\" in tmpl else tmpl
    parts = re.split(r"({\w+})", tmpl)
    keys = [p[1:-1] for p in parts if re.fullmatch(r"{\w+}", p)]
    literals = [p for p in parts if not re.fullmatch(r"{\w+}", p)]
    roles = ["context", "question"]
    mapping: dict[str, str] = {}
    prompt_keys = [k for k in keys if k != label]
    for role, k in zip(roles, prompt_keys):
        mapping[role] = k
    mapping["answer"] = label
    ctx.set("dataset.column_mapping", dict(mapping), "data.dataset_kwargs.prompt_template", "data.dataset_kwargs.label_key")
    ctx.set("validation_dataset.column_mapping", dict(mapping), "data.dataset_kwargs.prompt_template", "data.dataset_kwargs.label_key")
    spaced = literals[0] == "" and literals[-1] == "" and all(x == " " for x in literals[1:-1])
    if len(prompt_keys) > 2:
        return Result("unsupported", f"the template has {len(prompt_keys)} prompt fields; ColumnMapped takes at most two (context, question)")
    if not prompt_keys:
        return Result("unsupported", "the template has no prompt field")
    if not spaced:
        lit = [x for x in literals if x not in ("", " ")]
        return Result("unsupported", f"the template adds text {lit!r} around the fields; ColumnMappedTextInstructionDataset only joins "
                      "fields with single spaces, so that text is lost (pre-format the JSONL into the fields)")
    return Result("approximate", f"'{tmpl}' is the same text as ColumnMapped's '<context> <question> <answer>', but the tokens differ: "
                  "NeMo tokenizes each template piece on its own (the answer without its leading space) and trains every answer token "
                  "and the EOS; Automodel tokenizes prompt + ' ' + answer in one piece and masks as many tokens as the prompt alone has. "
                  "With byte-level BPE tokenizers (Llama 3, Qwen) the prompt's trailing space is a token of its own, so the first "
                  "answer token is not trained (found by `run --verify`'s tokenization check; real Automodel 0.7 does the same)")


@transform
def seq_truncation(ctx: Ctx) -> Result | None:
    if ctx.node("data") is None:
        return None
    seq = ctx.v("data.seq_length")
    specs = ctx.node("data.packed_sequence_specs")
    size = schema.value(specs, "packed_sequence_size", -1) if specs else -1
    if isinstance(size, int) and size > 0:
        seq = size
    if _data_kind(ctx) == "megatron":
        for sect in ("dataset", "validation_dataset"):
            ctx.set(f"{sect}.seq_length", seq, "data.seq_length")
        return Result("exact", f"samples of {seq} tokens cut from the concatenated documents of the blend in both "
                      "(GPTDatasetConfig.sequence_length; no truncation)")
    for sect in ("dataset", "validation_dataset"):
        if _data_kind(ctx) == "squad":
            ctx.set(f"{sect}.seq_length", seq, "data.seq_length")
            ctx.set(f"{sect}.truncation", True, "data.seq_length")
        else:
            ctx.set(f"{sect}.seq_length", seq, "data.seq_length")
            ctx.set(f"{sect}.truncation", "longest_first", "data.seq_length", "data.dataset_kwargs.truncation_field")
    method = ctx.v("data.dataset_kwargs.truncation_method", nemo_default("dict.truncation_method"))
    field = ctx.v("data.dataset_kwargs.truncation_field", nemo_default("dict.truncation_field"))
    return Result("approximate", f"samples longer than {seq} tokens: NeMo removes the overflow from {field!r} (truncation_method={method!r}) "
                  "and keeps the answer; the HF tokenizer cuts the end of prompt+answer. Identical when no sample is longer")


@transform
def special_tokens(ctx: Ctx) -> Result | None:
    if ctx.node("data") is None or _data_kind(ctx) in ("squad", "megatron"):
        if _data_kind(ctx) == "megatron":
            return Result("exact", "pre-tokenized Megatron documents: the EOD tokens are in the .bin files (no tokenizer EOS/BOS added at load)")
        return Result("approximate", "SQuAD: Automodel's SQuAD builder appends EOS itself") if ctx.node("data") else None
    eos = ctx.v("data.dataset_kwargs.add_eos", nemo_default("dict.add_eos"))
    bos = ctx.v("data.dataset_kwargs.add_bos", nemo_default("dict.add_bos"))
    if eos:
        ctx.set("dataset.tokenizer.add_eos_token", True, "data.dataset_kwargs.add_eos")
    if bos:
        ctx.set("dataset.tokenizer.add_bos_token", True, "data.dataset_kwargs.add_bos")
    return Result("approximate", f"NeMo {'appends EOS' if eos else 'adds no EOS'} and {'adds' if bos else 'adds no'} BOS; Automodel 0.7 adds "
                  "them only when the tokenizer declares add_eos_token/add_bos_token, and a Llama-3 tokenizer's post-processor adds BOS "
                  "by itself (`run --verify` checks the token ids)")


@transform
def padding(ctx: Ctx) -> Result | None:
    specs = ctx.node("data.packed_sequence_specs")
    if specs is not None and (schema.value(specs, "packed_sequence_size", -1) or -1) > 0:
        return Result("exact", "with packing NeMo pads each pack to the pack size; Automodel's packer does the same (padding each sample would defeat packing)")
    if ctx.v("data.dataset_kwargs.pad_to_max_length"):
        ctx.set("dataset.padding", "max_length", "data.dataset_kwargs.pad_to_max_length")
        ctx.set("validation_dataset.padding", "max_length", "data.dataset_kwargs.pad_to_max_length")
    return None


@transform
def seed(ctx: Ctx) -> Result | None:
    s = ctx.v("data.seed", nemo_default("FineTuningDataModule.seed"))
    ctx.set("seed", int(s), "data.seed")
    if _data_kind(ctx) == "megatron":
        for sect in ("dataset", "validation_dataset"):
            ctx.set(f"{sect}.seed", int(s), "data.seed")
        return Result("exact", f"data.seed={s} seeds the Megatron document and sample shuffles in both (GPTDatasetConfig.random_seed), "
                      "so the samples come in the same order")
    return None


@transform
def loader_workers(ctx: Ctx) -> Result | None:
    # data.shuffle / data.drop_last exist for NeMo 1.0 file lists (SFTFileDataModule); NeMo 2 data modules always shuffle
    # and drop the last partial batch (MegatronDataSampler), which is what an absent value means here
    shuffle = ctx.v("data.shuffle", True) is not False
    if _data_kind(ctx) != "megatron":  # a Megatron dataset is read in its own (seeded) order by a Megatron sampler (DAT016)
        ctx.set("dataloader.shuffle", shuffle, "data.shuffle", note="NeMo's sample mapping is shuffled" if shuffle else None)
    for k in ("num_workers", "pin_memory", "persistent_workers"):
        v = ctx.v(f"data.{k}")
        if v is not None:
            if k == "persistent_workers" and not ctx.v("data.num_workers"):
                continue
            ctx.set(f"dataloader.{k}", v, f"data.{k}")
    if not shuffle:
        return Result("approximate", "shuffle=False: Automodel reads the files in order too, but NeMo also up-samples the data to fill the steps")
    if ctx.v("data.drop_last", True) is False:
        return Result("approximate", "drop_last=False: Automodel's sampler always drops the last partial batch")
    return None


@transform
def packing(ctx: Ctx) -> Result | None:
    specs = ctx.node("data.packed_sequence_specs")
    if specs is None:
        return None
    size = schema.value(specs, "packed_sequence_size", -1)
    if not isinstance(size, int) or size <= 0:
        return Result("exact", "packed_sequence_size <= 0: no packing in both")
    ctx.set("packed_sequence.packed_sequence_size", size, "data.packed_sequence_specs.packed_sequence_size")
    return Result("approximate", "NeMo packs offline into .npy files with its own bin-packing and weights each pack's token mean equally; "
                  "Automodel packs on the fly (THD) and averages over all tokens of the step")


@transform
def nemo_download(ctx: Ctx) -> Result | None:
    if not ctx.v("data.force_redownload") or _data_kind(ctx) != "sft":
        return None
    return Result("approximate", "force_redownload=True: NeMo downloads and re-splits the data into its JSONL files at every launch "
                  "(Dolly also redraws its random context/instruction order); the migrated job reads the files the last NeMo run wrote")


def _nemo_val_samples(ctx: Ctx) -> tuple[int | None, float | None]:
    """PreTrainingDataModule.build's validation size (pre_training.py:284-327): (num_val_samples, None), or
    (None, limit_val_batches) when a fraction <= 1.0 makes NeMo build the whole validation split."""
    gbs, steps = ctx.v("data.global_batch_size"), ctx.v("trainer.max_steps")
    vci = ctx.v("trainer.val_check_interval")
    lvb = ctx.v("trainer.limit_val_batches")
    vci, lvb = (1.0 if vci is None else vci), (1.0 if lvb is None else lvb)  # Lightning's values for None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (gbs, steps, vci, lvb)) or not vci or not gbs:
        return None, None
    if isinstance(lvb, float) and 0.0 < lvb <= 1.0:
        return None, lvb
    nts = ctx.v("data.num_train_samples")
    try:
        iters = int(nts / gbs) if isinstance(nts, int) and not isinstance(nts, bool) else steps
        return int((iters // vci + 1) * lvb * gbs), None
    except (ArithmeticError, ValueError):  # inf / nan from a hostile value: leave the size to Automodel
        return None, None


@transform
def megatron_dataset(ctx: Ctx) -> Result | None:
    if _data_kind(ctx) != "megatron":
        return Result("unsupported", "a PreTrainingDataModule setting on another data module")
    raw = ctx.v("data.paths")
    paths = raw if isinstance(raw, (list, dict)) else [raw]  # NeMo wraps a single path in a list (pre_training.py:201-202)
    data = ctx.node("data")
    for sect in ("dataset", "validation_dataset"):
        ctx.set(f"{sect}.paths", paths, "data.paths")
        for k in ("split", "index_mapping_dir", "num_dataset_builder_threads", "mmap_bin_files"):
            kn = ctx.k(f"data.{k}") or schema.default_knob(data, k)
            if kn is None or kn.value is None or (k == "split" and isinstance(paths, dict)):
                continue
            ctx.set(f"{sect}.{k}", kn.value, f"data.{k}", provs=[] if ctx.has(f"data.{k}") else [kn.prov])
    if ctx.v("data.num_train_samples") is not None:
        ctx.set("dataset.num_train_samples", ctx.v("data.num_train_samples"), "data.num_train_samples")
    ctx.unset("validation_dataset.limit_dataset_samples")  # SCH004's ColumnMapped key: MegatronPretrainingConfig rejects it
    nv, frac = _nemo_val_samples(ctx)
    user_nv = ctx.v("data.num_val_samples")
    why = ("data.num_val_samples", "trainer.max_steps", "trainer.val_check_interval", "trainer.limit_val_batches", "data.global_batch_size")
    status = "exact"
    if frac is not None:
        ctx.set("validation_dataset.trainer_limit_val_batches", frac, "trainer.limit_val_batches",
                note="a fraction: the whole validation split, as NeMo")
        val = f"limit_val_batches={frac} builds the whole validation split in both"
    elif user_nv is not None or nv is not None:
        ctx.set("validation_dataset.num_val_samples", user_nv if user_nv is not None else nv, *why,
                note=None if user_nv is not None else "NeMo: (max_steps // val_check_interval + 1) x limit_val_batches x GBS")
        val = ("the validation size is NeMo's, written out because Automodel's formula lacks NeMo's + 1 round "
               "(pre_training.py:295-296 vs megatron_dataset.py:302-306)")
    else:
        status = "approximate"
        val = ("the validation size could not be computed from the trainer settings, so Automodel's own formula (without NeMo's "
               "+ 1 validation round, megatron_dataset.py:302-306) sizes the validation split")
    reason = ("the same blend (paths and weights through get_blend_from_list), split ratios, index cache and sample counts feed the "
              "same Megatron builder: num_train_samples = max_steps x GBS in both (pre_training.py:284-293, megatron_dataset.py:281-295); "
              f"{val}; the test split is never built")
    if isinstance(raw, str):
        reason += (f"; the single path {raw!r} is a dataset prefix in NeMo (wrapped in a list), so it is written as a one-element "
                   "list: Automodel would read a lone string as a glob or a JSON blend file (megatron_dataset.py:217-223)")
    return Result(status, reason)


@transform
def megatron_sampler(ctx: Ctx) -> Result | None:
    t = ctx.v("data.dataloader_type", nemo_default("PreTrainingDataModule.dataloader_type"))
    if t in ("single", "cyclic"):
        ctx.set("dataloader.dataloader_type", t, "data.dataloader_type")
        return None
    return Result("unsupported", f"dataloader_type={t!r}: Automodel 0.7's Megatron sampler is 'single' or 'cyclic' "
                  "(recipes/_typed_config.py:268-281)")


@transform
def answer_only_loss(ctx: Ctx) -> Result | None:
    kn = ctx.k("data.dataset_kwargs.answer_only_loss")
    if kn is None:
        return None  # no dataset_kwargs: the dataset's own default (answer-only) applies
    on = bool(kn.value)
    if ctx.targets.get("dataset._target_") is not None and ctx.targets["dataset._target_"].value == CHAT:
        # ChatDataset has no switch: its chat template marks the assistant turns and only those are trained on
        if not on:
            return Result("unsupported", "answer_only_loss=False: Automodel's ChatDataset always masks everything but the assistant turns")
        return Result("exact", "ChatDataset trains on the assistant turns only, as NeMo's chat answer_only_loss")
    ctx.set("dataset.answer_only_loss_mask", on, "data.dataset_kwargs.answer_only_loss")
    return None

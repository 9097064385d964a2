"""Chat data (0.7's ChatDataset, the local tokenizer's chat template) and THD sequence packing (0.7's pack_dataset,
per-sample position ids, attention kept inside each sample): labels, packs, loss equality, end-to-end runs (CPU)."""

import copy
import json
import random
from pathlib import Path

import pytest
import torch

from rt_helpers import WORDS, base_config, metrics, run, tiny_llama, write_yaml
from nemo_migrate.runtime.data import (ChatDataset, ColumnMappedDataset, PackedDataset, build_dataset, mapped_texts, pack_samples,
                          read_chat_rows, read_records)
from nemo_migrate.runtime.errors import RunError
from nemo_migrate.runtime.tokenizer import chat_text, load_tokenizer, train_local_tokenizer

CHAT = "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset"

# No {% generation %}: 0.7 locates each assistant turn by rendering conversation prefixes (header included).
PREFIX_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
                   "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}\n{% endif %}{% endfor %}"
                   "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
# Renders reasoning_content in its own block (for mask_reasoning_content) and the tools list.
REASONING_TEMPLATE = ("{{ bos_token }}{% if tools %}<|tools|>{% for t in tools %}{{ t['name'] }} {% endfor %}\n"
                      "{% endif %}"
                      "{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' %}{% generation %}"
                      "{% if m.get('reasoning_content') %}<think>{{ m['reasoning_content'] }}</think>{% endif %}"
                      "{{ m['content'] }}{{ eos_token }}{% endgeneration %}{% else %}{{ m['content'] }}\n{% endif %}"
                      "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _words(rng, a, b):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(a, b)))


def _chat_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        msgs = [{"role": "system", "content": _words(rng, 2, 5)}] if i % 3 == 0 else []
        for _ in range(1 + i % 3):
            msgs += [{"role": "user", "content": _words(rng, 2, 9)},
                     {"role": "assistant", "content": _words(rng, 1, 6)}]
        rows.append({"messages": msgs})
    rows.append({"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "alpha beta"},
                                   {"from": "gpt", "value": "gamma delta"}]})
    rows.append({"messages": [{"role": "user", "content": [{"type": "text", "text": "red"}, {"type": "text",
                                                                                              "text": "blue"}]},
                              {"role": "assistant", "content": "cyan", "reasoning_content": "tau upsilon phi"}],
                 "tools": json.dumps([{"name": "lookup"}])})
    return rows


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("chat")
    _write_jsonl(d / "train.jsonl", _chat_rows(30, 1))
    _write_jsonl(d / "val.jsonl", _chat_rows(6, 2))
    texts = [chat_text(m) for m in (r.get("messages") or [] for r in _chat_rows(30, 1))]
    train_local_tokenizer(texts + [" ".join(WORDS)], d / "tok", vocab_size=300)
    return d


def _tok(chat_dir, eos=False):
    return load_tokenizer(chat_dir / "tok", add_bos_token=False, add_eos_token=eos)


def _rows(chat_dir, name="train.jsonl"):
    return read_chat_rows(str(chat_dir / name), key="dataset.path_or_dataset_id")[0]


# ------------------------------------------------------------------------------------------------- chat labels


def test_local_tokenizer_chat_template_trains_only_assistant_turns_and_eos(chat_dir):
    tok = _tok(chat_dir)
    assert "{% generation %}" in open(chat_dir / "tok" / "chat_template.jinja").read().replace("-", "")
    ds = ChatDataset(_rows(chat_dir), tok)
    for i, s in enumerate(ds.samples[:10]):
        msgs = _chat_rows(30, 1)[i]["messages"]
        trained = tok.decode([t for t in s["labels"] if t != -100])
        assert trained == "".join(m["content"] + tok.eos_token for m in msgs if m["role"] == "assistant")
        assert s["input_ids"][0] == tok.bos_token_id and len(s["input_ids"]) == len(s["labels"])
    # mask_history keeps only the last assistant turn
    last = ChatDataset(_rows(chat_dir), _tok(chat_dir), mask_history=True).samples[2]
    assert tok.decode([t for t in last["labels"] if t != -100]) == _chat_rows(30, 1)[2]["messages"][-1]["content"] + \
        tok.eos_token


def test_prefix_template_header_and_reasoning_masks(chat_dir):
    """0.7 quirks mirrored: without {% generation %} each assistant turn is located by prefix renders, so its
    header is trained unless mask_generation_prompt; mask_reasoning_content drops the rendered reasoning block."""
    tok = _tok(chat_dir)

    def last_trained(**kw):
        s = ChatDataset(_rows(chat_dir), _tok(chat_dir), **kw).samples[-1]
        return tok.decode([t for t in s["labels"] if t != -100])

    eos = tok.eos_token
    assert last_trained(chat_template=PREFIX_TEMPLATE) == "<|assistant|>\ncyan" + eos
    assert last_trained(chat_template=PREFIX_TEMPLATE, mask_generation_prompt=True) == "cyan" + eos
    assert last_trained(chat_template=REASONING_TEMPLATE) == "<think>tau upsilon phi</think>cyan" + eos
    assert last_trained(chat_template=REASONING_TEMPLATE, mask_reasoning_content=True) == "cyan" + eos


_CASES = [dict(), dict(seq_length=24, truncation=True), dict(seq_length=80, padding="max_length", truncation=True),
          dict(mask_history=True), dict(chat_template=PREFIX_TEMPLATE),
          dict(chat_template=PREFIX_TEMPLATE, seq_length=30, truncation=True),
          dict(chat_template=PREFIX_TEMPLATE, mask_generation_prompt=True),
          dict(chat_template=REASONING_TEMPLATE), dict(chat_template=REASONING_TEMPLATE, mask_reasoning_content=True)]


@pytest.mark.automodel
@pytest.mark.parametrize("eos", [False, True])
def test_chat_dataset_equals_real_automodel(chat_dir, eos):
    pytest.importorskip("nemo_automodel")
    from nemo_automodel._transformers.tokenization.nemo_auto_tokenizer import NeMoAutoTokenizerWithBosEosEnforced
    from nemo_automodel.components.datasets.llm.chat_dataset import ChatDataset as RefChat

    for case in _CASES:
        ref_tok = NeMoAutoTokenizerWithBosEosEnforced.from_pretrained(str(chat_dir / "tok"), add_eos_token=eos)
        ref = RefChat(str(chat_dir / "train.jsonl"), ref_tok, **case)
        mine = ChatDataset(_rows(chat_dir), _tok(chat_dir, eos), **case)
        assert len(ref) == len(mine)
        for i in range(len(ref)):
            r, m = ref[i], mine[i]
            assert r.pop("___PAD_TOKEN_IDS___") == m.pop("___PAD_TOKEN_IDS___")
            assert r == m, (case, i)


@pytest.mark.automodel
def test_column_mapped_use_hf_chat_template_equals_real_automodel(chat_dir, data_dir):
    pytest.importorskip("nemo_automodel")
    from nemo_automodel._transformers.tokenization.nemo_auto_tokenizer import NeMoAutoTokenizerWithBosEosEnforced
    from nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset import \
        ColumnMappedTextInstructionDataset as RefCM

    cm = {"context": "prompt", "answer": "completion"}
    path = data_dir / "val.jsonl"
    for kw in (dict(), dict(seq_length=40, truncation=True)):
        ref = RefCM(str(path), cm, NeMoAutoTokenizerWithBosEosEnforced.from_pretrained(str(chat_dir / "tok")),
                    use_hf_chat_template=True, **kw)
        spec = _spec("column_mapped", {"path_or_dataset_id": str(path), "column_mapping": cm,
                                       "use_hf_chat_template": True, **kw})
        mine = build_dataset(spec, _tok(chat_dir), key="dataset", log=lambda m: None)
        for i in range(len(ref)):
            r, m = ref[i], mine[i]
            r.pop("___PAD_TOKEN_IDS___"), m.pop("___PAD_TOKEN_IDS___")
            assert r == m, (kw, i)


def test_bad_chat_rows_fail_naming_the_line(chat_dir, tmp_path):
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    for bad, match in (({"conversations": [{"from": "Human", "value": "a"}, {"from": "gpt", "value": "b"}]},
                        r"line 2: Unsupported ShareGPT role 'Human'.*case-sensitive"),
                       ({"messages": [{"role": "bot", "content": "a"}]}, "line 2: Unsupported role in messages: bot"),
                       ({"text": "no messages"}, "line 2: Each sample must contain a `messages` list"),
                       ({"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
                                      {"role": "assistant", "content": "c"}]}, "line 2: .*Only a single system")):
        p = _write_jsonl(tmp_path / "bad.jsonl", [good, bad])
        with pytest.raises(RunError, match=match) as e:
            ChatDataset(read_chat_rows(str(p), key="dataset.path_or_dataset_id")[0], _tok(chat_dir))
        assert str(p) in str(e.value)
    strict = PREFIX_TEMPLATE.replace("{{ bos_token }}", "{% if messages[0]['role'] != 'user' %}{{ raise_exception("
                                     "'conversations must start with a user turn') }}{% endif %}{{ bos_token }}")
    p = _write_jsonl(tmp_path / "bad.jsonl", [good, {"messages": [{"role": "assistant", "content": "b"}]}])
    with pytest.raises(RunError, match="line 2: the chat template cannot format it .*must start with a user turn"):
        ChatDataset(read_chat_rows(str(p), key="k")[0], _tok(chat_dir), chat_template=strict)
    p = tmp_path / "broken.jsonl"
    p.write_text(json.dumps(good) + "\n{not json\n\n" + json.dumps(good) + "\n")
    with pytest.raises(RunError, match="line 2 is not valid JSON"):
        read_chat_rows(str(p), key="k")
    rows, skipped = read_chat_rows(str(p), key="k", skip_invalid=True)
    assert (len(rows), skipped, rows[1].line) == (2, 1, 4)


def _spec(kind, params, packing=None, batch_size=1):
    from nemo_migrate.runtime.spec import DatasetSpec

    return DatasetSpec(kind=kind, params=params, shuffle=None, batch_size=batch_size, drop_last=False,
                       pin_memory=False, pad_seq_len_divisible=None, packing=packing)


def _chat_cfg(chat_dir, **dataset):
    cfg = base_config(chat_dir, chat_dir / "tok", peft=True)
    cfg["dataset"] = {"_target_": CHAT, "path_or_dataset_id": str(chat_dir / "train.jsonl"), **dataset}
    cfg["validation_dataset"] = {"_target_": CHAT, "path_or_dataset_id": str(chat_dir / "val.jsonl")}
    return cfg


@pytest.mark.parametrize("mutate,key,match", [
    (lambda c: c["dataset"].update(answer_only_loss_mask=True), "dataset.answer_only_loss_mask",
     "unknown key in `dataset`: ChatDatasetConfig has no such field"),
    (lambda c: c["dataset"].update(mask_prompt=True), "dataset.mask_prompt",
     r"unknown key in `dataset` \(a ChatDatasetConfig field\)"),
    (lambda c: c["dataset"].update(unshifted=True), "dataset.unshifted", "loss_mask instead of labels"),
    (lambda c: c["dataset"].update(chat_template="no/such/template.jinja"), "dataset.chat_template",
     "neither a Jinja template nor an existing file"),
    (lambda c: c.update(packed_sequence={"packed_sequence_size": 64, "packing_strategy": "neat"}),
     "packed_sequence.packing_strategy", "only THD packing"),
    (lambda c: c.update(packed_sequence={"packed_sequence_size": 64, "pad_to_multiple_of": 6}),
     "packed_sequence.pad_to_multiple_of", "must be divisible"),
    (lambda c: c.update(packed_sequence={"packed_sequence_size": 64, "pack_size": 3}), "packed_sequence.pack_size",
     "unknown key in `packed_sequence`"),
    (lambda c: (c.update(packed_sequence={"packed_sequence_size": 64}), c["step_scheduler"].update(local_batch_size=2),
                c["model"].update(attn_implementation="flash_attention_2")), "dataloader.batch_size",
     "flash_attention_2 need a batch of one pack"),
    (lambda c: (c.update(packed_sequence={"packed_sequence_size": 64}),
                c.update(dataset={"_target_": "nemo_automodel.components.datasets.llm.mock_iterable_dataset."
                                             "MockIterableDataset"})), "packed_sequence.packed_sequence_size",
     "packing needs a text dataset"),
])
def test_config_errors(chat_dir, mutate, key, match):
    from nemo_migrate.runtime.api import RunOptions
    from nemo_migrate.runtime.config import effective_config
    from nemo_migrate.runtime.spec import resolve

    cfg = _chat_cfg(chat_dir)
    mutate(cfg)
    p = write_yaml(chat_dir / "bad.yaml", cfg)
    with pytest.raises(RunError, match=match) as e:
        resolve(effective_config(p, [], None), RunOptions(config=p, proxy_model="tiny"), file=str(p), check_files=True)
    assert e.value.key == key


# ------------------------------------------------------------------------------------------------- packing


def _samples(n, seed, lo=3, hi=40):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        ids = [rng.randrange(5, 300) for _ in range(k)]
        cut = rng.randint(0, k - 1)
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


@pytest.mark.automodel
@pytest.mark.parametrize("size,max_packs,mult", [(32, None, 1), (48, None, 8), (32, 3, 1), (40, 2, 4), (64, 1, 1)])
def test_pack_samples_equals_real_pack_dataset(size, max_packs, mult):
    pytest.importorskip("nemo_automodel")
    from nemo_automodel.components.datasets.llm.packed_sequence import pack_dataset

    samples = _samples(40, size)
    ref = pack_dataset(copy.deepcopy(samples), split=None, packed_sequence_size=size, max_packs=max_packs,
                       padding_idx=7, pad_to_multiple_of=mult)
    mine, stats = pack_samples(copy.deepcopy(samples), packed_sequence_size=size, max_packs=max_packs, padding_idx=7,
                               pad_to_multiple_of=mult)
    assert len(ref) == len(mine) == stats["packs"]
    for r, m in zip(ref, mine):
        assert {k: list(r[k]) for k in m} == m
    if max_packs is None:  # samples longer than the pack are dropped, the others all land in a pack, in order
        kept = [s for s in samples if len(s["input_ids"]) <= size]
        assert [n for p in mine for n in p["seq_lens"]] == [len(s["input_ids"]) for s in kept]
        assert stats["dropped"] == len(samples) - len(kept)


@pytest.mark.automodel
def test_packed_chat_dataset_equals_real_automodel(chat_dir):
    pytest.importorskip("nemo_automodel")
    from nemo_automodel._transformers.tokenization.nemo_auto_tokenizer import NeMoAutoTokenizerWithBosEosEnforced
    from nemo_automodel.components.datasets.llm.chat_dataset import ChatDataset as RefChat
    from nemo_automodel.components.datasets.llm.packed_sequence import pack_dataset

    ref_tok = NeMoAutoTokenizerWithBosEosEnforced.from_pretrained(str(chat_dir / "tok"))
    ref = pack_dataset(RefChat(str(chat_dir / "train.jsonl"), ref_tok, seq_length=100, truncation=True), split=None,
                       packed_sequence_size=128, padding_idx=ref_tok.pad_token_id)
    mine = build_dataset(_spec("chat", {"path_or_dataset_id": str(chat_dir / "train.jsonl"), "seq_length": 100,
                                        "truncation": True}, packing={"packed_sequence_size": 128}),
                         _tok(chat_dir), key="dataset", log=lambda m: None)
    assert isinstance(mine, PackedDataset) and len(mine) == len(ref)
    for i in range(len(ref)):
        assert {k: list(ref[i][k]) for k in ("input_ids", "labels", "position_ids")} == \
            {k: v for k, v in mine[i].items() if not k.startswith("_")}


def _token_losses(model, batch):
    with torch.no_grad():
        kw = {"input_ids": batch["input_ids"], "use_cache": False}
        if "position_ids" in batch:
            kw["position_ids"] = batch["position_ids"]
        logits = model(**kw).logits.float()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none",
                                           ignore_index=-100)
    return ce[batch["labels"].flatten() != -100]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(data_dir, tok_dir, attn):
    """Every label token has the same loss packed (position ids restart per sample -> block-diagonal causal
    attention) as alone; without per-sample position ids the packed samples would see each other."""
    from nemo_migrate.runtime.data import default_collater

    tok = load_tokenizer(tok_dir, add_bos_token=False, add_eos_token=True)
    rows = read_records(str(data_dir / "train.jsonl"), key="k")[:24]
    ds = ColumnMappedDataset(mapped_texts(rows, {"context": "prompt", "answer": "completion"}, key="k"), tok)
    packed = PackedDataset(ds, packed_sequence_size=64, padding_idx=tok.pad_token_id)
    assert packed.stats["packed"] == len(ds) and 1 < len(packed) < len(ds)
    torch.manual_seed(0)
    model = tiny_llama(vocab=320).eval()
    model.config._attn_implementation = attn
    alone = torch.cat([_token_losses(model, default_collater([ds[i]])) for i in range(len(ds))])
    batch = default_collater([packed[i] for i in range(len(packed))])  # all packs in one batch of rows
    together = _token_losses(model, batch)
    assert together.numel() == alone.numel() == sum(sum(t != -100 for t in s["labels"]) for s in ds.samples)
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-5)
    crossing = _token_losses(model, {k: v for k, v in batch.items() if k != "position_ids"})
    assert (crossing - alone).abs().max() > 1e-3  # the check above is sensitive to cross-sample attention


# ------------------------------------------------------------------------------------------------- end to end


def test_run_chat_dataset_with_locally_trained_tokenizer(chat_dir, tmp_path, capsys):
    cfg = _chat_cfg(chat_dir, seq_length=96, truncation=True)  # no dataset.tokenizer: one is trained locally
    cfg["step_scheduler"].update(global_batch_size=4, local_batch_size=2, max_steps=3, val_every_steps=3)
    out = tmp_path / "run"
    assert run(write_yaml(tmp_path / "chat.yaml", cfg), out) == 0
    text = capsys.readouterr().out
    assert "trained a byte-level BPE tokenizer locally" in text and "chat template" in text
    tr = metrics(out)
    assert [r["step"] for r in tr] == [0, 1, 2] and all(r["num_label_tokens"] > 0 for r in tr)
    assert len(metrics(out, "val")) == 1
    tok = load_tokenizer(out / "tokenizer", add_bos_token=False, add_eos_token=False)
    assert "generation" in tok.chat_template


def test_run_packed_step_loss_equals_unpacked(data_dir, tok_dir, tmp_path, capsys):
    """One optimizer step over the same 12 samples: packed (packs of 128 tokens, one per micro-batch) and unpacked
    (12 micro-batches) report the same label-token count and step loss; validation packs too."""
    def cfg(packed: bool):
        c = base_config(data_dir, tok_dir, peft=False)
        c["dataset"]["limit_dataset_samples"] = 12
        c["dataloader"]["shuffle"] = False
        c["optimizer"]["lr"] = 0.0
        if packed:
            c["packed_sequence"] = {"packed_sequence_size": 128}
            c["step_scheduler"].update(global_batch_size=n_packs, local_batch_size=1, max_steps=2, val_every_steps=1)
        else:
            c["step_scheduler"].update(global_batch_size=12, local_batch_size=1, max_steps=1)
        return write_yaml(tmp_path / f"{'packed' if packed else 'plain'}.yaml", c)

    tok = load_tokenizer(tok_dir, add_bos_token=False, add_eos_token=True)
    rows = read_records(str(data_dir / "train.jsonl"), key="k")[:12]
    ds = ColumnMappedDataset(mapped_texts(rows, {"context": "prompt", "answer": "completion"}, key="k"), tok)
    n_packs = len(PackedDataset(ds, packed_sequence_size=128, padding_idx=tok.pad_token_id))
    assert 1 < n_packs < 12
    assert run(cfg(False), tmp_path / "plain") == 0
    assert run(cfg(True), tmp_path / "packed") == 0
    text = capsys.readouterr().out
    assert f"packing[dataset]: 12 samples into {n_packs} packs of 128 tokens" in text
    assert "packing[validation_dataset]: 12 samples into" in text and f"data: {n_packs} training packs" in text
    a, b = metrics(tmp_path / "plain")[0], metrics(tmp_path / "packed")[0]
    assert a["num_label_tokens"] == b["num_label_tokens"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert len(metrics(tmp_path / "packed")) == 2 and len(metrics(tmp_path / "packed", "val")) == 2

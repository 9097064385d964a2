"""ColumnMappedTextInstructionDataset semantics, BOS/EOS enforcement, the default collater and the sampler."""

import json

import pytest
import torch

from rt_helpers import has_automodel
from nemo_migrate.runtime.data import ColumnMappedDataset, DistributedSamplerOrder, MapLoader, default_collater, mapped_texts
from nemo_migrate.runtime.errors import RunError
from nemo_migrate.runtime.tokenizer import load_tokenizer


def test_prompt_is_space_joined_with_trailing_space():
    rows = [{"c": "ctx", "q": "why?", "a": "because"}, {"c": "only ctx", "a": "yes"}]
    assert mapped_texts(rows, {"context": "c", "question": "q", "answer": "a"}, key="dataset")[0] == \
        ("ctx why? ", "because")
    assert mapped_texts(rows[1:], {"context": "c", "answer": "a"}, key="dataset") == [("only ctx ", "yes")]
    with pytest.raises(RunError, match="'nope'"):
        mapped_texts(rows, {"context": "nope", "answer": "a"}, key="dataset")


def test_answer_only_labels_eos_and_shift(tok_dir):
    tok = load_tokenizer(tok_dir, add_bos_token=False, add_eos_token=True)
    prompt, answer = "Q: alpha beta ", "gamma delta"
    ds = ColumnMappedDataset([(prompt, answer)], tok)
    s = ds[0]
    full = tok(prompt + answer)["input_ids"]
    assert full[-1] == tok.eos_token_id  # add_eos_token: EOS appended
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"]) + (1 if tok.add_bos_token else 0)
    assert s["input_ids"] == full[:-1]
    expected = [(t if i >= n_prompt else -100) for i, t in enumerate(full)][1:]
    assert s["labels"] == expected and s["labels"][-1] == tok.eos_token_id
    assert s["attention_mask"] == [1] * len(s["input_ids"])
    no_eos = ColumnMappedDataset([(prompt, answer)], load_tokenizer(tok_dir, add_bos_token=False, add_eos_token=False))
    assert no_eos[0]["labels"][-1] != tok.eos_token_id  # 0.7 default: no EOS unless opted in


def test_truncation_padding_and_all_masked_samples_are_skipped(tok_dir):
    tok = load_tokenizer(tok_dir, add_bos_token=False, add_eos_token=True)
    long_prompt = "Q: " + " ".join(["alpha"] * 40) + " "
    pairs = [(long_prompt, "beta"), ("Q: x ", "gamma"), ("Q: y ", "delta")]
    ds = ColumnMappedDataset(pairs, tok, seq_length=8, truncation=True)
    assert ds.valid == [False, True, True] and len(ds) == 3
    assert ds[0] == ds[1]  # 0.7 serves the next sample in place of an all-masked one
    assert all(len(ds.samples[i]["input_ids"]) <= 8 for i in range(3))
    padded = ColumnMappedDataset(pairs[1:], tok, seq_length=12, padding="max_length", truncation=True)
    assert len(padded[0]["input_ids"]) == 12
    # 0.7 quirk, mirrored: the tokenizer pads to max_length, then the BOS/EOS wrapper appends EOS after the padding
    assert padded[0]["labels"][-1] == tok.eos_token_id and padded[0]["labels"][-2] == -100
    with pytest.raises(RunError, match="all labels masked"):
        ColumnMappedDataset(pairs[:1], tok, seq_length=8, truncation=True)


def test_default_collater_pads_to_longest():
    pad = {"input_ids": 7, "labels": -100, "attention_mask": 0}
    b = default_collater([{"input_ids": [1, 2, 3], "labels": [2, 3, 4], "attention_mask": [1, 1, 1],
                           "___PAD_TOKEN_IDS___": pad},
                          {"input_ids": [5], "labels": [6], "attention_mask": [1], "___PAD_TOKEN_IDS___": pad}])
    assert b["input_ids"].tolist() == [[1, 2, 3], [5, 7, 7]]
    assert b["labels"].tolist() == [[2, 3, 4], [6, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert default_collater([{"input_ids": [1]}], pad_seq_len_divisible=4)["input_ids"].shape == (1, 4)


@pytest.mark.parametrize("n,replicas,shuffle", [(10, 1, True), (10, 3, True), (9, 2, False), (16, 4, True)])
def test_sampler_matches_torch_distributed_sampler(n, replicas, shuffle):
    from torch.utils.data.distributed import DistributedSampler

    for rank in range(replicas):
        ref = DistributedSampler(list(range(n)), num_replicas=replicas, rank=rank, shuffle=shuffle, seed=42,
                                 drop_last=True)
        ref.set_epoch(3)
        mine = DistributedSamplerOrder(n, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=42)
        assert mine.indices(3) == list(ref) and len(mine) == len(ref)


def test_loader_resumes_mid_epoch():
    data = [{"input_ids": [i], "labels": [i]} for i in range(10)]
    mk = lambda: MapLoader(data, batch_size=2, sampler=DistributedSamplerOrder(10, num_replicas=1, rank=0,  # noqa: E731
                                                                              shuffle=True, seed=1))
    a = mk()
    a.set_epoch(1)
    full = [b["input_ids"].tolist() for b in a]
    b = mk()
    b.set_epoch(1)
    it = iter(b)
    first = [next(it)["input_ids"].tolist() for _ in range(2)]
    state = b.state_dict()
    c = mk()
    c.load_state_dict(state)
    c.set_epoch(1)
    assert first + [x["input_ids"].tolist() for x in c] == full


@pytest.mark.skipif(not has_automodel(), reason="nemo_automodel 0.7.0 not importable")
@pytest.mark.automodel
@pytest.mark.parametrize("bos,eos", [(False, False), (False, True), (True, True)])
def test_formatting_equals_real_automodel(tok_dir, data_dir, bos, eos):
    from nemo_automodel._transformers.tokenization.nemo_auto_tokenizer import NeMoAutoTokenizerWithBosEosEnforced
    from nemo_automodel.components.datasets.llm.formatting_utils import _add_pad_token, format_prompt_completion

    rows = [json.loads(x) for x in (data_dir / "train.jsonl").read_text().splitlines()][:24]
    pairs = [(r["prompt"] + " ", r["completion"]) for r in rows]
    for seq, pad, trunc in ((None, "do_not_pad", "do_not_truncate"), (40, "do_not_pad", "longest_first"),
                            (56, "max_length", True), (48, True, True)):
        ref = NeMoAutoTokenizerWithBosEosEnforced.from_pretrained(str(tok_dir), add_bos_token=bos, add_eos_token=eos)
        mine = ColumnMappedDataset(pairs, load_tokenizer(tok_dir, add_bos_token=bos, add_eos_token=eos),
                                   seq_length=seq, padding=pad, truncation=trunc)
        if ref.pad_token is None:
            ref.pad_token = ref.eos_token
        eos_id = ref.eos_token_id
        pad_id = _add_pad_token(ref) or eos_id
        for i, (p, a) in enumerate(pairs):
            r = format_prompt_completion(ref, p, a, eos_id, pad_id, seq_length=seq, padding=pad, truncation=trunc)
            assert {k: r[k] for k in ("input_ids", "labels", "attention_mask")} == mine.samples[i], (seq, pad, i)


def test_mock_loader_shapes_and_resume():
    from nemo_migrate.runtime.data import MockLoader

    a = MockLoader(vocab_size=50, seq_len=8, num_samples=5, batch_size=2, seed=3)
    batches = list(a)
    assert batches[0]["input_ids"].shape == (2, 8) and (batches[0]["labels"][:, -1] == -100).all()
    assert torch.equal(batches[0]["labels"][:, :-1], batches[0]["input_ids"][:, 1:])
    b = MockLoader(vocab_size=50, seq_len=8, num_samples=5, batch_size=2, seed=3)
    it = iter(b)
    next(it), next(it)
    c = MockLoader(vocab_size=50, seq_len=8, num_samples=5, batch_size=2, seed=3)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(list(c), batches[2:]))

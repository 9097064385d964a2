"""NeMo 1.0 (megatron_gpt_finetuning.py) and NeMo-Aligner (train_gpt_sft.py) front end: Hydra composition,
OmegaConf interpolation with provenance, mandatory values, and NeMo chat data conversion."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_migrate.convert import Options, convert
from nemo_migrate.data_convert import convert_file
from nemo_migrate.diagnostics import MigrateError

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "rules"


def _job(tmp_path, text, name="job.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = (FIX / "nemo1.yaml").read_text()


def _codes(ei):
    return [d.code for d in ei.value.diags.errors]


def _target(conv, path):
    return conv.variants[0].targets[path]


def test_interpolation_resolves_with_the_referenced_values_provenance(tmp_path):
    text = BASE.replace("      max_seq_length: 2048", "      max_seq_length: ${model.encoder_seq_length}")
    text = text.replace("  global_batch_size: 32\n", "  global_batch_size: 32\n  encoder_seq_length: 3072\n")
    conv = convert(Options(source=_job(tmp_path, text)))
    tv = _target(conv, "dataset.seq_length")
    assert tv.value == 3072
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "encoder_seq_length: 3072" in l)
    assert any(p.file == "job.yaml" and p.line == line for p in tv.provs), tv.provs


def test_relative_interpolation_and_string_interpolation(tmp_path):
    text = BASE.replace("      file_names: [/data/val.jsonl]", "      file_names: [/data/val.jsonl]\n      max_seq_length: ${..train_ds.max_seq_length}")
    text = text.replace("  explicit_log_dir: /results/llama2_lora", "  explicit_log_dir: /results/${name}-run")
    conv = convert(Options(source=_job(tmp_path, text)))
    assert _target(conv, "validation_dataset.seq_length").value == 2048
    assert _target(conv, "checkpoint.checkpoint_dir").value.startswith("/results/llama2_lora-run")


def test_interpolation_to_a_missing_key_is_an_error_at_its_line(tmp_path):
    text = BASE.replace("      max_seq_length: 2048", "      max_seq_length: ${model.encoder_seq_lenght}")
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=_job(tmp_path, text)))
    d = next(d for d in ei.value.diags.errors if d.code == "NM233")
    assert "encoder_seq_lenght" in d.message and d.file == "job.yaml" and d.line is not None


def test_interpolation_cycle_is_reported(tmp_path):
    text = BASE.replace("  global_batch_size: 32\n", "  global_batch_size: 32\n  a: ${model.b}\n  b: ${model.a}\n")
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=_job(tmp_path, text)))
    assert "NM233" in _codes(ei) and "cycle" in str(ei.value.diags.errors[0].message)


def test_mandatory_value_left_unset(tmp_path):
    text = BASE.replace("  restore_from_path: /models/llama2-7b.nemo", "  restore_from_path: ???")
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=_job(tmp_path, text)))
    d = next(d for d in ei.value.diags.errors if d.code == "NM230")
    assert "model.restore_from_path" in d.message and d.hint and "restore_from_path=" in d.hint


def test_hydra_override_forms(tmp_path):
    src = _job(tmp_path, BASE)
    conv = convert(Options(source=src, sets=["model.peft.lora_tuning.adapter_dim=64", "++model.optim.lr=3e-4", "trainer.max_steps=77"]))
    assert _target(conv, "peft.dim").value == 64
    assert _target(conv, "optimizer.lr").value == pytest.approx(3e-4)
    assert _target(conv, "step_scheduler.max_steps").value == 77
    # ~key deletes: without model.peft the job is a full fine-tune
    conv = convert(Options(source=src, sets=["~model.peft"]))
    assert not any(p.startswith("peft.") for p in conv.variants[0].targets)


def test_hydra_override_of_an_unknown_key_says_did_you_mean(tmp_path):
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=_job(tmp_path, BASE), sets=["trainer.max_step=10"]))
    d = next(d for d in ei.value.diags.errors if d.code == "NM231")
    assert "max_steps" in (d.hint or "") and "+trainer.max_step" in d.hint
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=_job(tmp_path, BASE), sets=["+trainer.max_steps=10"]))
    assert "NM231" in _codes(ei)  # '+' adds, it does not override


def test_hydra_overrides_from_run_sh_carry_their_line(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "lora.yaml").write_text(BASE)
    (tmp_path / "run.sh").write_text(
        "#!/bin/bash\n"
        "torchrun --nproc_per_node=4 /opt/NeMo/examples/nlp/language_modeling/tuning/megatron_gpt_finetuning.py \\\n"
        "    --config-path=conf --config-name=lora \\\n"
        "    model.micro_batch_size=2\n")
    conv = convert(Options(source=tmp_path))
    tv = _target(conv, "step_scheduler.local_batch_size")
    assert tv.value == 2 and any(p.file == "run.sh" for p in tv.provs)
    # torchrun's 4 processes vs the config's trainer.devices=8: Lightning would refuse; the config's value wins, with a warning
    assert conv.variants[0].nproc == 8 and "NM151" in [d.code for d in conv.diags.items]


def test_aligner_epochs_become_steps_from_the_local_file(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(10)))
    text = ("trainer:\n  devices: 1\n  sft:\n    max_epochs: 3\n    max_steps: -1\n"
            "model:\n  restore_from_path: /models/Meta-Llama-3-8B.nemo\n  data:\n    train_ds:\n      file_path: train.jsonl\n"
            "      global_batch_size: 4\n      micro_batch_size: 1\n    validation_ds:\n      file_path: train.jsonl\n")
    conv = convert(Options(source=_job(tmp_path, text, "sft.yaml")))
    tv = _target(conv, "step_scheduler.max_steps")
    assert tv.value == 3 * (10 // 4)


# ---------------------------------------------------------------------------------------------- chat data

def _chat_rows():
    return [
        {"system": "be brief", "mask": "User", "type": "VALUE_TO_TEXT",
         "conversations": [{"from": "User", "value": "hi"}, {"from": "Assistant", "value": "hello"},
                           {"from": "User", "value": "2+2?"}, {"from": "Assistant", "value": "4"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ]


def test_convert_data_maps_speakers_to_roles(tmp_path):
    src = tmp_path / "chat.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows()))
    n, diags = convert_file(src, tmp_path / "out.jsonl")
    assert n == 2 and not diags.has_errors
    rows = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert rows[0]["messages"][2]["content"] == "hello"
    assert rows[1] == _chat_rows()[1]


def test_convert_data_never_overwrites_without_force_and_reports_bad_lines(tmp_path):
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps(_chat_rows()[0]) + "\n{not json\n")
    dest = tmp_path / "out.jsonl"
    dest.write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert-data", str(src), str(dest)], capture_output=True, text=True)
    assert r.returncode == 1 and "exists" in r.stderr and "Traceback" not in r.stderr
    assert dest.read_text() == "keep me"
    r = subprocess.run([sys.executable, "-m", "nemo_migrate.cli", "convert-data", str(src), str(dest), "--force"], capture_output=True, text=True)
    assert r.returncode == 1 and ":2" in r.stderr and "Traceback" not in r.stderr
    assert dest.read_text() == "keep me"  # nothing written when a row is bad


def _chat_tokenizer():
    """A word-level tokenizer trained here, with a chat template that marks assistant turns for the loss mask."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = ["system", "user", "assistant", "be", "brief", "hi", "hello", "2", "+", "?", "4", "x", "y", ":"]
    tok.train_from_iterator([" ".join(words)] * 4, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}assistant : {% generation %}{{ m['content'] }} </s>"
                          "{% endgeneration %}{% else %}{{ m['role'] }} : {{ m['content'] }} {% endif %}{% endfor %}"
                          "{% if add_generation_prompt %}assistant : {% endif %}")
    return fast


def test_converted_chat_data_trains_only_assistant_turns_in_automodel_chat_dataset(tmp_path):
    """Automodel 0.7's own ChatDataset reads the converted file; the NeMo file as it was fails there."""
    pytest.importorskip("nemo_automodel")
    pytest.importorskip("tokenizers")
    from nemo_automodel.components.datasets.llm.chat_dataset import ChatDataset

    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps(_chat_rows()[0]) + "\n")
    convert_file(src, tmp_path / "out.jsonl")
    tok = _chat_tokenizer()
    ds = ChatDataset(str(tmp_path / "out.jsonl"), tok, seq_length=64)
    sample = ds[0]
    ids, labels = sample["input_ids"], sample["labels"]
    trained = [i for i, l in zip(ids, labels) if l != -100] or [l for l in labels if l != -100]
    words = {tok.convert_ids_to_tokens(t) for t in [l for l in labels if l != -100]}
    assert {"hello", "4"} <= words and not ({"hi", "brief", "user"} & words), words
    with pytest.raises(Exception):  # NeMo's capitalised speakers and top-level 'system' are not ShareGPT to 0.7
        ChatDataset(str(src), tok, seq_length=64)[0]

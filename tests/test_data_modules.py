"""NeMo 2 data modules beyond FineTuningDataModule: Dolly / Alpaca (NeMo's preprocessed JSONL cache), PreTrainingDataModule
(Megatron .bin/.idx -> Automodel's MegatronPretraining), the NeMo data modules that cannot be migrated, and user-defined
data modules (refused with a located error).  Class facts: NeMo 2.7.3 nemo/collections/llm/gpt/data/ (= main @ 8cfedd72)."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from nemo_migrate import knowledge, schema
from nemo_migrate.convert import Options, convert, write
from nemo_migrate.diagnostics import MigrateError

FIX = Path(__file__).parent / "fixtures" / "rules"
CACHE = "${NEMO_DATASETS_CACHE,$HOME/.cache/nemo/datasets}"
MEGATRON = "nemo_automodel.components.datasets.llm.megatron_dataset.MegatronPretraining"
COLUMN_MAPPED = "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset"

# nemo/collections/llm/gpt/data/__init__.py (NeMo 2.7.3): every data module it exports, plus the two HF ones of hf_dataset.py
NEMO_GPT_DATA_MODULES = ["AlpacaDataModule", "ChatDataModule", "DollyDataModule", "FineTuningDataModule", "HFDatasetDataModule",
                         "HFDatasetDataModulePacked", "HFMockDataModule", "MLPerfGovReportDataModule", "MockDataModule",
                         "PreTrainingDataModule", "SquadDataModule", "CustomRetrievalDataModule", "CustomReRankerDataModule",
                         "SpecterReRankerDataModule", "SquadHFDataModule", "HellaSwagHFDataModule"]
REFUSED = ["HFDatasetDataModule", "HFDatasetDataModulePacked", "HFMockDataModule", "MLPerfGovReportDataModule", "MockDataModule",
           "CustomRetrievalDataModule", "CustomReRankerDataModule", "SpecterReRankerDataModule", "SquadHFDataModule",
           "HellaSwagHFDataModule"]


def _tree(targets):
    root: dict = {}
    for path, tv in targets.items():
        cur = root
        *parents, leaf = path.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = tv.value
    return root


def _convert(factory: str, *sets: str, source: Path = FIX / "recipe.py"):
    conv = convert(Options(source=source, factory=factory, sets=list(sets)))
    v = conv.variants[0]
    return conv, v, _tree(v.targets), {o.path: o for o in v.outcomes}


def _errors(factory: str | None, *sets: str, source: Path = FIX / "recipe.py") -> list:
    with pytest.raises(MigrateError) as ei:
        convert(Options(source=source, factory=factory, sets=list(sets)))
    return ei.value.diags.errors


PRETRAIN = ("trainer.limit_val_batches=4", "trainer.val_check_interval=50")


# ---------------------------------------------------------------------------------------------- class specs


def test_every_nemo_data_module_is_known_and_mapped_or_refused():
    classes = knowledge.classes()
    for name in NEMO_GPT_DATA_MODULES:
        meta = classes[name].get("data")
        assert meta, f"{name}: no `data:` entry, so it would be refused as unknown"
        if meta.get("refuse"):
            assert meta.get("hint"), name
        else:
            assert meta["kind"] in ("sft", "squad", "chat", "files", "megatron"), name
        assert schema.resolve_class(f"nemo.collections.llm.gpt.data.{name}") == name or name.endswith("HFDataModule"), name
    assert sorted(n for n in NEMO_GPT_DATA_MODULES if classes[n]["data"].get("refuse")) == sorted(REFUSED)


def test_dolly_and_pretraining_signatures_follow_nemo_source():
    # positional order matters (recipe.py may pass arguments positionally): dolly.py:45-61, pre_training.py:170-199
    assert list(schema.spec("DollyDataModule").fields) == [
        "seq_length", "tokenizer", "micro_batch_size", "global_batch_size", "rampup_batch_size", "force_redownload", "delete_raw",
        "seed", "memmap_workers", "num_workers", "pin_memory", "persistent_workers", "packed_sequence_specs", "dataset_kwargs"]
    pre = schema.spec("PreTrainingDataModule").fields
    assert list(pre)[:5] == ["paths", "seq_length", "tokenizer", "micro_batch_size", "global_batch_size"]
    assert pre["paths"].required and pre["split"].default == "900,50,50" and pre["seed"].default == 1234
    assert pre["dataloader_type"].choices == ("single", "cyclic", "batch") and pre["dataloader_type"].default == "single"
    assert "dataset_root" not in schema.spec("DollyDataModule").fields  # NeMo fixes it: get_dataset_root("dolly")


# ---------------------------------------------------------------------------------------------- Dolly / Alpaca


def test_dolly_reads_nemos_preprocessed_files():
    conv, v, t, out = _convert("dolly_job()")
    assert t["dataset"]["_target_"] == COLUMN_MAPPED and t["validation_dataset"]["_target_"] == COLUMN_MAPPED
    assert t["dataset"]["path_or_dataset_id"] == f"{CACHE}/dolly/training.jsonl"
    assert t["validation_dataset"]["path_or_dataset_id"] == f"{CACHE}/dolly/validation.jsonl"
    # dolly.py:132 writes {"input", "output", "category"}; FineTuningDataModule's default template is "{input} {output}"
    assert t["dataset"]["column_mapping"] == {"context": "input", "answer": "output"}
    assert out["data._target_"].status == "exact" and "dolly.py:66" in out["data._target_"].reason
    assert "column_mapped_text_instruction_dataset.py" in out["data._target_"].reason
    pre = [n.text for n in v.notes if n.kind == "pre-step"]
    assert any("DollyDataModule.prepare_data" in p and "databricks/databricks-dolly-15k" in p for p in pre), pre


def test_alpaca_reads_its_own_cache_folder():
    _, _, t, out = _convert("alpaca_job()")
    assert t["dataset"]["path_or_dataset_id"] == f"{CACHE}/alpaca/training.jsonl"
    assert "alpaca.py:67" in out["data._target_"].reason


def test_dataset_cache_follows_the_jobs_environment(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    shutil.copy(FIX / "recipe.py", job / "recipe.py")
    (job / "run.sh").write_text("#!/bin/bash\nexport NEMO_DATASETS_CACHE=/lustre/nemo-datasets\n"
                                "torchrun --nproc-per-node=8 recipe.py --factory dolly_job\n")
    _, _, t, _ = _convert(None, source=job)
    assert t["dataset"]["path_or_dataset_id"] == "/lustre/nemo-datasets/dolly/training.jsonl"
    (job / "run.sh").write_text("#!/bin/bash\nexport NEMO_HOME=/scratch/nemo\ntorchrun --nproc-per-node=8 recipe.py --factory dolly_job\n")
    _, _, t, _ = _convert(None, source=job)
    assert t["dataset"]["path_or_dataset_id"] == "${NEMO_DATASETS_CACHE,/scratch/nemo/datasets}/dolly/training.jsonl"


def test_dolly_force_redownload_is_reported():
    _, _, _, out = _convert("dolly_job()", "data.force_redownload=True")
    assert out["data.force_redownload"].rule == "DAT014" and out["data.force_redownload"].status == "approximate"


def test_squad_with_its_own_dataset_root_reads_those_files():
    # squad.py:72 uses dataset_root when given, and prepare_data only downloads when training.jsonl is missing (:87-91)
    _, _, t, out = _convert("base()", "data=Config[llm.SquadDataModule]", "data.dataset_root=/data/my_squad",
                            "data.global_batch_size=8", "data.micro_batch_size=1")
    assert t["dataset"]["_target_"] == COLUMN_MAPPED and t["dataset"]["path_or_dataset_id"] == "/data/my_squad/training.jsonl"
    assert out["data._target_"].status == "exact"
    _, _, t, _ = _convert("base()", "data=Config[llm.SquadDataModule]", "data.global_batch_size=8", "data.micro_batch_size=1")
    assert t["dataset"]["_target_"].endswith("make_squad_dataset")


def test_cp_with_any_finetuning_subclass_needs_per_token_loss():
    # api._validate_config: isinstance(data, FineTuningDataModule) -> calculate_per_token_loss (Squad, Dolly, ... included)
    errs = _errors("dolly_job()", "trainer.strategy.context_parallel_size=2")
    assert "NM215" in [e.code for e in errs]


# ---------------------------------------------------------------------------------------------- PreTrainingDataModule


def test_pretraining_maps_to_megatron_pretraining():
    _, v, t, out = _convert("pretrain_job()", *PRETRAIN)
    ds, val = t["dataset"], t["validation_dataset"]
    assert ds["_target_"] == MEGATRON and val["_target_"] == MEGATRON
    assert ds["splits_to_build"] == "train" and val["splits_to_build"] == "validation"
    assert ds["paths"] == ["30", "/data/a_text_document", "70", "/data/b_text_document"] == val["paths"]
    assert ds["split"] == "99,1,0" and ds["seq_length"] == 2048 and ds["seed"] == 1234 and ds["index_mapping_dir"] == "/data/index"
    assert "truncation" not in ds and "column_mapping" not in ds and "limit_dataset_samples" not in val
    # NeMo: (max_steps // val_check_interval + 1) x limit_val_batches x GBS = (100 // 50 + 1) x 4 x 8 (pre_training.py:295-296)
    assert val["num_val_samples"] == 96
    assert t["dataloader"]["dataloader_type"] == "single" and "shuffle" not in t["dataloader"]
    assert out["data.paths"].rule == "DAT015" and out["data.paths"].status == "exact"
    assert out["data._target_"].status == "approximate"


def test_pretraining_single_path_and_split_dicts(tmp_path):
    # a lone string is a prefix in NeMo (wrapped in a list, pre_training.py:201-202); Automodel would glob / read JSON
    _, _, t, out = _convert("pretrain_job()", *PRETRAIN, "data.paths=/data/blend.json")
    assert t["dataset"]["paths"] == ["/data/blend.json"] and "one-element list" in out["data.paths"].reason
    paths = "data.paths={'train': ['/d/tr'], 'validation': ['/d/va'], 'test': ['/d/te']}"
    _, _, t, _ = _convert("pretrain_job()", paths, "trainer.limit_val_batches=1.0")
    assert t["dataset"]["paths"] == {"train": ["/d/tr"], "validation": ["/d/va"], "test": ["/d/te"]}
    assert "split" not in t["dataset"]  # ignored with per-split paths, in both
    assert t["validation_dataset"]["trainer_limit_val_batches"] == 1.0  # the whole validation split, as NeMo
    assert "num_val_samples" not in t["validation_dataset"]


def test_pretraining_checks_nemo_itself_makes():
    assert "NM263" in [e.code for e in _errors("pretrain_job()")]  # limit_val_batches None -> 1.0 with one blend: NeMo asserts
    errs = _errors("pretrain_job()", "data.paths={'train': ['/d/tr']}")
    assert "NM262" in [e.code for e in errs]
    errs = _errors("pretrain_job()", *PRETRAIN, "data.num_train_samples=10")
    assert "NM264" in [e.code for e in errs]
    for bad in ("data.paths=123", "data.paths=[]", "data.paths=['30', 5]"):
        assert "NM262" in [e.code for e in _errors("pretrain_job()", *PRETRAIN, bad)], bad
    _convert("pretrain_job()", *PRETRAIN, "data.paths=[30, '/a', 70, '/b']")  # numeric weights are fine


def test_pretraining_unsupported_settings():
    _, _, _, out = _convert("pretrain_job()", *PRETRAIN, "data.dataloader_type=batch", "data.reset_position_ids=True")
    assert out["data.dataloader_type"].status == "unsupported"
    assert out["data.reset_position_ids"].rule == "DAT017" and out["data.reset_position_ids"].status == "unsupported"


# ---------------------------------------------------------------------------------------------- refusals


def _user_job(tmp_path: Path, body: str) -> Path:
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    (job / "recipe.py").write_text(textwrap.dedent('''\
        import nemo_run as run
        from nemo.collections import llm
        from mypkg.data import MyDataModule


        class LocalData:
            pass


        def job() -> run.Partial:
            recipe = llm.llama3_8b.finetune_recipe(dir="/r", name="u", num_nodes=1, num_gpus_per_node=8, peft_scheme="lora")
        ''') + textwrap.indent(textwrap.dedent(body), "    ") + textwrap.dedent('''\
            recipe.trainer.max_steps = 10
            return recipe


        if __name__ == "__main__":
            run.cli.main(llm.finetune, default_factory=job)
        '''))
    return job / "recipe.py"


@pytest.mark.parametrize("body,cls", [
    ('recipe.data = run.Config(MyDataModule, root="/x", global_batch_size=8, micro_batch_size=1)\n', "mypkg.data.MyDataModule"),
    ("recipe.data = run.Config(LocalData)\n", "LocalData"),
])
def test_user_defined_data_module_is_refused_at_its_line(tmp_path, body, cls):
    src = _user_job(tmp_path, body)
    errs = [e for e in _errors(None, source=src) if e.code == "NM260"]
    assert errs, "a data module the compiler cannot read must stop the conversion"
    e = errs[0]
    assert cls in e.message and e.file == "recipe.py" and e.line == 12
    assert "FineTuningDataModule" in e.hint and "dataset: section by hand" in e.hint


def test_unknown_data_class_from_the_command_line_is_refused():
    errs = _errors("base()", "data=Config[mypkg.MyData]")
    assert [e for e in errs if e.code == "NM260" and "mypkg.MyData" in e.message]
    errs = _errors("base()", "data=Config[llm.LoRA]")
    assert [e for e in errs if e.code == "NM260" and "not a data module" in e.message]


@pytest.mark.parametrize("cls", REFUSED)
def test_nemo_data_modules_without_a_mapping_are_refused(cls):
    spec = schema.spec(cls)
    sets = [f"data=Config[{spec.aliases[0]}]"] + [f"data.{f}={'x' if fs.type in ('any', 'str') else 1}"
                                                   for f, fs in spec.fields.items() if fs.required]
    errs = [e for e in _errors("base()", *sets) if e.code == "NM261"]
    assert errs and cls in errs[0].message and errs[0].hint


# ---------------------------------------------------------------------------------------------- real Automodel 0.7


def _automodel_check():
    pytest.importorskip("nemo_automodel", reason="nemo-automodel is not installed (see requirements/automodel-check.txt)")
    tests = str(Path(__file__).resolve().parent)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import automodel_check

    return automodel_check


@pytest.mark.parametrize("factory,sets", [
    ("dolly_job()", ()),
    ("alpaca_job()", ()),
    ("pretrain_job()", PRETRAIN),
    ("pretrain_job()", ("data.paths={'train': ['/d/tr'], 'validation': ['/d/va'], 'test': ['/d/te']}", "trainer.limit_val_batches=1.0")),
], ids=["dolly", "alpaca", "pretraining-blend", "pretraining-per-split"])
def test_real_automodel_accepts_the_dataset_sections(tmp_path, factory, sets):
    amc = _automodel_check()
    conv = convert(Options(source=FIX / "recipe.py", factory=factory, sets=list(sets)))
    write(conv, tmp_path / "out", force=True)
    report = amc.run_checks(tmp_path / "out" / conv.variants[0].output)
    assert not report.problems, report.problems
    want = "MegatronPretrainingConfig" if factory.startswith("pretrain") else "ColumnMappedTextInstructionDatasetConfig"
    assert report.info["dataset_config"] == want and report.info["validation_datasets"] == {"default": want}


def test_automodel_expands_the_dataset_cache_path(tmp_path, monkeypatch):
    pytest.importorskip("nemo_automodel")
    from nemo_automodel.components.config.loader import load_yaml_config

    conv = convert(Options(source=FIX / "recipe.py", factory="dolly_job()"))
    write(conv, tmp_path / "out", force=True)
    cfg = tmp_path / "out" / conv.variants[0].output
    monkeypatch.delenv("NEMO_DATASETS_CACHE", raising=False)
    monkeypatch.setenv("HOME", "/home/u")
    assert str(load_yaml_config(str(cfg)).dataset.path_or_dataset_id) == "/home/u/.cache/nemo/datasets/dolly/training.jsonl"
    monkeypatch.setenv("NEMO_DATASETS_CACHE", "/cache")
    assert str(load_yaml_config(str(cfg)).validation_dataset.path_or_dataset_id) == "/cache/dolly/validation.jsonl"


def test_automodel_builds_nemos_train_and_validation_sizes(tmp_path):
    """Build the emitted MegatronPretraining sections with Automodel 0.7's own code on a tiny .bin/.idx blend: the train
    split has max_steps x GBS samples and the validation split NeMo's (steps // val_check_interval + 1) x limit x GBS."""
    pytest.importorskip("nemo_automodel")
    import numpy as np
    import torch

    from nemo_automodel.components.config.loader import load_yaml_config
    from nemo_automodel.components.datasets.llm.megatron.indexed_dataset import IndexedDatasetBuilder
    from nemo_automodel.components.datasets.llm.megatron.megatron_utils import compile_helper
    from nemo_automodel.components.datasets.loader import DatasetBuildSchedule, make_dataset_config

    try:
        compile_helper()
    except Exception as e:  # noqa: BLE001  (needs a C++ compiler and ninja)
        pytest.skip(f"Automodel's Megatron helpers do not build here: {e}")
    rng = np.random.RandomState(0)
    for name, ndocs in (("a", 120), ("b", 80)):
        b = IndexedDatasetBuilder(str(tmp_path / f"{name}.bin"), dtype=np.int32)
        for _ in range(ndocs):
            n = int(rng.randint(5, 100))
            b.add_document(torch.tensor(list(rng.randint(3, 1000, size=n)) + [2]), [n + 1])
        b.finalize(str(tmp_path / f"{name}.idx"))
    paths = f"data.paths=['30','{tmp_path / 'a'}','70','{tmp_path / 'b'}']"
    conv = convert(Options(source=FIX / "recipe.py", factory="pretrain_job()",
                           sets=[paths, "data.seq_length=64", "data.index_mapping_dir=None", "trainer.max_steps=20",
                                 "trainer.val_check_interval=5", "trainer.limit_val_batches=2", "data.split=90,8,2"]))
    write(conv, tmp_path / "out", force=True)
    cfg = load_yaml_config(str(tmp_path / "out" / conv.variants[0].output))  # no index cache: that needs a process group

    class Tok:
        pad_token_id, eos_token_id, name_or_path = 0, 2, "tok"

    def build(section: str):
        d = dict(cfg.get(section).to_dict())
        target = d.pop("_target_")
        d.pop("tokenizer", None)
        ss = cfg.step_scheduler
        sched = DatasetBuildSchedule(local_batch_size=ss.local_batch_size, global_batch_size=ss.global_batch_size,
                                     max_steps=ss.max_steps, val_check_interval=ss.get("val_every_steps"))
        return make_dataset_config(target, d).build(tokenizer=Tok(), training_schedule=sched)

    train, val = build("dataset"), build("validation_dataset")
    assert len(train) == 20 * 8
    assert len(val) == (20 // 5 + 1) * 2 * 8  # Automodel's own formula would give (20 // 5) x 2 x 8 = 64
    sample = train[0]
    assert sample["input_ids"].shape == (64,) and torch.equal(sample["labels"][:-1], sample["input_ids"][1:])

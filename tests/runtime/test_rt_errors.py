"""Bad YAML for the runtime fails with one clear paragraph (file, key, expected vs found, hint) before training."""

import time

import pytest

from rt_helpers import run


def _fails(capsys, cfg, tmp_path, **kw):
    t = time.time()
    code = run(cfg, tmp_path / "run", **kw)
    err = capsys.readouterr().err
    assert code == 1, err
    assert time.time() - t < 20
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained
    assert "Traceback" not in err
    assert err.count("\n") <= 2, err  # one paragraph
    return err


def test_unknown_key_in_strict_section(cfg_factory, tmp_path, capsys):
    cfg = cfg_factory(mutate=lambda c: c["step_scheduler"].update(max_step=10))
    err = _fails(capsys, cfg, tmp_path)
    assert str(cfg) in err and "step_scheduler.max_step" in err and "unknown key" in err
    assert "did you mean `max_steps`" in err


@pytest.mark.parametrize("section,key", [("peft", "rank"), ("lr_scheduler", "warmup_steps"),
                                         ("checkpoint", "save_top_k"), ("nemo_compat", "tied_a"),
                                         ("distributed", "backend"), ("dataloader", "workers")])
def test_unknown_keys_elsewhere(cfg_factory, tmp_path, capsys, section, key):
    def m(c):
        c.setdefault(section, {})[key] = 1
    err = _fails(capsys, cfg_factory(mutate=m), tmp_path)
    assert f"{section}.{key}" in err


def test_missing_data_file(cfg_factory, tmp_path, capsys):
    cfg = cfg_factory(mutate=lambda c: c["dataset"].update(path_or_dataset_id="/no/such/train.jsonl"))
    err = _fails(capsys, cfg, tmp_path)
    assert "dataset.path_or_dataset_id" in err and "/no/such/train.jsonl" in err and "not found" in err
    assert "--set dataset.path_or_dataset_id=" in err


def test_hub_dataset_id_is_refused(cfg_factory, tmp_path, capsys):
    cfg = cfg_factory(mutate=lambda c: c["validation_dataset"].update(path_or_dataset_id="rajpurkar/squad"))
    assert "Hub dataset id" in _fails(capsys, cfg, tmp_path)


def test_world_size_not_divisible(cfg_factory, tmp_path, capsys):
    cfg = cfg_factory(mutate=lambda c: c["distributed"].update(tp_size=3))
    err = _fails(capsys, cfg, tmp_path, nproc=2)
    assert "world size 2" in err and "tp_size" in err and "--nproc-per-node" in err


def test_global_batch_not_divisible(cfg_factory, tmp_path, capsys):
    cfg = cfg_factory(mutate=lambda c: c["step_scheduler"].update(global_batch_size=6, local_batch_size=4))
    assert "global_batch_size" in _fails(capsys, cfg, tmp_path)


@pytest.mark.parametrize("key,val,words", [("pp_size", 2, "pipeline"), ("cp_size", 2, "context parallelism")])
def test_unimplemented_parallelism(cfg_factory, tmp_path, capsys, key, val, words):
    def m(c):
        c["distributed"][key] = val
        c["distributed"]["pipeline"] = {}
    err = _fails(capsys, cfg_factory(mutate=m), tmp_path, nproc=2)
    assert words in err and f"distributed.{key}" in err


def test_bad_dtype_and_missing_model(cfg_factory, tmp_path, capsys):
    err = _fails(capsys, cfg_factory("a.yaml", mutate=lambda c: c["model"].update(dtype="fp32")), tmp_path)
    assert "model.dtype" in err and "'fp32'" in err and "float32" in err
    err = _fails(capsys, cfg_factory("b.yaml"), tmp_path, proxy=None)
    assert "meta-llama/Llama-3.2-1B" in err and "--proxy-model" in err


def test_0_7_value_errors(cfg_factory, tmp_path, capsys):
    def m(c):
        c["peft"]["match_all_linear"] = True
    assert "match_all_linear" in _fails(capsys, cfg_factory("m.yaml", mutate=m), tmp_path)
    def w(c):
        c["lr_scheduler"] = {"lr_warmup_steps": 10, "lr_decay_steps": 5}
    err = _fails(capsys, cfg_factory("w.yaml", mutate=w), tmp_path)
    assert "lr_warmup_steps < lr_decay_steps" in err


def test_unwritable_checkpoint_dir(cfg_factory, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = cfg_factory(ckpt=True, mutate=lambda c: c["checkpoint"].update(checkpoint_dir=str(blocker / "ckpt")))
    err = _fails(capsys, cfg, tmp_path)
    assert "checkpoint.checkpoint_dir" in err and "cannot write" in err


def test_column_missing_in_data(cfg_factory, tmp_path, capsys):
    cfg = cfg_factory(mutate=lambda c: c["dataset"].update(column_mapping={"context": "input", "answer": "output"}))
    err = _fails(capsys, cfg, tmp_path)
    assert "'input'" in err and "column_mapping.context" in err and "prompt" in err


def test_fp8_filter_fqns_that_is_not_module_names(cfg_factory, tmp_path, capsys):
    """`--set fp8.filter_fqns=7` was a TypeError ("internal error"): a value a user wrote gets a named error."""
    cfg = cfg_factory(mutate=lambda c: c.update(fp8={"enabled": True, "filter_fqns": 7}))
    err = _fails(capsys, cfg, tmp_path)
    assert "fp8.filter_fqns" in err and "list of module names" in err and "internal error" not in err

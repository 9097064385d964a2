"""Which model the migrated job trains is never decided silently (issue 17, item 3).

NeMo builds the recipe's model config and loads the restore checkpoint's weights into it
(MegatronStrategy.selective_restore); a restore checkpoint of another shape stops NeMo with dist_checkpointing's
'Global shape mismatch'.  So: recipe and restore path of different shapes -> NM504 error (nothing written); same
shape but another model -> NM504 warning naming the one that won; a --model that is no model -> NM503 error."""
from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nemo_migrate.cli import app
from nemo_migrate.convert import Options, convert
from nemo_migrate.diagnostics import MigrateError
from nemo_migrate.rules.transforms import model as model_rules

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
TINY_CKPT = ROOT / "tests" / "fixtures" / "nemo2_ckpt" / "llama-gqa-fp32" / "ckpt"
RESTORE_70B = "/mount/models/llama-3_3-70b-instruct_v0.0.1"


def _seed(tmp_path: Path, factory: str = "llama31_70b", restore: str | None = None) -> Path:
    job = tmp_path / "job"
    shutil.copytree(SEED, job)
    rp = job / "recipe.py"
    rp.write_text(rp.read_text().replace("llm.llama31_70b.finetune_recipe", f"llm.{factory}.finetune_recipe"))
    if restore is not None:
        for y in job.glob("config-*.yaml"):
            y.write_text(y.read_text().replace(RESTORE_70B, restore))
    return job


def _run(job: Path, **kw):
    """(conversion or None, the diagnostics)."""
    try:
        conv = convert(Options(source=job / "config-fp16.yaml", recipe=job / "recipe.py", factory="migration_recipe()", **kw))
    except MigrateError as e:
        return None, e.diags.items
    return conv, conv.diags.items


def _codes(items, code):
    return [d for d in items if d.code == code]


def _model(conv) -> str:
    return conv.variants[0].targets["model.pretrained_model_name_or_path"].value


def test_seed_job_recipe_and_restore_agree():
    """llama31_70b with a Llama-3.3-70B-Instruct checkpoint: the same architecture, nothing to say."""
    conv, items = _run(SEED)
    assert conv is not None and not _codes(items, "NM504")
    assert _model(conv) == "meta-llama/Llama-3.3-70B-Instruct"


def test_8b_recipe_with_70b_restore_path_is_an_error_at_the_restore_path(tmp_path):
    conv, items = _run(_seed(tmp_path, "llama3_8b"))
    assert conv is None
    (d,) = _codes(items, "NM504")
    assert d.severity == "error" and d.file.endswith("config-fp16.yaml") and d.line == 41 and d.key == "resume.restore_config.path"
    for part in ("Llama3Config8B", "llm.llama3_8b", "meta-llama/Meta-Llama-3-8B", "meta-llama/Llama-3.3-70B-Instruct",
                 "hidden 4096 vs 8192", "layers 32 vs 80", "selective_restore", "Global shape mismatch"):
        assert part in d.message, part
    assert "--model" in d.hint


def test_the_cli_writes_nothing_for_that_job(tmp_path):
    job = _seed(tmp_path, "llama3_8b")
    r = CliRunner().invoke(app, ["convert", str(job), "-o", str(tmp_path / "out")])
    assert r.exit_code == 1 and "NM504" in r.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_model_decides_and_the_mismatch_becomes_a_warning(tmp_path):
    conv, items = _run(_seed(tmp_path, "llama3_8b"), model="meta-llama/Meta-Llama-3-8B-Instruct")
    assert conv is not None and _model(conv) == "meta-llama/Meta-Llama-3-8B-Instruct"
    (d,) = _codes(items, "NM504")
    assert d.severity == "warning" and "--model meta-llama/Meta-Llama-3-8B-Instruct decides" in d.message


def test_same_shape_other_model_is_a_warning_naming_the_winner(tmp_path):
    """Llama 3 8B's config (no RoPE scaling) with Llama 3.1 8B weights: NeMo trained them under Llama3Config8B."""
    conv, items = _run(_seed(tmp_path, "llama3_8b", restore="nemo://meta-llama/Llama-3.1-8B"))
    assert conv is not None and _model(conv) == "meta-llama/Llama-3.1-8B"
    (d,) = [x for x in _codes(items, "NM504") if x.file and x.file.endswith("config-fp16.yaml")]
    assert d.severity == "warning" and "Llama3Config8B" in d.message and "Llama31Config8B" in d.message
    assert "restore path won" in d.message


def test_instruct_checkpoint_of_the_recipes_model_is_fine(tmp_path):
    conv, items = _run(_seed(tmp_path, "llama3_8b", restore="nemo://meta-llama/Meta-Llama-3-8B-Instruct"))
    assert conv is not None and not _codes(items, "NM504")


def test_a_local_nemo2_checkpoint_of_another_shape(tmp_path):
    """A checkpoint readable here: its context/model.yaml (inspect) gives the shape."""
    conv, items = _run(_seed(tmp_path, "llama3_8b", restore=str(TINY_CKPT)))
    assert conv is None
    (d,) = [x for x in _codes(items, "NM504") if x.file and x.file.endswith("config-fp16.yaml")]
    assert d.severity == "error" and "NeMo 2 checkpoint" in d.message and "hidden 4096 vs" in d.message


@pytest.mark.parametrize("value, says", [
    ("/no/such/dir", "no such directory"),
    ("./models/missing", "no such directory"),
    ("not a model id!!", "nor a valid Hugging Face repo id"),
    ("org/name/extra", "no such directory"),
    ("meta-llama/Llama--3", "nor a valid Hugging Face repo id"),
])
def test_bad_model_values_are_errors_and_never_written(tmp_path, value, says):
    conv, items = _run(SEED, model=value)
    assert conv is None
    (d,) = _codes(items, "NM503")
    assert d.severity == "error" and says in d.message and "--model" in d.hint
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["convert", str(SEED), "-o", str(out), "--model", value])
    assert r.exit_code == 1 and "NM503" in r.output and not (out / "config-fp16.yaml").exists()


def test_a_directory_without_config_json_is_not_a_model(tmp_path):
    d = tmp_path / "weights"
    d.mkdir()
    conv, items = _run(SEED, model=str(d))
    assert conv is None and "no config.json" in _codes(items, "NM503")[0].message
    conv, items = _run(SEED, model=str(TINY_CKPT))  # a NeMo 2 checkpoint: the hint names convert-checkpoint
    assert conv is None and "convert-checkpoint" in _codes(items, "NM503")[0].hint


def test_a_local_hf_directory_is_taken_and_its_shape_compared(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 28672,
                                               "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}))
    conv, items = _run(SEED, model=str(d))
    assert conv is not None and _model(conv) == str(d) and not _codes(items, "NM503") and not _codes(items, "NM504")
    (d / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                               "num_attention_heads": 4, "vocab_size": 128256}))
    conv, items = _run(SEED, model=str(d))
    assert conv is not None
    (w,) = _codes(items, "NM504")
    assert w.severity == "warning" and "layers 80 vs 2" in w.message and "--model won" in w.message


def test_valid_repo_ids_pass():
    for ok in ("meta-llama/Llama-3.1-8B", "gpt2", "Qwen/Qwen2.5-7B-Instruct", "org_1/name.v2"):
        assert model_rules._repo_id_problem(ok) is None


def test_fallback_validator_agrees_with_huggingface_hub(monkeypatch):
    values = ["meta-llama/Llama-3.1-8B", "gpt2", "not a model id!!", "a/b/c", "x--y", "a..b", "name.git", "-lead", "ok_name",
              "n" * 97, "org/" + "n" * 96, ".hidden"]
    with_hub = {v: model_rules._repo_id_problem(v) is None for v in values}
    real_import = builtins.__import__

    def no_hub(name, *a, **kw):
        if name.startswith("huggingface_hub"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    assert {v: model_rules._repo_id_problem(v) is None for v in values} == with_hub
    assert with_hub["meta-llama/Llama-3.1-8B"] and not with_hub["not a model id!!"]


def test_a_model_config_class_set_in_recipe_py_is_the_recipes_model(tmp_path):
    """recipe.model.config = run.Config(llm.Llama31Config8B) on the 70B factory: the class set at recipe.py:24 is what
    NeMo builds, so the 70B restore path cannot load into it."""
    job = _seed(tmp_path)
    rp = job / "recipe.py"
    rp.write_text(rp.read_text().replace("    recipe.log.tensorboard = None\n",
                                         "    recipe.log.tensorboard = None\n    recipe.model.config = run.Config(llm.Llama31Config8B)\n"))
    conv, items = _run(job)
    assert conv is None
    (d,) = _codes(items, "NM504")
    assert d.severity == "error" and "Llama31Config8B (recipe.py:24" in d.message and "meta-llama/Llama-3.1-8B" in d.message


TINY_SETS = ["model.config.num_layers=2", "model.config.hidden_size=32", "model.config.ffn_hidden_size=48",
             "model.config.num_attention_heads=4", "model.config.num_query_groups=2"]


def test_model_config_overrides_are_what_nemo_builds(tmp_path):
    """model.config.* set in the job change the recipe's model: sized like the checkpoint, NeMo loads it (the vocabulary
    follows the checkpoint's tokenizer, RestoreConfig.load_artifacts), so nothing is said; one size off is the error."""
    sets = [f"resume.restore_config.path={TINY_CKPT}"]
    conv, items = _run(SEED, sets=sets + TINY_SETS)
    assert conv is not None and not _codes(items, "NM504")
    assert _model(conv) == f"{TINY_CKPT}-hf"  # the local checkpoint, converted by the pre-step
    conv, items = _run(SEED, sets=sets + TINY_SETS[1:])
    assert conv is None
    (d,) = _codes(items, "NM504")
    assert d.severity == "error" and "layers 80 vs 2" in d.message and "hidden_size from --set model.config.hidden_size=32" in d.message
    assert "vocab" not in d.message

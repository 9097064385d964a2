"""--nemo-version: NeMo 2.0 .. 2.7 read the same job differently (mappings/nemo2/releases.yaml, versions.yaml)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nemo_migrate.convert import Options, convert
from nemo_migrate.diagnostics import MigrateError

ROOT = Path(__file__).resolve().parent.parent
WHEELS = Path("/tmp/nemowheels")

RECIPE = """
import nemo_run as run
from nemo.collections import llm
from nemo.collections.llm.recipes.precision.mixed_precision import bf16_with_mxfp8_mixed

def job():
    recipe = llm.{name}.finetune_recipe(peft_scheme="lora", num_gpus_per_node=1)
    recipe.data = run.Config(llm.FineTuningDataModule, dataset_root="/d", global_batch_size=8, micro_batch_size=1)
    recipe.trainer.max_steps = 100
    {body}
    return recipe

run.cli.main(llm.finetune, default_factory=job)
"""


def _job(tmp_path: Path, name: str = "llama3_8b", body: str = "pass", run_sh: str | None = None) -> Path:
    (tmp_path / "recipe.py").write_text(textwrap.dedent(RECIPE).replace("{name}", name).replace("{body}", body))
    if run_sh:
        (tmp_path / "run.sh").write_text(run_sh)
    return tmp_path


def _targets(job: Path, release: str | None = None, **kw) -> dict:
    conv = convert(Options(source=job, nemo_version=release, **kw))
    return {p: t.value for p, t in conv.variants[0].targets.items()} | {"_conv": conv}


def _errors(job: Path, release: str | None = None, **kw) -> list:
    with pytest.raises(MigrateError) as e:
        convert(Options(source=job, nemo_version=release, **kw))
    return e.value.diags.errors


def test_default_is_the_latest_release_and_the_report_says_so(tmp_path):
    t = _targets(_job(tmp_path))
    conv = t["_conv"]
    assert conv.nemo_version == "2.7" and conv.to_json()["nemo_version"] == "2.7"
    assert "Read as NeMo 2.7" in conv.files["migration-report.md"]
    assert "read as NeMo 2.7" in conv.files["recipe.yaml" if "recipe.yaml" in conv.files else next(iter(conv.files))] or \
        any("read as NeMo 2.7" in text for name, text in conv.files.items() if name.endswith(".yaml"))


def test_unknown_release_is_refused(tmp_path):
    errs = _errors(_job(tmp_path), "3.0")
    assert errs[0].code == "NM016" and "2.0, 2.1" in errs[0].hint


def test_a_recipe_the_release_does_not_ship(tmp_path):
    errs = _errors(_job(tmp_path, "qwen3_8b"), "2.3")
    assert errs[0].code == "NM115" and "2.4" in errs[0].message and "--nemo-version" in errs[0].hint
    assert _targets(_job(tmp_path, "qwen3_8b"), "2.4")["peft.dim"] > 0


def test_lora_dropout_position_default_was_post_in_2_0(tmp_path):
    assert _targets(_job(tmp_path), "2.0")["peft.dropout_position"] == "post"
    assert _targets(_job(tmp_path), "2.1")["peft.dropout_position"] == "pre"


def test_llama3_8b_lora_targets_in_2_0(tmp_path):
    assert _targets(_job(tmp_path), "2.0")["peft.target_modules"] == ["*.q_proj", "*.k_proj", "*.v_proj"]
    assert len(_targets(_job(tmp_path), "2.7")["peft.target_modules"]) == 7


def test_scheduler_max_steps_is_not_copied_in_2_0(tmp_path):
    # 2.0: nothing copies trainer.max_steps into the scheduler, which keeps its own max_steps (the recipe's / class default)
    t20, t27 = _targets(_job(tmp_path), "2.0"), _targets(_job(tmp_path), "2.7")
    assert t27["lr_scheduler.lr_decay_steps"] == 100
    assert t20["lr_scheduler.lr_decay_steps"] != 100


def test_mxfp8_factory_value_by_release(tmp_path):
    job = _job(tmp_path, body="recipe.trainer.plugins = bf16_with_mxfp8_mixed()")
    from nemo_migrate.resolve import Inputs, resolve  # the NeMo side: what the plugin holds
    from nemo_migrate import nemo_release
    from nemo_migrate.diagnostics import Diagnostics

    for release, fp8 in (("2.5", "hybrid"), ("2.7", "e4m3")):
        with nemo_release.using(release):
            j = resolve(Inputs(recipe=job / "recipe.py", recipe_display="recipe.py", yamls=[]), Diagnostics())
        assert j.value("trainer.plugins.fp8") == fp8, release


def test_a_parameter_the_release_does_not_have(tmp_path):
    job = _job(tmp_path, body="recipe.trainer.plugins.fp8_recipe = 'tensorwise'")
    errs = _errors(job, "2.2")
    assert errs[0].code == "NM208" and "fp8_recipe" in errs[0].message and errs[0].line == 10
    _targets(job, "2.3")


def test_cli_factory_names_are_the_registered_ones(tmp_path):
    (tmp_path / "run.sh").write_text("nemo llm finetune --factory mistral_nemo_12b -y trainer.max_steps=10\n")
    errs = _errors(tmp_path)
    assert errs[0].code == "NM144" and "mistral_nemo_base_12b" in errs[0].hint
    (tmp_path / "run.sh").write_text("nemo llm finetune --factory mistral_nemo_base_12b -y trainer.max_steps=10\n")
    t = _targets(tmp_path)
    assert t["step_scheduler.max_steps"] == 10 and t["_conv"].variants[0].job.recipe == "mistral_nemo_12b"


def test_peft_values_from_yaml_warn_on_2_6_and_later():
    seed = ROOT / "golden" / "seed" / "input"
    w = [d for d in convert(Options(source=seed)).diags.items if d.code == "NM117"]
    assert w and w[0].file == "config-fp16.yaml" and w[0].line == 43
    assert not [d for d in convert(Options(source=seed, nemo_version="2.5")).diags.items if d.code == "NM117"]


@pytest.mark.skipif(not WHEELS.is_dir(), reason="the nemo-toolkit wheels are not downloaded (tools/nemo_versions/extract.py)")
def test_release_table_is_what_the_wheels_say(tmp_path):
    out = tmp_path / "releases.yaml"
    subprocess.run([sys.executable, str(ROOT / "tools/nemo_versions/extract.py"), "--cache", str(WHEELS), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_text() == (ROOT / "mappings/nemo2/releases.yaml").read_text()

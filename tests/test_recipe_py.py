"""Static analysis of recipe.py: NeMo-Run idioms are understood, anything else is a diagnostic, nothing is executed."""
import textwrap
from pathlib import Path

import pytest

from nemo_migrate.diagnostics import Diagnostics, MigrateError
from nemo_migrate.ir import Knob, Provenance
from nemo_migrate.resolve import Inputs, resolve
from nemo_migrate.sources.recipe_py import parse_recipe_py


def job_from(tmp_path: Path, src: str, yaml: str | None = None, factory: str | None = None, sets=()):
    (tmp_path / "recipe.py").write_text(textwrap.dedent(src))
    yamls = []
    if yaml is not None:
        (tmp_path / "cfg.yaml").write_text(textwrap.dedent(yaml))
        yamls = [(tmp_path / "cfg.yaml", "cfg.yaml")]
    d = Diagnostics()
    inp = Inputs(recipe=tmp_path / "recipe.py", recipe_display="recipe.py", yamls=yamls, factory=factory, sets=list(sets))
    return resolve(inp, d), d


BASE = """
import nemo_run as run
from nemo.collections import llm
from megatron.core.dist_checkpointing.validation import StrictHandling

def f():
    recipe = llm.llama3_8b.finetune_recipe(dir="/r", name="n", num_gpus_per_node=2, peft_scheme="lora")
    recipe.data = run.Config(llm.FineTuningDataModule, dataset_root="/d", seq_length=1024, dataset_kwargs=run.Config(dict))
    {body}
    return recipe

if __name__ == "__main__":
    run.cli.main(llm.finetune, default_factory=f)
"""


def src(body: str) -> str:
    return BASE.replace("{body}", textwrap.indent(textwrap.dedent(body), "    ").strip())


def test_recipe_expansion_and_statements(tmp_path):
    job, d = job_from(tmp_path, src("recipe.trainer.strategy.ckpt_load_strictness = StrictHandling.LOG_ALL\nrecipe.log.tensorboard = None"))
    assert job.recipe == "llama3_8b"
    assert job.value("trainer.strategy.ckpt_load_strictness") == "log_all"
    assert job.value("log.tensorboard") is None
    assert job.value("peft.dim") == 8 and job.value("peft.alpha") == 16  # llama3_8b LoRA branch
    k = job.knob("trainer.devices")
    assert k.value == 2 and str(k.prov) == "recipe.py:7"
    # replacing recipe.data drops the recipe's batch sizes: FineTuningDataModule class defaults apply (reference §1.7)
    assert job.value("data.micro_batch_size") == 4 and job.value("data.global_batch_size") == 8


def test_aliasing_and_augmented_assignment(tmp_path):
    job, d = job_from(tmp_path, src("""
        s = recipe.trainer.strategy
        s.tensor_model_parallel_size = 2
        recipe.trainer.max_steps += 10
        steps = 7 * 3
        recipe.trainer.val_check_interval = steps
    """))
    assert job.value("trainer.strategy.tensor_model_parallel_size") == 2
    assert job.value("trainer.max_steps") == 1010
    assert job.value("trainer.val_check_interval") == 21


def test_static_if_and_factory_arguments(tmp_path):
    code = BASE.replace("def f():", "def f(big: bool = False, lr: float = 1e-4):").replace(
        "{body}", "if big:\n        recipe.trainer.num_nodes = 2\n        recipe.data.global_batch_size = 16\n    recipe.optim.config.lr = lr")
    job, _ = job_from(tmp_path, code, factory="f(big=True, lr=3e-4)")
    assert job.value("trainer.num_nodes") == 2
    assert job.value("optim.config.lr") == pytest.approx(3e-4)
    job, _ = job_from(tmp_path, code)
    assert job.value("trainer.num_nodes") == 1


def test_helper_factories_and_list_append(tmp_path):
    code = src("""
        recipe.trainer.plugins = bf16_with_fp8_mixed()
        recipe.trainer.callbacks.append(run.Config(GarbageCollectionCallback, 50, 50))
    """).replace("import nemo_run as run", "import nemo_run as run\nfrom nemo.collections.llm.recipes.precision.mixed_precision import bf16_with_fp8_mixed\n"
                 "from nemo.lightning.pytorch.callbacks import GarbageCollectionCallback")
    job, _ = job_from(tmp_path, code)
    assert job.value("trainer.plugins.fp8") == "hybrid" and job.value("trainer.plugins.fp8_amax_history_len") == 1024
    cbs = job.value("trainer.callbacks")
    assert [c.cls for c in cbs] == ["TimingCallback", "GarbageCollectionCallback"]


def test_user_helper_function_is_interpreted(tmp_path):
    # a helper that changes the recipe in place is followed like Python runs it
    code = BASE.replace("def f():", "def tune(r, steps):\n    r.trainer.max_steps = steps\n\ndef f():").replace("{body}", "tune(recipe, 42)")
    job, d = job_from(tmp_path, code)
    assert job.value("trainer.max_steps") == 42 and str(job.knob("trainer.max_steps").prov) == "recipe.py:7"
    code = BASE.replace("def f():", "def tune(r, steps):\n    r.trainer.max_steps = steps\n    return r\n\ndef f():").replace("{body}", "recipe = tune(recipe, 42)")
    job, d = job_from(tmp_path, code)
    assert job.value("trainer.max_steps") == 42


def test_not_understood_is_an_error_at_its_line(tmp_path):
    # a value read from the environment reaches the job: refused at the line, with the way out
    with pytest.raises(MigrateError) as e:
        job_from(tmp_path, src("""
            import os
            recipe.trainer.max_steps = int(os.environ.get("STEPS", "5"))
        """))
    err = [x for x in e.value.diags.errors if x.code == "NM340"]
    assert len(err) == 1 and err[0].file == "recipe.py" and err[0].line == 10 and err[0].key == "trainer.max_steps"
    assert "STEPS" in err[0].message and "--to-yaml" in err[0].hint and "--set trainer.max_steps" in err[0].hint
    # a loop over a static range is unrolled like Python runs it
    job, d = job_from(tmp_path, src("""
        for i in range(3):
            recipe.trainer.max_steps = i
    """))
    assert job.value("trainer.max_steps") == 2
    # a branch on something not known that changes the recipe: refused at the branch
    with pytest.raises(MigrateError) as e:
        job_from(tmp_path, src("""
            import os
            if os.environ.get("BIG"):
                recipe.trainer.num_nodes = 4
        """))
    err = [x for x in e.value.diags.errors if x.code == "NM342"]
    assert err and err[0].line == 10 and "BIG" in err[0].message
    # ... but one that only prints is harmless
    job, d = job_from(tmp_path, src("""
        import os
        if os.environ.get("VERBOSE"):
            print(recipe)
    """))
    assert not d.errors and job.value("trainer.max_steps") == 1000


def test_unknown_parameter_did_you_mean(tmp_path):
    with pytest.raises(MigrateError) as e:
        job_from(tmp_path, src("recipe.trainer.max_stesp = 2"))
    d = e.value.diags.errors[0]
    assert d.code == "NM201" and d.line == 9 and "max_steps" in d.hint and "No parameter named 'max_stesp'" in d.message
    # MegatronStrategy takes **kwargs, so NeMo-Run accepts a misspelt key silently: we warn with did-you-mean
    job, diags = job_from(tmp_path, src("recipe.trainer.strategy.tensor_model_paralel_size = 2"))
    w = [x for x in diags.items if x.code == "NM207"][0]
    assert w.line == 9 and "tensor_model_parallel_size" in w.hint


def test_syntax_error_is_reported_not_raised(tmp_path):
    (tmp_path / "recipe.py").write_text("def f(:\n  pass\n")
    d = Diagnostics()
    assert parse_recipe_py(tmp_path / "recipe.py", "recipe.py", d) is None
    assert d.errors[0].code == "NM301" and d.errors[0].line == 1


def test_recipe_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    code = f"""
import os, socket, subprocess
open({str(marker)!r}, "w").write("x")
subprocess.run(["touch", {str(marker)!r}])
import nemo_run as run
from nemo.collections import llm

def f():
    open({str(marker)!r}, "w").write("x")
    os.system("touch {marker}")
    socket.create_connection(("example.com", 80))
    recipe = llm.llama3_8b.finetune_recipe(peft_scheme="lora", num_gpus_per_node=2)
    recipe.data = run.Config(llm.FineTuningDataModule, dataset_root="/d")
    return recipe

run.cli.main(llm.finetune, default_factory=f)
"""
    job, d = job_from(tmp_path, code)
    assert not marker.exists()
    assert job.recipe == "llama3_8b"


def test_unknown_recipe_names_the_known_ones(tmp_path):
    with pytest.raises(MigrateError) as e:
        job_from(tmp_path, BASE.replace("llama3_8b", "llama3_9b").replace("{body}", "pass"))
    d = e.value.diags.errors[0]
    assert d.code == "NM110" and "llama3_8b" in d.hint and "qwen25_7b" in d.hint


def test_unsupported_recipe_is_explained(tmp_path):
    with pytest.raises(MigrateError) as e:
        job_from(tmp_path, BASE.replace("llm.llama3_8b.finetune_recipe(dir=\"/r\", name=\"n\", num_gpus_per_node=2, peft_scheme=\"lora\")",
                                        "llm.mamba2_130m.finetune_recipe()").replace("{body}", "pass"))
    assert e.value.diags.errors[0].code == "NM111"

"""The static interpreter over scripts and notebooks: module-level recipes, helpers, launches, loops, branches.

Each test writes a small script in the shape real NeMo 2 jobs have (tutorial notebooks, perf scripts, user scripts)
and checks the effective job, or that what cannot be followed is refused at its line with the way out."""
import json
import sys
import textwrap
from pathlib import Path

import pytest

from nemo_migrate.convert import Options, convert
from nemo_migrate.diagnostics import Diagnostics, MigrateError
from nemo_migrate.ir import Provenance
from nemo_migrate.resolve import Inputs, resolve
from nemo_migrate.sources.pysource import notebook_source, rewrite_fstrings
from nemo_migrate.sources.recipe_py import parse_recipe_py

HEAD = """\
import nemo_run as run
from nemo import lightning as nl
from nemo.collections import llm
"""


def job(tmp_path: Path, code: str, name: str = "train.py", sets=(), argv=None, factory=None):
    p = tmp_path / name
    if name.endswith(".ipynb"):
        p.write_text(code)
    else:
        p.write_text(HEAD + textwrap.dedent(code))
    d = Diagnostics()
    module = parse_recipe_py(p, name, d, argv=argv)
    assert module is not None, d.render()
    inp = Inputs(recipe=p, recipe_display=name, yamls=[], sets=list(sets), factory=factory)
    return resolve(inp, d, module=module), d


def refused(tmp_path: Path, code: str, **kw):
    with pytest.raises(MigrateError) as e:
        job(tmp_path, code, **kw)
    return e.value.diags.errors


def test_module_level_recipe_after_an_import_ckpt_run(tmp_path):
    j, d = job(tmp_path, """
        def configure_checkpoint_conversion():
            return run.Partial(llm.import_ckpt, model=llm.llama3_8b.model(), source="hf://meta-llama/Meta-Llama-3-8B", overwrite=False)

        run.run(configure_checkpoint_conversion(), executor=run.LocalExecutor())

        recipe = llm.llama3_8b.finetune_recipe(name="ft", dir="/out", num_nodes=1, num_gpus_per_node=1, peft_scheme="lora")
        recipe.trainer.max_steps = 40
        recipe.trainer.val_check_interval = 20
        recipe.data = run.Config(llm.FineTuningDataModule, dataset_root="/data", seq_length=2048, micro_batch_size=1, global_batch_size=8)
        run.run(recipe, executor=run.LocalExecutor(ntasks_per_node=1, launcher="torchrun"))

        # after the fine-tune: evaluation of the result, not the job
        recipe.trainer.max_steps = 1
        run.run(run.Partial(llm.generate, path="/out/ft"), executor=run.LocalExecutor())
    """)
    assert j.recipe == "llama3_8b"
    assert j.value("trainer.max_steps") == 40  # the snapshot at launch: the later change does not reach it
    assert str(j.knob("trainer.max_steps").prov) == "train.py:11"
    assert j.value("data.global_batch_size") == 8 and j.value("data.dataset_root") == "/data"
    assert j.value("peft").cls == "LoRA"
    assert j.value("executor.ntasks_per_node") == 1


def test_helper_that_builds_and_one_that_patches_the_recipe(tmp_path):
    j, d = job(tmp_path, """
        GPUS = 4
        STEPS = 100
        if GPUS > 2:
            STEPS += 50
        LR, WARMUP = 3e-4, 10
        for extra in (1, 2):
            STEPS += extra

        def configure_recipe(nodes: int = 1, gpus_per_node: int = 2):
            recipe = llm.llama31_8b.finetune_recipe(dir="/ckpt", name="sft", num_nodes=nodes, num_gpus_per_node=gpus_per_node,
                                                    peft_scheme="none")
            recipe.trainer.max_steps = STEPS
            return recipe

        def tune(r, lr):
            r.optim.config.lr = lr
            r.optim.lr_scheduler.warmup_steps = WARMUP
            return r

        finetune_config = run.Config(llm.FineTuningDataModule, dataset_root="/d", seq_length=4096, global_batch_size=16, micro_batch_size=1)
        recipe = configure_recipe(gpus_per_node=GPUS)
        recipe = tune(recipe, LR)
        recipe.data = finetune_config
        with run.Experiment("sft") as exp:
            exp.add(llm.import_ckpt, name="import")
            exp.add(recipe, executor=run.LocalExecutor(ntasks_per_node=GPUS, launcher="torchrun"), name="finetune")
            exp.run(sequential=True)
    """)
    assert j.value("trainer.devices") == 4
    assert j.value("trainer.max_steps") == 153  # 100 + 50 (if) + 1 + 2 (loop)
    assert j.value("optim.config.lr") == pytest.approx(3e-4)
    assert j.value("optim.lr_scheduler.warmup_steps") == 10
    assert j.value("data.global_batch_size") == 16
    assert j.value("peft") is None


def test_imported_helper_that_receives_the_recipe_is_refused_at_its_line(tmp_path):
    errs = refused(tmp_path, """
        from ..helpers import set_primary_perf_configs

        finetune = llm.llama3_8b.finetune_recipe(peft_scheme="lora", num_gpus_per_node=8)
        finetune = set_primary_perf_configs(finetune, "lora", num_nodes=1, num_gpus_per_node=8)
        run.run(finetune, executor=run.LocalExecutor())
    """)
    e = next(x for x in errs if x.code in ("NM341", "NM340", "NM346"))
    assert e.line == 8 and "set_primary_perf_configs" in e.message and "ConfigSerializer" in e.hint


def test_unknown_helper_on_something_else_is_harmless(tmp_path):
    j, d = job(tmp_path, """
        import matplotlib.pyplot as plt
        from mylib import prepare_data
        prepare_data("/raw", "/d")
        plt.plot([1, 2])
        recipe = llm.llama3_8b.finetune_recipe(peft_scheme="lora", num_gpus_per_node=1)
        run.run(recipe, executor=run.LocalExecutor())
    """)
    assert j.value("trainer.devices") == 1 and not d.errors


def test_factory_name_rebound_and_decorators(tmp_path):
    j, d = job(tmp_path, """
        def small():
            r = llm.llama3_8b.finetune_recipe(peft_scheme="lora", num_gpus_per_node=1)
            r.trainer.max_steps = 5
            return r

        def big():
            r = llm.llama3_8b.finetune_recipe(peft_scheme="lora", num_gpus_per_node=8)
            r.trainer.max_steps = 500
            return r

        small = big   # the name now means big

        if __name__ == "__main__":
            run.cli.main(llm.finetune, default_factory=small)
    """)
    assert j.value("trainer.max_steps") == 500 and j.value("trainer.devices") == 8
    errs = refused(tmp_path, """
        import functools

        def timed(fn):
            @functools.wraps(fn)
            def inner(*a, **k):
                return fn(*a, **k)
            return inner

        @timed
        def recipe_fn():
            return llm.llama3_8b.finetune_recipe(peft_scheme="lora")

        run.cli.main(llm.finetune, default_factory=recipe_fn)
    """)
    assert any(e.code == "NM303" or e.code == "NM341" for e in errs)
    j, d = job(tmp_path, """
        @run.cli.factory
        @run.autoconvert
        def recipe_fn() -> run.Partial:
            return llm.llama3_8b.finetune_recipe(peft_scheme="lora", num_gpus_per_node=2)

        run.cli.main(llm.finetune, default_factory=recipe_fn)
    """)
    assert j.value("trainer.devices") == 2


def test_direct_api_call_with_real_objects(tmp_path):
    j, d = job(tmp_path, """
        from nemo.collections.llm.recipes.precision.mixed_precision import bf16_mixed
        strategy = nl.MegatronStrategy(tensor_model_parallel_size=2)
        trainer = nl.Trainer(devices=2, max_steps=30, accelerator="gpu", strategy=strategy, plugins=bf16_mixed())
        data = llm.SquadDataModule(seq_length=2048, micro_batch_size=1, global_batch_size=8)
        model = llm.LlamaModel(llm.Llama3Config8B())
        llm.finetune(model=model, data=data, trainer=trainer, peft=llm.peft.LoRA(dim=16),
                     resume=nl.AutoResume(restore_config=nl.RestoreConfig(path="nemo://meta-llama/Meta-Llama-3-8B")))
    """)
    assert j.value("trainer.max_steps") == 30 and j.value("trainer.strategy.tensor_model_parallel_size") == 2
    assert j.value("peft.dim") == 16 and j.value("data.global_batch_size") == 8


def test_pretraining_is_out_of_scope(tmp_path):
    errs = refused(tmp_path, """
        recipe = llm.llama3_8b.pretrain_recipe(num_nodes=1, num_gpus_per_node=8)
        run.run(recipe, executor=run.LocalExecutor())
    """)
    assert errs[0].code == "NM345" and errs[0].line == 6


def test_several_different_finetunes_are_refused(tmp_path):
    errs = refused(tmp_path, """
        for steps in (10, 20):
            r = llm.llama3_8b.finetune_recipe(peft_scheme="lora")
            r.trainer.max_steps = steps
            run.run(r, executor=run.LocalExecutor())
    """)
    assert errs[0].code == "NM344" and "2 different" in errs[0].message


def test_argparse_script_reads_the_launch_line(tmp_path):
    code = """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--steps", type=int, default=10)
        parser.add_argument("--lora", action="store_true")
        parser.add_argument("--tp", type=int, default=1)
        args = parser.parse_args()
        recipe = llm.llama3_8b.finetune_recipe(peft_scheme="lora" if args.lora else "none", num_gpus_per_node=8)
        recipe.trainer.max_steps = args.steps
        recipe.trainer.strategy.tensor_model_parallel_size = args.tp
        run.run(recipe, executor=run.LocalExecutor())
    """
    argv = [(t, Provenance(kind="cli", file="run.sh", line=3, detail=t)) for t in ["--steps", "250", "--lora"]]
    j, d = job(tmp_path, code, argv=argv)
    assert j.value("trainer.max_steps") == 250 and str(j.knob("trainer.max_steps").prov).startswith("run.sh:3")
    assert j.value("peft").cls == "LoRA" and j.value("trainer.strategy.tensor_model_parallel_size") == 1
    # without a launch line the arguments are not known: the values they decide are refused, by name
    errs = refused(tmp_path, code)
    assert {e.code for e in errs} & {"NM113", "NM340"}


def test_environment_values_are_named(tmp_path):
    errs = refused(tmp_path, """
        import os
        recipe = llm.llama3_8b.finetune_recipe(peft_scheme="lora", num_gpus_per_node=int(os.environ["GPUS"]))
        run.run(recipe, executor=run.LocalExecutor())
    """)
    e = next(x for x in errs if x.code == "NM340")
    assert "GPUS" in e.message and e.key == "trainer.devices" and "--set trainer.devices=" in e.hint
    # --set repairs it
    j, d = job(tmp_path, """
        import os
        recipe = llm.llama3_8b.finetune_recipe(peft_scheme="lora", num_gpus_per_node=int(os.environ["GPUS"]))
        run.run(recipe, executor=run.LocalExecutor())
    """, sets=["trainer.devices=8"])
    assert j.value("trainer.devices") == 8


def test_python_312_fstrings_and_bom(tmp_path):
    code = HEAD + textwrap.dedent('''
        cfg = {"name": "sft"}
        recipe = llm.llama3_8b.finetune_recipe(name=f"{cfg["name"]}-{2:03d}", dir=f"/out/{cfg['name']}", peft_scheme="lora")
        run.run(recipe, executor=run.LocalExecutor())
    ''')
    p = tmp_path / "train.py"
    p.write_bytes(b"\xef\xbb\xbf" + code.encode())
    d = Diagnostics()
    module = parse_recipe_py(p, "train.py", d)
    assert module is not None, d.render()
    j = resolve(Inputs(recipe=p, recipe_display="train.py", yamls=[]), d, module=module)
    assert j.value("log.name") == "sft-002" and j.value("log.log_dir") == "/out/sft"


def test_fstring_rewrite_keeps_lines_and_meaning():
    src = 'a = f"x{d["k"]!r:>6}y"\nb = f"""1\n{v}\n3"""\nc = 1\n'
    out = rewrite_fstrings(src)
    assert out.count("\n") == src.count("\n")
    import ast
    ast.parse(out)


NB = {
    "cells": [
        {"cell_type": "markdown", "source": ["# Fine-tune"]},
        {"cell_type": "code", "source": ["import nemo_run as run\n", "from nemo.collections import llm\n", "!pip install foo\n"]},
        {"cell_type": "code", "source": ["%%bash\n", "nvidia-smi\n"]},
        {"cell_type": "code", "source": ["recipe = llm.llama3_8b.finetune_recipe(peft_scheme='lora', num_gpus_per_node=1)\n",
                                         "recipe.trainer.max_steps = 20\n"]},
        {"cell_type": "markdown", "source": ["Now launch"]},
        {"cell_type": "code", "source": ["%matplotlib inline\n", "recipe.trainer.val_check_interval = GARBAGE\n",
                                         "run.run(recipe, executor=run.LocalExecutor())\n"]},
    ],
    "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
}


def test_notebook_cells_in_order_with_cell_positions(tmp_path):
    errs = refused(tmp_path, json.dumps(NB), name="ft.ipynb")
    e = next(x for x in errs if x.code == "NM340")
    assert (e.file, e.cell, e.line) == ("ft.ipynb", 6, 2) and "GARBAGE" in e.message
    nb = json.loads(json.dumps(NB))
    nb["cells"][5]["source"][1] = "recipe.trainer.val_check_interval = 5\n"
    j, d = job(tmp_path, json.dumps(nb), name="ft.ipynb")
    assert j.value("trainer.max_steps") == 20 and j.knob("trainer.max_steps").prov.cell == 4
    src = notebook_source(json.dumps(NB), "ft.ipynb")
    assert [(s.cell, s.text.strip()) for s in src.shell] == [(2, "pip install foo"), (3, "nvidia-smi")]


def test_convert_reads_a_notebook_directly(tmp_path):
    nb = json.loads(json.dumps(NB))
    nb["cells"][5]["source"][1] = "recipe.data = run.Config(llm.FineTuningDataModule, dataset_root='/data')\n"
    (tmp_path / "ft.ipynb").write_text(json.dumps(nb))
    conv = convert(Options(source=tmp_path / "ft.ipynb"))
    assert conv.variants[0].targets["step_scheduler.max_steps"].value == 20


def test_huge_static_values_are_bounded(tmp_path):
    errs = refused(tmp_path, """
        recipe = llm.llama3_8b.finetune_recipe(peft_scheme="lora")
        recipe.peft.target_modules = [["linear_qkv"] * 9_999_999] * 9_999_999
        run.run(recipe, executor=run.LocalExecutor())
    """)
    assert any("too large" in e.message or "items" in e.message for e in errs)


def test_helper_modules_of_the_job_are_followed(tmp_path):
    pkg = tmp_path / "scripts"
    (pkg / "llm").mkdir(parents=True)
    (pkg / "helpers.py").write_text(textwrap.dedent("""
        import nemo_run as run

        def set_perf(recipe, tp, steps=100):
            recipe.trainer.strategy.tensor_model_parallel_size = tp
            recipe.trainer.max_steps = steps
            return recipe

        def read_table(recipe):
            import pandas
            recipe.data.global_batch_size = pandas.read_csv("perf.csv").gbs[0]
            return recipe
    """))
    (pkg / "llm" / "consts.py").write_text("GPUS = 8\n")
    (pkg / "llm" / "ft.py").write_text(HEAD + textwrap.dedent("""
        from ..helpers import set_perf
        from .consts import GPUS
        recipe = llm.llama3_8b.finetune_recipe(peft_scheme="lora", num_gpus_per_node=GPUS)
        recipe = set_perf(recipe, tp=2)
        run.run(recipe, executor=run.LocalExecutor())
    """))
    d = Diagnostics()
    p = pkg / "llm" / "ft.py"
    module = parse_recipe_py(p, "ft.py", d)
    j = resolve(Inputs(recipe=p, recipe_display="ft.py", yamls=[]), d, module=module)
    assert j.value("trainer.strategy.tensor_model_parallel_size") == 2 and j.value("trainer.devices") == 8
    assert str(j.knob("trainer.max_steps").prov) == "../helpers.py:6"
    (pkg / "llm" / "ft.py").write_text(HEAD + textwrap.dedent("""
        from ..helpers import read_table
        recipe = read_table(llm.llama3_8b.finetune_recipe(peft_scheme="lora"))
        run.run(recipe, executor=run.LocalExecutor())
    """))
    d = Diagnostics()
    module = parse_recipe_py(p, "ft.py", d)
    with pytest.raises(MigrateError) as e:
        resolve(Inputs(recipe=p, recipe_display="ft.py", yamls=[]), d, module=module)
    err = [x for x in e.value.diags.errors if x.file == "../helpers.py"]
    assert err and err[0].line == 11 and "pandas.read_csv" in err[0].message

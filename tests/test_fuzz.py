"""Fuzzing `convert` and `diff` (hypothesis): whatever the input, the compiler either converts it or raises
MigrateError carrying coded diagnostics; never any other exception (which the CLI would print as an internal error).

Inputs: byte-level mutations and truncations of real jobs (NeMo 2 YAML + recipe.py, NeMo 1.0 / Aligner YAML, an
Automodel YAML for diff), structured YAML of wrong types / huge numbers / unicode / deep nesting / anchors and
aliases, recipe.py files with arbitrary Python statements, and Hydra / NeMo-Run command-line overrides.

Size: FUZZ_EXAMPLES per target (default 150 in CI; `make fuzz` runs more and records the count).  The number of
inputs tried is printed at the end of the pytest run (conftest.py) and written to $FUZZ_RECORD when set.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nemo_migrate.convert import Options, convert  # noqa: E402
from nemo_migrate.diagnostics import MigrateError  # noqa: E402

import fuzz_stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"
SEED_OUT = ROOT / "golden" / "seed" / "expected"
NEMO1 = ROOT / "tests" / "fixtures" / "rules" / "nemo1.yaml"
ALIGNER = ROOT / "tests" / "fixtures" / "rules" / "aligner.yaml"
N = int(os.environ.get("FUZZ_EXAMPLES", "150"))

FUZZ = settings(max_examples=N, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") is None, database=None,
                suppress_health_check=list(HealthCheck))

# characters that matter to YAML, Python, shells and Hydra, plus some unicode
_SPICY = list(":-[]{}&*!|>'\"#%@`,?\n\t\\$()=+~.;") + ["\u00e9", "\u2028", "\ufeff", "\U0001f600", "\x00", "\x1b"]
_text = st.text(alphabet=st.one_of(st.sampled_from(_SPICY), st.characters(codec="utf-8")), max_size=12)


@st.composite
def mutated(draw, original: str) -> str:
    """A few random edits of a real file: delete, insert, replace, duplicate a line, truncate."""
    s = original
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "dupline", "truncate", "swaplines"]))
        i = draw(st.integers(0, max(len(s) - 1, 0)))
        if op == "delete":
            s = s[:i] + s[i + draw(st.integers(1, 20)):]
        elif op == "insert":
            s = s[:i] + draw(_text) + s[i:]
        elif op == "replace":
            s = s[:i] + draw(_text) + s[i + draw(st.integers(1, 8)):]
        elif op == "truncate":
            s = s[:i]
        else:
            lines = s.split("\n")
            j = draw(st.integers(0, max(len(lines) - 1, 0)))
            if op == "dupline":
                lines.insert(j, lines[j] if lines else "")
            else:
                k = draw(st.integers(0, max(len(lines) - 1, 0)))
                lines[j], lines[k] = lines[k], lines[j]
            s = "\n".join(lines)
    return s


def _scalars():
    return st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(10 ** 40), max_value=10 ** 40),
        st.floats(allow_nan=True, allow_infinity=True), _text,
        st.sampled_from(["1e-4", "0x1F", "0o17", "1_000", "yes", "off", "~", "???", "${trainer.devices}", "${oops}",
                         "Config[llm.LoRA]", "run.Config(dict)", "__import__('os')", "../../../../etc/passwd", "1:30"]),
    )


_KEYS = ["trainer", "devices", "max_steps", "strategy", "tensor_model_parallel_size", "data", "seq_length",
         "micro_batch_size", "global_batch_size", "peft", "dim", "alpha", "target_modules", "optim", "config", "lr",
         "lr_scheduler", "warmup_steps", "resume", "restore_config", "path", "log", "ckpt", "plugins", "fp8",
         "_target_", "_partial_", "_factory_", "run", "factory", "model", "dataset_kwargs", "<<", "misspeled"]

_yaml_trees = st.recursive(
    _scalars(),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.one_of(st.sampled_from(_KEYS), _text), kids, max_size=5)),
    max_leaves=25,
)


def _dump(tree) -> str:
    import yaml

    try:
        return yaml.safe_dump(tree, allow_unicode=True)
    except Exception:  # noqa: BLE001 - some generated values are not representable; fall back to repr text
        return repr(tree)


def _check(run):
    """Run a conversion; anything but success or MigrateError (with coded diagnostics) fails the test."""
    fuzz_stats.COUNT["inputs"] += 1
    try:
        run()
        fuzz_stats.COUNT["converted"] += 1
    except MigrateError as e:
        fuzz_stats.COUNT["rejected"] += 1
        errors = e.diags.errors
        assert errors, "MigrateError without an error diagnostic"
        for d in errors:
            assert d.code and d.message, d
            text = d.render()
            assert "Traceback" not in text
    except Exception:
        fuzz_stats.COUNT["crashed"] += 1
        raise


def _job_dir(tmp: Path, files: dict[str, str | bytes]) -> Path:
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, content in files.items():
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_bytes(content.encode("utf-8", "surrogatepass"))
    return tmp


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(text=mutated((SEED / "config-fp8.yaml").read_text()))
def test_fuzz_mutated_nemo2_yaml(work, text):
    d = _job_dir(work / "y", {"recipe.py": (SEED / "recipe.py").read_text(), "config-fp8.yaml": text})
    _check(lambda: convert(Options(source=d / "config-fp8.yaml", recipe=d / "recipe.py", factory="migration_recipe()")))


@FUZZ
@given(tree=_yaml_trees)
def test_fuzz_structured_yaml(work, tree):
    d = _job_dir(work / "s", {"recipe.py": (SEED / "recipe.py").read_text(), "config.yaml": _dump(tree)})
    _check(lambda: convert(Options(source=d / "config.yaml", recipe=d / "recipe.py", factory="migration_recipe()")))


@FUZZ
@given(text=mutated((SEED / "recipe.py").read_text()))
def test_fuzz_mutated_recipe_py(work, text):
    d = _job_dir(work / "r", {"recipe.py": text, "config-fp16.yaml": (SEED / "config-fp16.yaml").read_text()})
    _check(lambda: convert(Options(source=d / "config-fp16.yaml", recipe=d / "recipe.py")))


_STATEMENTS = st.sampled_from([
    "recipe.trainer.max_steps = {v}", "recipe.peft.dim = {v}", "recipe.data = {v}", "recipe.optim.config.lr *= {v}",
    "recipe.trainer.strategy = run.Config(nl.MegatronStrategy, tensor_model_parallel_size={v})",
    "recipe.peft.target_modules.append({v})", "recipe.{v} = 1", "x = {v}", "recipe = {v}",
    "if {v}:\n        recipe.trainer.devices = 2", "for i in range(3):\n        recipe.trainer.max_steps += i",
    "while True:\n        pass", "import os; os.system({v})", "exec({v})", "recipe.log = lambda: {v}",
    "recipe.data.seq_length = f'{{recipe}}'", "del recipe.peft", "recipe.trainer.callbacks = [c for c in {v}]",
    "with open('/tmp/x') as f:\n        recipe.trainer.max_steps = int(f.read())", "raise SystemExit({v})",
    "recipe.resume = run.Config(nl.AutoResume, restore_config=run.Config(nl.RestoreConfig, path={v}))",
    "return {v}", "yield {v}", "global recipe", "recipe.trainer.max_steps = " + "(" * 300 + "1" + ")" * 300,
])
_VALUES = st.one_of(
    st.integers(-(10 ** 30), 10 ** 30).map(str), st.floats(allow_nan=False).map(repr), _text.map(repr),
    st.sampled_from(["None", "True", "recipe", "run.Config(dict)", "llm.LoRA(dim=8)", "[1, 2, 3]", "{'a': 1}",
                     "__import__('os').system('touch /tmp/pwned')", "1/0", "nl.Trainer", "float('nan')", "'a' * 10**9",
                     "2 ** 10 ** 10", "lambda x: x", "...", "*args", "[*range(10**8)]"]),
)


@st.composite
def recipe_programs(draw) -> str:
    body = [draw(_STATEMENTS).replace("{v}", draw(_VALUES)) for _ in range(draw(st.integers(1, 6)))]
    return ("import nemo_run as run\nfrom nemo.collections import llm\nfrom nemo import lightning as nl\n\n\n"
            "def job() -> run.Partial:\n"
            "    recipe = llm.llama3_8b.finetune_recipe(dir='/r', name='n', num_nodes=1, num_gpus_per_node=2, peft_scheme='lora')\n"
            "    recipe.data = run.Config(llm.FineTuningDataModule, dataset_root='/d', global_batch_size=8, micro_batch_size=1)\n"
            + "".join(f"    {s}\n" for s in body)
            + "    return recipe\n\n\nif __name__ == '__main__':\n    run.cli.main(llm.finetune, default_factory=job)\n")


@FUZZ
@given(src=recipe_programs())
def test_fuzz_arbitrary_python_in_recipe(work, src):
    marker = Path("/tmp/pwned")
    existed = marker.exists()
    d = _job_dir(work / "p", {"recipe.py": src})
    _check(lambda: convert(Options(source=d / "recipe.py")))
    assert marker.exists() == existed, "recipe.py code was executed"


_OVERRIDES = st.one_of(
    st.tuples(st.sampled_from(["trainer.max_steps", "peft.dim", "optim.config.lr", "data.seq_length", "trainer.devices",
                               "trainer.strategy.tensor_model_parallel_size", "peft", "resume.restore_config.path",
                               "trainer.max_stepz", "peft.target_modules", "log.ckpt.save_top_k", "data"]),
              st.sampled_from(["=", "+=", "*=", "=="]), _VALUES).map("".join),
    _text,
)


@FUZZ
@given(sets=st.lists(_OVERRIDES, max_size=4), nproc=st.one_of(st.none(), st.integers(1, 64)))
def test_fuzz_cli_overrides(sets, nproc):
    _check(lambda: convert(Options(source=SEED, sets=sets, nproc_per_node=nproc)))


@FUZZ
@given(text=st.one_of(mutated(NEMO1.read_text()), mutated(ALIGNER.read_text())),
       hydra=st.lists(st.one_of(_text, st.sampled_from(["+model.x=1", "~model.peft", "++trainer.max_steps=5", "trainer.devices=[1,2]",
                                                          "model.optim.lr=${model.nope}", "model.data.chat=true", "a=b=c", "~"])), max_size=3))
def test_fuzz_nemo1_and_aligner(work, text, hydra):
    d = _job_dir(work / "n", {"job.yaml": text})
    _check(lambda: convert(Options(source=d / "job.yaml", sets=hydra)))


@FUZZ
@given(text=mutated((SEED_OUT / "config-fp16.yaml").read_text()))
def test_fuzz_diff_against_a_mutated_automodel_yaml(work, text):
    from nemo_migrate.diff import run_diff

    d = _job_dir(work / "d", {"config-fp16.yaml": text})
    _check(lambda: run_diff(SEED / "config-fp16.yaml", d / "config-fp16.yaml", recipe=SEED / "recipe.py"))


@FUZZ
@given(raw=st.binary(max_size=400))
def test_fuzz_raw_bytes(work, raw):
    d = _job_dir(work / "b", {"recipe.py": (SEED / "recipe.py").read_text(), "config.yaml": raw})
    _check(lambda: convert(Options(source=d / "config.yaml", recipe=d / "recipe.py", factory="migration_recipe()")))

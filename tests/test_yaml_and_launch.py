"""The NeMo-Run --yaml front end and the run.sh front end."""
import textwrap
from pathlib import Path

from nemo_migrate.diagnostics import Diagnostics
from nemo_migrate.sources.launch import parse_run_sh, variant_of
from nemo_migrate.sources.yaml_source import NodeSpec, read_nemo_yaml


def y(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text))
    d = Diagnostics()
    return read_nemo_yaml(p, "c.yaml", d), d


def test_flatten_with_positions(tmp_path):
    out, d = y(tmp_path, """
        trainer:
          max_steps: 30
          strategy:
            tensor_model_parallel_size: 4
        optim:
          config:
            lr: 1e-4
    """)
    ov = {o.path: o for o in out.overrides}
    assert ov["trainer.max_steps"].value == 30 and ov["trainer.max_steps"].prov.line == 3
    assert ov["trainer.strategy.tensor_model_parallel_size"].prov.line == 5
    assert ov["optim.config.lr"].value == 1e-4


def test_target_replaces_node_and_run_factory(tmp_path):
    out, d = y(tmp_path, """
        run:
          factory: llama3_8b
        data:
          _target_: nemo.collections.llm.FineTuningDataModule
          dataset_root: /d
    """)
    assert out.factory.value == "llama3_8b"
    assert isinstance(out.overrides[0].value, NodeSpec) and out.overrides[0].path == "data"
    assert out.overrides[1].path == "data.dataset_root"


def test_syntax_error_has_line_and_column(tmp_path):
    out, d = y(tmp_path, "trainer:\n  max_steps: [1, 2\n")
    assert out is None and d.errors[0].code == "NM101" and d.errors[0].line


def test_duplicate_key_is_an_error(tmp_path):
    out, d = y(tmp_path, "trainer:\n  max_steps: 1\n  max_steps: 2\n")
    assert out is None and "duplicate" in d.errors[0].message


def test_tags_are_refused(tmp_path):
    out, d = y(tmp_path, "trainer:\n  max_steps: !!python/object/apply:os.system ['touch pwned']\n")
    assert d.has_errors
    assert not (tmp_path / "pwned").exists()


def test_run_sh_torchrun_line(tmp_path):
    p = tmp_path / "run.sh"
    p.write_text(textwrap.dedent("""\
        #!/bin/bash
        set -ex
        export CUDA_VISIBLE_DEVICES=0,1,2,3
        NCCL_DEBUG=INFO torchrun \\
            --standalone \\
            --nnodes=1 \\
            --nproc_per_node=4 \\
            recipe.py \\
            --factory 'migration_recipe()' \\
            --yes \\
            --yaml config-${1}.yaml \\
            -v trainer.max_steps=20 'optim.config.lr=2e-5'
    """))
    d = Diagnostics()
    l = parse_run_sh(p, "run.sh", d)
    assert not d.has_errors
    assert (l.nproc_per_node, l.nnodes, l.standalone) == (4, 1, True)
    assert l.factory.value == "migration_recipe()" and l.line == 4
    assert l.yaml_pattern() == "config-{}.yaml"
    assert [(o.path, o.value) for o in l.overrides] == [("trainer.max_steps", "20"), ("optim.config.lr", "2e-5")]
    assert l.env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "NCCL_DEBUG": "INFO"}
    assert variant_of("config-{}.yaml", "config-fp8.yaml") == "fp8"
    assert variant_of("config-{}.yaml", "other.yaml") is None


def test_run_sh_dash_y_trap(tmp_path):
    p = tmp_path / "run.sh"
    p.write_text("torchrun --nproc_per_node=2 recipe.py -y cfg.yaml\n")
    d = Diagnostics()
    parse_run_sh(p, "run.sh", d)
    assert d.errors[0].code == "NM138"


def test_run_sh_without_launch_command(tmp_path):
    p = tmp_path / "run.sh"
    p.write_text("echo hello\n")
    d = Diagnostics()
    assert parse_run_sh(p, "run.sh", d) is None and d.errors[0].code == "NM133"

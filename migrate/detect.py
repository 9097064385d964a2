"""What an input path is: one answer for ``convert``, ``resolve`` and ``diff``.

By name first, then by content, never by running anything:

- a directory: a NeMo job folder when it holds NeMo's side of a job (recipe.py, a NeMo YAML, a launcher, a recipe or
  notebook), an Automodel folder when its only configs are Automodel YAMLs;
- ``.py`` a recipe or script, ``.ipynb`` a notebook;
- ``.yaml``/``.yml``: NeMo-Run's export (a top-level ``_target_``), a NeMo 1.0 or NeMo-Aligner config, an Automodel
  0.7 config (its sections), else a NeMo 2 ``--yaml`` file; a file that does not parse, or whose top level is not
  a mapping, is ``YAML`` (each command's reader then says where it breaks);
- ``.json``/``.toml``: NeMo-Run's export or nothing;
- any other name: a launcher (shell or sbatch script running a training command), else an Automodel config (Automodel
  reads ``-c`` files of any name), else nothing.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path

from . import fsio
from .diagnostics import Diagnostics

YAML_SUFFIXES = (".yaml", ".yml")


class Kind(str, enum.Enum):
    NEMO2_DIR = "nemo2-dir"  # a NeMo job folder (recipe.py, run.sh, config-*.yaml; also NeMo 1.0 / Aligner folders)
    RECIPE = "recipe"  # a NeMo 2 recipe or script (.py)
    NOTEBOOK = "notebook"  # a Jupyter notebook (.ipynb)
    NEMO2_YAML = "nemo2-yaml"  # a --yaml file for a NeMo-Run factory
    NEMORUN_EXPORT = "nemorun-export"  # NeMo-Run's --to-yaml / --to-json / --to-toml of the built job
    LAUNCHER = "launcher"  # a shell / sbatch script that runs the job
    NEMO1 = "nemo1"  # a NeMo 1.0 megatron_gpt_finetuning / megatron_gpt_sft config
    ALIGNER = "aligner"  # a NeMo-Aligner SFT config
    AUTOMODEL_YAML = "automodel-yaml"  # an Automodel 0.7 config
    AUTOMODEL_DIR = "automodel-dir"  # a folder whose configs are Automodel 0.7 configs
    YAML = "yaml"  # a .yaml / .yml file that does not parse, or whose top level is not a mapping
    UNKNOWN = "unknown"  # none of these (or the path cannot be read: an NM001 error says why)

    @property
    def automodel(self) -> bool:
        return self in (Kind.AUTOMODEL_YAML, Kind.AUTOMODEL_DIR)


NEMO_CONFIGS = frozenset({Kind.NEMO2_YAML, Kind.NEMORUN_EXPORT, Kind.NEMO1, Kind.ALIGNER})  # a NeMo job's config file
SELF_CONTAINED = frozenset({Kind.NEMO1, Kind.ALIGNER, Kind.NEMORUN_EXPORT})  # the whole job in one file: no recipe or factory


def detect(path: Path, diags: Diagnostics) -> Kind:
    """The kind of ``path``; a path that does not exist or cannot be read is an NM001 error (and UNKNOWN)."""
    why = fsio.not_a_file(path)
    if why == "a directory":
        return _dir_kind(path)
    if why in ("missing", "a broken symbolic link", "a symbolic link loop"):
        diags.error("NM001", f"no such file or directory: {path}")
    elif why:
        diags.error("NM001", f"{path} is {why}, not a file nemo-migrate can read")
    return _file_kind(path) if why is None else Kind.UNKNOWN


def _file_kind(path: Path) -> Kind:
    if path.suffix == ".py":
        return Kind.RECIPE
    if path.suffix == ".ipynb":
        return Kind.NOTEBOOK
    from .sources.nemorun_export import is_export

    if path.suffix in (".json", ".toml"):
        return Kind.NEMORUN_EXPORT if is_export(path) else Kind.UNKNOWN
    if path.suffix in YAML_SUFFIXES:
        return Kind.NEMORUN_EXPORT if is_export(path) else _yaml_kind(path)
    from .sources.launch import looks_like_launcher

    if looks_like_launcher(path):
        return Kind.LAUNCHER
    return Kind.AUTOMODEL_YAML if _yaml_kind(path) is Kind.AUTOMODEL_YAML else Kind.UNKNOWN


def _yaml_kind(path: Path) -> Kind:
    """A YAML file by its top-level keys (a depth-2 outline: what detection needs, without every value)."""
    from .sources.automodel_yaml import looks_like_automodel
    from .sources.nemo1 import detect as nemo1_format
    from .sources.yaml_source import load_yaml_outline

    try:
        top = load_yaml_outline(path, path.name, Diagnostics())
    except Exception:  # noqa: BLE001 - detection only: the command's reader reports what is wrong, at its line
        top = None
    if not isinstance(top, dict):
        return Kind.YAML
    fmt = nemo1_format(top)
    if fmt is not None:
        return Kind(fmt)
    return Kind.AUTOMODEL_YAML if looks_like_automodel(top) else Kind.NEMO2_YAML


def _dir_kind(path: Path) -> Kind:
    """NeMo's side of a job wins (a migrated config may sit next to it); Automodel only when nothing is NeMo's."""
    if (path / "recipe.py").is_file():
        return Kind.NEMO2_DIR
    try:
        files = sorted(p for p in path.iterdir() if p.is_file())
    except OSError:
        return Kind.NEMO2_DIR  # convert reports what it cannot read
    yamls = [_file_kind(p) for p in files if p.suffix in YAML_SUFFIXES]
    if any(k in NEMO_CONFIGS for k in yamls):
        return Kind.NEMO2_DIR
    from .sources.launch import looks_like_launcher

    if any(looks_like_launcher(p) or (p.suffix in (".py", ".ipynb") and looks_like_recipe(p)) for p in files):
        return Kind.NEMO2_DIR
    return Kind.AUTOMODEL_DIR if Kind.AUTOMODEL_YAML in yamls else Kind.NEMO2_DIR


# ---------------------------------------------------------------------------------------------- recipes by content

_RECIPE_MARKS = ("finetune_recipe", "pretrain_recipe", "run.cli.main", "run.Partial", "llm.finetune", "llm.pretrain", "nemo_run")
_LAUNCH_MARKS = re.compile(r"\brun\.run\(|\bcli\.main\(|\bllm\.finetune\(|\.add\([^)]*executor|\bllm\.pretrain\(")


def looks_like_recipe(p: Path) -> bool:
    """A .py / .ipynb that builds a NeMo-Run recipe or launches a NeMo job (by what its text names)."""
    head = _head(p, 2_000_000 if p.suffix == ".ipynb" else 200_000)
    return any(m in head for m in _RECIPE_MARKS)


def launches(p: Path) -> bool:
    """A script that launches the job itself (among helper modules that only build parts of it)."""
    return bool(_LAUNCH_MARKS.search(_head(p, 2_000_000)))


def _head(p: Path, n: int) -> str:
    try:
        with p.open("r", encoding="utf-8", errors="replace") as fh:
            return fh.read(n)
    except OSError:
        return ""

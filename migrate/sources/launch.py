"""Front end for the launcher script (``run.sh``): the ``torchrun ... recipe.py --factory ... --yaml ...`` line.

The script is read as text with ``shlex``; nothing in it is executed.  Recognised: backslash continuations,
comments, ``export VAR=value`` and ``VAR=value cmd`` environment, ``torchrun`` / ``python -m torch.distributed.run``
/ ``python recipe.py`` commands, torchrun's options (``--nproc_per_node``/``--nproc-per-node``, ``--nnodes``,
``--standalone``, rendezvous and master options), and NeMo-Run's CLI (``--factory``/``-f``, ``--yaml``,
``--yes``/``-y``, ``-v``, and dotted overrides).  Positional parameters such as ``config-${1}.yaml`` are kept
as patterns so that each variant of the job can be resolved.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..diagnostics import Diagnostics
from ..ir import Provenance
from .overrides import parse_override
from .yaml_source import Override

_TORCHRUN_FLAGS_WITH_VALUE = {
    "nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend", "rdzv_endpoint",
    "rdzv_id", "rdzv_conf", "max_restarts", "monitor_interval", "start_method", "role", "log_dir", "redirects",
    "tee", "local_addr", "logs_specs", "local_ranks_filter", "event_log_handler", "numa_binding", "signals_to_handle",
}
_TORCHRUN_BOOL = {"standalone", "no_python", "module", "run_path", "virtual_local_rank", "m"}
_NEMORUN_WITH_VALUE = {"--factory", "-f", "--yaml", "--name", "-n", "--to-yaml", "--to-toml", "--to-json", "--load", "-l",
                       "--rich-exceptions", "--rich-traceback", "--rich-show-locals", "--rich-theme"}
_NEMORUN_BOOL = {"--yes", "-y", "--no-confirm", "-v", "--verbose", "--dryrun", "--direct", "--no-direct", "--repl", "-r",
                 "--detach", "--tail-logs", "--no-tail-logs", "--rich-exceptions", "--no-rich-exceptions"}
_ENV = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_POSITIONAL = re.compile(r"\$\{?(\d)\}?")


@dataclass
class Launch:
    file: str
    line: int
    launcher: str  # torchrun | python
    nproc_per_node: int | None = None
    nproc_prov: Provenance | None = None
    nnodes: int | None = None
    nnodes_prov: Provenance | None = None
    standalone: bool = False
    torchrun_opts: dict[str, str] = field(default_factory=dict)
    script: str | None = None
    factory: Override | None = None
    yaml_args: list[tuple[str, Provenance]] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    verbose: bool = False
    hydra: list[tuple[str, Provenance]] = field(default_factory=list)  # NeMo 1.0 / Aligner scripts: Hydra overrides
    config_path: str | None = None
    config_name: str | None = None

    def yaml_pattern(self) -> str | None:
        """``config-${1}.yaml`` -> ``config-{}.yaml`` (None when there is no positional parameter)."""
        if not self.yaml_args:
            return None
        text = self.yaml_args[0][0]
        return _POSITIONAL.sub("{}", text) if _POSITIONAL.search(text) else None


def _logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    buf = ""
    start = 0
    for i, line in enumerate(text.splitlines(), start=1):
        stripped = line.rstrip()
        if not buf:
            start = i
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        out.append((start, buf))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def parse_run_sh(path: Path, display: str, diags: Diagnostics) -> Launch | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        diags.error("NM130", f"cannot read launcher script: {e}", file=display)
        return None
    env: dict[str, str] = {}
    found: Launch | None = None
    for lineno, line in _logical_lines(text):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            toks = shlex.split(s, comments=True, posix=True)
        except ValueError as e:
            diags.warning("NM131", f"cannot tokenise this line ({e}); it is ignored", file=display, line=lineno)
            continue
        if not toks:
            continue
        if toks[0] == "export":
            for t in toks[1:]:
                m = _ENV.match(t)
                if m:
                    env[m.group(1)] = m.group(2)
            continue
        i = 0
        local_env: dict[str, str] = {}
        while i < len(toks) and _ENV.match(toks[i]):
            m = _ENV.match(toks[i])
            local_env[m.group(1)] = m.group(2)
            i += 1
        if i == len(toks):
            env.update(local_env)
            continue
        cmd = toks[i:]
        launcher = None
        if Path(cmd[0]).name == "torchrun":
            launcher, rest = "torchrun", cmd[1:]
        elif Path(cmd[0]).name.startswith("python") and len(cmd) > 2 and cmd[1] == "-m" and cmd[2] in ("torch.distributed.run", "torch.distributed.launch"):
            launcher, rest = "torchrun", cmd[3:]
        elif Path(cmd[0]).name.startswith("python") and len(cmd) > 1 and cmd[1].endswith(".py"):
            launcher, rest = "python", cmd[1:]
        if launcher is None:
            continue
        if found is not None:
            diags.warning("NM132", "a second launch command; only the first one is migrated", file=display, line=lineno)
            continue
        found = Launch(file=display, line=lineno, launcher=launcher, env={**env, **local_env})
        _parse_command(found, rest, lineno, diags)
    if found is None:
        diags.error("NM133", "no torchrun / python launch command found", file=display,
                    hint="expected a line like: torchrun --nproc_per_node=8 recipe.py --factory 'my_recipe()' --yaml cfg.yaml")
    return found


def _parse_command(l: Launch, rest: list[str], lineno: int, diags: Diagnostics) -> None:
    where = {"file": l.file, "line": lineno}
    i = 0
    if l.launcher == "torchrun":
        while i < len(rest) and rest[i].startswith("-"):
            tok = rest[i]
            name, _, val = tok.lstrip("-").partition("=")
            norm = name.replace("-", "_")
            if norm in _TORCHRUN_BOOL:
                if norm == "standalone":
                    l.standalone = True
                l.torchrun_opts[norm] = "true"
                i += 1
                continue
            if norm in _TORCHRUN_FLAGS_WITH_VALUE:
                if not val:
                    if i + 1 >= len(rest):
                        diags.error("NM134", f"torchrun option {tok} needs a value", **where)
                        return
                    val = rest[i + 1]
                    i += 1
                i += 1
                l.torchrun_opts[norm] = val
                prov = Provenance(kind="launch", file=l.file, line=lineno, detail=f"--{name}={val}")
                if norm == "nproc_per_node":
                    if val.isdigit():
                        l.nproc_per_node, l.nproc_prov = int(val), prov
                    else:
                        diags.warning("NM135", f"--nproc_per_node={val} depends on the machine; pass --nproc-per-node N to nemo-migrate",
                                      **where)
                elif norm == "nnodes":
                    lo = val.split(":")[-1]
                    if lo.isdigit():
                        l.nnodes, l.nnodes_prov = int(lo), prov
                    else:
                        diags.warning("NM135", f"--nnodes={val} is not a number; pass --nnodes N to nemo-migrate", **where)
                continue
            diags.warning("NM136", f"unknown torchrun option {tok}; it is not carried over", **where)
            i += 1
        if i >= len(rest):
            diags.error("NM133", "torchrun has no script to run", **where)
            return
    l.script = rest[i]
    i += 1
    args = rest[i:]
    if Path(l.script).name in HYDRA_SCRIPTS or any(a.startswith(("--config-path", "--config-name", "-cp", "-cn")) for a in args):
        _parse_hydra(l, args, lineno, diags)
        return
    j = 0
    while j < len(args):
        tok = args[j]
        name, eq, val = tok.partition("=")
        if tok.startswith("-") and name in _NEMORUN_WITH_VALUE:
            if not eq:
                if j + 1 >= len(args):
                    diags.error("NM137", f"{name} needs a value", **where)
                    return
                val = args[j + 1]
                j += 1
            j += 1
            prov = Provenance(kind="cli", file=l.file, line=lineno, detail=f"{name} {val}")
            if name in ("--factory", "-f"):
                l.factory = Override("factory", "=", val, prov, raw=val)
            elif name == "--yaml":
                l.yaml_args.append((val, prov))
            continue
        if tok.startswith("-") and tok in _NEMORUN_BOOL:
            if tok in ("-v", "--verbose"):
                l.verbose = True
            if tok == "-y" and j + 1 < len(args) and args[j + 1].endswith((".yaml", ".yml")):
                diags.error("NM138", f"'-y {args[j + 1]}': NeMo-Run declares -y for both --yes and --yaml and the later one wins, "
                            f"so this fails with \"Invalid overwrite format: {args[j + 1]}\"", hint="use --yaml", **where)
            j += 1
            continue
        if tok.startswith("-"):
            diags.warning("NM139", f"NeMo-Run option {tok} is not understood by this compiler; ignored", **where)
            j += 1
            continue
        prov = Provenance(kind="cli", file=l.file, line=lineno, detail=tok)
        ov = parse_override(tok, prov, diags)
        if ov is not None:
            l.overrides.append(ov)
        j += 1


HYDRA_SCRIPTS = {"megatron_gpt_finetuning.py", "megatron_gpt_sft.py", "train_gpt_sft.py", "megatron_gpt_peft_tuning.py"}


def _parse_hydra(l: Launch, args: list[str], lineno: int, diags: Diagnostics) -> None:
    """A NeMo 1.0 / NeMo-Aligner (Hydra) command line: --config-path/--config-name and key=value overrides."""
    where = {"file": l.file, "line": lineno}
    j = 0
    while j < len(args):
        tok = args[j]
        name, eq, val = tok.partition("=")
        if name in ("--config-path", "-cp", "--config-name", "-cn"):
            if not eq:
                if j + 1 >= len(args):
                    diags.error("NM137", f"{name} needs a value", **where)
                    return
                val = args[j + 1]
                j += 1
            if name in ("--config-path", "-cp"):
                l.config_path = val
            else:
                l.config_name = val
            j += 1
            continue
        if tok.startswith("-") and not tok.startswith("--config"):
            diags.warning("NM139", f"Hydra option {tok} is not understood by this compiler; ignored", **where)
            j += 1
            continue
        l.hydra.append((tok, Provenance(kind="cli", file=l.file, line=lineno, detail=tok)))
        j += 1


def expand_positional(text: str, variant: str) -> str:
    return _POSITIONAL.sub(variant, text)


def variant_of(pattern: str, filename: str) -> str | None:
    """``config-{}.yaml`` matched against ``config-fp8.yaml`` -> ``fp8``."""
    pre, _, post = pattern.partition("{}")
    if filename.startswith(pre) and filename.endswith(post) and len(filename) > len(pre) + len(post):
        return filename[len(pre): len(filename) - len(post)]
    return None

"""Front end for the launcher script (``run.sh``, an sbatch script, a notebook's ``%%bash`` cell).

The script is parsed with tree-sitter's bash grammar and interpreted statically: nothing in it is executed.
What is understood:

- the job command, found through the wrappers around it (``srun``, ``singularity``/``apptainer exec``,
  ``enroot start|exec``, ``docker run``, ``nsys profile``, ``numactl``, ``env``, ``timeout``, ``stdbuf``,
  ``nohup``, ``nice``, ``time``, ``exec``, ``bash -c STRING``, ``bash FILE``), whose own options are known
  from their sources (tables below), inside ``&&``/``||``/``;``/``|`` lists, ``if``/``case``/loops, functions,
  here-documents (``read -d '' CMD <<EOF``, ``CMD=$(cat <<EOF ...)``, ``cat > job.sh <<EOF`` then
  ``bash job.sh``), ``eval`` and ``source``;
- shell variables (assignments, ``export``/``declare``/``local``/``readonly``, arrays, ``$A``, ``${A}``,
  ``${A:-default}`` and the other parameter expansions, ``$((...))``, quoting), each expanded word keeping the
  line it was written on and the variables it came through; the ``SLURM_*`` values a plain number in the
  ``#SBATCH`` header fixes (``--nodes``, ``--gpus-per-node``, ...).  What cannot be known before the job runs
  (other ``$SLURM_*``, ``$(...)``, unset variables) stays unresolved and is reported by name where it matters;
- the command itself: ``torchrun``/``python -m torch.distributed.run`` options, ``python`` options, NeMo-Run's CLI
  (``recipe.py --factory X --yaml cfg.yaml k=v``, and ``nemo llm finetune ...``: nemo_run/cli/api.py's
  ``RunContext.cli_command``) and NeMo 1.0 / NeMo-Aligner Hydra scripts.

Every command the script runs is a candidate with a kind (``finetune``, ``pretrain`` or ``other``); the single
fine-tuning command becomes the :class:`Launch`.  Positional parameters such as ``config-${1}.yaml`` are kept as
patterns so that each variant of the job can be resolved.  Lines: a word on a backslash-continued line counts on its
command's first line; every line of a here-document or of a multi-line string counts as its own line.
Diagnostics NM130-NM139 (as before) and NM170-NM184.
"""

from __future__ import annotations

import bisect
import codecs
import fnmatch
import itertools
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Collection

from ..diagnostics import Diagnostics
from ..ir import Knob, Node, Provenance
from . import nemo1 as _nemo1
from .overrides import override_key, parse_override
from .yaml_source import Override

# ---------------------------------------------------------------------------------------------- option tables
# Short options in getopt syntax ("c:" takes a value, "c::" only an attached one, "c" is a flag); long options
# "name=" (takes a value), "name=?" (only as --name=value), "name" (a flag).

_TORCHRUN = (  # torch/distributed/run.py get_args_parser() (torch 2.13)
    "r:t:m",
    "nnodes= nproc-per-node= nproc_per_node= rdzv-backend= rdzv_backend= rdzv-endpoint= rdzv_endpoint= rdzv-id= "
    "rdzv_id= rdzv-conf= rdzv_conf= standalone max-restarts= max_restarts= monitor-interval= monitor_interval= "
    "start-method= start_method= event-log-handler= event_log_handler= role= module no-python no_python run-path "
    "run_path log-dir= log_dir= redirects= tee= local-ranks-filter= local_ranks_filter= duplicate-stdout-filters= "
    "duplicate_stdout_filters= duplicate-stderr-filters= duplicate_stderr_filters= node-rank= node_rank= "
    "master-addr= master_addr= master-port= master_port= local-addr= local_addr= logs-specs= logs_specs= "
    "numa-binding= numa_binding= signals-to-handle= signals_to_handle= shutdown-timeout= shutdown_timeout= "
    "virtual-local-rank virtual_local_rank use-env use_env help",  # use-env: torch.distributed.launch
)
_SRUN = (  # slurm src/common/slurm_opt.c common_options (srun's), plus the pyxis plugin (NVIDIA/pyxis args.c)
    "A:b:D:M:C:S:c:d:Xm:e:x:B:G:hHI::i:J:K::lL:T:Zk::F:w:N:n:o:Osp:Eq:Qr:t:uvVW:",
    "accel-bind= account= acctg-freq= async autocomplete= bcast=? bcast-exclude= begin= bb= bbf= "
    "cluster-constraint= chdir= cluster= clusters= comment= compress=? consolidate-segments container= "
    "container-id= context= contiguous constraint= core-spec= cores-per-socket= cpu-bind= cpu_bind= cpu-freq= "
    "cpus-per-gpu= cpus-per-task= deadline= debugger-test delay-boot= dependency= disable-status distribution= "
    "epilog= error= exact exclude= exclusive=? export= external-launcher=? extra= extra-node-info= gpu-bind= "
    "gpu-freq= gpus= gpus-per-node= gpus-per-socket= gpus-per-task= gres= gres-flags= help het-group= hint= hold "
    "ignore-signals= immediate=? input= interactive jobid= job-name= kill-on-bad-exit=? label licenses= "
    "mail-type= mail-user= threads= mcs-label= mem= mem-bind= mem-per-cpu= mem-per-gpu= mem-update= mincpus= "
    "mpi= msg-timeout= multi-prog network= nice=? no-allocate no-kill=? nodefile= nodelist= nodes= ntasks= "
    "ntasks-per-core= ntasks-per-gpu= ntasks-per-node= ntasks-per-socket= ntasks-per-tres= oom-kill-step=? "
    "open-mode= output= overcommit overlap=? oversubscribe pack-group= parsable partition= prefer= preserve-env "
    "priority= profile= prolog= propagate=? pty=? qos= quiet quit-on-interrupt reboot relative= resources= "
    "reservation= resv-ports=? runtime= segment= send-libs=? signal= slurmd-debug= sockets-per-node= spread-job "
    "spread-segments stepmgr switches= task-epilog= task-prolog= tasks-per-node= test-only thread-spec= "
    "threads-per-core= time= time-min= tmp= treewidth= tres-bind= tres-per-task= unbuffered use-min-nodes verbose "
    "version usage wait= wait-for-children wckey= whole "
    "container-image= container-mounts= container-workdir= container-name= container-save= container-env= "
    "container-unshare= container-mount-home no-container-mount-home container-remap-root no-container-remap-root "
    "container-entrypoint no-container-entrypoint container-entrypoint-log container-writable container-readonly",
)
_APPTAINER = (  # apptainer + sylabs/singularity cmd/internal/cli/action_flags.go and the common flags of exec/run
    # ("singularity run IMAGE CMD" runs the image's runscript, which for NGC images execs CMD)
    "B:H:o:S:W:s:fecCwpinu",
    "app= bind= mount= home= overlay= scratch= workdir= shell= cwd= pwd= hostname= network= network-args= dns= "
    "security= apply-cgroups= containlibs= fusemount= tmpdir= no-mount= add-caps= drop-caps= env= no-env= "
    "env-file= dmtcp-launch= dmtcp-restart= blkio-weight= blkio-weight-device= cpu-shares= cpus= cpuset-cpus= "
    "cpuset-mems= memory= memory-reservation= memory-swap= pids-limit= runscript-timeout= netns-path= device= "
    "cdi-dirs= data= proot= arch= platform= authfile= docker-username= docker-password= docker-host= pem-path= "
    "disable-cache boot fakeroot cleanenv compat contain containall nv nvccli compat32 rocm writable "
    "writable-tmpfs no-home no-init no-nv no-rocm pid no-pid ipc net uts userns keep-privs no-privs allow-setuid "
    "no-umask no-eval oom-kill-disable unsquash ignore-subuid ignore-fakeroot-command ignore-userns underlay "
    "sharens intel-hpu no-compat no-setgroups sif-fuse oci no-oci no-https nohttps docker-login passphrase "
    "keep-layers tmp-sandbox no-tmp-sandbox",
)
_APPTAINER_GLOBAL = ("dqsvc:", "debug nocolor silent quiet verbose config= build-config")
_DOCKER_RUN = (  # docker/cli cli/command/container/opts.go + run.go
    "a:c:e:h:l:m:p:u:v:w:Pdiqt",
    "add-host= annotation= attach= blkio-weight= blkio-weight-device= cap-add= cap-drop= cgroup-parent= "
    "cgroupns= cidfile= cpu-count= cpu-percent= cpu-period= cpu-quota= cpu-rt-period= cpu-rt-runtime= "
    "cpu-shares= cpus= cpuset-cpus= cpuset-mems= detach-keys= device= device-cgroup-rule= device-read-bps= "
    "device-read-iops= device-write-bps= device-write-iops= dns= dns-opt= dns-option= dns-search= domainname= "
    "entrypoint= env= env-file= expose= gpus= group-add= health-cmd= health-interval= health-retries= "
    "health-start-interval= health-start-period= health-timeout= hostname= io-maxbandwidth= io-maxiops= ip= ip6= "
    "ipc= isolation= kernel-memory= label= label-file= link= link-local-ip= log-driver= log-opt= mac-address= "
    "memory= memory-reservation= memory-swap= memory-swappiness= mount= name= net= net-alias= network= "
    "network-alias= oom-score-adj= pid= pids-limit= platform= publish= pull= restart= runtime= security-opt= "
    "shm-size= stop-signal= stop-timeout= storage-opt= sysctl= tmpfs= ulimit= user= userns= uts= volume= "
    "volume-driver= volumes-from= workdir= detach disable-content-trust help init interactive no-healthcheck "
    "oom-kill-disable privileged publish-all quiet read-only rm sig-proxy tty use-api-socket",
)
_DOCKER_GLOBAL = ("c:H:l:D", "config= context= host= log-level= debug tls tlscacert= tlscert= tlskey= tlsverify")


@dataclass(frozen=True)
class _Spec:
    short: str = ""
    long: str = ""
    style: str = "getopt"  # getopt (clusters, --abbrev), pflag (clusters), plain (one option per word), nsys
    operands: int = 0  # words between the options and the command (IMAGE, DURATION, NAME, PID)
    sub: tuple[str, ...] = ()  # subcommands that run a command (``singularity exec``)
    pre: tuple[str, str] | None = None  # options before the subcommand
    env: tuple[str, ...] = ()  # options whose value is NAME=VALUE for the command's environment
    clean: tuple[str, ...] = ()  # options after which the command does not inherit the environment ("*": never does)


_WRAPPERS: dict[str, _Spec] = {
    "srun": _Spec(*_SRUN),
    "numactl": _Spec("ai:w:p:P:c:N:C:m:slbHS:f:o:L:tM:dDI:uTV",  # numactl/numactl numactl.c opts[]
                     "all interleave= weighted-interleave= preferred= preferred-many= cpubind= cpunodebind= "
                     "physcpubind= membind= show localalloc balancing hardware shm= file= offset= length= strict "
                     "shmmode= dump dump-nodes shmid= huge touch cpu-compress verify version"),
    "env": _Spec("a:C:iS:u:v0", "argv0= ignore-environment env0-from= null unset= chdir= default-signal=? "
                 "ignore-signal=? block-signal=? list-signal-handling debug split-string= help version",
                 clean=("i", "ignore-environment")),  # coreutils
    "timeout": _Spec("fk:ps:v", "foreground kill-after= preserve-status signal= verbose help version", operands=1),
    "stdbuf": _Spec("i:o:e:", "input= output= error= help version"),
    "nice": _Spec("n:", "adjustment= help version"),
    "nohup": _Spec("", "help version"),
    "time": _Spec("f:o:apvqV", "format= output= append portability verbose quiet version help"),  # GNU time, bash -p
    "exec": _Spec("cla:", "", style="plain"),
    "nsys": _Spec(style="nsys", sub=("profile", "launch")),  # every profile switch takes a parameter
    "singularity": _Spec(*_APPTAINER, style="pflag", operands=1, sub=("exec", "run"), pre=_APPTAINER_GLOBAL, env=("env",),
                         clean=("cleanenv", "e", "containall", "C")),
    "apptainer": _Spec(*_APPTAINER, style="pflag", operands=1, sub=("exec", "run"), pre=_APPTAINER_GLOBAL, env=("env",),
                       clean=("cleanenv", "e", "containall", "C")),
    "enroot": _Spec(style="plain", operands=1, sub=("start", "exec")),  # NVIDIA/enroot enroot.in: per subcommand below
    "docker": _Spec(*_DOCKER_RUN, style="pflag", operands=1, sub=("run",), pre=_DOCKER_GLOBAL, env=("e", "env"), clean=("*",)),
    "podman": _Spec(*_DOCKER_RUN, style="pflag", operands=1, sub=("run",), pre=_DOCKER_GLOBAL, env=("e", "env"), clean=("*",)),
    "nvidia-docker": _Spec(*_DOCKER_RUN, style="pflag", operands=1, sub=("run",), pre=_DOCKER_GLOBAL, env=("e", "env"),
                           clean=("*",)),
}
_ENROOT = {"start": _Spec("c:e:m:rw", "conf= env= rc= root rw mount= pid net ipc uts help", "plain", 1, env=("e", "env")),
           "exec": _Spec("e:", "env= help", "plain", 1, env=("e", "env"))}
_SHELLS = {"bash", "sh", "dash", "zsh", "ksh"}
# NeMo-Run's CLI (nemo_run/cli/api.py RunContext.cli_command): click options; '-y' is declared for --yaml and
# then for --yes, and click keeps the later one, so '-y' is --yes.
_NEMORUN_WITH_VALUE = {"--factory", "-f", "--yaml", "--name", "-n", "--to-yaml", "--to-toml", "--to-json", "--load",
                       "-l", "--rich-theme"}
_NEMORUN_BOOL = {"--yes", "-y", "--no-confirm", "-v", "--verbose", "--dryrun", "--direct", "--no-direct", "--repl",
                 "-r", "--detach", "--tail-logs", "--no-tail-logs", "--rich-exceptions", "--no-rich-exceptions",
                 "--rich-traceback-short", "--rich-traceback-full", "--rich-show-locals", "--rich-hide-locals",
                 "--lazy"}
# NeMo 1.0 / NeMo-Aligner training scripts, from their one home (mappings/nemo1/scripts.yaml)
HYDRA_SCRIPTS = frozenset(_nemo1.hydra_scripts())
_HYDRA_PRETRAIN = frozenset(n for n, e in _nemo1.not_sft().items() if e.get("kind") == "pretrain")
_NOT_SFT = {n: e["trains"] for n, e in _nemo1.not_sft().items() if e.get("kind") != "pretrain" and n not in HYDRA_SCRIPTS}
_SBATCH_ENV = {  # sbatch(1) OUTPUT ENVIRONMENT VARIABLES that a plain number in an #SBATCH option fixes
    "nodes": ("SLURM_NNODES", "SLURM_JOB_NUM_NODES"), "N": ("SLURM_NNODES", "SLURM_JOB_NUM_NODES"),
    "ntasks": ("SLURM_NTASKS", "SLURM_NPROCS"), "n": ("SLURM_NTASKS", "SLURM_NPROCS"),
    "ntasks-per-node": ("SLURM_NTASKS_PER_NODE",), "gpus-per-node": ("SLURM_GPUS_PER_NODE",), "gpus": ("SLURM_GPUS",),
    "G": ("SLURM_GPUS",), "gpus-per-task": ("SLURM_GPUS_PER_TASK",), "cpus-per-task": ("SLURM_CPUS_PER_TASK",),
    "c": ("SLURM_CPUS_PER_TASK",),
}
_PY_WITH_VALUE = set("WX")
_PY_FLAGS = set("bBdEhiIOPqsSuvVx")
# shell built-ins and utilities that never run the job
_BUILTINS = {"cd", "echo", "printf", "set", "shift", "true", "false", ":", "exit", "return", "trap", "wait", "sleep",
             "test", "[", "[[", "pushd", "popd", "umask", "ulimit", "alias", "unalias", "hash", "type", "which",
             "break", "continue", "let", "shopt", "getopts", "readonly", "local", "declare", "typeset", "export",
             "unset", "builtin", "command"}
_RUNTIME = re.compile(r"^(SLURM|SLURMD|SBATCH|SRUN|PMIX|PMI|OMPI|MPI|PBS|LSB|FLUX|KUBERNETES|TORCHELASTIC)_|"
                      r"^(HOSTNAME|HOST|USER|HOME|PWD|OLDPWD|RANDOM|LINENO|SECONDS|PPID|UID|EUID|BASHPID|RANK|"
                      r"LOCAL_RANK|WORLD_SIZE|GROUP_RANK|NODE_RANK|MASTER_ADDR|MASTER_PORT|PATH)$")
_RENDEZVOUS = {"MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NNODES", "NUM_NODES"}
_ENV = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_POSITIONAL = re.compile(r"\$\{?(\d)\}?")
_MAX_DEPTH = 8
_MAX_TEXT = 200_000  # a word or a variable longer than this (or an array longer than _MAX_ITEMS) is not followed
_MAX_ITEMS = 10_000


# ---------------------------------------------------------------------------------------------- public types

@dataclass
class Word:
    """One word of a command after the shell's expansions, with where it was written."""

    text: str
    file: str
    line: int
    unknown: tuple[tuple[str, str], ...] = ()  # (variable, why it is not known before the job runs)
    via: tuple[str, ...] = ()  # "STEPS from run.sh:5"
    lines: tuple[int, ...] = ()  # the line each line of a multi-line text was written on
    notes: tuple = ()  # ((row, first byte, end byte, "STEPS from run.sh:5"), ...): which variable put which bytes in

    def detail(self) -> str:
        return f"{self.text} ({', '.join(self.via)})" if self.via else self.text

    def prov(self, kind: str = "cli", detail: str | None = None) -> Provenance:
        return Provenance(kind=kind, file=self.file, line=self.line, detail=detail if detail is not None else self.detail())


@dataclass
class Candidate:
    """A command the script runs, after its wrappers."""

    kind: str  # finetune | pretrain | other
    launcher: str | None  # torchrun | python | nemo-cli | None
    file: str
    line: int
    argv: list[Word]
    wrappers: list[str] = field(default_factory=list)
    conditional: str | None = None  # "if at run.sh:12" when the command runs only under a condition
    env: dict[str, "_Var"] = field(default_factory=dict)
    why: str = ""  # why the kind (shown when no fine-tuning command is found)
    cli: str = "nemo-run"  # how the script reads its arguments: nemo-run | hydra | argparse

    def key(self) -> tuple[str, ...]:
        """What makes two commands the same job (NeMo-Run's export/confirmation/verbosity flags do not)."""
        out, skip = [], False
        for w in self.argv:
            if skip:
                skip = False
            elif w.text in ("--to-yaml", "--to-toml", "--to-json"):
                skip = True
            elif w.text.startswith(("--to-yaml=", "--to-toml=", "--to-json=")) or w.text in ("--dryrun", "--yes", "-y", "--no-confirm", "-v", "--verbose"):
                continue
            else:
                out.append(w.text)
        return tuple(out)

    def show(self) -> str:
        text = " ".join(w.text for w in self.argv)
        return text if len(text) <= 70 else text[:67] + "..."


@dataclass(frozen=True)
class SbatchOption:
    """One option of an #SBATCH header line: its long name (``-t`` -> ``time``), its value (None for a flag) and where."""

    name: str
    value: str | None
    prov: Provenance


@dataclass
class Launch:
    file: str
    line: int
    launcher: str  # torchrun | python | nemo-cli
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
    kind: str = "finetune"  # finetune | pretrain
    wrappers: list[str] = field(default_factory=list)  # ["srun", "singularity exec", "bash -c"]
    env_prov: dict[str, Provenance] = field(default_factory=dict)
    script_args: list[tuple[str, Provenance]] = field(default_factory=list)  # the words after the script, expanded
    unresolved: list[tuple[str, Provenance]] = field(default_factory=list)  # variables not known before the job runs
    export: tuple[str, str] | None = None  # NeMo-Run --to-yaml/--to-toml/--to-json: (fmt, path)
    run_args: list[tuple[str, Provenance]] = field(default_factory=list)  # NeMo-Run run.executor=... (not the job)
    sbatch: list[SbatchOption] = field(default_factory=list)  # the script's #SBATCH header, in order (an sbatch script)

    def yaml_pattern(self) -> str | None:
        """``config-${1}.yaml`` -> ``config-{}.yaml`` (None when there is no positional parameter)."""
        if not self.yaml_args:
            return None
        text = self.yaml_args[0][0]
        return _POSITIONAL.sub("{}", text) if _POSITIONAL.search(text) else None


Predicate = Callable[[str], "bool | str | None"]


# ---------------------------------------------------------------------------------------------- public API

def parse_run_sh(path: Path, display: str, diags: Diagnostics, *, is_recipe: Predicate | None = None,
                 set_keys: Collection[str] = (), launch_line: int | None = None) -> Launch | None:
    text = _read(path, display, diags)
    if text is None:
        return None
    return parse_shell_text(text, display, diags, is_recipe=is_recipe, base=path.parent, set_keys=set_keys, launch_line=launch_line)


def parse_shell_text(text: str, display: str, diags: Diagnostics, *, first_line: int = 1, is_recipe: Predicate | None = None,
                     base: Path | None = None, set_keys: Collection[str] = (), launch_line: int | None = None) -> Launch | None:
    """The fine-tuning command of a shell script (or None, with the reason in ``diags``).

    ``is_recipe(script)`` says whether ``python SCRIPT`` / ``torchrun SCRIPT`` runs a fine-tuning recipe: True or
    "finetune", "pretrain", False (another program) or None (decide as by default: the script next to the
    launcher mentions nemo_run/finetune, or its command line carries NeMo-Run or Hydra options).  ``set_keys``:
    override keys the caller sets itself (``--set``), so that an unknown value for them in the script is no error.
    ``launch_line``: the line of the command to migrate when the script runs several.
    """
    cands = scan_shell_text(text, display, diags, first_line=first_line, is_recipe=is_recipe, base=base)
    launch = pick_launch(cands, display, diags, set_keys=set_keys, launch_line=launch_line)
    if launch is not None:
        launch.sbatch = sbatch_header(text, display, first_line)
    return launch


def scan_shell_text(text: str, display: str, diags: Diagnostics, *, first_line: int = 1, is_recipe: Predicate | None = None,
                    base: Path | None = None) -> list[Candidate]:
    """Every command the script runs, in order, classified."""
    sh = _Shell(display, diags, is_recipe, base)
    sh.vars.update(_sbatch_env(text, display, first_line))
    try:
        sh.run(text, [first_line + i for i in range(text.count("\n") + 1)], display)
    except RecursionError:
        diags.error("NM182", "the script nests too deeply to be read", file=display,
                    hint="pass --run-sh with a script that runs the training command directly")
    return sh.cands


def pick_launch(cands: list[Candidate], display: str, diags: Diagnostics, *, set_keys: Collection[str] = (),
                launch_line: int | None = None) -> Launch | None:
    """The single fine-tuning command of a script's candidates (``launch_line``: the one at that line of ``display``)."""
    if launch_line is not None:
        at = [c for c in cands if c.line == launch_line and c.file == display and c.launcher is not None]
        if not at:
            lines = ", ".join(f"{c.file}:{c.line} ({c.kind})" for c in cands if c.launcher is not None) or "none"
            diags.error("NM184", f"no launch command at line {launch_line} of {display}", file=display, line=launch_line,
                        hint=f"launch commands in the script: {lines}")
            return None
        cands = [replace(c, kind="finetune") if c.kind == "other" else c for c in at[:1]]
    fts = [c for c in cands if c.kind == "finetune"]
    pts = [c for c in cands if c.kind == "pretrain"]
    distinct: dict[tuple[str, ...], Candidate] = {}
    for c in fts:
        distinct.setdefault(c.key(), c)
    if len(distinct) > 1:
        lines = "; ".join(f"{c.file}:{c.line}: {c.show()}" for c in distinct.values())
        diags.error("NM132", f"{len(distinct)} different fine-tuning commands: {lines}", file=fts[0].file, line=fts[0].line,
                    hint="pass --run-sh with a script that runs one of them, or --launch-line N to choose one")
        return None
    if not fts and pts:
        c = pts[0]
        diags.error("NM174", f"this job is pre-training ({c.show()}), not a fine-tune; nemo-migrate converts fine-tuning jobs",
                    file=c.file, line=c.line, hint="Automodel 0.7's fine-tune recipe is the target; migrate the pre-training job by hand")
        return _launch(c, diags, set_keys, kind="pretrain")
    if not fts:
        seen = [c for c in cands if c.launcher is not None]
        what = "; ".join(f"{c.file}:{c.line}: {c.show()} ({c.why or 'not a fine-tuning recipe'})" for c in seen[:4])
        where = {"file": seen[0].file, "line": seen[0].line} if seen else {"file": display}
        diags.error("NM133", "no fine-tuning launch command found" + (f" (seen: {what})" if what else ""), **where,
                    hint="expected a line like: torchrun --nproc_per_node=8 recipe.py --factory 'my_recipe()' --yaml cfg.yaml, "
                         "or nemo llm finetune --factory llama3_8b ...; pass --recipe if the script is a recipe nemo-migrate cannot see")
        return None
    chosen = next((c for c in fts if not any(w.text.startswith("--to-") for w in c.argv)), fts[0])
    for c in pts:
        diags.warning("NM180", f"the pre-training command ({c.show()}) is not migrated (out of scope)", file=c.file, line=c.line)
    if chosen.conditional:
        diags.note("NM175", f"the fine-tuning command runs only under a condition ({chosen.conditional}); it is migrated as if it runs",
                   file=chosen.file, line=chosen.line)
    launch = _launch(chosen, diags, set_keys)
    launch.export = launch.export or next(filter(None, (_export_of(c) for c in fts)), None)
    return launch


def looks_like_launcher(path: Path, is_recipe: Predicate | None = None) -> bool:
    """A shell script (run.sh, *.sh, *.sbatch, *.slurm, or a file with a shell shebang / #SBATCH lines) that runs a
    fine-tuning or pre-training command, or a known NeMo / NeMo-Aligner training script."""
    try:
        if not path.is_file() or path.stat().st_size > 1_000_000:
            return False
        if path.suffix not in (".sh", ".sbatch", ".slurm", ".slrm", ".bash"):
            if path.suffix:
                return False
            with path.open("rb") as fh:
                head = fh.read(4096)
            if not (re.match(rb"#!\s*\S*(/|env\s+)(ba|da|z|k)?sh\b", head) or re.search(rb"^#SBATCH", head, re.M)):
                return False
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    cands = scan_shell_text(text, path.name, Diagnostics(), is_recipe=is_recipe, base=path.parent)
    known = HYDRA_SCRIPTS | _HYDRA_PRETRAIN | set(_NOT_SFT)
    scripts = [(_command_parts(c.argv) or _Cmd(None)).script for c in cands]
    return any(c.kind in ("finetune", "pretrain") or (s is not None and Path(s.text).name in known) for c, s in zip(cands, scripts))


def expand_positional(text: str, variant: str) -> str:
    return _POSITIONAL.sub(variant, text)


def variant_of(pattern: str, filename: str) -> str | None:
    """``config-{}.yaml`` matched against ``config-fp8.yaml`` -> ``fp8``."""
    pre, _, post = pattern.partition("{}")
    if filename.startswith(pre) and filename.endswith(post) and len(filename) > len(pre) + len(post):
        return filename[len(pre): len(filename) - len(post)]
    return None


# sbatch(1)'s one-letter options, and its long options that take no value (any other takes the next word when no '=')
_SBATCH_SHORT = {"A": "account", "p": "partition", "N": "nodes", "t": "time", "J": "job-name", "n": "ntasks",
                 "c": "cpus-per-task", "G": "gpus", "o": "output", "e": "error", "C": "constraint", "q": "qos",
                 "D": "chdir", "d": "dependency", "a": "array", "w": "nodelist", "x": "exclude", "s": "oversubscribe",
                 "m": "distribution", "i": "input", "k": "no-kill", "H": "hold", "O": "overcommit", "W": "wait",
                 "L": "licenses", "S": "core-spec", "M": "clusters", "Q": "quiet", "v": "verbose", "B": "extra-node-info",
                 "F": "nodefile", "b": "begin", "I": "immediate", "h": "help", "V": "version", "u": "usage"}
_SBATCH_FLAGS = {"exclusive", "overcommit", "requeue", "no-requeue", "hold", "contiguous", "quiet", "verbose", "wait",
                 "test-only", "use-min-nodes", "spread-job", "oversubscribe", "parsable", "ignore-pbs", "reboot",
                 "no-kill", "get-user-env", "kill-on-invalid-dep", "help", "usage", "version", "immediate"}


def sbatch_header(text: str, display: str, first_line: int = 1) -> list[SbatchOption]:
    """The #SBATCH options of a script's header (read until the first command, as sbatch does), each with its line;
    ``--output %x.out`` and ``-t 4:00:00`` as ``--output=%x.out`` and ``--time=4:00:00``; '#' ends a directive."""
    opts: list[SbatchOption] = []
    for i, raw in enumerate(text.splitlines()):
        line = raw.strip()
        if line and not line.startswith("#"):
            break
        m = re.match(r"#SBATCH\s+(.*)", line)
        if not m:
            continue
        try:
            toks = shlex.split(m.group(1), comments=True)
        except ValueError:
            toks = m.group(1).split()
        prov = Provenance(kind="launch", file=display, line=first_line + i, detail=line[:200])
        k = 0
        while k < len(toks):
            t, k = toks[k], k + 1
            if t.startswith("--"):
                name, eq, val = t[2:].partition("=")
                value: str | None = val if eq else None
            elif t.startswith("-") and len(t) > 1:
                name, value = _SBATCH_SHORT.get(t[1], t[1]), (t[2:] or None)
            else:  # a word no option takes (`-A <<YOUR ACCOUNT>>`): part of the value before it
                if opts and opts[-1].prov.line == prov.line and opts[-1].value is not None:
                    opts[-1] = replace(opts[-1], value=f"{opts[-1].value} {t}")
                continue
            if value is None and name not in _SBATCH_FLAGS:  # an option that takes a value: the next word, else none given
                value, k = (toks[k], k + 1) if k < len(toks) and not toks[k].startswith("-") else ("", k)
            opts.append(SbatchOption(name, value, prov))
    return opts


def sbatch_node(opts: list[SbatchOption]) -> Node | None:
    """The #SBATCH header as the job's ``sbatch`` node (``sbatch.time`` = '01:00:00' at job.slurm:7; a flag is True;
    a repeated option: the last one, as sbatch reads it), for the LCH rows to carry into sbatch.sh."""
    if not opts:
        return None
    node = Node(cls="sbatch", prov=opts[0].prov)
    for o in opts:
        node.fields[o.name.replace("-", "_")] = Knob(value=True if o.value is None else o.value, prov=o.prov)
    return node


def _sbatch_env(text: str, display: str, first_line: int) -> dict[str, "_Var"]:
    """What Slurm sets in the job's environment from the #SBATCH header (read until the first command, as sbatch does)."""
    env: dict[str, _Var] = {}
    for i, line in enumerate(text.splitlines()):
        line = line.strip()
        if line and not line.startswith("#"):
            break
        m = re.match(r"#SBATCH\s+(.*)", line)
        try:
            toks = shlex.split(m.group(1), comments=True) if m else []
        except ValueError:
            continue
        for k, t in enumerate(toks):
            name, eq, val = t.partition("=") if t.startswith("--") else (t[:2], "", t[2:])
            val = val if eq or val else (toks[k + 1] if k + 1 < len(toks) else "")
            for var in _SBATCH_ENV.get(name.lstrip("-"), ()) if val.isdigit() else ():
                env[var] = _Var(text=val, where=f"{display}:{first_line + i}", exported=True, file=display,
                                via=(f"#SBATCH {name}={val}",))
    return env


def _read(path: Path, display: str, diags: Diagnostics) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        diags.error("NM130", f"cannot read launcher script: {e}", file=display)
        return None


# ---------------------------------------------------------------------------------------------- the shell

_PARSER = None
_SERIAL = itertools.count()
Notes = tuple  # ((row, first byte column, end byte column, "STEPS from run.sh:5"), ...) over a text's rows


def _parse(data: bytes):
    global _PARSER
    if _PARSER is None:
        import tree_sitter_bash
        from tree_sitter import Language, Parser

        _PARSER = Parser(Language(tree_sitter_bash.language()))
    return _PARSER.parse(data)


def _b(s: str) -> int:
    return len(s.encode("utf-8", "surrogateescape"))


@dataclass
class _Var:
    text: str = ""
    items: list[Word] | None = None  # arrays
    where: str = ""  # "run.sh:5"
    exported: bool = False
    unknown: tuple[tuple[str, str], ...] = ()
    via: tuple[str, ...] = ()
    lines: tuple[int, ...] = ()  # the line each line of a multi-line value was written on (here-documents)
    notes: Notes = ()
    file: str = ""
    hidden: str = ""  # set in the parent shell but not exported: a new shell does not see it

    def same(self, other: "_Var | None") -> bool:
        return other is not None and (self.text, self.exported, self.unknown, self.hidden) == \
            (other.text, other.exported, other.unknown, other.hidden) and \
            [w.text for w in self.items or []] == [w.text for w in other.items or []]


@dataclass
class _Src:
    file: str
    data: bytes
    lines: list[int]  # row -> line in file
    notes: Notes = ()
    rows: list[bytes] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # byte offset of each row
    serial: int = field(default_factory=lambda: next(_SERIAL))

    def row(self, pos: int) -> int:
        if not self.starts:
            self.starts = [0] + [m.end() for m in re.finditer(rb"\n", self.data)]
        return bisect.bisect_right(self.starts, pos) - 1

    def line(self, row: int) -> int:
        if row < len(self.lines):
            return self.lines[row]
        return (self.lines[-1] if self.lines else 1) + row - len(self.lines) + 1


class _Fields:
    """Builds the words of one shell word: field splitting of unquoted expansions, "${A[@]}" elements, and for each
    word the line of each of its lines and which variables put which bytes into it."""

    def __init__(self, file: str, line: int):
        self.file, self.line, self.out = file, line, []
        self._reset()

    def _reset(self) -> None:
        self.text: list[str] = []
        self.unk: list[tuple[str, str]] = []
        self.via: list[str] = []
        self.lns: list[int] = []
        self.nts: list[tuple[int, int, int, str]] = []
        self.srcs: set[int | None] = set()
        self.keep = False
        self.col = 0

    def add(self, text: str, *, split: bool = False, unknown=(), via=(), line: int | None = None, lines=None,
            notes: Notes = (), quoted: bool = False) -> None:
        """``line``: where a whole array element was written; ``lines``: the line of each line of ``text``."""
        if sum(map(len, self.text)) + len(text) > _MAX_TEXT:
            text, unknown, lines, notes = "${...}", ((_short(text), "the word grows too large to follow"),), None, ()
        n = text.count("\n") + 1
        lines = list(lines) if lines and len(lines) == n else [line or self.line] * n
        parts, pos = [], 0
        for m in re.finditer(r"[ \t\n]+", text) if split else ():
            parts.append((pos, text[pos:m.start()]))
            pos = m.end()
        parts.append((pos, text[pos:]))
        for k, (start, part) in enumerate(parts):
            if k:
                self.brk()
            row0, col0 = (len(self.lns) - 1 if self.lns else 0), self.col
            first = text.count("\n", 0, start)
            plines = lines[first:first + part.count("\n") + 1]
            self.lns = plines if not "".join(self.text) else self.lns + plines[1:]
            if part and not re.search(r"\s", part):  # a value put into a word: remember whose it is
                self.nts += [(row0, col0, col0 + _b(part), v) for v in via]
            if not split:
                self.nts += [(row0 + r, a + (col0 if r == 0 else 0), b + (col0 if r == 0 else 0), v) for r, a, b, v in notes]
            tail = part.rsplit("\n", 1)
            self.col = col0 + _b(part) if len(tail) == 1 else _b(tail[1])
            if part:
                self.srcs.add(line)
            self.text.append(part)
            self.keep = self.keep or quoted or bool(part)
            self.unk += unknown
            self.via += via

    def brk(self) -> None:
        s = "".join(self.text)
        if s or self.keep:
            # where the word was written: an array element's line, else (a here-doc / variable's text) its first line's
            line = (next(iter(self.srcs)) if len(self.srcs) == 1 else None) or (self.lns[0] if self.lns else None) or self.line
            self.out.append(Word(s, self.file, line, tuple(dict.fromkeys(self.unk)), tuple(dict.fromkeys(self.via)),
                                 tuple(self.lns) if set(self.lns) != {line} else (), tuple(self.nts)))
        self._reset()

    def done(self) -> list[Word]:
        self.brk()
        return self.out


class _Shell:
    """Walks the syntax tree in order, keeping the shell's variables, functions and the files it writes."""

    def __init__(self, display: str, diags: Diagnostics, is_recipe: Predicate | None, base: Path | None, *,
                 parent: "_Shell | None" = None, args: list[Word] | None = None, wrappers: list[str] | None = None):
        self.display, self.diags, self.is_recipe, self.base = display, diags, is_recipe, base
        self.vars: dict[str, _Var] = {}
        self.funcs: dict[str, tuple[object, _Src]] = {}
        self.files: dict[str, Word] = parent.files if parent else {}  # written by "cat > job.sh <<EOF"
        self.cands: list[Candidate] = parent.cands if parent else []
        self.missing: list[str] = parent.missing if parent else []  # sourced files that are not there
        self.args = args  # positional parameters; None: the script's own, not known
        self.wrappers = list(wrappers or [])
        self.cond: list[str] = list(parent.cond) if parent else []
        self.depth = parent.depth + 1 if parent else 0
        self.allexport = False
        self.seen: set[tuple[int, int]] = set()  # command substitutions already run
        self.unset_empty = False  # in a test, a variable the script never sets is empty
        self.src = _Src(display, b"", [1])
        if parent is not None:  # a new shell process: it sees the exported variables only
            for k, v in parent.vars.items():
                self.vars[k] = v if v.exported else _Var(where=v.where, hidden=f"it is set at {v.where} but not exported, so the new shell does not see it")

    def run(self, text: str, lines: list[int], file: str, notes: Notes = ()) -> None:
        if self.depth > _MAX_DEPTH:
            self.diags.warning("NM182", "scripts nest too deeply; the innermost one is not read", file=file, line=lines[0] if lines else None)
            return
        data = text.encode("utf-8", "surrogateescape")
        save = self.src
        try:
            self.src = _Src(file, data, lines, notes, data.split(b"\n"))
            tree = _parse(data)
            for _ in range(32):  # a line the grammar cannot read is reported and blanked, and the rest parsed again
                row = _first_error(tree.root_node)
                if row is None or not self.src.rows[row].strip():
                    break
                self._bad_line(row)
                rows = list(self.src.rows)
                rows[row] = b" " * len(rows[row])
                self.src = _Src(file, b"\n".join(rows), lines, notes, rows)
                tree = _parse(self.src.data)
            self._block(tree.root_node.children)
        finally:
            self.src = save

    def _bad_line(self, row: int) -> None:
        text = self.src.rows[row].decode("utf-8", "replace")
        line = self.src.line(row)
        if re.search(r"\b(torchrun|python[\d.]*|nemo)\b", text):
            self.diags.error("NM176", f"this line cannot be read as shell: {text.strip()[:60]}", file=self.src.file, line=line,
                             hint="fix the shell syntax, or pass --run-sh with a script that holds the launch command alone")
        else:
            self.diags.warning("NM131", f"this line cannot be read as shell and is ignored: {text.strip()[:60]}",
                               file=self.src.file, line=line)

    def _line(self, node, start_row: int | None = None) -> int:
        """The line a node is written on (a word on a backslash-continued line: its own line, where the user sees it)."""
        return self.src.line(node.start_point[0])

    def _txt(self, node) -> str:
        return self.src.data[node.start_byte:node.end_byte].decode("utf-8", "surrogateescape")

    def _where(self, node) -> str:
        return f"{self.src.file}:{self._line(node)}"

    # ----------------------------------------------------------------- statements

    def _block(self, nodes) -> None:
        for n in nodes:
            self._stmt(n)

    def _stmt(self, n) -> None:
        t = n.type
        if not n.is_named or t in ("comment", "test_command", "ERROR"):
            return
        if t == "variable_assignment":
            self._assign(n, self.allexport or None)
        elif t == "variable_assignments":
            for c in n.named_children:
                self._assign(c, self.allexport or None)
        elif t == "declaration_command":
            self._declare(n)
        elif t == "unset_command":
            for c in n.named_children:
                self.vars.pop(self._txt(c), None)
        elif t == "command":
            self._command(n)
        elif t == "redirected_statement":
            self._redirected(n)
        elif t == "list":
            self._list(n)
        elif t in ("pipeline", "subshell"):  # each part of a pipeline runs in a subshell
            for c in n.named_children if t == "pipeline" else [n]:
                vars_, allexport = dict(self.vars), self.allexport
                self._block(c.children if t == "subshell" else [c])
                self.vars, self.allexport = vars_, allexport
        elif t == "if_statement":
            self._if(n)
        elif t == "case_statement":
            self._case(n)
        elif t in ("for_statement", "c_style_for_statement", "while_statement"):
            self._loop(n)
        elif t == "function_definition":
            name, body = n.child_by_field_name("name"), n.child_by_field_name("body")
            if name is not None and body is not None:
                self.funcs[self._txt(name)] = (body, self.src)
        elif not t.startswith("heredoc"):  # program, compound_statement, do_group, negated_command, ...
            self._block(n.children)

    def _branches(self, bodies: list[list], desc: str, exhaustive: bool) -> None:
        """Run each body from the same state; a variable the branches leave different is no longer known."""
        before, outs = dict(self.vars), []
        for body in bodies:
            self.vars = dict(before)
            self.cond.append(desc)
            try:
                self._block(body)
            finally:
                self.cond.pop()
            outs.append(self.vars)
        if not exhaustive:
            outs.append(before)
        merged: dict[str, _Var] = {}
        for name in dict.fromkeys(k for o in outs for k in o):
            vals = [o.get(name) for o in outs]
            if all(v is not None and v.same(vals[0]) for v in vals):
                merged[name] = vals[0]
            else:
                merged[name] = _Var(text=f"${{{name}}}", where=desc.rpartition(" at ")[2], exported=any(v is not None and v.exported for v in vals),
                                    unknown=((name, f"its value depends on the branch taken ({desc})"),))
        self.vars = merged

    def _if(self, n) -> None:
        clauses: list[tuple[list | None, list]] = []  # (condition, body); the else clause has no condition
        for part in [n] + [c for c in n.children if c.type in ("elif_clause", "else_clause")]:
            cond: list | None = None if part.type == "else_clause" else []
            body: list = []
            in_body = part.type == "else_clause"
            for c in part.children:
                if c.type in ("elif_clause", "else_clause") or (not c.is_named and c.type != "then"):
                    continue
                if c.type == "then":
                    in_body = True
                elif in_body:
                    body.append(c)
                elif cond is not None:
                    cond.append(c)
            clauses.append((cond, body))
        live, exhaustive = [], False
        for k, (cond, body) in enumerate(clauses):
            if cond is None:
                live.append(body)
                exhaustive = True
                break
            if k == 0:
                self._block(cond)
            truth = self._test(cond)
            if truth is False:
                continue
            live.append(body)
            if truth is True:
                exhaustive = True
                break
        if exhaustive and len(live) == 1:
            self._block(live[0])
        elif live:
            self._branches(live, f"if at {self._where(n)}", exhaustive)

    def _test(self, nodes) -> bool | None:
        """The value of ``[ -z W ]``, ``[ -n W ]``, ``[ A = B ]``, ``[ A != B ]`` (``[[ ]]`` too) over known words."""
        if len(nodes) != 1 or nodes[0].type != "test_command" or len(nodes[0].named_children) != 1:
            return None
        e = nodes[0].named_children[0]
        op = e.child_by_field_name("operator")
        if op is None:
            return None
        if e.type == "unary_expression" and self._txt(op) in ("-z", "-n"):
            arg = [c for c in e.named_children if c != op]
            w = self._scalar(arg[0], True) if len(arg) == 1 else None
            return None if w is None else (w == "") == (self._txt(op) == "-z")
        if e.type == "binary_expression" and self._txt(op) in ("=", "==", "!="):
            left, right = e.child_by_field_name("left"), e.child_by_field_name("right")
            a = self._scalar(left, True) if left is not None else None
            b = self._scalar(right, True) if right is not None else None
            if a is None or b is None:
                return None
            glob = nodes[0].children[0].type == "[[" and right.type not in ("string", "raw_string")  # [[ a == pattern ]]
            return (fnmatch.fnmatchcase(a, b) if glob else a == b) == (self._txt(op) != "!=")
        return None

    def _scalar(self, node, unset_empty: bool = False) -> str | None:
        """The text of a word when it is known (``unset_empty``: a variable the script never sets counts as empty)."""
        save, self.unset_empty = self.unset_empty, unset_empty
        try:
            words = self._expand(node, split=False)
        finally:
            self.unset_empty = save
        return None if any(w.unknown for w in words) else "".join(w.text for w in words)

    def _case(self, n) -> None:
        value = n.child_by_field_name("value")
        subject = self._scalar(value) if value is not None else None
        bodies, exhaustive = [], False
        for it in (c for c in n.named_children if c.type == "case_item"):
            kids = list(it.children)
            pats = [c for i, c in enumerate(kids) if it.field_name_for_child(i) == "value"]
            body = [c for c in it.named_children if c not in pats]
            texts = [self._scalar(p) for p in pats]
            if subject is not None and None not in texts:
                if any(fnmatch.fnmatchcase(subject, t) for t in texts):
                    self._block(body)
                    return
                continue
            exhaustive = exhaustive or "*" in texts
            bodies.append(body)
        if bodies:
            self._branches(bodies, f"case at {self._where(n)}", exhaustive)

    def _loop(self, n) -> None:
        var = n.child_by_field_name("variable")
        if n.type == "for_statement" and var is not None:
            words = [w for i, c in enumerate(n.children) if n.field_name_for_child(i) == "value" for w in self._expand(c)]
            name = self._txt(var)
            if len(words) == 1 and not words[0].unknown:
                self.vars[name] = _Var(text=words[0].text, where=self._where(var), file=self.src.file, via=words[0].via)
            else:
                self.vars[name] = _Var(text=f"${{{name}}}", where=self._where(var),
                                       unknown=((name, f"it is the variable of the loop at {self._where(n)}"),))
        elif n.type == "while_statement":
            self._block([c for i, c in enumerate(n.children) if n.field_name_for_child(i) == "condition"])
        body = n.child_by_field_name("body")
        if body is not None:
            self._branches([list(body.children)], f"loop at {self._where(n)}", False)

    def _list(self, n) -> None:
        op, prev = None, None
        for c in n.children:
            if not c.is_named:
                op = c.type
                continue
            truth = self._test([prev]) if op == "&&" and prev is not None else None
            if op == "||" or (op == "&&" and prev is not None and prev.type == "test_command" and truth is None):
                self._branches([[c]], f"{op} at {self._where(c)}", False)
            elif truth is not False:
                self._stmt(c)
            prev = c

    # ----------------------------------------------------------------- variables

    def _assign(self, n, exported: bool | None, env: dict[str, _Var] | None = None) -> None:
        name_node = n.child_by_field_name("name")
        if name_node is None:
            return
        target = self.vars if env is None else env
        where = self._where(n)
        if name_node.type == "subscript":  # A[i]=x
            name = self._txt(name_node.child_by_field_name("name") or name_node)
            target[name] = _Var(text=f"${{{name}}}", where=where, unknown=((name, f"an element of it is set at {where}"),))
            return
        name = self._txt(name_node)
        value = n.child_by_field_name("value")
        append = any(c.type == "+=" for c in n.children)
        old = target.get(name)
        if value is not None and value.type == "array":
            items = [w for c in value.named_children for w in self._expand(c)]
            if append and old is not None and old.items is not None:
                items = old.items + items
            var = _Var(text=" ".join(w.text for w in items), items=items, where=where, file=self.src.file)
        else:
            words = self._expand(value, split=False) if value is not None else []
            w = words[0] if len(words) == 1 else Word("".join(x.text for x in words), self.src.file, self._line(n),
                                                      tuple(u for x in words for u in x.unknown), tuple(v for x in words for v in x.via))
            if append and old is not None:
                var = _Var(text=old.text + w.text, where=where, unknown=old.unknown + w.unknown, via=old.via + w.via, file=self.src.file)
            else:
                var = _Var(text=w.text, where=where, unknown=w.unknown, via=w.via, lines=w.lines, notes=w.notes, file=self.src.file)
        var.exported = bool(exported) if exported is not None else bool(old and old.exported)
        if len(var.text) > _MAX_TEXT or len(var.items or ()) > _MAX_ITEMS:
            var = _Var(text=f"${{{name}}}", where=where, exported=var.exported, unknown=((name, "its value grows too large to follow"),))
        target[name] = var

    def _declare(self, n) -> None:
        kw = n.children[0].type if n.children else ""
        flags = [self._txt(c) for c in n.named_children if c.type == "word" and self._txt(c)[:1] in "-+"]
        exported: bool | None = True if kw == "export" or any(f[0] == "-" and "x" in f for f in flags) else None
        if any(f[0] == "+" and "x" in f for f in flags) or (kw == "export" and "-n" in flags):
            exported = False
        if exported is None and self.allexport:
            exported = True
        for c in n.named_children:
            if c.type == "variable_assignment":
                self._assign(c, exported)
            elif c.type == "variable_name":
                name = self._txt(c)
                var = self.vars.setdefault(name, _Var(text=f"${{{name}}}", where=self._where(c),
                                                      unknown=((name, f"it is not set in {self.src.file}"),)))
                if exported is not None:
                    var.exported = exported

    # ----------------------------------------------------------------- commands

    def _command(self, n, stdin: Word | None = None) -> None:
        groups: list[list] = [[]]
        prev_end = None
        for c in n.children:
            # tree-sitter-bash 0.25 joins "A=1 B=2<newline>cmd" into one command: split it at an unescaped newline
            if prev_end is not None and c.type in ("variable_assignment", "command_name") and \
                    re.search(rb"(?<!\\)\n", self.src.data[prev_end:c.start_byte]):
                groups.append([])
            groups[-1].append(c)
            prev_end = c.end_byte if c.type == "variable_assignment" else None
        for g in groups:
            env: dict[str, _Var] = {}
            words: list[Word] = []
            for c in g:
                if c.type == "variable_assignment" and not words:
                    self._assign(c, True, env)
                elif c.is_named and c.type not in ("comment", "file_redirect", "herestring_redirect", "heredoc_redirect"):
                    words += self._expand(c, start_row=g[0].start_point[0])
            if words:
                self._exec(words, env, g[0], stdin)
            else:  # assignments alone: they set shell variables
                for k, v in env.items():
                    old = self.vars.get(k)
                    v.exported = self.allexport or bool(old and old.exported)
                    self.vars[k] = v

    def _redirected(self, n) -> None:
        body = n.child_by_field_name("body")
        redirects = [c for i, c in enumerate(n.children) if n.field_name_for_child(i) == "redirect"]
        heredoc = next((r for r in redirects if r.type == "heredoc_redirect"), None)
        if heredoc is not None and body is not None and body.type == "command":
            self._heredoc_command(body, heredoc, redirects)
        elif body is not None:
            self._stmt(body)
        for r in redirects:  # tree-sitter hangs "<<EOF || true" and "<<EOF | tee log" under the redirect
            if r.type == "heredoc_redirect":
                self._block([c for c in r.named_children if not c.type.startswith("heredoc")])

    def _heredoc_command(self, body, heredoc, redirects) -> None:
        """``cat > job.sh <<EOF`` (a file the script runs later), ``read -r -d '' CMD <<EOF``, ``bash <<EOF``."""
        words = [w for c in body.children if c.is_named and c.type not in ("variable_assignment", "comment", "file_redirect")
                 for w in self._expand(c, start_row=body.start_point[0])]
        doc = self._heredoc(heredoc)
        head = Path(words[0].text).name if words else ""
        if head in ("cat", "tee"):
            dests = [r.child_by_field_name("destination") for r in redirects
                     if r.type == "file_redirect" and any(c.type in (">", ">>", ">|") for c in r.children)]
            names = [self._scalar(d) for d in dests if d is not None]
            names += [w.text for w in words[1:] if not w.text.startswith("-")] if head == "tee" else []
            for name in filter(None, names):
                self.files[name] = doc
            return
        if head == "read":
            args = [w.text for w in words[1:]]
            names = [a for i, a in enumerate(args) if re.fullmatch(r"[A-Za-z_]\w*", a)
                     and (i == 0 or args[i - 1] not in ("-d", "-p", "-t", "-n", "-N", "-u", "-a"))]
            if names:
                self.vars[names[-1]] = self._read_value(doc, raw="-r" in args, where=self._where(heredoc))
            return
        self._command(body, stdin=doc)

    def _read_value(self, doc: Word, *, raw: bool, where: str) -> _Var:
        """What ``read -d ''`` stores: the text without the blanks around it (and, without -r, backslashes)."""
        if not raw:
            text = re.sub(r"\\([\s\S])", lambda m: "" if m.group(1) == "\n" else m.group(1), doc.text).strip(" \t\n")
            return _Var(text=text, where=where, file=doc.file, exported=self.allexport)
        lead = doc.text[:len(doc.text) - len(doc.text.lstrip(" \t\n"))]
        k, shift = lead.count("\n"), _b(lead.rsplit("\n", 1)[-1])
        text = doc.text.strip(" \t\n")
        lines = (doc.lines or (doc.line,) * (doc.text.count("\n") + 1))[k:k + text.count("\n") + 1]
        notes = tuple((r - k, a - (shift if r == k else 0), b - (shift if r == k else 0), v) for r, a, b, v in doc.notes if r >= k)
        return _Var(text=text, where=where, file=doc.file, lines=tuple(lines), notes=notes, exported=self.allexport)

    def _heredoc(self, r) -> Word:
        """The text of a here-document, expanded unless its delimiter is quoted, with its lines and notes."""
        start = next((c for c in r.children if c.type == "heredoc_start"), None)
        body = next((c for c in r.children if c.type == "heredoc_body"), None)
        f = _Fields(self.src.file, self._line(r))
        if body is None:
            return Word("", self.src.file, self._line(r))
        quoted = start is not None and re.search(r"['\"\\]", self._txt(start)) is not None
        strip = any(c.type == "<<-" for c in r.children)
        pos, bol = body.start_byte, True
        for c in ([] if quoted else [c for c in body.named_children if c.type != "heredoc_content"]) + [None]:
            row = self.src.row(pos)
            raw = self.src.data[pos:c.start_byte if c is not None else body.end_byte].decode("utf-8", "surrogateescape")
            for m in re.finditer(r"\\[\s\S]|\n|[^\\\n]+|\\", raw):
                piece = m.group()
                if strip and bol:
                    piece = piece.lstrip("\t")
                bol = piece.endswith("\n")
                if bol:  # a backslash-newline continues the line in an unquoted here-document
                    if quoted or piece == "\n":
                        f.add(piece, lines=[self.src.line(row), self.src.line(row + 1)], quoted=True)
                    row += 1
                elif piece:
                    f.add(piece[1] if not quoted and piece[:1] == "\\" and piece[1:] in ("$", "`", "\\") else piece,
                          lines=[self.src.line(row)], quoted=True)
            if c is not None:
                f.line = self.src.line(c.start_point[0])
                self._frag(c, f, quoted=True)
                pos, bol = c.end_byte, False
        words = f.done()
        return words[0] if words else Word("", self.src.file, self._line(r))

    def _exec(self, argv: list[Word], env: dict[str, _Var], node, stdin: Word | None = None) -> None:
        head = argv[0].text
        if head in self.funcs and not argv[0].unknown:
            body, src = self.funcs[head]
            if self.depth > _MAX_DEPTH * 4:
                return
            save = self.args, self.src
            self.args, self.src, self.depth = argv[1:], src, self.depth + 1
            try:
                self._stmt(body)
            finally:
                (self.args, self.src), self.depth = save, self.depth - 1
            return
        if head in ("source", ".") and len(argv) > 1:
            self._script_file(argv[1], argv[2:], same_shell=True)
            return
        if head == "eval":
            self._string(argv[1:], same_shell=True, label="eval")
            return
        if head == "set":  # set -a / set -o allexport: every later assignment is exported
            texts = [w.text for w in argv[1:]]
            for k, t in enumerate(texts):
                if t in ("-o", "+o") and texts[k + 1:k + 2] == ["allexport"]:
                    self.allexport = t == "-o"
                elif re.fullmatch(r"[-+][a-zA-Z]+", t) and "a" in t:
                    self.allexport = t[0] == "-"
            return
        if head in ("export", "declare", "typeset", "local", "readonly"):  # tree-sitter sometimes parses these as commands
            flags = [w.text for w in argv[1:] if w.text[:1] in "-+"]
            exported = True if head == "export" or any(f[0] == "-" and "x" in f for f in flags) else (True if self.allexport else None)
            for w in argv[1:]:
                m = _ENV.match(w.text)
                if m:
                    old = self.vars.get(m.group(1))
                    self.vars[m.group(1)] = _Var(text=m.group(2), where=f"{w.file}:{w.line}", unknown=w.unknown, via=w.via, file=w.file,
                                                 exported=bool(exported if exported is not None else old and old.exported))
                elif re.fullmatch(r"[A-Za-z_]\w*", w.text) and exported and w.text in self.vars:
                    self.vars[w.text].exported = True
            return
        if head in ("read", "mapfile", "readarray"):
            for w in argv[1:]:
                if re.fullmatch(r"[A-Za-z_]\w*", w.text):
                    self.vars[w.text] = _Var(text=f"${{{w.text}}}", where=f"{w.file}:{w.line}",
                                             unknown=((w.text, f"it is read when the job runs ({w.file}:{w.line})"),))
            return
        if Path(head).name in _BUILTINS:
            return
        if re.fullmatch(r"[+~]{0,2}[A-Za-z_][\w-]*(\.[\w\[\]-]+)+=.*", head, re.S):
            self.diags.error("NM183", f"'{head} ...' is run as a command of its own: it looks like overrides of the command "
                             "before it, whose line does not end with a backslash", file=argv[0].file, line=argv[0].line,
                             hint="add the missing \\ at the end of the line before; as written, the job runs without these overrides")
            return
        wrappers, cmd, env, cleared = list(self.wrappers), argv, dict(env), None
        while cmd:
            name = Path(cmd[0].text).name
            if name in _SHELLS:
                self._shell(cmd, env, wrappers, stdin, cleared)
                return
            spec = _WRAPPERS.get(name)
            unwrapped = self._unwrap(name, spec, cmd, env) if spec is not None else None
            if unwrapped is None:
                break
            label, cmd, clean = unwrapped
            cleared = label if clean else cleared
            wrappers.append(label)
        self._candidate(cmd, env, wrappers, node, cleared)

    def _unwrap(self, name: str, spec: _Spec, argv: list[Word], env: dict[str, _Var]) -> tuple[str, list[Word], bool] | None:
        """The command a wrapper runs, its label, and whether the command starts without the caller's environment."""
        i, label = 1, name
        if spec.sub:
            if spec.pre:
                i = _skip_options(argv, i, _Spec(*spec.pre, style=spec.style), name, self.diags, env)
            if name in ("docker", "podman", "nvidia-docker") and i < len(argv) and argv[i].text == "container":
                i += 1
            if i >= len(argv) or argv[i].text not in spec.sub:
                return None
            label = f"{name} {argv[i].text}"
            spec = _ENROOT[argv[i].text] if name == "enroot" else spec
            i += 1
        start, extra = i, {}
        i = _skip_options(argv, i, spec, label, self.diags, extra)
        clean = "*" in spec.clean or any(w.text.lstrip("-").partition("=")[0] in spec.clean for w in argv[start:i])
        while name == "env" and i < len(argv) and _ENV.match(argv[i].text):
            _env_word(extra, argv[i], argv[i].text)
            i += 1
        if clean:
            env.clear()
        env.update(extra)
        i += spec.operands
        return (label, argv[i:], clean) if i < len(argv) else None

    def _shell(self, argv: list[Word], env: dict[str, _Var], wrappers: list[str], stdin: Word | None, cleared: str | None) -> None:
        """``bash -c STRING [NAME ARGS]``, ``bash FILE ARGS``, ``bash <<EOF``: a new shell process."""
        i, command = 1, False
        while i < len(argv):
            t = argv[i].text
            if t == "--":
                i += 1
                break
            if not t.startswith(("-", "+")) or t in ("-", "+"):
                break
            command = command or (t[0] == "-" and not t.startswith("--") and "c" in t)
            i += 2 if t in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file") else 1
        label = Path(argv[0].text).name
        if command:
            if i < len(argv):
                self._string([argv[i]], same_shell=False, label=f"{label} -c", args=argv[i + 2:], env=env, wrappers=wrappers,
                             cleared=cleared)
        elif i < len(argv):
            self._script_file(argv[i], argv[i + 1:], same_shell=False, env=env, wrappers=wrappers + [label], cleared=cleared)
        elif stdin is not None:
            self._child(env, None, wrappers + [label], cleared).run(stdin.text, list(stdin.lines) or [stdin.line] * (stdin.text.count("\n") + 1),
                                                           stdin.file, stdin.notes)

    def _child(self, env: dict[str, _Var], args: list[Word] | None, wrappers: list[str], cleared: str | None = None) -> "_Shell":
        child = _Shell(self.display, self.diags, self.is_recipe, self.base, parent=self, args=args, wrappers=wrappers)
        if cleared:
            child.vars = {k: _Var(where=v.where, hidden=f"{cleared} does not pass it to the command") for k, v in child.vars.items()}
        child.vars.update(env)
        return child

    def _string(self, words: list[Word], *, same_shell: bool, label: str, args: list[Word] | None = None,
                env: dict[str, _Var] | None = None, wrappers: list[str] | None = None, cleared: str | None = None) -> None:
        """Shell code in a word: ``eval "$CMD"``, ``bash -c "$CMD"``."""
        if not words:
            return
        w = words[0] if len(words) == 1 else Word(" ".join(x.text for x in words), words[0].file, words[0].line,
                                                   tuple(u for x in words for u in x.unknown), tuple(v for x in words for v in x.via))
        if w.unknown and re.fullmatch(r"\s*(\$\{\w+\}|\$\(.*\)|`.*`)\s*", w.text, re.S):
            names = ", ".join(dict.fromkeys(f"{n} ({why})" for n, why in w.unknown))
            self.diags.warning("NM176", f"the command run by {label} is not known before the job runs: {names}",
                               file=w.file, line=w.line, hint="pass --run-sh with a script that holds the training command itself")
            return
        # the parts not known stay as ${NAME} and keep their reason
        frozen = {n: _Var(text=f"${{{n}}}", unknown=((n, why),)) for n, why in w.unknown if re.fullmatch(r"\w+", n)}
        lines = list(w.lines) or [w.line] * (w.text.count("\n") + 1)
        if same_shell:
            self.depth += 1
            try:
                self.run(w.text, lines, w.file, w.notes)
            finally:
                self.depth -= 1
        else:
            child = self._child(env or {}, args or [], (wrappers or []) + [label], cleared)
            child.vars.update({k: v for k, v in frozen.items() if k not in (env or {})})
            child.run(w.text, lines, w.file, w.notes)

    def _script_file(self, w: Word, args: list[Word], *, same_shell: bool, env: dict[str, _Var] | None = None,
                     wrappers: list[str] | None = None, cleared: str | None = None) -> None:
        """``source FILE`` / ``bash FILE``: a file the script wrote with a here-document, or one next to it."""
        doc = None if w.unknown else self.files.get(w.text) or self.files.get(Path(w.text).name)
        if doc is not None:
            text, lines, notes, file = doc.text, list(doc.lines) or [doc.line] * (doc.text.count("\n") + 1), doc.notes, doc.file
        else:
            path = None if w.unknown else self._local(w.text)
            if path is None or path.suffix == ".py":
                if path is None:
                    self.missing.append(w.text)
                    (self.diags.note if same_shell else self.diags.warning)(
                        "NM181", f"{w.text} is not next to the launcher; the commands and variables in it are not read",
                        file=w.file, line=w.line)
                return
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return
            file = path.relative_to(self.base).as_posix() if self.base is not None and path.is_relative_to(self.base) else path.name
            lines, notes = list(range(1, text.count("\n") + 2)), ()
        if same_shell:
            save, self.args = self.args, args or self.args
            self.depth += 1
            try:
                self.run(text, lines, file, notes)
            finally:
                self.args, self.depth = save, self.depth - 1
        else:
            self._child(env or {}, args, wrappers or [], cleared).run(text, lines, file, notes)

    def _local(self, name: str) -> Path | None:
        if self.base is None:
            return None
        for p in (self.base / name, self.base / Path(name).name):
            try:
                if p.is_file() and p.stat().st_size < 2_000_000:
                    return p
            except (OSError, ValueError):
                pass
        return None

    # ----------------------------------------------------------------- candidates

    def _candidate(self, argv: list[Word], env: dict[str, _Var], wrappers: list[str], node, cleared: str | None) -> None:
        cmd = _command_parts(argv)
        kind, why, cli = ("other", "", "") if cmd is None else self._kind(cmd)
        visible = {} if cleared else {k: v for k, v in self.vars.items() if v.exported}
        visible.update(env)
        self.cands.append(Candidate(kind, cmd.launcher if cmd else None, self.src.file, self._line(node), argv, wrappers,
                                    self.cond[-1] if self.cond else None, visible, why, cli))

    def _kind(self, cmd: "_Cmd") -> tuple[str, str, str]:
        """(finetune | pretrain | other, why, how the script reads its arguments)."""
        if cmd.launcher == "nemo-cli":
            kind, why = {"finetune": ("finetune", ""), "pretrain": ("pretrain", "continued pre-training")}.get(
                cmd.sub or "", ("other", f"nemo llm {cmd.sub}" if cmd.sub else "not a nemo llm command"))
            return kind, why, "nemo-run"
        if cmd.script is None:
            return "other", "no script", ""
        script = cmd.script.text
        name = Path(script).name
        args = [w.text for w in cmd.args]
        hydra = name in HYDRA_SCRIPTS | _HYDRA_PRETRAIN or any(a.startswith(("--config-path", "--config-name", "-cp", "-cn")) for a in args)
        path = self._local(script) if not cmd.script.unknown and cmd.module is None else None
        text = ""
        if path is not None and path.suffix == ".py":
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                path = None
        cli = "hydra" if hydra else "argparse" if re.search(r"\bargparse\b|ArgumentParser", text) and not re.search(
            r"run\.cli\.(main|entrypoint)|cli\.main\(", text) else "nemo-run"
        if name in HYDRA_SCRIPTS:
            return "finetune", "", cli
        if name in _HYDRA_PRETRAIN:
            return "pretrain", "a NeMo pre-training script", cli
        if name in _NOT_SFT:
            return "other", f"{name} trains {_NOT_SFT[name]}, not supervised fine-tuning", cli
        verdict = self.is_recipe(script) if self.is_recipe is not None else None
        if verdict is not None:
            verdict = {True: "finetune", False: "other"}.get(verdict, verdict)
            return verdict, "" if verdict == "finetune" else "not a fine-tuning recipe", cli
        if path is not None and path.suffix == ".py":
            finetune = re.search(r"finetune|fine_tune", text) is not None
            if re.search(r"\bllm\.pretrain\b|pretrain_recipe", text) and not finetune:
                return "pretrain", "a NeMo 2 pre-training recipe", cli
            if finetune or "nemo_run" in text or hydra:
                return "finetune", "", cli
            return "other", f"{name} does not use NeMo-Run", cli
        if hydra or any(a.split("=", 1)[0] in _NEMORUN_WITH_VALUE | _NEMORUN_BOOL for a in args):
            return ("pretrain", "a pre-training script", cli) if "pretrain" in name and "finetune" not in name else ("finetune", "", cli)
        return "other", f"{name} is not next to the launcher and has no NeMo-Run or Hydra options", cli

    # ----------------------------------------------------------------- expansions

    def _expand(self, node, *, split: bool = True, start_row: int | None = None) -> list[Word]:
        f = _Fields(self.src.file, self._line(node, start_row))
        self._frag(node, f, quoted=not split)
        words = f.done()
        if self.src.notes:  # variables a here-document or "bash -c" string put into these bytes
            (sr, sc), (er, ec) = tuple(node.start_point), tuple(node.end_point)
            extra = tuple(v for r, a, b, v in self.src.notes if (r, a) < (er, ec) and (sr, sc) < (r, b))
            for w in words:
                w.via = tuple(dict.fromkeys(w.via + extra))
        return words

    def _frag(self, n, f: _Fields, quoted: bool) -> None:
        t = n.type
        text = self._txt(n)
        lead = len(text) - len(text.lstrip())
        if lead and t in ("simple_expansion", "expansion", "command_substitution", "arithmetic_expansion"):
            f.add(text[:lead], split=not quoted, quoted=quoted)  # tree-sitter-bash puts the blank before "${" into the node
            text = text[lead:]
        if t in ("command_name", "word") and n.named_children:
            for c in n.named_children:
                self._frag(c, f, quoted)
        elif t == "raw_string":
            f.add(text[1:-1], lines=self._rows(n), quoted=True)
        elif t == "ansi_c_string":
            f.add(_ansi_c(text[2:-1]), quoted=True)
        elif t in ("string", "translated_string", "concatenation"):
            pos = n.start_byte + {"string": 1, "translated_string": 2}.get(t, 0)
            end = n.end_byte - (0 if t == "concatenation" else 1)
            if t != "concatenation":
                f.add("", quoted=True)
            for c in n.children:
                if c.start_byte < pos or c.end_byte > end or c.type == '"':
                    continue
                if c.start_byte > pos:
                    self._literal(pos, c.start_byte, f, quoted=t != "concatenation" or quoted)
                if c.type == "string_content":
                    self._literal(c.start_byte, c.end_byte, f, quoted=True)
                else:
                    self._frag(c, f, quoted=quoted or t != "concatenation")
                pos = c.end_byte
            if pos < end:
                self._literal(pos, end, f, quoted=t != "concatenation" or quoted)
        elif t in ("simple_expansion", "expansion"):
            self._param(n, text, f, quoted)
        elif t == "command_substitution":
            doc = self._cat_heredoc(n)
            if doc is not None:
                f.add(doc.text.rstrip("\n"), split=not quoted, lines=doc.lines[:doc.text.rstrip("\n").count("\n") + 1],
                      notes=doc.notes, quoted=quoted)
            else:
                f.add(text, unknown=((_short(text), "it is the output of a command, known only when the job runs"),), quoted=quoted)
                if (self.src.serial, n.start_byte) not in self.seen:  # its commands run as well (in a subshell)
                    self.seen.add((self.src.serial, n.start_byte))
                    vars_, allexport = dict(self.vars), self.allexport
                    self._block(n.children)
                    self.vars, self.allexport = vars_, allexport
        elif t == "arithmetic_expansion":
            val = self._arith(n.named_children[0]) if len(n.named_children) == 1 else None
            if val is None:
                f.add(text, unknown=((_short(text), "its arithmetic uses values known only when the job runs"),), quoted=quoted)
            else:
                f.add(str(val[0]), via=val[1], quoted=quoted)
        elif t == "process_substitution":
            f.add(text, unknown=((_short(text), "it is a process substitution"),), quoted=quoted)
        else:  # word, number, regex, ...
            f.add(text if quoted else _unescape(text), quoted=quoted)

    def _rows(self, n) -> list[int]:
        return [self.src.line(r) for r in range(n.start_point[0], n.end_point[0] + 1)]

    def _literal(self, start: int, end: int, f: _Fields, quoted: bool) -> None:
        """Literal text of a word (inside double quotes when ``quoted``), with the line of each of its lines."""
        raw = self.src.data[start:end].decode("utf-8", "surrogateescape")
        row = self.src.row(start)
        lines = [self.src.line(row)]
        for m in re.finditer(r"\\[\s\S]|\n", raw):
            if m.group() in ("\n", "\\\n"):
                row += 1
                if m.group() == "\n":
                    lines.append(self.src.line(row))
        f.add(_dq_unescape(raw) if quoted else _unescape(raw), lines=lines, quoted=quoted)

    def _cat_heredoc(self, n) -> Word | None:
        """``$(cat <<EOF ... EOF)``: the here-document."""
        inner = n.named_children
        if len(inner) != 1 or inner[0].type != "redirected_statement":
            return None
        body = inner[0].child_by_field_name("body")
        doc = next((c for c in inner[0].named_children if c.type == "heredoc_redirect"), None)
        if body is None or doc is None or self._txt(body).split() not in (["cat"], ["cat", "-"]):
            return None
        return self._heredoc(doc)

    def _lookup(self, name: str) -> tuple[str, "_Var | list[Word] | None", str]:
        """("set", value, "") / ("unset", None, "") / ("unknown", None, why)."""
        if name.isdigit() or name in ("@", "*", "#"):
            if self.args is None:
                return "unknown", None, "it is an argument of the script"
            if name in ("@", "*"):
                return "set", list(self.args), ""
            if name == "#":
                return "set", _Var(text=str(len(self.args))), ""
            k = int(name)
            if k == 0:
                return "unknown", None, "it is the script's name"
            if k > len(self.args):
                return "unset", None, ""
            w = self.args[k - 1]
            return "set", _Var(text=w.text, unknown=w.unknown, via=w.via, lines=w.lines, notes=w.notes), ""
        if name in ("?", "$", "!", "-", "_"):
            return "unknown", None, "the shell sets it when the job runs"
        var = self.vars.get(name)
        if var is not None:
            return ("unknown", None, var.hidden) if var.hidden else ("set", var, "")
        if _RUNTIME.match(name):
            return "unknown", None, ("the scheduler sets it when the job runs" if name.startswith(("SLURM", "PMI", "OMPI", "PBS", "LSB", "FLUX"))
                                     else "the environment sets it when the job runs")
        return "unset", None, ""

    def _param(self, n, text: str, f: _Fields, quoted: bool) -> None:
        """``$A``, ``${A}``, ``${A[@]}``, ``${#A}``, ``${A:-default}`` and the other expansions of a parameter."""
        kids = [c for c in n.children if c.type not in ("$", "${", "}")]
        length = bool(kids) and kids[0].type == "#" and len(kids) > 1
        kids = kids[1:] if length else kids
        if not kids or kids[0].type == "!":
            f.add(text, unknown=((_short(text), "nemo-migrate does not evaluate this expansion"),), quoted=quoted)
            return
        name_node, rest = kids[0], kids[1:]
        index = None
        if name_node.type == "subscript":
            idx = name_node.child_by_field_name("index")
            index = self._txt(idx) if idx is not None else None
            name_node = name_node.child_by_field_name("name") or name_node
        name = self._txt(name_node)
        op = self._txt(rest[0]) if rest else None
        operand = rest[1:]
        canonical = f"${{{name}}}" if name not in ("@", "*") else text
        sliced = op == ":" and (name in ("@", "*") or index in ("@", "*"))  # ${@:2}, ${A[@]:1:2}
        if op is not None and not sliced and op not in (":-", "-", ":=", "=", ":+", "+", ":?", "?", "#", "##", "%", "%%", "^^", ",,",
                                                        "^", ",", "/", "//"):
            f.add(text, unknown=((name, f"nemo-migrate does not evaluate {text}"),), quoted=quoted)
            return
        state, val, why = self._lookup(name)
        if state == "unknown":
            f.add(canonical, unknown=((name, why),), quoted=quoted)
            return
        var = val if isinstance(val, _Var) else None
        items = val if isinstance(val, list) else None
        if var is not None and var.items is not None:
            if index in ("@", "*"):
                items, var = var.items, None
            elif (index or "0").isdigit() and int(index or "0") < len(var.items):
                w = var.items[int(index or "0")]
                var = _Var(text=w.text, unknown=w.unknown, via=w.via, where=f"{w.file}:{w.line}")
            else:
                var, state = None, "unset"
        if length:
            f.add(str(len(items) if items is not None else len(var.text) if var is not None else 0), quoted=quoted)
            return
        if items is not None and sliced:
            nums = [self._scalar(c) for c in operand if c.type != ":"]
            if not nums or not all(x is not None and x.isdigit() for x in nums) or (name in ("@", "*") and nums[0] == "0"):
                f.add(text, unknown=((name, f"nemo-migrate does not evaluate {text}"),), quoted=quoted)
                return
            start = int(nums[0]) - (1 if name in ("@", "*") else 0)
            items, op = items[start:start + int(nums[1])] if len(nums) > 1 else items[start:], None
        if items is not None:
            if op is not None:
                f.add(text, unknown=((name, f"nemo-migrate does not evaluate {text}"),), quoted=quoted)
                return
            for k, w in enumerate(items):
                if k and quoted and (index == "@" or name == "@"):
                    f.brk()
                elif k:
                    f.add(" ", split=not quoted, quoted=quoted)
                where = () if name in ("@", "*") else (f"{name} from {w.file}:{w.line}",)
                f.add(w.text, split=not quoted, unknown=w.unknown, via=w.via + where, line=w.line, lines=w.lines, notes=w.notes, quoted=quoted)
            return
        is_set = var is not None
        empty = not is_set or (var.text == "" and not var.unknown)
        missing = (not is_set) if op in ("-", "=", "+", "?") else empty
        if op in (":-", "-", ":=", "=") and missing:
            words = [w for c in operand for w in self._expand(c, split=False)]
            dtext = "".join(w.text for w in words)
            dunk = tuple(u for w in words for u in w.unknown)
            dvia = tuple(v for w in words for v in w.via) + (f"{name} unset: default at {self._where(n)}",)
            if op in (":=", "="):
                self.vars[name] = _Var(text=dtext, where=self._where(n), unknown=dunk, via=dvia, file=self.src.file)
            f.add(dtext, split=not quoted, unknown=dunk, via=dvia, quoted=quoted)
            return
        if op in (":+", "+"):
            words = [] if missing else [w for c in operand for w in self._expand(c, split=False)]
            f.add("".join(w.text for w in words), split=not quoted, unknown=tuple(u for w in words for u in w.unknown),
                  via=tuple(v for w in words for v in w.via), quoted=quoted)
            return
        if op in (":?", "?") and missing:
            f.add(canonical, unknown=((name, f"the script requires it ({text}) and does not set it"),), quoted=quoted)
            return
        if not is_set and self.unset_empty:
            f.add("", via=(f"{name} is not set",), quoted=quoted)
            return
        if not is_set:
            extra = f" (maybe in {', '.join(self.missing)}, which is not there)" if self.missing else ""
            where = "the script" if self.src.file == self.display else self.src.file
            f.add(canonical, unknown=((name, f"it is not set in {where}{extra}"),), quoted=quoted)
            return
        note = (f"{name} from {var.where}",) if var.where and not name.isdigit() else ()
        if var.unknown:
            inner = ", ".join(dict.fromkeys(u for u, _ in var.unknown))
            f.add(canonical if op else var.text, unknown=((name, f"it is set at {var.where} from {inner}" if inner != name else var.unknown[0][1]),),
                  via=note, quoted=quoted)
            return
        value = var.text if op is None or op in (":-", "-", ":=", "=", ":?", "?") else self._transform(var.text, op, operand)
        if value is None:
            f.add(text, unknown=((name, f"nemo-migrate does not evaluate {text}"),), quoted=quoted)
            return
        same = value == var.text
        f.add(value, split=not quoted, via=note + var.via, lines=var.lines if same else None, notes=var.notes if same else (), quoted=quoted)

    def _transform(self, value: str, op: str, operand) -> str | None:
        """``${A#p}``, ``${A##p}``, ``${A%p}``, ``${A%%p}``, ``${A/x/y}``, ``${A//x/y}`` and the case changes."""
        if op in ("^^", ",,", "^", ","):
            return None if operand else {"^^": value.upper(), ",,": value.lower(), "^": value[:1].upper() + value[1:],
                                         ",": value[:1].lower() + value[1:]}[op]
        pats = [self._scalar(c) for c in operand if c.type != "/"]
        if not pats or None in pats:
            return None
        pat = pats[0]
        if op in ("/", "//"):
            if re.search(r"[*?\[]", pat) or pat[:1] in ("#", "%"):
                return None
            return value.replace(pat, pats[1] if len(pats) > 1 else "", -1 if op == "//" else 1)
        cuts = range(len(value) + 1)
        if op in ("#", "##"):
            return next((value[i:] for i in (cuts if op == "#" else reversed(cuts)) if fnmatch.fnmatchcase(value[:i], pat)), value)
        return next((value[:i] for i in (reversed(cuts) if op == "%" else cuts) if fnmatch.fnmatchcase(value[i:], pat)), value)

    def _arith(self, n) -> tuple[int, tuple[str, ...]] | None:
        """``$((...))`` over integers and known variables."""
        t = n.type
        if t == "number":
            try:
                return int(self._txt(n), 0), ()
            except ValueError:
                return None
        if t in ("variable_name", "word"):
            state, val, _ = self._lookup(self._txt(n))
            if state != "set" or not isinstance(val, _Var) or val.unknown:
                return None
            text, via = val.text, (f"{self._txt(n)} from {val.where}",) + val.via
        elif t in ("simple_expansion", "expansion"):
            words = self._expand(n, split=False)
            if len(words) != 1 or words[0].unknown:
                return None
            text, via = words[0].text, words[0].via
        elif t == "parenthesized_expression" and len(n.named_children) == 1:
            return self._arith(n.named_children[0])
        elif t == "unary_expression" and len(n.named_children) == 1 and n.children[0].type in ("-", "+"):
            v = self._arith(n.named_children[0])
            return None if v is None else (-v[0] if n.children[0].type == "-" else v[0], v[1])
        elif t == "binary_expression":
            parts = [n.child_by_field_name(k) for k in ("left", "operator", "right")]
            if None in parts:
                return None
            a, b = self._arith(parts[0]), self._arith(parts[2])
            ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
                   "/": lambda x, y: int(x / y), "%": lambda x, y: x - y * int(x / y)}
            op = ops.get(self._txt(parts[1]))
            if a is None or b is None or op is None or (b[0] == 0 and self._txt(parts[1]) in "/%"):
                return None
            return op(a[0], b[0]), a[1] + b[1]
        else:
            return None
        try:
            return int(text.strip() or "0", 0), via
        except ValueError:
            return None


def _first_error(root) -> int | None:
    """The row of the first ERROR / missing node of a tree."""
    stack = [root] if root.has_error else []
    while stack:
        n = stack.pop()
        if n.type == "ERROR" or n.is_missing:
            return n.start_point[0]
        stack.extend(reversed([c for c in n.children if c.has_error or c.is_missing or c.type == "ERROR"]))
    return None


def _env_word(env: dict[str, _Var], w: Word, text: str) -> None:
    m = _ENV.match(text)
    if m:
        env[m.group(1)] = _Var(text=m.group(2), where=f"{w.file}:{w.line}", exported=True, unknown=w.unknown, via=w.via, file=w.file)


def _unescape(s: str) -> str:
    return re.sub(r"\\([\s\S])", lambda m: "" if m.group(1) == "\n" else m.group(1), s)


def _dq_unescape(s: str) -> str:
    return re.sub(r'\\([$`"\\\n])', lambda m: "" if m.group(1) == "\n" else m.group(1), s)


def _ansi_c(s: str) -> str:
    try:
        return codecs.decode(s.encode("latin-1", "backslashreplace"), "unicode_escape")
    except (UnicodeDecodeError, ValueError):
        return s


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:37] + "..."


def _long_options(spec: str) -> dict[str, str]:
    return {item.partition("=")[0]: "=" + item.partition("=")[2] if "=" in item else "" for item in spec.split()}


def _short_options(spec: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"(\w|\?)(:{0,2})", spec)}


def _skip_options(argv: list[Word], i: int, spec: _Spec, label: str, diags: Diagnostics, env: dict[str, _Var]) -> int:
    """Index of the first word after a wrapper's own options (its command, or its operands)."""
    shorts, longs = _short_options(spec.short), _long_options(spec.long)

    def unknown(w: Word, opt: str) -> None:
        diags.warning("NM173", f"{label} option {opt} is not known to nemo-migrate; it is read as a flag without a value",
                      file=w.file, line=w.line, hint=f"check the command nemo-migrate picked after {label}; if it is wrong, "
                      "pass --run-sh with a script that runs the training command directly")

    def value(w: Word, name: str, text: str | None) -> None:
        if name in spec.env and text is not None:
            _env_word(env, w, text)

    while i < len(argv):
        w = argv[i]
        t = w.text
        if t == "--":
            return i + 1
        if not t.startswith("-") or t == "-":
            return i
        if spec.style == "nsys":  # nsys: "-t cuda" and "--trace=cuda"; every switch takes a parameter
            i += 1 if t.startswith("--") and "=" in t else 2
            continue
        if t.startswith("--"):
            name, eq, val = t[2:].partition("=")
            if name not in longs and spec.style == "getopt":  # getopt_long takes an unambiguous prefix
                hits = [k for k in longs if k.startswith(name)]
                name = hits[0] if len(hits) == 1 else name
            kind = longs.get(name)
            if kind is None:
                unknown(w, t)
            elif kind == "=" and not eq:
                value(w, name, argv[i + 1].text if i + 1 < len(argv) else None)
                i += 1
            else:
                value(w, name, val if eq else None)
            i += 1
            continue
        if spec.style == "plain":  # one option per word
            kind = shorts.get(t[1:]) if len(t) == 2 else None
            if kind is None:
                unknown(w, t)
            elif kind == ":":
                value(w, t[1], argv[i + 1].text if i + 1 < len(argv) else None)
                i += 1
            i += 1
            continue
        j, step = 1, 1
        while j < len(t):  # a cluster: -it, -n8, -e=A=1 (pflag)
            kind = shorts.get(t[j])
            if kind is None:
                unknown(w, f"-{t[j]}" + (f" (in {t})" if len(t) > 2 else ""))
                break
            if kind == ":":
                attached = t[j + 1:]
                if attached:
                    value(w, t[j], attached[1:] if spec.style == "pflag" and attached[0] == "=" else attached)
                else:
                    value(w, t[j], argv[i + 1].text if i + 1 < len(argv) else None)
                    step = 2
                break
            if kind == "::":
                break
            j += 1
        i += step
    return i


# ---------------------------------------------------------------------------------------------- the job command

@dataclass
class _Cmd:
    launcher: str | None  # torchrun | python | nemo-cli
    pre: list[Word] = field(default_factory=list)  # torchrun's options
    script: Word | None = None
    module: str | None = None
    args: list[Word] = field(default_factory=list)
    sub: str | None = None  # nemo llm <sub>


def _command_parts(argv: list[Word]) -> _Cmd | None:
    """torchrun / python [-m torch.distributed.run] / nemo llm ...: the launcher, its options, the script, its args."""
    name = Path(argv[0].text).name
    if name == "torchrun":
        return _torchrun(argv[1:])
    if name in ("nemo", "nemorun"):
        return _nemo_cli(argv[1:])
    if not re.fullmatch(r"python(\d+(\.\d+)*)?", name):
        return None
    i = 1
    while i < len(argv) and argv[i].text.startswith("-") and argv[i].text != "-":
        t = argv[i].text
        if t == "--":
            i += 1
            break
        if t.startswith("--"):  # --version, --help, --check-hash-based-pycs=...
            i += 1
            continue
        flags = t[1:].lstrip("".join(_PY_FLAGS))  # python options: flags, then -W/-X/-m/-c with a value
        opt, attached = flags[:1], flags[1:]
        if opt in ("m", "c"):
            mod = attached or (argv[i + 1].text if i + 1 < len(argv) else "")
            rest = argv[i + (1 if attached else 2):]
            if opt == "c":
                return _Cmd(None)
            if mod in ("torch.distributed.run", "torch.distributed.launch"):
                return _torchrun(rest)
            if mod == "nemo_run":
                return _nemo_cli(rest)
            return _Cmd("python", script=Word(mod, argv[i].file, argv[i].line), module=mod, args=rest)
        i += 2 if opt in _PY_WITH_VALUE and not attached else 1
    if i >= len(argv) or argv[i].text == "-":
        return _Cmd("python")
    return _Cmd("python", script=argv[i], args=argv[i + 1:])


def _nemo_cli(args: list[Word]) -> _Cmd:
    """``nemo llm finetune ...``: NeMo's entry point "llm" (nemo_run.cli) and the command (nemo/collections/llm/api.py)."""
    if len(args) >= 2 and args[0].text == "llm":
        return _Cmd("nemo-cli", args=args[2:], sub=args[1].text)
    return _Cmd("nemo-cli", args=args)


def _torchrun_option(tok: str) -> tuple[str | None, str]:
    """torchrun's option for a word (argparse: exact, then an unambiguous prefix) and whether it takes a value."""
    longs = _long_options(_TORCHRUN[1])
    if tok.startswith("--"):
        name = tok[2:].partition("=")[0]
        hits = [name] if name in longs else [k for k in longs if k.startswith(name)]
        canon = {k.replace("-", "_") for k in hits}
        return (hits[0], longs[hits[0]]) if len(canon) == 1 else (None, "")
    kind = _short_options(_TORCHRUN[0]).get(tok[1:2])
    return ({"r": "redirects", "t": "tee", "m": "module"}[tok[1]], kind) if kind is not None else (None, "")


def _torchrun(rest: list[Word]) -> _Cmd:
    i, module = 0, False
    while i < len(rest) and rest[i].text.startswith("-") and rest[i].text != "--":
        t = rest[i].text
        name, kind = _torchrun_option(t)
        module = module or name == "module"
        i += 2 if kind == "=" and "=" not in t and (t.startswith("--") or len(t) == 2) else 1
    if i < len(rest) and rest[i].text == "--":
        i += 1
    if i >= len(rest):
        return _Cmd("torchrun", pre=rest)
    return _Cmd("torchrun", pre=rest[:i], script=rest[i], module=rest[i].text if module else None, args=rest[i + 1:])


def _launch(c: Candidate, diags: Diagnostics, set_keys: Collection[str], kind: str = "finetune") -> Launch:
    cmd = _command_parts(c.argv) or _Cmd("python")
    l = Launch(file=c.file, line=c.line, launcher=cmd.launcher or "python", kind=kind, wrappers=list(c.wrappers))
    for w in c.argv:
        for name, _ in w.unknown:
            if name not in (n for n, _ in l.unresolved):
                l.unresolved.append((name, w.prov("cli")))
    dropped: dict[bool, list[tuple[str, _Var]]] = {True: [], False: []}
    for name, var in sorted(c.env.items()):
        if var.via[:1] and var.via[0].startswith("#SBATCH"):
            continue  # Slurm sets it for the job; the migrated launcher gets it the same way
        if var.unknown:
            if {u for u, _ in var.unknown} != {name} or var.text != f"${{{name}}}":  # not just "export NAME" of the caller's
                dropped[name in _RENDEZVOUS].append((name, var))
            continue
        l.env[name] = var.text
        l.env_prov[name] = Provenance(kind="launch", file=var.file or c.file, line=_line_of(var.where),
                                      detail=f"{name}={var.text}" + (f" ({', '.join(var.via)})" if var.via else ""))
    for rendezvous, items in dropped.items():  # one diagnostic for all: they usually share one cause
        if items:
            what = "; ".join(f"{n} ({v.where}: {', '.join(dict.fromkeys(u for u, _ in v.unknown))}, {v.unknown[0][1]})" for n, v in items)
            (diags.note if rendezvous else diags.warning)(
                "NM172", f"environment variables set from values known only when the job runs are not carried to the new run.sh: {what}",
                file=items[0][1].file or c.file, line=_line_of(items[0][1].where),
                hint="set them in the environment of the migrated job if it needs them")
    if cmd.launcher == "torchrun":
        _torchrun_options(l, cmd.pre, diags)
        if cmd.script is None:
            diags.error("NM133", "torchrun has no script to run", file=c.file, line=c.line)
            return l
    l.script = cmd.script.text if cmd.script is not None else None
    l.script_args = [(w.text, w.prov("cli")) for w in cmd.args]
    if cmd.script is not None and cmd.script.unknown:
        _unknown_warning(diags, f"the script {cmd.script.text}", cmd.script)
    if c.cli == "hydra":
        _hydra_args(l, cmd.args, diags, set_keys)
    elif c.cli != "argparse":  # an argparse script: its arguments stay in script_args for the recipe reader
        _nemorun_args(l, cmd.args, diags, set_keys)
    return l


def _export_of(c: Candidate) -> tuple[str, str] | None:
    for k, w in enumerate(c.argv):
        name, eq, val = w.text.partition("=")
        if name in ("--to-yaml", "--to-toml", "--to-json"):
            val = val if eq else (c.argv[k + 1].text if k + 1 < len(c.argv) else "")
            return name[5:], val
    return None


def _line_of(where: str) -> int | None:
    tail = where.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def _unknown_warning(diags: Diagnostics, what: str, w: Word) -> None:
    if all(n.isdigit() for n, _ in w.unknown):
        return  # config-${1}.yaml: a variant pattern
    names = "; ".join(f"{n}: {why}" for n, why in w.unknown)
    diags.warning("NM171", f"{what} depends on values known only when the job runs ({names})", file=w.file, line=w.line,
                  hint="pass the file to nemo-migrate directly (the source argument, --recipe, --factory)")


def _unknown_override(w: Word, key: str, diags: Diagnostics, set_keys: Collection[str]) -> None:
    names = "; ".join(f"{n}: {why}" for n, why in w.unknown)
    if key in set_keys:
        diags.note("NM170", f"override {w.text!r}: nemo-migrate cannot know its value ({names}); --set {key} replaces it",
                   file=w.file, line=w.line, key=key)
    else:
        diags.error("NM170", f"override {w.text!r}: nemo-migrate cannot know the value of {key} ({names})",
                    file=w.file, line=w.line, key=key, hint=f"pass --set {key}=VALUE to nemo-migrate")


def _torchrun_options(l: Launch, pre: list[Word], diags: Diagnostics) -> None:
    i = 0
    while i < len(pre):
        w = pre[i]
        tok = w.text
        name, kind = _torchrun_option(tok)
        if name is None:
            diags.warning("NM136", f"unknown torchrun option {tok}; it is not carried over", file=w.file, line=w.line)
            i += 1
            continue
        norm = name.replace("-", "_")
        if kind == "":
            l.standalone = l.standalone or norm == "standalone"
            l.torchrun_opts[norm] = "true"
            i += 1
            continue
        vw, val = w, tok.partition("=")[2] if tok.startswith("--") else tok[2:]
        if "=" not in tok and (tok.startswith("--") or len(tok) == 2):
            if i + 1 >= len(pre):
                diags.error("NM134", f"torchrun option {tok} needs a value", file=w.file, line=w.line)
                return
            vw = pre[i + 1]
            val = vw.text
            i += 1
        i += 1
        l.torchrun_opts[norm] = val
        unknown = w.unknown + (vw.unknown if vw is not w else ())
        via = w.via + (vw.via if vw is not w else ())
        prov = Provenance(kind="launch", file=w.file, line=w.line, detail=f"--{name}={val}" + (f" ({', '.join(via)})" if via else ""))
        dep = f" (it depends on {', '.join(dict.fromkeys(n for n, _ in unknown))}, known only when the job runs)" if unknown else ""
        if norm == "nproc_per_node":
            if val.isdigit() and not unknown:
                l.nproc_per_node, l.nproc_prov = int(val), prov
            else:
                diags.warning("NM135", f"--nproc_per_node={val} depends on the machine{dep}; pass --nproc-per-node N to nemo-migrate",
                              file=w.file, line=w.line)
        elif norm == "nnodes":
            lo = val.split(":")[-1]
            if lo.isdigit() and not unknown:
                l.nnodes, l.nnodes_prov = int(lo), prov
            else:
                diags.warning("NM135", f"--nnodes={val} is not a number{dep}; pass --nnodes N to nemo-migrate", file=w.file, line=w.line)


def _nemorun_args(l: Launch, args: list[Word], diags: Diagnostics, set_keys: Collection[str]) -> None:
    """NeMo-Run's CLI (click): options anywhere, ``--opt value``/``--opt=value``, ``-f value``/``-fvalue``, clustered
    flags (``-vy``), ``--`` ends the options; every other word is an override, ``run.*`` ones configure the run."""
    j, options = 0, True
    while j < len(args):
        w = args[j]
        tok = w.text
        j += 1
        if options and tok == "--":
            options = False
            continue
        if options and tok.startswith("-") and len(tok) > 1:
            name, eq, val = tok.partition("=") if tok.startswith("--") else (tok[:2], "", tok[2:])
            if name in _NEMORUN_WITH_VALUE:
                vw = w
                if not eq and not val:
                    if j >= len(args):
                        diags.error("NM137", f"{name} needs a value", file=w.file, line=w.line)
                        return
                    vw, val = args[j], args[j].text
                    j += 1
                via = w.via + (vw.via if vw is not w else ())
                prov = Provenance(kind="cli", file=w.file, line=w.line, detail=f"{name} {val}" + (f" ({', '.join(via)})" if via else ""))
                if vw.unknown and name in ("--factory", "-f", "--yaml"):
                    _unknown_warning(diags, f"{name} {val}", vw)
                if name in ("--factory", "-f"):
                    l.factory = Override("factory", "=", val, prov, raw=val)
                elif name == "--yaml":
                    l.yaml_args.append((val, prov))
                elif name.startswith("--to-"):
                    l.export = (name[5:], val)
                continue
            flags = [tok] if tok in _NEMORUN_BOOL else [f"-{ch}" for ch in tok[1:]] if not tok.startswith("--") else [tok]
            if all(f in _NEMORUN_BOOL for f in flags):
                l.verbose = l.verbose or bool({"-v", "--verbose"} & set(flags))
                if flags[-1] == "-y" and j < len(args) and args[j].text.endswith((".yaml", ".yml")):
                    nxt = args[j].text
                    diags.error("NM138", f"'-y {nxt}': NeMo-Run declares -y for both --yes and --yaml and the later one wins, "
                                f"so this fails with \"Invalid overwrite format: {nxt}\"", hint="use --yaml", file=w.file, line=w.line)
                continue
            diags.warning("NM139", f"NeMo-Run option {tok} is not understood by this compiler; ignored", file=w.file, line=w.line)
            continue
        if any(n in ("@", "*") for n, _ in w.unknown):
            diags.warning("NM178", f"{tok} passes the launcher's own arguments to the job; nemo-migrate cannot know them",
                          file=w.file, line=w.line, hint="pass them with --set key=value")
            continue
        if tok.startswith("run") and not tok.startswith(("run.", "run[", "run=")):
            diags.error("NM177", f"{tok!r}: NeMo-Run reads every argument that starts with 'run' as a run option and fails "
                        "(\"Run overwrites must start with 'run.'\")", file=w.file, line=w.line, hint="rename the key or drop the argument")
            continue
        if tok.startswith(("run.", "run[", "run=")):  # RunContext.parse_args: run.executor=..., run.plugins=...
            l.run_args.append((tok, w.prov("cli")))
            diags.warning("NM177", f"{tok} configures NeMo-Run's executor or plugins, not the training; it is not migrated",
                          file=w.file, line=w.line, hint="pass --nproc-per-node/--nnodes to nemo-migrate for the launch shape")
            continue
        if w.unknown:
            _unknown_override(w, override_key(tok), diags, set_keys)
            continue
        ov = parse_override(tok, w.prov("cli"), diags)
        if ov is not None:
            l.overrides.append(ov)


def _hydra_args(l: Launch, args: list[Word], diags: Diagnostics, set_keys: Collection[str]) -> None:
    """A NeMo 1.0 / NeMo-Aligner (Hydra) command line: --config-path/--config-name and key=value overrides."""
    j = 0
    while j < len(args):
        w = args[j]
        tok = w.text
        j += 1
        name, eq, val = tok.partition("=")
        if name in ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"):
            if not eq:
                if j >= len(args):
                    diags.error("NM137", f"{name} needs a value", file=w.file, line=w.line)
                    return
                val = args[j].text
                j += 1
            if name in ("--config-path", "-cp"):
                l.config_path = val
            elif name in ("--config-name", "-cn"):
                l.config_name = val
        elif name in ("--multirun", "-m"):
            diags.error("NM179", "a Hydra --multirun sweep launches several jobs", file=w.file, line=w.line,
                        hint="keep one value per knob and drop --multirun, or convert each job of the sweep")
        elif tok.startswith("-"):
            diags.warning("NM139", f"Hydra option {tok} is not understood by this compiler; ignored", file=w.file, line=w.line)
        elif w.unknown:
            _unknown_override(w, override_key(tok), diags, set_keys)
        else:
            l.hydra.append((tok, w.prov("cli")))


# ---------------------------------------------------------------------------------------------- notebooks

_CELL_MARK = "\ue000cell "  # a private-use character: no file name has it, and messages show it unescaped


def notebook_launch(shells: list, display: str, diags: Diagnostics, *, base: Path | None = None, is_recipe: Predicate | None = None,
                    set_keys: Collection[str] = ()) -> Launch | None:
    """The fine-tuning command among a notebook's ``%%bash`` cells and ``!`` lines (None when they run none).

    Each cell runs in a shell of its own (as Jupyter runs it); ``!`` lines first get the notebook's plain Python values
    that IPython expands in them (``{name}``, ``$name``).  Positions are the notebook's cells and lines."""
    cands: list[Candidate] = []
    found = Diagnostics()
    for sh in shells:
        text = _ipython_expand(sh.text, sh.names or {}) if sh.bang else sh.text
        cands += scan_shell_text(text, f"{display}{_CELL_MARK}{sh.cell}", found, first_line=sh.line, is_recipe=is_recipe, base=base)
    if not any(c.kind in ("finetune", "pretrain") for c in cands):
        return None
    launch = pick_launch(cands, display, found, set_keys=set_keys)
    diags.extend(_relocated(d) for d in found.items)
    return _relocated(launch) if launch is not None else None


def _ipython_expand(text: str, names: dict) -> str:
    """IPython's expansion of a `!` line: {name} and $name / ${name} of the notebook's namespace (others stay)."""
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return str(names[name]) if name in names else m.group(0)
    return re.sub(r"\{([A-Za-z_]\w*)\}|\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", sub, text)


def _relocated(obj):
    """``file`` values that carry a notebook cell mark become (file, cell), recursively."""
    from dataclasses import fields, is_dataclass

    from ..diagnostics import Diagnostic

    if isinstance(obj, Provenance):
        if obj.file and _CELL_MARK in obj.file:
            f, _, c = obj.file.partition(_CELL_MARK)
            return obj.model_copy(update={"file": f, "cell": int(c)})
        return obj
    if isinstance(obj, Diagnostic):
        if obj.file and _CELL_MARK in obj.file:
            f, _, c = obj.file.partition(_CELL_MARK)
            return replace(obj, file=f, cell=int(c))
        return obj
    if isinstance(obj, list):
        return [_relocated(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_relocated(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _relocated(v) for k, v in obj.items()}
    if isinstance(obj, str) and _CELL_MARK in obj:
        f, _, c = obj.partition(_CELL_MARK)
        return f
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: _relocated(getattr(obj, f.name)) for f in fields(obj) if f.init})
    return obj

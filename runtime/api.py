"""Entry point used by ``nemo-migrate run``: validate, prepare, then train in-process (N == 1) or under torchrun.

Importing this module is cheap (no torch); torch and transformers load only when a run starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass
class RunOptions:
    config: Path
    nproc_per_node: int = 1
    max_steps: int | None = None
    model_path: Path | None = None
    proxy_model: str | None = None
    overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    merge: bool = False
    stop_after: int | None = None  # stop after N optimizer steps without changing max_steps or the LR schedule
    # what to do with a checkpoint in checkpoint.checkpoint_dir: "auto" resumes it when the training settings are
    # those it was saved with (else refuses, listing what changed); "changed" resumes it and trains on with the new
    # settings; "never" starts fresh (into a new checkpoint directory when the configured one holds checkpoints)
    resume: str = "auto"
    # where checkpoints go: None = RUN_DIR/checkpoints (everything of a run under --out); "config" = the config's
    # checkpoint.checkpoint_dir; any other string = that directory. --set checkpoint.checkpoint_dir=... also counts as
    # asking for a directory explicitly.
    checkpoint_dir: str | None = None


RESUME_MODES = ("auto", "changed", "never")


def _err(msg: str) -> None:
    print(f"nemo-migrate run: error: {msg}", file=sys.stderr, flush=True)


def _say(msg: str) -> None:
    print(msg, flush=True)


def prepare(opts: RunOptions):
    """Validate everything that can be checked before training; returns (spec, cfg, run_dir, tok_path, tok_note)."""
    from .config import effective_config
    from .errors import RunError
    from .spec import resolve

    if opts.nproc_per_node < 1:
        raise RunError("--nproc-per-node must be >= 1", found=opts.nproc_per_node)
    if opts.resume not in RESUME_MODES:
        raise RunError("unknown resume mode", key="--resume", expected=", ".join(RESUME_MODES), found=opts.resume)
    if opts.model_path is not None and opts.proxy_model:
        raise RunError("--model-path and --proxy-model are exclusive", key="--proxy-model",
                       hint="--model-path loads real weights; --proxy-model builds random ones")
    lines: dict[str, str] = {}
    cfg = effective_config(opts.config, opts.overrides, opts.max_steps, lines=lines)
    run_dir = Path(opts.out) if opts.out is not None else Path("runs") / Path(opts.config).stem
    made = next((p for p in reversed([run_dir, *run_dir.parents]) if not p.exists()), None)  # top folder made now
    _check_run_dir(run_dir, given=opts.out is not None)
    try:
        place_checkpoints(cfg, opts, run_dir, lines)
        from .metrics import check_loggers

        check_loggers(cfg)  # a wandb/mlflow/tensorboard section whose package is missing fails now, naming it
        spec = resolve(cfg, opts, file=str(opts.config), lines=lines)
    except RunError:
        if made is not None:  # a config that fails its checks leaves no run directory behind (only empty folders)
            _remove_empty(made)
        raise

    # Read the text data now (missing columns, empty files and bad JSON fail before anything starts).
    from .data import mapped_texts, read_records

    texts: list[str] = []
    for key, ds in [("dataset", spec.train)] + [(("validation_dataset" if k == "default" else
                                                   f"validation_dataset_{k}"), v) for k, v in spec.validation.items()]:
        if ds.kind == "chat":
            from .data import chat_texts, read_chat_rows

            rows, _ = read_chat_rows(ds.params["path_or_dataset_id"], key=f"{key}.path_or_dataset_id",
                                     skip_invalid=bool(ds.params.get("skip_invalid_samples", False)))
            chat = chat_texts(rows, key=key)  # every row is checked now (a bad one fails before training)
            if key == "dataset":
                texts = chat
            continue
        if ds.kind != "column_mapped":
            continue
        rows = read_records(ds.params["path_or_dataset_id"], key=f"{key}.path_or_dataset_id")
        pairs = mapped_texts(rows, ds.params["column_mapping"], key=key, file=str(opts.config))
        if key == "dataset":
            texts = [p + a for p, a in pairs]

    tok_path, tok_note = spec.tokenizer.path, None
    needs_tok = spec.train.kind != "mock" or any(v.kind != "mock" for v in spec.validation.values())
    if tok_path is None and needs_tok:
        ckpt_tok = _checkpoint_tokenizer(spec, opts.resume)
        if ckpt_tok is not None:
            tok_path, tok_note = str(ckpt_tok), f"tokenizer: the one saved with the checkpoint being resumed ({ckpt_tok})"
        else:
            from .tokenizer import LOCAL_TOKENIZER_NOTE, train_local_tokenizer

            out = run_dir / "tokenizer"
            vocab = 1024 if len(texts) < 20000 else 8192
            train_local_tokenizer(texts, out, vocab_size=vocab)
            tok_path = str(out)
            tok_note = LOCAL_TOKENIZER_NOTE.format(n=len(texts), v=vocab, path=out)
    elif tok_path is not None:
        tok_note = f"tokenizer: {tok_path} (on disk)"
    return spec, cfg, run_dir, tok_path, tok_note


def place_checkpoints(cfg: dict, opts: RunOptions, run_dir: Path, lines: dict[str, str] | None = None) -> None:
    """Put ``checkpoint.checkpoint_dir`` under RUN_DIR unless the user named a directory (--checkpoint-dir, or
    --set checkpoint.checkpoint_dir=...): a run never writes beside another run, nor resumes one it did not ask for.
    The config's own value (a NeMo job's ``/app/output/...``) is only used with --checkpoint-dir config."""
    from .errors import RunError

    explicit = any(o.split("=", 1)[0].strip().lstrip("-") == "checkpoint.checkpoint_dir" for o in opts.overrides)
    mode = opts.checkpoint_dir
    if mode == "config" or (explicit and mode is None):
        return
    sec = cfg.setdefault("checkpoint", {})
    if sec is None:
        sec = cfg["checkpoint"] = {}
    if not isinstance(sec, dict):
        return  # resolve() reports it
    if mode is not None and not mode.strip():
        raise RunError("must be 'config' or a directory", key="--checkpoint-dir", found=mode)
    target = str(Path(mode) if mode is not None else run_dir / "checkpoints")
    old = sec.get("checkpoint_dir")
    sec["checkpoint_dir"] = target
    if lines is not None:
        lines["checkpoint.checkpoint_dir"] = "--checkpoint-dir" if mode is not None else "--out (RUN_DIR/checkpoints)"
    if old not in (None, target) and mode is None and sec.get("enabled", True) is not False:
        _say(f"note: checkpoints go to {target} (under --out); the config's checkpoint.checkpoint_dir {old} is not "
             "used (pass --checkpoint-dir config to use it)")


def _remove_empty(d: Path) -> None:
    """Remove ``d`` if it holds nothing but empty folders."""
    try:
        for p in sorted(d.rglob("*"), key=lambda p: -len(p.parts)):
            p.rmdir()  # OSError on a file or a non-empty folder: stop, leaving it
        d.rmdir()
    except OSError:
        pass


def _check_run_dir(run_dir: Path, *, given: bool) -> None:
    """RUN_DIR must be a directory this process can write (made now, so a bad --out fails before anything runs)."""
    from .errors import RunError

    key = "--out" if given else "run directory (default runs/<config name>; --out sets it)"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError("is not a directory", key=key, found=str(run_dir),
                       hint="--out must name a directory (it receives metrics.jsonl, loss.png, ...)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except (OSError, ValueError) as e:
        raise RunError(f"cannot write there ({getattr(e, 'strerror', None) or e})", key=key, found=str(run_dir),
                       hint="--out /a/writable/dir") from None


def _checkpoint_tokenizer(spec, resume: str = "auto") -> Path | None:
    """When auto-resuming, reuse the tokenizer saved in the checkpoint (a locally trained one must not change)."""
    if not spec.ckpt.enabled or resume == "never":
        return None
    from .spec import has_tokenizer_files

    root = Path(spec.ckpt.checkpoint_dir)
    latest = root / "LATEST"
    cand = None
    if spec.ckpt.restore_from and spec.ckpt.restore_from != "LATEST":
        cand = root / spec.ckpt.restore_from if (root / spec.ckpt.restore_from).exists() else Path(spec.ckpt.restore_from)
    elif latest.exists():
        try:
            cand = latest.resolve()
        except (OSError, RuntimeError):  # a LATEST symlink loop: reported when the checkpoint is looked up
            return None
    if cand is not None and has_tokenizer_files(cand / "model"):
        return cand / "model"
    return None


def run_main(opts: RunOptions) -> int:
    """Run a config; returns the exit code (0 ok, 1 error). User errors never raise."""
    for k, v in _OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from .errors import RunError

    try:
        spec, cfg, run_dir, tok_path, tok_note = prepare(opts)
    except RunError as e:
        _err(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # e.g. the disk filled up while the local tokenizer was written
        from .errors import io_error_message

        _err(io_error_message(e))
        return 1
    except Exception as e:  # noqa: BLE001
        if os.environ.get("NEMO_MIGRATE_DEBUG"):
            raise
        _err(f"internal error while preparing the run: {type(e).__name__}: {e} "
             "(rerun with NEMO_MIGRATE_DEBUG=1 for the traceback)")
        return 1
    _say(f"nemo-migrate run: {opts.config} -> {run_dir} ({opts.nproc_per_node} process"
         f"{'es' if opts.nproc_per_node > 1 else ''})")
    if opts.nproc_per_node == 1:
        from .trainer import run_training

        return run_training(spec, run_dir=run_dir, raw_cfg=cfg, merge=opts.merge, stop_after=opts.stop_after,
                            tokenizer_path=tok_path, tokenizer_note=tok_note, resume=opts.resume)
    return launch_torchrun(spec, cfg, run_dir, opts, tok_path, tok_note)


def launch_torchrun(spec, cfg, run_dir: Path, opts: RunOptions, tok_path, tok_note) -> int:
    launch_dir = run_dir / ".launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    payload = {"spec": spec.to_dict(), "cfg": cfg, "run_dir": str(run_dir), "merge": opts.merge,
               "stop_after": opts.stop_after, "tokenizer_path": tok_path, "tokenizer_note": tok_note,
               "resume": opts.resume}
    lf = launch_dir / "launch.json"
    lf.write_text(json.dumps(payload, indent=1, default=str))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // opts.nproc_per_node)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "nemo_migrate.runtime.launch", "--standalone", "--nproc-per-node",
           str(opts.nproc_per_node), "-m", "nemo_migrate.runtime.worker", str(lf)]
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


__all__ = ["RunOptions", "run_main", "prepare", "place_checkpoints"]

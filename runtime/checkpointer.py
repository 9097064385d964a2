"""The run's checkpoints: save, resume, the run's fingerprint and signature, LATEST, the ``--merge`` export.

* **save** (``save``): never of NaN/inf weights (checked first, over all ranks); each part (model, optimizer, RNG,
  data position, schedulers) in a phase after which every rank learns whether any rank's write failed, so a full
  disk removes the partial step dir and stops every rank with one message; the manifest is written last and only
  then is ``LATEST`` moved to the new step dir (``checkpoint.py`` has the layout).
* **resume** (``resume``): rank 0 decides (``--no-resume`` -> a fresh directory; else ``LATEST`` / the newest
  complete step dir, verified), checks the checkpoint's *signature* (what can never change on resume: model, LoRA
  shape and targets, world/parallel/batch sizes) and its *fingerprint* (``resume.py``: every setting that changes the
  math; a difference is refused unless ``--resume changed``), and broadcasts the decision; every rank then loads,
  each file checked before the collective that uses it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from . import checkpoint as ck
from .config import dump_yaml
from .data import MapLoader
from .errors import CheckpointError
from .guard import WeightGuard, canonical


@dataclass
class TrainState:
    """What a checkpoint holds and a resume restores; built by the Trainer's setup."""

    inner: torch.nn.Module  # the model (parameters sharded by TP/FSDP2 in place), not its DDP wrapper
    optimizer: Any
    lr_scheduler: Any  # or None
    steps: Any  # StepScheduler: step, epoch, the loop's cadences
    loader: Any  # the training loader (its data position)
    tok: Any  # or None
    lora_info: Any  # or None (full fine-tune)
    hf_config: Any
    num_params: int


def loader_state(loader) -> dict[str, Any]:
    """The training loader's position: the runtime's own keys (``epoch``, ``yielded``, ...) and, for a map-style
    dataset, the same position as torchdata's ``StatefulDataLoader.state_dict`` over a ``StatefulDistributedSampler``
    (0.7's ``ParallelAwareDataloader``, ``components/datasets/loader.py``) holds it, so 0.7 resumes at the same
    sample (torchdata ``stateful_dataloader.py`` ``_StatefulSingleProcessDataLoaderIter.state_dict``,
    ``sampler.py`` ``_StatefulRandomSamplerIterator`` / ``StatefulDistributedSampler``)."""
    sd = dict(loader.state_dict())
    if isinstance(loader, MapLoader):
        k = int(sd["yielded"])
        n = min(k * loader.batch_size, len(loader.sampler))
        sd.update({"_index_sampler_state": None, "_sampler_iter_state": {"samples_yielded": n,
                                                                         "sampler_state": {"yielded": n}},
                   "_sampler_iter_yielded": k, "_num_yielded": k, "_IterableDataset_len_called": None,
                   "_shared_seed": None, "fetcher_state": None, "dataset_state": None,
                   "_iterator_finished": k >= len(loader)})
    return sd


class Checkpointer:
    def __init__(self, spec, state: TrainState, *, env, run_dir: Path, raw_cfg: dict[str, Any], guard: WeightGuard,
                 resume_mode: str = "auto", log: Callable[[str], None] = print, meshes=None,
                 say: Callable[[str], None] | None = None):
        self.spec, self.state, self.env, self.run_dir, self.raw_cfg = spec, state, env, Path(run_dir), raw_cfg
        self.guard, self.resume_mode, self.log = guard, resume_mode, log
        self.say = say or log  # what must not be missed (resuming, from where): stderr
        # 0.7's file names: dataloader/dataloader_dp_rank_{dp}.pt (written by TP rank 0), rng/rng_global_rank_{r}.pt
        self.dp_rank = meshes.dp_rank if meshes is not None else env.rank
        self.tp_rank = meshes.tp.get_local_rank() if meshes is not None and meshes.tp is not None else 0
        self.last: Path | None = None  # the newest checkpoint this run wrote
        self.resumed_from: Path | None = None
        self.pending_rng: dict[str, Any] | None = None  # the resumed RNG state, restored when training starts
        self.fingerprint: dict[str, Any] | None = None
        if spec.ckpt.enabled and env.is_main:
            from .resume import data_digests, fingerprint

            self.fingerprint = fingerprint(spec, lr_scheduler=state.lr_scheduler, data_digests=data_digests(spec))

    def finite_note(self) -> str:
        """Where the last finite weights are (for the non-finite-weights message)."""
        if self.last is not None:
            return f"the last checkpoint with finite weights is {self.last}"
        if self.spec.ckpt.enabled:
            return "no checkpoint of this run holds finite weights yet"
        return "checkpointing is off"

    def restore_rng(self) -> None:
        if self.pending_rng is not None:
            ck.set_rng_state(self.pending_rng)
            self.pending_rng = None

    def signature(self) -> dict[str, Any]:
        s, st = self.spec, self.state
        return {"model": s.model.name, "source": s.model.source, "proxy": s.model.proxy,
                "peft": None if s.peft is None else {"dim": s.peft.dim, "alpha": s.peft.alpha,
                                                    "targets": sorted(st.lora_info.targets),
                                                    "tied_a": s.compat.lora_tied_a},
                "world_size": self.env.world_size, "dp": s.dist.dp, "tp": s.dist.tp,
                "grad_acc_steps": s.step.grad_acc_steps, "local_batch_size": s.step.local_batch_size,
                "num_params": st.num_params}

    # ------------------------------------------------------------------------------------------------ resume
    def resume(self) -> None:
        c = self.spec.ckpt
        if not c.enabled:
            return
        root = Path(c.checkpoint_dir)
        decision: dict[str, Any] = {}
        if self.env.is_main:
            try:
                decision = self._decide(root)
            except CheckpointError as e:
                decision = {"error": str(e)}
        decision = ck.broadcast_obj(decision)
        if "error" in decision:
            raise CheckpointError(decision["error"])
        for n in decision["notes"]:
            self.log(f"note: {n}")
        if decision.get("fresh_dir"):
            self.spec.ckpt.checkpoint_dir = decision["fresh_dir"]
            Path(decision["fresh_dir"]).mkdir(parents=True, exist_ok=True)
        if decision["path"] is None:
            return
        path = Path(decision["path"])
        diffs = decision.get("changes") or []
        self._load(path, apply_new=bool(diffs), saved_step=decision.get("step"))
        self.resumed_from = path
        steps = self.state.steps
        at = f"step {steps.step} of {steps.max_steps}"
        if diffs:
            from .resume import render

            self.say(f"==> resuming from {path} at {at} WITH CHANGED SETTINGS (--resume changed): {render(diffs, 40)}. "
                     "The new values apply from this step on; the weights, optimizer moments and data position are "
                     "the checkpoint's.")
            if self.env.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / "resume-changes.json").write_text(json.dumps(
                    {"resumed_from": str(path), "step": steps.step,
                     "changed": [{"key": k, "checkpoint": a, "now": b} for k, a, b in diffs]}, indent=1, default=str))
        else:
            self.say(f"==> resuming from {path} at {at} (checkpoint.checkpoint_dir holds it; saved "
                     f"{decision.get('created')}; training settings unchanged since). Pass --no-resume to start fresh "
                     "instead.")

    def _decide(self, root: Path) -> dict[str, Any]:
        """Rank 0: which checkpoint to resume (or a fresh directory), after checking it against the current run."""
        from .resume import changes, render

        if self.resume_mode == "never":
            new = ck.fresh_dir(root)
            notes = []
            if new != root:
                notes.append(f"not resuming (--no-resume): {root} holds checkpoints of an earlier run and is left "
                             f"as it is; this run's checkpoints go to {new} (resume them later with --set "
                             f"checkpoint.checkpoint_dir={new})")
            return {"path": None, "notes": notes, "fresh_dir": str(new) if new != root else None}
        path, notes, doc = ck.find_resume(root, self.spec.ckpt.restore_from)
        if doc is None:
            return {"path": None, "notes": notes}
        self._check_signature(doc.get("signature", {}), path)
        diffs = None
        if doc.get("automodel"):
            notes.append(f"checkpoint {path} was written by Automodel 0.7 (checkpoint.restore_from names it): it has "
                         "no nemo-migrate manifest, so its files are not verified and its training settings cannot "
                         "be compared with this run's.")
        elif "training" not in doc:
            notes.append(f"checkpoint {path.name} does not record its training settings (saved by an earlier "
                         "nemo-migrate): settings changed since then cannot be listed.")
        elif self.fingerprint is not None:
            diffs = changes(doc["training"], self.fingerprint)
            if diffs and self.resume_mode != "changed":
                raise CheckpointError(
                    f"checkpoint {path} was trained with other settings than this run has: {render(diffs)}",
                    key="checkpoint.checkpoint_dir",
                    hint="pass --resume changed to resume it and train on with the new values, --no-resume to start "
                         "fresh (into a new checkpoint directory), or restore the settings it was saved with")
        return {"path": str(path), "notes": notes, "changes": diffs, "step": doc.get("step"),
                "created": doc.get("created")}

    def _check_signature(self, sig: dict[str, Any], path: Path) -> None:
        cur = self.signature()
        diffs = [k for k in cur if k in sig and sig[k] != cur[k]]
        if diffs:
            k = diffs[0]
            hint = ("pass --no-resume to start fresh (into a new checkpoint directory), use a fresh "
                    "checkpoint.checkpoint_dir, or restore the original settings")
            if k in ("world_size", "dp", "tp", "grad_acc_steps", "local_batch_size"):
                hint = ("the saved data position and RNG streams are per rank, so resume with the original "
                        "--nproc-per-node / parallel sizes / batch sizes, or pass --no-resume to start fresh")
            raise CheckpointError(f"checkpoint {path.name} belongs to a different run ({k} differs; --resume changed "
                                  "cannot apply this one)", key="checkpoint.checkpoint_dir", expected=cur[k],
                                  found=sig[k], hint=hint)

    def _load(self, path: Path, *, apply_new: bool = False, saved_step: int | None = None) -> None:
        """Load a verified checkpoint. Every file is checked before the collective that uses it, and all ranks agree
        on a failure, so a bad file is a message naming it (never a hang or a traceback). With ``apply_new``
        (--resume changed) the optimizer hyperparameters and the LR schedule are this run's, fast-forwarded."""
        from safetensors.torch import load_file

        from . import lora as lora_mod

        st_, spec, optimizer, sched = self.state, self.spec, self.state.optimizer, self.state.lr_scheduler
        hint = (f"the checkpoint's files are damaged or were not written by this runtime: set checkpoint.restore_from "
                f"to another epoch_E_step_S dir, move {path} away, or pass --no-resume to start fresh")
        current = {"file": "model/"}

        def step(label: str, fn):
            current["file"] = label
            try:
                return fn(), None
            except CheckpointError as e:
                return None, str(e.message)
            except ck.PASS_THROUGH:
                raise
            except BaseException as e:  # noqa: BLE001 - anything a damaged file makes the loaders raise (DCP: Base)
                return None, (f"checkpoint {path} cannot be loaded: {current['file']} is not valid "
                              f"({type(e).__name__}: {ck.first_line(e)})")

        def check(msg: str | None) -> None:
            msg = ck.agree(msg)
            if msg:
                raise CheckpointError(msg, key="checkpoint", hint=hint)

        model_dir = path / "model"
        params = {n: p for n, p in st_.inner.named_parameters()}

        def read_model():
            if spec.peft is not None:
                adapter = load_file(str(model_dir / "adapter_model.safetensors"))
                try:
                    sd = lora_mod.trainable_keys_from_adapter(adapter, st_.lora_info)
                except KeyError as e:
                    raise CheckpointError(f"checkpoint {path}: model/adapter_model.safetensors has no LoRA weights "
                                          f"for {e.args[0]}") from None
            else:
                if not self.env.is_main:
                    return {}
                sd = ck.load_hf_weights(model_dir)
                if getattr(st_.hf_config, "tie_word_embeddings", False) and "lm_head.weight" not in sd:
                    emb = [k for k in sd if k.endswith("embed_tokens.weight")]
                    if emb:
                        sd["lm_head.weight"] = sd[emb[0]]
                missing = sorted({canonical(k) for k in st_.inner.state_dict()} - set(sd))
                if missing:
                    raise CheckpointError(f"checkpoint {path}: model/ lacks {len(missing)} weight(s), e.g. "
                                          f"{missing[0]}")
            canon = {canonical(n): p for n, p in params.items()}
            for k, v in sd.items():
                p = params.get(k, canon.get(k))
                if p is not None and tuple(p.shape) != tuple(v.shape):
                    raise CheckpointError(f"checkpoint {path}: {k} has shape {tuple(v.shape)}, the model "
                                          f"{tuple(p.shape)}")
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    raise CheckpointError(f"checkpoint {path} holds non-finite weights ({k} has NaN/inf): it cannot "
                                          "be trained on")
            return sd

        label = "model/adapter_model.safetensors" if spec.peft is not None else "model/ (HF weights)"
        sd, msg = step(label, read_model)
        check(msg)
        ck.load_full(st_.inner, sd, broadcast=spec.peft is None, strict=spec.peft is None)
        del sd
        snapshot = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        saved_sched: dict[str, Any] = {}

        def load_optim():
            saved_sched["sd"] = ck.load_optimizer(optimizer, st_.inner, path / "optim", sched, partial=apply_new)

        _, msg = step("optim/ (optimizer state)", load_optim)
        check(msg)
        r, dp = self.env.rank, self.dp_rank

        def small(rel: str):
            st = torch.load(path / rel, weights_only=True)
            if not isinstance(st, dict):
                raise CheckpointError(f"checkpoint {path}: {rel} does not hold a state dict (found "
                                      f"{type(st).__name__})")
            return st

        def load_steps():
            st = small("step_scheduler.pt")
            step_, epoch = st.get("step"), st.get("epoch")
            if not (isinstance(step_, int) and isinstance(epoch, int) and 0 <= epoch and 0 <= step_ and
                    (saved_step is None or step_ <= saved_step + 1)):
                raise CheckpointError(f"checkpoint {path}: step_scheduler.pt holds step {step_!r}, epoch {epoch!r}, "
                                      f"not the position of a checkpoint saved at step {saved_step}")
            st_.steps.load_state_dict(st)

        _, msg = step("step_scheduler.pt", load_steps)
        if msg is None and sched is not None and saved_sched.get("sd") is not None:
            def load_sched():
                st = saved_sched["sd"]
                if apply_new:  # this run's schedule, at the checkpoint's step
                    n = st.get("num_steps")
                    if not isinstance(n, int) or n < 0:
                        raise CheckpointError(f"checkpoint {path}: optim/ holds no LR scheduler step count")
                    sched.num_steps = 0
                    sched.step(n)
                else:
                    sched.load_state_dict(st)
                lrs = [g["lr"] for g in optimizer.param_groups]
                if not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in lrs):
                    raise CheckpointError(f"checkpoint {path}: the LR scheduler state in optim/ gives the learning "
                                          f"rate(s) {lrs}")

            if apply_new:
                for g, saved in zip(optimizer.param_groups, snapshot):
                    g.update(saved)  # the config's lr/betas/eps/weight decay, not the checkpoint's
            _, msg = step("optim/ (LR scheduler state)", load_sched)
        elif msg is None and apply_new:
            for g, saved in zip(optimizer.param_groups, snapshot):
                g.update(saved)
            if sched is not None:  # a schedule the checkpoint did not have: at the resumed step
                sched.num_steps = 0
                sched.step(st_.steps.step)

        def load_loader():
            st = small(f"dataloader/dataloader_dp_rank_{dp}.pt")
            if "yielded" not in st and isinstance(st.get("_num_yielded"), int):  # 0.7's StatefulDataLoader state
                st = {"epoch": st_.steps.epoch, "yielded": st["_num_yielded"]}
            epoch, done = st.get("epoch"), st.get("yielded")
            if not (isinstance(epoch, int) and isinstance(done, int) and epoch >= 0 and done >= 0):
                raise CheckpointError(f"checkpoint {path}: dataloader_dp_rank_{dp}.pt holds epoch {epoch!r}, "
                                      f"position {done!r}")
            if isinstance(st_.loader, MapLoader) and done > len(st_.loader) and not apply_new:
                raise CheckpointError(f"checkpoint {path}: dataloader_dp_rank_{dp}.pt is at batch {done} of an "
                                      f"epoch of {len(st_.loader)}")
            if "generator" in st:
                torch.Generator().set_state(st["generator"])  # a bad generator state fails here, not mid-training
            st_.loader.load_state_dict(st)

        if msg is None:
            _, msg = step(f"dataloader/dataloader_dp_rank_{dp}.pt", load_loader)

        def load_rng():
            st = small(f"rng/rng_global_rank_{r}.pt")
            saved = ck.rng_state()
            try:
                ck.set_rng_state(st)  # a bad state fails here, not at the first step
            finally:
                ck.set_rng_state(saved)
            return st

        if msg is None:
            self.pending_rng, msg = step(f"rng/rng_global_rank_{r}.pt", load_rng)
        check(msg)

    # ------------------------------------------------------------------------------------------------ save
    def save(self, epoch: int, step: int, train_loss: float, val_losses: dict[str, float]) -> None:
        c = self.spec.ckpt
        if not c.enabled:
            return
        flag = self.guard.flag()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag)
        bad = self.guard.bad() if float(flag) > 0 else []  # never a checkpoint of NaN/inf weights
        if bad:
            raise self.guard.error(bad, when=f"at step {step}, before its checkpoint is saved",
                                   lr=self.state.optimizer.param_groups[0].get("lr"), saved=self.finite_note())
        from . import lora as lora_mod
        from .errors import io_hint, io_reason

        st_ = self.state
        root = Path(c.checkpoint_dir)
        path = root / ck.step_dir_name(epoch, step)
        is_main = self.env.is_main
        prev = None
        if is_main and ((root / "LATEST").is_symlink() or (root / "LATEST").exists()):
            try:
                prev = (root / "LATEST").resolve()
            except (OSError, RuntimeError):
                prev = None
        final = st_.steps.is_last_step

        def phase(fn) -> None:
            """Run one part of the save on every rank; any rank's I/O failure stops all of them cleanly."""
            err: BaseException | None = None
            try:
                fn()
            except ck.PASS_THROUGH:
                raise
            except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException is a BaseException; classified below
                err = e
            reason = io_reason(err) if err is not None else None
            if err is not None and reason is None:
                ck.agree(f"rank {self.env.rank} failed while saving")
                raise err  # not an I/O failure: a bug, reported as an internal error
            msg = ck.agree(None if reason is None else reason[0])
            if msg:
                if is_main:
                    shutil.rmtree(path, ignore_errors=True)
                raise CheckpointError(
                    f"saving the checkpoint of step {step} failed ({msg}); the partial {path} was removed and "
                    + (f"LATEST still points at {prev} (the last complete checkpoint)" if prev is not None else
                       "no complete checkpoint of this run exists yet"),
                    key="checkpoint.checkpoint_dir", hint=io_hint(reason[1] if reason else None, msg)
                    + "; rerun to resume from the last complete checkpoint")

        def prepare_dir() -> None:
            if is_main:
                if path.exists():
                    shutil.rmtree(path)
                path.mkdir(parents=True)
                (path / ck.INCOMPLETE).touch()  # 0.7 skips a step dir that has it (an interrupted save)

        phase(prepare_dir)
        ck.barrier()
        # model (gathered on every rank: a collective; written by rank 0)
        held = {"sd": ck.gather_full(st_.inner, trainable_only=self.spec.peft is not None)}

        def write_model() -> None:
            if not is_main:
                return
            if self.spec.peft is not None:
                tensors = lora_mod.adapter_tensors(held["sd"], st_.lora_info)
                ck.save_adapter(path / "model", tensors, self._adapter_config(), self._peft_extra(), st_.tok)
            else:
                ck.save_hf_model(path / "model", st_.hf_config, held["sd"], st_.tok)

        phase(write_model)
        held.clear()
        phase(lambda: ck.save_optimizer(st_.optimizer, st_.inner, path / "optim", st_.lr_scheduler))
        r, dp = self.env.rank, self.dp_rank

        def write_states() -> None:
            (path / "rng").mkdir(exist_ok=True)
            (path / "dataloader").mkdir(exist_ok=True)
            ck.save_small(ck.rng_state(), path / "rng" / f"rng_global_rank_{r}.pt")
            if self.tp_rank == 0:  # 0.7's save_on_dp_ranks: one file per DP rank
                ck.save_small(loader_state(st_.loader), path / "dataloader" / f"dataloader_dp_rank_{dp}.pt")
            if is_main:
                ck.save_small(st_.steps.state_dict(), path / "step_scheduler.pt")
                (path / "config.yaml").write_text(dump_yaml(self.raw_cfg))
                losses = {"train_loss": train_loss}
                if len(val_losses) == 1:
                    losses["val_loss"] = next(iter(val_losses.values()))
                else:
                    losses.update(val_losses)
                (path / "losses.json").write_text(json.dumps(losses, indent=2))

        phase(write_states)
        ck.barrier()
        removed: list[str] = []

        def publish() -> None:
            if is_main:
                ck.write_manifest(path, epoch=epoch, step=step, signature=self.signature(), training=self.fingerprint)
                (path / ck.INCOMPLETE).unlink(missing_ok=True)
                ck.publish_latest(root, path)
                if val_losses:  # 0.7's LOWEST_VAL: the checkpoint with the lowest validation loss so far
                    v = next(iter(val_losses.values())) if len(val_losses) == 1 else val_losses.get("default")
                    best = ck.pointer_metric(root, "LOWEST_VAL")
                    if v is not None and math.isfinite(v) and (best is None or v < best):
                        ck.publish_latest(root, path, "LOWEST_VAL")
                removed.extend(ck.apply_retention(root, c.max_recent_checkpoints))

        phase(publish)
        if is_main:
            self.log(f"checkpoint: {path}" + (" (final)" if final else "")
                     + (f"; removed {', '.join(removed)} (max_recent_checkpoints)" if removed else ""))
        ck.barrier()
        self.last = path

    def _adapter_config(self) -> dict[str, Any]:
        from . import lora as lora_mod

        return lora_mod.adapter_config(self.state.lora_info, self.spec.peft, base_model=str(self.spec.model.name or ""),
                                       dropout=self.spec.peft.dropout)

    def _peft_extra(self) -> dict[str, Any]:
        p = self.spec.peft
        return {"target_modules": p.target_modules, "exclude_modules": p.exclude_modules,
                "match_all_linear": p.match_all_linear, "dim": p.dim, "alpha": p.alpha, "dropout": p.dropout,
                "dropout_position": p.dropout_position, "lora_A_init": p.lora_A_init, "lora_dtype": p.lora_dtype,
                "nemo_compat_lora_tied_a": self.spec.compat.lora_tied_a,
                "tied_groups": self.state.lora_info.tied_groups}

    # ------------------------------------------------------------------------------------------------ --merge
    def export_merged(self) -> None:
        """RUN_DIR/merged: base + LoRA merged into one HF model (every rank gathers; rank 0 writes)."""
        from . import lora as lora_mod

        if self.spec.peft is None:
            self.log("note: --merge only applies to LoRA runs; a full fine-tune's checkpoint is already a full "
                     "HF model.")
            return
        sd = ck.gather_full(self.state.inner, trainable_only=False)
        if self.env.is_main:
            merged = lora_mod.merged_state_dict({k: v for k, v in sd.items()}, self.state.lora_info)
            out = self.run_dir / "merged"
            if out.exists():
                shutil.rmtree(out)
            ck.save_hf_model(out, self.state.hf_config, merged, self.state.tok)
            self.log(f"merged model (base + LoRA, HF safetensors): {out}")
        del sd

"""`run --verify` as a user follows it (issue 17, item 7), without training: progress lines per leg (no internal
command lines on the console), legs with the same effective runtime config run once and are marked reused, data that
cannot be used is named with what is wrong with it, and the plot (a colour per leg, the tolerance band, the migrated
line on top)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nemo_migrate.convert import Options, convert
from nemo_migrate.verify import VerifyError
from nemo_migrate.verify.legs import LegRunner, Progress, data_files, effective_key, environment, migrated_config, read_jsonl, yaml_load
from nemo_migrate.verify.report import ENVELOPES, LegRun

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "golden" / "seed" / "input"


class _Job:
    """What data_files reads of a job."""

    def __init__(self, root):
        self.root = root

    def value(self, path):
        return self.root


# ---------------------------------------------------------------------------------------------- data

def test_missing_data_dir_is_named_not_answered_with_pass_data(tmp_path):
    with pytest.raises(VerifyError) as e:
        data_files(_Job("/mount/data"), tmp_path / "nope")
    msg = str(e.value)
    assert f"--data {tmp_path / 'nope'}: no such file or directory" in msg and "pass --data" not in msg


def test_without_data_the_jobs_own_root_is_what_is_missing():
    with pytest.raises(VerifyError, match=r"the job's data \(/mount/data\) is not on this machine; pass --data DIR"):
        data_files(_Job("/mount/data"), None)


def test_a_dir_without_training_jsonl_says_what_it_holds(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VerifyError, match="no training.jsonl in it \\(it is empty\\)") as e:
        data_files(_Job(None), tmp_path / "empty")
    assert "pass --data" not in str(e.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train.json").write_text("{}")
    with pytest.raises(VerifyError, match="it holds train.json"):
        data_files(_Job(None), tmp_path / "other")


@pytest.mark.parametrize("text, says", [
    ('[1, 2]\n', "a JSON list, not an object"),
    ('{"question": "q", "answer": "a"}\n', "no 'prompt', 'completion' field (the row has 'answer', 'question')"),
    ('{"prompt": "p"}\n', ":1: no 'completion' field"),
    ("hello\n", ":1: not JSON"),
    ("\n\n", "is empty"),
])
def test_rows_the_template_cannot_read(tmp_path, text, says):
    f = tmp_path / "training.jsonl"
    f.write_text(text)
    with pytest.raises(VerifyError) as e:
        read_jsonl(f, need=("prompt", "completion"))
    assert says in str(e.value)


def test_good_rows_are_read(tmp_path):
    f = tmp_path / "training.jsonl"
    f.write_text('{"prompt": "p", "completion": "c"}\n\n{"prompt": "q", "completion": "d", "extra": 1}\n')
    assert len(read_jsonl(f, need=("prompt", "completion"))) == 2


# ---------------------------------------------------------------------------------------------- the same leg twice

def _leg_configs(tmp_path: Path) -> dict[str, dict]:
    """The seed job's fp16 and fp8 migrated legs, each with its own (identical) tokenizer and data files."""
    conv = convert(Options(source=SEED))
    out = {}
    for v in conv.variants:
        d = tmp_path / v.name
        (d / "tok").mkdir(parents=True)
        (d / "tok" / "tokenizer.json").write_text('{"model": "same"}')
        (d / "training.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
        env, _ = environment(yaml_load(v.text), nproc=1, seq_length=64, tok_dir=d / "tok", train=d / "training.jsonl")
        out[v.name] = migrated_config(yaml_load(v.text), env, None)
    return out


def _key(cfg, memo=None):
    return effective_key(cfg, steps=4, nproc=1, model_path=None, proxy_model="tiny", memo={} if memo is None else memo)


def test_an_output_directory_is_compared_as_written_not_by_what_is_in_it(tmp_path):
    """The job's checkpoint_dir may exist here and be written to by another run: it is where a run writes, so its
    content never makes two legs differ (it once made this file's fp8/fp16 comparison flaky)."""
    cfgs = _leg_configs(tmp_path)
    out = tmp_path / "ckpt"
    out.mkdir()
    for c in cfgs.values():
        c["checkpoint"]["checkpoint_dir"] = str(out)
    k = _key(cfgs["fp16"])
    (out / "written-meanwhile").write_text("x")
    assert _key(cfgs["fp8"]) == k
    cfgs["fp8"]["checkpoint"]["checkpoint_dir"] = str(tmp_path / "elsewhere")
    assert _key(cfgs["fp8"]) != k  # a different place is still a different config


def test_fp8_off_legs_of_the_seed_job_have_the_fp16_legs_effective_config(tmp_path):
    cfgs = _leg_configs(tmp_path)
    assert "fp8" in cfgs["fp8"] and "fp8" not in cfgs["fp16"]  # written differently ...
    assert _key(cfgs["fp16"]) == _key(cfgs["fp8"])  # ... the same run (fp8.enabled: false, files of the same content)
    on = json.loads(json.dumps(cfgs["fp8"]))
    on["fp8"]["enabled"] = True
    assert _key(on) != _key(cfgs["fp16"])
    (tmp_path / "fp8" / "tok" / "tokenizer.json").write_text('{"model": "other"}')
    assert _key(cfgs["fp8"]) != _key(cfgs["fp16"])  # another tokenizer: another leg
    assert effective_key(cfgs["fp16"], steps=5, nproc=1, model_path=None, proxy_model="tiny", memo={}) != _key(cfgs["fp16"])


def test_a_leg_with_the_same_config_is_reused_and_progress_is_counted(tmp_path, monkeypatch):
    cfgs = _leg_configs(tmp_path)
    ran: list[str] = []

    def fake_run(self, name, cfg, label):
        ran.append(label)
        return LegRun(name=name, dir=str(self.work / name), config=str(self.work / name / "config.yaml"), command=["run", "x"],
                      seconds=1.5, steps=[{"step": 0, "loss": 2.0, "grad_norm": 1.0, "lr_applied": 1e-4}], summary={})

    monkeypatch.setattr(LegRunner, "_run", fake_run)
    lines: list[str] = []
    progress = Progress(4, lines.append, tmp_path / "verify.log")
    done: dict = {}
    common = dict(steps=4, nproc=1, model_path=None, proxy_model="tiny", log=lines.append, progress=progress, done=done)
    r16 = LegRunner(work=tmp_path / "fp16" / "legs", prefix="fp16/", **common)
    r8 = LegRunner(work=tmp_path / "fp8" / "legs", prefix="fp8/", **common)
    a = r16.run("migrated", cfgs["fp16"])
    b = r8.run_all({"migrated": cfgs["fp8"]})["migrated"]
    assert ran == ["fp16/migrated"]
    assert b.reused_from == "fp16/migrated" and b.name == "migrated" and b.steps == a.steps
    assert (tmp_path / "fp8" / "legs" / "migrated" / "config.yaml").is_file()  # its own config is written, for reading
    assert b.report().to_json()["reused_from"] == "fp16/migrated" and "reused_from" not in a.report().to_json()
    assert lines[0] == "leg 1/4: fp16/migrated ..."
    assert re.fullmatch(r"leg 1/4: fp16/migrated done in \d+\.\d s \(\d+ s elapsed\)", lines[1])
    assert lines[2].startswith("leg 2/4: fp8/migrated: same runtime config as fp16/migrated, its result is reused")
    assert not any("nemo_migrate" in x or "--out" in x for x in lines)  # no internal command lines on the console
    log = (tmp_path / "verify.log").read_text()
    assert "leg 1/4: fp16/migrated ..." in log


def test_a_failed_leg_is_not_run_again_either(tmp_path, monkeypatch):
    cfgs = _leg_configs(tmp_path)
    calls = []

    def failing(self, name, cfg, label):
        calls.append(label)
        raise VerifyError(f"leg '{label}' failed")

    monkeypatch.setattr(LegRunner, "_run", failing)
    done: dict = {}
    common = dict(steps=4, nproc=1, model_path=None, proxy_model="tiny", log=lambda m: None, done=done)
    with pytest.raises(VerifyError):
        LegRunner(work=tmp_path / "a", prefix="fp16/", **common).run("migrated", cfgs["fp16"])
    with pytest.raises(VerifyError, match="fp16/migrated"):
        LegRunner(work=tmp_path / "b", prefix="fp8/", **common).run("migrated", cfgs["fp8"])
    assert calls == ["fp16/migrated"]


# ---------------------------------------------------------------------------------------------- the plot

def _leg(name, losses, reused=None):
    return LegRun(name=name, dir="d", config="c", command=[], seconds=0.0, reused_from=reused,
                  steps=[{"step": i, "loss": x} for i, x in enumerate(losses)], summary={})


def test_plot_colours_band_and_migrated_on_top(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_hex

    from nemo_migrate.verify.report import draw, plot

    ref = [2.0, 1.9, 1.8, 1.7]
    names = ["reference", "migrated", "migrated-without-lora_fused_vs_split", "migrated-without-loss_reduction",
             "migrated-without-master_weights", "migrated-without-tokenization", "migrated-all-removed", "migrated-dropout0", "automodel"]
    legs = {n: _leg(n, ref) for n in names}  # every curve on the reference: the migrated one must still be seen
    legs["migrated-all-removed"] = _leg("migrated-all-removed", ref, reused="fp16/migrated-all-removed")
    fig = draw(legs, "fp16")
    ax = fig.axes[0]
    lines = {ln.get_label().split(" (=")[0]: ln for ln in ax.get_lines()}
    assert set(lines) == set(names)
    colours = [to_hex(ln.get_color()) for ln in lines.values()]
    assert len(set(colours)) == len(colours)  # each leg its own colour
    mig, refl = lines["migrated"], lines["reference"]
    assert mig.get_zorder() > max(ln.get_zorder() for n, ln in lines.items() if n != "migrated")
    assert mig.get_linestyle() == "--" and mig.get_marker() == "o" and refl.get_linestyle() == "-"
    assert "(= fp16/migrated-all-removed)" in lines["migrated-all-removed"].get_label()
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1 and "envelope" in bands[0].get_label()
    ys = bands[0].get_paths()[0].vertices[:, 1]
    a0, r0, a1, r1 = ENVELOPES["standard"]
    assert max(ys) == pytest.approx(ref[0] + a0 + r0 * ref[0])  # the band is the standard envelope around the reference
    assert min(ys) == pytest.approx(ref[-1] - (a1 + r1 * ref[-1]))
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert plot(legs, tmp_path / "loss.png", "fp16") == tmp_path / "loss.png" and (tmp_path / "loss.png").stat().st_size > 1000


def test_an_automodel_leg_of_the_same_config_runs_once(tmp_path, monkeypatch):
    """--against automodel: the Automodel legs of a second variant with the same config, weights and initial adapters
    (files compared by content) are reused too."""
    from nemo_migrate.verify import automodel as va

    ran = []

    def fake(name, cfg, **kw):
        ran.append(kw["prefix"] + name)
        return _leg(name, [2.0, 1.9])

    monkeypatch.setattr(va, "run_leg", fake)
    for v in ("fp16", "fp8"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "init.safetensors").write_bytes(b"same adapters")
    done, memo, lines = {}, {}, []
    progress = Progress(2, lines.append)
    kw = dict(model_dir=tmp_path / "model", work=tmp_path, steps=2, nproc=1, log=lambda m: None, done=done, memo=memo, progress=progress)
    cfg = {"peft": {"dim": 8}, "step_scheduler": {"max_steps": 30}}
    va._run_once("automodel", cfg, prefix="fp16/", init_adapter=tmp_path / "fp16" / "init.safetensors", **kw)
    b = va._run_once("automodel", dict(cfg), prefix="fp8/", init_adapter=tmp_path / "fp8" / "init.safetensors", **kw)
    assert ran == ["fp16/automodel"] and b.reused_from == "fp16/automodel"
    assert lines[-1].startswith("leg 1/2: fp8/automodel: same runtime config as fp16/automodel")
    (tmp_path / "fp8" / "init.safetensors").write_bytes(b"other adapters")
    va._run_once("automodel", dict(cfg), prefix="fp8/", init_adapter=tmp_path / "fp8" / "init.safetensors", **{**kw, "memo": {}})
    assert ran == ["fp16/automodel", "fp8/automodel"]

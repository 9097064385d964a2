"""W&B and MLflow driven for real (W&B offline, MLflow on a file store; no network): they get what Automodel 0.7's
train_ft gives them (runtime/metrics.py RunLoggers): 0.7's record of each remote-logging step, the run's name and
config, MLflow's params, config.yaml, note tag, and the run resumed from the checkpoint dir's mlflow_run_id."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from rt_helpers import metrics, run

wandb = pytest.importorskip("wandb", reason="requirements/loggers.txt (make setup-dev installs it)")
mlflow = pytest.importorskip("mlflow", reason="requirements/loggers.txt (make setup-dev installs it)")


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline run file (.wandb: a LevelDB-style log of 32 KiB blocks after a 7-byte
    header, each chunk crc32/length/type then bytes; types 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, ln, typ = struct.unpack("<IHB", data[pos:pos + 7])
        if typ == 0 and ln == 0:
            pos += block - pos % block
            continue
        chunk, pos = data[pos + 7:pos + 7 + ln], pos + 7 + ln
        if typ in (1, 4):
            out.append((buf if typ == 4 else b"") + chunk)
        buf = chunk if typ == 2 else buf + chunk if typ == 3 else b""
    recs = []
    for b in out:
        r = pb.Record()
        r.ParseFromString(b)
        recs.append(r)
    return recs


def test_wandb_gets_automodels_records_name_and_config(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")

    def f(c):
        c["wandb"] = {"project": "migr", "mode": "offline", "dir": str(tmp_path / "wb")}
        c["step_scheduler"].update(max_steps=4, val_every_steps=2, log_remote_every_steps=2)

    (tmp_path / "wb").mkdir()
    assert run(cfg_factory("wb.yaml", mutate=f), tmp_path / "r") == 0
    [file] = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    recs = _wandb_records(file)
    [r] = [x.run for x in recs if x.WhichOneof("record_type") == "run"]
    assert (r.display_name, r.project) == ("meta-llama_Llama-3.2-1B", "migr")  # 0.7: named after the model
    assert json.loads({(i.key or "/".join(i.nested_key)): i.value_json for i in r.config.update}["step_scheduler"])["max_steps"] == 4
    hist = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in x.history.item}
            for x in recs if x.WhichOneof("record_type") == "history"]
    train = {m["step"]: m for m in metrics(tmp_path / "r")}
    logged = [h for h in hist if "loss" in h]
    assert [h["_step"] for h in logged] == [0, 2]  # every log_remote_every_steps training steps
    for h in logged:  # 0.7's training record (MetricsSample.to_dict): its names, our values
        assert {"step", "epoch", "timestamp", "loss", "grad_norm", "lr", "mem", "tps", "tps_per_gpu", "num_label_tokens"} <= set(h)
        assert h["loss"] == pytest.approx(train[h["_step"]]["loss"]) and h["step"] == h["_step"]
    vals = [h for h in hist if "val_loss" in h]
    assert vals and set(vals[0]) >= {"val_loss", "lr", "num_label_tokens", "mem"} and "timestamp" not in vals[0]


def test_mlflow_run_params_artifact_and_resume(cfg_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's file store (the database store needs sqlalchemy)
    uri = (tmp_path / "mlruns").as_uri()

    def f(c):
        c["mlflow"] = {"tracking_uri": uri, "experiment_name": "migr", "description": "from NeMo", "tags": {"team": "a"}}
        c["step_scheduler"].update(max_steps=3, ckpt_every_steps=3)

    cfg = cfg_factory("ml.yaml", ckpt=True, mutate=f)
    assert run(cfg, tmp_path / "r1") == 0
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("migr")
    [r] = client.search_runs([exp.experiment_id])
    ckpt = Path(__import__("yaml").safe_load(cfg.read_text())["checkpoint"]["checkpoint_dir"])
    assert (ckpt / "mlflow_run_id").read_text() == r.info.run_id
    assert r.info.status == "FINISHED" and r.data.tags["mlflow.note.content"] == "from NeMo" and r.data.tags["team"] == "a"
    assert r.data.params["step_scheduler.max_steps"] == "3" and r.data.params["optimizer.lr"] == "0.01"  # one level split
    assert "config.yaml" in [a.path for a in client.list_artifacts(r.info.run_id)]
    hist = client.get_metric_history(r.info.run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(m["step"], pytest.approx(m["loss"])) for m in metrics(tmp_path / "r1")]
    # a longer run on the same checkpoint dir resumes the checkpoint and the MLflow run
    assert run(cfg, tmp_path / "r2", max_steps=5) == 0
    [r2] = client.search_runs([exp.experiment_id])
    assert r2.info.run_id == r.info.run_id
    assert [m.step for m in client.get_metric_history(r.info.run_id, "loss")] == [0, 1, 2, 3, 4]


def test_a_logger_that_cannot_start_is_a_clear_error(cfg_factory, tmp_path, monkeypatch, capsys):
    """MLflow refusing its store (here: the file store without MLFLOW_ALLOW_FILE_STORE) is named, not an internal error."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = cfg_factory("bad.yaml", mutate=lambda c: c.update(mlflow={"tracking_uri": (tmp_path / "m").as_uri()}))
    assert run(cfg, tmp_path / "r") == 1
    err = capsys.readouterr().err
    assert "nemo-migrate run: error: mlflow: could not start its run: MlflowException" in err and "internal error" not in err

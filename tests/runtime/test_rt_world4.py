"""World size 4 on CPU (gloo): the shapes the seed job trains at on 4 GPUs (tensor parallel 4 with sequence parallel),
2-D TP x DP, and FSDP2 over 4 ranks, each against one process on the same data and seed (issue 20: what runs without
a 4-GPU machine). The ``small`` proxy has 8 heads and 4 KV heads, so TP 4 splits whole heads."""

import pytest

from rt_helpers import metrics, run



def _losses(out) -> list[float]:
    return [r["loss"] for r in metrics(out)]


def _dist(**kw):
    def mutate(c):
        c["distributed"].update(kw)
        c["step_scheduler"]["global_batch_size"] = 4

    return mutate


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir, tok_dir):
    from rt_helpers import base_config, write_yaml

    d = tmp_path_factory.mktemp("world1")
    cfg = base_config(data_dir, tok_dir)
    cfg["step_scheduler"]["global_batch_size"] = 4
    path = write_yaml(d / "one.yaml", cfg)
    assert run(path, d / "run", max_steps=2, proxy="small") == 0
    losses = _losses(d / "run")
    assert len(losses) == 2
    return losses


@pytest.mark.parametrize("name,dist", [
    ("tp4-sp", dict(tp_size=4, sequence_parallel=True)),  # the seed job's own parallelism
    ("tp2-dp2", dict(tp_size=2, sequence_parallel=True)),
    ("fsdp4", dict(tp_size=1)),
])
def test_world_size_four_equals_one_process(cfg_factory, tmp_path, one_process, name, dist):
    cfg = cfg_factory(f"{name}.yaml", mutate=_dist(**dist))
    assert run(cfg, tmp_path / "run", max_steps=2, nproc=4, proxy="small") == 0
    got = _losses(tmp_path / "run")
    assert got == pytest.approx(one_process, rel=1e-5), name
    assert got[1] != got[0]  # it trained

"""Loss reductions (automodel vs nemo) by hand, LR schedule per step against 0.7's formula, step scheduler."""

import math

import pytest
import torch
import torch.nn.functional as F

from rt_helpers import has_automodel
from nemo_migrate.runtime.loss import masked_ce_sum, microbatch_loss
from nemo_migrate.runtime.optim import OptimizerParamScheduler, StepScheduler, build_lr_scheduler, param_groups

# ------------------------------------------------------------------------------------------------- loss reductions


def _mbs():
    torch.manual_seed(0)
    W = torch.randn(6, 11, requires_grad=True)
    mbs = []
    for n_tok, seq in ((5, 7), (1, 4), (3, 9)):  # unequal label counts per micro-batch
        x = torch.randn(1, seq, 6)
        labels = torch.full((1, seq), -100)
        labels[0, -n_tok:] = torch.randint(0, 11, (n_tok,))
        mbs.append((x, labels))
    return W, mbs


def _ce_sum(W, x, labels):
    return masked_ce_sum(x @ W, labels)


def test_masked_ce_sum_is_sum_over_label_tokens():
    W, mbs = _mbs()
    x, labels = mbs[0]
    logits = (x @ W).reshape(-1, 11)
    keep = labels.reshape(-1) != -100
    ref = F.cross_entropy(logits[keep], labels.reshape(-1)[keep], reduction="sum")
    torch.testing.assert_close(_ce_sum(W, x, labels), ref)


@pytest.mark.parametrize("mode", ["automodel", "nemo"])
def test_reductions_match_hand_formulas(mode):
    W, mbs = _mbs()
    counts = [int((lab != -100).sum()) for _, lab in mbs]
    step_tokens = sum(counts)
    report = 0.0
    for (x, lab), n in zip(mbs, counts):
        bw, rep = microbatch_loss(_ce_sum(W, x, lab), mode=mode, mb_tokens=n, step_tokens=step_tokens,
                                  num_microbatches=len(mbs), dp_size=1)
        bw.backward()
        report += float(rep)
    got = W.grad.clone()
    W.grad = None
    sums = [_ce_sum(W, x, lab) for x, lab in mbs]
    if mode == "automodel":  # one per-token mean over the whole step
        hand = sum(sums) / step_tokens
    else:  # mean over micro-batches of each micro-batch's token mean
        hand = sum(s / n for s, n in zip(sums, counts)) / len(mbs)
    hand.backward()
    assert report == pytest.approx(float(hand.detach()), rel=1e-6)
    torch.testing.assert_close(got, W.grad)
    other = sum(sums) / step_tokens if mode == "nemo" else sum(s / n for s, n in zip(sums, counts)) / len(mbs)
    assert abs(float(other.detach()) - float(hand.detach())) > 1e-3  # the two reductions really differ on this data


@pytest.mark.parametrize("mode", ["automodel", "nemo"])
def test_reductions_with_two_dp_ranks(mode):
    """Rank-local backward tensors, averaged as FSDP/DDP average gradients, give the global formula."""
    W, mbs = _mbs()
    ranks = [mbs[:2], mbs[2:] + mbs[:1]]  # rank 0: 2 mbs, rank 1: 2 mbs
    counts = [[int((lab != -100).sum()) for _, lab in r] for r in ranks]
    step_tokens = sum(map(sum, counts))
    grads, report = [], 0.0
    for r, cs in zip(ranks, counts):
        W.grad = None
        for (x, lab), n in zip(r, cs):
            bw, rep = microbatch_loss(_ce_sum(W, x, lab), mode=mode, mb_tokens=n, step_tokens=step_tokens,
                                      num_microbatches=len(r), dp_size=2)
            bw.backward()
            report += float(rep)  # the all-reduce (sum) of the reported contributions
        grads.append(W.grad.clone())
    avg = (grads[0] + grads[1]) / 2
    W.grad = None
    sums = [[_ce_sum(W, x, lab) for x, lab in r] for r in ranks]
    if mode == "automodel":
        hand = sum(map(sum, sums)) / step_tokens
    else:
        hand = sum(s / n for rs, cs in zip(sums, counts) for s, n in zip(rs, cs)) / 4
    hand.backward()
    assert report == pytest.approx(float(hand.detach()), rel=1e-6)
    torch.testing.assert_close(avg, W.grad)


# ------------------------------------------------------------------------------------------------- LR schedule


def _opt(lr=1e-3, wd=0.1, groups=None):
    p = torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW(groups or [p], lr=lr, weight_decay=wd)


def _formula(n, *, init, mx, mn, W, D, style):
    """Automodel 0.7 OptimizerParamScheduler.get_lr written out independently."""
    if W > 0 and n <= W:
        return init + (mx - init) * n / W
    if style == "constant":
        return mx
    if n > D:
        return mn
    r = (n - W) / (D - W)
    coeff = 1 - r if style == "linear" else 0.5 * (math.cos(math.pi * r) + 1)
    return mn + coeff * (mx - mn)


@pytest.mark.parametrize("style", ["cosine", "linear", "constant"])
def test_lr_per_step_matches_formula(style):
    opt = _opt()
    s = OptimizerParamScheduler(opt, init_lr=1e-5, max_lr=1e-3, min_lr=1e-4, lr_warmup_steps=5, lr_decay_steps=20,
                                lr_decay_style=style, start_wd=0.1, end_wd=0.1, wd_incr_steps=20,
                                wd_incr_style="constant")
    for n in range(26):  # step(0) at construction, then step(1) per optimizer step
        assert opt.param_groups[0]["lr"] == pytest.approx(
            _formula(n, init=1e-5, mx=1e-3, mn=1e-4, W=5, D=20, style=style), rel=1e-12)
        s.step(1)


def test_lr_defaults_when_keys_absent():
    opt = _opt(lr=2e-4)
    s = build_lr_scheduler(opt, {}, total_steps=30)
    assert (s.lr_warmup_steps, s.lr_decay_steps) == (3, 30)  # min(1000, total // 10), total
    assert s.init_lr == pytest.approx(2e-5) and s.min_lr == pytest.approx(2e-6) and s.max_lr == 2e-4
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-5)
    s.step(3)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    assert build_lr_scheduler(opt, None, total_steps=30) is None


def test_wsd_and_group_multipliers():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1]}, {"params": [p2], "lr_mult": 0.5, "wd_mult": 0.0}], lr=1.0,
                            weight_decay=0.1)
    s = build_lr_scheduler(opt, {"lr_decay_style": "WSD", "wsd_decay_steps": 4, "lr_wsd_decay_style": "linear",
                                 "lr_warmup_steps": 2, "init_lr": 0.0, "min_lr": 0.0}, total_steps=10)
    seen = []
    for _ in range(11):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"], opt.param_groups[1]["weight_decay"]))
        s.step(1)
    assert [round(a, 6) for a, _, _ in seen] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert all(b == pytest.approx(a * 0.5) and wd == 0.0 for a, b, wd in seen)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1)


def test_scheduler_state_round_trip():
    opt = _opt()
    s = build_lr_scheduler(opt, {"lr_warmup_steps": 2}, total_steps=10)
    s.step(4)
    lr = opt.param_groups[0]["lr"]
    opt2 = _opt()
    s2 = build_lr_scheduler(opt2, {"lr_warmup_steps": 2}, total_steps=10)
    s2.load_state_dict(s.state_dict())
    assert opt2.param_groups[0]["lr"] == lr and s2.num_steps == 4


@pytest.mark.skipif(not has_automodel(), reason="nemo_automodel 0.7.0 not importable")
@pytest.mark.automodel
def test_scheduler_equals_real_automodel():
    from nemo_automodel.components.optim.scheduler import OptimizerParamScheduler as Ref

    for style, extra in (("cosine", {}), ("linear", {}), ("constant", {}), ("inverse-square-root", {}),
                         ("WSD", {"wsd_decay_steps": 5, "lr_wsd_decay_style": "cosine"})):
        kw = dict(init_lr=1e-6, max_lr=1e-3, min_lr=1e-5, lr_warmup_steps=4, lr_decay_steps=17, lr_decay_style=style,
                  start_wd=0.0, end_wd=0.1, wd_incr_steps=17, wd_incr_style="linear", **extra)
        a, b = _opt(), _opt()
        mine, ref = OptimizerParamScheduler(a, **kw), Ref(b, **kw)
        for _ in range(25):
            assert a.param_groups[0]["lr"] == pytest.approx(b.param_groups[0]["lr"], rel=1e-12, abs=1e-18), style
            assert a.param_groups[0]["weight_decay"] == pytest.approx(b.param_groups[0]["weight_decay"], abs=1e-15)
            mine.step(1)
            ref.step(1)


# ------------------------------------------------------------------------------------------------- step scheduler


class _Loader:
    def __init__(self, n):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(range(self.epoch * 100, self.epoch * 100 + self.n))

    def set_epoch(self, e):
        self.epoch = e


def _trace(sched):
    out = []
    for e in sched.epochs:
        sched.set_epoch(e)
        for b in sched:
            out.append((sched.step, sched.epoch, len(b), sched.is_val_step, sched.is_ckpt_step, sched.is_last_step))
    return out


def test_step_scheduler_grad_acc_epochs_and_cadence():
    s = StepScheduler(grad_acc_steps=4, dataloader=_Loader(10), num_epochs=None, max_steps=7, ckpt_every_steps=5,
                      save_checkpoint_every_epoch=True, validate_on_checkpoint=False, val_every_steps=2)
    assert s.epoch_len == 3 and s.num_epochs == 3  # ceil(10/4); num_epochs null -> ceil(max_steps/epoch_len)
    t = _trace(s)
    assert [x[2] for x in t] == [4, 4, 2, 4, 4, 2, 4]  # short final micro-batch list at each epoch end
    assert [x[0] for x in t] == list(range(7)) and [x[1] for x in t] == [0, 0, 0, 1, 1, 1, 2]
    assert [x[3] for x in t] == [s % 2 == 1 for s in range(7)]
    assert [x[4] for x in t] == [False, False, True, False, True, True, True]  # epoch ends, step%5==4, last
    assert t[-1][5] and not any(x[5] for x in t[:-1])
    assert s.state_dict() == {"step": 7, "epoch": 2}


def test_step_scheduler_num_epochs_cap():
    s = StepScheduler(grad_acc_steps=2, dataloader=_Loader(6), num_epochs=2, max_steps=100, ckpt_every_steps=100,
                      save_checkpoint_every_epoch=False, validate_on_checkpoint=True, val_every_steps=None)
    t = _trace(s)
    assert len(t) == 6 and t[-1][5] and t[-1][4] and t[-1][3]  # last step: checkpoint + validate_on_checkpoint


@pytest.mark.skipif(not has_automodel(), reason="nemo_automodel 0.7.0 not importable")
@pytest.mark.automodel
def test_step_scheduler_equals_real_automodel():
    from nemo_automodel.components.training.step_scheduler import StepScheduler as Ref

    for kw in (dict(num_epochs=None, max_steps=7, ckpt_every_steps=5, save_checkpoint_every_epoch=True,
                    validate_on_checkpoint=False, val_every_steps=2),
               dict(num_epochs=2, max_steps=None, ckpt_every_steps=4, save_checkpoint_every_epoch=False,
                    validate_on_checkpoint=True, val_every_steps=None)):
        ref = Ref(global_batch_size=8, local_batch_size=1, dp_size=2, dataloader=_Loader(10), preemption_signal=None,
                  **kw)
        mine = StepScheduler(grad_acc_steps=4, dataloader=_Loader(10), **kw)
        assert _trace(mine) == _trace(ref)
        assert mine.state_dict() == ref.state_dict()


def test_param_groups_overrides_and_no_decay():
    lin = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups, warns = param_groups(lin, [{"pattern": r"^1\.", "lr_mult": 2.0}, {"pattern": "nothing"}],
                                 no_decay_1d=True)
    assert warns and "nothing" in warns[0]
    by = [(len(g["params"]), g.get("lr_mult"), g.get("wd_mult"), g.get("weight_decay")) for g in groups]
    assert by == [(1, None, None, None), (1, None, 0.0, 0.0), (2, 2.0, 0.0, 0.0)]  # decaying group first

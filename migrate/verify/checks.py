"""The checks ``run --verify`` makes before training: tokenization parity and the learning rate at every step."""

from __future__ import annotations

from .report import LRCheck, TokenizationParity, TokenSample


def tokenization_parity(rows: list[dict], tok, migrated: dict, nemo: list[dict], seq_len: int) -> TokenizationParity:
    """The first samples as NeMo tokenizes them vs as the migrated dataset does (runtime = Automodel 0.7 rules)."""
    from nemo_migrate.runtime.data import ColumnMappedDataset, mapped_texts
    from nemo_migrate.runtime.tokenizer import EnforcedTokenizer

    ds = migrated.get("dataset") or {}
    tcfg = ds.get("tokenizer") or {}
    et = EnforcedTokenizer(tok, add_bos_token=bool(tcfg.get("add_bos_token", False)), add_eos_token=bool(tcfg.get("add_eos_token", False)),
                           source="verify")
    try:
        pairs = mapped_texts(rows, ds.get("column_mapping") or {}, key="dataset")
        am = ColumnMappedDataset(pairs, et, seq_length=ds.get("seq_length", seq_len), truncation=ds.get("truncation", "do_not_truncate"),
                                 answer_only_loss_mask=ds.get("answer_only_loss_mask", True)).samples
    except Exception as e:  # noqa: BLE001 - reported, not raised: the parity check is a finding
        return TokenizationParity(same=False, error=f"{type(e).__name__}: {e}", samples=[])
    out = []
    eos = tok.eos_token_id
    for i, (n, a) in enumerate(zip(nemo, am)):
        n_ids, a_ids = n["input_ids"], a["input_ids"]
        first = next((j for j, (x, y) in enumerate(zip(n_ids, a_ids)) if x != y), None)
        if first is None and len(n_ids) != len(a_ids):
            first = min(len(n_ids), len(a_ids))
        a_full = a_ids + [a["labels"][-1]]
        at = max((first or 0) - 2, 0), (first or 0) + 4
        out.append(TokenSample(sample=i, same=first is None and n["labels"] == a["labels"], nemo_len=len(n_ids), automodel_len=len(a_ids),
                               first_diff_at=first, nemo_label_tokens=sum(1 for x in n["labels"] if x != -100),
                               automodel_label_tokens=sum(1 for x in a["labels"] if x != -100),
                               nemo_eos_at=n["full"].index(eos) if eos in n["full"] else None,
                               automodel_eos_at=a_full.index(eos) if eos in a_full else None,
                               nemo_at_diff=tok.convert_ids_to_tokens(n_ids[at[0]:at[1]]),
                               automodel_at_diff=tok.convert_ids_to_tokens(a_ids[at[0]:at[1]])))
    return TokenizationParity(same=all(s.same for s in out), samples=out)


def lr_check(migrated: dict, nemo_values: list[float], steps: int) -> LRCheck:
    """The migrated config's LR at every step (the runtime's 0.7 scheduler, built standalone) vs NeMo's formula."""
    import torch

    from nemo_migrate.runtime.optim import build_lr_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    # an optimizer section without lr: torch.optim.AdamW's own default rate, as Automodel would build it
    opt = torch.optim.AdamW([p], lr=float((migrated.get("optimizer") or {}).get("lr", 1e-3)))
    total = int((migrated.get("step_scheduler") or {}).get("max_steps") or steps)
    sch = build_lr_scheduler(opt, migrated.get("lr_scheduler"), total_steps=total)
    got = []
    for _ in range(steps):
        got.append(opt.param_groups[0]["lr"])
        if sch is not None:
            sch.step(1)
    rel = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(got, nemo_values)]
    worst = max(range(len(rel)), key=lambda i: rel[i]) if rel else None
    return LRCheck(migrated=got, nemo=nemo_values[:steps], max_rel_diff=max(rel) if rel else 0.0, worst_step=worst)

"""Tokenizers: a model's own (local dir) or one trained locally on the run's text, with 0.7's BOS/EOS rules.

``EnforcedTokenizer`` reproduces ``NeMoAutoTokenizerWithBosEosEnforced`` (0.7.0, opt-in special tokens):
at load it sets ``add_bos_token``/``add_eos_token`` on the HF tokenizer only when asked for *and* the tokenizer
declares the attribute (transformers then rebuilds its post-processor), fixes ``special_tokens_pattern='cls_sep'``
without CLS/SEP, and defaults ``pad_token_id`` to 0; on every call with special tokens it appends the BOS/EOS the HF
tokenizer did not add itself (per sample), extending ``attention_mask`` alongside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

LOCAL_TOKENIZER_NOTE = "tokenizer: none on disk for this model; trained a byte-level BPE tokenizer locally on the " \
                       "run's training text ({n} texts, vocab {v}) -> {path}; it carries a simple chat template " \
                       "(<|role|> headers, assistant turns + EOS inside {{% generation %}}) for chat data"

# The stand-in tokenizer's chat template: plain-text role headers (no new special tokens, so the vocabulary and the
# token ids of non-chat runs are unchanged) and each assistant turn plus EOS inside {% generation %}, which is what
# Automodel 0.7's ChatDataset reads as the assistant (trained) tokens.
LOCAL_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


def chat_text(messages: list[dict[str, Any]]) -> str:
    """Plain text of a conversation as LOCAL_CHAT_TEMPLATE lays it out (what the local BPE is trained on)."""
    out = []
    for m in messages:
        c = m.get("content")
        c = "" if c is None else str(c)
        out.append(f"<|{m.get('role')}|>\n{c}" + ("" if m.get("role") == "assistant" else "\n"))
    return "".join(out)


class EnforcedTokenizer:
    """Wrap an HF tokenizer with 0.7's BOS/EOS enforcement (composition, attribute access is delegated)."""

    def __init__(self, hf, *, add_bos_token: bool = False, add_eos_token: bool = False, source: str = ""):
        if getattr(hf, "special_tokens_pattern", None) == "cls_sep" and (
                getattr(hf, "cls_token_id", None) is None or getattr(hf, "sep_token_id", None) is None):
            hf.special_tokens_pattern = "none"
        for flag, want, tok in (("add_bos_token", add_bos_token, "bos_token"),
                                ("add_eos_token", add_eos_token, "eos_token")):
            if want and getattr(hf, tok, None) is not None and hasattr(hf, flag):
                try:
                    setattr(hf, flag, True)
                except ValueError:
                    setattr(hf, "_" + flag, True)
        if getattr(hf, "pad_token_id", None) is None:
            hf.pad_token_id = 0  # _ensure_pad_token_id
        self.__dict__["hf"] = hf
        self.__dict__["source"] = source

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["hf"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["hf"], name, value)

    def __len__(self) -> int:
        return len(self.hf)

    def _enforce(self, ids: list[int], mask: list[int] | None) -> tuple[list[int], list[int] | None]:
        hf = self.hf
        if getattr(hf, "add_bos_token", False) and getattr(hf, "bos_token_id", None) is not None:
            if not ids or ids[0] != hf.bos_token_id:
                ids = [hf.bos_token_id] + ids
                mask = None if mask is None else [1] + mask
        if getattr(hf, "add_eos_token", False) and getattr(hf, "eos_token_id", None) is not None:
            if not ids or ids[-1] != hf.eos_token_id:
                ids = ids + [hf.eos_token_id]
                mask = None if mask is None else mask + [1]
        return ids, mask

    def __call__(self, text, **kwargs) -> dict[str, Any]:
        out = self.hf(text, **kwargs)
        if not kwargs.get("add_special_tokens", True):
            return out
        ids, mask = out["input_ids"], out.get("attention_mask")
        if isinstance(text, str):
            ids, mask = self._enforce(list(ids), None if mask is None else list(mask))
            res = {"input_ids": ids}
            if mask is not None:
                res["attention_mask"] = mask
            return res
        new_ids, new_mask = [], []
        for i, seq in enumerate(ids):
            a, b = self._enforce(list(seq), None if mask is None else list(mask[i]))
            new_ids.append(a)
            new_mask.append(b)
        res = {"input_ids": new_ids}
        if mask is not None:
            res["attention_mask"] = new_mask
        return res


def train_local_tokenizer(texts: Iterable[str], out_dir: Path, *, vocab_size: int = 1024) -> Path:
    """Train a byte-level BPE (Llama-3 style specials; BOS added by the post-processor) and save it as an HF dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[bos, eos], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    hf.chat_template = LOCAL_CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out_dir))
    (out_dir / "NOTE.txt").write_text("Trained locally by nemo-migrate's runtime on the run's training text; "
                                      "a stand-in for the model's own tokenizer, which was not on disk. Its chat "
                                      "template (chat_template.jinja) marks assistant turns with {% generation %}.\n")
    return out_dir


def load_tokenizer(path: str | Path, *, add_bos_token: bool, add_eos_token: bool,
                   trust_remote_code: bool = False) -> EnforcedTokenizer:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    return EnforcedTokenizer(hf, add_bos_token=add_bos_token, add_eos_token=add_eos_token, source=str(path))


def tokenizer_vocab_size(path: str | Path) -> int | None:
    p = Path(path) / "tokenizer.json"
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
        return len(d["model"]["vocab"]) + len(d.get("added_tokens", []))
    except Exception:  # noqa: BLE001
        return None
